"""`fewstep generate` and `fewstep parity`: few-step sampling from the command line."""

from __future__ import annotations

import argparse
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
    par = sub.add_parser("parity", help="the same generation on torch and MindSpore, compared")
    _add_common(par)
    par.add_argument("-o", "--output", default="parity.png")
    return parser


def _pipeline_class(model_folder: str, image: Optional[str], mask: Optional[str]):
    from fewstep import pipelines
    from fewstep.pipelines.loading import read_model_index

    xl = "XL" in read_model_index(model_folder).get("_class_name", "")
    if mask and not image:
        raise SystemExit("--mask needs --image: the picture to inpaint.")
    task = "Inpaint" if mask else "Img2Img" if image else ""
    return getattr(pipelines, f"StableDiffusion{'XL' if xl else ''}{task}Pipeline")


def _resolve_model(args) -> str:
    from fewstep.pipelines.loading import resolve_folder

    if args.model:
        return resolve_folder(args.model)
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


def _generate(args, folder: str, backend: str, output_type: str):
    from PIL import Image

    from fewstep import Generator, LCMScheduler, TCDScheduler

    if getattr(args, "frames", None) is not None:
        pipe = _motion_pipeline(args, folder, backend)
    else:
        cls = _pipeline_class(folder, args.image, args.mask)
        pipe = cls.from_pretrained(folder, backend=backend, dtype=args.dtype, device=args.device)
    scheduler_cls = TCDScheduler if args.scheduler == "tcd" else LCMScheduler
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    kwargs = dict(prompt=args.prompt, negative_prompt=args.negative_prompt, num_inference_steps=args.steps,
                  guidance_scale=args.guidance, height=args.height, width=args.width,
                  generator=Generator(args.seed), output_type=output_type)
    if args.scheduler == "tcd":
        kwargs["eta"] = args.eta
    if args.image:
        kwargs["image"] = Image.open(args.image)
        if args.strength is not None:
            kwargs["strength"] = args.strength
    if args.mask:
        kwargs["mask_image"] = Image.open(args.mask)
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


def _cmd_parity(args) -> int:
    from PIL import Image

    folder = _resolve_model(args)
    if args.seed is None:
        args.seed = int(np.random.SeedSequence().entropy % (2**31))
    results = {}
    for backend in ("torch", "mindspore"):
        out = _generate(args, folder, backend, "np")
        results[backend] = out.images
        print(f"{backend:9s} {out.timings['per_step_s'] * 1000:.1f} ms/step")
    diff = float(np.abs(results["torch"] - results["mindspore"]).max())
    side = np.concatenate([results["torch"][0], results["mindspore"][0]], axis=1)
    Image.fromarray((side * 255).round().astype(np.uint8)).save(args.output)
    print(f"seed {args.seed}  largest difference torch vs mindspore: {diff:.3g} (images in [0, 1])")
    print(f"wrote {os.path.abspath(args.output)} (left torch, right MindSpore)")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"generate": _cmd_generate, "parity": _cmd_parity}[args.command](args)
    except (ValueError, FileNotFoundError) as err:
        print(f"fewstep: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
