"""Loading diffusers-format components on torch through diffusers and transformers, behind the
adapters of `fewstep.backends.components_common`."""

from __future__ import annotations

import sys
import types
import warnings
from typing import Callable, Optional

import numpy as np
import torch

from fewstep.backends import components_common
from fewstep.backends.components_common import (IPAdapterScale, LoraWeights, Model, T2IAdapterModel, TextEncoderModel,
                                                 TransformersModel, VAEModel, back_to_eager, load_pretrained,
                                                 record_weight_files, wrapper_class)
from fewstep.backends.torch_backend import TORCH_DTYPES
from fewstep.core.schedulers.timesteps import python_timestep

# model_index.json names the library of each component; these are the ones the torch side loads.
_LIBRARIES = {"diffusers": "diffusers", "transformers": "transformers"}
# The dtype keyword each library's from_pretrained wants: diffusers' models take torch_dtype; transformers
# (4.56+) renamed it to dtype and warns "`torch_dtype` is deprecated!" for the old name.
_DTYPE_KEYWORDS = {"diffusers": "torch_dtype", "transformers": "dtype"}


class _Torch:
    """The hooks of fewstep.backends.components_common, on torch."""

    @staticmethod
    def _dtype_of(module) -> str:
        return TORCH_DTYPES.name(module.dtype)

    def _lora_layers(self):
        # Linear and ungrouped Conv2d: the modules a LoRA may change
        for path, m in self.module.named_modules():
            if isinstance(m, torch.nn.Linear) or (isinstance(m, torch.nn.Conv2d) and m.groups == 1):
                yield path, m

    @staticmethod
    def _tensor_of(param):
        return param.data

    @staticmethod
    def _device_of(tensor):
        return tensor.device

    @staticmethod
    def _rebind(param, tensor) -> None:
        # Rebinding .data swaps the storage without a copy; the tensor that held the previous values (a
        # saved base weight) is left as it was.
        param.data = tensor

    @staticmethod
    def _module_device(module):
        param = next(iter(module.parameters()), None)
        return None if param is None else param.device

    @staticmethod
    def _canonical_device(device):
        # an empty tensor there: "cuda" on a machine without one fails here, before any weight moves, and
        # "cuda" comes back as the "cuda:0" that weights report
        try:
            return torch.empty(0, device=device).device
        except (RuntimeError, TypeError, ValueError, AssertionError) as err:  # no CUDA build: an AssertionError
            raise ValueError(f"torch cannot use the device {device!r} ({' '.join(str(err).split())}); pass another "
                             f"device, e.g. cpu.") from None

    @staticmethod
    def _move(module, device, dtype) -> None:
        module.to(device=device, dtype=None if dtype is None else TORCH_DTYPES.native(dtype))

    @staticmethod
    def _place_tensor(tensor, like, dtype: str):
        # the tensor-level `.to` that module.to applies to each parameter: the same copy, the same rounding
        return tensor.to(device=like.device, dtype=TORCH_DTYPES.native(dtype))


class _DiffusersModel(_Torch, Model):
    """A diffusers model on torch."""


class _Runs:
    """A wrapper the pipeline calls (`forward` does the work), eager or through torch.compile.

    `pipe.unet = torch.compile(pipe.unet)`, diffusers' idiom, compiles this wrapper as a function (it is not an
    nn.Module). The pipeline keeps the wrapper with that function as its runner (`use_compiled`, called by
    fewstep.pipelines.loading.adopt_component), so its config, weights and LoRA fusion stay as they were and
    each call goes through the compiled code. The compiled function calls `__call__` again while dynamo traces
    it (and if dynamo falls back to eager); `_inside` sends that inner call to `forward` instead of round again."""

    _compiled: Optional[Callable] = None
    _inside = False

    def use_compiled(self, runner: Optional[Callable]):
        """Run every call through `runner` (what torch.compile made of this wrapper), or eagerly for None."""
        self._compiled = runner
        return self

    def compile(self, *eager, **options):
        """`torch.compile` this wrapper with `options`, as `pipe.unet = torch.compile(pipe.unet, **options)` does;
        `compile(None)` runs it eagerly again."""
        if back_to_eager(type(self).__name__, eager, options):
            return self.use_compiled(None)
        return self.use_compiled(torch.compile(self, **options))

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def _graph_arguments(self, args: tuple, kwargs: dict):
        """The call's arguments as the compiled code should see them (see TorchUNet)."""
        return args, kwargs

    def __call__(self, *args, **kwargs):
        args, kwargs = self._graph_arguments(args, kwargs)
        runner = self._compiled
        if runner is None or self._inside:
            return self.forward(*args, **kwargs)
        self._inside = True
        try:
            return runner(*args, **kwargs)
        finally:
            self._inside = False


