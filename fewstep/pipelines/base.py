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
from fewstep.pipelines.docstrings import Arg, args_section, section, with_doc
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


class Pipeline(PipelineObjectMixin):
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
            cls.__call__ = with_doc(Pipeline.__call__, cls._call_docstring(), f"{cls.__qualname__}.__call__")

    @classmethod
    def component_names(cls) -> List[str]:
        """Every component this pipeline needs, in the order its parts name them."""
        names: List[str] = []
        for part in cls._parts:
            names += [n for n in part.components if n not in names]
        return names

    def __init__(self, backend=None, scheduler=None, **components):
        # Cls(**pipe.components), as in diffusers: the backend is then read from the models
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
        for name in names:
            if components.get(name) is None:
                raise ValueError(f"{type(self).__name__} needs a {name!r} component.")
        for name, value in components.items():
            loading.check_component_backend(name, value, self.ops.name)
            setattr(self, name, value)
        for part in self._parts:
            part.check_components(self)
        for part in self._parts:
            part.attach(self)
        self._progress_config: Dict[str, Any] = {}

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, backend: str = "torch", dtype=None,
                        device: Optional[str] = None, variant: Optional[str] = None, *, torch_dtype=None,
                        mindspore_dtype=None, **components):
        """Load a diffusers-format pipeline folder (or hub id) on `backend` with its trusted library.

        Any component may be passed in instead (`unet=`, `vae=`, `controlnet=`, `adapter=`,
        `text_encoder=`, `scheduler=`...): a fewstep component (`fewstep.ControlNetModel.from_pretrained`)
        or the framework's own model; the rest is loaded from the folder. Called on `DiffusionPipeline`
        itself, it builds the fewstep class that the folder's model_index.json names.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`):
                A folder holding model_index.json (as diffusers' `save_pretrained` writes it) or a hub
                repository id, fetched through huggingface_hub's cache (offline when the snapshot is there).
            backend (`str`, *optional*, defaults to "torch"):
                "torch" loads the components with diffusers and transformers, "mindspore" with
                mindone.diffusers and mindone.transformers.
            dtype (`str` or a framework dtype, *optional*):
                The dtype of the loaded models: "float32" (when no dtype keyword is given), "float16" or
                "bfloat16" (aliases such as "fp16" or "torch.float16", and torch / MindSpore dtype objects, are
                read too). Components passed in keep their own.
            torch_dtype (`torch.dtype`, *optional*):
                diffusers' keyword for the same: `torch_dtype=torch.float16` gives what `dtype="float16"` gives.
                Read by the dtype's name, on either backend, so a diffusers snippet keeps working with
                backend="mindspore"; a MindSpore dtype here, or keywords naming different dtypes, are refused.
            mindspore_dtype (`mindspore.Type`, *optional*):
                mindone's keyword for the same (`mindspore_dtype=mindspore.float16`), read the same way.
            device (`str`, *optional*):
                torch only: the device the loaded models are moved to (e.g. "cuda"); None leaves them on
                the CPU. MindSpore places models by its own context (`mindspore.set_context(device_target=...)`).
            variant (`str`, *optional*):
                The weight files' variant, e.g. "fp16" for `diffusion_pytorch_model.fp16.safetensors`.
            **components (*optional*):
                Components to use instead of loading them from the folder, by name (see
                `component_names()`, plus `scheduler`): fewstep components, the framework's own models
                (wrapped; a model of the other framework is refused), a list of ControlNets for
                `controlnet=`, or a fewstep scheduler. Components a base-model folder lacks
                (`controlnet`, `adapter`, `motion_adapter`) must be passed. Every one is checked before
                anything is loaded.

        Returns:
            The pipeline, with the folder's scheduler as a fewstep TCD/LCM scheduler unless `scheduler=`
            is given (a folder scheduler of another kind becomes a TCDScheduler with its config).
        """
        # the dtype keywords are checked before any file is read
        dtype = loading.resolve_dtype(dtype, torch_dtype, mindspore_dtype)
        folder = loading.resolve_folder(pretrained_model_name_or_path, variant=variant,
                                        skip=[n for n, c in components.items() if c is not None])
        index = loading.read_model_index(folder)
        if cls._key is None:
            cls = cls._class_for_folder(index, folder)
        names = cls.component_names()
        unknown = sorted(set(components) - set(names) - {"scheduler"})
        if unknown:
            raise ValueError(f"{cls.__name__} has no component(s) {unknown}; pass only {names + ['scheduler']}.")
        scheduler = components.pop("scheduler", None)
        ops = get_backend(backend)
        # every passed component is checked before anything is loaded from the folder
        given = {n: loading.adopt_component(ops.name, n, c) for n, c in components.items() if c is not None}
        missing = [n for n in names if n not in given]
        loaded = loading.load_components(folder, index, missing, ops.name, dtype=dtype, device=device,
                                         variant=variant, pipeline=cls.__name__)
        if scheduler is None:
            scheduler = loading.load_scheduler(folder)
        pipe = cls(ops.name, scheduler, **loaded, **given)
        pipe.name_or_path = pretrained_model_name_or_path
        # pipeline-level settings model_index.json carries beside the components (SDXL's choice of
        # zero negative embeddings when no negative prompt is given)
        if "force_zeros_for_empty_prompt" in index and hasattr(pipe, "force_zeros_for_empty_prompt"):
            pipe.force_zeros_for_empty_prompt = bool(index["force_zeros_for_empty_prompt"])
        return pipe

    @classmethod
    def from_single_file(cls, pretrained_model_link_or_path, backend: str = "torch", **kwargs):
        """Load a single-file `.safetensors` checkpoint (the A1111 / civitai layout) into the fewstep pipeline class
        its model family names, as `from_pretrained` picks the class from model_index.json: SD 1.x / 2.x,
        SDXL, or their inpainting pipelines, with the ControlNet variant when `controlnet=` is passed. The
        chosen class's own `from_single_file` loads it (see `StableDiffusionPipeline.from_single_file`).

        Args:
            pretrained_model_link_or_path (`str` or `os.PathLike`):
                The path of a `.safetensors` checkpoint file; pickled checkpoints are refused unread.
            backend (`str`, *optional*, defaults to "torch"):
                "torch" loads it with diffusers' single-file loader, "mindspore" with mindone.diffusers'.
            **kwargs (*optional*):
                Passed on to the chosen class's `from_single_file`: `config` (a diffusers-format folder of the
                same family), `dtype` (or `torch_dtype`, `mindspore_dtype`), `device` and components by name;
                `controlnet=` picks the ControlNet pipeline of the family.

        Returns:
            The pipeline of the checkpoint's family, with `pipe.checkpoint_family` naming it.
        """
        if cls._key is not None:  # a class without FromSingleFileMixin (T2I-Adapter, AnimateDiff)
            raise ValueError(f"{cls.__name__} does not load single-file checkpoints: load it with "
                             f"DiffusionPipeline.from_single_file(path, config=...), then make this pipeline on its "
                             f"models with {cls.__name__}.from_pipe(pipe, ...).")
        return cls._load_checkpoint(pretrained_model_link_or_path, backend=backend, **kwargs)

    @classmethod
    def _class_for_folder(cls, index: dict, folder: str) -> type:
        """The concrete class for a folder's model_index.json (DiffusionPipeline's, in factory.py)."""
        raise TypeError(f"{cls.__name__} is not a pipeline class; load folders with fewstep.DiffusionPipeline.")

    @classmethod
    def _load_checkpoint(cls, path, backend: str, **kwargs):
        """A single-file checkpoint in the class its family names (DiffusionPipeline's, in factory.py)."""
        raise TypeError(f"{cls.__name__} is not a pipeline class; load checkpoints with fewstep.DiffusionPipeline.")

    @classmethod
    def from_pipe(cls, pipeline: "DiffusionPipeline", **components):
        """A pipeline of this class on `pipeline`'s components: the same model objects (no weight is
        copied), its scheduler and LoRA state; `components` add or replace some (`controlnet=`).

        Args:
            pipeline (`DiffusionPipeline`):
                The loaded pipeline whose components, scheduler, LoRA and IP-Adapter state are shared.
                Called on `DiffusionPipeline` itself, the new pipeline is of `pipeline`'s class.
            **components (*optional*):
                Components to add or replace, by name (see `component_names()`, plus `scheduler`), as
                `from_pretrained` takes them; those this class needs and `pipeline` lacks must be given.

        Returns:
            A pipeline of this class on the same backend, sharing `pipeline`'s weights.
        """
        if cls._key is None:
            cls = type(pipeline)
        names = cls.component_names()
        unknown = sorted(set(components) - set(names) - {"scheduler"})
        if unknown:
            raise ValueError(f"{cls.__name__} has no component(s) {unknown}; pass only {names + ['scheduler']}.")
        scheduler = components.pop("scheduler", None) or pipeline.scheduler
        shared = {n: getattr(pipeline, n) for n in names if getattr(pipeline, n, None) is not None}
        shared.update({n: loading.adopt_component(pipeline.ops.name, n, c) for n, c in components.items()})
        missing = [n for n in names if shared.get(n) is None]
        if missing:
            raise ValueError(f"{cls.__name__} needs {missing}, which {type(pipeline).__name__} does not have; pass "
                             f"them: {cls.__name__}.from_pipe(pipe, {missing[0]}=...).")
        pipe = cls(pipeline.ops.name, scheduler, **shared)
        for attr in ("name_or_path", "force_zeros_for_empty_prompt", "_lora", "_ip", "image_encoder", "feature_extractor",
                     "_progress_config"):
            if attr in pipeline.__dict__:
                setattr(pipe, attr, pipeline.__dict__[attr])
        return pipe

    # ------------------------------------------------------------------ documentation
    @classmethod
    def _call_arguments(cls) -> List[tuple]:
        """(name, Arg, default) for every argument `__call__` takes on this class, in call order: the
        loop's (as the class's parts word them), then those its parts own. An owned argument its part
        does not document is left out (tests/test_docstrings.py catches it)."""
        docs = dict(CALL_ARGUMENTS)
        for part in cls._parts:
            docs.update(part.rewords)
        defaults = {name: p.default for name, p in inspect.signature(Pipeline.__call__).parameters.items()
                    if name != "self" and p.kind is not p.VAR_KEYWORD}
        # None in the signature stands for the class's own default
        defaults.update(guidance_scale=cls._default_guidance, strength=cls._default_strength)
        for part in cls._parts:
            for name, default in part.arguments.items():
                defaults[name] = default
                docs.pop(name, None)
                if name in part.argument_docs:
                    docs[name] = part.argument_docs[name]
        return [(name, docs[name], default) for name, default in defaults.items() if name in docs]

    @classmethod
    def _call_docstring(cls) -> str:
        returns = (f"`PipelineOutput` or `tuple`:\nWith `return_dict=True`, a `PipelineOutput` whose "
                   f"{cls._layout.output_doc}; `.seeds` holds the seeds of the `fewstep.Generator`s used (None "
                   f"for torch or NumPy generators), so every output can be made again, and `.timings` the "
                   f"seconds spent denoising (`denoise_s`, `per_step_s`). With `return_dict=False`, a tuple "
                   f"whose only element is the {cls._layout.output_field}.")
        return "\n\n".join([_CALL_SUMMARY, args_section(cls._call_arguments()), section("Returns", returns)])

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
                 cross_attention_kwargs=None, **part_arguments):
        # The docstring is assembled per class (`_call_docstring`): these arguments are documented in
        # CALL_ARGUMENTS below, `part_arguments` by the class's parts (parts.py).
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
            if output_type not in ("pil", "np", "latent"):
                raise ValueError(f"Unknown output_type {output_type!r}; use 'pil', 'np' or 'latent'.")
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
                    images = layout.postprocess(layout.decode(self, call, latents), output_type)
            if not return_dict:
                return (images,)
            return PipelineOutput(**{layout.output_field: images}, seeds=call.seeds, timings=timings)

    def _denoise(self, call: CallState, parts, callback, callback_inputs, timings: Dict[str, float]):
        """The loop: per step, the parts' UNet inputs, one UNet call (two halves under CFG), the scheduler's
        step and the parts' after-step work. Only the hooks a part implements are called."""
        ops, latents, schedule = call.ops, call.latents, call.timesteps
        contributors = [(p, s) for p, s in parts if overrides(p, "unet_inputs")]
        shapers = [(p, s) for p, s in parts if overrides(p, "model_input")]
        finishers = [(p, s) for p, s in parts if overrides(p, "after_step")]
        step_kwargs = self._step_kwargs(call.eta, call.generator)
        guidance_scale = call.guidance_scale
        start = time.perf_counter()
        with self.progress_bar(total=len(schedule)) as bar:
            for i, t in enumerate(schedule):
                step = StepState(index=i, timestep=t, latents=latents,
                                 model_input=ops.concat([latents, latents], axis=0) if call.do_cfg else latents)
                inputs = UNetInputs()
                for part, state in contributors:
                    inputs.merge(part.unet_inputs(self, call, state, step))
                model_in = step.model_input
                for part, state in shapers:
                    model_in = step.model_input = part.model_input(self, call, state, step)
                noise_pred = self.unet(model_in, t, call.unet_hidden, **inputs.values)
                if call.do_cfg:
                    uncond, text = ops.split(noise_pred, 2, axis=0)
                    noise_pred = uncond + guidance_scale * (text - uncond)
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


