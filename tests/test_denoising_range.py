"""denoising_end / denoising_start (issue 26 item 2): the SDXL base stops at a share of the denoising and hands
its latents (`output_type="latent"`) to the refiner, which starts there, as diffusers' ensemble-of-experts guide
runs them; against diffusers on the same tiny weights, torch generators in diffusers, fewstep.Generator here."""

import numpy as np
import pytest

import fewstep
from fewstep import pipelines
from fewstep.testing import tiny_pipeline, tiny_refiner
from tests.pipeline_cases import SIZE, mask, picture

pytestmark = pytest.mark.torch

IMAGE_ATOL = 1e-4
MIN_EFFECT = 1e-2
PROMPT = "a red fox in the snow"
CALL = dict(prompt=PROMPT, num_inference_steps=4, guidance_scale=1.5, negative_prompt="blurry", eta=0.3)

_loaded = {}


def _folder(kind):
    """A tiny pipeline kind, or "refiner" / "refiner-inpaint": the tiny SDXL refiner (text_encoder_2 and the VAE
    are the tiny SDXL base's)."""
    if kind.startswith("refiner"):
        return tiny_refiner(task="inpaint" if kind.endswith("inpaint") else "img2img")
    return tiny_pipeline(kind)


def _ours(name, folder_kind="sdxl"):
    key = ("ours", name, folder_kind)
    if key not in _loaded:
        pipe = getattr(pipelines, name).from_pretrained(_folder(folder_kind), backend="torch")
        pipe.set_progress_bar_config(disable=True)
        _loaded[key] = pipe
    pipe = _loaded[key]
    pipe.scheduler = fewstep.TCDScheduler.from_config(pipe.scheduler.config)
    return pipe


def _theirs(name, folder_kind="sdxl"):
    import diffusers

    key = ("diffusers", name, folder_kind)
    if key not in _loaded:
        pipe = getattr(diffusers, name).from_pretrained(_folder(folder_kind))
        pipe.set_progress_bar_config(disable=True)
        _loaded[key] = pipe
    pipe = _loaded[key]
    pipe.scheduler = diffusers.TCDScheduler.from_config(pipe.scheduler.config)
    return pipe


def _generator(side, seed):
    import torch

    return fewstep.Generator(seed) if side == "ours" else torch.Generator().manual_seed(seed)


def _ensemble(side, second="StableDiffusionXLImg2ImgPipeline", second_kind="sdxl", split=0.8, **second_inputs):
    """The guide's split at 0.8, with 8 TCD steps: the base runs 7 ([999 ... 259]), the refiner the last ([139])."""
    pick = _ours if side == "ours" else _theirs
    call = {**CALL, "num_inference_steps": 8}
    latents = pick("StableDiffusionXLPipeline")(generator=_generator(side, 0), denoising_end=split,
                                                output_type="latent", height=SIZE, width=SIZE, **call).images
    steps = {}

    def record(pipe, i, t, kwargs):
        steps.setdefault("t", []).append(int(t))
        return kwargs

    image = pick(second, second_kind)(generator=_generator(side, 1), image=latents, denoising_start=split, output_type="np",
                         callback_on_step_end=record, **call, **second_inputs).images
    return np.asarray(latents), np.asarray(image), steps["t"]


def test_base_into_img2img_matches_diffusers_ensemble():
    our_latents, ours, our_steps = _ensemble("ours")
    their_latents, theirs, their_steps = _ensemble("theirs")
    assert our_steps == their_steps == [139], (our_steps, their_steps)
    assert np.abs(our_latents - their_latents.astype(np.float32)).max() <= IMAGE_ATOL
    assert ours.shape == theirs.shape == (1, SIZE, SIZE, 3)
    assert np.abs(ours - theirs).max() <= IMAGE_ATOL


@pytest.mark.parametrize("kind", ["refiner", "refiner-inpaint"])
def test_base_into_refiner_matches_diffusers_ensemble(kind):
    """The guide's ensemble of experts: SDXL base (denoising_end=0.8) into the refiner (denoising_start=0.8,
    text_encoder_2 only, aesthetic-score time ids)."""
    second = "StableDiffusionXLInpaintPipeline" if kind.endswith("inpaint") else "StableDiffusionXLImg2ImgPipeline"
    inputs = dict(mask_image=mask(), height=SIZE, width=SIZE) if kind.endswith("inpaint") else {}
    _, ours, our_steps = _ensemble("ours", second, kind, **inputs)
    _, theirs, their_steps = _ensemble("theirs", second, kind, **inputs)
    assert our_steps == their_steps == [139]
    assert np.abs(ours - theirs).max() <= IMAGE_ATOL


