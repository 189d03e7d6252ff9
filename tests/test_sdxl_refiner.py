"""The SDXL refiner and aesthetic-score conditioning (issue 26): a refiner folder (only text_encoder_2,
`requires_aesthetics_score`) and its single-file checkpoint load through every entry point and give diffusers'
image on torch and the torch backend's on MindSpore; the score matters; the time-id layouts that do not fit the
UNet, and a score given to a UNet without one, are refused before anything runs."""

import subprocess
import sys

import numpy as np
import pytest

import fewstep
from fewstep import pipelines

IMAGE_ATOL = 1e-4   # as tests/test_combinations_torch.py
MIN_EFFECT = 1e-2
SIZE = 64
PROMPT = "a red fox in the snow"
# (scheduler, eta): TCD with its authors' eta and LCM, both under classifier-free guidance
SCHEDULES = [("TCDScheduler", 0.3), ("LCMScheduler", 0.0)]


def _image(seed=0):
    return np.random.RandomState(seed).rand(SIZE, SIZE, 3).astype(np.float32)


def _mask():
    from PIL import Image

    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:48, 16:48] = 255
    return Image.fromarray(mask, mode="L")


def _folder(task="img2img"):
    from fewstep.testing.tiny_refiner import tiny_refiner

    return tiny_refiner(task=task)


def _ours(cls_name, folder, scheduler="TCDScheduler", backend="torch", **components):
    pipe = getattr(pipelines, cls_name).from_pretrained(folder, backend=backend, **components)
    pipe.scheduler = getattr(fewstep, scheduler).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _reference(cls_name, folder, scheduler="TCDScheduler", **kwargs):
    import diffusers

    pipe = getattr(diffusers, cls_name).from_pretrained(folder, **kwargs)
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _kwargs(task="img2img", eta=0.3, **more):
    kwargs = dict(prompt=PROMPT, image=_image(), num_inference_steps=2, strength=0.6, guidance_scale=5.0, eta=eta,
                  output_type="np")
    if task == "inpaint":
        kwargs["mask_image"] = _mask()
    return {**kwargs, **more}


def _run(pipe, seed=0, **kwargs):
    return np.asarray(pipe(generator=fewstep.Generator(seed), **kwargs).images)


def _run_ref(pipe, seed=0, **kwargs):
    import torch

    return np.asarray(pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images)


class _Spy:
    """A component that counts its calls and otherwise is the component."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


# ---------------------------------------------------------------------------------------------- torch
@pytest.mark.torch
@pytest.mark.parametrize("task", ["img2img", "inpaint"])
@pytest.mark.parametrize("scheduler,eta", SCHEDULES)
def test_refiner_matches_diffusers(task, scheduler, eta):
    """The refiner folder (img2img, its own class) and an inpainting config with requires_aesthetics_score, each
    with non-default scores and negative sizes, against diffusers' class of the same name."""
    name = {"img2img": "StableDiffusionXLImg2ImgPipeline", "inpaint": "StableDiffusionXLInpaintPipeline"}[task]
    folder = _folder(task)
    pipe = _ours(name, folder, scheduler)
    assert pipe.requires_aesthetics_score is True and pipe.text_encoder is None and pipe.tokenizer is None
    kwargs = _kwargs(task, eta, aesthetic_score=7.0, negative_aesthetic_score=2.0,
                     negative_original_size=(48, 48), negative_crops_coords_top_left=(4, 4))
    got = _run(pipe, **kwargs)
    want = _run_ref(_reference(name, folder, scheduler), **kwargs)
    assert got.shape == want.shape == (1, SIZE, SIZE, 3)
    err = np.abs(got - want).max()
    assert err <= IMAGE_ATOL, f"{name} {scheduler}: max |fewstep - diffusers| = {err:.3g}"


@pytest.mark.torch
def test_aesthetic_score_changes_the_image():
    pipe = _ours("StableDiffusionXLImg2ImgPipeline", _folder())
    high = _run(pipe, **_kwargs(aesthetic_score=6.0))
    low = _run(pipe, **_kwargs(aesthetic_score=3.0))
    effect = np.abs(high - low).max()
    assert effect > MIN_EFFECT, f"aesthetic_score 6 vs 3 changed the image by only {effect:.3g}"


