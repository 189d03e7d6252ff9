"""The one denoising loop every fewstep pipeline shares.

A pipeline class combines a conditioning (SD: one text encoder; SDXL: two, plus pooled embeddings
and time ids, see `conditioning.py`) with a task (text-to-image, img2img, inpainting: how the
latents start and what changes after each step, see `tasks.py`) and the extensions it lists in
`_extensions` (ControlNet, T2I-Adapter: what else goes into each UNet call, see `extensions.py`).
Everything here is written against TensorOps and the component adapters, so the same code runs on
torch and MindSpore; the loop knows no adapter by name.

Host round-trips: token ids and the initial noise go to the device once, the final image comes back
once; inside the loop only the Python-int timestep crosses, as in diffusers.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from fewstep.backends import framework_of, get_backend
from fewstep.core.guidance import guidance_scale_embedding
from fewstep.core.noise import randn_like
from fewstep.core.random import Generator
from fewstep.pipelines import image_processing, loading
from fewstep.pipelines.extensions import (Extension, RunContext, StepContext, UNetInputs, owned_arguments,
                                          split_arguments)
from fewstep.pipelines.layouts import ImageLayout


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


class DiffusionPipeline:
    """Shared machinery: loading, the scheduler, progress bar, and `__call__` with one loop.

    Subclasses set `_components` (through a conditioning mixin), mix in a task and list their
    extensions in `_extensions`. Called on this class itself, `from_pretrained` picks the fewstep
    pipeline class that the folder's model_index.json names (see `fewstep.pipelines.auto`)."""

    _components: Sequence[str] = ()
    _extensions: Sequence[Extension] = ()
    _layout = ImageLayout()
    _default_strength = 1.0
    _default_guidance = 7.5

    @classmethod
    def component_names(cls) -> List[str]:
        """Every component this pipeline needs: the conditioning's, then each extension's."""
        names = list(cls._components)
        for ext in cls._extensions:
            names += [n for n in ext.components if n not in names]
        return names

    def __init__(self, backend, scheduler, **components):
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
        for ext in self._extensions:
            ext.check_components(self)
        self._progress_config: Dict[str, Any] = {}

    def components(self) -> Dict[str, Any]:
        """The loaded components by name, the scheduler included (diffusers' `pipe.components`)."""
        return {**{n: getattr(self, n) for n in self.component_names()}, "scheduler": self.scheduler}

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, backend: str = "torch", dtype: str = "float32",
                        device: Optional[str] = None, variant: Optional[str] = None, **components):
        """Load a diffusers-format pipeline folder (or hub id) on `backend` with its trusted library.

        Any component may be passed in instead (`unet=`, `vae=`, `controlnet=`, `adapter=`,
        `text_encoder=`, `scheduler=`...): a fewstep component (`fewstep.ControlNetModel.from_pretrained`)
        or the framework's own model; the rest is loaded from the folder."""
        folder = loading.resolve_folder(pretrained_model_name_or_path)
        index = loading.read_model_index(folder)
        if cls is DiffusionPipeline:
            from fewstep.pipelines.auto import class_for_folder

            cls = class_for_folder(index, folder)
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
    def from_pipe(cls, pipeline: "DiffusionPipeline", **components):
        """A pipeline of this class on `pipeline`'s components: the same model objects (no weight is
        copied), its scheduler and LoRA state; `components` add or replace some (`controlnet=`)."""
        if cls is DiffusionPipeline:
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
    def _do_cfg(self, guidance_scale: float) -> bool:
        return guidance_scale > 1 and self.unet.config.get("time_cond_proj_dim") is None

    def _step_kwargs(self, eta: float, generator) -> Dict[str, Any]:
        params = inspect.signature(self.scheduler.step).parameters
        kwargs = {}
        if "eta" in params:
            kwargs["eta"] = eta
        if "generator" in params:
            kwargs["generator"] = generator
        return kwargs

    def _timesteps(self, num_inference_steps, timesteps, strength: float) -> np.ndarray:
        """The schedule, cut by `strength` for img2img and inpainting as diffusers' pipelines cut it."""
        if timesteps is not None:
            self.scheduler.set_timesteps(timesteps=list(timesteps))
        else:
            self.scheduler.set_timesteps(num_inference_steps)
        schedule = np.asarray(self.scheduler.timesteps)
        if strength == 1.0:
            return schedule
        n = len(schedule)
        t_start = max(n - min(int(n * strength), n), 0)
        if t_start >= n:
            raise ValueError(
                f"strength={strength} with {n} steps leaves no step to run; raise strength or num_inference_steps."
            )
        self.scheduler.set_begin_index(t_start)
        return schedule[t_start:]

    def _as_tensor(self, x, name: str, dtype: Optional[str] = None, like=None):
        return as_backend_tensor(self.ops, x, name, dtype, like=like)

    def _apply_lora_scale(self, cross_attention_kwargs):
        """cross_attention_kwargs for the UNet; the LoRA mixin takes "scale" out and re-fuses at it."""
        return cross_attention_kwargs

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
                 cross_attention_kwargs=None, **extension_arguments):
        ops = self.ops
        extensions, layout = tuple(self._extensions), self._layout
        owned = owned_arguments(extensions + (layout,))
        unknown = sorted(set(extension_arguments) - set(owned))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected argument(s) {unknown}"
                            + (f"; its adapter arguments are {sorted(owned)}." if owned else "."))
        if "image" in owned:  # a text-to-image ControlNet pipeline: image= is the control image
            extension_arguments["image"], image = image, None
        *ext_args, layout_args = split_arguments(extensions + (layout,), extension_arguments)
        guidance_scale = self._default_guidance if guidance_scale is None else float(guidance_scale)
        strength = self._default_strength if strength is None else float(strength)
        if output_type not in ("pil", "np", "latent"):
            raise ValueError(f"Unknown output_type {output_type!r}; use 'pil', 'np' or 'latent'.")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1]; got {strength}. Use 1.0 to ignore the input image.")
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be at least 1; got {num_images_per_prompt}.")
        self._check_task_inputs(image, mask_image)
        prompt_batch = len(prompt) if isinstance(prompt, (list, tuple)) else 1 if prompt is not None else \
            (prompt_embeds.shape[0] if prompt_embeds is not None else None)
        layout.check_arguments(self, layout_args)
        for ext, args in zip(extensions, ext_args):
            ext.check_arguments(self, args, prompt_batch)
        if height is None or width is None:
            sizes = [s for s in (ext.default_size(self, a) for ext, a in zip(extensions, ext_args)) if s]
            if sizes:
                height, width = height or sizes[0][0], width or sizes[0][1]
        height, width = self._output_size(height, width, image)
        image_processing.check_size(height, width, self.vae_scale_factor)
        timings: Dict[str, float] = {}

        with ops.no_grad():
            cross_attention_kwargs = self._apply_lora_scale(cross_attention_kwargs)
            do_cfg = self._do_cfg(guidance_scale)
            cond = self._encode(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                pooled_prompt_embeds, negative_pooled_prompt_embeds, num_images_per_prompt, do_cfg,
                                height, width, original_size, target_size, crops_coords_top_left)
            batch = cond.batch
            generator, seeds = resolve_generators(generator, batch)
            schedule = self._timesteps(num_inference_steps, timesteps, strength)
            # the text embeddings already sit on the models' device: new tensors are placed beside them
            state = self._prepare_latents(batch, height, width, cond.dtype, generator, latents, image, mask_image,
                                          schedule, strength, like=cond.hidden, layout_args=layout_args)
            latents = state.latents
            run = RunContext(ops=ops, cond=cond, batch=batch, num_images_per_prompt=num_images_per_prompt,
                             do_cfg=do_cfg, height=height, width=width, timesteps=[int(t) for t in schedule])
            ext_states = [ext.prepare(self, run, args) for ext, args in zip(extensions, ext_args)]
            hidden = layout.condition(ops, cond, layout_args).hidden  # per frame for a video layout

            timestep_cond = None
            proj_dim = self.unet.config.get("time_cond_proj_dim")
            if proj_dim is not None:
                w = np.full((batch,), guidance_scale - 1.0)
                timestep_cond = ops.from_numpy(guidance_scale_embedding(w, proj_dim), like=latents, dtype=cond.dtype)

            step_kwargs = self._step_kwargs(eta, generator)
            start = time.perf_counter()
            with self.progress_bar(total=len(schedule)) as bar:
                for i, t in enumerate(schedule):
                    t = int(t)
                    model_in = ops.concat([latents, latents], axis=0) if do_cfg else latents
                    model_in = self._unet_input(model_in, state)
                    inputs = UNetInputs()
                    inputs.merge({"added_cond": cond.added, "cross_attention_kwargs": cross_attention_kwargs})
                    if extensions:
                        step = StepContext(index=i, timestep=t, model_input=model_in, latents=latents)
                        for ext, ext_state in zip(extensions, ext_states):
                            inputs.merge(ext.unet_inputs(self, run, ext_state, step))
                    noise_pred = self.unet(model_in, t, hidden, timestep_cond=timestep_cond, **inputs.values)
                    if do_cfg:
                        uncond, text = ops.split(noise_pred, 2, axis=0)
                        noise_pred = uncond + guidance_scale * (text - uncond)
                    latents = self.scheduler.step(noise_pred, t, latents, return_dict=False, **step_kwargs)[0]
                    latents = self._after_step(latents, i, schedule, state)
                    if callback_on_step_end is not None:
                        values = {"latents": latents, "prompt_embeds": cond.hidden}
                        result = callback_on_step_end(self, i, t, {k: values[k] for k in callback_on_step_end_tensor_inputs})
                        latents = (result or {}).get("latents", latents)
                    bar.update()
            timings["denoise_s"] = time.perf_counter() - start
            timings["per_step_s"] = timings["denoise_s"] / max(len(schedule), 1)

            if output_type == "latent":
                images = latents
            else:
                images = layout.postprocess(layout.decode(self, latents, layout_args), output_type)
        if not return_dict:
            return (images,)
        return PipelineOutput(**{layout.output_field: images}, seeds=seeds, timings=timings)
