"""Nothing in the denoising loop waits for the device: no step reads a model-side tensor on the host.

On a GPU or NPU a host read (`.item()`, `.tolist()`, `.numpy()`, a tensor used as a Python bool or number, a
copy to the host) blocks Python until every queued kernel has run, so the loop can no longer queue the next
step while this one computes. The scheduler's coefficients are NumPy numbers made on the host once per step,
and only the noise draw crosses, host to device. These tests run the loop (`Pipeline._denoise`, every step of
every part's hooks, the UNet and the scheduler) under a detector and fail on the first host read, naming it.

torch: a TorchDispatchMode sees every ATen call; `aten::_local_scalar_dense` is what `.item()`, `bool()`,
`int()` and `float()` come to, `aten::equal` returns a host bool, and a `_to_copy` / `copy_` whose result is on
the CPU while its input is not is a device-to-host copy. `.numpy()`, `__array__` and `.tolist()` do not pass the
dispatcher (they read CPU memory directly), so they are patched on `torch.Tensor` for the loop's duration.

MindSpore: its API gives no dispatch hook. `Tensor.asnumpy`, `.item`, `.tolist`, `__bool__`, `__int__`,
`__float__` and `__index__` (every way Python code reads a tensor's value) are patched for the loop's
duration; a read inside a compiled kernel cannot be seen, a read by the Python around it can.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest

import fewstep
from fewstep.pipelines.base import Pipeline
from tests.pipeline_cases import mask, picture
from tests.test_pipelines_mindspore import _pipe as sampler_pipe

pytestmark = pytest.mark.torch

# (class, tiny folder, scheduler, call arguments): every part that hooks into the loop, with the samplers that draw
# noise every step (TCD with eta, LCM, Euler-ancestral) and classifier-free guidance
CASES = [
    ("StableDiffusionPipeline", "sd15", "tcd", dict(eta=0.3, guidance_scale=3.0, negative_prompt="blurry")),
    ("StableDiffusionPipeline", "sd15", "lcm", {}),
    ("StableDiffusionPipeline", "sd15", "euler-a-trailing", dict(guidance_scale=2.0)),
    ("StableDiffusionPipeline", "sd15", "ddim-trailing", {}),
    ("StableDiffusionImg2ImgPipeline", "sd15", "tcd", dict(image=picture(1), strength=0.6, eta=0.3)),
    ("StableDiffusionInpaintPipeline", "sd15", "tcd", dict(image=picture(2), mask_image=mask(), strength=0.99)),
    ("StableDiffusionInpaintPipeline", "sd15-inpaint", "lcm", dict(image=picture(2), mask_image=mask())),
    ("StableDiffusionXLPipeline", "sdxl", "tcd", dict(eta=0.3, guidance_scale=3.0)),
]
CALL = dict(prompt="a red fox in the snow", num_inference_steps=2, height=64, width=64, output_type="np")


class HostRead(AssertionError):
    """A step read a tensor on the host."""


def _refuse(name):
    def read(*args, **kwargs):
        raise HostRead(f"a step read a tensor on the host: Tensor.{name}()")
    return read


@contextmanager
def _refusing(monkeypatch, tensor_class, names):
    """`tensor_class`'s methods `names` raise HostRead inside the block."""
    with monkeypatch.context() as patch:
        for name in names:
            patch.setattr(tensor_class, name, _refuse(name))
        yield


def _torch_detector():
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    host_reads = {aten._local_scalar_dense.default, aten.equal.default}
    copies = {aten._to_copy.default, aten.copy_.default}

    class NoHostReads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in host_reads:
                raise HostRead(f"a step read a tensor on the host: aten::{func.__name__}")
            result = func(*args, **kwargs)
            if func in copies:
                source = args[1] if func is aten.copy_.default else args[0]
                if result.device.type == "cpu" and source.device.type != "cpu":
                    raise HostRead(f"a step copied a tensor from {source.device} to the host: aten::{func.__name__}")
            return result

    @contextmanager
    def detector(monkeypatch):
        with _refusing(monkeypatch, torch.Tensor, ("numpy", "__array__", "tolist")), NoHostReads():
            yield

    return detector


def _mindspore_detector():
    import mindspore

    return lambda monkeypatch: _refusing(monkeypatch, mindspore.Tensor, (
        "asnumpy", "item", "tolist", "__bool__", "__int__", "__float__", "__index__"))


DETECTORS = {"torch": _torch_detector, "mindspore": _mindspore_detector}


@pytest.fixture
def watched_loop(monkeypatch):
    """Run `Pipeline._denoise` (the loop, all steps) under the backend's detector; returns a call(pipe, **kw)."""
    loop = Pipeline._denoise

    def watched(self, *args, **kwargs):
        with DETECTORS[self.ops.name]()(monkeypatch):
            return loop(self, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "_denoise", watched)
    return lambda pipe, **kwargs: pipe(generator=fewstep.Generator(0), **{**CALL, **kwargs}).images


@pytest.mark.parametrize("class_name,kind,scheduler,extra", CASES, ids=[f"{c}-{k}-{s}" for c, k, s, _ in CASES])
def test_no_step_reads_a_tensor_on_the_host(watched_loop, class_name, kind, scheduler, extra):
    image = watched_loop(sampler_pipe(class_name, kind, "torch", scheduler), **extra)
    assert np.isfinite(image).all() and image.std() > 0


# reads planted in the scheduler's step, by name
PLANTED = {"item": lambda x: x.flatten()[0].item(), "bool": lambda x: bool((x > 0).any()),
           "tolist": lambda x: x.flatten()[:2].tolist(), "numpy": lambda x: x.numpy(),
           "cpu-numpy": lambda x: x.cpu().numpy(), "asnumpy": lambda x: x.asnumpy()}


def _plant(monkeypatch, pipe, read: str) -> None:
    step = type(pipe.scheduler).step

    def reading_step(self, model_output, *args, **kwargs):
        PLANTED[read](model_output)
        return step(self, model_output, *args, **kwargs)

    monkeypatch.setattr(type(pipe.scheduler), "step", reading_step)


@pytest.mark.parametrize("read", ["item", "bool", "tolist", "numpy", "cpu-numpy"])
def test_the_detector_fails_a_step_that_reads_on_the_host(watched_loop, monkeypatch, read):
    """A host read planted in the scheduler's step is caught: the tests above can fail (the same call without it is
    the first case above, which passes)."""
    pipe = sampler_pipe("StableDiffusionPipeline", "sd15", "torch", "tcd")
    _plant(monkeypatch, pipe, read)
    with pytest.raises(HostRead, match=r"^a step read a tensor on the host"):
        watched_loop(pipe)


@pytest.mark.mindspore
@pytest.mark.parametrize("read", [None, "asnumpy", "item", "bool"])
def test_no_step_reads_a_mindspore_tensor_on_the_host(watched_loop, monkeypatch, read):
    pipe = sampler_pipe("StableDiffusionPipeline", "sd15", "mindspore", "tcd")
    if read is None:
        image = watched_loop(pipe, eta=0.3, guidance_scale=3.0)
        assert np.isfinite(image).all() and image.std() > 0
        return
    _plant(monkeypatch, pipe, read)
    with pytest.raises(HostRead, match=r"^a step read a tensor on the host"):
        watched_loop(pipe)
