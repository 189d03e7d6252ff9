"""A batch job: items (prompt, settings, seed) read from JSONL or CSV, checked line by line.

An item's image depends only on the item: its prompt, its settings and its seed. A missing seed is
derived from (job seed, item id), never from a rank or a position, so it is the same whatever the
world size, the batch size or the order items are run in.

JSONL: one object per line. An optional first line `{"defaults": {...}, "seed": 123}` sets defaults
for every item and the job seed. CSV: a header row naming the fields, one item per row (`loras` as
`path:weight;path:weight`). Defaults may also come from the caller (the CLI's flags); a line's own
values win over the header's, the header's over the caller's.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from fewstep.core.files import TEMP_PREFIX

FIELDS = ("id", "prompt", "negative_prompt", "seed", "num_inference_steps", "guidance_scale", "eta", "width",
          "height", "loras", "scheduler", "recipe")
SETTINGS = ("negative_prompt", "num_inference_steps", "guidance_scale", "eta", "width", "height", "loras", "scheduler",
            "recipe")
DEFAULTS = {"negative_prompt": None, "num_inference_steps": 4, "guidance_scale": 0.0, "eta": 0.3, "width": None,
            "height": None, "loras": (), "scheduler": "tcd", "recipe": None}
# `recipe` (fewstep.recipes: "dmd2", "nitrofusion:vibrant") sets the scheduler; its steps, guidance_scale and eta
# apply where the item, the header and the caller give none (num_inference_steps: one the recipe supports).
_NUMBER = ("guidance_scale", "eta")
# The ranges an item's settings must lie in, checked when the job is read so that a bad value stops the job
# before its first image, naming its line (not when its batch comes up, hours later). The bounds are far
# beyond any use: past them a run is an accident (a typo, an extra digit) that would take hours or all memory.
MAX_STEPS = 1000                # the schedulers' training timesteps: more steps than there are timesteps
RANGES = {"num_inference_steps": (1, MAX_STEPS), "guidance_scale": (0.0, 100.0), "eta": (0.0, 1.0)}
SIZE_MULTIPLE = 8               # the VAE's downsampling factor (SD 1.5 / SDXL)
MAX_SIDE = 4096                 # 4096 x 4096 is 16x SDXL's pixels; the UNet's attention at that size needs ~100 GB
MAX_LORA_WEIGHT = 100.0         # |weight| above this turns any image to noise or black


class JobError(ValueError):
    """A job file or output folder that cannot be run; the message names the line and the fix."""


@dataclass(frozen=True)
class Lora:
    path: str
    weight: float = 1.0
    adapter_name: Optional[str] = None   # default: the file's name (`name`)
    weight_name: Optional[str] = None    # the file inside a folder or hub repository

    @property
    def name(self) -> str:
        """The adapter name: `adapter_name`, else the file's (or folder's) name without its extension."""
        return self.adapter_name or os.path.splitext(os.path.basename(os.path.normpath(self.path)))[0]

    def record(self) -> Dict[str, Any]:
        """path and weight; the name and weight name only when set (so older jobs keep their digest)."""
        extra = {k: v for k, v in (("name", self.adapter_name), ("weight_name", self.weight_name)) if v is not None}
        return {"path": self.path, "weight": self.weight, **extra}


@dataclass(frozen=True)
class Item:
    id: str
    prompt: str
    seed: int
    settings: Tuple[Tuple[str, Any], ...]   # the SETTINGS, in order, hashable: items sharing them can share a call
    line: int = 0

    def setting(self, name: str):
        return dict(self.settings)[name]

    def record(self) -> Dict[str, Any]:
        """What the manifest says of the item (no timing, so two runs' manifests can be equal)."""
        settings = dict(self.settings)
        settings["loras"] = [lora.record() for lora in settings["loras"]]
        if settings["recipe"] is None:
            del settings["recipe"]  # so jobs without recipes keep their digest
        return {"id": self.id, "prompt": self.prompt, "seed": self.seed, **settings}


@dataclass
class Job:
    items: List[Item]
    seed: int
    source: str                               # the file read, for messages
    digest: str                               # sha256 of the items as run: identifies the job in its folder
    defaults: Dict[str, Any] = field(default_factory=dict)

    def lookup(self, item_id: str) -> Item:
        return self._by_id[item_id]

    def __post_init__(self):
        self._by_id = {item.id: item for item in self.items}


def derive_seed(job_seed: int, item_id: str) -> int:
    """A 32-bit seed from (job seed, item id): the same on every rank, at every world size."""
    digest = hashlib.sha256(f"fewstep-batch:{int(job_seed)}:{item_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little")


def _where(source: str, line: int) -> str:
    return f"{source}, line {line}"


def _integer(value, name: str, where: str) -> int:
    if isinstance(value, bool) or not (isinstance(value, numbers.Integral) or
                                       (isinstance(value, str) and value.strip().lstrip("-").isdigit())):
        raise JobError(f"{where}: `{name}` must be an integer, got {value!r}; e.g. \"{name}\": 42.")
    return int(value)


def _number(value, name: str, where: str) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise JobError(f"{where}: `{name}` must be a number, got {value!r}.") from None
    if not math.isfinite(number):  # NaN / Infinity in JSON, "nan" / "inf" / 1e309 in CSV: never a setting
        raise JobError(f"{where}: `{name}` must be a finite number, got {value!r}.")
    return number


def _in_range(value, name: str, where: str, low, high):
    if not low <= value <= high:
        raise JobError(f"{where}: `{name}` must be in [{low}, {high}], got {value!r}.")
    return value


def _lora_weight(value, where: str) -> float:
    weight = _number(value, "loras weight", where)
    if abs(weight) > MAX_LORA_WEIGHT:
        raise JobError(f"{where}: a LoRA weight must be in [-{MAX_LORA_WEIGHT:g}, {MAX_LORA_WEIGHT:g}], got {value!r} "
                       f"(LoRA weights are usually 0.5-1.5).")
    return weight


def _side(value, name: str, where: str) -> int:
    side = _integer(value, name, where)
    if side <= 0 or side % SIZE_MULTIPLE or side > MAX_SIDE:
        raise JobError(f"{where}: `{name}` must be a positive multiple of {SIZE_MULTIPLE} up to {MAX_SIDE}, got "
                       f"{value!r}; leave it out for the model's own size.")
    return side


def check_settings(values: Dict[str, Any], where: str) -> Dict[str, Any]:
    """`values` (a part of SETTINGS: an item's merged settings, or defaults) with numbers parsed and checked
    against their ranges; raises JobError naming `where` and the fix. LoRAs are checked by `_loras`."""
    out = dict(values)
    for name in ("num_inference_steps",):
        if out.get(name) is not None:
            out[name] = _in_range(_integer(out[name], name, where), name, where, *RANGES[name])
    for name in ("width", "height"):
        if out.get(name) is not None:
            out[name] = _side(out[name], name, where)
    for name in _NUMBER:
        if out.get(name) is not None:
            out[name] = _in_range(_number(out[name], name, where), name, where, *RANGES[name])
    if out.get("recipe") is not None:
        from fewstep import recipes

        try:
            name, variant = recipes.split(out["recipe"])
            recipes.get(name).variant(variant)
        except ValueError as err:
            raise JobError(f"{where}: `recipe`: {err}") from None
    if out.get("scheduler") is not None and out["scheduler"] not in ("tcd", "lcm"):
        raise JobError(f"{where}: `scheduler` must be \"tcd\" or \"lcm\", got {out['scheduler']!r}.")
    if out.get("negative_prompt") is not None and not isinstance(out["negative_prompt"], str):
        raise JobError(f"{where}: `negative_prompt` must be a string, got {out['negative_prompt']!r}.")
    return out


def _loras(value, where: str) -> Tuple[Lora, ...]:
    """`[{"path": ..., "weight": ...}, "path:weight", ...]` or a CSV cell `path:weight;path:weight`."""
    if value in (None, "", ()):
        return ()
    if isinstance(value, str):
        value = [part for part in value.split(";") if part.strip()]
    if not isinstance(value, (list, tuple)):
        raise JobError(f"{where}: `loras` must be a list of {{\"path\": ..., \"weight\": ...}} objects or "
                       f"\"path:weight\" strings, got {value!r}.")
    out = []
    for entry in value:
        if isinstance(entry, str):
            path, _, weight = entry.rpartition(":") if ":" in entry and not os.path.exists(entry) else (entry, "", "")
            out.append(Lora(path.strip(), _lora_weight(weight, where) if weight else 1.0))
        elif isinstance(entry, dict) and "path" in entry and set(entry) <= {"path", "weight", "name", "weight_name"}:
            out.append(Lora(str(entry["path"]), _lora_weight(entry.get("weight", 1.0), where),
                            entry.get("name"), entry.get("weight_name")))
        else:
            raise JobError(f"{where}: a `loras` entry must be \"path:weight\" or {{\"path\": ..., \"weight\": ..., "
                           f"\"name\": ..., \"weight_name\": ...}} (name and weight_name optional), got {entry!r}.")
    return tuple(out)


def _with_common(common: Tuple[Lora, ...], own: Tuple[Lora, ...]) -> Tuple[Lora, ...]:
    """The caller's LoRAs (the CLI's --lora, for every item) first, then the item's own; an item's LoRA of the
    same adapter name replaces the caller's, so an item can change a common LoRA's weight."""
    names = {lora.name for lora in own}
    return tuple(lora for lora in common if lora.name not in names) + own


def _item(values: Dict[str, Any], defaults: Dict[str, Any], job_seed: int, where: str, line: int,
          common_loras: Tuple[Lora, ...] = ()) -> Item:
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise JobError(f"{where}: unknown field(s) {unknown}; an item may have {', '.join(FIELDS)}.")
    given = {k: v for k, v in values.items() if v not in (None, "")}
    merged = {**DEFAULTS, **defaults, **given}
    if "id" not in values or values["id"] in (None, ""):
        raise JobError(f"{where}: the item has no `id`; give every item a unique id, e.g. \"id\": \"fox-1\".")
    item_id = str(values["id"])
    if any(c in item_id for c in "/\\\0") or item_id in (".", ".."):
        raise JobError(f"{where}: the id {item_id!r} cannot name a file; use letters, digits, '-', '_' or '.'.")
    if item_id.startswith(TEMP_PREFIX):  # the end-of-job cleanup removes files named so: never an image
        raise JobError(f"{where}: the id {item_id!r} starts with {TEMP_PREFIX!r}, which fewstep keeps for its "
                       f"temporary files; rename the item.")
    if not isinstance(merged.get("prompt"), str):
        raise JobError(f"{where}: the item has no `prompt` (a string).")
    seed = _integer(merged["seed"], "seed", where) if "seed" in merged else derive_seed(job_seed, item_id)
    if not 0 <= seed < 2**63:
        raise JobError(f"{where}: `seed` must be in [0, 2**63), got {seed}.")
    merged.update(check_settings({name: merged[name] for name in SETTINGS if name != "loras"}, where))
    if merged["recipe"] is not None:
        merged.update(_recipe_settings(merged, set(defaults) | set(given), where))
    merged["loras"] = _with_common(common_loras, _loras(merged["loras"], where))
    settings = tuple((name, merged[name]) for name in SETTINGS)
    return Item(item_id, merged["prompt"], seed, settings, line)


def _recipe_settings(merged: Dict[str, Any], given: set, where: str) -> Dict[str, Any]:
    """The recipe's steps (its default unless given), guidance_scale and eta (unless given), checked: a step
    count the method does not support names the line."""
    from fewstep import recipes

    try:
        plan = recipes.plan(merged["recipe"], merged["num_inference_steps"] if "num_inference_steps" in given else None)
    except ValueError as err:
        raise JobError(f"{where}: {err}") from None
    out = {"num_inference_steps": plan.steps}
    if "guidance_scale" not in given:
        out["guidance_scale"] = plan.guidance
    if "eta" not in given:
        out["eta"] = plan.eta if plan.eta is not None else 0.0
    return out


def _rows(text: str, source: str):
    """(line number, dict) per item, and the header's (defaults, job seed, line) if there is one."""
    if source.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None:
            return [], ({}, None, 0)
        return [(reader.line_num, dict(row)) for row in reader], ({}, None, 0)
    rows, header = [], ({}, None, 0)
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as err:
            raise JobError(f"{_where(source, number)}: not valid JSON ({err.msg} at column {err.colno}); each line "
                           f"must be one object, e.g. {{\"id\": \"a\", \"prompt\": \"a red fox\"}}.") from None
        if not isinstance(value, dict):
            raise JobError(f"{_where(source, number)}: each line must be a JSON object, got {type(value).__name__}.")
        if "defaults" in value and "id" not in value:
            if rows:
                raise JobError(f"{_where(source, number)}: the defaults header must be the first line.")
            extra = sorted(set(value) - {"defaults", "seed"})
            if extra or not isinstance(value["defaults"], dict):
                raise JobError(f"{_where(source, number)}: a header is {{\"defaults\": {{...}}, \"seed\": N}}; "
                               f"unexpected {extra or value['defaults']!r}.")
            header = (value["defaults"], value.get("seed"), number)
            continue
        rows.append((number, value))
    return rows, header


def load_job(path: str, defaults: Optional[Dict[str, Any]] = None, seed: Optional[int] = None,
             loras: Tuple[Lora, ...] = ()) -> Job:
    """Read and check a job file.

    Args:
        path (`str`):
            A `.jsonl` (or `.json` lines) or `.csv` file of items.
        defaults (`dict`, *optional*):
            Settings for items that do not give them (below the file's own header).
        seed (`int`, *optional*):
            The job seed that missing item seeds derive from (the file header's wins; default 0).
        loras (`tuple` of `Lora`, *optional*):
            LoRAs for every item (the CLI's --lora), before each item's own; an item's LoRA with the same
            adapter name replaces one of these.

    Returns:
        `Job`. Raises `JobError` naming the line and the fix for malformed JSON, unknown fields, duplicate
        ids, non-integer seeds, values out of range (steps in [1, 1000], eta in [0, 1], guidance in [0, 100],
        sizes positive multiples of 8 up to 4096, finite LoRA weights up to 100 in size), ids starting
        with the temporary-file prefix and the like: every item is checked before anything runs.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise JobError(f"No job file {path!r}: pass a .jsonl or .csv file of items.")
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    rows, (header_defaults, header_seed, header_line) = _rows(text, path)
    if not rows:
        raise JobError(f"{path} holds no items; write one JSON object per line, e.g. {{\"id\": \"a\", \"prompt\": \"a fox\"}}.")
    caller = dict(defaults or {})
    unknown = sorted((set(caller) | set(header_defaults)) - (set(FIELDS) - {"id"}))
    if unknown:
        raise JobError(f"{path}: unknown default field(s) {unknown}; defaults may set {', '.join(FIELDS[1:])}.")
    job_seed = _integer(header_seed if header_seed is not None else (seed if seed is not None else 0), "seed",
                        f"{path} (job seed)")
    # defaults checked on their own first, so a bad flag or header value is named as such, not as item 1's
    check_settings({k: v for k, v in caller.items() if k != "loras"}, f"{path}: the defaults passed (command-line flags)")
    check_settings({k: v for k, v in header_defaults.items() if k != "loras"}, _where(path, header_line))
    _loras(header_defaults.get("loras"), _where(path, header_line))
    for lora in loras:
        _lora_weight(lora.weight, f"{path}: LoRA {lora.path!r} passed for every item (--lora)")
    merged_defaults = {**caller, **header_defaults}
    items, seen = [], {}
    for line, values in rows:
        item = _item(values, merged_defaults, job_seed, _where(path, line), line, tuple(loras))
        if item.id in seen:
            raise JobError(f"{_where(path, line)}: duplicate id {item.id!r} (first on line {seen[item.id]}); "
                           f"ids name the output files and must be unique.")
        seen[item.id] = line
        items.append(item)
    digest = hashlib.sha256(json.dumps([i.record() for i in items], sort_keys=True).encode("utf-8")).hexdigest()
    return Job(items, job_seed, path, digest, merged_defaults)
