"""The one denoising loop every fewstep pipeline shares, and the pipeline object around it.

A pipeline class is a list of parts (`_parts`, from one row of `table.py`): the guidance rule, the LoRA
scale, a model family (`conditioning.py`), a task (`tasks.py`), a layout (`layouts.py`) and adapters
(ControlNet, T2I-Adapter, IP-Adapter, motion modules), all on the protocol of `parts.py`. The loop runs
their hooks in order and knows none of them by name. Everything here is written against TensorOps and
the component adapters, so the same code runs on torch and MindSpore. This module does not know the
classes built on it: `factory.py` makes them and picks one for a folder or a checkpoint.

Host round-trips: token ids and the initial noise go to the device once, the final image comes back
once; inside the loop only the Python-int timestep crosses, as in diffusers.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from fewstep.backends import framework_of, get_backend
from fewstep.core import checks
from fewstep.core.noise import randn_like
from fewstep.core.random import Generator
from fewstep.pipelines import busy, loading
from fewstep.pipelines.call_arguments import call_docstring
from fewstep.pipelines.construction import Construction
from fewstep.pipelines.docstrings import with_doc
from fewstep.pipelines.layouts import ImageLayout
from fewstep.pipelines.parts import CallState, Part, StepState, UNetInputs, overrides, owned_arguments
from fewstep.pipelines.pipeline_object import PipelineObjectMixin, infer_backend


@dataclass
class PipelineOutput:
    """`.images` as diffusers has it (a list of PIL images, an NHWC array, or latents) -- or `.frames`
    for a video layout (AnimateDiff) -- plus the seeds that made them so every image can be made again."""

    images: Any = None
    frames: Any = None
    seeds: Optional[List[int]] = None
    timings: Dict[str, float] = field(default_factory=dict)


def as_backend_tensor(ops, x, name: str, dtype: Optional[str] = None, like=None):
    """A user-given tensor on this pipeline's backend: NumPy arrays are moved over, a tensor of the
    other framework is refused rather than silently copied between frameworks and devices."""
    if x is None:
        return None
    if ops.is_tensor(x):
        return ops.cast(x, dtype) if dtype else x
    if isinstance(x, np.ndarray):
        return ops.from_numpy(x, like=like, dtype=dtype)
    framework = framework_of(x) or type(x).__name__
    raise ValueError(
        f"{name} is a {framework} tensor but this pipeline runs on {ops.name}; pass a {ops.name} tensor or a "
        f"NumPy array, or load the pipeline with backend={framework!r}."
    )


def resolve_generators(generator, batch: int):
    """The user's generator argument as something `randn_like` draws from, and the seeds to report.

    int -> fewstep.Generator(int); list -> one per image (its length must equal the batch);
    None -> a fresh random seed, reported in the output."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch:
            raise ValueError(
                f"{len(generator)} generators were passed for {batch} images (prompts x num_images_per_prompt); "
                f"pass one generator per image, or a single generator."
            )
        gens = [Generator(g) if isinstance(g, (int, np.integer)) else g for g in generator]
        seeds = [g.initial_seed() for g in gens if isinstance(g, Generator)]
        return gens, seeds or None
    if generator is None or isinstance(generator, (int, np.integer)):
        generator = Generator(None if generator is None else int(generator))
    seeds = [generator.initial_seed()] if isinstance(generator, Generator) else None
    return generator, seeds


