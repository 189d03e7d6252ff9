"""Loading diffusers-format components on MindSpore through mindone, behind the adapters of
`fewstep.backends.components_common`. mindone loads the same folders diffusers writes, converting
parameter names itself; its models return tuples by default, and its VAE's `encode` returns the raw
posterior moments rather than a distribution object, which `MindSporeVAE.encode` splits as diffusers'
DiagonalGaussianDistribution does (its AutoencoderTiny returns the latents themselves)."""

from __future__ import annotations

from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import mint

from fewstep.backends import components_common
from fewstep.backends.components_common import (IPAdapterScale, LoraWeights, Model, T2IAdapterModel, TextEncoderModel,
                                                 TransformersModel, VAEModel, back_to_eager, load_pretrained,
                                                 record_weight_files, wrapper_class)
from fewstep.backends.mindspore_backend import MS_DTYPES
from fewstep.backends.mindspore_cpu import install_cpu_kernels
from fewstep.core.schedulers.timesteps import python_timestep

_LIBRARIES = {"diffusers": "mindone.diffusers", "transformers": "mindone.transformers"}
# As on torch: mindone.diffusers' models take mindspore_dtype; mindone.transformers follows transformers 4.57,
# takes dtype and warns "`mindspore_dtype` is deprecated!" for the old name.
_DTYPE_KEYWORDS = {"diffusers": "mindspore_dtype", "transformers": "dtype"}


class _MindSpore:
    """The hooks of fewstep.backends.components_common, on MindSpore."""

    @staticmethod
    def _dtype_of(module) -> str:
        return MS_DTYPES.name(next(iter(module.get_parameters())).dtype)

    def _lora_layers(self):
        # Linear / Dense / ungrouped Conv2d cells: mindone uses mint.nn.Linear and mint.nn.Conv2d in its
        # diffusers port, nn.Dense in its transformers port
        linear = (ms.nn.Dense, mint.nn.Linear)
        conv = (ms.nn.Conv2d, mint.nn.Conv2d)
        for path, cell in self.module.cells_and_names():
            if isinstance(cell, linear):
                yield path, cell
            elif isinstance(cell, conv) and getattr(cell, "groups", getattr(cell, "group", 1)) == 1:
                yield path, cell  # mint.nn.Conv2d names it groups, nn.Conv2d group

    @staticmethod
    def _tensor_of(param):
        return ms.Tensor(param)  # shares the Parameter's data

    @staticmethod
    def _device_of(tensor):
        return None  # PyNative places tensors itself: shape and dtype are what must match

    @staticmethod
    def _rebind(param, tensor) -> None:
        # Parameter.set_data rebinds the parameter to the new tensor's data; a tensor that held the previous
        # values (a saved base weight) is left as it was.
        param.set_data(tensor)

    @staticmethod
    def _module_device(module):
        return None  # PyNative places tensors by the context's device_target

    @staticmethod
    def _canonical_device(device):
        # mindone's DiffusionPipeline.to takes a dtype only: there is no per-model device to move to
        raise ValueError(f"MindSpore models are not moved to a device ({device!r}): MindSpore places them by its "
                         f"context, mindspore.set_context(device_target='Ascend' | 'GPU' | 'CPU'), as mindone's "
                         f"pipelines do. Pass only a dtype to .to() on backend='mindspore'.")

    @staticmethod
    def _move(module, device, dtype) -> None:
        # what mindone's ModelMixin.to(dtype) does, for every model (a transformers port's too)
        if dtype is not None:
            native = MS_DTYPES.native(dtype)
            for param in module.get_parameters():
                param.set_dtype(native)

    @staticmethod
    def _place_tensor(tensor, like, dtype: str):
        # no device to follow (the context places tensors); the cast Parameter.set_dtype makes (an astype)
        native = MS_DTYPES.native(dtype)
        return tensor if tensor.dtype == native else tensor.astype(native)


class _DiffusersModel(_MindSpore, Model):
    """A mindone.diffusers model."""


