"""`fewstep generate`, `fewstep parity` and `fewstep batch`: few-step sampling from the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List, Optional

import numpy as np


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="what to draw")
    p.add_argument("--model", help="diffusers-format pipeline folder or hub id (default: the tiny demo model)")
    p.add_argument("--scheduler", choices=("tcd", "lcm"), default="tcd")
    p.add_argument("--steps", type=int, default=4, help="number of inference steps (default 4)")
    p.add_argument("--eta", type=float, default=0.3, help="TCD gamma: 0 deterministic, higher adds noise (default 0.3)")
    p.add_argument("--guidance", type=float, default=0.0, help="guidance scale (TCD guides use 0; LCM-LoRA 1-2)")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one, printed)")
    p.add_argument("--device", default=None, help="torch device such as cuda or cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--image", help="input image for img2img / inpainting")
    p.add_argument("--mask", help="inpainting mask (white = repaint); needs --image")
    p.add_argument("--strength", type=float, default=None, help="img2img / inpainting strength in (0, 1]")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewstep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="make an image")
    _add_common(gen)
    gen.add_argument("--backend", choices=("torch", "mindspore"), default="torch")
    gen.add_argument("-o", "--output", default="out.png", help="image file; with --frames a .gif or .mp4")
    gen.add_argument("--frames", type=int, default=None, help="make an AnimateDiff video of this many frames (SD 1.5)")
    gen.add_argument("--motion-adapter", help="AnimateDiff motion adapter folder or hub id (default with the tiny demo "
                                              "model: a tiny random one)")
    gen.add_argument("--fps", type=int, default=8, help="frames per second of the video file (default 8)")
    par = sub.add_parser("parity", help="the same generation on two sides (frameworks, dtypes, libraries, folders), "
                                        "compared stage by stage")
    _add_common(par)
    par.add_argument("--backend", choices=("torch", "mindspore"), default=None,
                     help="side a's backend (default torch; mindspore with --against mindone)")
    par.add_argument("--against", choices=AGAINST, default=None,
                     help="side b: fewstep on the other backend (mindspore / torch), the reference library on "
                          "side a's backend (diffusers / mindone), or side a in another dtype (float16 / bfloat16). "
                          "Default: mindspore, or with --model-b the same as side a")
    par.add_argument("--model-b", help="side b's model folder (a converted or re-saved checkpoint), compared with --model")
    par.add_argument("--backend-b", choices=("torch", "mindspore"), default=None, help="side b's backend")
    par.add_argument("--device-b", default=None, help="side b's torch device (e.g. cuda against --device cpu)")
    par.add_argument("--tolerance", type=float, default=None,
                     help="largest allowed max abs difference of the final images in [0, 1] (default by dtype: "
                          "1e-3 float32); above it the exit status is 1")
    par.add_argument("--report", metavar="DIR", help="write report.json, images.png and latents.png there")
    par.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    par.add_argument("--no-localise", action="store_true", help="skip the per-layer rerun of the first divergent call")
    par.add_argument("-o", "--output", default="parity.png", help="the two images side by side")
    _add_batch(sub)
    return parser


def _add_batch(sub) -> None:
    bat = sub.add_parser("batch", help="a job of prompts x seeds x settings into a folder; scales out on torchrun, "
                                      "msrun or Ray, resumes after a crash")
    bat.add_argument("job", help="a .jsonl (one item per line, optional {\"defaults\": ..., \"seed\": N} header) "
                                 "or .csv job file")
    bat.add_argument("--out", required=True, help="the job folder (images, done-records, manifest.jsonl)")
    bat.add_argument("--model", help="diffusers-format pipeline folder or hub id (default: the tiny demo model)")
    bat.add_argument("--backend", choices=("torch", "mindspore"), default="torch")
    bat.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    bat.add_argument("--device", default=None, help="torch device such as cuda")
    bat.add_argument("--batch-size", type=int, default=4, help="items per pipeline call, fixed for the job (default 4)")
    bat.add_argument("--seed", type=int, default=None, help="job seed that items without a seed derive theirs from")
    bat.add_argument("--scheduler", choices=("tcd", "lcm"), default=None, help="default scheduler of the items")
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


AGAINST = ("mindspore", "torch", "diffusers", "mindone", "float16", "bfloat16")


def _pipeline_class(model_folder: str, image: Optional[str], mask: Optional[str]):
    from fewstep import pipelines
    from fewstep.pipelines.loading import read_model_index

    xl = "XL" in read_model_index(model_folder).get("_class_name", "")
    if mask and not image:
        raise SystemExit("--mask needs --image: the picture to inpaint.")
    task = "Inpaint" if mask else "Img2Img" if image else ""
    return getattr(pipelines, f"StableDiffusion{'XL' if xl else ''}{task}Pipeline")


def _resolve_model(args) -> str:
    if args.model:
        return _resolve_folder(args.model)
    from fewstep.testing import tiny_pipeline

    kind = "sd15-inpaint" if args.mask else "sd15"
    folder = tiny_pipeline(kind)
    print(f"No --model given: using the tiny random-weight demo pipeline ({kind}) at {folder}; "
          f"its images are noise. Pass --model PATH_OR_ID for a real checkpoint.")
    return folder


def _check_video_args(args) -> None:
    """--frames makes a video: the output must be a .gif or .mp4, checked before anything loads."""
    if getattr(args, "frames", None) is None:
        if getattr(args, "motion_adapter", None):
            raise ValueError("--motion-adapter needs --frames N: the number of video frames to make.")
        return
    if not args.output.lower().endswith((".gif", ".mp4")):
        raise ValueError(f"--frames makes a video: name the output .gif or .mp4 (got {args.output!r}).")
    if args.image or args.mask:
        raise ValueError("--frames makes a video from text; --image / --mask are not supported with it.")
    if args.model and not args.motion_adapter:
        raise ValueError("--frames with --model needs --motion-adapter PATH_OR_ID (e.g. "
                         "guoyww/animatediff-motion-adapter-v1-5).")


def _motion_pipeline(args, folder: str, backend: str):
    from fewstep import MotionAdapter
    from fewstep.pipelines import AnimateDiffPipeline

    source = args.motion_adapter
    if source is None:
        from fewstep.testing.tiny_motion import tiny_motion_adapter

        source = tiny_motion_adapter()
        print(f"No --motion-adapter given: using a tiny random-weight motion adapter at {source}.")
    adapter = MotionAdapter.from_pretrained(source, backend=backend, dtype=args.dtype, device=args.device)
    return AnimateDiffPipeline.from_pretrained(folder, backend=backend, dtype=args.dtype, device=args.device,
                                               motion_adapter=adapter)


def _call_kwargs(args) -> dict:
    """The pipeline call the common flags describe (no generator or output type)."""
    from PIL import Image

    kwargs = dict(prompt=args.prompt, negative_prompt=args.negative_prompt, num_inference_steps=args.steps,
                  guidance_scale=args.guidance)
    if args.height is not None:
        kwargs["height"] = args.height
    if args.width is not None:
        kwargs["width"] = args.width
    if args.scheduler == "tcd":
        kwargs["eta"] = args.eta
    if args.image:
        kwargs["image"] = Image.open(args.image)
        if args.strength is not None:
            kwargs["strength"] = args.strength
    if args.mask:
        kwargs["mask_image"] = Image.open(args.mask)
    return kwargs


def _generate(args, folder: str, backend: str, output_type: str):
    from fewstep import Generator, LCMScheduler, TCDScheduler

    if getattr(args, "frames", None) is not None:
        pipe = _motion_pipeline(args, folder, backend)
    else:
        cls = _pipeline_class(folder, args.image, args.mask)
        pipe = cls.from_pretrained(folder, backend=backend, dtype=args.dtype, device=args.device)
    scheduler_cls = TCDScheduler if args.scheduler == "tcd" else LCMScheduler
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    kwargs = dict(_call_kwargs(args), generator=Generator(args.seed), output_type=output_type)
    if getattr(args, "frames", None) is not None:
        kwargs["num_frames"] = args.frames
    return pipe(**kwargs)


def _cmd_generate(args) -> int:
    _check_video_args(args)
    folder = _resolve_model(args)
    start = time.perf_counter()
    out = _generate(args, folder, args.backend, "pil")
    if args.frames is not None:
        from fewstep import utils

        export = utils.export_to_gif if args.output.lower().endswith(".gif") else utils.export_to_video
        export(out.frames[0], args.output, fps=args.fps)
    else:
        out.images[0].save(args.output)
    print(f"seed {out.seeds[0]}  backend {args.backend}  {args.steps} steps  "
          f"{out.timings['per_step_s'] * 1000:.1f} ms/step  total {time.perf_counter() - start:.2f} s")
    print(f"wrote {os.path.abspath(args.output)}")
    return 0


def _parity_sides(args, folder: str):
    """(side a, side b) as the flags ask: side a is fewstep on --backend with --dtype; side b is chosen
    by --against, on --model-b's folder when given."""
    from fewstep.parity import load_side

    against = args.against or ("mindspore" if not args.model_b else None)
    backend_a = args.backend or ("mindspore" if against == "mindone" else "torch")
    if against == "mindone" and backend_a != "mindspore":
        raise ValueError("--against mindone compares with mindone on MindSpore: side a must be --backend mindspore.")
    if against == "diffusers" and backend_a != "torch":
        raise ValueError("--against diffusers compares with diffusers on torch: side a must be --backend torch.")
    library_b, backend_b, dtype_b = "fewstep", args.backend_b or backend_a, args.dtype
    if against in ("mindspore", "torch"):
        backend_b = args.backend_b or against
    elif against in ("diffusers", "mindone"):
        library_b, backend_b = against, None
    elif against in ("float16", "bfloat16"):
        dtype_b = against
    folder_b = _resolve_folder(args.model_b) if args.model_b else folder
    task = "inpaint" if args.mask else "img2img" if args.image else "text2image"
    common = dict(scheduler=args.scheduler, task=task)
    side_a = load_side(folder, backend=backend_a, dtype=args.dtype, device=args.device, label=f"{backend_a}", **common)
    label_b = backend_b if library_b == "fewstep" and against not in ("float16", "bfloat16") else against or backend_b
    if args.model_b and not args.against:
        label_b = f"{backend_b} ({os.path.basename(os.path.normpath(folder_b))})"
    if args.device_b and args.device_b != args.device:
        label_b = f"{label_b} ({args.device_b})"
    side_b = load_side(folder_b, library=library_b, backend=backend_b, dtype=dtype_b, label=label_b,
                       device=args.device_b or args.device, **common)
    return side_a, side_b


