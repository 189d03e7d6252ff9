"""Recording what one pipeline call computes, stage by stage, on any pipeline: fewstep's, diffusers' or
mindone's.

Nothing in the denoising loop knows about it. While a `Recorder` is active it holds forward hooks on
the pipeline's own models (each text encoder, the UNet, the VAE decoder, ControlNets / T2I-Adapters)
and wraps the scheduler's `step`, which every loop calls with the guided prediction and returns the
next latents. Outside it nothing is installed, so a pipeline that is not being compared pays nothing.
Tensors go to the host (NumPy) only while recording.

Stages, in the order they happen: `text_encoder.hidden` / `.pooled` (and `text_encoder_2.*`) per
call, `latents.initial` (what the loop starts from), then per step `unet.input`, `unet.output`, `<adapter>.residual<j>`, `guidance` (what the scheduler
is given) and `scheduler` (the latents it returns), then `vae.decoder`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import numpy as np

from fewstep.backends import framework_of, get_backend
from fewstep.backends.hooks import add_forward_hook, remove_all

TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
ADAPTER_MODELS = ("controlnet", "adapter")


def framework_model(component) -> Any:
    """The torch module / MindSpore Cell behind a pipeline component (fewstep wraps them; diffusers and
    mindone pipelines hold them directly), or None."""
    if component is None:
        return None
    if framework_of(component) in ("torch", "mindspore"):
        return component
    module = getattr(component, "module", None)
    return module if framework_of(module) in ("torch", "mindspore") else None


def to_host(value: Any) -> Any:
    """Framework tensors in a (nested) value as NumPy arrays; everything else as it is."""
    if framework_of(value) in ("torch", "mindspore"):
        return get_backend(value).to_numpy(value)
    if isinstance(value, dict):
        return {k: to_host(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_host(v) for v in value]
    if isinstance(value, tuple):
        return tuple(to_host(v) for v in value)
    return value


def host_tensors(value: Any) -> List[np.ndarray]:
    """Every tensor in a (nested) model output, in order, as NumPy arrays."""
    if framework_of(value) in ("torch", "mindspore"):
        return [get_backend(value).to_numpy(value)]
    if isinstance(value, np.ndarray):
        return [value]
    if hasattr(value, "keys") and hasattr(value, "values"):  # diffusers / transformers ModelOutput, dicts
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [a for v in value for a in host_tensors(v)]
    return []


@dataclass
class ModelCall:
    """One call of a model, its inputs kept on the host so the call can be rerun (per-layer localisation)."""

    module: Any
    args: tuple
    kwargs: dict


@dataclass
class Recording:
    records: List[Tuple[str, int, np.ndarray]] = field(default_factory=list)   # (stage, index, array)
    calls: Dict[Tuple[str, int], ModelCall] = field(default_factory=dict)      # (model, index) -> inputs
    images: Any = None                                                         # the call's output images
    _counts: Dict[str, int] = field(default_factory=dict)

    def add(self, stage: str, array: np.ndarray, index: int = None) -> int:
        if index is None:
            index = self._counts.get(stage, 0)
            self._counts[stage] = index + 1
        self.records.append((stage, index, np.asarray(array)))
        return index

    def add_before(self, before: str, stage: str, array: np.ndarray) -> None:
        """Record `stage` (its first call) in front of the first record of `before`: the latents a loop
        starts from are only seen at its first scheduler step, but come before the first UNet call."""
        self._counts[stage] = 1
        position = next((i for i, r in enumerate(self.records) if r[0] == before), len(self.records))
        self.records.insert(position, (stage, 0, np.asarray(array)))

    def next_call(self, model: str) -> int:
        index = self._counts.get("call:" + model, 0)
        self._counts["call:" + model] = index + 1
        return index


def _text_outputs(module, output) -> Tuple[Any, Any]:
    """(last hidden state, pooled) of a CLIP text encoder's output, whether a ModelOutput or a tuple.
    The pooled output is the projected `text_embeds` for a ...WithProjection model (SDXL's second
    encoder), else `pooler_output`."""
    projected = type(module).__name__.endswith("WithProjection")
    if hasattr(output, "keys"):
        return output.get("last_hidden_state"), output.get("text_embeds" if projected else "pooler_output")
    return (output[1], output[0]) if projected else (output[0], output[1])


class Recorder:
    """`with Recorder(pipe) as recording: pipe(...)` records every stage of that call."""

    def __init__(self, pipe):
        self.pipe = pipe
        self._handles: List[Any] = []
        self._scheduler = None
        self.recording = Recording()

    # -- hooks -----------------------------------------------------------------------------

    def _keep_call(self, model: str, module, args, kwargs) -> int:
        index = self.recording.next_call(model)
        self.recording.calls[(model, index)] = ModelCall(module, to_host(tuple(args)), to_host(dict(kwargs)))
        return index

    def _text_hook(self, name: str):
        def hook(module, args, kwargs, output):
            index = self._keep_call(name, module, args, kwargs)
            hidden, pooled = _text_outputs(module, output)
            for part, value in (("hidden", hidden), ("pooled", pooled)):
                if value is not None:
                    self.recording.add(f"{name}.{part}", to_host(value), index)
        return hook

    def _unet_hook(self, module, args, kwargs, output):
        index = self._keep_call("unet", module, args, kwargs)
        sample = kwargs["sample"] if "sample" in kwargs else args[0]
        self.recording.add("unet.input", to_host(sample), index)
        self.recording.add("unet.output", host_tensors(output)[0], index)

    def _adapter_hook(self, name: str):
        def hook(module, args, kwargs, output):
            index = self._keep_call(name, module, args, kwargs)
            for j, tensor in enumerate(host_tensors(output)):
                self.recording.add(f"{name}.residual{j}", tensor, index)
        return hook

    def _decoder_hook(self, module, args, kwargs, output):
        index = self._keep_call("vae.decoder", module, args, kwargs)
        self.recording.add("vae.decoder", host_tensors(output)[0], index)

    def _wrap_scheduler(self, scheduler) -> None:
        step = scheduler.step  # the bound method; the wrapper shadows it on this instance only

        @functools.wraps(step)  # keeps the signature pipelines inspect for eta / generator
        def recorded_step(model_output, timestep, sample, *args, **kwargs):
            if "latents.initial" not in self.recording._counts:
                self.recording.add_before("unet.input", "latents.initial", to_host(sample))
            out = step(model_output, timestep, sample, *args, **kwargs)
            self.recording.add("guidance", to_host(model_output))
            prev = out[0] if isinstance(out, tuple) else out.prev_sample
            self.recording.add("scheduler", to_host(prev))
            return out

        scheduler.step = recorded_step
        self._scheduler = scheduler

    # -- context ---------------------------------------------------------------------------

    def __enter__(self) -> Recording:
        pipe = self.pipe
        try:
            for name in TEXT_ENCODERS:
                module = framework_model(getattr(pipe, name, None))
                if module is not None:
                    self._handles.append(add_forward_hook(module, self._text_hook(name)))
            self._handles.append(add_forward_hook(framework_model(pipe.unet), self._unet_hook))
            for name in ADAPTER_MODELS:
                component = getattr(pipe, name, None)
                parts = component if isinstance(component, (list, tuple)) else [component]
                for part in parts:
                    module = framework_model(part)
                    if module is not None:
                        self._handles.append(add_forward_hook(module, self._adapter_hook(name)))
            vae = framework_model(pipe.vae)
            self._handles.append(add_forward_hook(vae.decoder, self._decoder_hook))
            self._wrap_scheduler(pipe.scheduler)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self.recording

    def __exit__(self, *exc) -> None:
        remove_all(self._handles)
        if self._scheduler is not None:
            del self._scheduler.step  # the class's method shows through again
            self._scheduler = None
