"""Synthetic LoRAs for the tests, and writers for every file format, independent of fewstep's reader.

`make_lora` draws random factors for the modules TCD- and LCM-LoRAs touch (attention projections,
feed-forward, proj_in/out, resnet convs incl. shortcuts, time-embedding projections, down/upsampler
convs; plus the UNet's time/add embedding and the text encoders' attention and MLP), with ranks and
alphas that vary by layer kind as real files do. Factors are float16 values (as LCM/TCD LoRAs ship),
so every format carries exactly the same numbers.

The writers encode one LoRA in each format from their own naming knowledge: PEFT/diffusers (with the
`lora_adapter_metadata` diffusers writes), older diffusers (`.lora.down`, attention-processor
`to_q_lora`, text encoders' `lora_linear_layer`), kohya with diffusers names, and kohya with SGM names
written from hand-made tables of the two tiny UNet layouts (not from fewstep's `sgm.py`).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Dict, Tuple

import numpy as np

from fewstep.core.lora import read_safetensors

Layers = Dict[str, Dict[str, Tuple[np.ndarray, np.ndarray, float]]]  # component -> path -> (down, up, alpha)

_UNET_SUFFIXES = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                  "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out", "conv1",
                  "conv2", "conv_shortcut", "time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv",
                  "time_embedding.linear_1", "time_embedding.linear_2", "add_embedding.linear_1",
                  "add_embedding.linear_2")
_TE_SUFFIXES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")
_WEIGHT_FILES = {"unet": "diffusion_pytorch_model.safetensors", "text_encoder": "model.safetensors",
                 "text_encoder_2": "model.safetensors"}


def targets_from_folder(folder: str) -> Dict[str, Dict[str, tuple]]:
    """Weight shapes of the Linear/Conv modules of a tiny pipeline folder, read from its files (so core
    tests need no framework): 2-D and 4-D `.weight` tensors, embeddings left out."""
    targets = {}
    for component, filename in _WEIGHT_FILES.items():
        path = os.path.join(folder, component, filename)
        if not os.path.isfile(path):
            continue
        tensors, _ = read_safetensors(path)
        targets[component] = {k[: -len(".weight")]: v.shape for k, v in tensors.items()
                              if k.endswith(".weight") and v.ndim in (2, 4) and "embeddings." not in k}
    return targets


def _rank_alpha(path: str, shape) -> Tuple[int, float]:
    """Ranks and alphas as trained files have them: varied by layer kind."""
    if len(shape) == 4 and shape[2:] != (1, 1):
        return 4, 1.0          # 3x3 conv LoRA (LoCon)
    if path.endswith(("to_q", "to_k", "to_v", "q_proj", "k_proj", "v_proj")):
        return 8, 4.0
    if ".ff." in path or ".mlp." in path:
        return 4, 4.0
    return 4, 2.0


def make_lora(targets, seed: int, components=("unet", "text_encoder", "text_encoder_2"), strength: float = 1.0) -> Layers:
    rng = np.random.default_rng(seed)
    layers: Layers = {}
    for component in components:
        if component not in targets:
            continue
        suffixes = _UNET_SUFFIXES if component == "unet" else _TE_SUFFIXES
        chosen = {}
        for path, shape in sorted(targets[component].items()):
            if not path.endswith(suffixes):
                continue
            rank, alpha = _rank_alpha(path, shape)
            fan_in = int(np.prod(shape[1:]))
            down = rng.standard_normal((rank,) + tuple(shape[1:])) / np.sqrt(fan_in)
            up = rng.standard_normal((shape[0], rank) + ((1, 1) if len(shape) == 4 else ())) * (strength / np.sqrt(rank))
            chosen[path] = (down.astype(np.float16), up.astype(np.float16), alpha)
        layers[component] = chosen
    return layers


# --------------------------------------------------------------------------- PEFT / diffusers
def peft_file(layers: Layers):
    """(state dict, safetensors metadata) as diffusers' save_lora_weights writes them: lora_A/lora_B keys
    and each component's LoraConfig (r, lora_alpha, rank_pattern, alpha_pattern, target_modules)."""
    tensors, config = {}, {}
    for component, paths in layers.items():
        for path, (down, up, _) in paths.items():
            tensors[f"{component}.{path}.lora_A.weight"] = down
            tensors[f"{component}.{path}.lora_B.weight"] = up
        ranks = {p: d.shape[0] for p, (d, _, _) in paths.items()}
        alphas = {p: a for p, (_, _, a) in paths.items()}
        r = Counter(ranks.values()).most_common(1)[0][0]
        alpha = Counter(alphas.values()).most_common(1)[0][0]
        config.update({
            f"{component}.r": r, f"{component}.lora_alpha": alpha,
            f"{component}.rank_pattern": {f"^{p}": v for p, v in ranks.items() if v != r},
            f"{component}.alpha_pattern": {f"^{p}": v for p, v in alphas.items() if v != alpha},
            f"{component}.target_modules": sorted(paths), f"{component}.use_dora": False,
            f"{component}.lora_bias": False,
        })
    return tensors, {"format": "pt", "lora_adapter_metadata": json.dumps(config)}