class _IPAttention(IPAdapterScale):
    """IP-Adapter attention on the UNet through mindone's own loader (fewstep.pipelines.ip_adapter
    reads and checks the file; mindone converts it and installs its IP attention processors)."""

    _diffusers = _LIBRARIES["diffusers"]

    def install_ip_adapters(self, state_dicts):
        """As the torch backend's; returns what `restore_attention` needs."""
        module = self.module
        saved = (dict(module.attn_processors), module.encoder_hid_proj, module.config.encoder_hid_dim_type,
                 module.config.get("encoder_hid_dim_type"))
        dtype = next(iter(module.get_parameters())).dtype
        # mindone loads these with load_param_into_net, which takes Parameters (as its load_file makes them)
        tensors = [{part: {k: ms.Parameter(ms.tensor(np.ascontiguousarray(v)).astype(dtype), name=k)
                           for k, v in d[part].items()} for part in ("image_proj", "ip_adapter")} for d in state_dicts]
        module._load_ip_adapter_weights(tensors)
        return saved

    def restore_attention(self, saved) -> None:
        processors, projection, hid_type, hid_type_item = saved
        # the projection first: a Plus projection's own attention layers count among attn_processors
        self.module.encoder_hid_proj = projection
        self.module.set_attn_processor(processors)
        # mindone sets both, and they differ (see its _load_ip_adapter_weights)
        self.module.config.encoder_hid_dim_type = hid_type
        self.module.config["encoder_hid_dim_type"] = hid_type_item


def _as_ms_timestep(timestep):
    value = python_timestep(timestep)
    return ms.tensor(value, ms.int64 if isinstance(value, int) else ms.float32)


# What the compiled UNet call takes besides sample, timestep, encoder_hidden_states and timestep_cond (LCM's guidance
# embedding): the inputs of fewstep's pipelines that tests/test_jit_mindspore.py checks under mindspore.jit. Any other
# is refused by name rather than run untested.
_GRAPH_EXTRA = ("down_block_additional_residuals", "mid_block_additional_residual")  # ControlNet's residuals
_GRAPH_ADDED = ("text_embeds", "time_ids")  # SDXL's added conditions


def _unet_graph(module, options: dict):
    """The UNet's call as one function under mindspore.jit(**options). MindSpore compiles it once per structure of
    its inputs (which are None, how many residuals, shapes and dtypes) and reuses that graph: an SD, SDXL, LCM or
    ControlNet call each gets its own. The graph reads the weights' memory at every call, but keeps the memory it was
    compiled with: LoRA fusion must write into it (MindSporeUNet._rebind), a Parameter.set_data would not be seen."""

    def unet_step(sample, timestep, encoder_hidden_states, timestep_cond, added_cond_kwargs, down, mid):
        return module(sample, timestep, encoder_hidden_states=encoder_hidden_states, timestep_cond=timestep_cond,
                      added_cond_kwargs=added_cond_kwargs, down_block_additional_residuals=down,
                      mid_block_additional_residual=mid, return_dict=False)[0]

    return ms.jit(unet_step, **options)


