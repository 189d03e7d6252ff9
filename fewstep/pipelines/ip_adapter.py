"""IP-Adapter: image prompts, on every SD and SDXL pipeline, through the loop's extension point.

Two parts, as in diffusers:

- `IPAdapterMixin` (`load_ip_adapter`, `set_ip_adapter_scale`, `unload_ip_adapter`,
  `prepare_ip_adapter_image_embeds`). fewstep reads the file itself (safetensors, the h94 layout:
  `image_proj.*`, `ip_adapter.{k}.to_k_ip/to_v_ip.weight`) and checks every tensor against the UNet
  before anything changes; the backend's trusted library (diffusers / mindone) then converts it and
  installs its IP attention processors. What the UNet had before (its processor objects, its
  `encoder_hid_proj`) is kept, so `unload_ip_adapter` puts back exactly that: images are bitwise those
  of a pipeline that never loaded one. IP attention holds its own `to_k_ip` / `to_v_ip` layers, which
  no LoRA names, so LoRA fusion and IP-Adapters do not touch each other's weights.
- `IPAdapter`, the extension: owns `ip_adapter_image` / `ip_adapter_image_embeds`, encodes the images
  once per call as diffusers' `encode_image` does (CLIPImageProcessor from transformers on both
  backends; plain adapters read the projected embedding, Plus adapters the encoder's penultimate hidden
  states; the negative half is zeros, or the encoding of a black image for Plus) and adds
  `image_embeds` to the UNet's `added_cond` at every step.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional

import numpy as np

from fewstep.backends import load_component
from fewstep.core.lora.reading import read_safetensors
from fewstep.core import checks
from fewstep.pipelines import busy, image_processing
from fewstep.pipelines.docstrings import Arg
from fewstep.pipelines.parts import Part

_ENCODER_CLASS = "CLIPVisionModelWithProjection"


@dataclass
class _IPState:
    kinds: List[str]                      # per adapter: "plain" (ImageProjection) or "plus" (Resampler)
    saved: Any                            # what the UNet had before (backend token)
    image_encoder: Any = None
    feature_extractor: Any = None
    names: List[str] = field(default_factory=list)


def _as_list(value, n: int, what: str) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(values) == 1:
        values = values * n
    if len(values) != n:
        raise ValueError(f"{what} has {len(values)} entries for {n} IP-Adapter files; pass one, or one per file.")
    return values


def _weight_file(source: str, subfolder: Optional[str], weight_name: str, hub_kwargs: dict) -> str:
    """A local path for the IP-Adapter file: in a folder (with subfolder), or fetched from the hub."""
    if not weight_name.endswith(".safetensors"):
        raise ValueError(f"{weight_name!r} is not a safetensors file. fewstep does not unpickle .bin files (loading a "
                         f"pickle can run code): convert it once with `safetensors.torch.save_file` (flatten the "
                         f"'image_proj' and 'ip_adapter' dicts to 'image_proj.<key>' / 'ip_adapter.<key>'), or use "
                         f"the repository's .safetensors file.")
    if os.path.isdir(source):
        path = os.path.join(source, subfolder or "", weight_name)
        if not os.path.isfile(path):
            raise ValueError(f"No IP-Adapter file {weight_name!r} in {os.path.join(source, subfolder or '')!r}.")
        return path
    try:
        from fewstep.pipelines import hub

        # that file only, with a bounded wait for a hub that does not answer (FEWSTEP_HUB_TIMEOUT)
        return hub.file(source, weight_name, subfolder=subfolder or None, options=hub_kwargs)
    except Exception as err:
        if isinstance(err, hub.HubTimeout):
            raise  # one line naming the variable that sets the bound
        raise ValueError(f"{source!r} is neither a local folder nor a hub repository whose {weight_name!r} could be "
                         f"fetched ({type(err).__name__}); download it first and pass the folder.") from err


def _encoder_folder(source: str, subfolder: Optional[str], image_encoder_folder: str, hub_kwargs: dict) -> str:
    """Where diffusers looks for the image encoder: `<subfolder>/<image_encoder_folder>` for a bare name,
    else `image_encoder_folder` from the repository root."""
    relative = os.path.join(subfolder or "", image_encoder_folder) if "/" not in image_encoder_folder \
        else image_encoder_folder
    if os.path.isdir(source):
        folder = os.path.join(source, relative)
    else:
        try:
            from fewstep.pipelines import hub

            # that folder's safetensors and configs (no .bin copy), with a bounded wait (FEWSTEP_HUB_TIMEOUT)
            folder = os.path.join(hub.snapshot_matching(source, [f"{relative}/*"], hub_kwargs), relative)
        except Exception as err:
            if isinstance(err, hub.HubTimeout):
                raise  # one line naming the variable that sets the bound
            raise ValueError(f"The image encoder {relative!r} of {source!r} could not be fetched "
                             f"({type(err).__name__}); download it first and pass the folder.") from err
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ValueError(f"No image encoder in {folder!r} (no config.json). Pass image_encoder_folder= naming the folder "
                         f"that holds the CLIPVisionModelWithProjection (e.g. 'models/image_encoder').")
    return folder


def _split(tensors: Mapping[str, np.ndarray], path: str) -> dict:
    parts = {"image_proj": {}, "ip_adapter": {}}
    for key, value in tensors.items():
        head, _, rest = key.partition(".")
        if head in parts:
            parts[head][rest] = value
    if not parts["image_proj"] or not parts["ip_adapter"]:
        raise ValueError(f"{path} is not an IP-Adapter file: it has no 'image_proj.*' and 'ip_adapter.*' tensors.")
    return parts


def _kind(image_proj: Mapping[str, np.ndarray], path: str) -> str:
    if "proj.weight" in image_proj and "norm.weight" in image_proj:
        return "plain"
    if "latents" in image_proj and "proj_out.weight" in image_proj:
        return "plus"
    raise ValueError(f"{path}: fewstep reads plain IP-Adapters and IP-Adapter Plus; this projection "
                     f"({sorted(image_proj)[:4]}...) is another kind (FaceID, full face) not supported yet.")


def _check_fits(unet, parts: dict, path: str) -> None:
    """Every to_k_ip / to_v_ip must have the shape of its cross-attention's to_k, in the UNet's order;
    the projection must produce tokens of the UNet's cross-attention width."""
    targets = unet.lora_targets()
    cross = [shape for name, shape in targets.items() if name.endswith("attn2.to_k") and "motion_modules" not in name]
    ip = parts["ip_adapter"]
    keys = sorted({int(k.split(".")[0]) for k in ip if k.endswith(("to_k_ip.weight", "to_v_ip.weight"))})
    if keys != [2 * i + 1 for i in range(len(cross))]:
        raise ValueError(f"{path} has IP attention for {len(keys)} layers but the UNet has {len(cross)} cross-attention "
                         f"layers: it was made for another base model (SD 1.5 / SDXL); use the file for this one.")
    for i, shape in enumerate(cross):
        for proj in ("to_k_ip", "to_v_ip"):
            got = tuple(ip[f"{2 * i + 1}.{proj}.weight"].shape)
            if got != tuple(shape):
                raise ValueError(f"{path}: ip_adapter.{2 * i + 1}.{proj}.weight is {got} but that cross-attention layer "
                                 f"needs {tuple(shape)}: the file was made for another base model.")
    width = unet.config["cross_attention_dim"]
    proj = parts["image_proj"]
    out = proj["norm.weight"].shape[0] if "norm.weight" in proj else proj["proj_out.weight"].shape[0]
    if out != width:
        raise ValueError(f"{path}: the image projection makes tokens of width {out}, the UNet's cross-attention takes "
                         f"{width}: the file was made for another base model.")


