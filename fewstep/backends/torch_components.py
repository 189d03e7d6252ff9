"""Loading diffusers-format components on torch through diffusers and transformers, behind the
adapters of `fewstep.pipelines.components`."""

from __future__ import annotations

import importlib
from typing import Optional

import numpy as np
import torch

from fewstep.core.ops import check_dtype

# model_index.json names the library of each component; these are the ones the torch side loads.
_LIBRARIES = {"diffusers": "diffusers", "transformers": "transformers"}


def _dtype_name(module) -> str:
    return check_dtype(str(module.dtype))


class _LoraWeights:
    """Named-weight access for LoRA fusion (fewstep.pipelines.lora), shared by the UNet and text encoders."""

    def lora_targets(self) -> dict:
        """Weight shape of every module a LoRA may change, by module path: Linear (out, in),
        Conv2d (out, in, kh, kw)."""
        return {name: tuple(m.weight.shape) for name, m in _lora_modules(self).items()}

    def named_weight(self, path: str):
        """The current weight tensor of the module at `path` (the tensor itself, not a copy)."""
        return _lora_modules(self)[path].weight.data

    def set_weight(self, path: str, tensor) -> None:
        """Make `tensor` (same shape, dtype, device) the weight of the module at `path`, without
        copying it and without writing into the tensor that held the weight before."""
        _set_weight(_lora_modules(self)[path].weight, path, tensor)


class _DiffusersModel:
    """module (the library's model), its config as a dict, and its weights' dtype name."""

    def __init__(self, module):
        self.module = module
        self.config = dict(module.config)
        self.dtype = _dtype_name(module)


class _IPAttention:
    """IP-Adapter attention on the UNet through diffusers' own loader (fewstep.pipelines.ip_adapter
    reads and checks the file; diffusers converts it and installs its IP attention processors)."""

    def install_ip_adapters(self, state_dicts):
        """Install IP-Adapters from {"image_proj": {...}, "ip_adapter": {...}} dicts of NumPy arrays;
        returns what `restore_attention` needs to put the UNet back exactly as it was."""
        module = self.module
        saved = (dict(module.attn_processors), module.encoder_hid_proj, module.config.encoder_hid_dim_type)
        param = next(module.parameters())
        tensors = [{part: {k: torch.from_numpy(np.ascontiguousarray(v)).to(device=param.device, dtype=param.dtype)
                           for k, v in d[part].items()} for part in ("image_proj", "ip_adapter")} for d in state_dicts]
        module._load_ip_adapter_weights(tensors, low_cpu_mem_usage=False)
        return saved

    def restore_attention(self, saved) -> None:
        processors, projection, hid_type = saved
        # the projection first: a Plus projection's own attention layers count among attn_processors
        self.module.encoder_hid_proj = projection
        self.module.set_attn_processor(processors)  # the very processor objects it had
        self.module.config.encoder_hid_dim_type = hid_type  # diffusers reads the attribute

    def set_ip_adapter_scale(self, scales) -> None:
        """diffusers' own scale logic (floats, lists, per-block dicts) on this UNet."""
        from types import SimpleNamespace

        from diffusers.loaders.ip_adapter import IPAdapterMixin

        IPAdapterMixin.set_ip_adapter_scale(SimpleNamespace(unet=self.module), scales)


class TorchUNet(_DiffusersModel, _LoraWeights, _IPAttention):

    def __call__(self, sample, timestep, encoder_hidden_states, timestep_cond=None, added_cond=None,
                 cross_attention_kwargs=None, **extra):
        # extra: what the loop's extensions add (ControlNet / T2I-Adapter residuals), passed through as is
        return self.module(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                           timestep_cond=timestep_cond, added_cond_kwargs=added_cond,
                           cross_attention_kwargs=cross_attention_kwargs, return_dict=False, **extra)[0]


class TorchMotionAdapter(_DiffusersModel):
    """AnimateDiff's motion modules; pipelines insert them into the UNet with `motion_unet`."""


def motion_unet(unet, motion_adapter):
    """The UNetMotionModel that diffusers builds from an SD UNet and a motion adapter, wrapped as a UNet."""
    import importlib

    cls = importlib.import_module("diffusers").UNetMotionModel
    return wrap_component("unet", cls.from_unet2d(unet.module, motion_adapter.module))


class TorchControlNet(_DiffusersModel):

    def __call__(self, sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale: float,
                 guess_mode: bool = False, added_cond=None):
        down, mid = self.module(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                                controlnet_cond=controlnet_cond, conditioning_scale=conditioning_scale,
                                guess_mode=guess_mode, added_cond_kwargs=added_cond, return_dict=False)
        return list(down), mid


class TorchT2IAdapter(_DiffusersModel):
    def __init__(self, module):
        super().__init__(module)
        self.downscale_factor = int(module.downscale_factor)

    def __call__(self, image):
        return list(self.module(image.to(self.module.dtype)))


