"""Flags and helpers shared by `fewstep generate` and `fewstep parity`: the model, the sampler settings,
img2img / inpainting inputs, and the pipeline call they describe."""

from __future__ import annotations

import argparse
import os
from typing import Optional

import numpy as np

from fewstep.cli import logs


# what --model defaults to, for every command (see model_source)
DEFAULT_MODEL = ("the trained demo model of coloured shapes, its few-step LoRA fused, e.g. 'a red circle on a blue "
                 "background'; with --mask, adapters, --frames or --video: tiny random-weight ones")


def add_common(p: argparse.ArgumentParser, prompt_optional: bool = False, model_default: str = DEFAULT_MODEL) -> None:
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
    p.add_argument("--strength", type=float, default=None,
                   help="img2img / inpainting / --video strength in (0, 1] (default: the pipeline's)")


def fresh_seed() -> int:
    """A seed for a run given none: 31 bits, so seed + i (one per image) stays easy to write down."""
    return int(np.random.SeedSequence().entropy % (2**31))


def task_of(image: Optional[str], mask: Optional[str], video: Optional[str] = None) -> str:
    """The pipeline task (the factory's names) the --image / --mask / --video flags ask for."""
    if mask and not image:
        raise ValueError("--mask needs --image: the picture to inpaint.")
    if video and image:
        raise ValueError("--video starts from a video; --image / --mask (img2img, inpainting) cannot be combined "
                         "with it: give one or the other.")
    return "video2video" if video else "inpaint" if mask else "img2img" if image else "text2img"


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


def model_source(s):
    """The one answer to "which model?" for generate, batch and parity: (pipeline folder, LoRAs to load first).
    A single-file checkpoint gives (None, []); --model a folder or hub id; without --model, the trained demo
    model (its LoRA first) where it can serve these settings (`demo_serves`), else the tiny random-weight
    pipelines, said so. `s` needs the flags' names: model, prompt, mask, frames, controlnets, t2i_adapter,
    ip_adapter."""
    if is_single_file(s.model):
        return None, []
    if demo_serves(s):
        return demo_model(s)
    return resolve_model(s.model, s.mask), []


def demo_model(s):
    """(folder, LoRAs) of the trained demo model, after checking the prompt is in its vocabulary."""
    from fewstep.cli import loras
    from fewstep.demo import model

    model.check_prompt(s.prompt)
    model.check_installed()
    say_demo_default()
    lora = loras.LoraSpec(model.LORA_NAME, str(model.LORA_FOLDER), 1.0, model.LORA_FILE)
    return str(model.PIPELINE_FOLDER), [lora]


def say_demo_default() -> None:
    """How every command says it draws with the demo model."""
    from fewstep.demo import model

    logs.say(f"No --model given: using the trained demo model at {model.WEIGHTS} (32x32 coloured shapes; its "
             f"few-step LoRA fused). Pass --model PATH_OR_ID for a real checkpoint.")


def demo_serves(s) -> bool:
    """No --model, and a picture the trained demo model (fewstep.demo) can make: text-to-image or img2img.
    Inpainting, adapters and video need an SD 1.5-shaped model, so those keep the tiny random-weight ones."""
    return not s.model and not s.mask and getattr(s, "frames", None) is None and not getattr(s, "video", None) and not (
        getattr(s, "controlnets", None) or getattr(s, "t2i_adapter", None) or getattr(s, "ip_adapter", None))


def call_kwargs(s) -> dict:
    """The pipeline call the common settings describe (no generator, output type or adapter inputs).
    `s` is anything with the flags' attribute names (parsed arguments, or a settings record)."""
    kwargs = dict(prompt=s.prompt, negative_prompt=s.negative_prompt, num_inference_steps=s.steps,
                  guidance_scale=s.guidance)
    if s.height is not None:
        kwargs["height"] = s.height
    if s.width is not None:
        kwargs["width"] = s.width
    if s.scheduler == "tcd":
        kwargs["eta"] = s.eta
    if s.image:
        kwargs["image"] = open_image(s.image, "--image")
        if s.strength is not None:
            kwargs["strength"] = s.strength
    if s.mask:
        kwargs["mask_image"] = open_image(s.mask, "--mask")
    if getattr(s, "video", None):  # generate only: parity has no --video
        kwargs["video"] = open_video(s.video, "--video")
        if s.strength is not None:
            kwargs["strength"] = s.strength
    return kwargs


def open_image(path: str, flag: str):
    """The picture at `path`, read whole now (a truncated file fails here, not mid-run), or a ValueError
    naming `flag`: not a file, not a picture PIL reads, or larger than PIL's decompression-bomb limit."""
    return _read(path, flag, _loaded, "a picture",
                 "a picture file (.png, .jpg, .webp)", "a .png, .jpg or .webp file")


def open_video(path: str, flag: str = "--video") -> list:
    """The frames of the animated picture at `path` (a .gif), each read whole and converted to RGB with PIL's
    ImageSequence, or a one-line error naming `flag`: not a file, not readable, or a single frame (a video
    needs several; one picture is --image's img2img)."""
    from PIL import ImageSequence

    def frames_of(video):
        with video:  # closed once every frame is converted (read whole)
            return [frame.convert("RGB") for frame in ImageSequence.Iterator(video)]

    frames = _read(path, flag, frames_of, "a video", "an animated .gif", "an animated .gif")
    if len(frames) < 2:
        raise ValueError(f"{flag} {path!r} has one frame; give an animated .gif of several frames (or use --image "
                         f"for one picture).")
    return frames


def _loaded(image):
    image.load()
    return image


def _read(path: str, flag: str, read, noun: str, what: str, give: str):
    """`read(PIL image)` of the file at `path`; every failure a one-line error naming `flag` and what to give
    (`what` for a missing file or a folder, `give` for one PIL cannot read as `noun`)."""
    from PIL import Image

    if os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a folder; give {what}.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {path!r} does not exist; give {what}.")
    try:
        return read(Image.open(path))
    except Image.DecompressionBombError as err:
        raise ValueError(f"{flag} {path!r} is too large to read safely ({err}); resize it first.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(f"{flag} {path!r} is not {noun} PIL can read ({' '.join(str(err).split())}); give "
                         f"{give}.") from None
