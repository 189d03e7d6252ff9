"""The demo's dataset and checker (`fewstep.demo`): deterministic data, a grammar that round-trips, and a
checker that is right on real and mildly degraded pictures and wrong when the prompt is. NumPy only, < 10 s."""

import numpy as np
import pytest

from fewstep.demo import (COLOURS, SHAPES, Attributes, all_attributes, all_prompts, caption, classify, coverage,
                          evaluation_prompts, make_dataset, parse_prompt, render, sample_attributes, score_images)
from fewstep.demo.dataset import CAPTION_FORMS


@pytest.fixture(scope="module")
def data():
    return make_dataset(500, seed=1)


def degrade(images: np.ndarray, sigma_blur: float = 0.7, sigma_noise: float = 8 / 255, seed: int = 0):
    """Floats in [0, 1]: a separable Gaussian blur (edges replicated) plus Gaussian noise -- roughly what a
    VAE round trip and a diffusion sampler do to an edge and a flat area."""
    radius = int(np.ceil(3 * sigma_blur))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_blur) ** 2)
    kernel /= kernel.sum()
    out = images.astype(np.float64) / 255
    for axis in (1, 2):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in range(4)], mode="edge")
        length = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(i, i + length), axis=axis) for i, w in enumerate(kernel))
    noise = np.random.default_rng(seed).normal(0, sigma_noise, out.shape)
    return np.clip(out + noise, 0, 1).astype(np.float32)


def test_dataset_is_deterministic_per_seed():
    a_images, a_prompts, a_attrs = make_dataset(20, seed=3)
    b_images, b_prompts, b_attrs = make_dataset(20, seed=3)
    c_images, _, _ = make_dataset(20, seed=4)
    np.testing.assert_array_equal(a_images, b_images)
    assert a_prompts == b_prompts and a_attrs == b_attrs
    assert not np.array_equal(a_images, c_images)
    # a larger set from the same seed starts with the same images
    np.testing.assert_array_equal(make_dataset(30, seed=3)[0][:20], a_images)
    assert a_images.dtype == np.uint8 and a_images.shape == (20, 32, 32, 3)
    assert make_dataset(2, seed=0, size=48)[0].shape == (2, 48, 48, 3)


def test_every_caption_round_trips():
    assert len(all_attributes()) == len(all_prompts()) == len(set(all_prompts())) == 60
    for attrs in all_attributes():
        for form in range(len(CAPTION_FORMS)):
            assert parse_prompt(caption(attrs, form)) == attrs
            assert parse_prompt("  " + caption(attrs, form).upper() + ".") == attrs
    assert caption(Attributes("circle", "red", "blue")) == "a red circle on a blue background"
    # articles are optional
    assert parse_prompt("Red circle on blue background") == Attributes("circle", "red", "blue")


@pytest.mark.parametrize("prompt", ["a red fox in the snow", "a red hexagon on a blue background",
                                    "a orange circle on a blue background", "", "a red circle"])
def test_out_of_vocabulary_prompts_name_what_the_demo_knows(prompt):
    with pytest.raises(ValueError) as error:
        parse_prompt(prompt)
    for word in SHAPES + tuple(COLOURS):
        assert word in str(error.value)


def test_a_shape_on_its_own_colour_is_refused():
    with pytest.raises(ValueError, match="own colour"):
        parse_prompt("a red circle on a red background")
    with pytest.raises(ValueError, match="invisible"):
        render(Attributes("circle", "red", "red"), np.random.default_rng(0))


def test_background_never_equals_the_shape_colour_and_shapes_stay_whole(data):
    images, prompts, attrs = data
    assert all(a.colour != a.background for a in attrs)
    assert {a.shape for a in attrs} == set(SHAPES) and {a.colour for a in attrs} == set(COLOURS)
    rng = np.random.default_rng(0)
    assert len({sample_attributes(rng) for _ in range(2000)}) == 60
    # the three-pixel border is pure background in every image
    for image, a in zip(images, attrs):
        ring = np.concatenate([image[:3].reshape(-1, 3), image[-3:].reshape(-1, 3),
                               image[:, :3].reshape(-1, 3), image[:, -3:].reshape(-1, 3)])
        assert (ring == COLOURS[a.background]).all()


