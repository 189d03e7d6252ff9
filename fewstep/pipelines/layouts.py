"""Latent layouts: what shape the latents have, how the prompt conditioning follows it, how latents
become pictures, and what the output holds. Each is a part of the loop (see parts.py); the
loop asks the pipeline's `_layout` for the latents' shape and the pictures, and knows neither.

- `ImageLayout`: latents (batch, channels, h, w); output `.images`.
- `VideoLayout` (AnimateDiff): latents (batch, channels, frames, h, w), as diffusers' motion UNet takes
  them; the prompt embeddings repeated per frame (diffusers' `repeat_interleave(num_frames)`, after the
  CFG concat); decoded frame by frame in chunks of `decode_chunk_size` (the chunking changes nothing but
  memory: each frame is decoded on its own); output `.frames`, a list of PIL frames per video or an
  (videos, frames, h, w, 3) array.

`output_type="pt"` keeps the decoded pixels on the device and returns a tensor of the pipeline's framework,
(x / 2 + 0.5) clipped to [0, 1] as diffusers' `VaeImageProcessor.postprocess(output_type="pt")` makes it:
NCHW for images (in the VAE's output dtype), (videos, frames, channels, h, w) in float32 for video (diffusers'
`VideoProcessor.postprocess_video`).
"""

from __future__ import annotations

import numpy as np

from fewstep.pipelines import image_processing
from fewstep.pipelines.docstrings import Arg
from fewstep.pipelines.parts import Part


class ImageLayout(Part):
    name = "image"
    output_field = "images"
    output_doc = ('`.images` holds a list of PIL images (`output_type="pil"`), an NHWC float array in [0, 1] '
                  '("np"), an NCHW tensor of the pipeline\'s framework in [0, 1] ("pt") or the final latents '
                  '("latent")')

    def latent_shape(self, batch: int, channels: int, height: int, width: int, args) -> tuple:
        return (batch, channels, height, width)

    def prepare(self, pipe, call, args):
        call.unet_hidden = self.hidden(call.ops, call.cond.hidden, args)

    def hidden(self, ops, hidden, args):
        """The prompt's hidden states as the UNet takes them for these latents."""
        return hidden

    def decode_images(self, batch: int, args) -> int:
        """How many images one VAE decode call takes (what its memory grows with): the whole batch."""
        return batch

    def decode(self, pipe, call, latents, host: bool = True):
        """Pixels in about [-1, 1], NCHW for images: a NumPy array, or with `host=False` the framework tensor
        where the VAE left it."""
        vae = pipe.vae
        pixels = vae.decode(latents / float(vae.config["scaling_factor"]), **call.decode_kwargs)
        return call.ops.to_numpy(pixels) if host else pixels

    def postprocess(self, ops, pixels, output_type: str):
        """The output from `decode`'s pixels: for "pt" the tensor (host=False) in [0, 1], computed where it is."""
        if output_type == "pt":
            return to_unit_range(ops, pixels)
        return image_processing.postprocess(pixels, output_type)


def to_unit_range(ops, pixels):
    """diffusers' `_denormalize` of a framework tensor: (x / 2 + 0.5) clipped to [0, 1], in its dtype."""
    return ops.clip(pixels / 2 + 0.5, 0.0, 1.0)


class VideoLayout(ImageLayout):
    arguments = {"num_frames": 16, "decode_chunk_size": 16}
    argument_docs = {
        "num_frames": Arg("`int`", "The number of video frames to generate, at most the motion adapter's "
                          "`motion_max_seq_length` (32 for AnimateDiff's)."),
        "decode_chunk_size": Arg("`int`", "The number of frames the VAE decodes per call; each frame is decoded "
                                 "on its own, so it changes only the peak memory, never the frames."),
    }
    output_field = "frames"
    output_doc = ('`.frames` holds per video a list of PIL frames (`output_type="pil"`), a float array (videos, '
                  'frames, height, width, 3) in [0, 1] ("np"), a float32 tensor of the pipeline\'s framework '
                  '(videos, frames, 3, height, width) in [0, 1] ("pt") or the final 5-D latents ("latent")')

    def check_arguments(self, pipe, args, call) -> None:
        frames, chunk = args["num_frames"], args["decode_chunk_size"]
        if not isinstance(frames, int) or frames < 1:
            raise ValueError(f"num_frames must be a positive integer; got {frames!r}.")
        limit = pipe.unet.config.get("motion_max_seq_length")
        if limit is not None and frames > limit:
            raise ValueError(f"num_frames={frames} is more than this motion adapter's motion_max_seq_length ({limit}); "
                             f"make at most {limit} frames.")
        if not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"decode_chunk_size must be a positive integer; got {chunk!r}.")

    def latent_shape(self, batch, channels, height, width, args):
        return (batch, channels, args["num_frames"], height, width)

    def hidden(self, ops, hidden, args):
        frames = args["num_frames"]
        rows = ops.split(hidden, ops.shape(hidden)[0], axis=0)
        return ops.concat([r for r in rows for _ in range(frames)], axis=0)

    def decode_images(self, batch: int, args) -> int:
        return min(batch * int(args["num_frames"]), int(args["decode_chunk_size"]))

    def decode(self, pipe, call, latents, host: bool = True):
        """(videos, frames, C, H, W) float32 pixels in about [-1, 1]: on the host, each chunk brought over as it
        is decoded (the device holds one chunk's pixels at a time), or with `host=False` a framework tensor."""
        ops, vae, args = call.ops, pipe.vae, call.args
        batch, channels, frames, h, w = ops.shape(latents)
        flat = ops.reshape(ops.permute_dims(latents / float(vae.config["scaling_factor"]), (0, 2, 1, 3, 4)),
                           (batch * frames, channels, h, w))
        chunk = args["decode_chunk_size"]
        pieces = ops.split(flat, [min(chunk, batch * frames - i) for i in range(0, batch * frames, chunk)])
        if not host:  # diffusers' AnimateDiff casts the decoded video to float32
            pixels = ops.cast(ops.concat([vae.decode(p, **call.decode_kwargs) for p in pieces], axis=0), "float32")
            return ops.reshape(pixels, (batch, frames) + ops.shape(pixels)[1:])
        pixels = np.concatenate([ops.to_numpy(vae.decode(p, **call.decode_kwargs)) for p in pieces],
                                axis=0).astype(np.float32)
        return pixels.reshape((batch, frames) + pixels.shape[1:])  # (videos, frames, C, H, W)

    def postprocess(self, ops, pixels, output_type: str):
        if output_type == "pt":
            return to_unit_range(ops, pixels)
        videos = [image_processing.postprocess(v, output_type) for v in pixels]
        return np.stack(videos) if output_type == "np" else videos

