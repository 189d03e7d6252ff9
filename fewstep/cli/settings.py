"""The settings record of a `fewstep generate` run: printed by every run, written by `--save-settings FILE`
(JSON), replayed by `--settings FILE`.

The record is everything that decides the images: model (and a single-file checkpoint's config, and the --tiny-vae
that replaces its VAE), LoRAs (names, weights, weight names), adapters with their images and scales, scheduler or
recipe, steps, eta, guidance, size, seed and number of images, backend, dtype, device and the task inputs (--image,
--mask, --video). Where the images are written (-o, --grid, --save-settings) is not part of it. Local paths are
recorded absolute, so a record replays from any folder.

Replaying: flags given beside `--settings` override the file's values. A flag group replaces the file's
group as a whole: --lora / --lora-weight-name replace all LoRAs; --controlnet / --control-image /
--control-scale all ControlNets; likewise --t2i-adapter..., --ip-adapter..., and --canny / --depth.
A key missing from the file takes the flag's default. `seeds` is written for people (seed, seed+1, ...)
and not read back: `seed` and `num_images` make them.
"""

from __future__ import annotations

import argparse
import json
import math
import numbers
import os
from typing import Any, Dict, Iterable, Optional

from fewstep.cli import adapters, logs, loras
from fewstep.core import checks
from fewstep.cli.common import fresh_seed
from fewstep.cli.paths import local_path

VERSION = 1
VERSION_KEY = "fewstep_settings"
INFO_KEYS = ("seeds",)  # written, not read back

# record key -> how its value is checked: a type name ("?" allows null) or a tuple of allowed values
SCHEMA: Dict[str, Any] = {
    "prompt": "str", "negative_prompt": "str?", "model": "str?", "config": "str?", "backend": ("torch", "mindspore"),
    "dtype": ("float32", "float16", "bfloat16"), "device": "str?", "scheduler": ("tcd", "lcm"), "recipe": "str?",
    "steps": "int",
    "eta": "number", "guidance": "number", "width": "int?", "height": "int?", "seed": "int?", "num_images": "int",
    "image": "str?", "mask": "str?", "video": "str?", "strength": "number?", "loras": "loras",
    "controlnets": "controlnets",
    "t2i_adapter": "adapter?", "ip_adapter": "ip_adapter?", "control_conversion": ("canny", "depth", None),
    "depth_model": "str?", "frames": "int?", "motion_adapter": "str?", "fps": "int", "tiny_vae": "str?",
}
# record key -> the flags (argparse dests) that set it; a key set by no group is its own flag
GROUPS = {"loras": ("lora",), "controlnets": ("controlnet", "control_image", "control_scale"),
          "t2i_adapter": ("t2i_adapter", "adapter_image", "adapter_scale"),
          "ip_adapter": ("ip_adapter", "ip_image", "ip_scale"), "control_conversion": ("canny", "depth")}
_SUB_KEYS = {"loras": ("name", "source", "weight", "weight_name"), "controlnets": ("source", "image", "scale"),
             "adapter": ("source", "image", "scale"),
             "ip_adapter": ("source", "subfolder", "weight_name", "image", "scale")}
_SUB_SCHEMA = {"name": "str", "source": "str", "weight": "number", "weight_name": "str?", "image": "str",
               "scale": "number?", "subfolder": "str?"}
_PATHS = ("model", "config", "image", "mask", "video", "motion_adapter", "tiny_vae")


def from_args(args) -> Dict[str, Any]:
    """The record the flags describe (before --settings is merged in)."""
    record = {key: getattr(args, key) for key in SCHEMA if key not in GROUPS and hasattr(args, key)}
    for key in _PATHS:
        record[key] = local_path(record[key])
    record["loras"] = [spec.record() for spec in loras.specs_from_flags(args.lora)]
    record.update(adapters.records_from_args(args))
    return record


def resolve(args, given: Iterable[str]) -> argparse.Namespace:
    """The run's settings: the flags, over the --settings file when one is given; seed picked if none; a
    recipe's steps, guidance and eta where neither the flags nor the file give them (`resolve_recipe`)."""
    record = from_args(args)
    given = set(given)
    explicit = set(given)  # the keys whose values the user chose: typed, or in the --settings file
    if args.settings:
        saved = load(args.settings)
        for key, value in saved.items():
            if not given & set(GROUPS.get(key, (key,))):
                record[key] = value
                explicit.add(key)
    if not record.get("prompt"):
        raise ValueError("No prompt: give one (fewstep generate \"a red fox\") or --settings FILE.")
    check_values(record)
    note = resolve_recipe(record, given, explicit)
    if record["seed"] is None:
        record["seed"] = fresh_seed()
    return argparse.Namespace(**record, recipe_note=note)


