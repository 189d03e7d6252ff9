"""Tiny random-weight Stable Diffusion pipelines in diffusers' folder format, built offline.

`tiny_pipeline(kind)` writes model_index.json plus one folder per component (safetensors weights,
config files, a CLIP tokenizer) and returns the folder. diffusers' and mindone.diffusers'
`from_pretrained(folder)` load it unchanged, so tests, examples and benchmarks exercise the real
loading code without a model hub.

Every component is built right after `torch.manual_seed(seed)` (inside `torch.random.fork_rng`, so
the caller's torch RNG is left alone); the same (kind, seed) always gives the same tensors.
A folder is cached: when its marker file records the same kind, seed and FORMAT_VERSION it is
returned as is. Bump FORMAT_VERSION whenever a config below changes. The cache has one folder per
library stack (`default_cache_dir`): a model's random initialisation follows its library's init order
and its config files name the library's version, so a folder written by one diffusers / transformers /
torch is never reused by another.

The layout follows the real models (block types, layers_per_block 2, SDXL's transformer depth
(1, 2), text_time embedding, linear projections and head counts of SD 2.x); only the widths shrink,
as in diffusers' own pipeline fast tests, to keep every folder under 5 MB and fast on CPU:

- UNet: block_out_channels (16, 32), norm_num_groups 8, two levels, sample_size 32.
- VAE: block_out_channels (16, 32) -> vae_scale_factor 2 (not 8: a pipeline that hardcodes 8
  breaks here). Default image 64x64 <-> latents 4x32x32.
- Text encoders: 2 layers, hidden 32 (SDXL's second encoder: hidden 48, projection 40, so that a
  pipeline that concatenates the two encoders in the wrong order fails on shapes).
- Tokenizer: CLIP byte-level BPE with every byte in the vocabulary and no merges, so any prompt
  tokenizes (one token per character); model_max_length 77 as in SD.
- Scheduler configs copy the keys of the released checkpoints (including the ones their class
  ignores, like set_alpha_to_one=False on SDXL's Euler config, which TCD/LCM.from_config do read).

Only torch, diffusers and transformers are used, imported lazily inside functions.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional, Union

FORMAT_VERSION = 1
MARKER = ".fewstep-tiny.json"

KINDS = ("sd15", "sd21", "sd21-v", "sdxl", "sd15-inpaint", "sdxl-inpaint")

# --- scheduler configs, as the released checkpoints ship them -------------------------------------
_SD15_SCHEDULER = (
    "PNDMScheduler",
    dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
         set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, trained_betas=None, clip_sample=False),
)
_SD21_SCHEDULER = (  # stable-diffusion-2-1-base
    "PNDMScheduler",
    dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
         prediction_type="epsilon", set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
         trained_betas=None, clip_sample=False),
)
_SD21V_SCHEDULER = (  # stable-diffusion-2-1 (768, v-prediction)
    "DDIMScheduler",
    dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
         prediction_type="v_prediction", set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
         trained_betas=None, clip_sample=False),
)
_SDXL_SCHEDULER = (  # stable-diffusion-xl-base-1.0 and stable-diffusion-xl-1.0-inpainting-0.1
    "EulerDiscreteScheduler",
    dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
         clip_sample=False, interpolation_type="linear", prediction_type="epsilon", sample_max_value=1.0,
         set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, timestep_spacing="leading",
         trained_betas=None, use_karras_sigmas=False),
)

# --- per-kind specification -----------------------------------------------------------------------
# SD kinds: te_act / pad are the text encoder's activation and the tokenizer's pad token (SD 1.x pads
# with <|endoftext|>, SD 2.x's OpenCLIP tokenizer with "!"); head_dim is UNet's attention_head_dim.
# SDXL kinds: text encoders and tokenizers as in SDXL (see _build_xl).
_SPECS = {
    "sd15": dict(pipeline="StableDiffusionPipeline", xl=False, in_channels=4, scheduler=_SD15_SCHEDULER,
                 te_act="quick_gelu", pad="<|endoftext|>", linear_proj=False, head_dim=8,
                 scaling_factor=0.18215),
    "sd21": dict(pipeline="StableDiffusionPipeline", xl=False, in_channels=4, scheduler=_SD21_SCHEDULER,
                 te_act="gelu", pad="!", linear_proj=True, head_dim=(2, 4), scaling_factor=0.18215),
    "sd21-v": dict(pipeline="StableDiffusionPipeline", xl=False, in_channels=4, scheduler=_SD21V_SCHEDULER,
                   te_act="gelu", pad="!", linear_proj=True, head_dim=(2, 4), scaling_factor=0.18215),
    "sd15-inpaint": dict(pipeline="StableDiffusionInpaintPipeline", xl=False, in_channels=9,
                         scheduler=_SD15_SCHEDULER, te_act="quick_gelu", pad="<|endoftext|>",
                         linear_proj=False, head_dim=8, scaling_factor=0.18215),
    "sdxl": dict(pipeline="StableDiffusionXLPipeline", xl=True, in_channels=4, scheduler=_SDXL_SCHEDULER,
                 scaling_factor=0.13025),
    "sdxl-inpaint": dict(pipeline="StableDiffusionXLInpaintPipeline", xl=True, in_channels=9,
                         scheduler=_SDXL_SCHEDULER, scaling_factor=0.13025),
}

UNET_SAMPLE_SIZE = 32
UNET_BLOCK_OUT_CHANNELS, UNET_NORM_GROUPS = (16, 32), 8
VAE_BLOCK_OUT_CHANNELS, VAE_NORM_GROUPS = (16, 32), 8
TEXT_HIDDEN = 32  # the (first) text encoder
XL_TEXT2_HIDDEN, XL_TEXT2_PROJECTION = 48, 40
XL_TIME_EMBED_DIM = 8
MAX_LENGTH = 77


WRITERS = ("torch", "diffusers", "transformers")  # the libraries whose versions shape a tiny folder's bytes


def default_cache_dir() -> Path:
    """`$FEWSTEP_CACHE/tiny/<stack>`, else `~/.cache/fewstep/tiny/<stack>`; `<stack>` names the installed
    versions of the libraries that write the folders (see `stack_tag`)."""
    root = os.environ.get("FEWSTEP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fewstep")
    return Path(root) / "tiny" / stack_tag()


def stack_tag(versions: Optional[dict] = None) -> str:
    """`torch-2.13.0_diffusers-0.35.2_transformers-4.57.1` for the installed (or given) versions of WRITERS;
    read from package metadata, so no library is imported to ask."""
    if versions is None:
        from importlib.metadata import PackageNotFoundError, version

        versions = {}
        for name in WRITERS:
            try:
                versions[name] = version(name)
            except PackageNotFoundError:
                versions[name] = "none"
    return "_".join(f"{name}-{versions[name]}".replace("+", "-") for name in WRITERS)


def tiny_pipeline(kind: str, path: Optional[Union[str, os.PathLike]] = None, seed: int = 0) -> str:
    """Write (or reuse) a tiny random-weight pipeline folder of `kind` and return its path.

    kind: one of "sd15", "sd21", "sd21-v", "sdxl", "sd15-inpaint", "sdxl-inpaint".
    path: the folder to write; default `<cache>/<kind>-<seed>` (see `default_cache_dir`).
    seed: seeds torch before each component is built; same seed -> same weights.
    """
    if kind not in _SPECS:
        raise ValueError(f"Unknown tiny pipeline kind {kind!r}; choose one of {', '.join(KINDS)}.")
    seed = int(seed)
    target = Path(path) if path is not None else default_cache_dir() / f"{kind}-{seed}"

    def write(staging: Path) -> None:
        _build(kind, seed, staging).save_pretrained(str(staging), safe_serialization=True)

    return cached_folder(target, {"kind": kind, "seed": seed, "format": FORMAT_VERSION}, write)


def cached_folder(target: Path, wanted: dict, write: Callable[[Path], None], what: str = "tiny pipeline") -> str:
    """Return `target` when its marker records `wanted`; else run `write(staging)` and move it in place.

    `write` fills an empty staging folder next to `target`; the marker (`wanted` as JSON) is written
    after it, and the staging folder replaces `target` in one `os.replace`. A non-empty `target`
    without a marker is refused (FileExistsError naming `what`), so a user's folder is never removed.
    """
    target = Path(target)
    if _read_marker(target) == wanted:
        return str(target)
    if target.exists() and any(target.iterdir()) and _read_marker(target) is None:
        raise FileExistsError(
            f"{target} exists and is not a fewstep {what} (no {MARKER}); pass another `path` or "
            f"remove that folder."
        )

    target.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the target and move it in place, so that a concurrent reader never sees half a
    # folder and an interrupted build leaves no marker behind.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(staging)
        (staging / MARKER).write_text(json.dumps(wanted, sort_keys=True) + "\n")
        os.chmod(staging, 0o755)  # mkdtemp made it private
        if _read_marker(target) == wanted:  # another process finished first
            return str(target)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def _read_marker(folder: Path):
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


# --- builders -------------------------------------------------------------------------------------
def _build(kind: str, seed: int, workdir: Path):
    import torch

    spec = _SPECS[kind]
    with torch.random.fork_rng(devices=[]):
        if spec["xl"]:
            return _build_xl(spec, seed, workdir)
        return _build_sd(spec, seed, workdir)


def _tokenizer(workdir: Path, pad_token: str):
    """A CLIP tokenizer over a byte-level vocabulary (every byte, alone and word-final) with no merges.

    Ids: 0-255 bytes, 256-511 the same with "</w>", 512 <|startoftext|>, 513 <|endoftext|>."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    # CLIP's byte-to-character table, in byte order: its printable bytes map to themselves and the rest to
    # 256, 257, ..., so sorting the characters by code point gives that order (tokenizers' public alphabet;
    # transformers 5 no longer has bytes_to_unicode where 4.x kept it).
    chars = sorted(ByteLevel.alphabet())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory(dir=workdir) as src:
        vocab, merges = os.path.join(src, "vocab.json"), os.path.join(src, "merges.txt")
        with open(vocab, "w", encoding="utf-8") as f:
            json.dump({t: i for i, t in enumerate(tokens)}, f, ensure_ascii=False)
        with open(merges, "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")  # header only: no merges, one token per byte
        return CLIPTokenizer(vocab, merges, pad_token=pad_token, model_max_length=MAX_LENGTH)


