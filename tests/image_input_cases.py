"""Every image input form diffusers takes (issue 26 item 1), as cases shared by the torch and MindSpore tests.

A case is a pipeline class on a tiny folder and the picture arguments of one call, built for a framework:
PIL images, NumPy arrays (HW / HWC / NHWC, [0, 1]), tensors (CHW / NCHW, [0, 1] or [-1, 1], other sizes),
latents as `image`, masks (near-black PIL, soft, tensor, other size, 3-channel), control and adapter tensors
with any range. `alternative` is the same call with that one input changed, so a test can show the input
matters. Pipelines are loaded once per module (`_loaded`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import PIL.Image

from tests.pipeline_cases import SIZE, mask, picture

PROMPT = "a red fox in the snow"
STEPS = 2
# TCD stochastic, with classifier-free guidance: every input reaches both halves of the UNet batch
CALL = dict(prompt=PROMPT, num_inference_steps=STEPS, guidance_scale=1.5, negative_prompt="blurry", eta=0.3,
            output_type="np")


def array_image(seed: int, size: int = SIZE) -> np.ndarray:
    """HWC float32 in [0, 1]."""
    return np.asarray(picture(seed, size), np.float32) / 255.0


def _nchw(seed: int, size: int = SIZE) -> np.ndarray:
    return np.ascontiguousarray(array_image(seed, size).transpose(2, 0, 1)[None])


def _near_black_mask() -> PIL.Image.Image:
    """Pixel values 4 and 5: diffusers' mask processor scales by 1/255 and binarises, so nothing is repainted."""
    m = np.full((SIZE, SIZE), 4, np.uint8)
    m[SIZE // 4: 3 * SIZE // 4, SIZE // 4: 3 * SIZE // 4] = 5
    return PIL.Image.fromarray(m)


def _soft_mask() -> np.ndarray:
    """HW float32: a horizontal ramp from 0 to 1 (binarised at 0.5)."""
    return np.tile(np.linspace(0.0, 1.0, SIZE, dtype=np.float32), (SIZE, 1))


def _box_mask(size: int = SIZE, low: int = 4, high: int = 3) -> np.ndarray:
    m = np.zeros((size, size), np.float32)
    m[size // low: high * size // 4, size // 4: 3 * size // 4] = 1.0
    return m


class Tensor:
    """A NumPy array to be passed as a tensor of the framework under test."""

    def __init__(self, array: np.ndarray):
        self.array = np.ascontiguousarray(array, dtype=np.float32)


def as_inputs(kwargs: dict, framework: str) -> dict:
    """`Tensor` markers (also inside lists) as torch or MindSpore tensors."""
    def convert(value):
        if isinstance(value, Tensor):
            if framework == "torch":
                import torch

                return torch.from_numpy(value.array.copy())
            import mindspore

            return mindspore.Tensor(value.array.copy())
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    return {k: convert(v) for k, v in kwargs.items()}


@dataclass
class Case:
    pipeline: str                       # fewstep / diffusers class name
    kind: str                           # tiny pipeline kind
    inputs: Callable[[], dict]          # the picture arguments
    alternative: Optional[Callable[[], dict]] = None  # the same with the input under test changed
    part: Optional[str] = None          # "controlnet" or "adapter": a tiny part of the same kind
    prompts: int = 1                    # prompt batch


_INIT, _OTHER = 3, 9

CASES = {
    # ---- img2img: the picture to start from
    "img2img-pil": Case("StableDiffusionImg2ImgPipeline", "sd15", lambda: dict(image=picture(_INIT)),
                        lambda: dict(image=picture(_OTHER))),
    "img2img-pil-list": Case("StableDiffusionImg2ImgPipeline", "sd15",
                             lambda: dict(image=[picture(_INIT), picture(_OTHER)]), prompts=2),
    "img2img-numpy-hwc": Case("StableDiffusionImg2ImgPipeline", "sd15", lambda: dict(image=array_image(_INIT)),
                              lambda: dict(image=array_image(_OTHER))),
    # diffusers' img2img takes its size from the image, rounded down to the VAE factor (2 here): 65 -> 64,
    # the picture resized with nearest sampling
    "img2img-numpy-nhwc-other-size": Case("StableDiffusionImg2ImgPipeline", "sd15",
                                          lambda: dict(image=array_image(_INIT, SIZE + 1)[None])),
    "img2img-tensor-nchw-01": Case("StableDiffusionImg2ImgPipeline", "sd15", lambda: dict(image=Tensor(_nchw(_INIT))),
                                   lambda: dict(image=Tensor(_nchw(_OTHER)))),
    "img2img-tensor-nchw-pm1": Case("StableDiffusionImg2ImgPipeline", "sd15",
                                    lambda: dict(image=Tensor(2 * _nchw(_INIT) - 1))),
    "img2img-tensor-chw-list": Case("StableDiffusionImg2ImgPipeline", "sd15",
                                    lambda: dict(image=[Tensor(_nchw(_INIT)[0]), Tensor(_nchw(_OTHER)[0])]),
                                    prompts=2),
    "img2img-tensor-other-size": Case("StableDiffusionImg2ImgPipeline", "sd15",
                                      lambda: dict(image=Tensor(_nchw(_INIT, SIZE + 1)))),
    "img2img-latents": Case("StableDiffusionImg2ImgPipeline", "sd15",
                            lambda: dict(image=Tensor(np.random.default_rng(1).standard_normal(
                                (1, 4, SIZE // 2, SIZE // 2)).astype(np.float32))),
                            lambda: dict(image=Tensor(np.random.default_rng(2).standard_normal(
                                (1, 4, SIZE // 2, SIZE // 2)).astype(np.float32)))),
    # ---- inpainting (9-channel UNet): the mask as diffusers' mask processor reads it
    "inpaint-mask-pil": Case("StableDiffusionInpaintPipeline", "sd15-inpaint",
                             lambda: dict(image=picture(_INIT), mask_image=mask()),
                             lambda: dict(image=picture(_INIT), mask_image=PIL.Image.fromarray(
                                 (_box_mask(low=2) * 255).astype(np.uint8)))),
    "inpaint-mask-near-black": Case("StableDiffusionInpaintPipeline", "sd15-inpaint",
                                    lambda: dict(image=picture(_INIT), mask_image=_near_black_mask()),
                                    lambda: dict(image=picture(_INIT), mask_image=mask())),
    "inpaint-mask-soft-numpy": Case("StableDiffusionInpaintPipeline", "sd15-inpaint",
                                    lambda: dict(image=picture(_INIT), mask_image=_soft_mask()),
                                    lambda: dict(image=picture(_INIT), mask_image=_soft_mask()[:, ::-1].copy())),
    "inpaint-mask-tensor-n1hw": Case("StableDiffusionInpaintPipeline", "sd15-inpaint",
                                     lambda: dict(image=Tensor(_nchw(_INIT)), mask_image=Tensor(_box_mask()[None, None])),
                                     lambda: dict(image=Tensor(_nchw(_INIT)),
                                                  mask_image=Tensor(_box_mask(low=2)[None, None]))),
    "inpaint-mask-tensor-hw": Case("StableDiffusionInpaintPipeline", "sd15-inpaint",
                                   lambda: dict(image=picture(_INIT), mask_image=Tensor(_box_mask()[None]))),
    "inpaint-mask-other-size": Case("StableDiffusionInpaintPipeline", "sd15-inpaint",
                                    lambda: dict(image=picture(_INIT), mask_image=_box_mask(96))),
    # ---- ControlNet: tensors used with their values as given, resized when their size differs
    "controlnet-tensor-any-range": Case("StableDiffusionControlNetPipeline", "sd15",
                                        lambda: dict(image=Tensor(3 * _nchw(7) - 1), controlnet_conditioning_scale=3.0),
                                        lambda: dict(image=Tensor(1 - _nchw(8)), controlnet_conditioning_scale=3.0),
                                        part="controlnet"),
    "controlnet-tensor-other-size": Case("StableDiffusionControlNetPipeline", "sd15",
                                         lambda: dict(image=Tensor(_nchw(7, 48)), height=SIZE, width=SIZE),
                                         part="controlnet"),
    "controlnet-numpy-nhwc": Case("StableDiffusionControlNetPipeline", "sd15", lambda: dict(image=array_image(7)[None]),
                                  part="controlnet"),
    # ---- T2I-Adapter: a tensor is used as given
    "adapter-tensor": Case("StableDiffusionAdapterPipeline", "sd15", lambda: dict(image=Tensor(_nchw(7))),
                           lambda: dict(image=Tensor(_nchw(8))), part="adapter"),
}
NAMES = list(CASES)
WITH_ALTERNATIVE = [n for n in NAMES if CASES[n].alternative is not None]

_loaded = {}


def _part_folder(case: Case) -> Optional[str]:
    from fewstep.testing import tiny_controlnet, tiny_t2i_adapter

    if case.part is None:
        return None
    return (tiny_controlnet if case.part == "controlnet" else tiny_t2i_adapter)(case.kind)


def ours(case: Case, backend: str):
    import fewstep
    from fewstep import pipelines

    key = ("ours", case.pipeline, case.kind, backend)
    if key not in _loaded:
        from fewstep.testing import tiny_pipeline

        parts = {}
        if case.part:
            loader = fewstep.ControlNetModel if case.part == "controlnet" else fewstep.T2IAdapter
            parts[case.part] = loader.from_pretrained(_part_folder(case), backend=backend)
        pipe = getattr(pipelines, case.pipeline).from_pretrained(tiny_pipeline(case.kind), backend=backend, **parts)
        pipe.set_progress_bar_config(disable=True)
        _loaded[key] = pipe
    pipe = _loaded[key]
    pipe.scheduler = fewstep.TCDScheduler.from_config(pipe.scheduler.config)
    return pipe


def reference(case: Case):
    import diffusers

    key = ("diffusers", case.pipeline, case.kind)
    if key not in _loaded:
        from fewstep.testing import tiny_pipeline

        parts = {}
        if case.part:
            loader = diffusers.ControlNetModel if case.part == "controlnet" else diffusers.T2IAdapter
            parts[case.part] = loader.from_pretrained(_part_folder(case))
        extra = dict(safety_checker=None, requires_safety_checker=False) if case.kind.startswith("sd15") else {}
        pipe = getattr(diffusers, case.pipeline).from_pretrained(tiny_pipeline(case.kind), **parts, **extra)
        pipe.set_progress_bar_config(disable=True)
        _loaded[key] = pipe
    pipe = _loaded[key]
    pipe.scheduler = diffusers.TCDScheduler.from_config(pipe.scheduler.config)
    return pipe


def call(case: Case, inputs: dict) -> dict:
    if case.prompts == 1:
        return {**CALL, **inputs}
    return {**CALL, "prompt": [PROMPT] * case.prompts, "negative_prompt": ["blurry"] * case.prompts, **inputs}
