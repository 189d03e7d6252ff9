"""What the torch and MindSpore component wrappers (`torch_components`, `mindspore_components`) share,
written once. Framework-free: each backend supplies the few hooks named below.

A backend's wrappers mix in one class of hooks:
- `_dtype_of(module)`: the fewstep dtype name of a model's weights;
- `_lora_layers()`: (path, layer) pairs of the modules a LoRA may change, each with a `.weight`;
- `_tensor_of(param)`: a parameter's data as a tensor, without a copy;
- `_device_of(tensor)`: where a tensor lives, or None where the framework places tensors itself;
- `_rebind(param, tensor)`: make `tensor` the parameter's data, without writing into the old data;
- `_module_device(module)`: where a model's weights are, or None where the framework places them itself;
- `_canonical_device(device)`: the device as `_module_device` reports it, or a ValueError where this
  framework cannot use it;
- `_move(module, device, dtype)`: move / cast a model's weights in place (either may be None);
- `_place_tensor(tensor, like, dtype)`: a tensor on `like`'s device in `dtype`, cast as `_move` casts.
"""

from __future__ import annotations

import importlib
from types import SimpleNamespace
from typing import Callable, Mapping, Optional

from fewstep.backends.common import as_ints
from fewstep.core.lora.weight_files import WeightFiles


class Model:
    """module (the library's model), its config as a dict, and its weights' dtype name."""

    def __init__(self, module):
        self.module = module
        self.config = self._config_dict(module.config)
        self.dtype = self._dtype_of(module)

    @staticmethod
    def _config_dict(config) -> dict:
        return dict(config)  # diffusers' FrozenDict

    @property
    def device(self):
        """Where the weights are (a torch.device), or None on a framework that places them itself."""
        return self._module_device(self.module)

    @classmethod
    def check_device(cls, device):
        """`device` as `.device` reports it (None stays None); a ValueError where it cannot be used. Checked
        before anything moves, so a bad device leaves every model where it was."""
        return None if device is None else cls._canonical_device(device)

    def to(self, device=None, dtype: Optional[str] = None):
        """Move the weights to `device` and / or cast them to `dtype` (a fewstep dtype name) in place."""
        self._move(self.module, self.check_device(device), dtype)
        self.dtype = self._dtype_of(self.module)  # what the wrappers cast inputs to
        return self


class TransformersModel(Model):
    """A transformers model (text or image encoder): its config is a PretrainedConfig."""

    @staticmethod
    def _config_dict(config) -> dict:
        return dict(config.to_dict())

    def _released_prefix(self) -> str:
        # transformers 5 dropped CLIPTextModel's `text_model` level (its modules are `encoder.layers.0...`, and it
        # saves them so) where 4.x and every released checkpoint and LoRA say `text_model.encoder.layers.0...`.
        # LoRA paths keep the released names on every version; diffusers tells the two apart the same way
        # (`hasattr(text_encoder, "text_model")`, loaders/lora_base.py).
        flat = not hasattr(self.module, "text_model") and hasattr(self.module, "encoder")
        return "text_model." if flat else ""


class TextEncoderModel(TransformersModel):
    """A CLIP text encoder: how many layers it has, and its final layer norm (diffusers' SD `clip_skip`)."""

    @property
    def num_layers(self) -> int:
        """The encoder's transformer layers; its hidden states are these plus the embeddings."""
        return int(self.config["num_hidden_layers"])

    def final_layer_norm(self, hidden):
        """The encoder's last layer norm applied to a hidden state, as diffusers' SD `encode_prompt` applies
        `text_encoder.text_model.final_layer_norm` to the clip-skipped one. transformers 5's CLIPTextModel has
        no `text_model` level: the norm is at its top."""
        return getattr(self.module, "text_model", self.module).final_layer_norm(hidden)

    def _skip_index(self, skip: int) -> int:
        """The index into the hidden states of the one `skip` layers before the last (1: the penultimate)."""
        if not 0 <= skip <= self.num_layers:
            raise ValueError(f"This text encoder has {self.num_layers} layers, so it has no hidden state {skip} "
                             f"layers before its last; pass a smaller clip_skip.")
        return -(skip + 1)


