"""Which model family a single-file checkpoint (the A1111 / civitai layout) holds, from its keys alone.

Only the safetensors header is read (8 bytes of length, then JSON): no tensor data, no framework, and
never a pickle. The decisions follow diffusers' `infer_diffusers_model_type`
(diffusers/loaders/single_file_utils.py), which probes a few keys and the sizes of the released models
(a 1024-wide cross-attention for SD 2, the tenth layer of SDXL's OpenCLIP encoder). Here the same
decisions are made from the layout instead (which text encoder sits where, the UNet's input channels), so
they also hold for the narrow, shallow checkpoints of `fewstep.testing.tiny_checkpoint`, where diffusers'
size probes do not fire; on full-size checkpoints both agree (tests/test_single_file.py checks each branch).

SD 2.x 512 (epsilon) and 768-v (v-prediction) checkpoints have the same keys. The header's metadata may
say which (Stability's model spec `modelspec.prediction_type` / `modelspec.architecture`, or the `v_pred`
marker key some tools add); without it the family names the ambiguity, takes diffusers' choice (its
default config for SD 2 is the 768-v model) and `config=` decides.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from fewstep.core.lora.errors import LoraError
from fewstep.core.lora.reading import read_header as read_safetensors_header

Tensors = Dict[str, Tuple[str, Tuple[int, ...]]]


@dataclass(frozen=True)
class CheckpointFamily:
    """A model family: `key` as `fewstep.testing.KINDS` names it, a human `name`, the fewstep pipeline class of
    its main task, the model type diffusers' `infer_diffusers_model_type` gives a full-size checkpoint of it, and
    the other keys it could be when the checkpoint's keys cannot tell (SD 2.x 512 vs 768-v)."""

    key: str
    name: str
    pipeline: str
    diffusers_type: str = ""
    alternatives: Tuple[str, ...] = ()


FAMILIES = {f.key: f for f in (
    CheckpointFamily("sd15", "SD 1.5", "StableDiffusionPipeline", "v1"),
    CheckpointFamily("sd21", "SD 2.1 (512, epsilon)", "StableDiffusionPipeline", "v2"),
    CheckpointFamily("sd21-v", "SD 2.1 768-v (v-prediction)", "StableDiffusionPipeline", "v2"),
    CheckpointFamily("sdxl", "SDXL base", "StableDiffusionXLPipeline", "xl_base"),
    CheckpointFamily("sd15-inpaint", "SD 1.5 inpainting", "StableDiffusionInpaintPipeline", "inpainting"),
    CheckpointFamily("sdxl-inpaint", "SDXL inpainting", "StableDiffusionXLInpaintPipeline", "xl_inpaint"),
    # the refiner: OpenCLIP bigG alone (as the second text encoder), an aesthetic-score UNet; its class is img2img
    CheckpointFamily("sdxl-refiner", "SDXL refiner", "StableDiffusionXLImg2ImgPipeline", "xl_refiner"),
    # no tiny builder makes this one; fewstep runs it like SD 1.5 inpainting, with an SD 2 config folder
    CheckpointFamily("sd2-inpaint", "SD 2 inpainting", "StableDiffusionInpaintPipeline", "inpainting_v2"),
)}

# An SD 2.x checkpoint whose keys and metadata cannot tell 512 from 768-v: diffusers' choice, named honestly.
SD2_UNKNOWN_PREDICTION = CheckpointFamily(
    "sd21-v", "SD 2.x, 512 (epsilon) or 768-v (v-prediction): the keys cannot tell; diffusers assumes 768-v, "
    "a config= folder decides", "StableDiffusionPipeline", "v2", alternatives=("sd21",))

KNOWN_LAYOUTS = ("SD 1.x (LDM keys model.diffusion_model.*, cond_stage_model.transformer.*)",
                 "SD 2.x (LDM keys, OpenCLIP cond_stage_model.model.*)",
                 "SDXL base (SGM keys conditioner.embedders.0.transformer.* and conditioner.embedders.1.model.*)",
                 "SDXL refiner (SGM keys, OpenCLIP only: conditioner.embedders.0.model.*)",
                 "and the inpainting variants of each (9 UNet input channels)")

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")

