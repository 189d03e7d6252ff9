"""`fewstep recipes`: the sampler settings of each few-step method (fewstep.recipes), as a table or `--json`."""

from __future__ import annotations

import json
from typing import Iterable


def add_parser(sub) -> None:
    rec = sub.add_parser("recipes", help="the few-step methods fewstep knows (SDXL-Lightning, Hyper-SD, DMD2, PCM, "
                                         "Turbo, Flash, NitroFusion, LCM, TCD): scheduler, steps, guidance, files")
    rec.add_argument("--json", action="store_true", help="print the table as JSON")


def run(args, given: Iterable[str] = ()) -> int:
    from fewstep import recipes

    table = recipes.describe()
    print(json.dumps(table, indent=2) if args.json else format_table(table))
    return 0


def format_table(table) -> str:
    """One block per recipe: its name and card, then a line per variant (steps, scheduler and settings) and the
    files it belongs to."""
    lines = []
    for recipe in table:
        lines.append(f"{recipe['name']}: {recipe['method']}  ({recipe['card']})")
        for v in recipe["variants"]:
            spec = recipe["name"] if v is recipe["variants"][0] else f"{recipe['name']}:{v['name']}"
            settings = [v["scheduler"] + (f"({', '.join(f'{k}={x!r}' for k, x in v['config'].items())})"
                                          if v["config"] else ""), f"guidance {v['guidance_scale']:g}"]
            if v["eta"] is not None:
                settings.append(f"eta {v['eta']:g}")
            settings += [f"{n}-step timesteps {t}" for n, t in v["timesteps"].items()]
            lines.append(f"  --recipe {spec:<22} steps {_steps(v['steps'])} (default {v['default_steps']}); "
                         + ", ".join(settings) + (f"; {v['note']}" if v["note"] else ""))
            files = sorted({f"{w['repo']}" + (f" {w['subfolder'] + '/' if w['subfolder'] else ''}{w['file']}"
                                               if w["file"] else "") for w in v["weights"]})
            lines += [f"      {f}" for f in files]
    return "\n".join(lines)


def _steps(steps) -> str:
    if len(steps) > 3 and steps == list(range(steps[0], steps[-1] + 1)):
        return f"{steps[0]}-{steps[-1]}"
    return ",".join(map(str, steps))