# --------------------------------------------------------------------------- older diffusers
_PROCESSOR_NAMES = {"to_q": "to_q_lora", "to_k": "to_k_lora", "to_v": "to_v_lora", "to_out.0": "to_out_lora"}
_TE_OLD_NAMES = {"q_proj": "to_q_lora", "k_proj": "to_k_lora", "v_proj": "to_v_lora", "out_proj": "to_out_lora"}


def old_diffusers_file(layers: Layers, alphas: bool = True):
    """diffusers 0.1x-0.2x: UNet attention through its processor (`attn1.processor.to_q_lora.down.weight`),
    other UNet modules `.lora.down/up`, text-encoder attention `self_attn.to_q_lora.down`, MLP
    `.lora_linear_layer.down/up`; alphas (when wanted) as `<component>.<module>.alpha`."""
    tensors = {}
    for component, paths in layers.items():
        for path, (down, up, alpha) in paths.items():
            parent, _, leaf = path.rpartition(".")
            grand, _, last2 = parent.rpartition(".")
            if component == "unet" and f"{last2}.{leaf}" == "to_out.0":
                stem = f"{component}.{grand}.processor.to_out_lora"
            elif component == "unet" and leaf in _PROCESSOR_NAMES and ".attn" in path:
                stem = f"{component}.{parent}.processor.{_PROCESSOR_NAMES[leaf]}"
            elif component != "unet" and leaf in _TE_OLD_NAMES:
                stem = f"{component}.{parent}.{_TE_OLD_NAMES[leaf]}"
            elif component != "unet":
                stem = f"{component}.{path}.lora_linear_layer"
            else:
                stem = f"{component}.{path}.lora"
            tensors[f"{stem}.down.weight"] = down
            tensors[f"{stem}.up.weight"] = up
            if alphas:
                tensors[f"{component}.{path}.alpha"] = np.array(alpha, dtype=np.float32)
    return tensors


# --------------------------------------------------------------------------- kohya
# The SGM (original Stability) block numbering of the two tiny UNet layouts, written out by hand.
# sd15: down (CrossAttnDown, Down), up (Up, CrossAttnUp); sdxl: down (Down, CrossAttnDown),
# up (CrossAttnUp, Up); both two layers per block.
_SGM_BLOCKS = {
    "sd15": {
        "down_blocks.0.resnets.0": "input_blocks.1.0", "down_blocks.0.attentions.0": "input_blocks.1.1",
        "down_blocks.0.resnets.1": "input_blocks.2.0", "down_blocks.0.attentions.1": "input_blocks.2.1",
        "down_blocks.0.downsamplers.0.conv": "input_blocks.3.0.op",
        "down_blocks.1.resnets.0": "input_blocks.4.0", "down_blocks.1.resnets.1": "input_blocks.5.0",
        "up_blocks.0.resnets.0": "output_blocks.0.0", "up_blocks.0.resnets.1": "output_blocks.1.0",
        "up_blocks.0.resnets.2": "output_blocks.2.0", "up_blocks.0.upsamplers.0.conv": "output_blocks.2.1.conv",
        "up_blocks.1.resnets.0": "output_blocks.3.0", "up_blocks.1.attentions.0": "output_blocks.3.1",
        "up_blocks.1.resnets.1": "output_blocks.4.0", "up_blocks.1.attentions.1": "output_blocks.4.1",
        "up_blocks.1.resnets.2": "output_blocks.5.0", "up_blocks.1.attentions.2": "output_blocks.5.1",
    },
    "sdxl": {
        "down_blocks.0.resnets.0": "input_blocks.1.0", "down_blocks.0.resnets.1": "input_blocks.2.0",
        "down_blocks.0.downsamplers.0.conv": "input_blocks.3.0.op",
        "down_blocks.1.resnets.0": "input_blocks.4.0", "down_blocks.1.attentions.0": "input_blocks.4.1",
        "down_blocks.1.resnets.1": "input_blocks.5.0", "down_blocks.1.attentions.1": "input_blocks.5.1",
        "up_blocks.0.resnets.0": "output_blocks.0.0", "up_blocks.0.attentions.0": "output_blocks.0.1",
        "up_blocks.0.resnets.1": "output_blocks.1.0", "up_blocks.0.attentions.1": "output_blocks.1.1",
        "up_blocks.0.resnets.2": "output_blocks.2.0", "up_blocks.0.attentions.2": "output_blocks.2.1",
        "up_blocks.0.upsamplers.0.conv": "output_blocks.2.2.conv",
        "up_blocks.1.resnets.0": "output_blocks.3.0", "up_blocks.1.resnets.1": "output_blocks.4.0",
        "up_blocks.1.resnets.2": "output_blocks.5.0",
    },
}
_SGM_COMMON = {"mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
               "mid_block.resnets.1": "middle_block.2", "time_embedding.linear_1": "time_embed.0",
               "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
               "add_embedding.linear_2": "label_emb.0.2", "conv_in": "input_blocks.0.0", "conv_out": "out.2"}