class MindSporeUNet(_DiffusersModel, LoraWeights, _IPAttention):
    """mindone's UNet2DConditionModel. `compile(**options)` runs every later call in graph mode (mindspore.jit)."""

    _graph = None  # the call compiled by `compile`; None: PyNative

    @property
    def compiled(self) -> bool:
        return self._graph is not None

    def compile(self, *pynative, **options):
        """Run every later call through `mindspore.jit(call, **options)` (default capture_mode="ast"); compiling
        again with other options replaces it, `compile(None)` goes back to PyNative. The graph is built at the
        first call (and once more for each new structure of inputs: with or without SDXL's added conditions,
        ControlNet residuals, LCM's timestep_cond). Returns the wrapper."""
        if back_to_eager(type(self).__name__, pynative, options):
            self._graph = None
            return self
        self._check_graph_model()
        self._own_weights()
        self._graph = _unet_graph(self.module, options)
        return self

    # LoRA fusion under the graph. A compiled graph reads each weight's memory as it was when compiled: a weight
    # rebound with Parameter.set_data (as PyNative fusion does) is not seen. So while compiled, fusion writes into
    # that memory (copy_), and what LoRA keeps of a weight (its saved base) is a copy of it, never the memory itself.
    def _own_weights(self) -> None:
        # a base saved before compiling may share its weight's memory: give each LoRA-able weight its own
        for _, layer in self._lora_layers():
            layer.weight.set_data(ms.Tensor(layer.weight).copy())

    def _tensor_of(self, param):
        return ms.Tensor(param).copy() if self.compiled else _MindSpore._tensor_of(param)

    def _rebind(self, param, tensor) -> None:
        if self.compiled:
            param.copy_(tensor)
        else:
            _MindSpore._rebind(param, tensor)

    def to(self, device=None, dtype: Optional[str] = None):
        # casting rebinds every weight (Parameter.set_dtype), which the graph would not see
        if self.compiled and device is None and dtype is not None:
            if dtype != self.dtype:
                raise ValueError(f"Cast the MindSpore UNet before compiling it: call pipe.unet.compile(None), then "
                                 f"pipe.to({dtype!r}), then compile() again.")
            return self  # already in that dtype
        return super().to(device, dtype)

    def _check_graph_model(self) -> None:
        from fewstep.backends import mindspore_cpu

        name = type(self.module).__name__
        if name != "UNet2DConditionModel":
            raise ValueError(f"fewstep compiles mindone's UNet2DConditionModel only, not {name}: run it in PyNative "
                             f"(do not call compile).")
        if self.module.config.get("encoder_hid_dim_type") == "ip_image_proj":
            raise ValueError("A UNet with IP-Adapter attention (image_embeds) is not compiled with mindspore.jit: "
                             "unload the IP-Adapter first, or run it in PyNative.")
        if mindspore_cpu.is_cpu() and not mindspore_cpu.install_mindone_layers():
            raise ValueError("mindspore.jit on CPU needs fewstep's CPU stand-ins: call "
                             "fewstep.backends.mindspore_cpu.install_cpu_kernels() first.")

    def __call__(self, sample, timestep, encoder_hidden_states, timestep_cond=None, added_cond=None,
                 cross_attention_kwargs=None, **extra):
        # extra: what the loop's extensions add (ControlNet / T2I-Adapter residuals), passed through as is
        t = _as_ms_timestep(timestep)
        if self._graph is not None:
            return self._graph_call(sample, t, encoder_hidden_states, timestep_cond, added_cond,
                                    cross_attention_kwargs, extra)
        return self.module(sample, t, encoder_hidden_states=encoder_hidden_states, timestep_cond=timestep_cond,
                           added_cond_kwargs=added_cond, cross_attention_kwargs=cross_attention_kwargs,
                           return_dict=False, **extra)[0]

    def _graph_call(self, sample, t, encoder_hidden_states, timestep_cond, added_cond, cross_attention_kwargs,
                    extra):
        unknown = sorted(set(extra) - set(_GRAPH_EXTRA)) + sorted(set(added_cond or {}) - set(_GRAPH_ADDED))
        if cross_attention_kwargs:
            unknown.append("cross_attention_kwargs")
        if unknown:
            raise ValueError(f"The compiled MindSpore UNet does not take {', '.join(unknown)}: call "
                             f"pipe.unet.compile(None) to run it in PyNative.")
        down = extra.get("down_block_additional_residuals")
        return self._graph(sample, t, encoder_hidden_states, timestep_cond, added_cond,
                           None if down is None else tuple(down), extra.get("mid_block_additional_residual"))


class MindSporeMotionAdapter(_DiffusersModel):
    """AnimateDiff's motion modules; pipelines insert them into the UNet with `motion_unet`."""


class MindSporeControlNet(_DiffusersModel):

    def __call__(self, sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale: float,
                 guess_mode: bool = False, added_cond=None):
        t = _as_ms_timestep(timestep)
        down, mid = self.module(sample, t, encoder_hidden_states=encoder_hidden_states, controlnet_cond=controlnet_cond,
                                conditioning_scale=conditioning_scale, guess_mode=guess_mode,
                                added_cond_kwargs=added_cond, return_dict=False)
        return list(down), mid


class MindSporeT2IAdapter(_MindSpore, T2IAdapterModel):
    def __call__(self, image):
        return list(self.module(image.astype(getattr(ms, self.dtype))))


class MindSporeImageEncoder(_MindSpore, TransformersModel):
    """mindone's CLIPVisionModelWithProjection: projected image embeddings, or the penultimate hidden
    states, for pixel values given as a NumPy array (mindone returns tuples)."""

    def __call__(self, pixel_values: np.ndarray, hidden_states: bool = False):
        x = ms.tensor(np.ascontiguousarray(pixel_values)).astype(getattr(ms, self.dtype))
        if hidden_states:  # (image_embeds, last_hidden_state, hidden_states)
            return self.module(x, output_hidden_states=True, return_dict=False)[2][-2]
        return self.module(x, return_dict=False)[0]