def resolve_recipe(record: Dict[str, Any], given: set, explicit: set) -> Optional[str]:
    """Fill in the recipe's settings (fewstep.recipes): --recipe, the --settings file's, or, when neither a
    recipe nor --scheduler is chosen, the one a known --model / --lora hub id or file name belongs to. Its
    steps (the file's step count, else the recipe's default), guidance and eta apply where the user gave none.
    Returns the line that says a recipe was picked from a name, or None."""
    from fewstep import recipes

    if {"recipe", "scheduler"} <= given and record.get("recipe"):
        raise ValueError("--recipe sets the scheduler: give --recipe or --scheduler, not both.")
    if "scheduler" in given and "recipe" not in given:
        record["recipe"] = None  # a typed --scheduler replaces a --settings file's recipe
    note, pick = None, None
    if not record.get("recipe") and not explicit & {"recipe", "scheduler"}:
        pick, source = _pick(record)
        if pick is not None:
            record["recipe"] = pick.spec
            if "steps" not in explicit and pick.steps is not None:
                record["steps"] = pick.steps
                explicit = explicit | {"steps"}
    if not record.get("recipe"):
        return None
    plan = recipes.plan(record["recipe"], record["steps"] if "steps" in explicit else None)
    recipes.scheduler_class(plan.scheduler)  # a scheduler this fewstep lacks fails now, before any model loads
    record["steps"] = plan.steps
    if "guidance" not in explicit:
        record["guidance"] = plan.guidance
    if "eta" not in explicit:
        record["eta"] = plan.eta if plan.eta is not None else 0.0  # 0: the pipelines' default where a recipe sets none
    if pick is not None:
        weights = pick.weights
        kind = {"lora": "LoRA", "unet": "UNet"}.get(weights.kind, "model")
        note = (f"{source} is a known {kind} ({recipes.get(pick.recipe).method}): using recipe {plan.summary()} "
                f"(its card: {recipes.get(pick.recipe).card}). Give --recipe or --scheduler to choose otherwise.")
    return note


def _pick(record: Dict[str, Any]):
    """(the recipe of the first known --model / --lora name, that name), or (None, None)."""
    from fewstep import recipes

    candidates = [(record.get("model"), None)] + [(lora["source"], lora["weight_name"]) for lora in record["loras"]]
    for source, weight_name in candidates:
        if source:
            pick = recipes.recipe_for(source, weight_name)
            if pick is not None:
                return pick, source + (f" ({weight_name})" if weight_name else "")
    return None, None


def recipe_call_arguments(s) -> Dict[str, Any]:
    """With a recipe: the call arguments `fewstep.recipes.apply` returns (timesteps where the method fixes them),
    with the run's steps, guidance and eta (the recipe's unless given). Without one: nothing to add."""
    if not getattr(s, "recipe", None):
        return {}
    from fewstep import recipes

    args = recipes.plan(s.recipe, s.steps).call_arguments()
    args.update(guidance_scale=s.guidance, eta=s.eta)
    return args


def sampler_words(s) -> str:
    """How the run's log line names the sampler: "recipe dmd2" or "scheduler tcd"."""
    return f"recipe {s.recipe}" if getattr(s, "recipe", None) else f"scheduler {s.scheduler}"


# record key -> (lowest, highest) allowed, None for no bound; numbers must be finite in any case
RANGES = {"steps": (1, 1000), "eta": (0.0, 1.0), "guidance": (0.0, 1000.0), "width": (1, checks.MAX_SIDE),
          "height": (1, checks.MAX_SIDE), "num_images": (1, 10000), "strength": (0.0, 1.0), "frames": (1, 1024),
          "fps": (1, 240), "seed": (0, 2 ** 63 - 1)}


def check_values(record: Dict[str, Any], where: str = "") -> None:
    """Every value of a merged record (flags and --settings alike) as SCHEMA types it, finite, and in RANGES:
    a ValueError naming the flag for `--guidance inf`, `--width 0` or `--lora f:nan`, before anything loads."""
    for key, value in record.items():
        if key not in SCHEMA:
            continue
        flag = where or f"--{key.replace('_', '-')}"
        _check(value, SCHEMA[key], flag)
        low, high = RANGES.get(key, (None, None))
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and low is not None \
                and not low <= value <= high:
            raise ValueError(f"{flag} must be at least {low} and at most {high}, got {value!r}.")
    if record.get("strength") is not None and record["strength"] <= 0:
        raise ValueError(f"--strength must be in (0, 1], got {record['strength']!r}.")
    if record.get("recipe"):
        from fewstep import recipes

        name, variant = recipes.split(record["recipe"])
        recipes.get(name).variant(variant)  # an unknown name or variant, named with the choices


