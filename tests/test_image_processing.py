"""fewstep's NumPy image reading (pipelines/image_processing.py) against diffusers' VaeImageProcessor, function by
function, on shapes and values that exercise the edge cases: odd resize ratios, masks at the border, boxes that
must be shifted back inside the picture, aspect ratios both ways."""

import numpy as np
import PIL.Image
import pytest

from fewstep.pipelines import image_processing

pytestmark = pytest.mark.torch


def _processor(**kwargs):
    from diffusers.image_processor import VaeImageProcessor

    return VaeImageProcessor(vae_scale_factor=8, **kwargs)


@pytest.mark.parametrize("size, out", [((7, 13), (64, 40)), ((64, 64), (37, 91)), ((100, 3), (3, 100)), ((5, 5), (10, 10))])
def test_nearest_resize_is_torch_interpolate(size, out):
    import torch

    batch = np.random.default_rng(0).random((2, 3, *size)).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(batch), size=out).numpy()
    np.testing.assert_array_equal(image_processing.nearest_resize(batch, *out), want)


def _box_mask(w, h, box):
    m = np.zeros((h, w), np.uint8)
    x1, y1, x2, y2 = box
    m[y1:y2, x1:x2] = 255
    return PIL.Image.fromarray(m)


@pytest.mark.parametrize("mask_box, out, pad", [
    ((10, 20, 30, 25), (64, 64), 0), ((0, 0, 5, 60), (64, 32), 4), ((50, 40, 64, 48), (32, 64), 10),
    ((30, 0, 34, 64), (48, 80), 2), ((0, 0, 64, 64), (64, 64), 3),
])
def test_crop_region_is_diffusers(mask_box, out, pad):
    mask = _box_mask(64, 64, mask_box)
    want = _processor().get_crop_region(mask, out[1], out[0], pad=pad)
    assert image_processing.crop_region(mask, out[1], out[0], pad) == tuple(want)


@pytest.mark.parametrize("size, out", [((40, 64), (64, 64)), ((64, 20), (32, 64)), ((64, 64), (48, 64)), ((33, 71), (64, 48))])
def test_fill_and_crop_resize_are_diffusers(size, out):
    rng = np.random.default_rng(1)
    image = PIL.Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    processor = _processor()
    np.testing.assert_array_equal(np.asarray(image_processing.fill_resize(image, out[1], out[0])),
                                  np.asarray(processor._resize_and_fill(image, out[1], out[0])))
    np.testing.assert_array_equal(np.asarray(image_processing.crop_resize(image, out[1], out[0])),
                                  np.asarray(processor._resize_and_crop(image, out[1], out[0])))


@pytest.mark.parametrize("mask", [
    np.random.default_rng(2).random((48, 40)).astype(np.float32),           # HW soft mask
    np.random.default_rng(3).random((2, 48, 40)).astype(np.float32),        # NHW
    np.random.default_rng(4).random((48, 40, 1)).astype(np.float32),        # HW1
    np.random.default_rng(5).random((1, 48, 40, 1)).astype(np.float32),     # NHW1
])
def test_masks_read_as_diffusers_mask_processor(mask):
    import torch

    want = _processor(do_normalize=False, do_binarize=True, do_convert_grayscale=True).preprocess(
        mask, height=64, width=64).numpy()
    got = image_processing.preprocess_mask(mask, 64, 64)
    np.testing.assert_array_equal(got, want)
    tensor = torch.from_numpy(mask if mask.ndim != 4 else mask.transpose(0, 3, 1, 2).copy())
    if mask.ndim == 3 and mask.shape[-1] == 1:
        return  # an HW1 tensor is a batch of H masks of width 1 to diffusers: not the same picture
    from fewstep.backends import get_backend

    want_t = _processor(do_normalize=False, do_binarize=True, do_convert_grayscale=True).preprocess(
        tensor, height=64, width=64).numpy()
    np.testing.assert_array_equal(image_processing.preprocess_mask(tensor, 64, 64, get_backend("torch")), want_t)


@pytest.mark.parametrize("image", [
    np.random.default_rng(6).random((40, 56, 3)).astype(np.float32),              # HWC
    np.random.default_rng(7).random((2, 40, 56, 3)).astype(np.float32),           # NHWC
    [np.random.default_rng(8).random((40, 56, 3)).astype(np.float32)] * 2,        # list of HWC
    PIL.Image.fromarray(np.random.default_rng(9).integers(0, 255, (40, 56, 3), dtype=np.uint8)),
])
def test_images_read_as_diffusers_image_processor(image):
    want = _processor().preprocess(image, height=64, width=48).numpy()
    np.testing.assert_allclose(image_processing.preprocess_image(image, 64, 48), want, atol=1e-7)