class MindSporeVAE(_MindSpore, VAEModel):
    """mindone's AutoencoderKL, or its AutoencoderTiny (TAESD), told apart as mindone's `retrieve_latents` needs
    them: the KL one carries its `diag_gauss_dist`, the tiny one encodes straight to latents."""

    def __init__(self, module):
        super().__init__(module)
        self._gaussian = hasattr(module, "diag_gauss_dist")

    def encode(self, image):
        out = self.module.encode(image.astype(getattr(ms, self.dtype)))[0]
        if not self._gaussian:  # AutoencoderTiny: its latents as they are, no posterior to draw from
            return out, None
        mean, logvar = mint.chunk(out, 2, dim=1)
        # the clamp and exp(0.5 * logvar) of diffusers' DiagonalGaussianDistribution
        std = mint.exp(0.5 * mint.clamp(logvar, -30.0, 20.0))
        return mean, std

    def decode(self, latents, upcast: bool = False):
        vae = self.module
        if not (upcast and self.dtype == "float16" and self.config.get("force_upcast", False)):
            latents = latents.astype(getattr(ms, self.dtype))
            if not self._gaussian and vae.use_slicing and latents.shape[0] > 1:
                # mindone 0.5's AutoencoderTiny.decode decodes the whole batch once per slice (batch^2 images);
                # one image at a time, as diffusers' does
                return mint.cat([vae.decode(one)[0] for one in mint.split(latents, 1)], dim=0)
            return vae.decode(latents)[0]
        # the fp16 upcast diffusers applies to the SDXL VAE: decode in float32, then back to fp16
        # (fp16 -> fp32 -> fp16 is exact, so the weights are unchanged afterwards)
        for p in vae.get_parameters():
            p.set_dtype(ms.float32)
        try:
            return vae.decode(latents.astype(ms.float32))[0]
        finally:
            for p in vae.get_parameters():
                p.set_dtype(ms.float16)

    def enable_tiling(self) -> None:
        if not self._gaussian:
            # mindone 0.5's _tiled_decode rebinds each tile's name instead of writing into the output, so it
            # returns zeros (and on CPU stops at a ones_like kernel MindSpore lacks)
            raise ValueError("mindone's AutoencoderTiny does not tile (its tiled decode returns zeros); decode it "
                             "whole (enable_vae_slicing() bounds the memory per image), or tile on backend='torch'.")
        super().enable_tiling()


class MindSporeTextEncoder(_MindSpore, TextEncoderModel, LoraWeights):
    def __init__(self, module):
        super().__init__(module)
        self._projected = type(module).__name__.endswith("WithProjection")

    def __call__(self, input_ids: np.ndarray, skip: int = 1):
        """As TorchTextEncoder: (last, the hidden state `skip` layers before the last, pooled projection or None)."""
        index = self._skip_index(skip)
        ids = ms.tensor(np.ascontiguousarray(input_ids, dtype=np.int64))
        out = self.module(ids, output_hidden_states=True, return_dict=False)
        if self._projected:  # (text_embeds, last_hidden_state, hidden_states)
            return out[1], out[2][index], out[0]
        return out[0], out[2][index], None  # (last_hidden_state, pooler_output, hidden_states)


_ADAPTERS = {"unet": MindSporeUNet, "vae": MindSporeVAE, "text_encoder": MindSporeTextEncoder,
             "text_encoder_2": MindSporeTextEncoder, "controlnet": MindSporeControlNet,
             "motion_adapter": MindSporeMotionAdapter, "adapter": MindSporeT2IAdapter,
             "image_encoder": MindSporeImageEncoder}


def wrap_component(name: str, module):
    """The adapter for a model the user loaded with mindone and passed in."""
    cls = wrapper_class(_ADAPTERS, name)
    module.set_train(False)
    return cls(module)


def load_component(name: str, library: str, class_name: str, folder: str, dtype: str = "float32",
                   device: Optional[str] = None, variant: Optional[str] = None):
    """Load one component folder with mindone's class of the name model_index.json gives."""
    # install_cpu_kernels before mindone's modules are imported: they bind mint ops at import time
    module = load_pretrained(_LIBRARIES, name, library, class_name, folder, variant, MS_DTYPES.native(dtype),
                             _DTYPE_KEYWORDS, before_import=install_cpu_kernels)
    return record_weight_files(wrap_component(name, module), folder, variant)


def _copy_weights(target, source) -> None:
    """Every parameter of `source` into the same-named one of `target` (cells of one architecture)."""
    for (name, mine), (other, theirs) in zip(target.parameters_and_names(), source.parameters_and_names()):
        assert name.split(".")[-1] == other.split(".")[-1], (name, other)
        # a new tensor of the values: MindSpore 2.7's set_data ignores a copy of another cell's Parameter here
        mine.set_data(ms.Tensor(theirs.asnumpy()))


def motion_unet(unet, motion_adapter):
    """The UNetMotionModel that mindone.diffusers builds from an SD UNet and a motion adapter, wrapped as a UNet."""
    return components_common.motion_unet(_LIBRARIES["diffusers"], wrap_component, _copy_weights, unet, motion_adapter)
