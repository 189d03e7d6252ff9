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


def original_layout(folder: str) -> dict:
    """The weights of a diffusers-format SD / SDXL pipeline folder under their original (LDM / SGM) names."""
    def component(name: str, weights: str):
        from safetensors.numpy import load_file

        sub = os.path.join(folder, name)
        with open(os.path.join(sub, "config.json")) as f:
            return load_file(os.path.join(sub, weights)), json.load(f)

    unet, unet_config = component("unet", "diffusion_pytorch_model.safetensors")
    vae, vae_config = component("vae", "diffusion_pytorch_model.safetensors")
    text, _ = component("text_encoder", "model.safetensors")
    state = {**ldm_layout.prefixed("model.diffusion_model.", ldm_layout.unet_to_ldm(unet, unet_config)),
             **ldm_layout.prefixed("first_stage_model.", ldm_layout.vae_to_ldm(vae, vae_config))}
    if os.path.isdir(os.path.join(folder, "text_encoder_2")):  # SDXL: SGM's two embedders
        text_2, _ = component("text_encoder_2", "model.safetensors")
        state.update(ldm_layout.prefixed("conditioner.embedders.0.transformer.", ldm_layout.clip_to_ldm(text)))
        state.update(ldm_layout.prefixed("conditioner.embedders.1.model.", ldm_layout.open_clip_to_ldm(text_2)))
    elif _is_open_clip(os.path.join(folder, "text_encoder")):  # SD 2.x
        state.update(ldm_layout.prefixed("cond_stage_model.model.", ldm_layout.open_clip_to_ldm(text)))
    else:  # SD 1.x
        state.update(ldm_layout.prefixed("cond_stage_model.transformer.", ldm_layout.clip_to_ldm(text)))
    return state


def _is_open_clip(text_encoder: str) -> bool:
    # SD 2.x's OpenCLIP ViT-H uses plain gelu; SD 1.x's CLIP ViT-L quick_gelu
    with open(os.path.join(text_encoder, "config.json")) as f:
        return json.load(f).get("hidden_act") == "gelu"


def _write(kind: str, folder: str, file: Path) -> None:
    from safetensors.numpy import save_file

    architecture, prediction = _MODELSPEC[kind]
    metadata = {"format": "pt", "modelspec.architecture": architecture, "modelspec.prediction_type": prediction,
                "fewstep.tiny": kind}
    save_file(original_layout(folder), str(file), metadata=metadata)