UNET = "model.diffusion_model."
_CONV_IN = UNET + "input_blocks.0.0.weight"
# diffusers' probe for SD 2 (its width is the text encoder's: 768 CLIP ViT-L, 1024 OpenCLIP ViT-H)
_V2_PROBE = UNET + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
_SD2_WIDTH = 1024


# ---------------------------------------------------------------------------------------- reading
def refuse_pickle(path) -> None:
    """Raise for a pickled checkpoint (`.ckpt`, `.pt`, `.bin`...) before a byte of it is read: unpickling
    runs whatever code the file holds, so fewstep never does it."""
    if os.fspath(path).lower().endswith(PICKLE_SUFFIXES):
        raise ValueError(_pickle_message(path))


def _pickle_message(path) -> str:
    return (
        f"{os.fspath(path)!r} is a pickled checkpoint; fewstep never unpickles files (loading a pickle runs whatever "
        f"code it holds). Convert it to safetensors once, in an environment you trust, e.g.\n"
        f"  python -c \"import torch, safetensors.torch as st; sd = torch.load('model.ckpt', map_location='cpu', "
        f"weights_only=True); sd = sd.get('state_dict', sd); st.save_file({{k: v.contiguous() for k, v in sd.items() "
        f"if isinstance(v, torch.Tensor)}}, 'model.safetensors')\"\n"
        f"(or diffusers' scripts/convert_original_stable_diffusion_to_diffusers.py), then pass the .safetensors file."
    )


def read_header(path) -> Tuple[Tensors, Dict[str, str]]:
    """({name: (safetensors dtype, shape)}, the header's `__metadata__`) of a safetensors file, header only."""
    refuse_pickle(path)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} is not a file; pass the path of a single-file .safetensors checkpoint.")
    with open(path, "rb") as f:
        head = f.read(4)
    # a torch.save zip or a bare pickle renamed to .safetensors: say so rather than "bad header"
    if head == b"PK\x03\x04":
        raise ValueError(_pickle_message(path))
    try:  # the core's reader (also LoRA files'): the header checked against the file's size, no tensor data read
        header = read_safetensors_header(path)
    except LoraError as err:
        # a pickle starts with its protocol opcode 0x80; so does a safetensors file whose header length ends in
        # 0x80, so only a file that is not safetensors is called a pickle
        if head[:1] == b"\x80":
            raise ValueError(_pickle_message(path)) from err
        raise ValueError(f"{path!r} cannot be read as a safetensors checkpoint: {err}") from err
    return {name: (t.dtype, t.shape) for name, t in header.tensors.items()}, dict(header.metadata)


def checkpoint_tensors(path) -> Tensors:
    """Every tensor of a safetensors checkpoint as `{name: (safetensors dtype, shape)}`, read from the header.

    Args:
        path (`str` or `os.PathLike`):
            A `.safetensors` file. Pickled checkpoints (`.ckpt`, `.pt`, `.bin`) are refused unread.

    Returns:
        `Dict[str, Tuple[str, Tuple[int, ...]]]`: the dtype as safetensors names it ("F32", "F16", "BF16"...)
        and the shape, by tensor name.
    """
    return read_header(path)[0]


# ---------------------------------------------------------------------------------------- deciding
def detect_family(path) -> CheckpointFamily:
    """The model family of a single-file checkpoint, from its keys (and, for SD 2.x, its metadata).

    Args:
        path (`str` or `os.PathLike`):
            A `.safetensors` checkpoint in the original layout (LDM for SD 1.x / 2.x, SGM for SDXL).

    Returns:
        `CheckpointFamily`: see `FAMILIES`. Raises a ValueError that names what it saw for a layout it does not
        know (a diffusers-format component file, a LoRA, a ControlNet, another model type).
    """
    tensors, metadata = read_header(path)
    return family_of(tensors, metadata, where=repr(os.fspath(path)))