def _resolve_folder(model: str) -> str:
    from fewstep.pipelines.loading import resolve_folder

    return resolve_folder(model)


def _cmd_parity(args) -> int:
    from PIL import Image

    from fewstep.parity import compare, format_report, write_report

    folder = _resolve_model(args)
    if args.seed is None:
        args.seed = int(np.random.SeedSequence().entropy % (2**31))
    side_a, side_b = _parity_sides(args, folder)
    report = compare(side_a, side_b, _call_kwargs(args), seed=args.seed, tolerance=args.tolerance,
                     localise_layers=not args.no_localise)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_report(report))
    a, b = report.images
    Image.fromarray((np.concatenate([a[0], b[0]], axis=1) * 255).round().astype(np.uint8)).save(args.output)
    if args.report:
        for path in write_report(report, args.report).values():
            print(f"wrote {os.path.abspath(path)}", file=sys.stderr if args.json else sys.stdout)
    out = sys.stderr if args.json else sys.stdout
    print(f"seed {args.seed}  largest difference {side_a.label} vs {side_b.label}: {report.image_max_abs:.3g} "
          f"(images in [0, 1]; tolerance {report.tolerance:.3g})", file=out)
    print(f"wrote {os.path.abspath(args.output)} (left {side_a.label}, right {side_b.label})", file=out)
    return 0 if report.passed else 1


