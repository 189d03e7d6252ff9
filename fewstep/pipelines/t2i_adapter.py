"""T2I-Adapter on the loop's extension point.

What diffusers' StableDiffusion(XL)AdapterPipeline does: the adapter turns the conditioning image
(resized to the output size, in [0, 1]) into one feature map per UNet level once, before the loop;
the features are multiplied by `adapter_conditioning_scale`, repeated per image, doubled for
classifier-free guidance, and added inside the UNet's down blocks
(`down_intrablock_additional_residuals`) for the first int(steps * adapter_conditioning_factor)
steps.

One difference: with one conditioning image per prompt and several images per prompt, diffusers
tiles the features (p0, p1, p0, p1) while the latents are ordered (p0, p0, p1, p1); fewstep repeats
them in the latents' order, so every image gets its own prompt's features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Mapping

from fewstep.core import checks
from fewstep.pipelines import image_processing, prompts
from fewstep.pipelines.docstrings import Arg
from fewstep.pipelines.parts import Part


def _is_xl_unet(config: Mapping) -> bool:
    return config.get("addition_embed_type") == "text_time"


def adapters_of(pipe) -> List[Any]:
    """The pipeline's T2I-Adapters: one, or several (diffusers' MultiAdapter, passed as a list)."""
    adapters = pipe.adapter
    return list(adapters) if isinstance(adapters, (list, tuple)) else [adapters]


def _weights(value, n: int) -> List[float]:
    """`adapter_conditioning_scale` per adapter: one number for all, or a list with one per adapter."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise ValueError(f"adapter_conditioning_scale has {len(values)} entries for {n} T2I-Adapters; pass one number, "
                         f"or one per adapter.")
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise ValueError(f"adapter_conditioning_scale must be a number or a list of numbers; got {value!r}.")
        checks.number(v, "adapter_conditioning_scale")  # NaN and inf are floats too
    return [float(v) for v in values]


@dataclass
class _State:
    features: List[Any]
    steps_on: int


