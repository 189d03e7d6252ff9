"""Images in and out, in NumPy and PIL: framework-free, so both backends see the same pixels.

Matches diffusers' VaeImageProcessor for the inputs fewstep accepts: PIL images are resized with
Lanczos to the requested size, arrays must already have it; pixels go to [-1, 1] for the VAE and
masks are binarised at 0.5.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import PIL.Image



def _as_list(images) -> list:
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    return [images]


def image_size(image) -> Tuple[int, int]:
    """(height, width) of a PIL image, an HWC / NHWC array, or a list of either."""
    first = _as_list(image)[0]
    if isinstance(first, PIL.Image.Image):
        return first.height, first.width
    arr = np.asarray(first)
    if arr.ndim not in (2, 3):
        raise ValueError(f"An image array must be HWC or NHWC with values in [0, 1]; got shape {np.shape(image)}.")
    return int(arr.shape[0]), int(arr.shape[1])


def default_size(image, scale_factor: int) -> Tuple[int, int]:
    """The image's own size rounded down to a multiple of the VAE factor, as diffusers does."""
    height, width = image_size(image)
    return height - height % scale_factor, width - width % scale_factor


def _to_array(image, height: int, width: int, mode: str, what: str) -> np.ndarray:
    """One image as float32 HWC in [0, 1], PIL resized with Lanczos, arrays checked for size."""
    if isinstance(image, PIL.Image.Image):
        image = image.convert(mode)
        if image.size != (width, height):
            image = image.resize((width, height), resample=PIL.Image.LANCZOS)
        arr = np.asarray(image).astype(np.float32) / 255.0
        return arr[:, :, None] if arr.ndim == 2 else arr
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"{what} must be a PIL image or an HWC array in [0, 1]; got shape {arr.shape}.")
    if arr.shape[:2] != (height, width):
        raise ValueError(
            f"{what} is {arr.shape[0]}x{arr.shape[1]} but the output is {height}x{width}: pass an array of that "
            f"size, a PIL image (which is resized), or height= and width= matching the array."
        )
    if arr.min() < 0 or arr.max() > 1:
        raise ValueError(f"{what} arrays must hold values in [0, 1]; got [{arr.min():.3g}, {arr.max():.3g}].")
    return arr


def preprocess_image(image, height: int, width: int) -> np.ndarray:
    """NCHW float32 in [-1, 1] for the VAE encoder."""
    arrays = [_to_array(i, height, width, "RGB", "image") for i in _as_list(image)]
    if arrays[0].shape[2] != 3:
        raise ValueError(f"image must have 3 channels (RGB); got {arrays[0].shape[2]}.")
    batch = np.stack(arrays).transpose(0, 3, 1, 2)
    return 2.0 * batch - 1.0


def is_image_input(image) -> bool:
    """A PIL image, an HWC / NHWC array, or a non-empty list of PIL images or arrays."""
    if isinstance(image, (list, tuple)):
        return bool(image) and all(isinstance(i, (PIL.Image.Image, np.ndarray)) for i in image)
    return isinstance(image, (PIL.Image.Image, np.ndarray))


def image_count(image) -> int:
    return len(_as_list(image))


def preprocess_condition(image, height: int, width: int, channels: int = 3, what: str = "image") -> np.ndarray:
    """NCHW float32 in [0, 1] for an adapter's conditioning image (ControlNet, T2I-Adapter), as
    diffusers' control-image processor gives it: PIL images converted to the model's channels (RGB,
    or L for a 1-channel T2I-Adapter) and resized with Lanczos; arrays must have the output size."""
    mode = "L" if channels == 1 else "RGB"
    arrays = [_to_array(i, height, width, mode, what) for i in _as_list(image)]
    if arrays[0].shape[2] != channels:
        raise ValueError(f"{what} has {arrays[0].shape[2]} channels but the model takes {channels}; pass a "
                         f"{'grayscale' if channels == 1 else 'RGB'} image.")
    return np.stack(arrays).transpose(0, 3, 1, 2)


def preprocess_mask(mask, height: int, width: int) -> np.ndarray:
    """N1HW float32 of 0 and 1 (1 = repaint), binarised at 0.5 like diffusers' mask processor."""
    arrays = [_to_array(m, height, width, "L", "mask_image") for m in _as_list(mask)]
    batch = np.stack([a.mean(axis=2, keepdims=True) if a.shape[2] != 1 else a for a in arrays])
    batch = batch.transpose(0, 3, 1, 2)
    return (batch >= 0.5).astype(np.float32)


def check_mask_matches(image, mask) -> None:
    """The mask must cover the image it masks, before any resizing."""
    if image_size(image) != image_size(mask) or len(_as_list(mask)) not in (1, len(_as_list(image))):
        raise ValueError(
            f"mask_image ({len(_as_list(mask))} of {image_size(mask)}) does not match image "
            f"({len(_as_list(image))} of {image_size(image)}): pass one mask of the image's size, or one per image."
        )


def postprocess(images: np.ndarray, output_type: str = "pil"):
    """Decoded NCHW images in about [-1, 1] -> NHWC float32 in [0, 1], or a list of PIL images."""
    images = np.clip(images.astype(np.float32) / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)
    if output_type == "np":
        return images
    if output_type == "pil":
        pixels = (images * 255).round().astype(np.uint8)
        return [PIL.Image.fromarray(p[:, :, 0] if p.shape[2] == 1 else p) for p in pixels]
    raise ValueError(f"Unknown output_type {output_type!r}; use 'pil', 'np' or 'latent'.")