def seeds(s) -> list:
    """One seed per image: seed, seed + 1, ..., so image i equals a run with --seed seed+i alone."""
    return [s.seed + i for i in range(s.num_images)]


def record_of(s) -> Dict[str, Any]:
    """The JSON record of resolved settings: the version first, then every key, then the seeds."""
    return {VERSION_KEY: VERSION, **{key: getattr(s, key) for key in SCHEMA}, "seeds": seeds(s)}


def dumps(s) -> str:
    return json.dumps(record_of(s), indent=2, ensure_ascii=False) + "\n"


def load(path: str) -> Dict[str, Any]:
    """Read and check a settings file; every problem is a ValueError naming the file and the fix."""
    where = f"settings file {path}"
    if not os.path.isfile(path):
        raise ValueError(f"No {where}: pass a file written by `fewstep generate ... --save-settings FILE`.")
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f, parse_constant=_not_json)  # NaN / Infinity are not JSON
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{where} is not valid JSON ({err}); write it with --save-settings.") from None
    except RecursionError:
        raise ValueError(f"{where} is nested too deeply to be a settings record; write it with --save-settings.") \
            from None
    if not isinstance(data, dict) or VERSION_KEY not in data:
        raise ValueError(f"{where} is not a fewstep settings record: it needs a \"{VERSION_KEY}\": {VERSION} field "
                         f"(write one with --save-settings).")
    if data[VERSION_KEY] != VERSION or isinstance(data[VERSION_KEY], bool):
        raise ValueError(f"{where} has format version {data[VERSION_KEY]!r}; this fewstep reads version {VERSION}. "
                         f"Use the fewstep that wrote it, or write it again with this one (--save-settings).")
    unknown = sorted(set(data) - set(SCHEMA) - {VERSION_KEY, *INFO_KEYS})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; a version {VERSION} record may have "
                         f"{', '.join(SCHEMA)} (and {', '.join(INFO_KEYS)}).")
    record = {key: data[key] for key in SCHEMA if key in data}
    for key, value in record.items():
        _check(value, SCHEMA[key], f"{where}: \"{key}\"")
    if "loras" in record:
        loras.check_names(loras.specs_from_records(record["loras"]))
    return record


def _check(value, kind, where: str) -> None:
    if isinstance(kind, tuple):
        if value not in kind:
            raise ValueError(f"{where} must be one of {list(kind)}, got {value!r}.")
        return
    nullable = kind.endswith("?")
    if nullable:
        if value is None:
            return
        kind = kind[:-1]
    if kind in _SUB_KEYS:
        _check_sub(value, kind, where)
        return
    ok = {"str": isinstance(value, str),
          "int": isinstance(value, numbers.Integral) and not isinstance(value, bool),
          "number": isinstance(value, numbers.Real) and not isinstance(value, bool)}[kind]
    if not ok:
        raise ValueError(f"{where} must be {'an' if kind == 'int' else 'a'} {kind}{' or null' if nullable else ''}, "
                         f"got {value!r}.")
    if kind == "number" and not math.isfinite(value):  # nan, inf, 1e309: a black picture, or a NaN in the JSON
        raise ValueError(f"{where} must be a finite number, got {value!r}.")


def _check_sub(value, kind: str, where: str) -> None:
    """A LoRA / adapter entry (or a list of them): an object with exactly the known keys."""
    many = kind in ("loras", "controlnets")
    if many and not isinstance(value, list):
        raise ValueError(f"{where} must be a list of objects, got {value!r}.")
    for i, entry in enumerate(value if many else [value]):
        at = f"{where}[{i}]" if many else where
        keys = _SUB_KEYS[kind]
        if not isinstance(entry, dict) or set(entry) != set(keys):
            raise ValueError(f"{at} must be an object with exactly the keys {list(keys)}, got {entry!r}.")
        for key in keys:
            _check(entry[key], _SUB_SCHEMA[key], f"{at}.{key}")


def _not_json(constant: str):
    raise json.JSONDecodeError(f"{constant} is not a JSON number", constant, 0)


def save(s, path: Optional[str]) -> None:
    """--save-settings: written atomically (fewstep.core.files), after the images."""
    if path:
        from fewstep.core.files import write_text

        write_text(path, dumps(s))
        logs.wrote(path, f" (replay: fewstep generate --settings {path})")