@pytest.mark.torch
def test_refiner_folder_loads_through_every_entry_point():
    """DiffusionPipeline and AutoPipelineForImage2Image pick the img2img class; the base's text_encoder_2 and
    VAE passed in (diffusers' base + refiner guide) give the same image (the tiny pair shares those weights)."""
    from fewstep.testing import tiny_pipeline

    folder = _folder()
    alone = _ours("StableDiffusionXLImg2ImgPipeline", folder)
    want = _run(alone, **_kwargs())
    for loader in (fewstep.DiffusionPipeline, fewstep.AutoPipelineForImage2Image):
        pipe = loader.from_pretrained(folder)
        assert type(pipe).__name__ == "StableDiffusionXLImg2ImgPipeline", loader
        assert pipe.requires_aesthetics_score is True and pipe.text_encoder is None
    base = fewstep.StableDiffusionXLPipeline.from_pretrained(tiny_pipeline("sdxl"))
    shared = _ours("StableDiffusionXLImg2ImgPipeline", folder, text_encoder_2=base.text_encoder_2, vae=base.vae)
    assert shared.text_encoder_2 is base.text_encoder_2 and shared.vae is base.vae
    np.testing.assert_allclose(_run(shared, **_kwargs()), want, atol=1e-6)
    # from_pipe carries the setting and the missing encoder to the inpainting class
    inpaint = pipelines.StableDiffusionXLInpaintPipeline.from_pipe(alone)
    assert inpaint.requires_aesthetics_score is True and inpaint.text_encoder is None


@pytest.mark.torch
def test_refiner_single_file_matches_diffusers():
    """The sd_xl_refiner_1.0 layout (OpenCLIP alone as conditioner.embedders.0) is recognised, loads as the refiner
    and equals diffusers' own from_single_file on the same file."""
    import diffusers

    from fewstep.pipelines.checkpoint_family import detect_family
    from fewstep.testing.tiny_refiner import tiny_refiner_checkpoint

    folder, path = _folder(), tiny_refiner_checkpoint()
    assert detect_family(path).key == "sdxl-refiner"
    pipe = fewstep.StableDiffusionXLImg2ImgPipeline.from_single_file(path, config=folder)
    assert pipe.requires_aesthetics_score is True and pipe.text_encoder is None
    assert type(fewstep.DiffusionPipeline.from_single_file(path, config=folder)).__name__ == \
        "StableDiffusionXLImg2ImgPipeline"
    pipe.set_progress_bar_config(disable=True)
    ref = diffusers.StableDiffusionXLImg2ImgPipeline.from_single_file(path, config=folder, local_files_only=True)
    ref.scheduler = diffusers.TCDScheduler.from_config(ref.scheduler.config)
    ref.set_progress_bar_config(disable=True)
    got, want = _run(pipe, **_kwargs()), _run_ref(ref, **_kwargs())
    err = np.abs(got - want).max()
    assert err <= IMAGE_ATOL, f"single-file refiner: max |fewstep - diffusers| = {err:.3g}"


@pytest.mark.torch
def test_refiner_single_file_refused_by_text_to_image_and_named_by_info():
    from fewstep.testing.tiny_refiner import tiny_refiner_checkpoint

    path = tiny_refiner_checkpoint()
    with pytest.raises(ValueError) as err:
        fewstep.StableDiffusionXLPipeline.from_single_file(path, config=_folder())
    assert str(err.value).splitlines()[0].startswith("The checkpoint is the SDXL refiner; StableDiffusionXLPipeline "
                                                     "cannot run it")
    info = subprocess.run([sys.executable, "-m", "fewstep", "info", path], capture_output=True, text=True, timeout=300)
    assert info.returncode == 0, info.stderr
    assert "sdxl-refiner: SDXL refiner" in info.stdout and "StableDiffusionXLImg2ImgPipeline" in info.stdout


# ---------------------------------------------------------------------------------------------- bad input
def _refused(pipe, match, **kwargs):
    """The call raises a one-line ValueError starting with `match`, and no model ran."""
    spies = {n: _Spy(getattr(pipe, n)) for n in ("unet", "vae", "text_encoder_2")}
    for name, spy in spies.items():
        setattr(pipe, name, spy)
    try:
        with pytest.raises(ValueError) as err:
            pipe(generator=fewstep.Generator(0), **kwargs)
    finally:
        for name, spy in spies.items():
            setattr(pipe, name, spy.inner)
    message = str(err.value)
    assert "\n" not in message and message.startswith(match), message
    assert all(spy.calls == 0 for spy in spies.values()), {n: s.calls for n, s in spies.items()}
    return message


