"""Tasks as parts of the loop: which timesteps run (picked by `timesteps.py`) and how the latents start, and
what follows each step.

Text-to-image starts from noise; img2img from the encoded image noised to the first timestep (the schedule
cut by `strength` as diffusers' SD pipelines cut it, or, for the LCM pipelines, `strength` passed to the
scheduler's `set_timesteps`); inpainting also feeds a 9-channel UNet the mask and the masked image, or
blends the kept region back after every step for a 4-channel one.

Randomness is consumed in diffusers' order, so `fewstep.Generator(s)` here gives what
`torch.manual_seed(s)` gives there: (VAE posterior sample of the image,) initial noise, (VAE sample of
the masked image,) then the scheduler's per-step noise. An AutoencoderTiny has no posterior: its two VAE samples
draw nothing, as in diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fewstep.core import checks
from fewstep.core.schedulers.timesteps import python_timestep
from fewstep.pipelines import image_processing
from fewstep.pipelines.timesteps import check_denoising_range, cut_schedule, end_schedule, set_schedule, start_schedule
from fewstep.pipelines.docstrings import Arg
from fewstep.pipelines.parts import Part

_IMAGE = "`PIL.Image.Image`, `np.ndarray`, a tensor, or a list of them"
_STRENGTH = ("How much the input image is changed: only the last int(num_inference_steps x strength) timesteps "
             "run, {start}; at least one step must remain. `None` uses the class's default.")


@dataclass
class _Inpainting:
    noise: Any                  # the initial noise (the 4-channel blend re-noises the image with it)
    image_latents: Any          # the encoded input image (4-channel inpainting blends it back)
    mask: Any                   # latent-size mask (1 = repaint)
    masked_image_latents: Any   # None when the image came as latents (4-channel UNets only)
    crop: Any = None            # padding_mask_crop's box and originals (_Crop), for the overlay


def encode_image(pipe, call, pixels, like):
    """Scaled VAE latents of an NCHW [-1, 1] image, sampled from the posterior with the user's generator
    (diffusers' `retrieve_latents` default; an AutoencoderTiny's latents as they are), repeated to the batch."""
    ops, batch, generator = call.ops, call.batch, call.generator
    pixels = as_device_pixels(pipe, pixels, like)
    mean, std = pipe.vae.encode(pixels)
    n = ops.shape(mean)[0]
    if n != batch and batch % n:
        raise ValueError(f"{n} images cannot be spread over {batch} outputs; pass 1 image or one per output.")
    if isinstance(generator, list) and n != batch:
        # diffusers repeats the image first, then samples once per generator
        mean, std = (None if x is None else ops.concat([x] * (batch // n), axis=0) for x in (mean, std))
        n = batch
    latents = ops.cast(posterior_sample(pipe, mean, std, generator) * float(pipe.vae.config["scaling_factor"]),
                       call.cond.dtype)
    return ops.concat([latents] * (batch // n), axis=0) if n != batch else latents


def as_device_pixels(pipe, pixels: np.ndarray, like):
    """NCHW pixels on the device in the VAE's dtype, laid out as diffusers lays them out: it permutes NHWC arrays,
    so torch's VAE sees channels-last strides. The layout changes torch's rounding, which a flat picture (the
    all-black masked image of a fully masked inpainting) amplifies through the encoder's GroupNorm (variance ~0)
    far above 1e-4; with the same layout the latents are diffusers'. Costs nothing: a view on torch."""
    nhwc = pipe.ops.from_numpy(np.ascontiguousarray(pixels.transpose(0, 2, 3, 1)), like=like, dtype=pipe.vae.dtype)
    return pipe.ops.permute_dims(nhwc, (0, 3, 1, 2))


def posterior_sample(pipe, mean, std, generator):
    """One sample of the VAE's posterior, drawn from the user's generator as diffusers' `retrieve_latents` draws it.
    A VAE without a posterior (AutoencoderTiny: std None) gives its latents as they are and draws nothing, so the
    noise that follows is the one diffusers draws next."""
    if std is None:
        return mean
    ops = pipe.ops
    return mean + std * pipe._randn(ops.shape(mean), ops.dtype_name(mean), generator, like=mean)