def test_base_into_inpainting_matches_diffusers_ensemble():
    inputs = dict(mask_image=mask(), height=SIZE, width=SIZE)
    _, ours, _ = _ensemble("ours", "StableDiffusionXLInpaintPipeline", **inputs)
    _, theirs, _ = _ensemble("theirs", "StableDiffusionXLInpaintPipeline", **inputs)
    assert np.abs(ours - theirs).max() <= IMAGE_ATOL


def test_denoising_end_stops_early_and_matters():
    pipe = _ours("StableDiffusionXLPipeline")
    full = np.asarray(pipe(generator=fewstep.Generator(0), output_type="latent", height=SIZE, width=SIZE,
                           **CALL).images)
    early = np.asarray(pipe(generator=fewstep.Generator(0), output_type="latent", height=SIZE, width=SIZE,
                            denoising_end=0.5, **CALL).images)
    assert np.abs(full - early).max() > MIN_EFFECT


def test_sd_img2img_denoising_start_on_a_picture():
    """A picture (not latents) with denoising_start: encoded and not noised, only the late timesteps run; fewstep's
    SD classes take the SDXL arguments too (diffusers' SD img2img has none), so this is checked against the SD
    schedule by hand."""
    pipe = _ours("StableDiffusionImg2ImgPipeline", "sd15")
    seen = []
    pipe(generator=fewstep.Generator(0), image=picture(3), denoising_start=0.5, output_type="np",
         callback_on_step_end=lambda p, i, t, kw: seen.append(int(t)) or kw, **CALL)
    pipe.scheduler.set_timesteps(CALL["num_inference_steps"])
    assert seen == [int(t) for t in pipe.scheduler.timesteps if t < 500]


@pytest.mark.parametrize("kwargs, match", [
    (dict(denoising_start=0.8, denoising_end=0.5), "denoising_start=0.8 is not below denoising_end=0.5"),
    (dict(denoising_start=0.8, denoising_end=0.8), "is not below denoising_end"),
    (dict(denoising_end=0.0), r"denoising_end must be in \(0, 1\]"),
    (dict(denoising_start=1.0), "denoising_start must be below 1"),
    (dict(denoising_start=float("nan")), "denoising_start must be a finite number"),
])
def test_bad_denoising_range(kwargs, match):
    pipe = _ours("StableDiffusionXLImg2ImgPipeline")
    with pytest.raises(ValueError, match=match) as err:
        pipe(image=picture(3), **CALL, **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name, kind, extra", [("StableDiffusionPipeline", "sd15", {}),
                                               ("StableDiffusionXLImg2ImgPipeline", "sdxl", {"strength": 1.0})])
def test_original_inference_steps_reaches_the_scheduler(name, kind, extra):
    """Every pipeline passes `original_inference_steps` to the scheduler's set_timesteps: the steps run are diffusers'
    LCMScheduler's for that grid (6 here, not the config's 50), and the image differs from the default grid's."""
    import diffusers

    pipe = _ours(name, kind)
    pipe.scheduler = fewstep.LCMScheduler.from_config(pipe.scheduler.config)
    inputs = dict(prompt=PROMPT, num_inference_steps=2, guidance_scale=0.0, output_type="np", **extra)
    if name.endswith("Img2ImgPipeline"):
        inputs["image"] = picture(3)
    seen = []
    grid = pipe(generator=fewstep.Generator(0), original_inference_steps=6,
                callback_on_step_end=lambda p, i, t, kw: seen.append(int(t)) or kw, **inputs).images
    reference = diffusers.LCMScheduler.from_config(pipe.scheduler.config)
    reference.set_timesteps(2, original_inference_steps=6)
    assert seen == [int(t) for t in reference.timesteps]
    default = pipe(generator=fewstep.Generator(0), **inputs).images
    assert np.abs(np.asarray(grid) - np.asarray(default)).max() > MIN_EFFECT
