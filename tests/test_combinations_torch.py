"""The combination pipelines of issue 25 (ControlNet img2img / inpainting, MultiAdapter, AnimateDiff with a
ControlNet, video-to-video and SDXL, the LCM pipelines) on torch against diffusers' class of the same name,
on the same tiny folders and parts: diffusers on `torch.Generator().manual_seed(s)`, fewstep on
`fewstep.Generator(s)`. Each also changes the image against the plain pipeline (the part or the task input
is not dropped). diffusers' semantics are summarised in /work/notes/combos.md."""

import numpy as np
import pytest

import fewstep
from tests.combination_cases import (COMBOS, LCM_IMG2IMG_TIMESTEPS, NAMES, PROMPT, VIDEO_2, call_kwargs, ours,
                                     output, plain, plain_kwargs, reference)
from tests.pipeline_cases import SIZE

pytestmark = pytest.mark.torch

# as tests/test_adapters_torch.py: float32 scheduler coefficients carried through the VAE (~1e-6 measured there)
IMAGE_ATOL = 1e-4
# the part's / the task input's effect must be far above the matching bound
MIN_EFFECT = 1e-2


def _shape(name):
    combo = COMBOS[name]
    return (1, combo.inputs(0).get("num_frames", len(combo.inputs(0).get("video", []))), SIZE, SIZE, 3) \
        if combo.video else (1, SIZE, SIZE, 3)


def _both(name, index, seed=0, drop=(), **more):
    import diffusers  # noqa: F401  (the reference library must import before we compare against it)
    import torch

    combo = COMBOS[name]
    scheduler = combo.schedules[index][0]
    kwargs = {k: v for k, v in call_kwargs(name, index).items() if k not in drop} | more
    got = output(ours(name, scheduler)(generator=fewstep.Generator(seed), **kwargs), combo.video)
    want = output(reference(name, scheduler)(generator=torch.Generator().manual_seed(seed), **kwargs), combo.video)
    return got, want, kwargs


@pytest.mark.parametrize("name", NAMES)
def test_combination_matches_diffusers(name):
    combo = COMBOS[name]
    for index, (scheduler, eta, guidance, _) in enumerate(combo.schedules):
        got, want, _ = _both(name, index)
        assert got.shape == want.shape == _shape(name), (scheduler, got.shape, want.shape)
        err = np.abs(got - want).max()
        assert err <= IMAGE_ATOL, f"{name} {scheduler} eta={eta} gs={guidance}: max |fewstep - diffusers| = {err:.3g}"


@pytest.mark.parametrize("name", [n for n in NAMES if COMBOS[n].plain])
def test_combination_changes_the_image_against_the_plain_pipeline(name):
    """ControlNet img2img vs Img2Img on the same init image, ControlNet inpainting vs Inpaint, AnimateDiff +
    ControlNet vs AnimateDiff, LCM img2img (strength into the scheduler) vs SD Img2Img's strength cut."""
    combo = COMBOS[name]
    scheduler = combo.schedules[0][0]
    kwargs = call_kwargs(name, 0)
    got = output(ours(name, scheduler)(generator=fewstep.Generator(0), **kwargs), combo.video)
    base = output(plain(name, scheduler)(generator=fewstep.Generator(0), **plain_kwargs(name, kwargs)), combo.video)
    assert got.shape == base.shape
    effect = np.abs(got - base).max()
    assert effect > MIN_EFFECT, f"{name} differs from {combo.plain} by only {effect:.3g}"


@pytest.mark.parametrize("name", ["StableDiffusionAdapterPipeline", "StableDiffusionXLAdapterPipeline"])
def test_multi_adapter_second_adapter_matters(name):
    """The saved MultiAdapter folder against the first adapter alone at its weight: the second must show."""
    from fewstep import pipelines
    from fewstep.testing import tiny_pipeline, tiny_t2i_adapter

    kind = COMBOS[name].kind
    kwargs = call_kwargs(name, 0)
    saved = output(ours(name, "tcd")(generator=fewstep.Generator(0), **kwargs), False)
    first = fewstep.T2IAdapter.from_pretrained(tiny_t2i_adapter(kind, seed=0), backend="torch")
    single = getattr(pipelines, name).from_pretrained(tiny_pipeline(kind), backend="torch", adapter=first)
    single.set_progress_bar_config(disable=True)
    single.scheduler = fewstep.TCDScheduler.from_config(single.scheduler.config)
    alone = dict(kwargs, image=kwargs["image"][0], adapter_conditioning_scale=kwargs["adapter_conditioning_scale"][0])
    effect = np.abs(saved - output(single(generator=fewstep.Generator(0), **alone), False)).max()
    assert effect > MIN_EFFECT, f"the second adapter changed the image by only {effect:.3g}"


