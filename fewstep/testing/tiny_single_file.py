"""Tiny single-file checkpoints in the original key layout (A1111 / civitai), written from the tiny pipelines.

`tiny_checkpoint(kind)` takes the weights of `tiny_pipeline(kind)`'s folder and writes them into one
`.safetensors` file under the names the original training code used (see `ldm_layout`): LDM for SD 1.x / 2.x
(`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*` or OpenCLIP
`cond_stage_model.model.*`), SGM for SDXL (`conditioner.embedders.0.transformer.*`,
`conditioner.embedders.1.model.*`). Loaded with `config=` that folder, a checkpoint must give back the same
models. NumPy and safetensors only (the folder is built with torch the first time, by `tiny_pipeline`).

SD 2.x 512 and 768-v checkpoints share their keys; the file's metadata says which, as Stability's model spec
does (`modelspec.architecture`, `modelspec.prediction_type`), so the family can be told from the header.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

from fewstep.testing import ldm_layout
from fewstep.testing.tiny_models import FORMAT_VERSION, KINDS, cached_folder, default_cache_dir, tiny_pipeline

CHECKPOINT_FORMAT = 1  # bump when the layout written below changes

# The model spec's architecture names (github.com/Stability-AI/ModelSpec), and each kind's prediction type.
_MODELSPEC = {"sd15": ("stable-diffusion-v1", "epsilon"), "sd15-inpaint": ("stable-diffusion-v1/inpaint", "epsilon"),
              "sd21": ("stable-diffusion-v2-512", "epsilon"), "sd21-v": ("stable-diffusion-v2-768-v", "v"),
              "sdxl": ("stable-diffusion-xl-v1-base", "epsilon"),
              "sdxl-inpaint": ("stable-diffusion-xl-v1-base/inpaint", "epsilon")}


def tiny_checkpoint(kind: str, seed: int = 0, path: Optional[Union[str, os.PathLike]] = None) -> str:
    """Write (or reuse) a tiny single-file checkpoint of `kind` and return the `.safetensors` file's path.

    kind: one of `fewstep.testing.KINDS`; the weights are those of `tiny_pipeline(kind, seed=seed)`, which
        is the `config=` folder to load it with.
    seed: as for `tiny_pipeline`.
    path: the folder that holds the file (`<kind>.safetensors`); default `<cache>/single-file-<kind>-<seed>`.
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown tiny checkpoint kind {kind!r}; choose one of {', '.join(KINDS)}.")
    seed = int(seed)
    folder = tiny_pipeline(kind, seed=seed)
    target = Path(path) if path is not None else default_cache_dir() / f"single-file-{kind}-{seed}"
    wanted = {"kind": kind, "seed": seed, "format": FORMAT_VERSION, "checkpoint_format": CHECKPOINT_FORMAT}
    cached_folder(target, wanted, lambda staging: _write(kind, folder, staging / f"{kind}.safetensors"),
                  what="tiny single-file checkpoint")
    return str(target / f"{kind}.safetensors")


def read_component(folder: str, name: str, weights: str):
    """(weights as NumPy arrays, config) of one component folder of a diffusers pipeline folder."""
    from safetensors.numpy import load_file

    sub = os.path.join(folder, name)
    with open(os.path.join(sub, "config.json")) as f:
        return load_file(os.path.join(sub, weights)), json.load(f)


def original_layout(folder: str) -> dict:
    """The weights of a diffusers-format SD / SDXL pipeline folder under their original (LDM / SGM) names."""
    unet, unet_config = read_component(folder, "unet", "diffusion_pytorch_model.safetensors")
    vae, vae_config = read_component(folder, "vae", "diffusion_pytorch_model.safetensors")
    text, _ = read_component(folder, "text_encoder", "model.safetensors")
    text_2 = None
    if os.path.isdir(os.path.join(folder, "text_encoder_2")):  # SDXL: SGM's two embedders
        text_2, _ = read_component(folder, "text_encoder_2", "model.safetensors")
    return ldm_layout.checkpoint(unet, unet_config, vae, vae_config, text, text_2,
                                 open_clip=_is_open_clip(os.path.join(folder, "text_encoder")))


def _is_open_clip(text_encoder: str) -> bool:
    # SD 2.x's OpenCLIP ViT-H uses plain gelu; SD 1.x's CLIP ViT-L quick_gelu
    with open(os.path.join(text_encoder, "config.json")) as f:
        return json.load(f).get("hidden_act") == "gelu"


def _write(kind: str, folder: str, file: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    architecture, prediction = _MODELSPEC[kind]
    metadata = {"format": "pt", "modelspec.architecture": architecture, "modelspec.prediction_type": prediction,
                "fewstep.tiny": kind}
    state = {name: np.ascontiguousarray(value) for name, value in original_layout(folder).items()}
    save_file(state, str(file), metadata=metadata)