def family_of(tensors: Tensors, metadata: Optional[Dict[str, str]] = None,
              where: str = "The checkpoint") -> CheckpointFamily:
    """`detect_family` on a header already read: `{name: (dtype, shape)}` and its `__metadata__`."""
    conv_in = tensors.get(_CONV_IN)
    if conv_in is None or len(conv_in[1]) != 4:
        raise ValueError(_unknown(tensors, where))
    in_channels = conv_in[1][1]

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in tensors)

    if "edm_mean" in tensors:
        raise ValueError(f"{where} is a Playground v2.5 checkpoint; fewstep runs SD 1.x, SD 2.x and SDXL ({_known()}).")
    xl = has("conditioner.embedders.1.model.")  # SDXL base: OpenCLIP bigG second (diffusers: its resblocks.9)
    if not xl and has(_REFINER_TEXT):
        # the refiner: OpenCLIP bigG first and alone (diffusers: "xl_refiner", its resblocks.9 without CLIP ViT-L)
        if in_channels != 4:
            raise ValueError(f"{where} is an SDXL refiner layout with a {in_channels}-input-channel UNet; fewstep "
                             f"runs {_known()}.")
        return FAMILIES["sdxl-refiner"]
    # SD 2: an OpenCLIP text encoder (diffusers: the 1024-wide cross-attention it implies)
    v2 = not xl and (has("cond_stage_model.model.") or (not has("cond_stage_model.") and _width(tensors) == _SD2_WIDTH))
    if in_channels == 9:
        return FAMILIES["sd2-inpaint" if v2 else "sdxl-inpaint" if xl else "sd15-inpaint"]
    if in_channels != 4:
        # diffusers: 8 -> instruct-pix2pix, 7 -> the x4 upscaler
        what = {8: "an InstructPix2Pix", 7: "an SD x4 upscaler"}.get(in_channels, f"a {in_channels}-input-channel")
        raise ValueError(f"{where} is {what} checkpoint (UNet conv_in takes {in_channels} channels); fewstep runs "
                         f"{_known()}.")
    if xl:
        return FAMILIES["sdxl"]
    if v2:
        return _sd2(tensors, metadata or {})
    if not has("cond_stage_model.transformer.") and has("cond_stage_model."):
        raise ValueError(_unknown(tensors, where))
    return FAMILIES["sd15"]


# where each pipeline component's weights sit in the original layouts
COMPONENT_PREFIXES = {"unet": ("model.diffusion_model.",), "vae": ("first_stage_model.", "vae."),
                      "text_encoder": ("cond_stage_model.", "conditioner.embedders.0."),
                      "text_encoder_2": ("conditioner.embedders.1.",)}
# the refiner's only text encoder is the base's second, saved first
_REFINER_TEXT = "conditioner.embedders.0.model."
REFINER_PREFIXES = {"unet": COMPONENT_PREFIXES["unet"], "vae": COMPONENT_PREFIXES["vae"],
                    "text_encoder_2": (_REFINER_TEXT,)}


def component_prefixes(family: Optional[CheckpointFamily] = None) -> Dict[str, Tuple[str, ...]]:
    """Where each component's weights sit in a checkpoint of `family` (the refiner has no first text encoder)."""
    return REFINER_PREFIXES if family is not None and family.key == "sdxl-refiner" else COMPONENT_PREFIXES


def components_in(tensors: Tensors, family: Optional[CheckpointFamily] = None) -> Tuple[str, ...]:
    """The pipeline components whose weights the checkpoint holds (some files leave out the VAE or the text
    encoders, to be taken from elsewhere)."""
    return tuple(name for name, prefixes in component_prefixes(family).items()
                 if any(k.startswith(prefixes) for k in tensors))


def _width(tensors: Tensors) -> Optional[int]:
    probe = tensors.get(_V2_PROBE)
    return probe[1][-1] if probe else None


def _sd2(tensors: Tensors, metadata: Dict[str, str]) -> CheckpointFamily:
    """512 (epsilon) or 768-v: only metadata or a marker key can tell."""
    prediction = metadata.get("modelspec.prediction_type", "").lower()
    architecture = metadata.get("modelspec.architecture", "").lower()
    if "v_pred" in tensors or prediction in ("v", "v_prediction", "v-prediction") or architecture.endswith("-v"):
        return FAMILIES["sd21-v"]
    if prediction == "epsilon" or (architecture.startswith("stable-diffusion-v2") and not architecture.endswith("-v")):
        return FAMILIES["sd21"]
    return SD2_UNKNOWN_PREDICTION


def _known() -> str:
    return "; ".join(KNOWN_LAYOUTS)


