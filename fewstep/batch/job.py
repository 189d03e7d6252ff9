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
import numbers
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

FIELDS = ("id", "prompt", "negative_prompt", "seed", "num_inference_steps", "guidance_scale", "eta", "width",
          "height", "loras", "scheduler")
SETTINGS = ("negative_prompt", "num_inference_steps", "guidance_scale", "eta", "width", "height", "loras", "scheduler")
DEFAULTS = {"negative_prompt": None, "num_inference_steps": 4, "guidance_scale": 0.0, "eta": 0.3, "width": None,
            "height": None, "loras": (), "scheduler": "tcd"}
_INTEGER = ("seed", "num_inference_steps", "width", "height")
_NUMBER = ("guidance_scale", "eta")


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
        return float(value)
    except (TypeError, ValueError):
        raise JobError(f"{where}: `{name}` must be a number, got {value!r}.") from None


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
            out.append(Lora(path.strip(), _number(weight, "loras weight", where) if weight else 1.0))
        elif isinstance(entry, dict) and "path" in entry and set(entry) <= {"path", "weight", "name", "weight_name"}:
            out.append(Lora(str(entry["path"]), _number(entry.get("weight", 1.0), "loras weight", where),
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
    merged = {**DEFAULTS, **defaults, **{k: v for k, v in values.items() if v not in (None, "")}}
    if "id" not in values or values["id"] in (None, ""):
        raise JobError(f"{where}: the item has no `id`; give every item a unique id, e.g. \"id\": \"fox-1\".")
    item_id = str(values["id"])
    if any(c in item_id for c in "/\\\0") or item_id in (".", ".."):
        raise JobError(f"{where}: the id {item_id!r} cannot name a file; use letters, digits, '-', '_' or '.'.")
    if not isinstance(merged.get("prompt"), str):
        raise JobError(f"{where}: the item has no `prompt` (a string).")
    seed = _integer(merged["seed"], "seed", where) if "seed" in merged else derive_seed(job_seed, item_id)
    if not 0 <= seed < 2**63:
        raise JobError(f"{where}: `seed` must be in [0, 2**63), got {seed}.")
    for name in _INTEGER[1:]:
        if merged[name] is not None:
            merged[name] = _integer(merged[name], name, where)
    for name in _NUMBER:
        merged[name] = _number(merged[name], name, where)
    if merged["scheduler"] not in ("tcd", "lcm"):
        raise JobError(f"{where}: `scheduler` must be \"tcd\" or \"lcm\", got {merged['scheduler']!r}.")
    merged["loras"] = _with_common(common_loras, _loras(merged["loras"], where))
    settings = tuple((name, merged[name]) for name in SETTINGS)
    return Item(item_id, merged["prompt"], seed, settings, line)


def _rows(text: str, source: str):
    """(line number, dict) per item, and the header's (defaults, job seed) if there is one."""
    if source.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None:
            return [], ({}, None)
        return [(reader.line_num, dict(row)) for row in reader], ({}, None)
    rows, header = [], ({}, None)
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
            header = (value["defaults"], value.get("seed"))
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
        ids, non-integer seeds and the like.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise JobError(f"No job file {path!r}: pass a .jsonl or .csv file of items.")
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    rows, (header_defaults, header_seed) = _rows(text, path)
    if not rows:
        raise JobError(f"{path} holds no items; write one JSON object per line, e.g. {{\"id\": \"a\", \"prompt\": \"a fox\"}}.")
    caller = dict(defaults or {})
    unknown = sorted((set(caller) | set(header_defaults)) - (set(FIELDS) - {"id"}))
    if unknown:
        raise JobError(f"{path}: unknown default field(s) {unknown}; defaults may set {', '.join(FIELDS[1:])}.")
    job_seed = _integer(header_seed if header_seed is not None else (seed if seed is not None else 0), "seed",
                        f"{path} (job seed)")
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