def _text_config(tokenizer, hidden_size: int, hidden_act: str, projection_dim: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=1000, hidden_size=hidden_size, intermediate_size=37, projection_dim=projection_dim,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=MAX_LENGTH,
        hidden_act=hidden_act, layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _vae(seed: int, scaling_factor: float, force_upcast: bool):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_BLOCK_OUT_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_BLOCK_OUT_CHANNELS),
        block_out_channels=VAE_BLOCK_OUT_CHANNELS, layers_per_block=2, norm_num_groups=VAE_NORM_GROUPS,
        sample_size=UNET_SAMPLE_SIZE * 2 ** (len(VAE_BLOCK_OUT_CHANNELS) - 1),
        scaling_factor=scaling_factor, force_upcast=force_upcast,
    ).eval()


def _scheduler(spec):
    import diffusers

    name, config = spec["scheduler"]
    # from_config keeps the keys the class does not use, as the released scheduler_config.json files do.
    return getattr(diffusers, name).from_config(dict(config))


def _unet(spec, seed: int, down_block_types, up_block_types, **kind_kwargs):
    """The tiny UNet every kind shares in size (two levels, two layers each), drawn from `seed`;
    `kind_kwargs` is what SD and SDXL set differently (attention, text-time conditioning)."""
    import diffusers
    import torch

    torch.manual_seed(seed)
    return diffusers.UNet2DConditionModel(
        sample_size=UNET_SAMPLE_SIZE, in_channels=spec["in_channels"], out_channels=4,
        down_block_types=down_block_types, up_block_types=up_block_types,
        block_out_channels=UNET_BLOCK_OUT_CHANNELS, layers_per_block=2, norm_num_groups=UNET_NORM_GROUPS,
        **kind_kwargs,
    ).eval()