def _unknown(tensors: Tensors, where: str) -> str:
    names = sorted(tensors)
    hint = ""
    if any(k.startswith(("lora_unet_", "lora_te")) or ".lora_" in k or "lora_A" in k for k in names):
        hint = " It looks like a LoRA: load it with pipe.load_lora_weights(path)."
    elif any(k.startswith(("control_model.", "controlnet_cond_embedding.")) for k in names):
        hint = " It looks like a ControlNet: load it with fewstep.ControlNetModel and pass it as controlnet=."
    elif any(k.startswith(("down_blocks.", "encoder.down_blocks.", "text_model.")) for k in names):
        hint = (" It looks like one component in diffusers' format: load the whole pipeline folder with "
                "from_pretrained(folder).")
    tops = sorted({k.split(".")[0] for k in names})
    return (f"{where} is not a checkpoint layout fewstep knows: {len(names)} tensors, top-level names "
            f"{tops[:8]}{' ...' if len(tops) > 8 else ''}, e.g. {names[:3]}.{hint} Known layouts: {_known()}.")


# ---------------------------------------------------------------------------------------- config folders
# Where diffusers fetches the configs of each family when no config= is given (its DIFFUSERS_DEFAULT_PIPELINE_PATHS),
# plus the SD 2.1 512 base, which diffusers does not tell apart from 768-v.
HUB_CONFIGS = {"sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5", "sd21": "stabilityai/stable-diffusion-2-1-base",
               "sd21-v": "stabilityai/stable-diffusion-2-1", "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
               "sd15-inpaint": "stable-diffusion-v1-5/stable-diffusion-inpainting",
               "sdxl-inpaint": "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
               "sdxl-refiner": "stabilityai/stable-diffusion-xl-refiner-1.0",
               "sd2-inpaint": "stabilityai/stable-diffusion-2-inpainting"}


def _generation(key: str) -> str:
    if key == "sdxl-refiner":
        return "SDXL refiner"
    return "SDXL" if key.startswith("sdxl") else "SD 2.x" if key.startswith("sd2") else "SD 1.x"


def _read_json(folder: str, *parts: str) -> dict:
    path = os.path.join(folder, *parts)
    if not os.path.isfile(path):
        raise ValueError(f"config={folder!r} has no {'/'.join(parts)}: pass a diffusers-format pipeline folder "
                         f"(model_index.json and one folder per component, as save_pretrained writes it).")
    with open(path) as f:
        return json.load(f)


def check_config(family: CheckpointFamily, tensors: Tensors, folder: str) -> CheckpointFamily:
    """Check that a diffusers-format `folder` describes the checkpoint's family and sizes, and return the family as
    the folder settles it (SD 2.x: its scheduler's prediction type decides 512 epsilon vs 768-v).

    Without this check diffusers would build the folder's models and load what fits, reporting the rest as
    unused or failing on a shape deep in its loader."""
    index = _read_json(folder, "model_index.json")
    unet = _read_json(folder, "unet", "config.json")
    if index.get("text_encoder_2", [None])[0] is not None:
        # the refiner's folder saves no first text encoder ([null, null])
        generation = "SDXL" if (index.get("text_encoder") or [None])[0] is not None else "SDXL refiner"
    else:
        text = _read_json(folder, "text_encoder", "config.json")
        # SD 2.x's OpenCLIP ViT-H uses plain gelu, SD 1.x's CLIP ViT-L quick_gelu
        generation = "SD 2.x" if text.get("hidden_act") == "gelu" else "SD 1.x"
    width, in_channels = tensors[_CONV_IN][1][:2]
    theirs = (generation, unet.get("in_channels"), (unet.get("block_out_channels") or [None])[0])
    mine = (_generation(family.key), in_channels, width)
    if theirs != mine:
        raise ValueError(
            f"config={folder!r} does not describe this {family.name} checkpoint: the folder is {theirs[0]} with a "
            f"UNet of {theirs[1]} input channels starting {theirs[2]} wide, the checkpoint {mine[0]} with "
            f"{mine[1]} input channels starting {mine[2]} wide. Pass a diffusers-format folder of the same family "
            f"({family.name}; e.g. the configs of {HUB_CONFIGS[family.key]}).")
    if mine[0] == "SD 2.x" and in_channels == 4:
        scheduler = _read_json(folder, "scheduler", "scheduler_config.json")
        return FAMILIES["sd21-v" if scheduler.get("prediction_type") == "v_prediction" else "sd21"]
    return family
