"""Image inputs as diffusers takes them (issue 26 item 1), on torch against diffusers' class of the same name on
the same tiny weights: PIL, lists, NumPy HW / HWC / NHWC, torch CHW / NCHW in [0, 1] and [-1, 1], other sizes,
latents as `image`, masks (near-black, soft, tensors), ControlNet and T2I-Adapter tensors. Each case with an
alternative also shows that the input matters. Bad input gets one line naming the fix, before any step."""

import warnings

import numpy as np
import PIL.Image
import pytest

import fewstep
from tests.image_input_cases import (CASES, NAMES, WITH_ALTERNATIVE, Tensor, array_image, as_inputs, call, ours,
                                     reference)
from tests.pipeline_cases import SIZE, mask, picture

pytestmark = pytest.mark.torch

IMAGE_ATOL = 1e-4   # float32 coefficients through the VAE, as the other pipeline tests
MIN_EFFECT = 1e-2


def _run(pipe, case, inputs, framework, seed=0):
    import torch

    generator = fewstep.Generator(seed) if framework == "fewstep" else torch.Generator().manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # diffusers' [-1, 1] tensor warning; ours is checked below
        return np.asarray(pipe(generator=generator, **call(case, as_inputs(inputs, "torch"))).images)


@pytest.mark.parametrize("name", NAMES)
def test_input_form_matches_diffusers(name):
    case = CASES[name]
    inputs = case.inputs()
    got = _run(ours(case, "torch"), case, inputs, "fewstep")
    want = _run(reference(case), case, inputs, "diffusers")
    assert got.shape == want.shape == (case.prompts, SIZE, SIZE, 3), (got.shape, want.shape)
    err = np.abs(got - want).max()
    assert err <= IMAGE_ATOL, f"{name}: max |fewstep - diffusers| = {err:.3g}"


@pytest.mark.parametrize("name", WITH_ALTERNATIVE)
def test_the_input_changes_the_image(name):
    case = CASES[name]
    pipe = ours(case, "torch")
    one = _run(pipe, case, case.inputs(), "fewstep")
    other = _run(pipe, case, case.alternative(), "fewstep")
    assert np.abs(one - other).max() > MIN_EFFECT, name


def test_near_black_mask_keeps_the_whole_image():
    """Pixel values 4-5 scale to ~0.02 and binarise to 0: nothing is masked, as diffusers reads it (the image
    equals the run with an all-black mask)."""
    case = CASES["inpaint-mask-near-black"]
    pipe = ours(case, "torch")
    near_black = _run(pipe, case, case.inputs(), "fewstep")
    black = _run(pipe, case, dict(image=picture(3), mask_image=np.zeros((SIZE, SIZE), np.float32)), "fewstep")
    assert np.abs(near_black - black).max() == 0.0


def test_minus_one_to_one_tensor_warns_and_equals_the_zero_to_one_tensor():
    case = CASES["img2img-tensor-nchw-01"]
    pipe = ours(case, "torch")
    zero_one = _run(pipe, case, case.inputs(), "fewstep")
    with pytest.warns(FutureWarning, match=r"taken as already in \[-1, 1\]"):
        pm1 = np.asarray(pipe(generator=fewstep.Generator(0),
                              **call(case, as_inputs(CASES["img2img-tensor-nchw-pm1"].inputs(), "torch"))).images)
    assert np.abs(zero_one - pm1).max() <= IMAGE_ATOL


def _refused(pipe_name, kind, match, part=None, **inputs):
    case = CASES[next(n for n in NAMES if CASES[n].pipeline == pipe_name)]
    pipe = ours(case, "torch")
    pipe.scheduler.set_timesteps(3)  # a schedule no call of these tests makes: a call that got to work resets it
    before = np.asarray(pipe.scheduler.timesteps).copy()
    with pytest.raises(ValueError, match=match) as err:
        pipe(**call(case, as_inputs(inputs, "torch")))
    assert "\n" not in str(err.value)
    assert np.array_equal(np.asarray(pipe.scheduler.timesteps), before)  # refused before any work