@pytest.mark.torch
@pytest.mark.parametrize("argument", ["aesthetic_score", "negative_aesthetic_score"])
def test_aesthetic_score_on_a_unet_without_it_is_refused(argument):
    from fewstep.testing import tiny_pipeline

    pipe = _ours("StableDiffusionXLImg2ImgPipeline", tiny_pipeline("sdxl"))
    message = _refused(pipe, f"{argument}=7.0 given, but this pipeline's UNet is not conditioned on an aesthetic score",
                       **_kwargs(**{argument: 7.0}))
    assert "pipe.register_to_config(requires_aesthetics_score=True)" in message
    assert pipe.requires_aesthetics_score is False


@pytest.mark.torch
def test_time_id_layout_that_does_not_fit_the_unet_is_refused():
    """diffusers' messages, each naming the switch that fixes it; the settings are the pipeline's, changed with
    diffusers' register_to_config."""
    from fewstep.testing import tiny_pipeline

    refiner = _ours("StableDiffusionXLImg2ImgPipeline", _folder())
    refiner.register_to_config(requires_aesthetics_score=False)
    message = _refused(refiner, "Model expects an added time embedding vector of length 80, but a vector of 88 was "
                                "created. Please make sure to enable `requires_aesthetics_score`", **_kwargs())
    assert "pipe.register_to_config(requires_aesthetics_score=True)" in message
    base = _ours("StableDiffusionXLImg2ImgPipeline", tiny_pipeline("sdxl"))
    base.register_to_config(requires_aesthetics_score=True)
    _refused(base, "Model expects an added time embedding vector of length 88, but a vector of 80 was created. "
                   "Please make sure to disable `requires_aesthetics_score`", **_kwargs())
    with pytest.raises(ValueError, match=r"^aesthetic_score must be a finite number; got nan"):
        refiner.register_to_config(requires_aesthetics_score=True)
        refiner(aesthetic_score=float("nan"), **_kwargs())


@pytest.mark.torch
def test_register_to_config_takes_only_the_pipeline_settings():
    pipe = fewstep.StableDiffusionXLImg2ImgPipeline.from_pretrained(_folder())
    with pytest.raises(ValueError, match=r"^StableDiffusionXLImg2ImgPipeline has no setting\(s\) \['requires_x'\]"):
        pipe.register_to_config(requires_x=True)
    with pytest.raises(ValueError, match=r"^requires_aesthetics_score must be True or False; got 'yes'"):
        pipe.register_to_config(requires_aesthetics_score="yes")
    assert pipe.requires_aesthetics_score is True
    text2img = fewstep.StableDiffusionXLPipeline.from_pipe(pipe)
    with pytest.raises(TypeError, match="unexpected argument"):
        text2img(prompt=PROMPT, aesthetic_score=6.0, num_inference_steps=1)


# ---------------------------------------------------------------------------------------------- MindSpore
@pytest.mark.parity
@pytest.mark.mindspore
@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_refiner_mindspore_matches_torch(task):
    name = {"img2img": "StableDiffusionXLImg2ImgPipeline", "inpaint": "StableDiffusionXLInpaintPipeline"}[task]
    folder = _folder(task)
    kwargs = _kwargs(task, aesthetic_score=7.0, negative_aesthetic_score=2.0)
    want = _run(_ours(name, folder, backend="torch"), seed=5, **kwargs)
    mine = _ours(name, folder, backend="mindspore")
    assert mine.text_encoder is None and mine.requires_aesthetics_score is True
    got = _run(mine, seed=5, **kwargs)
    err = np.abs(got - want).max()
    assert err <= IMAGE_ATOL, f"{name}: max |torch - mindspore| = {err:.3g}"


@pytest.mark.parity
@pytest.mark.mindspore
def test_refiner_single_file_mindspore_matches_torch():
    from fewstep.testing.tiny_refiner import tiny_refiner_checkpoint

    folder, path = _folder(), tiny_refiner_checkpoint()
    pipes = [fewstep.StableDiffusionXLImg2ImgPipeline.from_single_file(path, backend=b, config=folder)
             for b in ("torch", "mindspore")]
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
    want, got = (_run(p, seed=5, **_kwargs()) for p in pipes)
    err = np.abs(got - want).max()
    assert err <= IMAGE_ATOL, f"single-file refiner: max |torch - mindspore| = {err:.3g}"
