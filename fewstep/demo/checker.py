"""An analytic checker for demo pictures: which shape, in which colour, on which background.

No learned model: a learned classifier would share the generator's blind spots, and this one can be read.

1. Background: the per-channel median of the two-pixel border ring (the dataset keeps shapes 3 px from every
   edge, so the ring is pure background; a median ignores a shape that strays onto it), snapped to the
   nearest palette colour.
2. Shape colour: each pixel's RGB distance from that background; the shape's core is the pixels beyond 3/4 of
   the 98th-percentile distance, its colour their median, snapped to the palette.
3. Shape: a soft mask (each pixel's position between background and shape colour, clipped to 0..1) is cut at
   1/2 and its largest 4-connected blob kept, with a 3-pixel soft rim, so specks and other blobs do not count.
   That blob's mass is summarised by two numbers that blur leaves alone (`shape_invariants`): its vertical
   skew (triangles have it, circles and squares do not) and its x-y fourth cross cumulant (zero for a square,
   whose x and y are independent; negative for a disc). The nearest of the three ideal shapes' values, measured
   on `dataset.coverage` (the geometry that draws the data), wins; farther than MAX_DISTANCE from all three
   is no recognisable shape (None). A fill ratio of the bounding box, tried first, misread 3% of shapes blurred
   by sigma 1 px; in theory blur does not move these invariants (only clipping the mask and cutting its rim do).

Robustness, measured on 500 images of 32 x 32 (seed 2), the fraction with all three right: clean 100%;
Gaussian blur sigma 0.7 / 1.0 px with noise sigma 8, 16 or 32 (of 255): 100%; sigma 1.3: 98-100%; sigma 1.6:
93-97%; sigma 2.0 (a 10 px square is then a round blob): 82%. Codec-like losses (seed 7): a 2x box downscale
and bilinear upscale 100%, 4x 80%; JPEG quality 50 99%, 20 91%, 10 84%. Every miss above is a shape: colours
survive all of it and a 50% pull towards grey (they are 285 apart, so a colour must move ~140 to be misnamed).
24, 48 and 64 px images work alike. Rejected as no shape: a ring, a cross, an L, a diamond (a square on its
corner); accepted: a triangle upside down (a triangle), two overlapping discs (an oval reads as a circle). A
picture with nothing farther than MIN_CONTRAST from its background has shape and colour None; None never
matches a prompt.
"""

from __future__ import annotations

import math

import numpy as np

from fewstep.demo.dataset import COLOURS, SHAPES, Attributes, coverage, parse_prompt

_NAMES = tuple(COLOURS)
_PALETTE = np.array([COLOURS[name] for name in _NAMES], np.float32)  # [5, 3]
BORDER = 2
MIN_CONTRAST = 40.0  # RGB distance below which nothing counts as a shape (noise is ~14 at sigma 8/255)


def as_pixels(images) -> np.ndarray:
    """Float32 pixels [n, H, W, 3] in 0..255 from uint8 [n, H, W, 3], floats in [0, 1], or a list of PIL images or
    arrays (one [H, W, 3] image is taken as a batch of one)."""
    if hasattr(images, "convert"):  # one PIL image
        images = [images]
    if not isinstance(images, np.ndarray):
        images = np.stack([np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
                           for image in images])
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images as [n, H, W, 3] (channels last, RGB), got shape {images.shape}")
    if images.dtype == np.uint8:
        return images.astype(np.float32)
    # floats are in [0, 1] as PIL-free pipelines return them (`output_type="np"`)
    return np.clip(images.astype(np.float32), 0.0, 1.0) * 255.0


