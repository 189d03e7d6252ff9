"""The same scheduler loop on NumPy, torch and MindSpore float32 tensors gives the same numbers.

Noise comes from a fewstep.Generator (drawn on the host, so every backend gets identical values) and
the stand-in model runs on the host too, so the only thing that differs between the runs is the
backend doing the step's arithmetic: `c * tensor` with a Python-float coefficient and `+` (and a clip
for LCM). Each of those is one correctly rounded float32 operation on every backend, so the results
are expected to be bitwise identical; the assert says so.
"""

import itertools

import numpy as np
import pytest

import fewstep
from fewstep.backends import get_backend

SHAPE = (2, 4, 8, 8)


def _host_model(x: np.ndarray, t: int) -> np.ndarray:
    return (np.tanh(x) * np.float32(0.9) + np.float32(0.1 * np.cos(t / 50.0))).astype(np.float32)


def _loop(backend: str, cls, config: dict, set_kwargs: dict, step_kwargs: dict):
    """Run a full loop on `backend`; return every step's (prev_sample, second output) as NumPy."""
    ops = get_backend(backend)
    scheduler = cls(**config)
    scheduler.set_timesteps(**set_kwargs)
    generator = fewstep.Generator(21)
    x_host = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    x = ops.from_numpy(x_host, dtype="float32")
    outputs = []
    for t in scheduler.timesteps:
        model_output = ops.from_numpy(_host_model(ops.to_numpy(x), int(t)), like=x)
        out = scheduler.step(model_output, t, x, generator=generator, **step_kwargs)
        assert ops.is_tensor(out.prev_sample) and ops.dtype_name(out.prev_sample) == "float32"
        outputs.append((ops.to_numpy(out[0]), ops.to_numpy(out[1])))
        x = out.prev_sample
    return outputs


def _cases():
    for prediction, n in itertools.product(("epsilon", "sample", "v_prediction"), (1, 4, 8)):
        config = dict(prediction_type=prediction)
        for eta in (0.0, 0.3, 1.0):
            yield fewstep.TCDScheduler, config, dict(num_inference_steps=n), dict(eta=eta)
        yield fewstep.LCMScheduler, config, dict(num_inference_steps=n), {}
        yield fewstep.LCMScheduler, dict(config, clip_sample=True, clip_sample_range=0.8), dict(num_inference_steps=n), {}
    yield fewstep.TCDScheduler, {}, dict(num_inference_steps=4, strength=0.5), dict(eta=0.3)
    yield fewstep.LCMScheduler, {}, dict(timesteps=[999, 759, 499, 259], strength=0.5), {}
    yield fewstep.TCDScheduler, dict(rescale_betas_zero_snr=True, prediction_type="v_prediction"), dict(num_inference_steps=4), dict(eta=0.3)


def _assert_identical(backend: str):
    for cls, config, set_kwargs, step_kwargs in _cases():
        reference = _loop("numpy", cls, config, set_kwargs, step_kwargs)
        other = _loop(backend, cls, config, set_kwargs, step_kwargs)
        for i, (a, b) in enumerate(zip(reference, other)):
            for k in (0, 1):
                # Bitwise: every op is one correctly rounded float32 multiply, add or clip on both sides.
                np.testing.assert_array_equal(
                    a[k], b[k], err_msg=f"{backend} vs numpy: {cls.__name__} {config} {set_kwargs} {step_kwargs} step {i} output {k}"
                )


@pytest.mark.torch
@pytest.mark.parity
def test_torch_matches_numpy():
    _assert_identical("torch")


@pytest.mark.mindspore
@pytest.mark.parity
def test_mindspore_matches_numpy():
    _assert_identical("mindspore")


@pytest.mark.mindspore
@pytest.mark.torch
@pytest.mark.parity
def test_lcm_thresholding_on_every_backend():
    # Thresholding makes a host round trip for the quantile; the clip and division run on the backend.
    config = dict(thresholding=True, sample_max_value=2.0, dynamic_thresholding_ratio=0.9)
    results = [_loop(name, fewstep.LCMScheduler, config, dict(num_inference_steps=4), {}) for name in ("numpy", "torch", "mindspore")]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            # The division by the per-item threshold is a tensor-by-tensor float32 division: bitwise too.
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
