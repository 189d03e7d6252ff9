"""A parity report as pictures: the two final images beside a heat map of where they differ, and the
relative L2 difference of the per-step stages against the step.

NumPy and PIL; matplotlib draws the step plot when it is importable (through its Agg canvas, never
pyplot, so no global backend is switched and no window opens), else PIL draws the same plot itself.
Both return PIL images; writing them is `render.write_report`'s job."""

from __future__ import annotations

import io
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

from .report import ParityReport

# The stages recorded once per denoising step, in loop order, with a fixed colour each so the
# matplotlib and PIL plots look alike (matplotlib's tab10 blue, orange, green, red).
PER_STEP_STAGES = ("unet.input", "unet.output", "guidance", "scheduler")
_COLOURS = {"unet.input": (31, 119, 180), "unet.output": (255, 127, 14), "guidance": (44, 160, 44),
            "scheduler": (214, 39, 40)}

# rel L2 is 0.0 where two tensors are identical; a log axis cannot show 0, so values are drawn at
# least at this floor (far below any float32 difference: 1e-12 reads as "identical").
REL_L2_FLOOR = 1e-12

PLOT_SIZE = (640, 360)          # latents.png, either way it is drawn
MIN_PANEL_WIDTH = 128           # smaller images are enlarged (nearest, integer factor) so labels fit
LABEL_BAND = 16                 # height of the label strip above the images

# A perceptual dark-to-bright ramp (inferno's ends and quarters): 0 black, the largest difference
# pale yellow, so small differences stay visible against zero.
_RAMP_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_RAMP_RGB = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], dtype=np.float64)


# -- images.png ------------------------------------------------------------------------------------


def images_picture(report: ParityReport) -> Optional[PIL.Image.Image]:
    """Side a, side b and |a - b| in three columns, one row per image of the batch.

    The heat map is the largest difference over channels, normalised by its largest value over the whole
    batch and coloured with a dark-to-bright ramp; its label gives that largest value. Panels narrower
    than `MIN_PANEL_WIDTH` are enlarged by an integer factor (nearest neighbour), so the picture is
    ``3 * W * factor`` wide and ``LABEL_BAND + rows * H * factor`` high. NaN pixels are drawn black in the
    images and at full heat in the map.

    Args:
        report (`ParityReport`):
            Its `images`: a pair (a, b) of float arrays in [0, 1], NHWC (HWC is one image), 1, 3 or 4
            channels (alpha is dropped).

    Returns:
        `PIL.Image.Image` (RGB), or None when the report holds no images.
    """
    if report.images is None:
        return None
    a, b = (_as_nhwc(x) for x in report.images)
    rows, height, width = max(len(a), len(b)), max(a.shape[1], b.shape[1]), max(a.shape[2], b.shape[2])
    scale = max(1, math.ceil(MIN_PANEL_WIDTH / width))
    ph, pw = height * scale, width * scale

    comparable = a.shape == b.shape
    if comparable:
        diff = np.abs(a - b).max(axis=-1)                           # N H W; NaN where either is NaN
        finite = diff[np.isfinite(diff)]
        peak = float(finite.max()) if finite.size else 0.0
        heat = np.where(np.isfinite(diff), diff / peak if peak > 0 else 0.0, 1.0)
        heat_label = f"|a-b| max={float(diff.max()):.3g}"
    else:
        heat_label = f"|a-b|: shapes differ {a.shape[1:]} vs {b.shape[1:]}"

    canvas = PIL.Image.new("RGB", (3 * pw, LABEL_BAND + rows * ph), (32, 32, 32))
    for row in range(rows):
        top = LABEL_BAND + row * ph
        for col, side in enumerate((a, b)):
            if row < len(side):
                canvas.paste(_panel(_to_uint8(side[row]), scale), (col * pw, top))
        if comparable:
            canvas.paste(_panel(_ramp(heat[row]), scale), (2 * pw, top))

    draw = PIL.ImageDraw.Draw(canvas)
    font = PIL.ImageFont.load_default()
    labels = (_side_label(report.side_a, "a"), _side_label(report.side_b, "b"), heat_label)
    for col, text in enumerate(labels):
        draw.text((col * pw + 3, 2), text, fill=(255, 255, 255), font=font)
    if comparable:  # the ramp itself, at the right end of the heat map's label strip, where there is room
        text_right = 2 * pw + 3 + draw.textlength(heat_label, font=font) + 6
        strip = min(48, int(3 * pw - 3 - text_right))
        if strip >= 16:
            ramp = _ramp(np.tile(np.linspace(0.0, 1.0, strip), (LABEL_BAND - 8, 1)))
            canvas.paste(PIL.Image.fromarray(ramp), (3 * pw - 3 - strip, 4))
    return canvas


