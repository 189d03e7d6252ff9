"""Tiny random-weight adapter models (ControlNet, T2I-Adapter, DPT depth estimator), built offline.

Each builder writes one model folder in the format its library saves (`save_pretrained`, safetensors)
and returns it, so `diffusers.ControlNetModel.from_pretrained(folder)`, `diffusers.T2IAdapter...` and
`transformers.DPTForDepthEstimation.from_pretrained(folder)` (and their mindone counterparts) load it
unchanged. The models fit the tiny pipelines of `tiny_models.py` (UNet block_out_channels (16, 32), two
levels, VAE scale factor 2: a 64x64 image <-> 4x32x32 latents). Folders are cached like
`tiny_pipeline`'s: same cache directory, same marker file (kind, seed, format), built in a staging
folder and moved in place; the same (kind, seed) always gives the same tensors, and the caller's torch
RNG is left alone (`torch.random.fork_rng`).

Two whole-pipeline folders are built here too, from the pieces above and `tiny_pipeline("sd15")`:
`tiny_multi_adapter_pipeline` (a pipeline diffusers saved with a MultiAdapter: `adapter/`, `adapter_1/`)
and `tiny_lcm_pipeline` (an LCM-distilled SD 1.5 folder: UNet with time_cond_proj_dim, LCMScheduler).

Why some weights are randomised after construction: these models start with layers set to zero on
purpose, so that training starts from "no effect" -- ControlNet's `controlnet_down_blocks.*`,
`controlnet_mid_block` and `controlnet_cond_embedding.conv_out` are zero convolutions, so a fresh
ControlNet's residuals are exactly zero; DPT zeroes its position embeddings, class token and every
bias. A trained model has none of those zeros. Left at zero, a pipeline that drops the ControlNet's
residuals, or a port that forgets a bias or mis-interpolates the position embeddings, would still
match the reference bitwise and every test would pass. So those tensors are redrawn from a normal
distribution (seeded, like everything else); for the same reason DPT's last convolution is made
positive, so that its final ReLU does not turn the whole depth map into zeros. The T2I-Adapter has no
zero-initialised layer (its convolutions keep torch's default, non-zero, weights and biases), so
nothing is redrawn there.

Only torch, diffusers and transformers are used, imported lazily inside functions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from fewstep.testing.tiny_models import FORMAT_VERSION as PIPELINE_FORMAT_VERSION
from fewstep.testing.tiny_models import cached_folder, default_cache_dir, tiny_pipeline

# Bump whenever a config or a randomisation below changes (cached folders are then rebuilt). The
# ControlNet is derived from a tiny pipeline's UNet, so its marker also records tiny_models' version.
FORMAT_VERSION = 2

CONTROLNET_KINDS = ("sd15", "sd21", "sdxl")
T2I_ADAPTER_KINDS = ("sd15", "sdxl")

# Zero convolutions of ControlNetModel, redrawn with this standard deviation.
CONTROLNET_ZERO_PREFIXES = ("controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_cond_embedding.conv_out.")
RANDOMISED_STD = 0.1

# The LCM UNet's guidance-embedding width (diffusers' LCM fast tests use 32; LCM_Dreamshaper_v7 256).
LCM_UNET_TIME_COND_PROJ_DIM = 32

# T2I-Adapter configs for the tiny UNets. The features must have the shapes the UNet adds them at
# (`down_intrablock_additional_residuals`): after each cross-attention down block's last
# resnet/attention pair, after each plain down block (its downsampler included), and at the mid block
# when the next feature has the mid block's shape. At 64 px:
# - SD 1.5 (CrossAttnDownBlock2D 16 ch @ 32x32, then DownBlock2D 32 ch @ 16x16): "full_adapter" with
#   downscale_factor 2 (the VAE scale factor, as SD 1.5's 8) and channels [16, 32] gives 16@32x32 and
#   32@16x16 (its second block pools by 2), one per down block.
# - SDXL (DownBlock2D 16 ch, 16x16 after its downsampler, then CrossAttnDownBlock2D 32 ch @ 16x16, no
#   downsampler): "full_adapter_xl" with downscale_factor 4 (twice the VAE scale factor, as SDXL's 16
#   is twice 8) and channels [16, 32] gives 16@16x16 and 32@16x16. The released SDXL layout's four
#   channels ([16, 32, 32, 32]) would add two features at 8x8 (full_adapter_xl pools before its third
#   block) that fit neither the down blocks nor the 16x16 mid block, so the UNet silently ignores them;
#   with two, every feature reaches the UNet and a pipeline that drops the last one fails.
T2I_ADAPTER_CONFIGS = {
    "sd15": dict(in_channels=3, channels=[16, 32], num_res_blocks=2, downscale_factor=2,
                 adapter_type="full_adapter"),
    "sdxl": dict(in_channels=3, channels=[16, 32], num_res_blocks=2, downscale_factor=4,
                 adapter_type="full_adapter_xl"),
}

# DPT (the ViT "dpt-large" layout of Intel/dpt-large, shrunk): patch 16 at 64 px -> 4x4 tokens + CLS;
# four transformer layers so that the four reassemble factors (4, 2, 1, 0.5) keep one of each
# reassembly kind (transposed conv x4 and x2, identity, strided conv); predicted_depth is 64x64.
DPT_IMAGE_SIZE = 64
DPT_CONFIG = dict(
    hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37, hidden_act="gelu",
    image_size=DPT_IMAGE_SIZE, patch_size=16, num_channels=3, is_hybrid=False, qkv_bias=True,
    backbone_out_indices=[0, 1, 2, 3], readout_type="project", reassemble_factors=[4, 2, 1, 0.5],
    neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_in_index=-1,
    use_batch_norm_in_fusion_residual=False, add_projection=False, layer_norm_eps=1e-12,
    # DPT's default 0.02 shrinks the signal through the neck until the head's final ReLU outputs 0.0
    # everywhere (for most seeds); 0.1 keeps it alive, 0.2 already overflows to ~1e3.
    initializer_range=0.1,
)
DPT_PROCESSOR = dict(  # Intel/dpt-large's preprocessor_config.json, at DPT_IMAGE_SIZE
    do_resize=True, size={"height": DPT_IMAGE_SIZE, "width": DPT_IMAGE_SIZE}, resample=3,
    keep_aspect_ratio=False, ensure_multiple_of=1, do_rescale=True, rescale_factor=1 / 255,
    do_normalize=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_pad=False,
)

PathLike = Optional[Union[str, os.PathLike]]


def tiny_controlnet(kind: str = "sd15", seed: int = 0, path: PathLike = None) -> str:
    """Write (or reuse) a tiny ControlNet for the tiny `kind` pipeline and return its folder.

    kind: "sd15", "sd21" or "sdxl". The ControlNet is `ControlNetModel.from_unet` of the UNet of
    `tiny_pipeline(kind, seed=seed)` (conditioning embedding (16, 32): a 64x64 control image -> 32x32),
    with its zero convolutions redrawn (normal, std 0.1) so that its residuals are not zero.
    path: default `<cache>/controlnet-<kind>-<seed>` (see `default_cache_dir`).
    """
    if kind not in CONTROLNET_KINDS:
        raise ValueError(f"Unknown tiny ControlNet kind {kind!r}; choose one of {', '.join(CONTROLNET_KINDS)}.")
    seed = int(seed)
    name = f"controlnet-{kind}"
    wanted = {"kind": name, "seed": seed, "format": FORMAT_VERSION, "pipeline_format": PIPELINE_FORMAT_VERSION}

    def write(staging: Path) -> None:
        import diffusers
        import torch

        unet = diffusers.UNet2DConditionModel.from_pretrained(tiny_pipeline(kind, seed=seed),
                                                              subfolder="unet")
        with torch.random.fork_rng(devices=[]):  # from_unet draws (then overwrites) a fresh init
            torch.manual_seed(seed)
            controlnet = diffusers.ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
            torch.manual_seed(seed)
            _redraw(controlnet, lambda n: n.startswith(CONTROLNET_ZERO_PREFIXES))
        controlnet.save_pretrained(str(staging), safe_serialization=True)

    return cached_folder(_target(path, name, seed), wanted, write, what="tiny ControlNet")


def tiny_t2i_adapter(kind: str = "sd15", seed: int = 0, path: PathLike = None) -> str:
    """Write (or reuse) a tiny T2I-Adapter for the tiny `kind` pipeline and return its folder.

    kind: "sd15" ("full_adapter") or "sdxl" ("full_adapter_xl"); see T2I_ADAPTER_CONFIGS for why these
    channels and downscale factors. Its features fit the tiny UNet's down blocks at 64x64.
    path: default `<cache>/t2i-adapter-<kind>-<seed>`.
    """
    if kind not in T2I_ADAPTER_CONFIGS:
        raise ValueError(f"Unknown tiny T2I-Adapter kind {kind!r}; choose one of {', '.join(T2I_ADAPTER_KINDS)}.")
    seed = int(seed)
    name = f"t2i-adapter-{kind}"

    def write(staging: Path) -> None:
        import diffusers
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            # torch's default conv init: no zero-initialised tensor to redraw (see the module docstring).
            adapter = diffusers.T2IAdapter(**T2I_ADAPTER_CONFIGS[kind])
        adapter.save_pretrained(str(staging), safe_serialization=True)

    return cached_folder(_target(path, name, seed), {"kind": name, "seed": seed, "format": FORMAT_VERSION},
                         write, what="tiny T2I-Adapter")


def tiny_multi_adapter_pipeline(kind: str = "sd15", seeds=(0, 1), path: PathLike = None) -> str:
    """Write (or reuse) the tiny `kind` pipeline saved by diffusers with a MultiAdapter; return its folder.

    The folder is `StableDiffusion(XL)AdapterPipeline(..., adapter=MultiAdapter([tiny_t2i_adapter(kind, s)
    for s in seeds])).save_pretrained(folder)`: model_index.json lists `"adapter": ["diffusers",
    "MultiAdapter"]`, the first adapter is in `adapter/`, the second in `adapter_1/` (diffusers'
    `MultiAdapter.save_pretrained`; a third would land in `adapter_1_2/`, which its own `from_pretrained`
    does not find, so two seeds at most are accepted). path: default `<cache>/multi-adapter-<kind>-<s0>-<s1>`.
    """
    if kind not in T2I_ADAPTER_CONFIGS:
        raise ValueError(f"Unknown tiny T2I-Adapter kind {kind!r}; choose one of {', '.join(T2I_ADAPTER_KINDS)}.")
    seeds = tuple(int(s) for s in seeds)
    if len(seeds) != 2:
        raise ValueError(f"A tiny MultiAdapter pipeline takes exactly two adapter seeds, got {len(seeds)}.")
    name = f"multi-adapter-{kind}"

    def write(staging: Path) -> None:
        import diffusers

        adapter = diffusers.MultiAdapter([diffusers.T2IAdapter.from_pretrained(tiny_t2i_adapter(kind, seed=s))
                                          for s in seeds])
        cls = diffusers.StableDiffusionXLAdapterPipeline if kind == "sdxl" else diffusers.StableDiffusionAdapterPipeline
        extra = {} if kind == "sdxl" else dict(safety_checker=None, requires_safety_checker=False)
        pipe = cls.from_pretrained(tiny_pipeline(kind), adapter=adapter, **extra)
        pipe.save_pretrained(str(staging), safe_serialization=True)

    target = Path(path) if path is not None else default_cache_dir() / f"{name}-{seeds[0]}-{seeds[1]}"
    wanted = {"kind": name, "seeds": list(seeds), "format": FORMAT_VERSION, "pipeline_format": PIPELINE_FORMAT_VERSION}
    return cached_folder(target, wanted, write, what="tiny MultiAdapter pipeline")


def tiny_lcm_pipeline(seed: int = 0, path: PathLike = None) -> str:
    """Write (or reuse) a tiny LCM-distilled SD 1.5 pipeline folder and return it.

    As the released LCM checkpoints (e.g. SimianLuo/LCM_Dreamshaper_v7): saved by diffusers'
    `LatentConsistencyModelPipeline`, scheduler `LCMScheduler`, and a UNet with `time_cond_proj_dim`
    (here LCM_UNET_TIME_COND_PROJ_DIM, diffusers' own LCM fast tests' value), which the LCM pipelines need
    for their guidance embedding. Every other component is `tiny_pipeline("sd15", seed=seed)`'s; the UNet
    is its config plus time_cond_proj_dim, drawn after `torch.manual_seed(seed)` (no zero-initialised
    weights: its `cond_proj` keeps torch's default Linear init). path: default `<cache>/lcm-sd15-<seed>`.
    """
    seed = int(seed)
    name = "lcm-sd15"

    def write(staging: Path) -> None:
        import diffusers
        import torch

        base = tiny_pipeline("sd15", seed=seed)
        config = dict(diffusers.UNet2DConditionModel.load_config(base, subfolder="unet"))
        config["time_cond_proj_dim"] = LCM_UNET_TIME_COND_PROJ_DIM
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = diffusers.UNet2DConditionModel.from_config(config).eval()
        sd = diffusers.StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
        pipe = diffusers.LatentConsistencyModelPipeline(
            vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=unet,
            scheduler=diffusers.LCMScheduler.from_config(sd.scheduler.config), safety_checker=None,
            feature_extractor=None, image_encoder=None, requires_safety_checker=False)
        pipe.save_pretrained(str(staging), safe_serialization=True)

    wanted = {"kind": name, "seed": seed, "format": FORMAT_VERSION, "pipeline_format": PIPELINE_FORMAT_VERSION}
    return cached_folder(_target(path, name, seed), wanted, write, what="tiny LCM pipeline")


def tiny_dpt(seed: int = 0, path: PathLike = None) -> str:
    """Write (or reuse) a tiny DPT depth estimator (model + DPTImageProcessor) and return its folder.

    `transformers.DPTImageProcessor.from_pretrained(folder)` resizes to 64x64;
    `DPTForDepthEstimation.from_pretrained(folder)` gives predicted_depth of shape (batch, 64, 64).
    Zero-initialised tensors (position embeddings, class token, biases) are redrawn (normal, std 0.1),
    and the head's last convolution is made positive so that the depth is positive and not all zero.
    mindone.transformers' DPTForDepthEstimation loads the folder too (on MindSpore CPU after
    `install_cpu_kernels()`); its DPTImageProcessor does not run in mindone 0.5.0 (it passes
    `size_divisibility` to its own `validate_preprocess_arguments`, which has no such argument): use
    transformers' DPTImageProcessor, which needs no framework.
    path: default `<cache>/dpt-<seed>`.
    """
    seed = int(seed)

    def write(staging: Path) -> None:
        import torch
        from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = DPTForDepthEstimation(DPTConfig(**DPT_CONFIG)).eval()
            _redraw(model, lambda n: True)
            # The head ends conv(32 -> 1) -> ReLU: with a negative bias or mostly negative weights the
            # depth is 0.0 everywhere and compares equal whatever came before. Positive weights and
            # bias give a positive depth map (as a trained model's) that varies with the image.
            last = model.head.head[4]
            with torch.no_grad():
                last.weight.abs_()
                last.bias.abs_()
        model.save_pretrained(str(staging), safe_serialization=True)
        DPTImageProcessor(**DPT_PROCESSOR).save_pretrained(str(staging))

    return cached_folder(_target(path, "dpt", seed), {"kind": "dpt", "seed": seed, "format": FORMAT_VERSION},
                         write, what="tiny DPT model")


def _target(path: PathLike, name: str, seed: int) -> Path:
    return Path(path) if path is not None else default_cache_dir() / f"{name}-{seed}"


def _redraw(model, selected) -> list:
    """Redraw, in `named_parameters` order from the current torch RNG, every all-zero parameter whose
    name `selected` accepts; return their names."""
    import torch

    names = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            if selected(name) and not param.any():
                param.normal_(0.0, RANDOMISED_STD)
                names.append(name)
    return names