class _TakesTimestep(_Runs):
    """A model called as (sample, timestep, ...): the timestep goes in as a 0-d tensor on the sample's device,
    built as diffusers' models build it from a Python number (int64 for a whole number, float64 otherwise;
    int32 / float32 on mps and npu), so the result is the same. A Python number would be a constant to
    torch.compile: a recompilation for each new timestep."""

    def _graph_arguments(self, args: tuple, kwargs: dict):
        sample, timestep, *rest = args
        if not torch.is_tensor(timestep):
            timestep = python_timestep(timestep)
            low = sample.device.type in ("mps", "npu")
            dtype = (torch.float32 if low else torch.float64) if isinstance(timestep, float) else \
                (torch.int32 if low else torch.int64)
            timestep = torch.tensor(timestep, dtype=dtype, device=sample.device)
        return (sample, timestep, *rest), kwargs


class _IPAttention(IPAdapterScale):
    """IP-Adapter attention on the UNet through diffusers' own loader (fewstep.pipelines.ip_adapter
    reads and checks the file; diffusers converts it and installs its IP attention processors)."""

    _diffusers = _LIBRARIES["diffusers"]

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


class TorchUNet(_TakesTimestep, _DiffusersModel, LoraWeights, _IPAttention):

    def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None, added_cond=None,
                cross_attention_kwargs=None, **extra):
        # extra: what the loop's extensions add (ControlNet / T2I-Adapter residuals), passed through as is
        return self.module(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                           timestep_cond=timestep_cond, added_cond_kwargs=added_cond,
                           cross_attention_kwargs=cross_attention_kwargs, return_dict=False, **extra)[0]


class TorchMotionAdapter(_DiffusersModel):
    """AnimateDiff's motion modules; pipelines insert them into the UNet with `motion_unet`."""


class TorchControlNet(_TakesTimestep, _DiffusersModel):

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale: float,
                guess_mode: bool = False, added_cond=None):
        down, mid = self.module(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                                controlnet_cond=controlnet_cond, conditioning_scale=conditioning_scale,
                                guess_mode=guess_mode, added_cond_kwargs=added_cond, return_dict=False)
        return list(down), mid


class TorchT2IAdapter(_Runs, _Torch, T2IAdapterModel):
    def forward(self, image):
        return list(self.module(image.to(self.module.dtype)))


class TorchImageEncoder(_Torch, TransformersModel):
    """CLIPVisionModelWithProjection: projected image embeddings, or the penultimate hidden states
    (what IP-Adapter Plus reads), for pixel values given as a NumPy array."""

    def __call__(self, pixel_values: np.ndarray, hidden_states: bool = False):
        x = torch.from_numpy(np.ascontiguousarray(pixel_values)).to(device=self.device, dtype=self.module.dtype)
        if hidden_states:
            return self.module(x, output_hidden_states=True).hidden_states[-2]
        return self.module(x).image_embeds


class TorchVAE(_Torch, VAEModel):
    """diffusers' AutoencoderKL, or its AutoencoderTiny (TAESD), told apart as diffusers' `retrieve_latents`
    tells them: by whether the encoder's output has a `latent_dist`."""

    def encode(self, image):
        out = self.module.encode(image.to(self.module.dtype))
        dist = getattr(out, "latent_dist", None)
        if dist is None:  # AutoencoderTiny: its latents as they are, no posterior to draw from
            return out.latents, None
        return dist.mean, dist.std

    def compile(self, *eager, **options):
        """`pipe.vae.decode = torch.compile(pipe.vae.decode, **options)`, diffusers' idiom: the decode compiled on
        this wrapper (the library's model, which other pipelines may share, is not changed); `compile(None)`
        decodes eagerly again."""
        self.__dict__.pop("decode", None)
        if not back_to_eager(type(self).__name__, eager, options):
            self.decode = torch.compile(self.decode, **options)
        return self

    def decode(self, latents, upcast: bool = False):
        vae = self.module
        if not (upcast and vae.dtype == torch.float16 and self.config.get("force_upcast", False)):
            return vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        # diffusers' SDXL fp16 upcast, as the installed diffusers does it: its pipelines' own `upcast_vae`
        # (0.3x: float32 but for the blocks torch 2 attention keeps stable; 0.4x: all of it in float32), the
        # latents in the dtype of the VAE's first layer, then back to fp16. Changing dtype fp16 -> fp32 -> fp16
        # is exact, so the weights are unchanged afterwards.
        _library_upcast(vae)
        try:
            first = next(iter(vae.post_quant_conv.parameters())).dtype
            return vae.decode(latents.to(first), return_dict=False)[0]
        finally:
            vae.to(dtype=torch.float16)