def latent_size(pipe, call):
    return call.height // pipe.vae_scale_factor, call.width // pipe.vae_scale_factor


_SCHEDULE_ARGUMENTS = {"original_inference_steps": None, "denoising_end": None}
_SCHEDULE_DOCS = {
    "original_inference_steps": Arg(
        "`int`", "The size of the distillation grid the timesteps are picked from (the scheduler's config value, "
        "usually 50, when None), passed to the scheduler's `set_timesteps` (LCM and TCD take it)."),
    "denoising_end": Arg(
        "`float`", "Stop when this share of the denoising is done (0 < value <= 1): the timesteps below "
        "num_train_timesteps x (1 - denoising_end) are not run, and the latents are still noisy. With "
        "`output_type=\"latent\"` this is the base of a base+refiner run (the refiner takes the same value as "
        "`denoising_start`)."),
}
_START_DOCS = {"denoising_start": Arg(
    "`float`", "Start when this share of the denoising is done (0 < value < 1): only the timesteps below "
    "num_train_timesteps x (1 - denoising_start) run, `strength` is ignored and `image` (the base's latents) is "
    "not noised. The refiner half of a base+refiner run.")}


class Text2Image(Part):
    """Starts from noise (or the user's `latents`) over the whole schedule."""

    name = "text2img"
    default_strength = 1.0
    arguments = _SCHEDULE_ARGUMENTS
    argument_docs = _SCHEDULE_DOCS
    rewords = {
        "image": Arg("`None`", "Not taken: a text-to-image pipeline starts from noise. Use the Img2Img or Inpaint "
                     "pipeline to start from an image."),
        "mask_image": Arg("`None`", "Not taken; see the Inpaint pipelines."),
        "strength": Arg("`float`", "Leave it at 1.0: text-to-image runs the whole schedule from noise."),
    }

    def check_arguments(self, pipe, args, call):
        if any(args[n] is not None and n not in call.claimed for n in ("image", "mask_image")):
            raise ValueError(f"{type(pipe).__name__} makes images from text only; use the Img2Img or Inpaint "
                             f"pipeline to start from an image.")
        check_denoising_range(args)

    def schedule(self, pipe, call, args) -> np.ndarray:
        schedule = set_schedule(pipe, args)
        if args.get("denoising_start") is not None:
            schedule = start_schedule(pipe, schedule, float(args["denoising_start"]))
        else:
            schedule = cut_schedule(pipe, schedule, call.strength)
        return end_schedule(pipe, schedule, args["denoising_end"])

    def prepare(self, pipe, call, args):
        call.timesteps = [python_timestep(t) for t in self.schedule(pipe, call, args)]
        ops, cond = call.ops, call.cond
        shape = pipe._layout.latent_shape(call.batch, pipe.unet.config["in_channels"], *latent_size(pipe, call), args)
        latents = args["latents"]
        if latents is not None:
            latents = pipe._as_tensor(latents, "latents", cond.dtype, like=cond.hidden)
            if tuple(ops.shape(latents)) != shape:
                raise ValueError(f"latents have shape {ops.shape(latents)} but {shape} is needed for this size and batch.")
        else:
            latents = pipe._randn(shape, cond.dtype, call.generator, like=cond.hidden)
        call.latents = latents * float(pipe.scheduler.init_noise_sigma)


class LCMText2Image(Text2Image):
    """diffusers' LatentConsistencyModelPipeline: `original_inference_steps` goes to the scheduler."""

    name = "lcm-text2img"

    def schedule(self, pipe, call, args):
        return end_schedule(pipe, set_schedule(pipe, args), args["denoising_end"])


