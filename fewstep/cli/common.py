"""Flags and helpers shared by `fewstep generate` and `fewstep parity`: the model, the sampler settings,
img2img / inpainting inputs, and the pipeline call they describe."""

from __future__ import annotations

import argparse
import os
from typing import Optional

import numpy as np

from fewstep.cli import logs


TINY_DEFAULT = "the tiny random-weight demo model"


def add_common(p: argparse.ArgumentParser, prompt_optional: bool = False, model_default: str = TINY_DEFAULT) -> None:
    if prompt_optional:  # generate: the prompt may come from --settings instead
        p.add_argument("prompt", nargs="?", default=None, help="what to draw (or from --settings)")
    else:
        p.add_argument("prompt", help="what to draw")
    p.add_argument("--model", help=f"diffusers-format pipeline folder or hub id (default: {model_default})")
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


def fresh_seed() -> int:
    """A seed for a run given none: 31 bits, so seed + i (one per image) stays easy to write down."""
    return int(np.random.SeedSequence().entropy % (2**31))


def task_of(image: Optional[str], mask: Optional[str]) -> str:
    """The AutoPipeline task (auto.py's names) the --image / --mask flags ask for."""
    if mask and not image:
        raise ValueError("--mask needs --image: the picture to inpaint.")
    return "inpaint" if mask else "img2img" if image else "text2img"


def is_single_file(model: Optional[str]) -> bool:
    """--model names one checkpoint file (A1111 / civitai layout) rather than a pipeline folder or hub id."""
    return bool(model) and os.path.isfile(model)


def resolve_model(model: Optional[str], mask: Optional[str]) -> str:
    """The local pipeline folder for --model, or the tiny random-weight pipeline (said so) when none is given
    and the trained demo model cannot serve (see `demo_serves`)."""
    from fewstep.pipelines.loading import resolve_folder

    if model:
        return resolve_folder(model)
    from fewstep.testing import tiny_pipeline

    kind = "sd15-inpaint" if mask else "sd15"
    folder = tiny_pipeline(kind)
    logs.say(f"No --model given: using the tiny random-weight demo pipeline ({kind}) at {folder}; "
          f"its images are noise. Pass --model PATH_OR_ID for a real checkpoint.")
    return folder


def demo_serves(s) -> bool:
    """No --model, and a picture the trained demo model (fewstep.demo) can make: text-to-image or img2img.
    Inpainting, adapters and video need an SD 1.5-shaped model, so those keep the tiny random-weight ones."""
    return not s.model and not s.mask and s.frames is None and not (s.controlnets or s.t2i_adapter or s.ip_adapter)


def call_kwargs(s) -> dict:
    """The pipeline call the common settings describe (no generator, output type or adapter inputs).
    `s` is anything with the flags' attribute names (parsed arguments, or a settings record)."""
    from PIL import Image  # lazily: `import fewstep.cli` stays light

    kwargs = dict(prompt=s.prompt, negative_prompt=s.negative_prompt, num_inference_steps=s.steps,
                  guidance_scale=s.guidance)
    if s.height is not None:
        kwargs["height"] = s.height
    if s.width is not None:
        kwargs["width"] = s.width
    if s.scheduler == "tcd":
        kwargs["eta"] = s.eta
    if s.image:
        kwargs["image"] = Image.open(s.image)
        if s.strength is not None:
            kwargs["strength"] = s.strength
    if s.mask:
        kwargs["mask_image"] = Image.open(s.mask)
    return kwargs


def local_path(value: Optional[str]) -> Optional[str]:
    """An existing local path made absolute (so a saved record replays from any folder); hub ids as given."""
    if value is not None and os.path.exists(value):
        return os.path.abspath(value)
    return value