class T2IAdapter(Part):
    """T2I-Adapter features added in the UNet's down blocks; `image` is the conditioning image. Several adapters
    (a list, or a folder diffusers saved with a MultiAdapter) each take their own image, and their features are
    summed weighted by `adapter_conditioning_scale` (diffusers' MultiAdapter)."""

    name = "adapter"
    components = ("adapter",)
    arguments = {"image": None, "adapter_conditioning_scale": 1.0, "adapter_conditioning_factor": 1.0}
    argument_docs = {
        "image": Arg("`PIL.Image.Image`, `np.ndarray`, a tensor, or a list of them",
                     "The adapter's conditioning image (a sketch, a depth map...): a PIL image (resized to the "
                     "output size, converted to the adapter's channels, scaled to [0, 1]), a NumPy array (HWC / "
                     "NHWC) or a tensor of the pipeline's framework (CHW / NCHW) with its values as given (resized, "
                     "nearest, when its size differs); one for all outputs or one per prompt. Required; `height` and `width` default to its size, rounded down to the adapter's "
                     "downscale factor."),
        "adapter_conditioning_scale": Arg("`float` or `List[float]`", "The adapter's features are multiplied by it "
                                          "before they are added inside the UNet's down blocks; with several "
                                          "adapters, one weight for all or one per adapter (their weighted features "
                                          "are summed)."),
        "adapter_conditioning_factor": Arg("`float`", "The share of the steps (from the first, 0 to 1) during which "
                                           "the adapter's features are added: int(steps x factor) steps."),
    }

    def check_components(self, pipe) -> None:
        adapters = adapters_of(pipe)
        if len({a.downscale_factor for a in adapters}) != 1:
            raise ValueError(f"The T2I-Adapters have different downscale factors "
                             f"({[a.downscale_factor for a in adapters]}); use adapters of one kind together.")
        for adapter in adapters:
            self._check_one(pipe, adapter)

    @staticmethod
    def _check_one(pipe, adapter) -> None:
        kind = adapter.config.get("adapter_type", "full_adapter")
        xl_unet = _is_xl_unet(pipe.unet.config)
        if (kind == "full_adapter_xl") != xl_unet:
            which = "an SDXL" if kind == "full_adapter_xl" else "an SD 1.x / 2.x"
            fix = "StableDiffusionXLAdapterPipeline with an SDXL base" if kind == "full_adapter_xl" else \
                "an SDXL T2I-Adapter (adapter_type 'full_adapter_xl')"
            raise ValueError(f"{type(pipe).__name__}: this is {which} T2I-Adapter ({kind}) but the UNet is "
                             f"{'SDXL' if xl_unet else 'SD 1.x / 2.x'}; use {fix}.")
        channels = list(adapter.config.get("channels", ()))
        blocks = list(pipe.unet.config["block_out_channels"])
        if channels[:len(blocks)] != blocks:
            raise ValueError(f"The T2I-Adapter's channels {channels} do not fit the UNet's block_out_channels {blocks}; "
                             f"use an adapter trained for this base model.")

    def check_arguments(self, pipe, args: Mapping[str, Any], call) -> None:
        prompt_batch = call.prompt_batch
        for image, adapter in zip(self._images(pipe, args), adapters_of(pipe)):
            image_processing.check_input(image, call.ops, "the adapter image", "condition",
                                         adapter.config.get("in_channels", 3))
            count = image_processing.image_count(image)
            if prompt_batch is not None and count not in (1, prompt_batch):
                raise ValueError(f"The adapter image holds {count} images for {prompt_batch} prompts; pass one, or one "
                                 f"per prompt.")
        _weights(args["adapter_conditioning_scale"], len(adapters_of(pipe)))
        name = "adapter_conditioning_factor"
        if not isinstance(args[name], (int, float)) or isinstance(args[name], bool):
            raise ValueError(f"{name} must be a number; got {args[name]!r}.")
        checks.number(args[name], name)  # NaN and inf are floats too
        if not 0.0 <= args["adapter_conditioning_factor"] <= 1.0:
            raise ValueError(f"adapter_conditioning_factor is the share of steps the adapter is on: 0 to 1; got "
                             f"{args['adapter_conditioning_factor']}.")

    @staticmethod
    def _images(pipe, args) -> list:
        """One conditioning image (or list of them, one per prompt) per adapter."""
        image, n = args["image"], len(adapters_of(pipe))
        if image is None:
            raise ValueError(f"{type(pipe).__name__} needs image=: the adapter's conditioning image (PIL, an HWC "
                             f"array in [0, 1], or a list" + (f" with one per adapter, {n} here)." if n > 1 else ")."))
        if n > 1 and (not isinstance(image, (list, tuple)) or len(image) != n):
            got = len(image) if isinstance(image, (list, tuple)) else 1
            raise ValueError(f"{n} T2I-Adapters need {n} conditioning images in a list (image=), one per adapter; "
                             f"got {got}.")
        images = list(image) if n > 1 else [image]
        for item in images:
            if not image_processing.is_image_input(item):
                raise ValueError(f"The adapter image is a {type(item).__name__}; pass a PIL image, a NumPy array (HWC "
                                 f"or NHWC), a tensor of the pipeline's framework (CHW or NCHW), or a list of them.")
        return images

    def default_size(self, pipe, args):
        if args["image"] is None:
            return None
        # diffusers rounds the (first) image's size down to the adapters' downscale factor
        height, width = image_processing.image_size(self._images(pipe, args)[0], pipe.ops)
        factor = adapters_of(pipe)[0].downscale_factor
        return height - height % factor, width - width % factor

    def prepare(self, pipe, run, args):
        ops, adapters = run.ops, adapters_of(pipe)
        weights = _weights(args["adapter_conditioning_scale"], len(adapters))
        features = None
        for adapter, image, weight in zip(adapters, self._images(pipe, args), weights):
            pixels = image_processing.preprocess_condition(image, run.height, run.width,
                                                           channels=adapter.config.get("in_channels", 3),
                                                           what="the adapter image", ops=ops)
            mine = [f * weight for f in adapter(ops.from_numpy(pixels, like=run.cond.hidden, dtype=adapter.dtype))]
            features = mine if features is None else [a + b for a, b in zip(features, mine)]
        repeat = run.batch // len(pixels)
        if repeat > 1:
            features = [prompts.repeat_rows(ops, f, repeat) for f in features]
        if run.do_cfg:
            features = [ops.concat([f, f], axis=0) for f in features]
        steps_on = int(len(run.timesteps) * float(args["adapter_conditioning_factor"]))
        return _State(features, steps_on)

    def unet_inputs(self, pipe, run, state: _State, step):
        if step.index >= state.steps_on:
            return None
        return {"down_intrablock_additional_residuals": state.features}
