"""Where two runs part: one pipeline call on two sides, compared stage by stage and, where a stage is out
of bounds, layer by layer.

    from fewstep.parity import compare, load_side
    a = load_side("path/to/model", backend="torch")
    b = load_side("path/to/model", backend="mindspore")          # or library="diffusers" / "mindone",
    report = compare(a, b, {"prompt": "a red fox", "num_inference_steps": 4, "eta": 0.3})  # dtype=...
    print(report.first_stage, report.first_module)

Sides can be any two pipelines of one architecture: fewstep on torch and on MindSpore, two dtypes, fewstep
and its reference library (diffusers on torch, mindone on MindSpore), two devices, or two model folders.
Framework-neutral: the frameworks are reached through `fewstep.backends` only.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

import numpy as np

from fewstep.core.random import Generator
from fewstep.parity.environment import environment
from fewstep.parity.localise import localise
from fewstep.parity.metrics import DEFAULT_ATOL, default_rtol, difference, within
from fewstep.parity.recording import Recorder, Recording
from fewstep.parity.render import format_report, read_report, write_report
from fewstep.parity.report import ModuleDiff, ParityReport, StageDiff
from fewstep.parity.sides import Side, load_side

__all__ = ["ModuleDiff", "ParityReport", "Side", "StageDiff", "compare", "default_tolerance", "format_report",
           "load_side", "read_report", "write_report"]

# Final-image tolerance (max abs, images in [0, 1]) by the less precise dtype: the float32 bound the
# project holds torch and MindSpore to, and what half precisions reach on the tiny models.
_IMAGE_TOLERANCE = {"float64": 1e-3, "float32": 1e-3, "float16": 3e-2, "bfloat16": 1e-1}


def default_tolerance(dtype_a: str, dtype_b: str) -> float:
    worst = "bfloat16" if "bfloat16" in (dtype_a, dtype_b) else "float16" if "float16" in (dtype_a, dtype_b) \
        else "float32"
    return _IMAGE_TOLERANCE[worst]


def _model_of(stage: str) -> Optional[str]:
    """The model whose call produced a stage, or None for stages no single model call produced."""
    head = stage.split(".")[0]
    if stage == "vae.decoder":
        return "vae.decoder"
    if stage == "unet.output":
        return "unet"
    if head in ("text_encoder", "text_encoder_2", "controlnet", "adapter"):
        return head
    return None


def _record_run(side: Side, call_kwargs: Dict[str, Any], latents: Optional[np.ndarray], seed: int,
                stream: str) -> Recording:
    with Recorder(side.pipe) as recording:
        images = side.run(call_kwargs, latents, seed, stream)
    recording.add("image", images)
    recording.images = images
    return recording


def _stage_table(rec_a: Recording, rec_b: Recording, rtol: float, atol: float) -> List[StageDiff]:
    b = {(stage, index): array for stage, index, array in rec_b.records}
    seen, table = set(), []
    for stage, index, array in rec_a.records:
        seen.add((stage, index))
        other = b.get((stage, index))
        if other is None:
            table.append(StageDiff(stage, index, tuple(array.shape), float("nan"), float("nan"), float("nan"), rtol,
                                   False, "missing on side b"))
        elif other.shape != array.shape:
            table.append(StageDiff(stage, index, tuple(array.shape), float("nan"), float("nan"), float("nan"), rtol,
                                   False, f"shapes differ: {tuple(array.shape)} vs {tuple(other.shape)}"))
        else:
            max_abs, max_rel, rel = difference(array, other)
            table.append(StageDiff(stage, index, tuple(array.shape), max_abs, max_rel, rel, rtol,
                                   within(max_abs, rel, rtol, atol)))
    for stage, index, array in rec_b.records:
        if (stage, index) not in seen:
            table.append(StageDiff(stage, index, tuple(array.shape), float("nan"), float("nan"), float("nan"), rtol,
                                   False, "missing on side a"))
    return table


def compare(side_a: Union[Side, Any], side_b: Union[Side, Any], call_kwargs: Optional[Dict[str, Any]] = None, *,
            seed: int = 0, rtol: Optional[float] = None, atol: float = DEFAULT_ATOL,
            tolerance: Optional[float] = None, localise_layers: bool = True) -> ParityReport:
    """Run one pipeline call on both sides and compare every stage.

    Args:
        side_a (`Side` or a pipeline):
            The reference side: a `Side`, or a fewstep / diffusers / mindone pipeline.
        side_b (`Side` or a pipeline):
            The side compared with it.
        call_kwargs (`dict`, *optional*):
            The pipeline call's arguments (prompt, num_inference_steps, guidance_scale, eta, height, width,
            ...). Not `generator` or `latents`: both sides get the same latents and seed.
        seed (`int`, *optional*, defaults to 0):
            Seeds the initial latents of both sides; their generators (per-step noise, img2img's encoding)
            get `seed + 1`, so the step noise is not a copy of the initial latents.
        rtol (`float`, *optional*):
            The relative-L2 bound of every stage; default by the sides' dtypes (`metrics.DEFAULT_RTOL`).
        atol (`float`, *optional*, defaults to 1e-06):
            A stage whose every element is within atol is in bounds whatever its relative difference.
        tolerance (`float`, *optional*):
            The final image's max abs difference that `report.passed` allows; default by dtype.
        localise_layers (`bool`, *optional*, defaults to True):
            Rerun the first out-of-bounds model call per layer and report the first divergent module.

    Returns:
        `ParityReport`: the stage table, the first stage and module out of bounds, sides, environment, images.
    """
    side_a = side_a if isinstance(side_a, Side) else Side(side_a)
    side_b = side_b if isinstance(side_b, Side) else Side(side_b)
    call_kwargs = dict(call_kwargs or {})
    for forbidden in ("generator", "latents", "output_type"):
        if forbidden in call_kwargs:
            raise ValueError(f"compare() sets {forbidden!r} itself (the same for both sides); remove it from "
                             f"call_kwargs and pass seed= instead.")
    if call_kwargs.get("prompt") is None and call_kwargs.get("prompt_embeds") is None:
        call_kwargs["prompt"] = ""
    # mindone draws with NumPy's PCG64; fewstep then draws the same numbers with its numpy stream.
    stream = "numpy" if "mindone" in (side_a.library, side_b.library) else "torch"
    latents = None
    if not (side_a.starts_from_image or side_b.starts_from_image):
        # Text-to-image: both sides start from one host draw. Img2img / inpainting start from the encoded
        # image, noised by each side's generator of the same seed and stream, so from the same numbers.
        if "height" not in call_kwargs or "width" not in call_kwargs:
            height, width = side_a.default_size()
            call_kwargs.setdefault("height", height)
            call_kwargs.setdefault("width", width)
        prompt = call_kwargs.get("prompt")
        batch = (len(prompt) if isinstance(prompt, (list, tuple)) else 1) * int(call_kwargs.get("num_images_per_prompt", 1))
        shapes = {side.latent_shape(batch, call_kwargs["height"], call_kwargs["width"]) for side in (side_a, side_b)}
        if len(shapes) != 1:
            raise ValueError(f"The two sides' latents differ in shape ({sorted(shapes)}): compare pipelines of one "
                             f"architecture.")
        latents = Generator(seed, stream=stream).randn(shapes.pop(), dtype="float32")
    rtol = default_rtol(side_a.dtype, side_b.dtype) if rtol is None else float(rtol)
    tolerance = default_tolerance(side_a.dtype, side_b.dtype) if tolerance is None else float(tolerance)

    rec_a = _record_run(side_a, call_kwargs, latents, seed + 1, stream)
    rec_b = _record_run(side_b, call_kwargs, latents, seed + 1, stream)
    stages = _stage_table(rec_a, rec_b, rtol, atol)
    report = ParityReport(side_a=side_a.describe(), side_b=side_b.describe(), stages=stages, tolerance=tolerance,
                          image_max_abs=difference(rec_a.images, rec_b.images)[0]
                          if rec_a.images.shape == rec_b.images.shape else float("inf"),
                          environment=environment(), images=(rec_a.images, rec_b.images))
    first = report.first_stage
    model = _model_of(first.stage) if first is not None and not first.note else None
    if localise_layers and model is not None:
        call_a, call_b = rec_a.calls.get((model, first.index)), rec_b.calls.get((model, first.index))
        if call_a is not None and call_b is not None:
            report.localised_stage = first.label
            report.modules = localise(call_a, call_b, rtol, atol)
    return report