def _check_block_scales(config: Mapping, scale) -> None:
    """A per-block scale dict names only blocks that have attention, with one value per transformer
    layer (diffusers silently ignores a block without attention and fails late on a missing one)."""
    if not isinstance(scale, dict):
        return
    unknown = sorted(set(scale) - {"down", "mid", "up"})
    if unknown:
        raise ValueError(f"IP-Adapter scale dict keys are 'down', 'mid' and 'up'; got {unknown}.")
    per_block = int(np.atleast_1d(config["layers_per_block"])[0])
    for side in ("down", "up"):
        value = scale.get(side)
        if value is None or isinstance(value, (int, float)):
            continue
        types = config[f"{side}_block_types"]
        with_attention = [i for i, t in enumerate(types) if "CrossAttn" in t]
        layers = per_block + (1 if side == "up" else 0)
        for name, v in value.items():
            match = re.fullmatch(r"block_(\d+)", str(name))
            if match is None or int(match.group(1)) not in with_attention:
                raise ValueError(f"The IP-Adapter scale names {side}.{name}, which is not a block with attention in this "
                                 f"UNet; its {side} blocks with attention are "
                                 f"{[f'block_{i}' for i in with_attention]}.")
            if isinstance(v, (list, tuple)) and len(v) != layers:
                raise ValueError(f"The IP-Adapter scale for {side}.{name} has {len(v)} values; that block has {layers} "
                                 f"transformer layers: pass one value, or one per layer.")