class Pipeline(Construction, PipelineObjectMixin):
    """Shared machinery: loading, the scheduler, progress bar, and `__call__` with one loop.

    A concrete class (made by `factory.py` from a row of `table.py`) sets `_key` (family, task, layout,
    adapters), `_parts` (in the order their hooks run) and `_layout` (the part that shapes and decodes the
    latents); `_extensions` are its parts other than the layout. A class without a key (`DiffusionPipeline`)
    picks the concrete class in `from_pretrained`, `from_single_file` and `from_pipe`."""

    _key: Optional[tuple] = None
    _parts: Sequence[Part] = ()
    _extensions: Sequence[Part] = ()
    _layout = ImageLayout()
    _claimed: frozenset = frozenset()
    _default_strength = 1.0
    _default_guidance = 7.5

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # Each class gets its own copy of the one `__call__`, documented with the arguments its parts give it
        # (see docstrings.py); only the docstring differs.
        if getattr(cls.__call__, "__code__", None) is Pipeline.__call__.__code__:
            cls.__call__ = with_doc(Pipeline.__call__, call_docstring(cls, Pipeline.__call__),
                                    f"{cls.__qualname__}.__call__")

    @classmethod
    def component_names(cls) -> List[str]:
        """Every component this pipeline needs, in the order its parts name them."""
        names: List[str] = []
        for part in cls._parts:
            names += [n for n in part.components if n not in names]
        return names

    def __setattr__(self, name: str, value) -> None:
        # A component assigned after construction is adopted as one passed to the constructor: a diffusers /
        # mindone model is wrapped, and `pipe.unet = torch.compile(pipe.unet)` keeps the component, compiled
        # (loading.adopt_component). Everything else is a plain attribute.
        if value is not None and "ops" in self.__dict__ and name in self.component_names():
            value = loading.adopt_component(self.ops.name, name, value)
        super().__setattr__(name, value)

    @classmethod
    def optional_component_names(cls) -> List[str]:
        """The components this pipeline may be built without (None), as diffusers' `_optional_components`."""
        return [n for part in cls._parts for n in part.optional_components]

    def __init__(self, backend=None, scheduler=None, **components):
        # Cls(**pipe.components), as in diffusers: the backend is then read from the models
        settings = self._diffusers_extras(components)
        if backend is None:
            backend = infer_backend(components)
        if scheduler is None:
            raise ValueError(f"{type(self).__name__} needs a scheduler: pass scheduler= (e.g. fewstep.TCDScheduler"
                             f".from_config(other_pipe.scheduler.config)).")
        self.ops = get_backend(backend)
        self.scheduler = scheduler
        names = self.component_names()
        unknown = sorted(set(components) - set(names))
        if unknown:
            raise ValueError(f"{type(self).__name__} has no component(s) {unknown}; its components are "
                             f"{names + ['scheduler']}.")
        optional = self.optional_component_names()
        for name in names:
            if components.get(name) is None and name not in optional:
                raise ValueError(f"{type(self).__name__} needs a {name!r} component.")
        for name in names:
            value = components.get(name)
            if value is not None:  # a diffusers / transformers (or mindone) model is wrapped, as from_pretrained does
                value = loading.adopt_component(self.ops.name, name, value)
            setattr(self, name, value)
        if settings:
            self.register_to_config(**settings)
        for part in self._parts:
            part.check_components(self)
        for part in self._parts:
            part.attach(self)
        self._progress_config: Dict[str, Any] = {}

    def _diffusers_extras(self, components: dict) -> dict:
        """Take out of `components` what diffusers' constructors also take: this pipeline's settings (returned),
        `requires_safety_checker`, the feature extractor and image encoder (unused: the IP-Adapter's come with
        `load_ip_adapter`) and the safety checker as None (fewstep runs none)."""
        settings = {name: components.pop(name) for name in list(components) if name in self.settings()}
        components.pop("requires_safety_checker", None)
        for name in ("feature_extractor", "image_encoder"):
            if name not in self.component_names():
                components.pop(name, None)
        if components.pop("safety_checker", None) is not None:
            raise ValueError("fewstep pipelines run no safety checker: pass safety_checker=None.")
        return settings

    @property
    def config(self) -> Dict[str, Any]:
        """The pipeline's class and settings, as diffusers' `pipe.config` holds them beside its components."""
        return {"_class_name": type(self).__name__, **{name: getattr(self, name) for name in self.settings()}}

    @property
    def vae_scale_factor(self) -> int:
        return self.vae.scale_factor

    def _default_size(self):
        """diffusers' default output size: the UNet's sample size in pixels."""
        size = self.unet.config["sample_size"] * self.vae_scale_factor
        return size, size

    @property
    def dtype(self) -> str:
        return self.unet.dtype

    # ------------------------------------------------------------------ progress
    def set_progress_bar_config(self, **kwargs):
        """Options for the tqdm progress bar (`disable=True` to hide it), as in diffusers."""
        self._progress_config = dict(kwargs)

    def progress_bar(self, total: int):
        from tqdm.auto import tqdm

        return tqdm(total=total, **self._progress_config)

    # ------------------------------------------------------------------ call
    def _check_numbers(self, guidance_scale, strength, eta, cross_attention_kwargs):
        """(guidance_scale, strength, eta) as floats, the class's defaults for None, each finite and in the range
        diffusers gives it; the LoRA scale of cross_attention_kwargs finite. A ValueError names the argument."""
        guidance_scale = self._default_guidance if guidance_scale is None else checks.number(
            guidance_scale, "guidance_scale", "Use e.g. 7.5, or 0 to turn classifier-free guidance off.")
        strength = self._default_strength if strength is None else checks.in_range(
            strength, "strength", 0.0, 1.0, low_open=True, hint="Use 1.0 to ignore the input image.")
        eta = checks.in_range(eta, "eta", 0.0, 1.0, hint="0 is deterministic; TCD's authors suggest 0.3.")
        if isinstance(cross_attention_kwargs, Mapping) and cross_attention_kwargs.get("scale") is not None:
            checks.number(cross_attention_kwargs["scale"], 'cross_attention_kwargs["scale"]',
                          "It is the scale of the fused LoRAs for this call, e.g. 1.0.")
        return guidance_scale, strength, eta

    def _check_size(self, height, width, images: int, output_type: str, layout_args) -> None:
        """The output size (whole multiples of the VAE factor, at most checks.MAX_SIDE) and the decode's memory,
        estimated from the VAE's widths and dtype and whether it decodes in slices or tiles."""
        vae = self.vae
        channels = list(vae.config.get("block_out_channels") or ())
        itemsize = {"float16": 2, "bfloat16": 2, "float64": 8}.get(str(vae.dtype), 4)
        checks.output_size(height, width, self.vae_scale_factor, channels, itemsize)
        if output_type == "latent":
            return
        module = getattr(vae, "module", None)
        tiled = getattr(module, "use_tiling", False)
        checks.decode_memory(self._layout.decode_images(images, layout_args), height, width, channels, itemsize,
                             sliced=bool(getattr(module, "use_slicing", False)),
                             tile=int(getattr(module, "tile_sample_min_size", 512)) if tiled else None)

    def _step_kwargs(self, eta: float, generator) -> Dict[str, Any]:
        params = inspect.signature(self.scheduler.step).parameters
        kwargs = {}
        if "eta" in params:
            kwargs["eta"] = eta
        if "generator" in params:
            kwargs["generator"] = generator
        return kwargs

    def _as_tensor(self, x, name: str, dtype: Optional[str] = None, like=None):
        return as_backend_tensor(self.ops, x, name, dtype, like=like)

    def _randn(self, shape, dtype, generator, like=None):
        return randn_like(self.ops, shape, dtype, generator, like=like)

    def __call__(self, prompt=None, image=None, mask_image=None, height: Optional[int] = None,
                 width: Optional[int] = None, num_inference_steps: int = 4, timesteps=None,
                 guidance_scale: Optional[float] = None, negative_prompt=None, eta: float = 0.0,
                 strength: Optional[float] = None, generator=None, latents=None, prompt_embeds=None,
                 negative_prompt_embeds=None, pooled_prompt_embeds=None, negative_pooled_prompt_embeds=None,
                 num_images_per_prompt: int = 1, output_type: str = "pil", return_dict: bool = True,
                 callback_on_step_end: Optional[Callable] = None,
                 callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
                 original_size=None, target_size=None, crops_coords_top_left=(0, 0),
                 cross_attention_kwargs=None, clip_skip: Optional[int] = None, **part_arguments):
        # The docstring is assembled per class (call_arguments.py): these arguments are documented in
        # CALL_ARGUMENTS there, `part_arguments` by the class's parts (parts.py).
        args = {name: value for name, value in locals().items() if name not in ("self", "part_arguments")}
        # One call at a time (busy.py): a second thread gets a RuntimeError instead of sharing the scheduler and
        # the fused weights with this call.
        with busy.hold(self, "a call", reentrant=False):
            parts, layout = self._parts, self._layout
            owned = owned_arguments(parts)
            unknown = sorted(set(part_arguments) - set(owned))
            if unknown:
                owned_here = sorted(set(owned) - set(args))
                raise TypeError(f"{type(self).__name__} got unexpected argument(s) {unknown}"
                                + (f"; its adapter arguments are {owned_here}." if owned_here else "."))
            args.update({name: part_arguments.get(name, default) for name, default in owned.items() if name not in args})
            if output_type not in ("pil", "np", "pt", "latent"):
                raise ValueError(f"Unknown output_type {output_type!r}; use 'pil', 'np', 'pt' or 'latent'.")
            if clip_skip is not None:  # the family part checks it against its text encoders' layers in check_arguments
                checks.whole(clip_skip, "clip_skip", 0, 2 ** 31, "Use e.g. 1 (the penultimate layer), or None.")
            # every number is checked before any work (core/checks.py): a NaN would otherwise give a black image
            guidance_scale, strength, eta = self._check_numbers(guidance_scale, strength, eta, cross_attention_kwargs)
            prompt_batch = len(prompt) if isinstance(prompt, (list, tuple)) else 1 if prompt is not None else \
                (prompt_embeds.shape[0] if prompt_embeds is not None else None)
            checks.image_count(num_images_per_prompt, prompt_batch)
            call = CallState(ops=self.ops, args=args, claimed=self._claimed, prompt_batch=prompt_batch,
                             num_images_per_prompt=num_images_per_prompt, guidance_scale=guidance_scale,
                             strength=strength, eta=eta)
            for part in parts:
                part.check_arguments(self, args, call)
            # the first part with a default size gives it (the task's input image, then an adapter's condition
            # image); only a size not given takes the default: 0 is refused below, not replaced
            default = next((size for size in (p.default_size(self, args) for p in parts) if size), None) \
                if height is None or width is None else None
            default = default or self._default_size()
            call.height = default[0] if height is None else height
            call.width = default[1] if width is None else width
            self._check_size(call.height, call.width, (prompt_batch or 1) * num_images_per_prompt, output_type, args)
            timings: Dict[str, float] = {}

            with self.ops.no_grad():
                call.batch = (prompt_batch or 1) * num_images_per_prompt
                call.generator, call.seeds = resolve_generators(generator, call.batch)
                states = [part.prepare(self, call, args) for part in parts]
                latents = self._denoise(call, list(zip(parts, states)), callback_on_step_end,
                                        callback_on_step_end_tensor_inputs, timings)
                if output_type == "latent":
                    images = latents
                else:
                    # "pt" stays a framework tensor on the device; the other outputs are made on the host
                    pixels = layout.decode(self, call, latents, host=output_type != "pt")
                    images = layout.postprocess(self.ops, pixels, output_type)
                    for part, state in zip(parts, states):
                        if overrides(part, "finish"):
                            images = part.finish(self, call, state, images)
            if not return_dict:
                return (images,)
            return PipelineOutput(**{layout.output_field: images}, seeds=call.seeds, timings=timings)

    def _denoise(self, call: CallState, parts, callback, callback_inputs, timings: Dict[str, float]):
        """The loop: per step, the parts' UNet inputs, one UNet call (two halves under CFG, which the guidance
        part combines), the scheduler's step and the parts' after-step work. Only the hooks a part implements are called."""
        ops, latents, schedule = call.ops, call.latents, call.timesteps
        contributors = [(p, s) for p, s in parts if overrides(p, "unet_inputs")]
        shapers = [(p, s) for p, s in parts if overrides(p, "model_input")]
        combiners = [(p, s) for p, s in parts if overrides(p, "combine")]
        finishers = [(p, s) for p, s in parts if overrides(p, "after_step")]
        step_kwargs = self._step_kwargs(call.eta, call.generator)
        start = time.perf_counter()
        with self.progress_bar(total=len(schedule)) as bar:
            for i, t in enumerate(schedule):
                # the scheduler scales the model input (Euler divides by sqrt(sigma^2 + 1); the others return it),
                # before the parts add their channels, as diffusers' pipelines order it
                model_input = ops.concat([latents, latents], axis=0) if call.do_cfg else latents
                step = StepState(index=i, timestep=t, latents=latents,
                                 model_input=self.scheduler.scale_model_input(model_input, t))
                inputs = UNetInputs()
                for part, state in contributors:
                    inputs.merge(part.unet_inputs(self, call, state, step))
                model_in = step.model_input
                for part, state in shapers:
                    model_in = step.model_input = part.model_input(self, call, state, step)
                noise_pred = self.unet(model_in, t, call.unet_hidden, **inputs.values)
                for part, state in combiners:
                    noise_pred = part.combine(self, call, state, step, noise_pred)
                latents = self.scheduler.step(noise_pred, t, latents, return_dict=False, **step_kwargs)[0]
                for part, state in finishers:
                    latents = part.after_step(self, call, state, step, latents)
                if callback is not None:
                    values = {"latents": latents, "prompt_embeds": call.cond.hidden}
                    result = callback(self, i, t, {k: values[k] for k in callback_inputs})
                    latents = (result or {}).get("latents", latents)
                bar.update()
        timings["denoise_s"] = time.perf_counter() - start
        timings["per_step_s"] = timings["denoise_s"] / max(len(schedule), 1)
        return latents


Pipeline.__call__.__doc__ = call_docstring(Pipeline, Pipeline.__call__)