class VAEModel(Model):
    """A VAE: `scale_factor` is how many times smaller than the image its latents are, per side.

    The backends' `encode(pixels)` gives (mean, std) of the posterior, which the pipeline samples with the
    user's generator; for a VAE without one (AutoencoderTiny, TAESD) it gives (latents, None), used as they
    are with no noise drawn, as diffusers' `retrieve_latents` does. `decode(latents)` gives pixels in about
    [-1, 1] either way. AutoencoderTiny's config names its decoder widths `block_out_channels` too, so the
    scale factor and the decode-memory estimate read it the same way."""

    def __init__(self, module):
        super().__init__(module)
        self.scale_factor = 2 ** (len(self.config["block_out_channels"]) - 1)

    # Slicing and tiling are the library's own (diffusers' / mindone's AutoencoderKL and AutoencoderTiny): its
    # encode and decode read use_slicing / use_tiling, and the wrappers call exactly those.
    def enable_slicing(self) -> None:
        self.module.enable_slicing()

    def disable_slicing(self) -> None:
        self.module.disable_slicing()

    def enable_tiling(self) -> None:
        self.module.enable_tiling()

    def disable_tiling(self) -> None:
        self.module.disable_tiling()


class T2IAdapterModel(Model):
    """A T2I-Adapter: `downscale_factor` is how many times smaller than the image its first features are."""

    def __init__(self, module):
        super().__init__(module)
        self.downscale_factor = int(module.downscale_factor)


class IPAdapterScale:
    """`set_ip_adapter_scale` as the backend's diffusers port does it (floats, lists, per-block dicts),
    on this UNet; `_diffusers` names that port's module."""

    _diffusers: str

    def set_ip_adapter_scale(self, scales) -> None:
        mixin = importlib.import_module(f"{self._diffusers}.loaders.ip_adapter").IPAdapterMixin
        mixin.set_ip_adapter_scale(SimpleNamespace(unet=self.module), scales)


class LoraWeights:
    """Named-weight access for LoRA fusion (fewstep.pipelines.lora), shared by the UNet and text encoders.

    `weight_files`: the safetensors files the component was loaded from, indexed at load (see
    `record_weight_files`), or None (built in code, passed in): what `fuse_lora(keep_base="file")`
    reads bases back from."""

    weight_files: Optional[WeightFiles] = None

    def _released_prefix(self) -> str:
        """What the released names of this model's modules have before the installed library's (see
        TransformersModel); LoRA paths are the released names."""
        return ""

    def _lora_layer_map(self) -> dict:
        # built once: every refresh reads and writes the weight of each module a LoRA touches by path
        cache = self.__dict__.get("_lora_layer_cache")
        if cache is None:
            prefix = self._released_prefix()
            cache = self._lora_layer_cache = {prefix + path: layer for path, layer in self._lora_layers()}
        return cache

    def weight_file_key(self, path: str) -> str:
        """The name the weight of module `path` has in the component's files: its released name, or the name the
        installed library saves it under (a folder saved by transformers 5 has no `text_model.` prefix)."""
        key, prefix = f"{path}.weight", self._released_prefix()
        if prefix and key.startswith(prefix) and self.weight_files is not None and self.weight_files.locate(key) is None:
            return key[len(prefix):]
        return key

    def lora_targets(self) -> dict:
        """Weight shape of every module a LoRA may change, by module path: Linear (out, in),
        Conv2d (out, in, kh, kw)."""
        return {path: as_ints(layer.weight.shape) for path, layer in self._lora_layer_map().items()}

    def _layer(self, path: str):
        # the released name, or the installed library's (transformers 5's bare CLIPTextModel path) for the same module
        layers = self._lora_layer_map()
        return layers[path] if path in layers else layers[self._released_prefix() + path]

    def named_weight(self, path: str):
        """The current weight of the module at `path`, sharing the parameter's data (not a copy)."""
        return self._tensor_of(self._layer(path).weight)

    def set_weight(self, path: str, tensor) -> None:
        """Make `tensor` (the weight's shape, dtype and device) the weight of the module at `path`,
        without copying it and without writing into the tensor that held the weight before (a saved
        base weight stays as it was)."""
        param = self._layer(path).weight
        new, old = self._layout(tensor), self._layout(param)
        if new != old:
            raise ValueError(f"New weight for {path!r} is {_describe(new)}; the module's is {_describe(old)}.")
        self._rebind(param, tensor)

    def place(self, tensor, like, dtype: str):
        """`tensor` on `like`'s device, cast to `dtype` (a fewstep dtype name) as moving the model casts its
        weights; `tensor` itself where neither changes. How LoRA factors and kept base weights follow the
        weights when the pipeline moves (fewstep.pipelines.lora)."""
        return self._place_tensor(tensor, like, dtype)

    def _layout(self, tensor) -> tuple:
        return as_ints(tensor.shape), tensor.dtype, self._device_of(tensor)


