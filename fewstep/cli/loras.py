"""`--lora [NAME=]PATH_OR_ID[:WEIGHT]` and `--lora-weight-name FILE`: reading the flags, and applying the
LoRAs exactly as the Python API does (load_lora_weights(adapter_name=...), set_adapters(names, weights),
fuse_lora()).

`--lora-weight-name` belongs to the `--lora` just before it (a repository holding several files names
one of them); the two flags share one ordered list so that pairing survives argparse.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence

from fewstep.cli.paths import local_path

_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


@dataclass(frozen=True)
class LoraSpec:
    name: str                          # the adapter name
    source: str                        # file, folder or hub id
    weight: float = 1.0                # its set_adapters weight
    weight_name: Optional[str] = None  # the file inside a folder / repository

    def record(self) -> dict:
        return asdict(self)


class _Ordered(argparse.Action):
    """Appends (kind, value) to one list shared by --lora and --lora-weight-name, keeping their order."""

    kind = ""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, self.dest, None) or [])
        items.append((self.kind, values))
        setattr(namespace, self.dest, items)


class _Lora(_Ordered):
    kind = "lora"


class _WeightName(_Ordered):
    kind = "weight_name"


def add_lora_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lora", dest="lora", action=_Lora, default=None, metavar="[NAME=]PATH_OR_ID[:WEIGHT]",
                   help="a LoRA file, folder or hub id, with its adapter weight (default 1.0); repeat for several "
                        "(combined as set_adapters does, then fused). Adapter name: NAME=, else the file's or "
                        "repository's name")
    p.add_argument("--lora-weight-name", dest="lora", action=_WeightName, metavar="FILE",
                   help="the file to read from the repository or folder of the --lora just before it")


def _as_float(text: str) -> Optional[float]:
    """`text` as a float (nan and inf included), or None when it is not a number."""
    try:
        return float(text)
    except ValueError:
        return None


def default_name(source: str) -> str:
    """A file's name without extension; a folder's or hub repository's last part."""
    return os.path.splitext(os.path.basename(os.path.normpath(source)))[0] if os.path.isfile(source) else \
        os.path.basename(os.path.normpath(source))


def parse_lora(text: str, weight_name: Optional[str] = None) -> LoraSpec:
    """`[NAME=]PATH_OR_ID[:WEIGHT]`. A ':' is read as the weight only when what follows the last one is a
    number and the whole text is not an existing path (a path may hold ':' and '=')."""
    name, rest = None, text
    if not os.path.exists(text):
        head, eq, tail = text.partition("=")
        if eq and _NAME.fullmatch(head):
            name, rest = head, tail
    source, weight = rest, 1.0
    if not os.path.exists(rest):
        base, colon, tail = rest.rpartition(":")
        number = _as_float(tail) if colon else None
        if number is not None and math.isfinite(number):
            source, weight = base, number
        elif number is not None:  # nan, inf, 1e309: fused, they turn the picture black
            raise ValueError(f"--lora {text!r}: the weight must be a finite number, got {tail!r}.")
    if not source:
        raise ValueError(f"--lora {text!r} names no file; use --lora [NAME=]PATH_OR_ID[:WEIGHT].")
    return LoraSpec(name or default_name(source), local_path(source), weight, weight_name)


def specs_from_flags(items: Optional[Sequence]) -> List[LoraSpec]:
    """The LoRAs the --lora / --lora-weight-name flags name, in order; checked before anything loads."""
    pending: List[list] = []  # [text, weight name]
    for kind, value in items or ():
        if kind == "lora":
            pending.append([value, None])
        elif not pending:
            raise ValueError(f"--lora-weight-name {value} comes before any --lora; it names the file of the "
                             f"--lora just before it.")
        elif pending[-1][1] is not None:
            raise ValueError(f"--lora {pending[-1][0]} has two --lora-weight-name ({pending[-1][1]}, {value}); give "
                             f"one file per --lora (repeat --lora for another file of the same repository).")
        else:
            pending[-1][1] = value
    specs = [parse_lora(text, weight_name) for text, weight_name in pending]
    check_names(specs)
    return specs


def check_names(specs: Sequence[LoraSpec]) -> None:
    seen = {}
    for spec in specs:
        if spec.name in seen:
            raise ValueError(f"Two LoRAs share the adapter name {spec.name!r} ({seen[spec.name]} and {spec.source}); "
                             f"name one: --lora OTHER_NAME={spec.source}.")
        seen[spec.name] = spec.source


def specs_from_records(records) -> List[LoraSpec]:
    """LoRAs from a settings record's `loras` list (already checked by settings.py)."""
    specs = [LoraSpec(**r) for r in records]
    check_names(specs)
    return specs


def _file_and_name(spec: LoraSpec):
    """(source, weight_name): a local file is passed as its folder and file name, the form both fewstep and
    the reference libraries (diffusers, mindone; parity's other side) take."""
    if spec.weight_name is None and os.path.isfile(spec.source):
        return os.path.dirname(spec.source) or ".", os.path.basename(spec.source)
    return spec.source, spec.weight_name


def apply_loras(pipe, specs: Sequence[LoraSpec]) -> None:
    """Load every LoRA (each checked against the model before any weight changes), weight them and fuse,
    as the Python API does; a LoRA that does not fit fails here, before the first step."""
    if not specs:
        return
    for spec in specs:
        source, weight_name = _file_and_name(spec)
        try:
            pipe.load_lora_weights(source, weight_name=weight_name, adapter_name=spec.name)
        except ValueError as err:  # fewstep's LoraError is a ValueError; it names the module it could not place
            raise ValueError(f"--lora {spec.source} (adapter {spec.name!r}) cannot be applied to this model: "
                             f"{err}") from err
    pipe.set_adapters([s.name for s in specs], adapter_weights=[s.weight for s in specs])
    pipe.fuse_lora()
