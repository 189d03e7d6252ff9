"""Images in and out, in NumPy and PIL: framework-free, so both backends see the same pixels.

Inputs are read as diffusers' `VaeImageProcessor.preprocess` reads them, for every form it takes:

- PIL images (or a list): resized with Lanczos to the output size, then converted (RGB, or L for masks and
  1-channel adapters), scaled by 1/255;
- NumPy arrays: HW, HWC or NHWC (a list of them is stacked), resized with nearest-neighbour sampling as
  torch's `interpolate` does;
- framework tensors of the pipeline's backend (torch on torch, MindSpore on MindSpore): CHW or NCHW (a list
  is stacked), resized the same way; a tensor of the other framework is refused with what to do.

Images for the VAE go from [0, 1] to [-1, 1]; an input with negative values is taken as already in
[-1, 1] (diffusers' rule, with its FutureWarning). A tensor with the VAE's latent channels is latents and
is used as it is (`latents_of`: the SDXL refiner takes the base's `output_type="latent"`). Masks are one
channel (a 3-channel mask is made gray with PIL's "L" weights, where diffusers would fail), binarised at
0.5 (`do_binarize`); a 3D array or tensor is a batch of HW masks (an HW1 array one mask), as in diffusers. Control images
keep their values (`do_normalize=False`); adapter tensors are used as given, as diffusers'
`_preprocess_adapter_image` uses them.

`padding_mask_crop` (inpainting): the masked region's box (`crop_region`, diffusers' `get_crop_region`),
the image and mask cut to it and fitted to the output size (`resize_mode="fill"`), and the result pasted
back over the original (`apply_overlay`).
"""

from __future__ import annotations

import warnings
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import PIL.Image
import PIL.ImageOps

from fewstep.backends import framework_of

#: PIL's "L" conversion weights (ITU-R 601-2), for a 3-channel mask
_LUMA = np.asarray([299, 587, 114], np.float32) / 1000.0

Batch = Union[List[PIL.Image.Image], np.ndarray]  # PIL images, or one NCHW float32 array


def _is_framework_tensor(x) -> bool:
    return not isinstance(x, (np.ndarray, PIL.Image.Image)) and framework_of(x) is not None


def _tensor_to_numpy(ops, x, what: str) -> np.ndarray:
    if ops is not None and ops.is_tensor(x):
        return np.asarray(ops.to_numpy(x), dtype=np.float32)
    framework = framework_of(x)
    backend = getattr(ops, "name", None)
    raise ValueError(f"{what} is a {framework} tensor but this pipeline runs on {backend}: convert it to a {backend} "
                     f"tensor or a NumPy array (NHWC), or load the pipeline with backend={framework!r}.")


def is_image_input(image) -> bool:
    """A PIL image, an array or framework tensor of 2 to 4 dimensions, or a non-empty list of them."""
    def one(x):
        return isinstance(x, PIL.Image.Image) or (
            (isinstance(x, np.ndarray) or _is_framework_tensor(x)) and len(getattr(x, "shape", ())) in (2, 3, 4))
    if isinstance(image, (list, tuple)):
        return bool(image) and all(one(i) for i in image)
    return one(image)


def is_pil(x) -> bool:
    return isinstance(x, PIL.Image.Image)


def _shape(x) -> Tuple[int, ...]:
    return tuple(int(d) for d in x.shape)


def image_count(image) -> int:
    """How many images an input holds: a list's length (4D items counting their batch), a 4D batch's first axis."""
    items = list(image) if isinstance(image, (list, tuple)) else [image]
    return sum(_shape(i)[0] if not isinstance(i, PIL.Image.Image) and len(_shape(i)) == 4 else 1 for i in items)