# ---------------------------------------------------------------------- the call's documentation
_CALL_SUMMARY = """Run the pipeline: encode the prompt, denoise over the scheduler's timesteps in one loop, decode.

Every argument this class takes is listed below; those an adapter or the video layout owns come
last and are passed by keyword."""

#: The loop's call arguments, in diffusers' words where diffusers has them. A task rewords `image`,
#: `mask_image`, `strength` or `latents` in its `_argument_docs` (tasks.py).
CALL_ARGUMENTS: Dict[str, Arg] = {
    "prompt": Arg("`str` or `List[str]`", "The prompt or prompts to guide generation. If not given, pass "
                  "`prompt_embeds`."),
    "image": Arg("`PIL.Image.Image`, `np.ndarray` or a list of them",
                 "The image to start from in img2img and inpainting pipelines (PIL images are resized to the "
                 "output size, HWC arrays in [0, 1] must have it), or the conditioning image of a ControlNet or "
                 "T2I-Adapter pipeline. Text-to-image pipelines take none."),
    "mask_image": Arg("`PIL.Image.Image`, `np.ndarray` or a list of them",
                      "Inpainting pipelines only: where to repaint (white) and what to keep (black)."),
    "height": Arg("`int`", "The height in pixels of the output, a multiple of the VAE's downsampling factor "
                  "(`vae_scale_factor`: 8 for SD and SDXL). By default the UNet's `sample_size` times that factor "
                  "for text-to-image, the input image's height rounded down to the factor for img2img and "
                  "inpainting, and the conditioning image's for ControlNet and T2I-Adapter pipelines."),
    "width": Arg("`int`", "The width in pixels of the output; see `height`."),
    "num_inference_steps": Arg("`int`", "The number of denoising steps; TCD and LCM need only a few (2 to 8). "
                               "Ignored when `timesteps` is given."),
    "timesteps": Arg("`List[int]`", "Custom timesteps in descending order, passed to the scheduler's "
                     "`set_timesteps(timesteps=...)` instead of `num_inference_steps`."),
    "guidance_scale": Arg("`float`", "Classifier-free guidance scale; above 1 the UNet also runs on the negative "
                          "prompt (twice the batch) and the two predictions are extrapolated. A UNet with "
                          "`time_cond_proj_dim` (LCM-distilled) takes `guidance_scale - 1` as its guidance embedding "
                          "instead and runs once. TCD and LCM LoRAs are usually run with guidance off (0 or 1) or "
                          "low. `None` uses the class's default."),
    "negative_prompt": Arg("`str` or `List[str]`", "What to guide away from; used only while guidance is on. "
                           "Without one, SD pipelines use the empty prompt and SDXL pipelines zero embeddings "
                           "(unless the folder's `force_zeros_for_empty_prompt` is false)."),
    "eta": Arg("`float`", "The stochasticity of each step, passed to schedulers whose `step` takes `eta`: TCD's "
               "gamma (0 is deterministic; the TCD authors suggest 0.3). LCM takes none and ignores it."),
    "strength": Arg("`float`", "Img2img and inpainting pipelines: how much of the schedule runs on the input "
                    "image (1.0 runs all of it and keeps little of the image). `None` uses the class's default."),
    "generator": Arg("`int`, `fewstep.Generator`, `torch.Generator`, `np.random.Generator` or a list of them",
                     "The source of all random numbers (initial noise, image encoding, the scheduler's noise). An "
                     "int is `fewstep.Generator(int)`, which draws what `torch.manual_seed(int)` would on the CPU, "
                     "on either backend; a list gives one generator per output (prompts x `num_images_per_prompt`). "
                     "None picks a fresh seed, reported in the output's `.seeds`."),
    "latents": Arg("backend tensor or `np.ndarray`", "Pre-generated initial noise of the latents' shape (batch, "
                   "channels, height / 8, width / 8; AnimateDiff adds the frames after the channels), used instead "
                   "of drawing it from `generator` and scaled by the scheduler's `init_noise_sigma`."),
    "prompt_embeds": Arg("backend tensor or `np.ndarray`", "Pre-computed text embeddings (the text encoder's "
                         "output), instead of `prompt`."),
    "negative_prompt_embeds": Arg("backend tensor or `np.ndarray`", "Pre-computed negative text embeddings, "
                                  "instead of `negative_prompt`."),
    "pooled_prompt_embeds": Arg("backend tensor or `np.ndarray`", "SDXL only: the pooled text embeddings that go "
                                "with `prompt_embeds` (required with them)."),
    "negative_pooled_prompt_embeds": Arg("backend tensor or `np.ndarray`", "SDXL only: the pooled negative "
                                         "embeddings that go with `negative_prompt_embeds` (required with them)."),
    "num_images_per_prompt": Arg("`int`", "The number of outputs to make per prompt."),
    "output_type": Arg("`str`", 'What the output holds: "pil" (PIL images), "np" (float arrays in [0, 1], '
                       'NHWC) or "latent" (the final latents, not decoded).'),
    "return_dict": Arg("`bool`", "Whether to return a `PipelineOutput` instead of a plain tuple."),
    "callback_on_step_end": Arg("`Callable`", "Called after every step as `callback_on_step_end(pipe, i, t, "
                                "tensors)`, `tensors` a dict of the names in `callback_on_step_end_tensor_inputs`; "
                                'a returned dict with "latents" replaces the latents.'),
    "callback_on_step_end_tensor_inputs": Arg("`Sequence[str]`", 'The tensors passed to `callback_on_step_end`: '
                                              '"latents" and / or "prompt_embeds".'),
    "original_size": Arg("`Tuple[int, int]`", "SDXL only: the (height, width) micro-conditioning of the "
                         "training image's original size; `None` means (height, width). SD pipelines ignore it."),
    "target_size": Arg("`Tuple[int, int]`", "SDXL only: the (height, width) micro-conditioning of the target "
                       "size; `None` means (height, width). SD pipelines ignore it."),
    "crops_coords_top_left": Arg("`Tuple[int, int]`", "SDXL only: the crop micro-conditioning; (0, 0) gives "
                                 "well-centred images. SD pipelines ignore it."),
    "cross_attention_kwargs": Arg("`dict`", 'Passed to the UNet\'s attention processors. Its "scale" is taken '
                                  "out and sets the scale of fused LoRAs for this call (they are re-fused at it)."),
}

Pipeline.__call__.__doc__ = Pipeline._call_docstring()