def _as_nhwc(image) -> np.ndarray:
    x = np.asarray(image, dtype=np.float64)
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"report.images holds NHWC (or HWC) arrays; got shape {x.shape}")
    channels = x.shape[-1]
    if channels == 1:
        return np.repeat(x, 3, axis=-1)
    if channels in (3, 4):
        return x[..., :3]
    raise ValueError(f"report.images must have 1, 3 or 4 channels last (NHWC); got shape {x.shape}: "
                     "transpose NCHW arrays with a.transpose(0, 2, 3, 1)")


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(np.nan_to_num(image, nan=0.0), 0.0, 1.0) * 255).round().astype(np.uint8)


def _ramp(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> H W 3 uint8 colours along the ramp."""
    v = np.clip(values, 0.0, 1.0)
    rgb = np.stack([np.interp(v, _RAMP_STOPS, _RAMP_RGB[:, c]) for c in range(3)], axis=-1)
    return rgb.round().astype(np.uint8)


def _panel(pixels: np.ndarray, scale: int) -> PIL.Image.Image:
    image = PIL.Image.fromarray(pixels)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), PIL.Image.NEAREST)
    return image


def _side_label(side: dict, name: str) -> str:
    label = side.get("label") or side.get("backend")
    return f"{name}: {label}" if label else f"side {name}"


# -- latents.png -----------------------------------------------------------------------------------


def step_series(report: ParityReport) -> Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{stage: (steps, rel L2, bounds)} for each per-step stage the report holds, in `PER_STEP_STAGES`
    order; the raw values (0.0, inf and NaN included)."""
    series = {}
    for stage in PER_STEP_STAGES:
        entries = sorted(report.stage_series(stage), key=lambda s: s.index)
        if entries:
            series[stage] = tuple(np.array([getattr(s, f) for s in entries], dtype=np.float64)
                                  for f in ("index", "rel_l2", "bound"))
    return series


def steps_plot(report: ParityReport, use_matplotlib: Optional[bool] = None) -> Optional[PIL.Image.Image]:
    """rel L2 against the step, one line per per-step stage present, log-scale y, `PLOT_SIZE` pixels.

    Each stage's bound is drawn dotted in its colour. rel L2 of 0.0 (identical) is drawn at
    `REL_L2_FLOOR`, an infinite one at the top of the axis, NaN as a gap in the line.

    Args:
        report (`ParityReport`):
            The comparison; its stages named in `PER_STEP_STAGES` are plotted.
        use_matplotlib (`bool`, *optional*):
            True: matplotlib (ImportError without it); False: PIL; None (default): matplotlib when it is
            importable, else PIL.

    Returns:
        `PIL.Image.Image` (RGB), or None when the report has no per-step stage (nothing is drawn then).
    """
    series = step_series(report)
    if not series:
        return None
    lo, hi = _decades(series)
    clipped = {stage: (x, _clip(y, lo, hi), _clip(bound, lo, hi)) for stage, (x, y, bound) in series.items()}
    if use_matplotlib is None:
        try:
            import matplotlib  # noqa: F401  (only asks whether it is there)
            use_matplotlib = True
        except ImportError:
            use_matplotlib = False
    return _plot_matplotlib(clipped, lo, hi) if use_matplotlib else _plot_pil(clipped, lo, hi)


def _decades(series) -> Tuple[int, int]:
    """The log10 range of the y axis: whole decades around every finite value and bound, floor applied."""
    values = np.concatenate([np.concatenate([y, bound]) for _, y, bound in series.values()])
    finite = np.maximum(values[np.isfinite(values)], REL_L2_FLOOR)
    if not finite.size:
        return 0, 1
    lo, hi = math.floor(math.log10(finite.min())), math.ceil(math.log10(finite.max()))
    hi += bool(np.isposinf(values).any())       # a decade of headroom, so inf stands above every number
    return lo, max(hi, lo + 1)


def _clip(values: np.ndarray, lo: int, hi: int) -> np.ndarray:
    # NaN stays NaN (a gap); +inf goes to the top of the axis; 0 and anything tiny to the floor.
    out = np.where(np.isposinf(values), 10.0 ** hi, values)
    return np.where(np.isnan(out), np.nan, np.maximum(out, REL_L2_FLOOR))


def _plot_matplotlib(series, lo: int, hi: int) -> PIL.Image.Image:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(PLOT_SIZE[0] / 100, PLOT_SIZE[1] / 100), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for stage, (x, y, bound) in series.items():
        colour = tuple(c / 255 for c in _COLOURS[stage])
        ax.plot(x, y, marker="o", markersize=3, color=colour, label=stage)
        ax.plot(x, bound, linestyle=":", color=colour, alpha=0.7)
    ax.plot([], [], linestyle=":", color="grey", label="bound")
    ax.set_yscale("log")
    ax.set_ylim(10.0 ** lo, 10.0 ** hi)
    ax.set_xlabel("step")
    ax.set_ylabel("rel L2")
    ax.set_title("rel L2 per step (log scale)", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    buffer.seek(0)
    with PIL.Image.open(buffer) as image:
        return image.convert("RGB")


def _plot_pil(series, lo: int, hi: int) -> PIL.Image.Image:
    width, height = PLOT_SIZE
    left, right, top, bottom = 58, 16, 26, 40
    image = PIL.Image.new("RGB", PLOT_SIZE, (255, 255, 255))
    draw = PIL.ImageDraw.Draw(image)
    font = PIL.ImageFont.load_default()
    x0, x1, y0, y1 = left, width - right, top, height - bottom         # plot area, y0 at the top

    steps = np.concatenate([x for x, _, _ in series.values()])
    smin, smax = float(steps.min()), float(steps.max())
    pad = 0.5 if smax == smin else 0.04 * (smax - smin)                 # keep end points off the frame
    smin, smax = smin - pad, smax + pad

    def px(step: float) -> float:
        return x0 + (step - smin) / (smax - smin) * (x1 - x0)

    def py(value: float) -> float:
        return y1 - (math.log10(value) - lo) / (hi - lo) * (y1 - y0)

    # Axes, decade ticks (every k-th when there are many) and integer step ticks.
    every = max(1, math.ceil((hi - lo) / 8))
    for decade in range(lo, hi + 1, every):
        y = py(10.0 ** decade)
        draw.line((x0, y, x1, y), fill=(225, 225, 225))
        draw.line((x0 - 4, y, x0, y), fill=(0, 0, 0))
        text = f"1e{decade:+03d}" if decade else "1"
        draw.text((x0 - 6 - draw.textlength(text, font=font), y - 6), text, fill=(0, 0, 0), font=font)
    draw.rectangle((x0, y0, x1, y1), outline=(0, 0, 0))                  # over the grid lines
    first, last = math.ceil(smin), math.floor(smax)
    stride = max(1, math.ceil((last - first + 1) / 12))
    for step in range(first, last + 1, stride):
        x = px(step)
        draw.line((x, y1, x, y1 + 4), fill=(0, 0, 0))
        draw.text((x - draw.textlength(str(step), font=font) / 2, y1 + 6), str(step), fill=(0, 0, 0), font=font)
    draw.text(((x0 + x1) / 2 - draw.textlength("step", font=font) / 2, height - 16), "step", fill=(0, 0, 0), font=font)
    draw.text((4, 4), "rel L2 per step (log scale)", fill=(0, 0, 0), font=font)

    for stage, (x, y, bound) in series.items():
        colour = _COLOURS[stage]
        for segment in _segments(x, bound):
            _dotted(draw, [(px(s), py(v)) for s, v in segment], colour)
        for segment in _segments(x, y):
            points = [(px(s), py(v)) for s, v in segment]
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            for px_, py_ in points:
                draw.ellipse((px_ - 2, py_ - 2, px_ + 2, py_ + 2), fill=colour)

    # Legend: inside the plot area, in the corner that covers the fewest points.
    entries = [(stage, _COLOURS[stage], False) for stage in series] + [("bound", (128, 128, 128), True)]
    box_w, box_h = 30 + max(draw.textlength(name, font=font) for name, _, _ in entries), 14 * len(entries) + 4
    points = [(px(s), py(v)) for x, y, bound in series.values() for values in (y, bound)
              for s, v in zip(x, values) if np.isfinite(v)]
    corners = [(x1 - box_w - 6, y0 + 6), (x0 + 6, y0 + 6), (x1 - box_w - 6, y1 - box_h - 6), (x0 + 6, y1 - box_h - 6)]
    bx, by = min(corners, key=lambda c: sum(c[0] - 4 <= u <= c[0] + box_w + 4 and c[1] - 4 <= v <= c[1] + box_h + 4
                                            for u, v in points))
    draw.rectangle((bx, by, bx + box_w, by + box_h), fill=(255, 255, 255), outline=(160, 160, 160))
    for i, (name, colour, dotted) in enumerate(entries):
        ly = by + 9 + 14 * i
        if dotted:
            _dotted(draw, [(bx + 4, ly), (bx + 22, ly)], colour)
        else:
            draw.line((bx + 4, ly, bx + 22, ly), fill=colour, width=2)
        draw.text((bx + 26, ly - 6), name, fill=(0, 0, 0), font=font)
    return image


def _segments(x: np.ndarray, y: np.ndarray) -> List[List[Tuple[float, float]]]:
    """Runs of consecutive points with a finite y (NaN breaks the line)."""
    runs, run = [], []
    for s, v in zip(x, y):
        if np.isfinite(v):
            run.append((float(s), float(v)))
        elif run:
            runs.append(run)
            run = []
    return runs + ([run] if run else [])


def _dotted(draw: PIL.ImageDraw.ImageDraw, points: Sequence[Tuple[float, float]], colour, dash: float = 3.0) -> None:
    """A dotted polyline: `dash` pixels on, `dash` off, along each segment."""
    for (xa, ya), (xb, yb) in zip(points, points[1:]):
        length = math.hypot(xb - xa, yb - ya)
        n = max(1, int(length // (2 * dash)))
        for k in range(n):
            t0, t1 = 2 * k * dash / max(length, 1e-9), min(1.0, (2 * k + 1) * dash / max(length, 1e-9))
            draw.line((xa + (xb - xa) * t0, ya + (yb - ya) * t0, xa + (xb - xa) * t1, ya + (yb - ya) * t1), fill=colour)