def read(image, ops=None, what: str = "image", grayscale: bool = False) -> Batch:
    """diffusers' input forms as a list of PIL images or one NCHW float32 array (not yet resized).

    `grayscale` is the mask processor's `do_convert_grayscale`: a 3D array or tensor is a batch of HW masks
    (an HW1 array one mask)."""
    if grayscale and not isinstance(image, (list, tuple, PIL.Image.Image)) and len(getattr(image, "shape", ())) == 3:
        if isinstance(image, np.ndarray):
            image = image[None] if image.shape[-1] == 1 else image[..., None]
        else:
            image = _tensor_to_numpy(ops, image, what)[:, None]
            return _checked(image, what)
    items = list(image) if isinstance(image, (list, tuple)) else [image]
    if not items or not is_image_input(items):
        raise ValueError(f"{what} must be a PIL image, a NumPy array (HW, HWC or NHWC), a {getattr(ops, 'name', 'torch')} "
                         f"tensor (CHW or NCHW), or a list of one kind; got {type(image).__name__}.")
    kinds = {"pil" if isinstance(i, PIL.Image.Image) else "numpy" if isinstance(i, np.ndarray) else "tensor"
             for i in items}
    if len(kinds) > 1:
        raise ValueError(f"{what} mixes {' and '.join(sorted(kinds))} inputs; pass a list of one kind.")
    kind = kinds.pop()
    if kind == "pil":
        return items
    if kind == "numpy":
        arrays = [np.asarray(i, dtype=np.float32) for i in items]
        batch = np.concatenate(arrays) if arrays[0].ndim == 4 else np.stack(arrays)
        if batch.ndim == 3:  # a batch of HW images
            batch = batch[..., None]
        return _checked(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)), what)
    arrays = [_tensor_to_numpy(ops, i, what) for i in items]
    batch = np.concatenate(arrays) if arrays[0].ndim == 4 else np.stack(arrays)
    if batch.ndim == 3:  # a list of HW tensors: diffusers adds the channel axis for masks only
        batch = batch[:, None]
    return _checked(batch, what)


def _checked(batch: np.ndarray, what: str) -> np.ndarray:
    if batch.ndim != 4 or not batch.size:
        raise ValueError(f"{what} has shape {batch.shape}; pass HWC / NHWC arrays or CHW / NCHW tensors.")
    if not np.isfinite(batch).all():
        raise ValueError(f"{what} holds NaN or infinite values; pass finite pixel values.")
    return batch


def size_of(batch: Batch) -> Tuple[int, int]:
    """(height, width) of what `read` gave."""
    if isinstance(batch, list):
        return batch[0].height, batch[0].width
    return batch.shape[2], batch.shape[3]


def image_size(image, ops=None) -> Tuple[int, int]:
    """(height, width) of any input form."""
    return size_of(read(image, ops))


def default_size(image, scale_factor: int, ops=None) -> Tuple[int, int]:
    """The image's own size rounded down to a multiple of the VAE factor, as diffusers does."""
    height, width = image_size(image, ops)
    return height - height % scale_factor, width - width % scale_factor


def nearest_resize(batch: np.ndarray, height: int, width: int) -> np.ndarray:
    """NCHW resized as torch's `interpolate(mode="nearest")` (diffusers' resize of arrays and tensors):
    source index floor(i x in / out), the scale in float32."""
    h, w = batch.shape[2:]
    if (h, w) == (height, width):
        return batch

    def index(n_in, n_out):
        scale = np.float32(n_in) / np.float32(n_out)
        return np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64), n_in - 1)

    return batch[:, :, index(h, height)][:, :, :, index(w, width)]


def _pixels(batch: Batch, height: int, width: int, mode: Optional[str]) -> np.ndarray:
    """NCHW float32 at the output size: PIL resized (Lanczos) then converted to `mode` and scaled by 1/255,
    arrays resized with nearest sampling."""
    if isinstance(batch, list):
        images = [i.resize((width, height), resample=PIL.Image.LANCZOS) if i.size != (width, height) else i
                  for i in batch]
        images = [i.convert(mode) if mode and i.mode != mode else i for i in images]
        arrays = [np.asarray(i).astype(np.float32) / 255.0 for i in images]
        arrays = [a[:, :, None] if a.ndim == 2 else a for a in arrays]
        if len({a.shape for a in arrays}) > 1:
            raise ValueError("The images of a list have different modes; pass images of one mode (e.g. all RGB).")
        return np.stack(arrays).transpose(0, 3, 1, 2)
    return nearest_resize(batch, height, width)


def _channels(pixels: np.ndarray, wanted: Sequence[int], what: str, fix: str) -> np.ndarray:
    if pixels.shape[1] not in wanted:
        raise ValueError(f"{what} has {pixels.shape[1]} channels; {fix}.")
    return pixels


def latents_of(image, ops, latent_channels: int):
    """The input itself when it is a tensor of this backend with the VAE's latent channels (diffusers takes
    such an `image` as latents, e.g. the SDXL base's `output_type="latent"` for the refiner), else None."""
    if isinstance(image, (list, tuple)) or not ops.is_tensor(image):
        return None
    shape = ops.shape(image)
    if len(shape) == 3:
        image = ops.reshape(image, (1,) + tuple(shape))
        shape = ops.shape(image)
    return image if len(shape) == 4 and shape[1] == latent_channels else None


