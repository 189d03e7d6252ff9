"""Image helpers as diffusers.utils has them: load_image, make_image_grid, export_to_gif, export_to_video.

NumPy, PIL and the standard library only, so that examples and notebooks can use them with either
framework (or none) installed; `requests` is used for URLs only when it happens to be installed, and
export_to_video imports OpenCV or imageio only when it is called.
Besides PIL images, the helpers take the HWC arrays a pipeline returns with ``output_type="np"``
(float in [0, 1]) or uint8 arrays, and an NHWC array as a sequence of images.
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import Callable, Optional, Sequence, Union

import numpy as np
import PIL.Image
import PIL.ImageOps

from fewstep.core.files import atomic_path

# diffusers waits 60 s (DIFFUSERS_REQUEST_TIMEOUT); without a timeout a dead host hangs a script forever.
REQUEST_TIMEOUT_S = 60.0

# Float pixels a little outside [0, 1] are rounding (e.g. a VAE decode); far outside means another
# range such as [-1, 1], which clipping would silently wash out.
_FLOAT_RANGE_SLACK = 1e-3


def load_image(
    image: Union[str, os.PathLike, PIL.Image.Image],
    convert_method: Optional[Callable[[PIL.Image.Image], PIL.Image.Image]] = None,
) -> PIL.Image.Image:
    """Load `image` as a PIL image; mirrors ``diffusers.utils.load_image``.

    Args:
        image (`str`, `os.PathLike` or `PIL.Image.Image`):
            A local path, an ``http://`` / ``https://`` URL (fetched with a 60 s timeout, through
            `requests` when it is installed) or a PIL image. Its EXIF orientation is applied
            (``PIL.ImageOps.exif_transpose``).
        convert_method (`Callable[[PIL.Image.Image], PIL.Image.Image]`, *optional*):
            Applied to the image last, e.g. ``lambda im: im.convert("L")``; when None the image is
            converted to RGB.

    Returns:
        `PIL.Image.Image`: the loaded image, read fully (no file is left open).
    """
    if isinstance(image, os.PathLike):
        image = os.fspath(image)
    if isinstance(image, str):
        if image.startswith(("http://", "https://")):
            image = _open_bytes(_fetch(image), image)
        elif os.path.isfile(image):
            # Read the bytes now so no file handle stays open behind a lazily loaded image.
            with open(image, "rb") as f:
                image = _open_bytes(f.read(), image)
        else:
            raise ValueError(
                f"{image!r} is neither an http(s) URL nor an existing file: "
                "URLs must start with 'http://' or 'https://'; check the path for a typo."
            )
    elif not isinstance(image, PIL.Image.Image):
        hint = " For an array, pass PIL.Image.fromarray(array)." if isinstance(image, np.ndarray) else ""
        raise ValueError(
            f"load_image takes a local path, an http(s) URL or a PIL image, not {type(image).__name__}.{hint}"
        )

    image = PIL.ImageOps.exif_transpose(image)
    return convert_method(image) if convert_method is not None else image.convert("RGB")


def _fetch(url: str) -> bytes:
    """The body of `url`, through `requests` when installed (proxies, certificates), else urllib."""
    try:
        try:
            import requests
        except ImportError:
            import urllib.request

            with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT_S) as response:
                return response.read()
        response = requests.get(url, timeout=REQUEST_TIMEOUT_S)
        response.raise_for_status()
        return response.content
    except Exception as err:  # requests.RequestException, urllib.error.URLError, socket timeouts, ...
        raise ValueError(
            f"Could not fetch {url}: {err}. Download the file yourself and pass its local path to load_image."
        ) from err


def _open_bytes(data: bytes, source: str) -> PIL.Image.Image:
    try:
        return PIL.Image.open(io.BytesIO(data))
    except PIL.UnidentifiedImageError as err:
        raise ValueError(f"{source} is not an image PIL can read ({err}); pass a PNG, JPEG or other image file.") from err


def make_image_grid(images: Sequence, rows: int, cols: int, resize: Optional[int] = None) -> PIL.Image.Image:
    """Paste `images` row-major into one RGB grid; mirrors ``diffusers.utils.make_image_grid``.

    Args:
        images (`List[PIL.Image.Image]`, a list of HWC arrays, or an NHWC array):
            Exactly ``rows * cols`` images: PIL images or HWC arrays (float in [0, 1], or uint8), e.g. a
            pipeline's ``.images``. Each cell is the size of the first image, so they should share it.
        rows (`int`):
            The number of rows of the grid.
        cols (`int`):
            The number of columns of the grid.
        resize (`int`, *optional*):
            When given, every image is first resized to ``resize x resize`` pixels.

    Returns:
        `PIL.Image.Image`: the grid, an RGB image of ``cols`` x ``rows`` cells.
    """
    images = [_to_pil(img) for img in _as_list(images)]
    if len(images) != rows * cols:
        raise ValueError(
            f"make_image_grid got {len(images)} images for rows={rows} x cols={cols} = {rows * cols} cells; "
            "pass exactly rows * cols images, or change rows and cols."
        )
    if not images:
        raise ValueError("make_image_grid got no images; pass at least one, with rows * cols equal to their number.")
    if resize is not None:
        images = [img.resize((resize, resize)) for img in images]

    w, h = images[0].size
    grid = PIL.Image.new("RGB", size=(cols * w, rows * h))
    for i, img in enumerate(images):
        grid.paste(img, box=(i % cols * w, i // cols * h))
    return grid


def export_to_gif(frames: Sequence, output_gif_path: Optional[Union[str, os.PathLike]] = None, fps: int = 10) -> str:
    """Write `frames` as a looping animated GIF and return its path; mirrors ``diffusers.utils.export_to_gif``.

    As in diffusers, PIL merges consecutive identical frames into one of the summed duration.

    Args:
        frames (`List[PIL.Image.Image]`, a list of HWC arrays, or an NHWC array):
            The frames, PIL images or HWC arrays (float in [0, 1], or uint8), e.g. an AnimateDiff
            pipeline's ``.frames[0]``.
        output_gif_path (`str` or `os.PathLike`, *optional*):
            Where to write the GIF (written as GIF whatever its extension; whole or not at all, and a link
            there is replaced, not written through). When None, a new temporary ``.gif`` file is written
            and left for the caller.
        fps (`int`, *optional*, defaults to 10):
            Frames per second: each frame is shown ``1000 // fps`` ms.

    Returns:
        `str`: the path of the written GIF.
    """
    frames = [_to_pil(frame) for frame in _as_list(frames)]
    if not frames:
        raise ValueError("export_to_gif got no frames; pass a non-empty list of PIL images or HWC arrays.")
    if fps <= 0:
        raise ValueError(f"fps must be a positive number, not {fps}.")
    if output_gif_path is None:
        # mkstemp, not NamedTemporaryFile(...).name: that file is deleted on close and the name could be reused.
        fd, output_gif_path = tempfile.mkstemp(suffix=".gif")
        os.close(fd)
    output_gif_path = os.fspath(output_gif_path)

    # written under a fresh temporary name and renamed onto the path: a link there is replaced, not written through
    with atomic_path(output_gif_path) as temp:
        frames[0].save(
            temp,
            format="GIF",  # a temp name or a caller's path may not end in .gif
            save_all=True,
            append_images=frames[1:],
            optimize=False,
            duration=1000 // fps,
            loop=0,
        )
    return output_gif_path


def export_to_video(video_frames: Sequence, output_video_path: Optional[Union[str, os.PathLike]] = None,
                    fps: float = 10) -> str:
    """Write `video_frames` as an MP4 video and return its path; mirrors ``diffusers.utils.export_to_video``.

    Written through OpenCV (``cv2.VideoWriter``, fourcc "mp4v") when it is installed, else through
    imageio with imageio-ffmpeg; both encoders are lossy.

    Args:
        video_frames (`List[PIL.Image.Image]`, a list of HWC arrays, or an NHWC array):
            The frames, PIL images or HWC arrays (float in [0, 1], or uint8), all of one size, e.g. an
            AnimateDiff pipeline's ``.frames[0]``.
        output_video_path (`str` or `os.PathLike`, *optional*):
            Where to write the video (whole or not at all; a link there is replaced, not written
            through). When None, a new temporary ``.mp4`` file is written and left for the caller.
        fps (`float`, *optional*, defaults to 10):
            Frames per second.

    Returns:
        `str`: the path of the written video.
    """
    frames = [np.asarray(_to_pil(frame).convert("RGB")) for frame in _as_list(video_frames)]
    if not frames:
        raise ValueError("export_to_video got no frames; pass a non-empty list of PIL images or HWC arrays.")
    if fps <= 0:
        raise ValueError(f"fps must be a positive number, not {fps}.")
    sizes = sorted({frame.shape[:2] for frame in frames})
    if len(sizes) > 1:  # OpenCV would silently drop the frames of another size
        raise ValueError(f"export_to_video needs frames of one size, got (height, width) {sizes}; resize them first.")
    writer = _video_writer()
    if output_video_path is None:
        # mkstemp, not NamedTemporaryFile(...).name: that file is deleted on close and the name could be reused.
        fd, output_video_path = tempfile.mkstemp(suffix=".mp4")
        os.close(fd)
    output_video_path = os.fspath(output_video_path)
    with atomic_path(output_video_path) as temp:  # the temporary name keeps the extension the encoders read
        writer(frames, temp, fps)
    return output_video_path


def _video_writer() -> Callable[[list, str, float], None]:
    """The first installed of OpenCV and imageio (+ imageio-ffmpeg), as `write(frames, path, fps)`."""
    try:
        import cv2
    except ImportError:
        pass
    else:
        return lambda frames, path, fps: _write_video_cv2(cv2, frames, path, fps)
    try:
        import imageio
        import imageio_ffmpeg  # noqa: F401  # imageio's ffmpeg plugin needs it for MP4
    except ImportError:
        pass
    else:
        return lambda frames, path, fps: _write_video_imageio(imageio, frames, path, fps)
    raise ValueError(
        "export_to_video needs OpenCV or imageio with ffmpeg to write an MP4, and neither is installed: "
        "`pip install opencv-python` or `pip install imageio imageio-ffmpeg`."
    )


def _write_video_cv2(cv2, frames: list, path: str, fps: float) -> None:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        raise ValueError(f"OpenCV could not open {path!r} for an mp4v video; give a writable path ending in .mp4.")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()  # finishes the file; diffusers leaves that to garbage collection


def _write_video_imageio(imageio, frames: list, path: str, fps: float) -> None:
    # diffusers' settings: variable bit rate quality 5, sizes padded to a multiple of 16 by ffmpeg.
    with imageio.get_writer(path, format="FFMPEG", fps=fps, quality=5.0, macro_block_size=16) as writer:
        for frame in frames:
            writer.append_data(frame)


def _as_list(images) -> list:
    """A list of images; an NHWC array (a pipeline's ``output_type="np"``) is a list of HWC images."""
    if isinstance(images, (PIL.Image.Image, str)):
        raise ValueError("Pass a list of images, not a single image: e.g. [image].")
    if isinstance(images, np.ndarray) and images.ndim != 4:
        raise ValueError(f"An array of images must be NHWC (4-D), not shape {images.shape}; or pass a list of HWC arrays.")
    return list(images)


def _to_pil(image) -> PIL.Image.Image:
    """A PIL image as is; an HW / HWC array (float in [0, 1], or uint8) as a PIL image."""
    if isinstance(image, PIL.Image.Image):
        return image
    if not isinstance(image, np.ndarray):
        raise ValueError(f"Images must be PIL images or HWC NumPy arrays, not {type(image).__name__}.")
    arr = image
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        hint = " It looks CHW: pass array.transpose(1, 2, 0)." if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) else ""
        raise ValueError(f"An image array must be HW or HWC with 1, 3 or 4 channels, not shape {arr.shape}.{hint}")
    if arr.dtype == np.uint8:
        return PIL.Image.fromarray(arr)
    if arr.dtype.kind != "f":
        raise ValueError(f"An image array must be float in [0, 1] or uint8, not {arr.dtype}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError("A float image array holds NaN or inf values; check the decode that produced it.")
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if lo < -_FLOAT_RANGE_SLACK or hi > 1 + _FLOAT_RANGE_SLACK:
        raise ValueError(
            f"A float image array must lie in [0, 1], this one spans [{lo:.3g}, {hi:.3g}]: "
            "for [-1, 1] pass (array + 1) / 2, for [0, 255] pass array.astype(np.uint8)."
        )
    # Same rounding as diffusers' numpy_to_pil and fewstep's postprocess.
    return PIL.Image.fromarray((np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8))
