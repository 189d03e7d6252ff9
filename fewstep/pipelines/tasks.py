"""How the latents start and what follows each step: text-to-image, img2img and inpainting.

Randomness is consumed in diffusers' order, so `fewstep.Generator(s)` here gives what
`torch.manual_seed(s)` gives there: (VAE posterior sample of the image,) initial noise, (VAE sample of
the masked image,) then the scheduler's per-step noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fewstep.pipelines import image_processing
from fewstep.pipelines.docstrings import Arg

_IMAGE = "`PIL.Image.Image`, `np.ndarray` or a list of them"
_STRENGTH = ("How much the input image is changed: only the last int(num_inference_steps x strength) timesteps "
             "run, {start}; at least one step must remain. `None` uses the class's default.")


@dataclass
class LatentState:
    latents: Any
    noise: Any = None           # the initial noise (inpainting re-noises the image with it)
    image_latents: Any = None   # the encoded input image (4-channel inpainting blends it back)
    mask: Any = None            # latent-size mask (1 = repaint)
    masked_image_latents: Any = None


class _ImageTaskMixin:
    def _output_size(self, height, width, image):
        # diffusers' default: the input image's own size, rounded down to the VAE factor
        default_h, default_w = image_processing.default_size(image, self.vae_scale_factor)
        # only None takes the default: 0 is refused by the size check, not silently replaced
        return default_h if height is None else height, default_w if width is None else width

    def _encode_image(self, pixels, generator, batch: int, dtype: str, like):
        """Scaled VAE latents of an NCHW [-1, 1] image, sampled from the posterior with the user's
        generator (diffusers' `retrieve_latents` default), repeated to the batch."""
        ops = self.ops
        pixels = ops.from_numpy(pixels, like=like, dtype=self.vae.dtype)
        mean, std = self.vae.encode(pixels)
        n = ops.shape(mean)[0]
        if n != batch and batch % n:
            raise ValueError(f"{n} images cannot be spread over {batch} outputs; pass 1 image or one per output.")
        if isinstance(generator, list) and n != batch:
            # diffusers repeats the image first, then samples once per generator
            mean, std = (ops.concat([x] * (batch // n), axis=0) for x in (mean, std))
            n = batch
        sample = mean + std * self._randn(ops.shape(mean), ops.dtype_name(mean), generator, like=mean)
        latents = ops.cast(sample * float(self.vae.config["scaling_factor"]), dtype)
        return ops.concat([latents] * (batch // n), axis=0) if n != batch else latents


class Text2ImageTask:
    _task = "text-to-image"
    # what the loop's image arguments mean here (see base.CALL_ARGUMENTS); an adapter may own `image`
    _argument_docs = {
        "image": Arg("`None`", "Not taken: a text-to-image pipeline starts from noise. Use the Img2Img or Inpaint "
                     "pipeline to start from an image."),
        "mask_image": Arg("`None`", "Not taken; see the Inpaint pipelines."),
        "strength": Arg("`float`", "Leave it at 1.0: text-to-image runs the whole schedule from noise."),
    }

    def _check_task_inputs(self, image, mask_image):
        if image is not None or mask_image is not None:
            raise ValueError(f"{type(self).__name__} makes images from text only; use the Img2Img or Inpaint "
                             f"pipeline to start from an image.")

    def _output_size(self, height, width, image):
        default_h, default_w = self._default_size()
        return default_h if height is None else height, default_w if width is None else width

    def _prepare_latents(self, batch, height, width, dtype, generator, latents, image, mask_image, schedule,
                         strength, like, layout_args=None):
        ops = self.ops
        shape = self._layout.latent_shape(batch, self.unet.config["in_channels"], height // self.vae_scale_factor,
                                          width // self.vae_scale_factor, layout_args)
        if latents is not None:
            latents = self._as_tensor(latents, "latents", dtype, like=like)
            if tuple(ops.shape(latents)) != shape:
                raise ValueError(f"latents have shape {ops.shape(latents)} but {shape} is needed for this size and batch.")
        else:
            latents = self._randn(shape, dtype, generator, like=like)
        return LatentState(latents=latents * float(self.scheduler.init_noise_sigma))

    def _unet_input(self, model_in, state):
        return model_in

    def _after_step(self, latents, i, schedule, state):
        return latents


class Img2ImgTask(_ImageTaskMixin, Text2ImageTask):
    _task = "img2img"
    _default_strength = 0.8
    _argument_docs = {
        "image": Arg(_IMAGE, "The image to start from: a PIL image (resized to the output size) or an HWC array "
                     "in [0, 1] of that size; one for all outputs, or a list whose length divides the number of "
                     "outputs. Required."),
        "mask_image": Arg("`None`", "Not taken: img2img changes the whole image; see the Inpaint pipelines."),
        "strength": Arg("`float`", _STRENGTH.format(start="starting from the encoded image noised to the first of "
                                                           "them (1.0 keeps little of the image)")),
        "latents": Arg("`None`", "Not used: img2img starts from the encoded image, noised with `generator`."),
    }

    def _check_task_inputs(self, image, mask_image):
        if image is None:
            raise ValueError(f"{type(self).__name__} needs image=: the picture to start from.")
        if mask_image is not None:
            raise ValueError("mask_image belongs to the Inpaint pipelines; Img2Img changes the whole image.")

    def _prepare_latents(self, batch, height, width, dtype, generator, latents, image, mask_image, schedule,
                         strength, like, layout_args=None):
        ops = self.ops
        pixels = image_processing.preprocess_image(image, height, width)
        init = self._encode_image(pixels, generator, batch, dtype, like=like)
        noise = self._randn(ops.shape(init), dtype, generator, like=init)
        start = np.full((batch,), schedule[0], dtype=np.int64)
        return LatentState(latents=self.scheduler.add_noise(init, noise, start))


class InpaintTask(_ImageTaskMixin, Text2ImageTask):
    _task = "inpainting"
    _argument_docs = {
        "image": Arg(_IMAGE, "The image to repaint: a PIL image (resized to the output size) or an HWC array in "
                     "[0, 1] of that size; one for all outputs, or a list whose length divides the number of "
                     "outputs. Required."),
        "mask_image": Arg(_IMAGE, "Where to repaint: white (at least 0.5) is repainted, black kept. The size of "
                          "`image`; one mask, or one per image. Required."),
        "strength": Arg("`float`", _STRENGTH.format(start="starting from the encoded image noised to the first of "
                                                           "them; at 1.0 from pure noise")),
    }

    def _check_task_inputs(self, image, mask_image):
        if image is None or mask_image is None:
            raise ValueError(f"{type(self).__name__} needs image= and mask_image= (white = repaint).")
        image_processing.check_mask_matches(image, mask_image)

    def _prepare_latents(self, batch, height, width, dtype, generator, latents, image, mask_image, schedule,
                         strength, like, layout_args=None):
        ops = self.ops
        channels = self.unet.config["in_channels"]
        if channels not in (4, 9):
            raise ValueError(f"An inpainting UNet has 4 or 9 input channels; this one has {channels}.")
        pixels = image_processing.preprocess_image(image, height, width)
        mask = image_processing.preprocess_mask(mask_image, height, width)
        full_strength = strength == 1.0
        image_latents = None
        if channels == 4 or not full_strength:
            image_latents = self._encode_image(pixels, generator, batch, dtype, like=like)
        shape = (batch, self.vae.config["latent_channels"], height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is not None:
            noise = self._as_tensor(latents, "latents", dtype, like=like)
            latents = noise * float(self.scheduler.init_noise_sigma)
        else:
            noise = self._randn(shape, dtype, generator, like=like)
            if full_strength:
                latents = noise * float(self.scheduler.init_noise_sigma)
            else:
                start = np.full((batch,), schedule[0], dtype=np.int64)
                latents = self.scheduler.add_noise(image_latents, noise, start)
        masked = pixels * (mask < 0.5)
        masked_latents = self._encode_image(masked, generator, batch, dtype, like=noise)
        latent_mask = ops.resize(ops.from_numpy(mask, like=noise, dtype=dtype),
                                 (height // self.vae_scale_factor, width // self.vae_scale_factor), mode="nearest")
        if ops.shape(latent_mask)[0] != batch:
            latent_mask = ops.concat([latent_mask] * (batch // ops.shape(latent_mask)[0]), axis=0)
        return LatentState(latents=latents, noise=noise, image_latents=image_latents, mask=latent_mask,
                           masked_image_latents=masked_latents)

    def _unet_input(self, model_in, state):
        if self.unet.config["in_channels"] != 9:
            return model_in
        ops = self.ops
        reps = ops.shape(model_in)[0] // ops.shape(state.mask)[0]
        mask = ops.concat([state.mask] * reps, axis=0) if reps > 1 else state.mask
        masked = ops.concat([state.masked_image_latents] * reps, axis=0) if reps > 1 else state.masked_image_latents
        return ops.concat([model_in, mask, masked], axis=1)

    def _after_step(self, latents, i, schedule, state):
        if self.unet.config["in_channels"] != 4:
            return latents
        proper = state.image_latents
        if i < len(schedule) - 1:
            proper = self.scheduler.add_noise(proper, state.noise, np.asarray([schedule[i + 1]], dtype=np.int64))
        return (1.0 - state.mask) * proper + state.mask * latents