def test_sd_adapter_pipeline_wraps_a_list_of_adapters_like_the_saved_folder():
    """diffusers' SD (not SDXL: its __init__ registers the list before wrapping and fails) adapter pipeline
    wraps `adapter=[a, b]` in a MultiAdapter: same image as the folder saved with that MultiAdapter."""
    import diffusers
    import torch

    from fewstep import pipelines
    from fewstep.testing import tiny_pipeline, tiny_t2i_adapter

    name = "StableDiffusionAdapterPipeline"
    kwargs = call_kwargs(name, 0)
    folders = [tiny_t2i_adapter("sd15", seed=s) for s in (0, 1)]
    listed = pipelines.StableDiffusionAdapterPipeline.from_pretrained(
        tiny_pipeline("sd15"), backend="torch", adapter=[fewstep.T2IAdapter.from_pretrained(f, backend="torch")
                                                         for f in folders])
    listed.set_progress_bar_config(disable=True)
    listed.scheduler = fewstep.TCDScheduler.from_config(listed.scheduler.config)
    got = output(listed(generator=fewstep.Generator(0), **kwargs), False)
    ref = diffusers.StableDiffusionAdapterPipeline.from_pretrained(
        tiny_pipeline("sd15"), adapter=[diffusers.T2IAdapter.from_pretrained(f) for f in folders],
        safety_checker=None, requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    ref.scheduler = diffusers.TCDScheduler.from_config(ref.scheduler.config)
    want = output(ref(generator=torch.Generator().manual_seed(0), **kwargs), False)
    saved = output(ours(name, "tcd")(generator=fewstep.Generator(0), **kwargs), False)
    assert np.abs(got - want).max() <= IMAGE_ATOL
    assert np.abs(got - saved).max() <= IMAGE_ATOL


def test_video_to_video_follows_the_input_video():
    name = "AnimateDiffVideoToVideoPipeline"
    kwargs = call_kwargs(name, 0)
    pipe = ours(name, "tcd")
    first = output(pipe(generator=fewstep.Generator(0), **kwargs), True)
    second = output(pipe(generator=fewstep.Generator(0), **(kwargs | dict(video=VIDEO_2))), True)
    effect = np.abs(first - second).max()
    assert effect > MIN_EFFECT, f"another input video changed the frames by only {effect:.3g}"


def test_animatediff_sdxl_motion_modules_matter():
    """The same initial latents through the plain SDXL pipeline frame by frame (TCD eta 0, no CFG: no draw
    after the latents) differ from the AnimateDiff SDXL frames: the motion modules act."""
    name = "AnimateDiffSDXLPipeline"
    frames = COMBOS[name].inputs(0)["num_frames"]
    latents = fewstep.Generator(0).randn((1, 4, frames, SIZE // 2, SIZE // 2))
    common = dict(num_inference_steps=2, guidance_scale=0.0, eta=0.0, height=SIZE, width=SIZE, output_type="np")
    video = output(ours(name, "tcd")(prompt=PROMPT, num_frames=frames, latents=latents, **common), True)
    from fewstep import pipelines
    from fewstep.testing import tiny_pipeline

    per_frame_sdxl = pipelines.StableDiffusionXLPipeline.from_pretrained(tiny_pipeline("sdxl"), backend="torch")
    per_frame_sdxl.set_progress_bar_config(disable=True)
    per_frame_sdxl.scheduler = fewstep.TCDScheduler.from_config(per_frame_sdxl.scheduler.config)
    per_frame = np.ascontiguousarray(latents[0].transpose(1, 0, 2, 3))
    images = output(per_frame_sdxl(prompt=[PROMPT] * frames, latents=per_frame, **common), False)
    assert video.shape == (1, frames, SIZE, SIZE, 3) and images.shape == (frames, SIZE, SIZE, 3)
    effect = np.abs(video[0] - images).max()
    assert effect > MIN_EFFECT, f"the SDXL motion modules changed the frames by only {effect:.3g}"


def test_lcm_img2img_passes_strength_into_the_scheduler():
    """2 steps at strength 0.8 run timesteps [799, 399] on both sides (LCMScheduler.set_timesteps(strength=)),
    not SD img2img's cut ([999, 499] -> [499])."""
    import torch

    name = "LatentConsistencyModelImg2ImgPipeline"
    seen = {"ours": [], "diffusers": []}

    def recorder(side):
        def callback(pipe, i, t, callback_kwargs):
            seen[side].append(int(t))
            return callback_kwargs
        return callback

    kwargs = call_kwargs(name, 0)
    assert kwargs["num_inference_steps"] == 2 and kwargs["strength"] == 0.8
    got = ours(name, "lcm")(generator=fewstep.Generator(0), callback_on_step_end=recorder("ours"), **kwargs).images
    want = reference(name, "lcm")(generator=torch.Generator().manual_seed(0), callback_on_step_end=recorder("diffusers"),
                                  **kwargs).images
    assert seen == {"ours": LCM_IMG2IMG_TIMESTEPS, "diffusers": LCM_IMG2IMG_TIMESTEPS}
    assert np.abs(np.asarray(got) - np.asarray(want)).max() <= IMAGE_ATOL


def test_lcm_guidance_embedding_matters():
    """The LCM pipelines guide through the w-embedding only (no CFG): another guidance_scale, another image."""
    name = "LatentConsistencyModelPipeline"
    kwargs = call_kwargs(name, 0)
    pipe = ours(name, "lcm")
    default = output(pipe(generator=fewstep.Generator(0), **kwargs), False)
    # w = 0 against the default w = 7.5 (measured 0.02 on diffusers' side with the tiny LCM UNet)
    low = output(pipe(generator=fewstep.Generator(0), **(kwargs | dict(guidance_scale=1.0))), False)
    assert np.abs(default - low).max() > MIN_EFFECT


def test_controlnet_img2img_default_size_is_the_init_image_size():
    """No height/width: diffusers keeps the init and control images' own size (48 px here, not the UNet's
    64), rounded down to the VAE factor."""
    from tests.pipeline_cases import picture

    got, want, _ = _both("StableDiffusionControlNetImg2ImgPipeline", 0, drop=("height", "width"),
                         image=picture(3, size=48), control_image=picture(7, size=48))
    assert got.shape == want.shape == (1, 48, 48, 3)
    assert np.abs(got - want).max() <= IMAGE_ATOL
