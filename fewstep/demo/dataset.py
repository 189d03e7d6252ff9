"""The demo's procedural dataset: one coloured shape on a plain background, captioned from a tiny grammar.

Everything is NumPy: an image depends only on its `Attributes` and the `np.random.Generator` that places it,
so `make_dataset(n, seed)` is the same on every machine, and the checker (`fewstep.demo.checker`) reuses the
geometry here (`coverage`) to recognise shapes instead of keeping a second copy of it.

Palette. The five colours are the best five-point packing of the RGB cube on the {0, 128, 255} grid: their
smallest pairwise distance is 255 * sqrt(5) / 2 ~ 285 (an exhaustive search over that grid finds no set with a
larger minimum, and it equals the known optimum for five points in a cube). That margin is why a checker can
still snap a blurred, VAE-shifted colour to the right name; the pure primaries (red, green, blue, yellow,
purple, ...) would leave pairs as close as 255.

Drawing. A shape is defined by its centre and its bounding box (`w`, `h` in pixels, continuous); circles are
ellipses inscribed in the box, squares fill it, triangles are isosceles with the apex up and the base on the
box's bottom edge. Images are anti-aliased by 4 x 4 supersampling (pixel = mean coverage), so edges look like
the soft edges a VAE produces and the same function can render a soft template for the checker.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (255, 0, 0),
    "green": (128, 255, 0),
    "blue": (0, 0, 128),
    "cyan": (0, 255, 255),
    "pink": (255, 128, 255),
}
# Shape size as a fraction of the image side, and the gap kept to the border (in pixels at any size):
# at 32 x 32 a shape's box is 10..22 px and never closer than 3 px to an edge, so the border ring the
# checker reads is always pure background and the shape is always whole.
SIZE_RANGE = (0.3, 0.7)
MARGIN = 3
SUPERSAMPLE = 4


class Attributes(NamedTuple):
    """What one image shows: a `shape` from SHAPES in `colour` on `background` (both keys of COLOURS)."""

    shape: str
    colour: str
    background: str


# The grammar: every caption form, canonical first. `caption` writes them and `parse_prompt` reads them all
# back with one regular expression each, so the two cannot drift apart.
CAPTION_FORMS = (
    "{article} {colour} {shape} on {bg_article} {background} background",
    "{article} {colour} {shape}, {background} background",
    "{colour} {shape} on {background}",
)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(attrs: Attributes, form: int = 0) -> str:
    """The caption of `attrs` in grammar form `form` (0, the canonical one, is what `make_dataset` uses):
    "a red circle on a blue background", "a red circle, blue background" or "red circle on blue"."""
    return CAPTION_FORMS[form].format(article=_article(attrs.colour), colour=attrs.colour, shape=attrs.shape,
                                      bg_article=_article(attrs.background), background=attrs.background)


def _form_pattern(form: str) -> re.Pattern:
    """A form as a regular expression over a prompt with its articles dropped (the forms' literal words are
    letters, commas and spaces, which stand for themselves in a pattern)."""
    colours = "|".join(COLOURS)
    return re.compile(form.replace("{article} ", "").replace("{bg_article} ", "").format(
        colour=f"(?P<colour>{colours})", shape=f"(?P<shape>{'|'.join(SHAPES)})",
        background=f"(?P<background>{colours})"))


_PATTERNS = tuple(_form_pattern(form) for form in CAPTION_FORMS)


def vocabulary() -> str:
    """One sentence naming what the demo knows, for error messages."""
    return (f"the demo model knows the shapes {', '.join(SHAPES)} and the colours {', '.join(COLOURS)}, "
            f"in prompts like {caption(Attributes('circle', 'red', 'blue'))!r}")


def parse_prompt(prompt: str) -> Attributes:
    """The `Attributes` a prompt asks for; inverts every form of `caption` (case, extra spaces, a missing
    "a" / "an" and a final full stop are forgiven). Anything else -- another word, a shape the same colour as
    its background -- raises ValueError naming the vocabulary, so a CLI can pass the message straight on."""
    text = " ".join(word for word in str(prompt).lower().rstrip(" .").split() if word not in ("a", "an"))
    for pattern in _PATTERNS:
        match = pattern.fullmatch(text)
        if match:
            attrs = Attributes(match["shape"], match["colour"], match["background"])
            if attrs.colour == attrs.background:
                raise ValueError(f"{prompt!r} puts a shape on a background of its own colour, which the demo "
                                 f"never shows (it would be invisible); {vocabulary()}")
            return attrs
    unknown = _unknown_words(text)
    if unknown:  # name the words, not the prompt: a prompt may be 10,000 words long
        more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
        raise ValueError(f"the prompt has words outside the demo's vocabulary ({', '.join(map(repr, unknown[:8]))}"
                         f"{more}): {vocabulary()}")
    shown = text if len(text) <= 80 else text[:77] + "..."
    raise ValueError(f"{shown!r} is outside the demo's vocabulary (its words, in an order the captions never "
                     f"use): {vocabulary()}")


def _unknown_words(text: str) -> list:
    """The distinct words of `text` that no caption form, shape or colour uses, in the order they appear."""
    known = set(SHAPES) | set(COLOURS) | {"a", "an"}
    known |= {w for form in CAPTION_FORMS for w in re.findall(r"[a-z]+", re.sub(r"\{[^}]*\}", " ", form))}
    seen = []
    for word in re.findall(r"[a-z]+", text):
        if word not in known and word not in seen:
            seen.append(word)
    return seen


def all_attributes() -> list:
    """Every shape x colour x background (never its own colour) combination: 3 * 5 * 4 = 60."""
    return [Attributes(s, c, b) for s in SHAPES for c in COLOURS for b in COLOURS if b != c]


def all_prompts() -> list:
    """The canonical caption of every combination in `all_attributes` order (60 prompts)."""
    return [caption(a) for a in all_attributes()]


def sample_attributes(rng: np.random.Generator) -> Attributes:
    """Uniform over the 60 combinations: three integer draws, the background drawn from the four colours
    left once the shape's is taken."""
    names = list(COLOURS)
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    colour = names.pop(int(rng.integers(len(names))))
    return Attributes(shape, colour, names[int(rng.integers(len(names)))])


