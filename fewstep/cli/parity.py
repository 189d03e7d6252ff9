"""`fewstep parity`: one generation on two sides (frameworks, dtypes, libraries, folders), compared stage
by stage; LoRAs apply to both sides, adapters to fewstep's sides."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Iterable

from fewstep.cli import adapters, logs, loras, outputs
from fewstep.cli.common import add_common, call_kwargs, fresh_seed, is_single_file, model_source, task_of

AGAINST = ("mindspore", "torch", "diffusers", "mindone", "float16", "bfloat16")
# parity's task names for auto.py's
_TASKS = {"text2img": "text2image", "img2img": "img2img", "inpaint": "inpaint"}


def add_parser(sub) -> None:
    par = sub.add_parser("parity", help="the same generation on two sides (frameworks, dtypes, libraries, folders), "
                                        "compared stage by stage")
    add_common(par)
    par.add_argument("--backend", choices=("torch", "mindspore"), default=None,
                     help="side a's backend (default torch; mindspore with --against mindone)")
    par.add_argument("--against", choices=AGAINST, default=None,
                     help="side b: fewstep on the other backend (mindspore / torch), the reference library on "
                          "side a's backend (diffusers / mindone), or side a in another dtype (float16 / bfloat16). "
                          "Default: mindspore, or with --model-b the same as side a")
    par.add_argument("--model-b", help="side b's model folder or single-file checkpoint (a converted or re-saved one), "
                                       "compared with --model")
    par.add_argument("--config", metavar="FOLDER",
                     help="with a single-file checkpoint (--model or --model-b FILE.safetensors): a diffusers folder or "
                          "hub id of the same family describing its models, for every side that loads the checkpoint "
                          "(default: the family's reference repository's configs)")
    par.add_argument("--backend-b", choices=("torch", "mindspore"), default=None, help="side b's backend")
    par.add_argument("--device-b", default=None, help="side b's torch device (e.g. cuda against --device cpu)")
    par.add_argument("--tolerance", type=float, default=None,
                     help="largest allowed max abs difference of the final images in [0, 1] (default by dtype: "
                          "1e-3 float32); above it the exit status is 1")
    par.add_argument("--report", metavar="DIR", help="write report.json, images.png (the two images side by side and "
                                                     "their difference) and latents.png there")
    par.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    par.add_argument("--no-localise", action="store_true", help="skip the per-layer rerun of the first divergent call")
    par.add_argument("-o", "--output", metavar="FILE", default=None,
                     help="write the two images side by side there (default: no picture, unless --report DIR)")
    loras.add_lora_flags(par)
    adapters.add_adapter_flags(par)


def _adapter_settings(args):
    """The adapter flags as generate reads them (None when there are none); fewstep sides only."""
    records = adapters.records_from_args(args)
    if not (records["controlnets"] or records["t2i_adapter"] or records["ip_adapter"]):
        return None
    s = argparse.Namespace(**records, frames=None, video=None, motion_adapter=None, image=args.image,
                           mask=args.mask, scheduler=args.scheduler, loras=[])
    adapters.check_combination(s)
    return s


def _side(folder: str, library: str, backend, dtype: str, device, label: str, args, specs, adapter):
    """One side: parity's own loader, or, with adapters, generate's pipeline builder (fewstep only)."""
    from fewstep.parity import Side, load_side

    single_file = is_single_file(folder)
    if adapter is None:
        side = load_side(folder, library=library, backend=backend, dtype=dtype, device=device, label=label,
                         scheduler=args.scheduler, task=_TASKS[task_of(args.image, args.mask)],
                         config=args.config if single_file else None)
        loras.apply_loras(side.pipe, specs)
        return side
    from fewstep.cli.generate import build_pipeline

    s = argparse.Namespace(**vars(adapter), backend=backend, dtype=dtype, device=device)
    s.loras = [spec.record() for spec in specs]
    if single_file:  # generate's builder reads a checkpoint from the settings, as --model / --config give it
        s.model, s.config = folder, args.config
    return Side(build_pipeline(s, None if single_file else folder), label)


def parity_sides(args, folder: str, specs=(), adapter=None):
    """(side a, side b) as the flags ask: side a is fewstep on --backend with --dtype; side b is chosen
    by --against, on --model-b's folder when given."""
    from fewstep.pipelines.loading import resolve_folder

    against = args.against or ("mindspore" if not args.model_b else None)
    backend_a = args.backend or ("mindspore" if against == "mindone" else "torch")
    if against == "mindone" and backend_a != "mindspore":
        raise ValueError("--against mindone compares with mindone on MindSpore: side a must be --backend mindspore.")
    if against == "diffusers" and backend_a != "torch":
        raise ValueError("--against diffusers compares with diffusers on torch: side a must be --backend torch.")
    if adapter is not None and against in ("diffusers", "mindone"):
        raise ValueError(f"parity runs adapters (--controlnet, --t2i-adapter, --ip-adapter) on fewstep's sides only; "
                         f"--against {against} is not supported with them: compare fewstep sides (--against "
                         f"mindspore / torch / float16 / bfloat16, or --model-b), or build the reference pipeline in "
                         f"Python and pass it as fewstep.parity.Side(pipe).")
    library_b, backend_b, dtype_b = "fewstep", args.backend_b or backend_a, args.dtype
    if against in ("mindspore", "torch"):
        backend_b = args.backend_b or against
    elif against in ("diffusers", "mindone"):
        library_b, backend_b = against, None
    elif against in ("float16", "bfloat16"):
        dtype_b = against
    folder_b = folder
    if args.model_b:
        folder_b = args.model_b if is_single_file(args.model_b) else resolve_folder(args.model_b)
    side_a = _side(folder, "fewstep", backend_a, args.dtype, args.device, f"{backend_a}", args, specs, adapter)
    label_b = backend_b if library_b == "fewstep" and against not in ("float16", "bfloat16") else against or backend_b
    if args.model_b and not args.against:
        label_b = f"{backend_b} ({os.path.basename(os.path.normpath(folder_b))})"
    if args.device_b and args.device_b != args.device:
        label_b = f"{label_b} ({args.device_b})"
    side_b = _side(folder_b, library_b, backend_b, dtype_b, args.device_b or args.device, label_b, args, specs, adapter)
    return side_a, side_b