class IPAdapterMixin:
    """diffusers' IP-Adapter methods for fewstep pipelines (see the module docstring)."""

    def _ip_state(self) -> Optional[_IPState]:
        return self.__dict__.get("_ip")

    @busy.exclusive  # changes the UNet's attention: not while another thread runs a call
    def load_ip_adapter(self, pretrained_model_name_or_path_or_dict, subfolder, weight_name,
                        image_encoder_folder: Optional[str] = "image_encoder", **hub_kwargs):
        """Load one IP-Adapter file, or several (lists of sources / subfolders / weight names, as in
        diffusers), and the CLIP image encoder beside them. Raises ValueError, with the pipeline
        unchanged, when a file cannot be read or does not fit the UNet."""
        if self._ip_state() is not None:
            raise ValueError("An IP-Adapter is already loaded: call unload_ip_adapter() first, or load several at once "
                             "with lists of weight names.")
        names = list(weight_name) if isinstance(weight_name, (list, tuple)) else [weight_name]
        sources = _as_list(pretrained_model_name_or_path_or_dict, len(names), "pretrained_model_name_or_path_or_dict")
        subfolders = _as_list(subfolder, len(names), "subfolder")
        parts, kinds = [], []
        for source, sub, name in zip(sources, subfolders, names):
            if isinstance(source, Mapping):
                path, tensors = "the state dict", {f"{p}.{k}": np.asarray(v) for p in ("image_proj", "ip_adapter")
                                                   for k, v in source.get(p, {}).items()}
            else:
                path = _weight_file(os.fspath(source), sub, name, hub_kwargs)
                tensors = read_safetensors(path)[0]
            part = _split(tensors, path)
            kinds.append(_kind(part["image_proj"], path))
            _check_fits(self.unet, part, path)
            parts.append(part)
        encoder, extractor = None, None
        if image_encoder_folder is not None:
            if isinstance(sources[0], Mapping):
                raise ValueError("The image encoder cannot be loaded from a state dict: pass image_encoder_folder=None "
                                 "and ip_adapter_image_embeds=, or load from a folder.")
            folder = _encoder_folder(os.fspath(sources[0]), subfolders[0], image_encoder_folder, hub_kwargs)
            encoder = load_component(self.ops.name, "image_encoder", "transformers", _ENCODER_CLASS, folder,
                                     dtype=self.unet.dtype, device=self._device_name())
            extractor = _feature_extractor(folder, encoder)
        # everything is read and checked: only now does the UNet change
        saved = self.unet.install_ip_adapters(parts)
        self._ip = _IPState(kinds=kinds, saved=saved, image_encoder=encoder, feature_extractor=extractor, names=names)
        self.image_encoder, self.feature_extractor = encoder, extractor

    def _device_name(self) -> Optional[str]:
        module = getattr(self.unet, "module", None)
        device = getattr(next(iter(module.parameters()), None), "device", None) if hasattr(module, "parameters") else None
        return str(device) if device is not None and str(device) != "cpu" else None

    @busy.exclusive
    def set_ip_adapter_scale(self, scale):
        """A float, a list (one per adapter), or diffusers' per-block dicts
        (`{"down": {"block_2": [0.0, 1.0]}, "up": {"block_0": [0.0, 1.0, 0.0]}}`)."""
        state = self._ip_state()
        if state is None:
            raise ValueError("No IP-Adapter is loaded: call load_ip_adapter(...) first.")
        scales = list(scale) if isinstance(scale, (list, tuple)) else [scale]
        if len(scales) not in (1, len(state.kinds)):
            raise ValueError(f"set_ip_adapter_scale got {len(scales)} scales for {len(state.kinds)} IP-Adapter(s); pass "
                             f"one, or one per adapter.")
        for i, s in enumerate(scales):
            if not isinstance(s, (int, float, dict)) or isinstance(s, bool):
                raise ValueError(f"An IP-Adapter scale is a number or a per-block dict; got {s!r}.")
            _check_block_scales(self.unet.config, s)
            # every number, per-block ones included, before the UNet changes (a NaN scale gives a black image)
            checks.numbers_in(s, "set_ip_adapter_scale's scale" + (f"[{i}]" if len(scales) > 1 else ""))
        self.unet.set_ip_adapter_scale(scales)

    @busy.exclusive
    def unload_ip_adapter(self):
        """Put the UNet's attention back exactly as it was and drop the image encoder."""
        state = self._ip_state()
        if state is None:
            return
        self.unet.restore_attention(state.saved)
        del self._ip
        self.image_encoder = self.feature_extractor = None

    def prepare_ip_adapter_image_embeds(self, ip_adapter_image, ip_adapter_image_embeds, device=None,
                                        num_images_per_prompt: int = 1, do_classifier_free_guidance: bool = False):
        """diffusers' method: the list (one per adapter) of image embeddings the UNet takes, for
        `num_images_per_prompt` outputs, with the negative half first under CFG. Pass its result back as
        `ip_adapter_image_embeds=` (with the same CFG setting) to encode once and reuse. `device` is
        accepted for diffusers' signature; tensors go where the UNet is."""
        state = self._ip_state()
        if state is None:
            raise ValueError("No IP-Adapter is loaded: call load_ip_adapter(...) first.")
        ops = self.ops
        positives, negatives = [], []
        if ip_adapter_image_embeds is None:
            if state.image_encoder is None:
                raise ValueError("The IP-Adapter was loaded without an image encoder (image_encoder_folder=None): pass "
                                 "ip_adapter_image_embeds= instead of ip_adapter_image=.")
            images = ip_adapter_image if isinstance(ip_adapter_image, list) else [ip_adapter_image]
            if len(images) != len(state.kinds):
                raise ValueError(f"ip_adapter_image has {len(images)} entries for {len(state.kinds)} IP-Adapter(s); pass "
                                 f"one image (or list of images) per adapter.")
            for image, kind in zip(images, state.kinds):
                pixels = state.feature_extractor(image, return_tensors="np").pixel_values.astype(np.float32)
                plus = kind == "plus"
                embeds = state.image_encoder(pixels, hidden_states=plus)
                negative = state.image_encoder(np.zeros_like(pixels), hidden_states=True) if plus \
                    else ops.from_numpy(np.zeros(ops.shape(embeds), np.float32), like=embeds)
                positives.append(ops.reshape(embeds, (1,) + tuple(ops.shape(embeds))))
                negatives.append(ops.reshape(negative, (1,) + tuple(ops.shape(negative))))
        else:
            if not isinstance(ip_adapter_image_embeds, (list, tuple)) or len(ip_adapter_image_embeds) != len(state.kinds):
                raise ValueError(f"ip_adapter_image_embeds must be a list with one tensor per IP-Adapter "
                                 f"({len(state.kinds)}), as prepare_ip_adapter_image_embeds returns.")
            for embeds in ip_adapter_image_embeds:
                embeds = self._as_tensor(embeds, "ip_adapter_image_embeds")
                if do_classifier_free_guidance:
                    negative, embeds = ops.split(embeds, 2, axis=0)
                    negatives.append(negative)
                positives.append(embeds)
        out = []
        for i, embeds in enumerate(positives):
            embeds = ops.concat([embeds] * num_images_per_prompt, axis=0)
            if do_classifier_free_guidance:
                embeds = ops.concat([ops.concat([negatives[i]] * num_images_per_prompt, axis=0), embeds], axis=0)
            out.append(embeds)
        return out