class TorchImageEncoder:
    """CLIPVisionModelWithProjection: projected image embeddings, or the penultimate hidden states
    (what IP-Adapter Plus reads), for pixel values given as a NumPy array."""

    def __init__(self, module):
        self.module = module
        self.config = dict(module.config.to_dict())
        self.dtype = _dtype_name(module)
        self._device = next(module.parameters()).device

    def __call__(self, pixel_values: np.ndarray, hidden_states: bool = False):
        x = torch.from_numpy(np.ascontiguousarray(pixel_values)).to(device=self._device, dtype=self.module.dtype)
        if hidden_states:
            return self.module(x, output_hidden_states=True).hidden_states[-2]
        return self.module(x).image_embeds


class TorchVAE(_DiffusersModel):
    def __init__(self, module):
        super().__init__(module)
        self.scale_factor = 2 ** (len(self.config["block_out_channels"]) - 1)

    def encode(self, image):
        dist = self.module.encode(image.to(self.module.dtype)).latent_dist
        return dist.mean, dist.std

    def decode(self, latents, upcast: bool = False):
        vae = self.module
        if not (upcast and vae.dtype == torch.float16 and self.config.get("force_upcast", False)):
            return vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        # diffusers' SDXL fp16 upcast: float32 for the decoder's upper blocks, while the blocks that
        # torch 2 attention keeps stable stay in fp16; then back to fp16. Changing dtype fp16 ->
        # fp32 -> fp16 is exact, so the weights are unchanged afterwards.
        vae.to(dtype=torch.float32)
        vae.post_quant_conv.to(torch.float16)
        vae.decoder.conv_in.to(torch.float16)
        vae.decoder.mid_block.to(torch.float16)
        try:
            return vae.decode(latents.to(torch.float16), return_dict=False)[0]
        finally:
            vae.to(dtype=torch.float16)


class TorchTextEncoder(_LoraWeights):
    def __init__(self, module):
        self.module = module
        self.config = dict(module.config.to_dict())
        self.dtype = _dtype_name(module)
        self._device = next(module.parameters()).device

    def __call__(self, input_ids: np.ndarray):
        ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)).to(self._device)
        out = self.module(ids, output_hidden_states=True)
        pooled = out.text_embeds if hasattr(out, "text_embeds") else None
        return out.last_hidden_state, out.hidden_states[-2], pooled



# --- named-weight access for LoRA fusion (fewstep.pipelines.lora) ----------------------------------
def _lora_modules(adapter) -> dict:
    """path -> Linear / ungrouped Conv2d of the adapter's model: the modules a LoRA may change."""
    cache = adapter.__dict__.get("_lora_module_cache")
    if cache is None:
        cache = adapter._lora_module_cache = {
            name: m for name, m in adapter.module.named_modules()
            if isinstance(m, torch.nn.Linear) or (isinstance(m, torch.nn.Conv2d) and m.groups == 1)
        }
    return cache


def _set_weight(param, path: str, tensor) -> None:
    if tensor.shape != param.shape or tensor.dtype != param.dtype or tensor.device != param.device:
        raise ValueError(f"New weight for {path!r} is {tuple(tensor.shape)} {tensor.dtype} on {tensor.device}; the "
                         f"module's is {tuple(param.shape)} {param.dtype} on {param.device}.")
    # Rebinding .data swaps the storage without a copy; the tensor that held the previous values (a
    # saved base weight) is left as it was.
    param.data = tensor


_ADAPTERS = {"unet": TorchUNet, "vae": TorchVAE, "text_encoder": TorchTextEncoder, "text_encoder_2": TorchTextEncoder,
             "controlnet": TorchControlNet, "motion_adapter": TorchMotionAdapter, "adapter": TorchT2IAdapter,
             "image_encoder": TorchImageEncoder}


def wrap_component(name: str, module):
    """The adapter for a model the user loaded with diffusers/transformers and passed in."""
    if name not in _ADAPTERS:
        raise ValueError(f"fewstep has no {name!r} component; components are {sorted(_ADAPTERS)}.")
    module.eval().requires_grad_(False)
    return _ADAPTERS[name](module)


def load_component(name: str, library: str, class_name: str, folder: str, dtype: str = "float32",
                   device: Optional[str] = None, variant: Optional[str] = None):
    """Load one component folder with the class model_index.json names and wrap it in its adapter."""
    if library not in _LIBRARIES:
        raise ValueError(f"Component {name!r} comes from {library!r}; fewstep loads diffusers and transformers components.")
    cls = getattr(importlib.import_module(_LIBRARIES[library]), class_name)
    kwargs = {"torch_dtype": getattr(torch, check_dtype(dtype))}
    if variant:
        kwargs["variant"] = variant
    module = cls.from_pretrained(folder, **kwargs)
    if device:
        module.to(device)
    return wrap_component(name, module)