def _cmd_batch(args) -> int:
    import fewstep.batch as batch

    defaults = {name: value for name, value in (
        ("scheduler", args.scheduler), ("num_inference_steps", args.steps), ("guidance_scale", args.guidance),
        ("eta", args.eta), ("width", args.width), ("height", args.height), ("negative_prompt", args.negative_prompt))
        if value is not None}
    job = batch.load_job(args.job, defaults=defaults, seed=args.seed)
    summary = batch.run(job, args.out, model=args.model, backend=args.backend, dtype=args.dtype, device=args.device,
                        batch_size=args.batch_size, threads=args.threads, deterministic=args.deterministic,
                        allow_different_env=args.allow_different_env, engine=args.engine,
                        num_workers=args.num_workers)
    ran = len(summary["batches_run"])
    print(f"rank {summary['rank']} of {summary['world_size']}: ran {ran} batch{'es' if ran != 1 else ''}"
          f"{' (resumed)' if summary['resumed'] else ''}; folder {summary['folder']}")
    if summary["manifest"]:
        print(f"job complete: {summary['manifest']}")
        if args.grid:
            _write_grid(job, summary["folder"], args.grid)
    return 0


def _write_grid(job, folder: str, path: str) -> None:
    import math

    from PIL import Image

    from fewstep.utils import make_image_grid

    images = [Image.open(os.path.join(folder, "images", f"{item.id}.png")) for item in job.items]
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    images += [Image.new("RGB", images[0].size)] * (rows * cols - len(images))
    make_image_grid(images, rows=rows, cols=cols).save(path)
    print(f"wrote {os.path.abspath(path)}")


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"generate": _cmd_generate, "parity": _cmd_parity, "batch": _cmd_batch}[args.command](args)
    except (ValueError, FileNotFoundError) as err:  # JobError and LoraError are ValueErrors
        print(f"fewstep: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