def run(args, given: Iterable[str] = ()) -> int:
    import numpy as np
    from PIL import Image

    from fewstep.parity import compare, format_report, write_report

    _check_destinations(args)
    specs = loras.specs_from_flags(args.lora)
    adapter = _adapter_settings(args)
    task_of(args.image, args.mask)
    if args.config and not (is_single_file(args.model) or is_single_file(args.model_b)):
        raise ValueError("--config describes a single-file checkpoint: give it with --model (or --model-b) "
                         "FILE.safetensors.")
    # the default model is generate's and batch's (cli.common.model_source): the trained demo model where it serves
    records = adapters.records_from_args(args)
    folder, first_loras = model_source(argparse.Namespace(
        model=args.model, prompt=args.prompt, mask=args.mask, frames=None,
        **{key: records[key] for key in ("controlnets", "t2i_adapter", "ip_adapter")}))
    folder = args.model if folder is None else folder  # a single-file checkpoint
    specs = [*first_loras, *specs]
    if args.seed is None:
        args.seed = fresh_seed()
    side_a, side_b = parity_sides(args, folder, specs, adapter)
    kwargs = call_kwargs(args)
    if adapter is not None:
        # both sides are fewstep's pipeline of one class: its control argument names the control pictures
        kwargs.update(adapters.call_kwargs(adapter, adapters.control_images(adapter), side_a.pipe))
    report = compare(side_a, side_b, kwargs, seed=args.seed, tolerance=args.tolerance,
                     localise_layers=not args.no_localise)
    if args.json:
        logs.say(json.dumps(report.to_dict(), indent=2))
    else:
        logs.say(format_report(report))
    out = sys.stderr if args.json else sys.stdout
    if args.report:
        sides = f" (the picture: left {side_a.label}, middle {side_b.label}, right their difference |a - b|)"
        for kind, path in write_report(report, args.report).items():
            logs.wrote(path, sides if kind == "images" else "", file=out)
    logs.say(f"seed {args.seed}  largest difference {side_a.label} vs {side_b.label}: {report.image_max_abs:.3g} "
          f"(images in [0, 1]; tolerance {report.tolerance:.3g})", file=out)
    if args.output:
        a, b = report.images
        picture = Image.fromarray((np.concatenate([a[0], b[0]], axis=1) * 255).round().astype(np.uint8))
        outputs.save_image(picture, args.output)
        logs.wrote(args.output, f" (left {side_a.label}, right {side_b.label})", file=out)
    elif not args.report:
        logs.say("no picture written: give -o FILE for the two images side by side, or --report DIR", file=out)
    return 0 if report.passed else 1


def _check_destinations(args) -> None:
    """Before anything loads: a picture name whose format cannot be told, or a --report that is a file, fails at
    once rather than after both sides have run."""
    if args.output:
        if args.output.lower().endswith(".mp4"):
            raise ValueError(f"parity writes one picture, not a video: name -o {args.output!r} .png, .jpg or .webp.")
        outputs.check_output(args.output)
    if args.report and os.path.exists(args.report) and not os.path.isdir(args.report):
        raise ValueError(f"--report needs a folder, but {args.report!r} is a file: give a new or existing folder.")
