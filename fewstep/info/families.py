"""Model families from diffusers configs: which family a pipeline folder's UNet is, and which base model a
ControlNet, T2I-Adapter, MotionAdapter or UNet fits.

Decided from the layout a config describes, not from the released models' widths alone, so that the tiny
test models (narrower than any release) get the same answer as the real ones: SDXL conditions its UNet on
"text_time" added embeddings; SD 2.x uses linear transformer projections (SD 1.x 1x1 convs); an
inpainting UNet takes 9 input channels; a v-prediction scheduler marks the 768-v model. The released
cross-attention widths (768 SD 1.x, 1024 SD 2.x, 2048 SDXL) are used where a config has no other sign.
Family keys and names are those of single-file checkpoints (`fewstep.pipelines.checkpoint_family`),
so a folder and a checkpoint of one model say the same.
"""

from __future__ import annotations

from typing import Mapping, Optional, Tuple

from fewstep.pipelines.checkpoint_family import FAMILIES

# what a LoRA, ControlNet or adapter fits: the base model, whatever the task
BASES = {"sd15": "SD 1.x", "sd21": "SD 2.x", "sdxl": "SDXL", "sd": "SD 1.x or 2.x"}
_EXTRA_NAMES = {"sd21-inpaint": "SD 2 inpainting", "sdxl-refiner": "SDXL refiner"}
RELEASED_CROSS_DIMS = {768: "sd15", 1024: "sd21", 2048: "sdxl"}


def family_name(key: Optional[str]) -> Optional[str]:
    if key is None:
        return None
    return FAMILIES[key].name if key in FAMILIES else _EXTRA_NAMES.get(key, BASES.get(key, key))


def base_of(family: Optional[str]) -> Optional[str]:
    """The base model of a family key: "sd21-v" -> "sd21", "sdxl-inpaint" -> "sdxl"."""
    return None if family is None else family.split("-")[0]


def _cross_dim(config: Mapping) -> Optional[int]:
    dim = config.get("cross_attention_dim")
    if isinstance(dim, (list, tuple)):
        dim = dim[0] if dim else None
    return int(dim) if isinstance(dim, (int, float)) else None


def unet_base(config: Mapping) -> Tuple[Optional[str], str]:
    """(base key, why) for a UNet-like config (UNet2DConditionModel, ControlNetModel)."""
    cross = _cross_dim(config)
    if config.get("addition_embed_type") == "text_time":
        return "sdxl", "added text_time conditioning"
    if cross in RELEASED_CROSS_DIMS:
        return RELEASED_CROSS_DIMS[cross], f"cross-attention dim {cross}"
    if config.get("use_linear_projection"):
        return "sd21", f"linear transformer projections, cross-attention dim {cross}"
    if cross is not None:
        return "sd15", f"1x1-conv transformer projections, cross-attention dim {cross}"
    return None, "no cross-attention in its config"


def pipeline_family(unet_config: Mapping, prediction_type: Optional[str],
                    has_text_encoder: bool) -> Tuple[Optional[str], str]:
    """(family key, why) of a pipeline folder from its UNet config, scheduler prediction type and whether
    it has a first text encoder (the SDXL refiner has only the second)."""
    base, why = unet_base(unet_config)
    if base is None:
        return None, why
    inpaint = int(unet_config.get("in_channels", 4)) == 9
    if base == "sdxl":
        if not has_text_encoder:
            return "sdxl-refiner", why + ", no text_encoder"
        return ("sdxl-inpaint" if inpaint else "sdxl"), why + (", 9 input channels" if inpaint else "")
    if inpaint:
        return f"{base}-inpaint", why + ", 9 input channels"
    if base == "sd21" and prediction_type == "v_prediction":
        return "sd21-v", why + ", v-prediction"
    return base, why


def model_base(class_name: str, config: Mapping) -> Tuple[Optional[str], str]:
    """(base key, why) a diffusers model folder fits, from its config; (None, why) when it cannot tell."""
    if class_name in ("UNet2DConditionModel", "ControlNetModel", "UNetMotionModel"):
        return unet_base(config)
    if class_name == "T2IAdapter":
        if config.get("adapter_type") == "full_adapter_xl":
            return "sdxl", "adapter_type full_adapter_xl"
        # the released non-XL T2I-Adapters (TencentARC *_sd14v1, *_sd15v2) are for SD 1.x
        return "sd15", f"adapter_type {config.get('adapter_type')}"
    if class_name == "MotionAdapter":
        # AnimateDiff motion adapters in diffusers' MotionAdapter format are for SD 1.5 UNets
        return "sd15", f"motion adapter with block_out_channels {list(config.get('block_out_channels', []))}"
    return None, f"a {class_name} does not say which base model it belongs to"