def _library_upcast(vae) -> None:
    """The installed diffusers' `StableDiffusionXLPipeline.upcast_vae` on `vae` alone (it reads only `self.vae`);
    a diffusers without the method upcasts the whole VAE, as its deprecation note says to."""
    import diffusers

    upcast = getattr(diffusers.StableDiffusionXLPipeline, "upcast_vae", None)
    if upcast is None:
        vae.to(dtype=torch.float32)
        return
    with warnings.catch_warnings():  # 0.4x deprecates the method in favour of what it does: vae.to(float32)
        warnings.simplefilter("ignore")
        upcast(types.SimpleNamespace(vae=vae))


class TorchTextEncoder(_Torch, TextEncoderModel, LoraWeights):
    def __call__(self, input_ids: np.ndarray, skip: int = 1):
        """(last hidden state, the hidden state `skip` layers before the last -- the penultimate by default --,
        the pooled projection or None). The hidden states are computed either way: no extra work for any skip."""
        index = self._skip_index(skip)
        ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)).to(self.device)
        out = self.module(ids, output_hidden_states=True)
        pooled = out.text_embeds if hasattr(out, "text_embeds") else None
        return out.last_hidden_state, out.hidden_states[index], pooled


_ADAPTERS = {"unet": TorchUNet, "vae": TorchVAE, "text_encoder": TorchTextEncoder, "text_encoder_2": TorchTextEncoder,
             "controlnet": TorchControlNet, "motion_adapter": TorchMotionAdapter, "adapter": TorchT2IAdapter,
             "image_encoder": TorchImageEncoder}


def wrap_component(name: str, module):
    """The adapter for a model the user loaded with diffusers/transformers and passed in.

    A model torch.compile made (`torch.compile(unet)`, an OptimizedModule) is wrapped as the model it
    compiled, and the wrapper runs through the same compilation (its mode, fullgraph and backend: the
    OptimizedModule's `dynamo_ctx` applied to the wrapper), so weights, config and LoRA fusion are the model's
    own. Only what the pipeline calls runs compiled; the VAE's encode / decode compile as diffusers' do, with
    `pipe.vae.decode = torch.compile(pipe.vae.decode)`."""
    cls = wrapper_class(_ADAPTERS, name)
    compiled = module if _is_compiled_module(module) else None
    if compiled is not None:
        module = compiled._orig_mod
    module.eval().requires_grad_(False)
    wrapper = cls(module)
    if compiled is not None and isinstance(wrapper, _Runs):
        wrapper.use_compiled(compiled.dynamo_ctx(wrapper))
    return wrapper


def _is_compiled_module(module) -> bool:
    # torch._dynamo loads on first use (a second's import): where it is not loaded, nothing was compiled
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return eval_frame is not None and isinstance(module, eval_frame.OptimizedModule)


def load_component(name: str, library: str, class_name: str, folder: str, dtype: str = "float32",
                   device: Optional[str] = None, variant: Optional[str] = None):
    """Load one component folder with the class model_index.json names and wrap it in its adapter."""
    if device:
        _Torch._canonical_device(device)  # before the weights load: "cuda" on a machine without one fails in one line
    module = load_pretrained(_LIBRARIES, name, library, class_name, folder, variant, TORCH_DTYPES.native(dtype),
                             _DTYPE_KEYWORDS)
    if device:
        module.to(device)
    return record_weight_files(wrap_component(name, module), folder, variant)


def _copy_weights(target, source) -> None:
    """Every parameter of `source` into the same-named one of `target` (modules of one architecture)."""
    import torch

    with torch.no_grad():
        for (name, mine), (other, theirs) in zip(target.named_parameters(), source.named_parameters()):
            assert name == other, (name, other)
            mine.copy_(theirs)


def motion_unet(unet, motion_adapter):
    """The UNetMotionModel that diffusers builds from an SD UNet and a motion adapter, wrapped as a UNet."""
    return components_common.motion_unet(_LIBRARIES["diffusers"], wrap_component, _copy_weights, unet, motion_adapter)