def _feature_extractor(folder: str, encoder):
    """The encoder folder's CLIPImageProcessor, or the one diffusers makes when it has none."""
    from transformers import CLIPImageProcessor

    if os.path.isfile(os.path.join(folder, "preprocessor_config.json")):
        return CLIPImageProcessor.from_pretrained(folder)
    size = encoder.config.get("image_size", 224)
    return CLIPImageProcessor(size=size, crop_size=size)


class IPAdapter(Part):
    """Image embeddings for every UNet call when an IP-Adapter is loaded (a no-op otherwise); brings
    `load_ip_adapter` and the rest of IPAdapterMixin to the pipeline class."""

    name = "ip_adapter"
    mixins = (IPAdapterMixin,)
    arguments = {"ip_adapter_image": None, "ip_adapter_image_embeds": None}
    argument_docs = {
        "ip_adapter_image": Arg(
            "`PIL.Image.Image`, `np.ndarray` or a list of them",
            "The image prompt for the IP-Adapter loaded with `load_ip_adapter`: a PIL image or an HWC array; with "
            "several adapters loaded, a list with one per adapter. Pass this or `ip_adapter_image_embeds` while an "
            "IP-Adapter is loaded, neither otherwise."),
        "ip_adapter_image_embeds": Arg(
            "`List` of backend tensors or `np.ndarray`",
            "Pre-computed image embeddings, one per loaded IP-Adapter, as `prepare_ip_adapter_image_embeds` "
            "returns them (with the negative half first when computed with classifier-free guidance), instead of "
            "`ip_adapter_image`."),
    }

    def check_arguments(self, pipe, args, call) -> None:
        image, embeds = args["ip_adapter_image"], args["ip_adapter_image_embeds"]
        loaded = pipe._ip_state() is not None
        if not loaded:
            if image is not None or embeds is not None:
                raise ValueError("ip_adapter_image / ip_adapter_image_embeds were passed but no IP-Adapter is loaded: "
                                 "call pipe.load_ip_adapter(...) first.")
            return
        if image is not None and embeds is not None:
            raise ValueError("Pass either ip_adapter_image or ip_adapter_image_embeds, not both.")
        if image is None and embeds is None:
            raise ValueError("An IP-Adapter is loaded: pass ip_adapter_image= (or ip_adapter_image_embeds=), or call "
                             "pipe.unload_ip_adapter().")
        if image is not None:
            for item in image if isinstance(image, list) else [image]:
                if not image_processing.is_image_input(item):
                    raise ValueError(f"ip_adapter_image entries are PIL images, HWC arrays or lists of them; got a "
                                     f"{type(item).__name__}.")

    def prepare(self, pipe, run, args):
        if pipe._ip_state() is None:
            return None
        return pipe.prepare_ip_adapter_image_embeds(args["ip_adapter_image"], args["ip_adapter_image_embeds"], None,
                                                    run.batch, run.do_cfg)

    def unet_inputs(self, pipe, run, state, step) -> Optional[Mapping[str, Any]]:
        return None if state is None else {"added_cond": {"image_embeds": state}}

