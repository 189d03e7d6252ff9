"""Output files: names that carry the seed when a run writes several, atomic writes through
fewstep.core.files (a failed run leaves no file behind, a link at the name is replaced rather than written
through), and the contact-sheet grid `generate --grid` and `batch --grid` write."""

from __future__ import annotations

import io
import math
import os
from typing import List, Sequence

VIDEO_SUFFIXES = (".gif", ".mp4")


def is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_SUFFIXES)


def output_paths(output: str, seeds: Sequence[int]) -> List[str]:
    """`-o out.png` for one image; `out-<seed>.png` for each of several."""
    if len(seeds) == 1:
        return [output]
    stem, ext = os.path.splitext(output)
    return [f"{stem}-{seed}{ext}" for seed in seeds]


def save_image(image, path: str) -> None:
    """A PIL image, in the format its extension names; encoded in memory first, so a failure to encode
    leaves nothing on disk."""
    from fewstep.core.files import write_bytes

    buffer = io.BytesIO()
    image.save(buffer, format=_format(path))
    write_bytes(path, buffer.getvalue())


def _format(path: str) -> str:
    from PIL import Image

    ext = os.path.splitext(path)[1].lower()
    Image.preinit()  # the common formats; every plugin (init) only for a rarer extension, as PIL's save does
    if ext not in Image.EXTENSION:
        Image.init()
    if ext not in Image.EXTENSION:
        raise ValueError(f"Cannot tell the image format of {path!r}; name the output .png, .jpg or .webp.")
    return Image.EXTENSION[ext]


def save_video(frames, path: str, fps: int) -> None:
    from fewstep import utils

    export = utils.export_to_gif if path.lower().endswith(".gif") else utils.export_to_video
    export(frames, path, fps=fps)  # both write through fewstep.core.files: whole or not at all


def grid(images: Sequence, size=None):
    """`fewstep.utils.make_image_grid` of the images, row-major on the squarest sheet, blank cells last;
    every cell is `size` (default: the first image's), other sizes resized to it."""
    from PIL import Image

    from fewstep.utils import make_image_grid

    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    size = size or images[0].size
    cells = [image if image.size == size else image.resize(size) for image in images]
    cells += [Image.new("RGB", size)] * (rows * cols - len(cells))
    return make_image_grid(cells, rows=rows, cols=cols)


def check_output(path: str) -> None:
    """Checked before anything loads: a name whose format cannot be told fails at once."""
    if not is_video(path):
        _format(path)