_RGB_FIX = "pass an RGB image (3 channels), or latents with the VAE's channels"
_MASK_FIX = "pass a one-channel (grayscale) mask, or an RGB one"


def _condition_fix(channels: int) -> str:
    return f"the model takes {channels}: pass {'a grayscale' if channels == 1 else 'an RGB'} image"


def _check_range(pixels: np.ndarray, what: str) -> None:
    if pixels.max() > 1.0 + 1e-3 and pixels.min() >= 0:
        raise ValueError(f"{what} has values up to {pixels.max():.3g}; arrays and tensors hold pixels in [0, 1] (or "
                         f"[-1, 1]): divide 0-255 values by 255.")


def check_input(image, ops, what: str, kind: str, channels: int = 3) -> None:
    """Refuse, before any work, an array or tensor input the preprocessing below would refuse mid-call: its
    channel count (`kind` "image", "mask" or "condition" with `channels`), and 0-255 values for an image. PIL
    images are converted, so they always fit; NaN is refused while reading."""
    batch = read(image, ops, what, grayscale=kind == "mask")
    if isinstance(batch, list):
        return
    if kind == "image":
        _channels(batch, (3,), what, _RGB_FIX)
        _check_range(batch, what)
    elif kind == "mask":
        _channels(batch, (1, 3), what, _MASK_FIX)
    else:
        _channels(batch, (channels,), what, _condition_fix(channels))


def preprocess_image(image, height: int, width: int, ops=None, what: str = "image") -> np.ndarray:
    """NCHW float32 in [-1, 1] for the VAE encoder."""
    pixels = _pixels(read(image, ops, what), height, width, "RGB")
    pixels = _channels(pixels, (3,), what, _RGB_FIX)
    if pixels.min() < 0:
        warnings.warn(f"{what} has values in [{pixels.min():.3g}, {pixels.max():.3g}]: taken as already in [-1, 1] "
                      f"(diffusers' rule; the expected range for arrays and tensors is [0, 1]).", FutureWarning)
        return pixels
    _check_range(pixels, what)
    return 2.0 * pixels - 1.0


def preprocess_condition(image, height: int, width: int, channels: int = 3, what: str = "image",
                         ops=None) -> np.ndarray:
    """NCHW float32 for an adapter's conditioning image (ControlNet, T2I-Adapter), as diffusers' control-image
    processor gives it: PIL images resized and converted to the model's channels (RGB, or L for a 1-channel
    T2I-Adapter) and scaled to [0, 1]; arrays and tensors resized when they differ, values kept."""
    pixels = _pixels(read(image, ops, what), height, width, "L" if channels == 1 else "RGB")
    return _channels(pixels, (channels,), what, _condition_fix(channels))


def preprocess_mask(mask, height: int, width: int, ops=None) -> np.ndarray:
    """N1HW float32 of 0 and 1 (1 = repaint), as diffusers' mask processor (do_convert_grayscale,
    do_binarize, no normalisation) gives it; a 3-channel array is made gray first."""
    pixels = _pixels(read(mask, ops, "mask_image", grayscale=True), height, width, "L")
    pixels = _channels(pixels, (1, 3), "mask_image", _MASK_FIX)
    if pixels.shape[1] == 3:
        pixels = np.einsum("nchw,c->nhw", pixels, _LUMA)[:, None]
    return (pixels >= 0.5).astype(np.float32)


def check_mask_matches(image, mask) -> None:
    """One mask for all images, or one per image (both are resized to the output size)."""
    images, masks = image_count(image), image_count(mask)
    if masks not in (1, images):
        raise ValueError(f"mask_image holds {masks} masks for {images} images: pass one mask, or one per image.")


