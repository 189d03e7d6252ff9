"""Image inputs as diffusers takes them (issue 26 item 1) on MindSpore: the same input forms as
tests/test_image_inputs_torch.py, MindSpore tensors where torch's test passes torch tensors, against fewstep's
torch backend given the torch tensors (which that test holds to diffusers), on the same tiny weights and seed."""

import warnings

import numpy as np
import pytest

import fewstep
from tests.image_input_cases import CASES, NAMES, as_inputs, call, ours
from tests.pipeline_cases import SIZE

pytestmark = [pytest.mark.mindspore, pytest.mark.parity]

IMAGE_ATOL = 1e-4
# PIL and NumPy inputs are read by the same NumPy code on both backends (the torch test covers them against
# diffusers); what differs on MindSpore is the tensor path, and the inpainting mask read through it
TENSOR_CASES = [n for n in NAMES if "tensor" in n or "latents" in n] + ["inpaint-mask-near-black"]


def _run(case, inputs, backend):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return np.asarray(ours(case, backend)(generator=fewstep.Generator(0),
                                             **call(case, as_inputs(inputs, backend))).images)


@pytest.mark.parametrize("name", TENSOR_CASES)
def test_input_form_matches_the_torch_backend(name):
    case = CASES[name]
    inputs = case.inputs()
    got, want = _run(case, inputs, "mindspore"), _run(case, inputs, "torch")
    assert got.shape == want.shape == (case.prompts, SIZE, SIZE, 3)
    err = np.abs(got - want).max()
    assert err <= IMAGE_ATOL, f"{name}: max |mindspore - torch| = {err:.3g}"


def test_torch_tensor_on_a_mindspore_pipeline():
    import torch

    case = CASES["img2img-tensor-nchw-01"]
    with pytest.raises(ValueError, match="is a torch tensor but this pipeline runs on mindspore: convert") as err:
        ours(case, "mindspore")(**call(case, dict(image=torch.zeros((1, 3, SIZE, SIZE)))))
    assert "\n" not in str(err.value)

