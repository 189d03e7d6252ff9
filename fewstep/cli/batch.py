"""`fewstep batch`: a job file of prompts x seeds x settings into a folder; `--lora` flags add LoRAs to
every item (before the item's own; an item's LoRA of the same adapter name replaces the flag's)."""

from __future__ import annotations

import os
from typing import Iterable

from fewstep.cli import logs, loras


def add_parser(sub) -> None:
    bat = sub.add_parser("batch", help="a job of prompts x seeds x settings into a folder; scales out on torchrun, "
                                      "msrun or Ray, resumes after a crash")
    bat.add_argument("job", help="a .jsonl (one item per line, optional {\"defaults\": ..., \"seed\": N} header) "
                                 "or .csv job file")
    bat.add_argument("--out", required=True, help="the job folder (images, done-records, manifest.jsonl)")
    bat.add_argument("--model", help="diffusers-format pipeline folder or hub id (default, as for generate: the "
                                     "trained demo model of coloured shapes, its few-step LoRA fused, when every "
                                     "prompt is one it can draw, e.g. 'a red circle on a blue background'; else "
                                     "the tiny random-weight one)")
    bat.add_argument("--backend", choices=("torch", "mindspore"), default="torch")
    bat.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    bat.add_argument("--device", default=None, help="torch device such as cuda")
    bat.add_argument("--batch-size", type=int, default=4, help="items per pipeline call, fixed for the job (default 4)")
    bat.add_argument("--seed", type=int, default=None, help="job seed that items without a seed derive theirs from")
    bat.add_argument("--scheduler", choices=("tcd", "lcm"), default=None, help="default scheduler of the items")
    bat.add_argument("--recipe", metavar="NAME[:VARIANT]", default=None,
                     help="default recipe of the items (`fewstep recipes`): its scheduler, and its steps, guidance "
                          "and eta where an item gives none")
    bat.add_argument("--steps", type=int, default=None, help="default num_inference_steps of the items")
    bat.add_argument("--guidance", type=float, default=None, help="default guidance_scale of the items")
    bat.add_argument("--eta", type=float, default=None, help="default TCD eta of the items")
    bat.add_argument("--width", type=int, default=None)
    bat.add_argument("--height", type=int, default=None)
    bat.add_argument("--negative-prompt", default=None)
    bat.add_argument("--threads", type=int, default=1, help="CPU threads per process, pinned (default 1)")
    bat.add_argument("--deterministic", action="store_true", help="deterministic algorithms on CUDA / Ascend")
    bat.add_argument("--engine", choices=("local", "ray"), default="local",
                     help="local: this process is one rank (one process, torchrun, msrun); ray: drive Ray actors")
    bat.add_argument("--num-workers", type=int, default=None, help="Ray actors (default: the GPUs, else 2)")
    bat.add_argument("--allow-different-env", action="store_true",
                     help="resume a folder started with other versions, backend, device, dtype or threads")
    bat.add_argument("--grid", metavar="FILE", help="a contact sheet of the results, once the job is complete")
    loras.add_lora_flags(bat)


def run(args, given: Iterable[str] = ()) -> int:
    import fewstep.batch as batch
    from fewstep.batch.store import JobFolder

    common = tuple(batch.Lora(spec.source, spec.weight, spec.name, spec.weight_name)
                   for spec in loras.specs_from_flags(args.lora))
    defaults = {name: value for name, value in (
        ("scheduler", args.scheduler), ("recipe", args.recipe), ("num_inference_steps", args.steps), ("guidance_scale", args.guidance),
        ("eta", args.eta), ("width", args.width), ("height", args.height), ("negative_prompt", args.negative_prompt))
        if value is not None}
    job = batch.load_job(args.job, defaults=defaults, seed=args.seed, loras=common)
    if not args.model:
        # what the run checks first, checked before the default model is named (and the tiny one built)
        batch.RunConfig(batch_size=args.batch_size, threads=args.threads).check()
        JobFolder(args.out).check_names(job)
        _say_default(job)
    summary = batch.run(job, args.out, model=args.model, backend=args.backend, dtype=args.dtype, device=args.device,
                        batch_size=args.batch_size, threads=args.threads, deterministic=args.deterministic,
                        allow_different_env=args.allow_different_env, engine=args.engine,
                        num_workers=args.num_workers)
    for line in summary.get("repaired", ()):
        logs.say(line)
    ran = len(summary["batches_run"])
    logs.say(f"rank {summary['rank']} of {summary['world_size']}: ran {ran} batch{'es' if ran != 1 else ''}"
          f"{' (resumed)' if summary['resumed'] else ''}; folder {summary['folder']}")
    if summary["manifest"]:
        logs.wrote(summary["manifest"], label="job complete:")
        if args.grid:
            _write_grid(job, summary["folder"], args.grid)
    return 0


def _say_default(job) -> None:
    """Which model a run with no --model uses, said as `fewstep generate` says it."""
    from fewstep.batch.runner import DEMO, default_model
    from fewstep.cli.common import resolve_model, say_demo_default

    chosen, why = default_model(job)
    if chosen == DEMO:
        say_demo_default()
    else:
        logs.say(f"Not the trained demo model: {why}.")
        resolve_model(None, None)  # says it uses the tiny random-weight pipeline, as generate does


def _write_grid(job, folder: str, path: str) -> None:
    from PIL import Image

    from fewstep.cli import outputs

    images = [Image.open(os.path.join(folder, "images", f"{item.id}.png")) for item in job.items]
    outputs.save_image(outputs.grid(images), path)
    logs.wrote(path)
