"""A tiny SDXL refiner, as a diffusers folder and as a single-file checkpoint, built offline.

The refiner differs from the SDXL base in what its UNet is conditioned on: only the second text encoder
(OpenCLIP bigG; the folder saves `text_encoder` and `tokenizer` as [null, null]), so its cross-attention is
that encoder's width, and an aesthetic score instead of the target size in the time ids, so its added
embedding reads 5 x addition_time_embed_dim + the pooled projection (diffusers' own
StableDiffusionXLImg2ImgRefinerOnlyPipelineFastTests build it the same way). model_index.json says
`requires_aesthetics_score: true` and `force_zeros_for_empty_prompt: false`, as stabilityai's refiner does.

Its VAE and text_encoder_2 are those of `tiny_pipeline("sdxl")` at the same seed (same builders, same seed), so
a base + refiner hand-off on tiny weights shares them as the real pair does. Only torch, diffusers and
transformers are used, imported lazily.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from fewstep.testing import ldm_layout, tiny_models as tm
from fewstep.testing.tiny_single_file import read_component

REFINER_FORMAT = 1  # bump when the refiner built below changes
#: the diffusers class each task saves the refiner as (inpainting: the same models, diffusers' SDXL inpainting)
_PIPELINES = {"img2img": "StableDiffusionXLImg2ImgPipeline", "inpaint": "StableDiffusionXLInpaintPipeline"}
#: the time ids of an aesthetic-score UNet: original size (2), crop top-left (2), the score (1)
AESTHETIC_TIME_IDS = 5


def tiny_refiner(path: Optional[Union[str, os.PathLike]] = None, seed: int = 0, task: str = "img2img") -> str:
    """Write (or reuse) a tiny SDXL refiner folder and return its path.

    path: the folder to write; default `<cache>/sdxl-refiner-<task>-<seed>` (see `tiny_models.default_cache_dir`).
    seed: seeds torch before each component is built; same seed -> same weights.
    task: "img2img" saves it as diffusers' StableDiffusionXLImg2ImgPipeline (the refiner's own class),
        "inpaint" as StableDiffusionXLInpaintPipeline (an inpainting config with requires_aesthetics_score).
    """
    if task not in _PIPELINES:
        raise ValueError(f"Unknown tiny refiner task {task!r}; choose one of {', '.join(_PIPELINES)}.")
    seed = int(seed)
    target = Path(path) if path is not None else tm.default_cache_dir() / f"sdxl-refiner-{task}-{seed}"

    def write(staging: Path) -> None:
        _build(seed, staging, _PIPELINES[task]).save_pretrained(str(staging), safe_serialization=True)

    wanted = {"kind": "sdxl-refiner", "task": task, "seed": seed, "format": tm.FORMAT_VERSION,
              "refiner_format": REFINER_FORMAT}
    return tm.cached_folder(target, wanted, write, what="tiny SDXL refiner")


def _build(seed: int, workdir: Path, pipeline: str):
    import diffusers
    import torch
    from transformers import CLIPTextModelWithProjection

    spec = tm._SPECS["sdxl"]
    with torch.random.fork_rng(devices=[]):
        unet = tm._unet(spec, seed, ("DownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D"),
                        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
                        cross_attention_dim=tm.XL_TEXT2_HIDDEN, addition_embed_type="text_time",
                        addition_time_embed_dim=tm.XL_TIME_EMBED_DIM,
                        projection_class_embeddings_input_dim=AESTHETIC_TIME_IDS * tm.XL_TIME_EMBED_DIM
                        + tm.XL_TEXT2_PROJECTION)
        vae = tm._vae(seed, spec["scaling_factor"], force_upcast=True)
        tokenizer_2 = tm._tokenizer(workdir, "!")  # OpenCLIP bigG's pads with "!"
        torch.manual_seed(seed)
        text_encoder_2 = CLIPTextModelWithProjection(
            tm._text_config(tokenizer_2, tm.XL_TEXT2_HIDDEN, "gelu", projection_dim=tm.XL_TEXT2_PROJECTION)).eval()
        return getattr(diffusers, pipeline)(
            vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
            unet=unet, scheduler=tm._scheduler(spec), requires_aesthetics_score=True,
            force_zeros_for_empty_prompt=False, add_watermarker=False)


def tiny_refiner_checkpoint(seed: int = 0, path: Optional[Union[str, os.PathLike]] = None) -> str:
    """Write (or reuse) the tiny refiner's weights as one `.safetensors` file in the layout of
    `sd_xl_refiner_1.0.safetensors` (SGM: `model.diffusion_model.*`, `first_stage_model.*`, and the OpenCLIP
    encoder as `conditioner.embedders.0.model.*`, no CLIP ViT-L) and return its path; `tiny_refiner(seed=seed)`
    is the `config=` folder to load it with."""
    seed = int(seed)
    folder = tiny_refiner(seed=seed)
    target = Path(path) if path is not None else tm.default_cache_dir() / f"single-file-sdxl-refiner-{seed}"
    wanted = {"kind": "sdxl-refiner", "seed": seed, "format": tm.FORMAT_VERSION, "refiner_format": REFINER_FORMAT}
    tm.cached_folder(target, wanted, lambda staging: _write_checkpoint(folder, staging / "sdxl-refiner.safetensors"),
                     what="tiny single-file checkpoint")
    return str(target / "sdxl-refiner.safetensors")


def refiner_layout(folder: str) -> dict:
    """The weights of a diffusers-format SDXL refiner folder under the names of the released refiner file."""
    unet, unet_config = read_component(folder, "unet", "diffusion_pytorch_model.safetensors")
    vae, vae_config = read_component(folder, "vae", "diffusion_pytorch_model.safetensors")
    text_2, _ = read_component(folder, "text_encoder_2", "model.safetensors")
    return {**ldm_layout.prefixed("model.diffusion_model.", ldm_layout.unet_to_ldm(unet, unet_config)),
            **ldm_layout.prefixed("first_stage_model.", ldm_layout.vae_to_ldm(vae, vae_config)),
            **ldm_layout.prefixed("conditioner.embedders.0.model.",
                                  ldm_layout.open_clip_to_ldm(ldm_layout.released_clip_names(text_2)))}


def _write_checkpoint(folder: str, file: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    metadata = {"format": "pt", "modelspec.architecture": "stable-diffusion-xl-v1-refiner",
                "modelspec.prediction_type": "epsilon", "fewstep.tiny": "sdxl-refiner"}
    state = {name: np.ascontiguousarray(value) for name, value in refiner_layout(folder).items()}
    save_file(state, str(file), metadata=metadata)