def _describe(layout: tuple) -> str:
    shape, dtype, device = layout
    return f"{shape} {dtype}" + (f" on {device}" if device is not None else "")


def back_to_eager(owner: str, args: tuple, options: dict) -> bool:
    """Whether a wrapper's `compile(*args, **options)` asks to run eagerly again (`compile(None)`); anything else
    positional is a TypeError naming `owner`. Keyword options go to the framework's compiler."""
    if not args:
        return False
    if args != (None,) or options:
        raise TypeError(f"{owner}.compile takes keyword options for the framework's compiler, or None alone to run "
                        f"eagerly again.")
    return True


def wrapper_class(wrappers: Mapping[str, type], name: str) -> type:
    """The wrapper class for component `name`, or a ValueError naming the components there are."""
    if name not in wrappers:
        raise ValueError(f"fewstep has no {name!r} component; components are {sorted(wrappers)}.")
    return wrappers[name]


def load_pretrained(libraries: Mapping[str, str], name: str, library: str, class_name: str, folder: str,
                    variant: Optional[str], native_dtype, dtype_keywords: Mapping[str, str],
                    before_import: Optional[Callable[[], None]] = None):
    """The model of class `class_name` from the module `libraries[library]` (the backend's port of
    diffusers or transformers), loaded from `folder` in `native_dtype` (the framework's dtype object),
    passed under the keyword that library wants (`dtype_keywords[library]`), and with `variant` when one
    is given. `before_import` runs after the library is checked, before it is imported."""
    if library not in libraries:
        raise ValueError(f"Component {name!r} comes from {library!r}; fewstep loads diffusers and transformers "
                         f"components.")
    if before_import is not None:
        before_import()
    cls = getattr(importlib.import_module(libraries[library]), class_name)
    kwargs = {dtype_keywords[library]: native_dtype}
    if variant:
        kwargs["variant"] = variant
    return cls.from_pretrained(folder, **kwargs)


def record_weight_files(wrapper, folder: str, variant: Optional[str]):
    """Index, at load, the safetensors files a LoRA-able component was just loaded from (their tensors
    and each file's stamp then), so LoRA fusion can restore weights from them."""
    if isinstance(wrapper, LoraWeights):
        wrapper.weight_files = WeightFiles.scan(folder, variant)
    return wrapper


def motion_unet(diffusers: str, wrap_component: Callable, copy_weights: Callable, unet, motion_adapter):
    """The UNetMotionModel that `diffusers` (the module of the backend's diffusers port) builds from an
    SD or SDXL UNet and a motion adapter (fewstep components), wrapped as a UNet by `wrap_component`.

    `from_unet2d` (diffusers 0.35 to 0.42, and mindone's port) copies every UNet weight but SDXL's
    `add_embedding` (the pooled text and size embedding), which it leaves at a random init; it is copied
    here with `copy_weights(target, source)`, so an SDXL motion UNet is the UNet it was built from."""
    cls = importlib.import_module(diffusers).UNetMotionModel
    model = cls.from_unet2d(unet.module, motion_adapter.module)
    if getattr(unet.module, "add_embedding", None) is not None and getattr(model, "add_embedding", None) is not None:
        copy_weights(model.add_embedding, unet.module.add_embedding)
    return wrap_component("unet", model)