def _check_image(pipe, args, call, what: str = "image") -> None:
    """The picture to start from is there, in a form diffusers takes, and its count spreads over the outputs."""
    image = args[what]
    if image is None:
        raise ValueError(f"{type(pipe).__name__} needs {what}=: the picture to start from.")
    if image_processing.latents_of(image, call.ops, pipe.vae.config["latent_channels"]) is not None:
        return
    if not image_processing.is_image_input(image):
        raise ValueError(f"{what} is a {type(image).__name__}; pass a PIL image, a NumPy array (HWC or NHWC, values in "
                         f"[0, 1]), a {call.ops.name} tensor (CHW or NCHW), or a list of them.")
    image_processing.check_input(image, call.ops, what, "image")
    count = image_processing.image_count(image)
    if call.prompt_batch is not None and (call.prompt_batch * call.num_images_per_prompt) % count:
        raise ValueError(f"{count} images cannot be spread over {call.prompt_batch * call.num_images_per_prompt} "
                         f"outputs; pass 1 image or one per output.")


def init_latents(pipe, call, image, like):
    """The image to start from as scaled latents for the whole batch: latents given as `image` are used as
    they are (repeated to the batch), pictures are encoded with the VAE."""
    ops, dtype = call.ops, call.cond.dtype
    given = image_processing.latents_of(image, ops, pipe.vae.config["latent_channels"])
    if given is None:
        return encode_image(pipe, call, image_processing.preprocess_image(image, call.height, call.width, ops), like)
    n = ops.shape(given)[0]
    if call.batch % n:
        raise ValueError(f"{n} latents cannot be spread over {call.batch} outputs; pass 1 or one per output.")
    given = ops.cast(given, dtype)
    return ops.concat([given] * (call.batch // n), axis=0) if n != call.batch else given


class Img2Img(Text2Image):
    """Starts from the encoded input image, noised to the first timestep of the cut schedule."""

    name = "img2img"
    uses = ("image",)
    default_strength = 0.8
    arguments = {**_SCHEDULE_ARGUMENTS, "denoising_start": None}
    argument_docs = {**_SCHEDULE_DOCS, **_START_DOCS}
    rewords = {
        "image": Arg(_IMAGE, "The image to start from, as diffusers takes it: PIL images (resized to the output "
                     "size), NumPy arrays (HWC / NHWC) or tensors of the pipeline's framework (CHW / NCHW) in [0, 1] "
                     "(or [-1, 1]), resized when their size differs; a tensor with the VAE's latent channels is "
                     "taken as latents (the base's `output_type=\"latent\"`). One for all outputs, or a batch "
                     "whose size divides the number of outputs. Required."),
        "mask_image": Arg("`None`", "Not taken: img2img changes the whole image; see the Inpaint pipelines."),
        "strength": Arg("`float`", _STRENGTH.format(start="starting from the encoded image noised to the first of "
                                                           "them (1.0 keeps little of the image)")),
        "latents": Arg("`None`", "Not used: img2img starts from the encoded image, noised with `generator`."),
    }

    def check_arguments(self, pipe, args, call):
        if args["mask_image"] is not None:
            raise ValueError("mask_image belongs to the Inpaint pipelines; Img2Img changes the whole image.")
        _check_image(pipe, args, call)
        check_denoising_range(args)

    def default_size(self, pipe, args):
        # diffusers' default: the input image's own size, rounded down to the VAE factor (latents: times it)
        given = image_processing.latents_of(args["image"], pipe.ops, pipe.vae.config["latent_channels"])
        if given is not None:
            return tuple(d * pipe.vae_scale_factor for d in pipe.ops.shape(given)[2:])
        return image_processing.default_size(args["image"], pipe.vae_scale_factor, pipe.ops)

    def prepare(self, pipe, call, args):
        call.timesteps = [python_timestep(t) for t in self.schedule(pipe, call, args)]
        init = init_latents(pipe, call, args["image"], like=call.cond.hidden)
        if args.get("denoising_start") is not None:  # the refiner continues the base's latents as they are
            call.latents = init
            return
        noise = pipe._randn(call.ops.shape(init), call.cond.dtype, call.generator, like=init)
        start = np.full((call.batch,), call.timesteps[0])
        call.latents = pipe.scheduler.add_noise(init, noise, start)


class LCMImg2Img(Img2Img):
    """diffusers' LatentConsistencyModelImg2ImgPipeline: `strength` goes into the scheduler's `set_timesteps`
    (2 steps at strength 0.8 run [799, 399] on the default grid), not SD img2img's cut."""

    name = "lcm-img2img"
    arguments = _SCHEDULE_ARGUMENTS
    argument_docs = _SCHEDULE_DOCS
    rewords = {**Img2Img.rewords, "strength": Arg(
        "`float`", "How much the input image is changed: passed to the scheduler's `set_timesteps`, which picks "
        "`num_inference_steps` timesteps from the first int(original_inference_steps x strength) points of its "
        "grid; the encoded image is noised to the first of them. `None` uses the class's default.")}

    def schedule(self, pipe, call, args):
        return end_schedule(pipe, set_schedule(pipe, args, strength=call.strength), args["denoising_end"])


@dataclass
class _Crop:
    box: Any            # (x1, y1, x2, y2) in the original image
    original: Any       # the user's image and mask, for the overlay
    mask: Any


class Inpaint(Img2Img):
    """Repaints the masked region: a 9-channel UNet sees the mask and the masked image, a 4-channel one has
    the kept region blended back after every step. With `padding_mask_crop` only the masked region's box is
    repainted (at the output size) and pasted back over the original."""

    name = "inpaint"
    uses = ("image", "mask_image")
    default_strength = 1.0
    arguments = {**Img2Img.arguments, "padding_mask_crop": None}
    argument_docs = {**Img2Img.argument_docs, "padding_mask_crop": Arg(
        "`int`", "Repaint only the box around the mask, grown by this many pixels and to the output's aspect ratio: "
        "the box of image and mask is fitted to the output size, repainted, and pasted back over the original "
        "where the mask is white. PIL image and mask and `output_type=\"pil\"` only, as in diffusers.")}
    rewords = {
        "image": Arg(_IMAGE, "The image to repaint, in any form img2img takes (PIL, NumPy HWC / NHWC, CHW / NCHW "
                     "tensors of the pipeline's framework; latents for a 4-channel UNet). Required."),
        "mask_image": Arg(_IMAGE, "Where to repaint, as diffusers' mask processor reads it: made one channel, "
                          "resized to the output size, binarised at 0.5 (white, at least 0.5, is repainted; black "
                          "kept). PIL (scaled by 1/255), NumPy arrays or tensors (values as given); one mask, or one "
                          "per image. Required."),
        "strength": Arg("`float`", _STRENGTH.format(start="starting from the encoded image noised to the first of "
                                                           "them; at 1.0 from pure noise")),
    }

    def check_arguments(self, pipe, args, call):
        if args["image"] is None or args["mask_image"] is None:
            raise ValueError(f"{type(pipe).__name__} needs image= and mask_image= (white = repaint).")
        _check_image(pipe, args, call)
        if not image_processing.is_image_input(args["mask_image"]):
            raise ValueError(f"mask_image is a {type(args['mask_image']).__name__}; pass a PIL image, a NumPy array, "
                             f"a {call.ops.name} tensor, or a list of them.")
        image_processing.check_input(args["mask_image"], call.ops, "mask_image", "mask")
        check_denoising_range(args)
        image_processing.check_mask_matches(args["image"], args["mask_image"])
        channels = pipe.unet.config["in_channels"]
        if channels not in (4, 9):
            raise ValueError(f"An inpainting UNet has 4 or 9 input channels; this one has {channels}.")
        latent = image_processing.latents_of(args["image"], call.ops, pipe.vae.config["latent_channels"])
        if latent is not None and channels == 9:
            raise ValueError("A 9-channel inpainting UNet needs the masked picture: pass image= as pixels, not latents.")
        crop = args["padding_mask_crop"]
        if crop is not None:
            checks.whole(crop, "padding_mask_crop", 0, checks.MAX_SIDE, "It is the padding around the mask, in pixels.")
            if not all(image_processing.is_pil(args[n]) for n in ("image", "mask_image")):
                raise ValueError("padding_mask_crop needs image= and mask_image= as single PIL images (as in diffusers); "
                                 "convert them, or leave padding_mask_crop out.")
            if args["output_type"] != "pil":
                raise ValueError(f"padding_mask_crop pastes the result back into the original picture, so it needs "
                                 f"output_type='pil'; got {args['output_type']!r}.")

    def default_size(self, pipe, args):
        return None  # diffusers' SD / SDXL inpainting: the UNet's sample size, not the image's

    def prepare(self, pipe, call, args):
        call.timesteps = [python_timestep(t) for t in self.schedule(pipe, call, args)]
        ops, dtype, batch = call.ops, call.cond.dtype, call.batch
        channels = pipe.unet.config["in_channels"]
        image, mask_image, crop = args["image"], args["mask_image"], None
        if args["padding_mask_crop"] is not None:
            box = image_processing.crop_region(mask_image, call.width, call.height, int(args["padding_mask_crop"]))
            crop = _Crop(box, image, mask_image)
            image = image_processing.cropped([image], box, call.height, call.width)
            mask_image = image_processing.cropped([mask_image], box, call.height, call.width)
        latent_image = image_processing.latents_of(image, ops, pipe.vae.config["latent_channels"])
        pixels = None if latent_image is not None else \
            image_processing.preprocess_image(image, call.height, call.width, ops)
        mask = image_processing.preprocess_mask(mask_image, call.height, call.width, ops)
        full_strength = call.strength == 1.0
        refining = args.get("denoising_start") is not None
        image_latents = None
        if latent_image is not None or channels == 4 or not full_strength or refining:
            image_latents = init_latents(pipe, call, image, like=call.cond.hidden)
        shape = (batch, pipe.vae.config["latent_channels"], *latent_size(pipe, call))
        if refining:  # diffusers still draws the noise (the 4-channel blend uses it), then starts from the image
            noise = pipe._randn(shape, dtype, call.generator, like=call.cond.hidden)
            latents = image_latents
        elif args["latents"] is not None:
            noise = pipe._as_tensor(args["latents"], "latents", dtype, like=call.cond.hidden)
            latents = noise * float(pipe.scheduler.init_noise_sigma)
        else:
            noise = pipe._randn(shape, dtype, call.generator, like=call.cond.hidden)
            if full_strength:
                latents = noise * float(pipe.scheduler.init_noise_sigma)
            else:
                start = np.full((batch,), call.timesteps[0])
                latents = pipe.scheduler.add_noise(image_latents, noise, start)
        masked_latents = None
        if pixels is not None:
            masked_latents = encode_image(pipe, call, pixels * (mask < 0.5), like=noise)
        latent_mask = ops.resize(ops.from_numpy(mask, like=noise, dtype=dtype), latent_size(pipe, call), mode="nearest")
        if ops.shape(latent_mask)[0] != batch:
            latent_mask = ops.concat([latent_mask] * (batch // ops.shape(latent_mask)[0]), axis=0)
        call.latents = latents
        return _Inpainting(noise=noise, image_latents=image_latents, mask=latent_mask,
                           masked_image_latents=masked_latents, crop=crop)

    def model_input(self, pipe, call, state, step):
        model_in = step.model_input
        if pipe.unet.config["in_channels"] != 9:
            return model_in
        ops = call.ops
        reps = ops.shape(model_in)[0] // ops.shape(state.mask)[0]
        mask = ops.concat([state.mask] * reps, axis=0) if reps > 1 else state.mask
        masked = ops.concat([state.masked_image_latents] * reps, axis=0) if reps > 1 else state.masked_image_latents
        return ops.concat([model_in, mask, masked], axis=1)

    def after_step(self, pipe, call, state, step, latents):
        if pipe.unet.config["in_channels"] != 4:
            return latents
        proper = state.image_latents
        if step.index < len(call.timesteps) - 1:
            proper = pipe.scheduler.add_noise(proper, state.noise,
                                              np.asarray([call.timesteps[step.index + 1]]))
        return (1.0 - state.mask) * proper + state.mask * latents

    def finish(self, pipe, call, state, images):
        if state.crop is None:
            return images
        crop = state.crop
        return [image_processing.apply_overlay(crop.mask, crop.original, i, crop.box) for i in images]


def _videos(video) -> list:
    """A list of videos (each a list of frames) from `video=`: one video (a list of frames) or a list of them."""
    if isinstance(video, (list, tuple)) and video and all(isinstance(v, (list, tuple)) for v in video):
        return [list(v) for v in video]
    return [list(video)] if isinstance(video, (list, tuple)) else [video]


class VideoToVideo(Text2Image):
    """diffusers' AnimateDiffVideoToVideoPipeline: the frames of `video` are encoded (in chunks of
    `decode_chunk_size`, one posterior sample per chunk), noised to the first timestep of the cut schedule
    with noise drawn in (videos, frames, channels, h, w) order, and denoised as a video of that many frames."""

    name = "video2video"
    default_strength = 0.8
    arguments = {**_SCHEDULE_ARGUMENTS, "video": None}
    argument_docs = {**_SCHEDULE_DOCS, "video": Arg(
        "`List[PIL.Image.Image]` or a list of such lists", "The video to start from: its frames (PIL images, "
        "resized to the output size, or HWC arrays in [0, 1] of that size); one video for all outputs or one per "
        "output. Its length sets `num_frames`. Required.")}
    rewords = {
        "strength": Arg("`float`", _STRENGTH.format(start="starting from the encoded frames noised to the first of "
                                                           "them (1.0 keeps little of the video)")),
        "latents": Arg("`None`", "Not used: video-to-video starts from the encoded frames, noised with `generator`."),
        **{k: v for k, v in Text2Image.rewords.items() if k != "strength"},
    }

    def check_arguments(self, pipe, args, call):
        if args["image"] is not None or args["mask_image"] is not None:
            raise ValueError(f"{type(pipe).__name__} starts from video= (a list of frames); it takes no image= or "
                             f"mask_image=.")
        if args["video"] is None:
            raise ValueError(f"{type(pipe).__name__} needs video=: the frames to start from (a list of PIL images).")
        videos = _videos(args["video"])
        lengths = {len(v) for v in videos}
        if not all(lengths) or len(lengths) != 1 or not all(image_processing.is_image_input(f) for v in videos for f in v):
            raise ValueError("video= must be a non-empty list of frames (PIL images or HWC arrays in [0, 1]), or a list "
                             "of such lists of one length.")
        args["num_frames"] = lengths.pop()  # the layout makes as many frames as the video has

    def prepare(self, pipe, call, args):
        call.timesteps = [python_timestep(t) for t in self.schedule(pipe, call, args)]
        ops, vae, dtype = call.ops, pipe.vae, call.cond.dtype
        videos = _videos(args["video"])
        if call.batch % len(videos):
            raise ValueError(f"{len(videos)} videos cannot be spread over {call.batch} outputs; pass 1 or one per output.")
        chunk = int(args["decode_chunk_size"])
        encoded = []
        for frames in videos:
            pixels = as_device_pixels(pipe, image_processing.preprocess_image(frames, call.height, call.width, ops),
                                      like=call.cond.hidden)
            parts = []
            for part in ops.split(pixels, [min(chunk, len(frames) - i) for i in range(0, len(frames), chunk)]):
                parts.append(posterior_sample(pipe, *vae.encode(part), call.generator))
            latents = ops.concat(parts, axis=0) * float(vae.config["scaling_factor"])
            encoded.append(ops.reshape(ops.cast(latents, dtype), (1,) + tuple(ops.shape(latents))))
        init = ops.concat(encoded * (call.batch // len(videos)), axis=0)  # (videos, frames, channels, h, w)
        noise = pipe._randn(ops.shape(init), dtype, call.generator, like=init)
        start = np.full((call.batch,), call.timesteps[0])
        call.latents = ops.permute_dims(pipe.scheduler.add_noise(init, noise, start), (0, 2, 1, 3, 4))