# ---------------------------------------------------------------------- padding_mask_crop
def crop_region(mask: PIL.Image.Image, width: int, height: int, pad: int) -> Tuple[int, int, int, int]:
    """(x1, y1, x2, y2): the box around the mask's non-zero pixels, padded by `pad` and widened to the output's
    aspect ratio inside the image (diffusers' `VaeImageProcessor.get_crop_region`)."""
    values = np.asarray(mask.convert("L"))
    h, w = values.shape
    cols, rows = np.flatnonzero(values.any(axis=0)), np.flatnonzero(values.any(axis=1))
    if not len(cols):
        raise ValueError("padding_mask_crop needs a mask with something to repaint; this mask is all black.")
    x1, y1 = max(int(cols[0]) - pad, 0), max(int(rows[0]) - pad, 0)
    x2, y2 = min(int(cols[-1]) + 1 + pad, w), min(int(rows[-1]) + 1 + pad, h)
    ratio = width / height
    if (x2 - x1) / (y2 - y1) > ratio:
        y1, y2 = _widen(y1, y2, int((x2 - x1) / ratio - (y2 - y1)), h)
    else:
        x1, x2 = _widen(x1, x2, int((y2 - y1) * ratio - (x2 - x1)), w)
    return x1, y1, x2, y2


def _widen(a: int, b: int, grow: int, limit: int) -> Tuple[int, int]:
    """[a, b) grown by `grow` around its centre, shifted back inside [0, limit)."""
    a, b = a - grow // 2, b + grow - grow // 2
    if b >= limit:
        a, b = a - (b - limit), limit
    if a < 0:
        a, b = 0, b - a
    return a, min(b, limit)


def fill_resize(image: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
    """Fitted inside (width, height) keeping the aspect ratio, centred, and the empty bands filled by
    stretching the edge rows or columns (diffusers' `resize_mode="fill"`)."""
    ratio, src_ratio = width / height, image.width / image.height
    src_w = width if ratio < src_ratio else image.width * height // image.height
    src_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = image.resize((src_w, src_h), resample=PIL.Image.LANCZOS)
    out = PIL.Image.new("RGB", (width, height))
    out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if ratio < src_ratio and height // 2 - src_h // 2 > 0:
        fill = height // 2 - src_h // 2
        out.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
        out.paste(resized.resize((width, fill), box=(0, resized.height, width, resized.height)), box=(0, fill + src_h))
    elif ratio > src_ratio and width // 2 - src_w // 2 > 0:
        fill = width // 2 - src_w // 2
        out.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
        out.paste(resized.resize((fill, height), box=(resized.width, 0, resized.width, height)), box=(fill + src_w, 0))
    return out


def crop_resize(image: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
    """Covering (width, height) keeping the aspect ratio, centred, the excess cut (`resize_mode="crop"`)."""
    ratio, src_ratio = width / height, image.width / image.height
    src_w = width if ratio > src_ratio else image.width * height // image.height
    src_h = height if ratio <= src_ratio else image.height * width // image.width
    out = PIL.Image.new("RGB", (width, height))
    out.paste(image.resize((src_w, src_h), resample=PIL.Image.LANCZOS),
              box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    return out


def cropped(images: List[PIL.Image.Image], box, height: int, width: int) -> List[PIL.Image.Image]:
    """Each image cut to `box` and fitted to the output size (`resize_mode="fill"`), as the inpainting pipelines
    read image and mask with `padding_mask_crop`."""
    return [fill_resize(i.crop(box), width, height) for i in images]


def apply_overlay(mask: PIL.Image.Image, original: PIL.Image.Image, image: PIL.Image.Image, box) -> PIL.Image.Image:
    """The repainted crop pasted back into the original's frame, and the original kept where the mask is black
    (diffusers' `apply_overlay`)."""
    width, height = original.size
    kept = PIL.Image.new("RGBa", (width, height))
    kept.paste(original.convert("RGBA").convert("RGBa"), mask=PIL.ImageOps.invert(mask.convert("L")))
    x1, y1, x2, y2 = box
    base = PIL.Image.new("RGBA", (width, height))
    base.paste(crop_resize(image, x2 - x1, y2 - y1), (x1, y1))
    out = base.convert("RGB").convert("RGBA")
    out.alpha_composite(kept.convert("RGBA"))
    return out.convert("RGB")


def postprocess(images: np.ndarray, output_type: str = "pil"):
    """Decoded NCHW images in about [-1, 1] -> NHWC float32 in [0, 1], or a list of PIL images."""
    images = np.clip(images.astype(np.float32) / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)
    if output_type == "np":
        return images
    if output_type == "pil":
        pixels = (images * 255).round().astype(np.uint8)
        return [PIL.Image.fromarray(p[:, :, 0] if p.shape[2] == 1 else p) for p in pixels]
    raise ValueError(f"Unknown output_type {output_type!r}; use 'pil', 'np', 'pt' or 'latent'.")