def test_the_palette_is_far_apart():
    palette = np.array(list(COLOURS.values()), float)
    distances = np.linalg.norm(palette[:, None] - palette[None], axis=-1)[np.triu_indices(len(palette), 1)]
    assert distances.min() > 280  # 255 * sqrt(5) / 2, the best five colours on the {0, 128, 255} grid


def test_evaluation_prompts_are_fixed_balanced_and_distinctly_seeded():
    pairs = evaluation_prompts(420, seed=0)
    assert pairs == evaluation_prompts(420, seed=0) and pairs != evaluation_prompts(420, seed=1)
    prompts, seeds = zip(*pairs)
    assert all(prompts.count(p) == 7 for p in all_prompts())
    assert len(set(seeds)) == 420 and all(isinstance(s, int) for s in seeds)
    assert evaluation_prompts(100, seed=0) == pairs[:100]


def test_checker_is_right_on_real_data(data):
    images, prompts, _ = data
    scores = score_images(images, prompts)
    assert scores["n"] == 500
    for key in ("shape", "colour", "background", "all"):
        assert scores[key] >= 0.99, scores
        assert scores[key + "_se"] == pytest.approx(np.sqrt(scores[key] * (1 - scores[key]) / 500))


@pytest.mark.parametrize("sigma_blur, sigma_noise, floor", [(0.7, 8 / 255, 0.95), (1.0, 16 / 255, 0.95)])
def test_checker_survives_blur_and_noise(data, sigma_blur, sigma_noise, floor):
    # (measured: 100% on all four at both settings; the floor leaves room for other seeds)
    images, prompts, _ = data
    scores = score_images(degrade(images, sigma_blur, sigma_noise), prompts)
    for key in ("shape", "colour", "background", "all"):
        assert scores[key] >= floor, scores


def _draw(mask: np.ndarray) -> np.ndarray:
    red, blue = (np.array(COLOURS[name], np.float32) for name in ("red", "blue"))
    return np.rint(blue + mask[..., None] * (red - blue)).astype(np.uint8)


def test_checker_names_no_shape_for_other_figures():
    bar = coverage("square", 16, 16, 4, 16, 32)
    y, x = np.mgrid[:32, :32] + 0.5
    figures = {
        "cross": np.maximum(bar, bar.T),
        "ring": coverage("circle", 16, 16, 16, 16, 32) - coverage("circle", 16, 16, 8, 8, 32),
        "L": np.maximum(coverage("square", 12, 16, 4, 16, 32), coverage("square", 16, 22, 12, 4, 32)),
        "diamond": (np.abs(x - 16) + np.abs(y - 16) <= 8).astype(np.float32),  # a square on its corner
    }
    for name, mask in figures.items():
        assert classify(_draw(mask)) == Attributes(None, "red", "blue"), name
    # while a triangle upside down is still a triangle
    assert classify(_draw(coverage("triangle", 16, 16, 14, 14, 32)[::-1])).shape == "triangle"


def test_checker_accepts_floats_and_pil_images(data):
    from PIL import Image

    images, prompts, attrs = data
    assert classify(images[0]) == attrs[0]
    assert classify(Image.fromarray(images[1])) == attrs[1]
    assert score_images([Image.fromarray(x) for x in images[:20]], prompts[:20])["all"] == 1.0
    assert score_images(images[:20].astype(np.float32) / 255, attrs[:20])["all"] == 1.0


def test_checker_is_not_always_right(data):
    images, prompts, attrs = data
    swapped = [Attributes(a.shape, a.background, a.colour) for a in attrs]
    scores = score_images(images, swapped)
    assert scores["colour"] == scores["background"] == scores["all"] == 0.0
    wrong_shape = [Attributes(SHAPES[(SHAPES.index(a.shape) + 1) % 3], a.colour, a.background) for a in attrs]
    assert score_images(images, wrong_shape)["shape"] == 0.0
    # shuffled prompts: all three right by chance is 1/60
    shuffled = [prompts[i] for i in np.random.default_rng(0).permutation(len(prompts))]
    assert score_images(images, shuffled)["all"] < 0.06
    # a blank picture has no shape
    blank = np.full((32, 32, 3), COLOURS["blue"], np.uint8)
    assert classify(blank) == Attributes(None, None, "blue")