def test_tensor_with_a_wrong_channel_count():
    _refused("StableDiffusionImg2ImgPipeline", "sd15", "image has 2 channels; pass an RGB image",
             image=Tensor(np.zeros((1, 2, SIZE, SIZE), np.float32)))


def test_mask_that_is_not_one_or_three_channels():
    _refused("StableDiffusionInpaintPipeline", "sd15-inpaint", "mask_image has 2 channels; pass a one-channel",
             image=picture(3), mask_image=Tensor(np.zeros((1, 2, SIZE, SIZE), np.float32)))


def test_control_tensor_with_a_wrong_channel_count():
    _refused("StableDiffusionControlNetPipeline", "sd15", "the control image has 1 channels; the model takes 3",
             image=Tensor(np.zeros((1, 1, SIZE, SIZE), np.float32)))


def test_pixels_out_of_range():
    _refused("StableDiffusionImg2ImgPipeline", "sd15", "divide 0-255 values by 255",
             image=np.asarray(picture(3), np.float32))


def test_latents_for_a_nine_channel_inpainting_unet():
    _refused("StableDiffusionInpaintPipeline", "sd15-inpaint", "needs the masked picture",
             image=Tensor(np.zeros((1, 4, SIZE // 2, SIZE // 2), np.float32)), mask_image=mask())


def test_nan_pixels():
    image = np.full((SIZE, SIZE, 3), np.nan, np.float32)
    _refused("StableDiffusionImg2ImgPipeline", "sd15", "NaN or infinite", image=image)


@pytest.mark.mindspore
def test_mindspore_tensor_on_a_torch_pipeline():
    import mindspore

    _refused("StableDiffusionImg2ImgPipeline", "sd15", "is a mindspore tensor but this pipeline runs on torch: convert",
             image=mindspore.Tensor(np.zeros((1, 3, SIZE, SIZE), np.float32)))


def _small_mask(size=SIZE):
    m = np.zeros((size, size), np.uint8)
    m[20:36, 28:40] = 255  # a 16 x 12 box: the crop is grown by the padding and to the output's aspect ratio
    return PIL.Image.fromarray(m)


@pytest.mark.parametrize("padding", [0, 6])
def test_padding_mask_crop_matches_diffusers(padding):
    """diffusers' padding_mask_crop: the box around the mask (padded, widened to the aspect ratio) is cut from
    image and mask, fitted to the output size, repainted, and pasted back over the original."""
    import torch

    case = CASES["inpaint-mask-pil"]
    inputs = dict(image=picture(3), mask_image=_small_mask(), padding_mask_crop=padding, output_type="pil")
    got = np.asarray(ours(case, "torch")(generator=fewstep.Generator(0), **call(case, inputs)).images[0], np.float32)
    want = np.asarray(reference(case)(generator=torch.Generator().manual_seed(0), **call(case, inputs)).images[0],
                      np.float32)
    assert got.shape == want.shape == (SIZE, SIZE, 3)
    assert np.abs(got - want).max() <= 1.0  # uint8 pixels: at most one level from rounding
    plain = np.asarray(ours(case, "torch")(generator=fewstep.Generator(0), **call(
        case, {**inputs, "padding_mask_crop": None})).images[0], np.float32)
    assert np.abs(got - plain).max() / 255 > MIN_EFFECT
    outside = np.asarray(_small_mask()) == 0
    kept = np.abs(got - np.asarray(picture(3), np.float32))[outside]
    assert kept.max() <= 1.0  # the original is kept where the mask is black


def test_padding_mask_crop_needs_pil_inputs_and_output():
    _refused("StableDiffusionInpaintPipeline", "sd15-inpaint", "padding_mask_crop needs image= and mask_image= as "
             "single PIL images", image=array_image(3), mask_image=_small_mask(), padding_mask_crop=4, output_type="pil")
    _refused("StableDiffusionInpaintPipeline", "sd15-inpaint", "needs output_type='pil'", image=picture(3),
             mask_image=_small_mask(), padding_mask_crop=4)
    _refused("StableDiffusionInpaintPipeline", "sd15-inpaint", "padding_mask_crop must be a whole number",
             image=picture(3), mask_image=_small_mask(), padding_mask_crop=2.5, output_type="pil")
