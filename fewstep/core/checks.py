"""Numbers checked where they enter: the pipeline call, LoRA weights and scales, adapter scales.

A NaN or an infinity given as a scale does not fail where it is given: it flows into the latents or
a fused weight and comes out as a black image (or, for `addmm(alpha=nan)` on a CPU, as if it were
1.0). Every such number is checked here, by name, before any work, with a ValueError whose one line
says what to give instead. Ranges are diffusers' own: what diffusers treats as meaningful (guidance
at or below 1 turns classifier-free guidance off, so it may be negative) is accepted, only values
no sampler can use are refused.

The size limits bound what one call may ask for before anything is allocated: a side of at most
`MAX_SIDE` pixels, at most `MAX_IMAGES` images per call, and a VAE decode whose estimated memory
(`decode_bytes`) is at most `MAX_DECODE_BYTES` (enable VAE tiling or slicing to decode in pieces).

Framework-free: NumPy and the standard library only (fewstep.core).
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence

MAX_SIDE = 16384                 # pixels a side: twice what any released SD / SDXL model is used at, and more
MAX_IMAGES = 1024                # images in one call (prompts x num_images_per_prompt)
MAX_DECODE_BYTES = 256 * 2 ** 30  # the estimated VAE decode of one call: more than any one accelerator holds
GiB = 2 ** 30


def number(value, name: str, hint: str = "") -> float:
    """`value` as a finite float, or a ValueError naming `name`. Python and NumPy numbers and 0-d
    tensors are read; bools and strings are refused (a string is not a number here, as in diffusers)."""
    if value is None or isinstance(value, (bool, str, bytes)):
        raise ValueError(f"{name} must be a number; got {value!r}.{_hint(hint)}")
    try:
        result = float(value)
    except OverflowError:  # an int beyond float's range
        result = math.inf
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a number; got a {type(value).__name__}.{_hint(hint)}") from err
    if not math.isfinite(result):
        raise ValueError(f"{name} must be a finite number; got {result}.{_hint(hint)}")
    return result


def in_range(value, name: str, low: float, high: float, low_open: bool = False, hint: str = "") -> float:
    """`number(value)` within [low, high] ((low, high] with `low_open`), or a ValueError naming `name`."""
    result = number(value, name, hint)
    if not (low < result if low_open else low <= result) or result > high:
        interval = f"{'(' if low_open else '['}{_show(low)}, {_show(high)}]"
        raise ValueError(f"{name} must be in {interval}; got {result}.{_hint(hint)}")
    return result


def whole(value, name: str, low: int, high: int, hint: str = "") -> int:
    """An integer in [low, high] (Python or NumPy ints; 2.0 is refused as diffusers' shapes refuse it)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a whole number; got {value!r}.{_hint(hint)}")
    if not low <= int(value) <= high:
        raise ValueError(f"{name} must be from {low} to {high}; got {int(value)}.{_hint(hint)}")
    return int(value)


def numbers_in(value, name: str, hint: str = "") -> None:
    """Every number in a nested scale (a number, a list, or a dict of them: IP-Adapter's per-block
    scales) is finite; the message names the entry (`name.up.block_0[1]`)."""
    if isinstance(value, dict):
        for key, item in value.items():
            numbers_in(item, f"{name}.{key}", hint)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            numbers_in(item, f"{name}[{i}]", hint)
    else:
        number(value, name, hint)


def output_size(height, width, factor: int, channels: Sequence[int] = (), itemsize: int = 4) -> None:
    """height and width: whole numbers, positive multiples of the VAE's factor, at most MAX_SIDE pixels.
    `channels` (the VAE's block_out_channels) and `itemsize` size the decode the message names."""
    for name, side in (("height", height), ("width", width)):
        if isinstance(side, bool) or not isinstance(side, numbers.Integral):
            raise ValueError(f"{name} must be a whole number of pixels; got {side!r}.")
    height, width = int(height), int(width)
    if height % factor or width % factor or height <= 0 or width <= 0:
        raise ValueError(
            f"height and width must be positive multiples of {factor} (the VAE's downsampling factor); "
            f"got {height}x{width}. Try {max(factor, height - height % factor)}x"
            f"{max(factor, width - width % factor)}."
        )
    if max(height, width) > MAX_SIDE:
        need = decode_bytes(1, height, width, channels, itemsize)
        raise ValueError(f"{height}x{width} is larger than fewstep makes ({MAX_SIDE} pixels a side; decoding one image "
                         f"would take about {need / GiB:,.0f} GiB): ask for at most {MAX_SIDE}x{MAX_SIDE} and upscale "
                         f"afterwards.")


def image_count(num_images_per_prompt, prompts: Optional[int]) -> int:
    """num_images_per_prompt as an int in [1, MAX_IMAGES], and at most MAX_IMAGES images in all."""
    hint = " Make more images with several calls (or fewstep batch)."
    count = whole(num_images_per_prompt, "num_images_per_prompt", 1, MAX_IMAGES, hint)
    if prompts is not None and prompts * count > MAX_IMAGES:
        raise ValueError(f"{prompts} prompts x num_images_per_prompt={count} is {prompts * count} images; one call "
                         f"makes at most {MAX_IMAGES}.{hint}")
    return count


def decode_bytes(images: int, height: int, width: int, channels: Sequence[int], itemsize: int) -> int:
    """An estimate of the peak memory of decoding `images` images of height x width at once.

    A VAE decoder's last up blocks run at the full size with its widest full-size channel count (SD's
    256: the second block's upsampled output, then 128), and a resnet there holds about three such
    activations at once (input, normalised, convolved). Latents and the UNet are far smaller per image.
    An estimate for the message, within a small factor of what the framework really allocates."""
    widest = max(channels[:2]) if channels else 128
    return 3 * images * widest * height * width * itemsize


def decode_memory(images: int, height: int, width: int, channels: Sequence[int], itemsize: int,
                  sliced: bool, tile: Optional[int]) -> None:
    """Refuse a decode whose estimate exceeds MAX_DECODE_BYTES, saying how many GiB and how to shrink it.
    `sliced`: one image at a time (enable_vae_slicing); `tile`: the tile side in pixels when tiling is on."""
    h, w = (min(height, tile), min(width, tile)) if tile else (height, width)
    need = decode_bytes(1 if sliced else images, h, w, channels, itemsize)
    if need > MAX_DECODE_BYTES:
        fixes = [f for f, off in (("pipe.enable_vae_slicing()", not sliced and images > 1),
                                  ("pipe.enable_vae_tiling()", not tile)) if off]
        raise ValueError(f"Decoding {images} image(s) of {height}x{width} at once would take about "
                         f"{need / GiB:.0f} GiB (the limit is {MAX_DECODE_BYTES // GiB} GiB); use "
                         f"{', '.join(fixes + ['fewer images or a smaller size'])}, or output_type='latent'.")


def _hint(hint: str) -> str:
    return f" {hint.strip()}" if hint else ""


def _show(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
