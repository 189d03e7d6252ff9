"""A tiny random-weight AutoencoderTiny (TAESD / TAESDXL layout), built offline.

`tiny_autoencoder_tiny(kind)` writes one model folder as diffusers' `AutoencoderTiny.save_pretrained` does
(config.json, safetensors), so `diffusers.AutoencoderTiny.from_pretrained(folder)` and mindone's load it
unchanged and a pipeline takes it as `vae=`, as it takes madebyollin/taesd or taesdxl.

The layout is TAESD's: four encoder stages of (1, 3, 3, 3) blocks and four decoder stages of (3, 3, 3, 1),
ReLU, nearest upsampling, latent_magnitude 3, latent_shift 0.5, scaling_factor 1.0, 4 latent channels (the
tiny pipelines' latent channels); only the width shrinks, 64 -> 16. Four stages make the scale factor 8
(as SD's), not the tiny pipelines' 2: diffusers' AutoencoderTiny tiles with a hardcoded factor of 8, so a
shorter one would break `enable_vae_tiling`. At 64x64 pixels the latents are 4x8x8, which the tiny UNets take.
TAESD and TAESDXL share one layout and differ only in their trained weights; here the two kinds differ in
the seed of the draw.

Why the weights are redrawn and calibrated: at torch's default init the signal fades through the many
residual blocks, so the encoder's latents barely depend on the image and the decoder's pixels barely on
the latents -- a pipeline that encoded the wrong image or dropped a step would still match. Every
convolution is redrawn from a normal distribution (He init x 0.8, which keeps each stage's output
depending on its input), then the encoder's last convolution is scaled so the latents of a fixed set of
random images have mean 0 and std 1, and the decoder's last one so the decoded pixels of fixed random
latents have mean 0 and std 0.5 (about [-1, 1], as a trained decoder's). Everything is seeded: the same
(kind, seed) always gives the same tensors, and the caller's torch RNG is left alone.

Only torch and diffusers are used, imported lazily inside the builder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from fewstep.testing.tiny_models import cached_folder, default_cache_dir

# Bump whenever the config or the draw below changes (cached folders are then rebuilt).
FORMAT_VERSION = 1

# kind -> (folder name, seed offset): the released names of the two, and a different draw for each
TINY_VAE_KINDS = {"sd15": ("taesd", 0), "sdxl": ("taesdxl", 1)}

WIDTH = 16
TINY_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, encoder_block_out_channels=(WIDTH,) * 4, decoder_block_out_channels=(WIDTH,) * 4,
    act_fn="relu", upsample_fn="nearest", latent_channels=4, upsampling_scaling_factor=2,
    num_encoder_blocks=(1, 3, 3, 3), num_decoder_blocks=(3, 3, 3, 1), latent_magnitude=3, latent_shift=0.5,
    scaling_factor=1.0,
)
CONV_GAIN = 0.8
DECODED_STD = 0.5


def tiny_autoencoder_tiny(kind: str = "sd15", seed: int = 0, path: Optional[Union[str, os.PathLike]] = None) -> str:
    """Write (or reuse) a tiny random-weight AutoencoderTiny folder and return it.

    kind: "sd15" (TAESD) or "sdxl" (TAESDXL); both fit the tiny pipelines of that kind (4 latent channels).
    seed: seeds the draw; the same (kind, seed) always gives the same tensors.
    path: the folder to write; default `<cache>/taesd-<seed>` or `<cache>/taesdxl-<seed>` (see
    `fewstep.testing.tiny_models.default_cache_dir`).
    """
    if kind not in TINY_VAE_KINDS:
        raise ValueError(f"Unknown tiny AutoencoderTiny kind {kind!r}; choose one of {', '.join(TINY_VAE_KINDS)}.")
    seed = int(seed)
    name, offset = TINY_VAE_KINDS[kind]

    def write(staging: Path) -> None:
        _build(seed + offset).save_pretrained(str(staging), safe_serialization=True)

    target = Path(path) if path is not None else default_cache_dir() / f"{name}-{seed}"
    return cached_folder(target, {"kind": name, "seed": seed, "format": FORMAT_VERSION}, write,
                         what="tiny AutoencoderTiny")


def _build(seed: int):
    import diffusers
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = diffusers.AutoencoderTiny(**TINY_VAE_CONFIG).eval()
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() == 4:  # He init, shrunk: see the module docstring
                    param.normal_(0.0, CONV_GAIN * (2.0 / param[0].numel()) ** 0.5)
            draw = torch.Generator().manual_seed(seed)
            images = torch.rand(4, 3, 64, 64, generator=draw) * 2 - 1
            latents = torch.randn(4, TINY_VAE_CONFIG["latent_channels"], 8, 8, generator=draw)
            _calibrate(model.encoder.layers[-1], lambda: model.encode(images).latents, mean=0.0, std=1.0)
            _calibrate(model.decoder.layers[-1], lambda: model.decode(latents).sample, mean=0.0, std=DECODED_STD)
    return model


def _calibrate(conv, output, mean: float, std: float) -> None:
    """Scale and shift the last convolution so that `output()` (affine in it: the decoder maps it to 2x - 1)
    has this mean and std."""
    scale = std / float(output().std())
    conv.weight.mul_(scale)
    conv.bias.mul_(scale)
    before = float(output().mean())
    conv.bias.add_(1.0)
    slope = float(output().mean()) - before  # what a unit of bias moves the mean by
    conv.bias.add_((mean - before) / slope - 1.0)