def snap(rgb) -> str:
    """The name of the palette colour nearest to `rgb` (0..255) in RGB distance."""
    return _NAMES[int(np.argmin(np.linalg.norm(_PALETTE - np.asarray(rgb, np.float32), axis=-1)))]


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask, by label propagation (NumPy only: each pass
    gives every pixel the largest label among itself and its neighbours, until nothing changes)."""
    if not mask.any():
        return mask
    labels = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), 0)
    while True:
        spread = labels.copy()  # in-place maxima over shifted slices: no padding, it runs ~30 times an image
        np.maximum(spread[1:], labels[:-1], out=spread[1:])
        np.maximum(spread[:-1], labels[1:], out=spread[:-1])
        np.maximum(spread[:, 1:], labels[:, :-1], out=spread[:, 1:])
        np.maximum(spread[:, :-1], labels[:, 1:], out=spread[:, :-1])
        spread *= mask
        if np.array_equal(spread, labels):
            break
        labels = spread
    values, counts = np.unique(labels[mask], return_counts=True)
    return labels == values[np.argmax(counts)]


def _grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """`mask` dilated by `pixels` in the 4-neighbour sense."""
    for _ in range(pixels):
        padded = np.pad(mask, 1)
        mask = mask | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    return mask


def shape_invariants(alpha: np.ndarray) -> np.ndarray:
    """(skew, cross) of a soft mask [H, W] read as a distribution of mass over the plane, made scale-free with
    its area A (x, y measured from the centroid): skew = the length of the vector of third cumulants
    (E[x^3], E[y^3]) over A^1.5, so a triangle pointing any way along an axis counts; cross = the fourth cross
    cumulant k22 = E[x^2 y^2] - E[x^2] E[y^2] - 2 E[xy]^2 over A^2. Convolving with a Gaussian adds to the
    second cumulants only (cumulants of independent sums add; a Gaussian's 3rd and 4th are 0), so blur moves
    neither number; area is kept too. Triangles are skewed, circles and squares not; a square's x and y are
    independent (cross 0), a disc's are not (cross -1 / (48 pi^2))."""
    height, width = alpha.shape
    y, x = np.mgrid[:height, :width] + 0.5
    area = alpha.sum()
    x, y = x - (alpha * x).sum() / area, y - (alpha * y).sum() / area

    def moment(i, j):
        return float((alpha * x**i * y**j).sum() / area)

    skew = np.hypot(moment(3, 0), moment(0, 3)) / area**1.5
    cross = moment(2, 2) - moment(2, 0) * moment(0, 2) - 2 * moment(1, 1) ** 2
    return np.array([skew, cross / area**2])


def _prototypes() -> np.ndarray:
    """The invariants of each ideal shape, measured on `dataset.coverage` at 96 px (sharp, so exact to ~1%)."""
    return np.stack([shape_invariants(coverage(shape, 48.0, 48.0, 64.0, 64.0, 96)) for shape in SHAPES])


_PROTOTYPES = _prototypes()
# Each invariant in units of its largest spread between the shapes, so both weigh alike in the distance.
_SCALE = np.ptp(_PROTOTYPES, axis=0)
GROW = 3  # pixels of soft rim kept around the blob: a blurred edge's tail (~2 sigma) for sigma up to ~1.5
# Farther than this (in _SCALE units) from every shape is no shape: the data under blur sigma <= 1.6 px and
# noise 16/255 stays within 0.73, while a ring, a cross, an L or a diamond lands at 0.9 .. 7.6.
MAX_DISTANCE = 0.75


def _classify_shape(alpha: np.ndarray):
    """The shape in a soft mask [H, W] (1 = shape colour, 0 = background), or None if there is none."""
    blob = _largest_blob(alpha > 0.5)
    if not blob.any():
        return None
    # Measure only the blob and its soft rim, so specks or a second blob elsewhere cannot weigh in.
    invariants = shape_invariants(np.where(_grow(blob, GROW), alpha, 0.0))
    distances = np.linalg.norm((_PROTOTYPES - invariants) / _SCALE, axis=1)
    return SHAPES[int(np.argmin(distances))] if distances.min() <= MAX_DISTANCE else None


def _classify_pixels(image: np.ndarray) -> Attributes:
    ring = np.concatenate([image[:BORDER].reshape(-1, 3), image[-BORDER:].reshape(-1, 3),
                           image[:, :BORDER].reshape(-1, 3), image[:, -BORDER:].reshape(-1, 3)])
    bg = np.median(ring, axis=0)
    distance = np.linalg.norm(image - bg, axis=-1)
    reach = np.percentile(distance, 98)
    if reach < MIN_CONTRAST:
        return Attributes(None, None, snap(bg))
    fg = np.median(image[distance > 0.75 * reach], axis=0)
    direction = fg - bg
    alpha = np.clip((image - bg) @ direction / float(direction @ direction), 0.0, 1.0)
    return Attributes(_classify_shape(alpha), snap(fg), snap(bg))


def classify(image) -> Attributes:
    """The `Attributes` one picture shows: an [H, W, 3] uint8 or [0, 1] float array, or a PIL image."""
    return _classify_pixels(as_pixels([image])[0])


def classify_images(images) -> list:
    """`classify` for each of a batch (any form `as_pixels` accepts)."""
    return [_classify_pixels(image) for image in as_pixels(images)]


def score_images(images, prompts) -> dict:
    """How often the pictures show what their prompts asked for.

    `images`: uint8 [n, H, W, 3], floats in [0, 1], or a list of PIL images; `prompts`: n captions in the
    demo's grammar (or `Attributes`). Returns {"n", and for each of "shape", "colour" (the shape's colour),
    "background" and "all" (all three right): the accuracy as a fraction and its standard error
    sqrt(p (1 - p) / n) under the key with "_se" appended, e.g. "all_se"}.
    """
    predicted = classify_images(images)
    wanted = [p if isinstance(p, Attributes) else parse_prompt(p) for p in prompts]
    if len(wanted) != len(predicted):
        raise ValueError(f"{len(predicted)} images but {len(wanted)} prompts")
    n = len(wanted)
    hits = {
        "shape": [p.shape == w.shape for p, w in zip(predicted, wanted)],
        "colour": [p.colour == w.colour for p, w in zip(predicted, wanted)],
        "background": [p.background == w.background for p, w in zip(predicted, wanted)],
        "all": [p == w for p, w in zip(predicted, wanted)],
    }
    result = {"n": n}
    for key, values in hits.items():
        p = float(np.mean(values)) if n else float("nan")
        result[key] = p
        result[key + "_se"] = math.sqrt(p * (1 - p) / n) if n else float("nan")
    return result