def _build_sd(spec, seed: int, workdir: Path):
    import diffusers
    import torch
    from transformers import CLIPTextModel

    unet = _unet(spec, seed, ("CrossAttnDownBlock2D", "DownBlock2D"), ("UpBlock2D", "CrossAttnUpBlock2D"),
                 cross_attention_dim=TEXT_HIDDEN, attention_head_dim=spec["head_dim"],
                 use_linear_projection=spec["linear_proj"])
    vae = _vae(seed, spec["scaling_factor"], force_upcast=True)
    tokenizer = _tokenizer(workdir, spec["pad"])
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(tokenizer, TEXT_HIDDEN, spec["te_act"])).eval()
    pipeline_cls = getattr(diffusers, spec["pipeline"])
    return pipeline_cls(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=_scheduler(spec),
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )


def _build_xl(spec, seed: int, workdir: Path):
    import diffusers
    import torch
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    # add_time_ids: original size, crop top-left, target size (2 numbers each) = 6 values; an
    # aesthetics-score model would have 5. Pooled text embeddings come from text_encoder_2's projection.
    time_ids = 6
    unet = _unet(spec, seed, ("DownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D"),
                 attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
                 cross_attention_dim=TEXT_HIDDEN + XL_TEXT2_HIDDEN,
                 addition_embed_type="text_time", addition_time_embed_dim=XL_TIME_EMBED_DIM,
                 projection_class_embeddings_input_dim=time_ids * XL_TIME_EMBED_DIM + XL_TEXT2_PROJECTION)
    vae = _vae(seed, spec["scaling_factor"], force_upcast=True)
    tokenizer = _tokenizer(workdir, "<|endoftext|>")  # CLIP ViT-L's tokenizer pads with <|endoftext|>
    tokenizer_2 = _tokenizer(workdir, "!")  # OpenCLIP bigG's pads with "!"
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(tokenizer, TEXT_HIDDEN, "quick_gelu")).eval()
    torch.manual_seed(seed)
    text_encoder_2 = CLIPTextModelWithProjection(
        _text_config(tokenizer_2, XL_TEXT2_HIDDEN, "gelu", projection_dim=XL_TEXT2_PROJECTION)
    ).eval()
    kwargs = dict(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=_scheduler(spec), force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    if spec["pipeline"] == "StableDiffusionXLInpaintPipeline":
        kwargs["requires_aesthetics_score"] = False
    return getattr(diffusers, spec["pipeline"])(**kwargs)
