"""What a LoRA key says: which component, which module (in which naming), which factor.

Three families of names occur in LoRA files for Stable Diffusion:

- diffusers/PEFT: `unet.<module path>.lora_A.weight` / `.lora_B.weight` (also with a PEFT adapter
  name before `.weight`), prefixed `unet.`, `text_encoder.` or `text_encoder_2.`;
- older diffusers: `<path>.lora.down.weight` / `.lora.up.weight`, text encoders'
  `.lora_linear_layer.down/up`, and the attention-processor form `<attention>.processor.to_q_lora.down.weight`
  (which names the projection, not the module); UNet-only files carry no prefix at all;
- kohya / A1111: `lora_unet_<name>.lora_down.weight` / `.lora_up.weight` / `.alpha` and `lora_te_`,
  `lora_te1_`, `lora_te2_` for the text encoders, where <name> is a module path with every "." turned
  into "_", either diffusers' path or the original SGM/LDM one (`input_blocks_4_1_...`).

A kohya name cannot be turned back into a path by string rules ("to_q", "time_emb_proj" hold "_"
themselves), so this module only splits keys; `normalise.py` resolves names against the model's own
module list.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Optional, Tuple

from fewstep.core.lora.sgm import is_sgm_name

DOWN, UP, ALPHA = "down", "up", "alpha"
# the file formats a key can belong to (module docstring), as `key_format` names them
PEFT, OLD_DIFFUSERS, KOHYA, KOHYA_SGM = "peft", "old_diffusers", "kohya", "kohya_sgm"
FORMAT_NAMES = {PEFT: "diffusers/PEFT", OLD_DIFFUSERS: "older diffusers", KOHYA: "kohya/A1111 (diffusers names)",
                KOHYA_SGM: "kohya/A1111 (SGM names)"}

KOHYA_PREFIXES = (("lora_unet_", "unet"), ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2"),
                  ("lora_te_", "text_encoder"))
COMPONENT_PREFIXES = (("unet.", "unet"), ("text_encoder_2.", "text_encoder_2"), ("text_encoder.", "text_encoder"))

# factor suffixes of module-path keys, longest first so ".lora.down.weight" is not read as ".weight"
_PATH_SUFFIXES = (
    (".lora_linear_layer.down.weight", DOWN), (".lora_linear_layer.up.weight", UP),
    (".lora.down.weight", DOWN), (".lora.up.weight", UP),
    (".lora_down.weight", DOWN), (".lora_up.weight", UP),
    (".lora_A.weight", DOWN), (".lora_B.weight", UP),
    (".alpha", ALPHA),
)
_KOHYA_SUFFIXES = ((".lora_down.weight", DOWN), (".lora_up.weight", UP), (".alpha", ALPHA))
_PEFT_NAMED = re.compile(r"^(?P<path>.+)\.lora_(?P<ab>[AB])\.[A-Za-z0-9_\-]+\.weight$")
# old attention-processor LoRA: the key names the projection; the module is found by its candidates
_PROCESSOR = re.compile(r"^(?P<attn>.+?)(?:\.processor)?\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<part>down|up|alpha)"
                        r"(?:\.weight)?$")
_PROJECTIONS = {  # UNet attention names first, then CLIP's
    "to_q": ("to_q", "q_proj"), "to_k": ("to_k", "k_proj"), "to_v": ("to_v", "v_proj"),
    "to_out": ("to_out.0", "out_proj", "to_out"),
}

# keys of LoRA variants that are not plain low-rank factors, with what they are (for the error)
UNSUPPORTED = (
    ("dora_scale", "DoRA magnitude"), ("lora_magnitude_vector", "DoRA magnitude"), ("hada_", "LoHa (LyCORIS)"),
    ("lokr_", "LoKr (LyCORIS)"), ("lora_mid", "LoCon with CP decomposition"), (".diff", "full weight difference"),
    ("lora_B.bias", "LoRA bias"), ("lora_up.bias", "LoRA bias"),
)


class ParsedKey(NamedTuple):
    key: str
    component: str
    kohya: bool                    # True: `names` holds one kohya "_" name; False: module path candidates
    names: Tuple[str, ...]
    part: str                      # DOWN, UP or ALPHA


def unsupported_kind(key: str) -> Optional[str]:
    for marker, what in UNSUPPORTED:
        if marker in key:
            return what
    return None


def parse_key(key: str) -> Optional[ParsedKey]:
    """The parts of one LoRA key, or None when it is not a LoRA factor or alpha key."""
    for prefix, component in KOHYA_PREFIXES:
        if key.startswith(prefix):
            for suffix, part in _KOHYA_SUFFIXES:
                if key.endswith(suffix):
                    return ParsedKey(key, component, True, (key[len(prefix):-len(suffix)],), part)
            return None
    rest, component = key, "unet"  # older UNet-only files carry no component prefix
    if rest.startswith("base_model.model."):  # PEFT's own save_pretrained prefix
        rest = rest[len("base_model.model."):]
    for prefix, name in COMPONENT_PREFIXES:
        if rest.startswith(prefix):
            rest, component = rest[len(prefix):], name
            break
    match = _PROCESSOR.match(rest)
    if match:
        attn = match["attn"]
        names = tuple(f"{attn}.{proj}" for proj in _PROJECTIONS[match["proj"]])
        return ParsedKey(key, component, False, names, match["part"])
    match = _PEFT_NAMED.match(rest)  # PEFT keys that carry the adapter name: ".lora_A.<name>.weight"
    if match:
        return ParsedKey(key, component, False, (_drop_processor(match["path"]),), DOWN if match["ab"] == "A" else UP)
    for suffix, part in _PATH_SUFFIXES:
        if rest.endswith(suffix):
            return ParsedKey(key, component, False, (_drop_processor(rest[:-len(suffix)]),), part)
    return None


def key_format(parsed: ParsedKey) -> str:
    """Which format a parsed key is written in: PEFT, OLD_DIFFUSERS, KOHYA or KOHYA_SGM (a kohya UNet key
    with an original SGM/LDM module name)."""
    if parsed.kohya:
        return KOHYA_SGM if parsed.component == "unet" and is_sgm_name(parsed.names[0]) else KOHYA
    return PEFT if _PEFT_NAMED.match(parsed.key) or ".lora_A." in parsed.key or ".lora_B." in parsed.key \
        else OLD_DIFFUSERS


def _drop_processor(path: str) -> str:
    # diffusers 0.2x wrote some paths through the attention processor ("attn1.processor.to_q.lora...")
    return path.replace(".processor.", ".")