_SGM_RESNET = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
               "conv_shortcut": "skip_connection"}


def sgm_name(path: str, layout: str) -> str:
    blocks = dict(_SGM_BLOCKS[layout], **_SGM_COMMON)
    for prefix in sorted(blocks, key=len, reverse=True):
        if path == prefix or path.startswith(prefix + "."):
            rest = path[len(prefix) + 1:]
            if ".resnets." in f".{prefix}.":
                rest = _SGM_RESNET[rest]
            return blocks[prefix] + ("." + rest if rest else "")
    raise KeyError(path)


def kohya_file(layers: Layers, sgm_layout: str = None, te_prefix: str = "lora_te_"):
    """kohya / A1111: `lora_unet_<name>` with "." -> "_" (diffusers names, or SGM names for
    `sgm_layout`), `lora_te_` (SD) or `lora_te1_` / `lora_te2_` (SDXL); alphas as float16 scalars."""
    prefixes = {"unet": "lora_unet_", "text_encoder": te_prefix, "text_encoder_2": "lora_te2_"}
    tensors = {}
    for component, paths in layers.items():
        for path, (down, up, alpha) in paths.items():
            name = sgm_name(path, sgm_layout) if (component == "unet" and sgm_layout) else path
            stem = prefixes[component] + name.replace(".", "_")
            tensors[f"{stem}.lora_down.weight"] = down
            tensors[f"{stem}.lora_up.weight"] = up
            tensors[f"{stem}.alpha"] = np.array(alpha, dtype=np.float16)
    return tensors


FORMATS = ("peft", "old_diffusers", "kohya", "kohya_sgm")


def write(folder: str, name: str, layers: Layers, fmt: str, layout: str) -> str:
    """Write `layers` in format `fmt` to folder/name.safetensors; returns the path."""
    import safetensors.numpy

    metadata = None
    xl = layout == "sdxl"
    if fmt == "peft":
        tensors, metadata = peft_file(layers)
    elif fmt == "old_diffusers":
        tensors = old_diffusers_file(layers)
    elif fmt == "kohya":
        tensors = kohya_file(layers, te_prefix="lora_te1_" if xl else "lora_te_")
    elif fmt == "kohya_sgm":
        tensors = kohya_file(layers, sgm_layout=layout, te_prefix="lora_te1_" if xl else "lora_te_")
    else:
        raise ValueError(fmt)
    path = os.path.join(folder, f"{name}.safetensors")
    safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path, metadata=metadata)
    return path


def expected_fused(base: np.ndarray, terms) -> np.ndarray:
    """float64 oracle: base + sum(weight * alpha / rank * lora_scale * up @ down) for terms
    (down, up, alpha, weight, lora_scale)."""
    out = base.astype(np.float64)
    for down, up, alpha, weight, lora_scale in terms:
        rank = down.shape[0]
        delta = up.reshape(up.shape[0], rank).astype(np.float64) @ down.reshape(rank, -1).astype(np.float64)
        out = out + (weight * alpha / rank * lora_scale) * delta.reshape(base.shape)
    return out


def rel_err(got, want) -> float:
    """max |got - want| / max |want|: relative to the weight's scale, not per element (a fused element
    near zero would make a per-element ratio meaningless)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
