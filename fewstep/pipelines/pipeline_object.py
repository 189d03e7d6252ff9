"""`pipe.to(...)`, `pipe.device`, `pipe.components` and the VAE's slicing and tiling switches: the
pipeline object as a diffusers user handles it.

`to` takes diffusers' arguments (a device, a dtype, both, or `device=` / `dtype=` / `torch_device=` /
`torch_dtype=` / `mindspore_dtype=`), moves every model component (and an IP-Adapter's image encoder)
and returns the pipeline, so `Pipeline.from_pretrained(...).to("cuda")` chains as in the guides.
Everything is checked before any weight moves. The framework's own move is the backend wrapper's
(`fewstep.backends.components_common.Model.to`): torch's `module.to`, and on MindSpore the
per-parameter cast mindone's `ModelMixin.to(dtype)` does. MindSpore has no device argument (mindone's
`DiffusionPipeline.to` takes only a dtype; models are placed by `mindspore.set_context(device_target=...)`),
so a device there is refused with that advice rather than silently ignored.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, Tuple

from fewstep.backends.components_common import Model
from fewstep.pipelines import busy, loading

# keywords of diffusers' DiffusionPipeline.to, plus mindone's dtype keyword
_TO_KEYWORDS = ("device", "dtype", "torch_device", "torch_dtype", "mindspore_dtype", "silence_dtype_warnings")


def _is_torch_device(value) -> bool:
    torch = sys.modules.get("torch")  # a torch.device exists only if torch is imported: never import it to ask
    return torch is not None and isinstance(value, torch.device)


def parse_to_arguments(args: tuple, kwargs: dict) -> Tuple[Any, Optional[str]]:
    """(device or None, fewstep dtype name or None) from `to`'s arguments, as diffusers reads them:
    positionally a device (a string or torch.device) and / or a dtype object, in any order."""
    unknown = sorted(set(kwargs) - set(_TO_KEYWORDS))
    if unknown:
        raise TypeError(f"to() got unexpected keyword argument(s) {unknown}; it takes a device and / or a dtype, "
                        f"positionally or as {list(_TO_KEYWORDS[:-1])}.")
    if len(args) > 2:
        raise TypeError(f"to() takes a device and / or a dtype; got {len(args)} positional arguments.")
    devices: List[Any] = [kwargs[k] for k in ("device", "torch_device") if kwargs.get(k) is not None]
    dtypes: Dict[str, Any] = {}
    for arg in args:
        if loading.dtype_framework(arg):
            dtypes.setdefault("dtype", arg)
            if dtypes["dtype"] is not arg:
                raise TypeError("to() got two dtypes; pass one.")
        elif isinstance(arg, str) or _is_torch_device(arg):
            devices.append(arg)
        else:
            raise TypeError(f"to() takes a device (a string or torch.device) and / or a dtype (torch.float16, "
                            f"mindspore.float16); got a {type(arg).__name__} ({arg!r}).")
    for keyword in ("dtype", "torch_dtype", "mindspore_dtype"):
        if kwargs.get(keyword) is not None:
            if keyword in dtypes:
                raise TypeError(f"to() got a dtype positionally and as {keyword}=; pass one.")
            dtypes[keyword] = kwargs[keyword]
    if len({str(d) for d in devices}) > 1:
        raise ValueError(f"to() got different devices {[str(d) for d in devices]}; pass one.")
    device = devices[0] if devices else None
    if isinstance(device, str) and _is_dtype_name(device):
        raise ValueError(f"to({device!r}): a string is read as a device, as in diffusers; for a dtype pass "
                         f"dtype={device!r} or the framework's dtype object (torch.{device}).")
    dtype = loading.resolve_dtype(default=None, **dtypes) if dtypes else None
    return device, dtype


def _is_dtype_name(text: str) -> bool:
    try:
        loading.dtype_name(text)
    except ValueError:
        return False
    return True


class PipelineObjectMixin:
    """`to`, `device` and `components` on a pipeline; the pipeline supplies `component_names()`,
    `scheduler` and its components as attributes."""

    def _models(self) -> List[Tuple[str, Model]]:
        """(name, backend wrapper) of every model the pipeline holds: its components (each ControlNet of a
        list) and an IP-Adapter's image encoder."""
        found = []
        for name in [*self.component_names(), "image_encoder"]:
            value = getattr(self, name, None)
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(item, Model) and all(item is not m for _, m in found):
                    found.append((name, item))
        return found

    @busy.exclusive  # moves the weights: not while another thread runs a call
    def to(self, *args, **kwargs):
        """Move (torch) or cast (torch and MindSpore) every model of the pipeline, as diffusers'
        `DiffusionPipeline.to` does, and return the pipeline itself.

        Args:
            *args (*optional*):
                A device (`str` such as "cuda" or "cpu", or a `torch.device`) and / or a dtype object
                (`torch.float16`, `mindspore.float16`), in either order.
            **kwargs (*optional*):
                `device=` / `torch_device=` (the same), `dtype=` (a name such as "float16" or a dtype object),
                `torch_dtype=` / `mindspore_dtype=` (read as `from_pretrained` reads them: by the dtype's name),
                and diffusers' `silence_dtype_warnings=` (accepted, nothing to silence).

        Returns:
            `DiffusionPipeline`: this pipeline, moved, so `Pipeline.from_pretrained(...).to("cuda")` chains.

        Raises:
            `ValueError`: a device on MindSpore (mindone's pipelines take none: place models with
            `mindspore.set_context(device_target=...)`), a device torch cannot use, or conflicting arguments.
            `TypeError`: an argument that is neither a device nor a dtype, or an unknown keyword. `LoraError`:
            a LoRA base kept as a reference to a file that has changed since. Nothing is moved when any is raised.

        Loaded LoRAs (fused or not) follow: their weights are fused again in the new place, as loading them
        after the move would fuse them (see `fewstep.pipelines.lora`).
        """
        device, dtype = parse_to_arguments(args, kwargs)
        models = self._models()
        if not models or (device is None and dtype is None):
            return self
        device = models[0][1].check_device(device)  # an unusable device fails before any weight moves
        changes = [(n, m) for n, m in models
                   if (dtype is not None and m.dtype != dtype) or (device is not None and m.device != device)]
        if changes:
            self._move_models(changes, device, dtype)
        return self

    def compile(self, *eager, **options):
        """Compile the models each call runs, with the framework's own compiler, and return the pipeline.

        On torch this is diffusers' idiom for each of them, `torch.compile` with `options` (`mode`, `fullgraph`,
        `dynamic`, `backend`): `pipe.unet = torch.compile(pipe.unet, **options)`, the same for each ControlNet and
        T2I-Adapter, and `pipe.vae.decode = torch.compile(pipe.vae.decode, **options)`. On MindSpore the UNet runs
        under `mindspore.jit` (graph mode), `options` passed to it. Images equal eager ones within float32
        rounding; the first call compiles (seconds to minutes), later ones reuse it, LoRA switches included
        (fused weights are the same parameters). `compile(None)` runs them eagerly again."""
        for _, model in self._models():
            compile_model = getattr(model, "compile", None)
            if compile_model is not None:
                compile_model(*eager, **options)
        return self

    def _move_models(self, changes: List[Tuple[str, Model]], device, dtype: Optional[str]) -> None:
        """Move the models in `changes` ((name, wrapper) pairs; `device` already checked). A mixin that keeps
        tensors beside the weights extends this to move them too (LoRA: fewstep.pipelines.lora), checking
        what could fail before calling it."""
        for _, model in changes:
            model.to(device, dtype)

    # ------------------------------------------------------------------ VAE memory
    # diffusers' names up to 0.3x and mindone's (diffusers 0.4x keeps only the VAE's own `pipe.vae.enable_slicing()`
    # and the like, which fewstep's VAE has too); the work is the library's own AutoencoderKL slicing / tiling (its
    # encode, used by img2img and inpainting, honours them too)
    def enable_vae_slicing(self):
        """Decode (and encode) a batch one image at a time, as diffusers' `enable_vae_slicing`: the same
        images in less memory for batches larger than one.

        Returns:
            `None`.
        """
        self.vae.enable_slicing()

    def disable_vae_slicing(self):
        """Decode the whole batch at once again (undoes `enable_vae_slicing`).

        Returns:
            `None`.
        """
        self.vae.disable_slicing()

    def enable_vae_tiling(self):
        """Decode (and encode) in overlapping tiles of the VAE's `sample_size`, blended at the seams, as
        diffusers' `enable_vae_tiling`: large images in bounded memory. An image no larger than one tile is
        decoded whole; a larger one differs slightly from the untiled decode at the seams, as in diffusers.

        Returns:
            `None`.
        """
        self.vae.enable_tiling()

    def disable_vae_tiling(self):
        """Decode in one piece again (undoes `enable_vae_tiling`).

        Returns:
            `None`.
        """
        self.vae.disable_tiling()

    @property
    def device(self):
        """The device of the UNet's weights (a `torch.device` on torch, as in diffusers); None on MindSpore,
        which places models by its context."""
        return self.unet.device

    # ------------------------------------------------------------------ settings
    @classmethod
    def settings(cls) -> Dict[str, Any]:
        """The pipeline-level settings its parts read, with their defaults (SDXL's `force_zeros_for_empty_prompt`,
        and `requires_aesthetics_score` on SDXL img2img / inpainting): what model_index.json may carry beside the
        components, as in diffusers' pipeline config."""
        found: Dict[str, Any] = {}
        for part in getattr(cls, "_parts", ()):
            found.update(part.attributes)
        return found

    def register_to_config(self, **kwargs) -> None:
        """Change pipeline settings, as diffusers' `pipe.register_to_config(requires_aesthetics_score=True)` does:
        the next call uses them. Only this pipeline's settings (see `settings()`) are taken, as booleans.

        Raises:
            `ValueError`: a name that is not one of this pipeline's settings, or a value that is not a boolean.
        """
        known = self.settings()
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise ValueError(f"{type(self).__name__} has no setting(s) {unknown}; its settings are "
                             f"{sorted(known) or 'none'}.")
        for name, value in kwargs.items():
            if not isinstance(value, (bool, int)) or value not in (0, 1):
                raise ValueError(f"{name} must be True or False; got {value!r}.")
        for name, value in kwargs.items():
            setattr(self, name, bool(value))

    @property
    def components(self) -> Dict[str, Any]:
        """The pipeline's components by name, the scheduler included, as diffusers' `pipe.components`:
        `OtherPipeline(**pipe.components)` builds another pipeline on the same model objects (the backend is
        read from them). The LoRA and IP-Adapter state stays with this pipeline; `from_pipe` carries it."""
        return {**{n: getattr(self, n) for n in self.component_names()}, "scheduler": self.scheduler}


def infer_backend(components: Dict[str, Any]) -> str:
    """The backend of the models among `components` (what `Cls(**pipe.components)` needs), or a ValueError."""
    frameworks = {loading.component_framework(v) for v in components.values()} - {""}
    if len(frameworks) == 1:
        return frameworks.pop()
    if not frameworks:
        raise ValueError("No model among the components says which backend to run on: pass backend='torch' or "
                         "'mindspore' as the first argument.")
    raise ValueError(f"The components mix frameworks {sorted(frameworks)}; load them all on one backend.")
