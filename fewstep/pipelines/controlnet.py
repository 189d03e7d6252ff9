"""ControlNet on the loop's extension point: one ControlNet or several (diffusers' MultiControlNet).

What diffusers' StableDiffusion(XL)ControlNetPipeline does, step by step, so the images agree:
the control image is resized to the output size, kept in [0, 1], repeated per image and doubled for
classifier-free guidance (not in guess mode). At step i of n, a ControlNet with window [start, end]
is on unless i/n < start or (i+1)/n > end; its residuals are scaled by its conditioning scale and
those of several nets are summed in order. Guess mode feeds the ControlNets only the conditional
half and pads the unconditional half of the residuals with zeros.

A ControlNet that is off for a step is not called: diffusers calls it with scale 0 and adds the
zero residuals, which leaves every value as it was, so skipping it changes nothing but the time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Mapping, Optional

import numpy as np

from fewstep.core import checks
from fewstep.pipelines import image_processing, prompts
from fewstep.pipelines.docstrings import Arg
from fewstep.pipelines.parts import Part

# UNet config entries a ControlNet copies from the UNet it was trained with; any difference means
# the residuals cannot be added (wrong widths, wrong number of blocks, wrong text conditioning).
_MUST_MATCH = ("block_out_channels", "layers_per_block", "cross_attention_dim", "addition_embed_type",
               "down_block_types")


def control_argument(pipeline) -> Optional[str]:
    """The call argument that holds the control image(s) of a pipeline (object or class): `image`,
    `control_image` or `conditioning_frames`, as diffusers names it for that class; None without a ControlNet."""
    cls = pipeline if isinstance(pipeline, type) else type(pipeline)
    return next((p.image_argument for p in cls._parts if isinstance(p, ControlNet)), None)


def nets_of(pipe) -> List[Any]:
    nets = pipe.controlnet
    return list(nets) if isinstance(nets, (list, tuple)) else [nets]


def _per_net(value, n: int, what: str) -> List[float]:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise ValueError(f"{what} has {len(values)} entries for {n} ControlNet(s); pass one value, or one per ControlNet.")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{what} must be a number or a list of numbers; got {value!r}.")
    # NaN and inf are numbers too: refused by name (a NaN scale gives a black image)
    return [checks.number(v, what if not isinstance(value, (list, tuple)) else f"{what}[{i}]")
            for i, v in enumerate(values)]


@dataclass
class _NetRun:
    net: Any
    image: Any            # the prepared control image (UNet batch, or conditional half in guess mode)
    scale: float
    start: float
    end: float


@dataclass
class _State:
    nets: List[_NetRun]
    guess_mode: bool      # and CFG on: the nets see the conditional half only
    hidden: Any
    added: Optional[dict]
    zeros: dict           # residual shape -> zeros for the unconditional half in guess mode


class ControlNet(Part):
    """ControlNet residuals for every UNet call. `image_argument` is the call argument holding the
    control image: `image` in the text-to-image pipelines, `control_image` where `image` is the picture to
    start from, as in diffusers; `conditioning_scale` the default of `controlnet_conditioning_scale`, which
    diffusers sets per pipeline (0.8 for SD img2img, 0.5 for SD inpainting)."""

    name = "controlnet"
    components = ("controlnet",)

    def __init__(self, image_argument: str = "image", conditioning_scale: float = 1.0, per_frame: bool = False):
        self.image_argument = image_argument
        self.per_frame = per_frame
        self.arguments = {image_argument: None, "controlnet_conditioning_scale": conditioning_scale,
                          "control_guidance_start": 0.0,
                          "control_guidance_end": 1.0, "guess_mode": False}
        self.argument_docs = {
            image_argument: Arg(
                "`PIL.Image.Image`, `np.ndarray`, a tensor, or a list of them",
                "The ControlNet input condition (an edge map, a depth map...), as diffusers' control-image processor "
                "takes it: a PIL image (resized to the output size, made RGB, scaled to [0, 1]), a NumPy array (HWC / "
                "NHWC) or a tensor of the pipeline's framework (CHW / NCHW), used with its values as given and resized "
                "(nearest) when its size differs; one for all outputs or a batch with one per prompt. With several ControlNets, a list with one such condition per ControlNet. Required; "
                "`height` and `width` default to its size."),
            "controlnet_conditioning_scale": Arg(
                "`float` or `List[float]`", "The ControlNet's residuals are multiplied by it before they are added "
                "to the UNet's; with several ControlNets, one value for all or one per ControlNet."),
            "control_guidance_start": Arg(
                "`float` or `List[float]`", "The share of the steps after which the ControlNet starts to apply "
                "(0 to 1); one value or one per ControlNet."),
            "control_guidance_end": Arg(
                "`float` or `List[float]`", "The share of the steps after which the ControlNet stops applying "
                "(above `control_guidance_start`, at most 1); one value or one per ControlNet."),
            "guess_mode": Arg(
                "`bool`", "Under classifier-free guidance, the ControlNet sees only the conditional half of the "
                "batch and the unconditional half gets no residuals, so it must recognise the content without "
                "the prompt. Always on for a ControlNet whose config sets `global_pool_conditions`."),
        }

        if per_frame:
            self.argument_docs[image_argument] = Arg(
                "`List[PIL.Image.Image]` or a list of such lists",
                "The ControlNet input condition frame by frame: one picture per video frame (PIL images, arrays or "
                "tensors, read as `image` is in the image pipelines), the same for every video; with several "
                "ControlNets, a list with one such list per ControlNet. Required.")

    # ------------------------------------------------------------------ checks
    def check_components(self, pipe) -> None:
        unet = pipe.unet.config
        for k, net in enumerate(nets_of(pipe)):
            for key in _MUST_MATCH:
                mine, theirs = net.config.get(key), unet.get(key)
                if key == "down_block_types":
                    mine, theirs = len(mine or ()), len(theirs or ())
                if isinstance(mine, (list, tuple)) or isinstance(theirs, (list, tuple)):
                    mine, theirs = np.atleast_1d(mine).tolist(), np.atleast_1d(theirs).tolist()  # plain ints in the message
                if mine != theirs:
                    raise ValueError(
                        f"ControlNet {k} does not fit the UNet: its {key} is {mine!r}, the UNet's {theirs!r}. Use a "
                        f"ControlNet trained for this base model (SD 1.5 / 2.1 ControlNets for SD, SDXL ones for SDXL).")

    def check_arguments(self, pipe, args: Mapping[str, Any], call) -> None:
        prompt_batch = call.prompt_batch
        n = len(nets_of(pipe))
        images = self._images(args, n)
        for k, (image, net) in enumerate(zip(images, nets_of(pipe))):
            image_processing.check_input(image, call.ops, "the control image", "condition",
                                         net.config.get("conditioning_channels", 3))
            count = image_processing.image_count(image)
            if self.per_frame:
                if count != args["num_frames"]:
                    raise ValueError(f"Conditioning video {k} has {count} frames for num_frames={args['num_frames']}; "
                                     f"pass one conditioning frame per frame.")
                if call.do_cfg and args["guess_mode"]:
                    raise ValueError("guess_mode with classifier-free guidance is not supported for video ControlNets "
                                     "(diffusers' AnimateDiffControlNetPipeline fails on it too); use guidance_scale <= 1.")
            elif prompt_batch is not None and count not in (1, prompt_batch):
                raise ValueError(f"Control image {k} holds {count} images for {prompt_batch} prompts; pass one image, "
                                 f"or one per prompt.")
        _per_net(args["controlnet_conditioning_scale"], n, "controlnet_conditioning_scale")
        starts, ends = self._window(args, n)
        for start, end in zip(starts, ends):
            if not 0.0 <= start < end <= 1.0:
                raise ValueError(f"control_guidance_start={start} and control_guidance_end={end}: they must satisfy "
                                 f"0 <= start < end <= 1 (shares of the steps during which a ControlNet is on).")

    def _images(self, args, n: int) -> list:
        image = args[self.image_argument]
        what = f"{self.image_argument}= (the control image)"
        if image is None:
            raise ValueError(f"This ControlNet pipeline needs {what}: a PIL image, an HWC array, a tensor, or a list.")
        if n == 1:
            images = [image]
        else:
            if not isinstance(image, (list, tuple)) or len(image) != n:
                got = len(image) if isinstance(image, (list, tuple)) else 1
                raise ValueError(f"{n} ControlNets need {n} control images in a list ({what}), one per ControlNet; "
                                 f"got {got}.")
            images = list(image)
        for k, img in enumerate(images):
            if not image_processing.is_image_input(img):
                raise ValueError(f"Control image {k} is a {type(img).__name__}; pass a PIL image, a NumPy array (HWC "
                                 f"or NHWC), a tensor of the pipeline's framework (CHW or NCHW), or a list of them.")
        return images

    @staticmethod
    def _window(args, n: int):
        start, end = args["control_guidance_start"], args["control_guidance_end"]
        # diffusers' alignment: a single value is repeated to the length of the other list or to n;
        # a list given is checked as given, so the message names the argument that is wrong
        if isinstance(end, (list, tuple)):
            end = _per_net(end, n, "control_guidance_end")
        if isinstance(start, (list, tuple)):
            start = _per_net(start, n, "control_guidance_start")
        return (_per_net(start, n, "control_guidance_start"), _per_net(end, n, "control_guidance_end"))

    def default_size(self, pipe, args):
        image = args[self.image_argument]
        if image is None or self.per_frame:  # a video's size is the UNet's, as in diffusers
            return None
        if self.image_argument != "image" and args["image"] is not None:
            # diffusers' ControlNet img2img / inpainting: the size of the picture to start from
            return image_processing.default_size(args["image"], pipe.vae_scale_factor, pipe.ops)
        first = self._images(args, len(nets_of(pipe)))[0]
        return image_processing.default_size(first, pipe.vae_scale_factor, pipe.ops)

    # ------------------------------------------------------------------ the call
    def prepare(self, pipe, run, args):
        ops, cond = run.ops, run.cond
        nets = nets_of(pipe)
        n = len(nets)
        guess = bool(args["guess_mode"] or nets[0].config.get("global_pool_conditions", False))
        halves = guess and run.do_cfg
        scales = _per_net(args["controlnet_conditioning_scale"], n, "controlnet_conditioning_scale")
        starts, ends = self._window(args, n)
        runs = []
        for net, image, scale, start, end in zip(nets, self._images(args, n), scales, starts, ends):
            pixels = image_processing.preprocess_condition(image, run.height, run.width,
                                                           channels=net.config.get("conditioning_channels", 3),
                                                           what="the control image", ops=ops)
            if self.per_frame:  # one frame per latent frame, video after video (the motion UNet's frame order)
                pixels = np.concatenate([pixels] * run.batch, axis=0)
            else:  # one image for every output, or one per prompt repeated per image (diffusers' repeat_interleave)
                pixels = np.repeat(pixels, run.batch if len(pixels) == 1 else run.num_images_per_prompt, axis=0)
            if run.do_cfg and not halves:
                pixels = np.concatenate([pixels, pixels], axis=0)
            runs.append(_NetRun(net, ops.from_numpy(pixels, like=cond.hidden, dtype=net.dtype), scale, start, end))
        hidden, added = (run.unet_hidden if self.per_frame else cond.hidden), cond.added
        if halves:
            hidden = ops.split(hidden, 2, axis=0)[1]
            added = {k: ops.split(v, 2, axis=0)[1] for k, v in added.items()} if added else None
        return _State(runs, halves, hidden, added, {})

    def unet_inputs(self, pipe, run, state: _State, step):
        n_steps = len(run.timesteps)
        sample = step.latents if state.guess_mode else step.model_input
        if self.per_frame:  # (batch, channels, frames, h, w) -> one image per frame, as diffusers feeds its ControlNet
            batch, channels, frames, h, w = run.ops.shape(sample)
            sample = run.ops.reshape(run.ops.permute_dims(sample, (0, 2, 1, 3, 4)), (batch * frames, channels, h, w))
        down = mid = None
        for r in state.nets:
            off = step.index / n_steps < r.start or (step.index + 1) / n_steps > r.end
            if off or r.scale == 0.0:
                continue  # zero residuals: see the module docstring
            d, m = r.net(sample, step.timestep, state.hidden, r.image, r.scale, guess_mode=state.guess_mode,
                         added_cond=state.added)
            down, mid = (d, m) if down is None else ([a + b for a, b in zip(down, d)], mid + m)
        if down is None:
            return None
        if state.guess_mode:
            down = [self._pad(run.ops, state, x) for x in down]
            mid = self._pad(run.ops, state, mid)
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

    @staticmethod
    def _pad(ops, state: _State, x):
        """[zeros, x]: the unconditional half gets no ControlNet residual in guess mode."""
        key = tuple(ops.shape(x))
        if key not in state.zeros:
            state.zeros[key] = prompts.zeros_like(ops, x)
        return ops.concat([state.zeros[key], x], axis=0)