def coverage(shape: str, cx: float, cy: float, w: float, h: float, height: int, width: int = None,
             supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Float32 [height, width] fraction of each pixel inside `shape` with centre (cx, cy) and box w x h, in
    pixel units (x right, y down; pixel (i, j) spans [j, j+1] x [i, i+1]), from supersample^2 points a pixel."""
    width = height if width is None else width
    offsets = (np.arange(supersample) + 0.5) / supersample
    ys = (np.arange(height)[:, None] + offsets[None, :]).reshape(-1, 1)  # [height*s, 1]
    xs = (np.arange(width)[:, None] + offsets[None, :]).reshape(1, -1)  # [1, width*s]
    dx, dy = (xs - cx) / (w / 2), (ys - cy) / (h / 2)  # box-normalised: the box is [-1, 1]^2
    if shape == "circle":
        inside = dx * dx + dy * dy <= 1
    elif shape == "square":
        inside = (np.abs(dx) <= 1) & (np.abs(dy) <= 1)
    elif shape == "triangle":  # apex at the top centre, the half-width growing to 1 at the bottom
        inside = (dy >= -1) & (dy <= 1) & (np.abs(dx) <= (dy + 1) / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; the demo's shapes are {', '.join(SHAPES)}")
    cover = inside.reshape(height, supersample, width, supersample).mean(axis=(1, 3))
    return cover.astype(np.float32)


def render(attrs: Attributes, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """Uint8 [size, size, 3]: `attrs.shape` in `attrs.colour` on `attrs.background`, its box side drawn from
    SIZE_RANGE of the image and its centre anywhere that keeps MARGIN pixels to every edge (anti-aliased)."""
    if attrs.colour == attrs.background:
        raise ValueError(f"{attrs} has the shape and the background in one colour; it would be invisible")
    side = float(rng.uniform(*SIZE_RANGE)) * size
    low, high = MARGIN + side / 2, size - MARGIN - side / 2
    cx, cy = float(rng.uniform(low, high)), float(rng.uniform(low, high))
    alpha = coverage(attrs.shape, cx, cy, side, side, size)[..., None]
    fg, bg = (np.asarray(COLOURS[name], np.float32) for name in (attrs.colour, attrs.background))
    return np.rint(bg + alpha * (fg - bg)).astype(np.uint8)


def make_dataset(n: int, seed: int, size: int = 32):
    """`n` images from one seed: (uint8 [n, size, size, 3], canonical captions, `Attributes`). Each image's
    attributes and placement come from one `np.random.default_rng(seed)` in order, so the first k images of
    a larger set are the same k images."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    attrs = []
    for i in range(n):
        attrs.append(sample_attributes(rng))
        images[i] = render(attrs[-1], rng, size)
    return images, [caption(a) for a in attrs], attrs


def evaluation_prompts(n: int, seed: int = 0) -> list:
    """`n` fixed (prompt, seed) pairs for benchmarks: the 60 prompts in a shuffled order, reshuffled every
    round of 60 (so every prompt appears n // 60 or n // 60 + 1 times), each with its own distinct seed.
    The first k pairs of a longer list are the k-pair list, so a quick check is a prefix of a full benchmark."""
    prompts = all_prompts()
    # two streams, so how many prompts are asked for never changes which seeds come out
    order_rng, seed_rng = (np.random.default_rng([seed, stream]) for stream in (0, 1))
    order = []
    while len(order) < n:
        order.extend(int(i) for i in order_rng.permutation(len(prompts)))
    seeds = []
    while len(seeds) < n:
        candidate = int(seed_rng.integers(2**31 - 1))
        if candidate not in seeds:  # a repeat would score one picture twice
            seeds.append(candidate)
    return [(prompts[i], s) for i, s in zip(order[:n], seeds)]
