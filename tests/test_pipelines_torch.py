"""fewstep's pipelines on torch against diffusers' own pipelines, loaded from the same tiny folders.

diffusers gets `torch.manual_seed(s)` (a CPU generator) and fewstep gets `fewstep.Generator(s)`; both
then draw the same noise in the same order, so the images agree up to float32 rounding.
"""

import numpy as np
import pytest

import fewstep
from fewstep import pipelines
from fewstep.testing import tiny_pipeline
from tests.pipeline_cases import CASES, SIZE, mask, picture

pytestmark = pytest.mark.torch

# Images are floats in [0, 1]. The schedulers multiply by Python-float coefficients where diffusers
# multiplies by float32 0-dim tensors (<= 1 ulp per step), and the VAE decoder carries that to the
# pixels; 1e-4 leaves a margin of about 10x over what we measured.
IMAGE_ATOL = 1e-4

# (fewstep/diffusers class name, tiny kind, extra call arguments)
PIPELINES = [
    ("StableDiffusionPipeline", "sd15", {}),
    ("StableDiffusionPipeline", "sd21-v", {}),
    ("StableDiffusionImg2ImgPipeline", "sd15", {"image": picture(1), "strength": 0.6}),
    ("StableDiffusionInpaintPipeline", "sd15-inpaint", {"image": picture(2), "mask_image": mask()}),
    ("StableDiffusionInpaintPipeline", "sd15", {"image": picture(2), "mask_image": mask(), "strength": 0.99}),
    ("StableDiffusionXLPipeline", "sdxl", {}),
    ("StableDiffusionXLImg2ImgPipeline", "sdxl", {"image": picture(3), "strength": 0.6}),
    ("StableDiffusionXLInpaintPipeline", "sdxl-inpaint", {"image": picture(4), "mask_image": mask(), "strength": 0.99}),
]

# a sampler by its key in CASES / SAMPLER_CASES: (the class name, the same in fewstep and diffusers; config overrides)
SAMPLERS = {
    "tcd": ("TCDScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "ddim-trailing": ("DDIMScheduler", {"timestep_spacing": "trailing", "clip_sample": False}),
    "euler-trailing": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    # Karras sigmas give interpolated, fractional timesteps (751.0, 411.41537, 69.40317, 1.0 for 4 steps)
    "euler-karras": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    "euler-a-trailing": ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}),
}
# the samplers of the other few-step methods (issue 27), as the loop runs them: scale_model_input (Euler divides
# by sqrt(sigma^2 + 1)), init_noise_sigma, fractional timesteps, add_noise in sigma form for img2img / inpainting
SAMPLER_CASES = [
    ("ddim-trailing", 0.0, 0.0, None),
    ("euler-trailing", 0.0, 0.0, None),
    ("euler-karras", 0.0, 2.0, "blurry"),
    ("euler-a-trailing", 0.0, 2.0, "blurry"),
]

_loaded = {}


def _pair(class_name, kind, scheduler):
    """(fewstep pipeline, diffusers pipeline) on one folder, cached across tests."""
    import diffusers

    key = (class_name, kind)
    if key not in _loaded:
        folder = tiny_pipeline(kind)
        ours = getattr(pipelines, class_name).from_pretrained(folder, backend="torch")
        ours.set_progress_bar_config(disable=True)
        ref = getattr(diffusers, class_name).from_pretrained(folder, safety_checker=None, requires_safety_checker=False) \
            if not class_name.startswith("StableDiffusionXL") else getattr(diffusers, class_name).from_pretrained(folder)
        ref.set_progress_bar_config(disable=True)
        _loaded[key] = (ours, ref)
    ours, ref = _loaded[key]
    name, overrides = SAMPLERS[scheduler]
    ours.scheduler = getattr(fewstep, name).from_config(ours.scheduler.config, **overrides)
    ref.scheduler = getattr(diffusers, name).from_config(ref.scheduler.config, **overrides)
    return ours, ref


def _run_both(class_name, kind, extra, scheduler, eta, guidance, negative, seed=0, **more):
    import torch

    ours, ref = _pair(class_name, kind, scheduler)
    kwargs = dict(prompt="a red fox in the snow", num_inference_steps=4, guidance_scale=guidance,
                  negative_prompt=negative, output_type="np", **extra, **more)
    if not class_name.endswith(("Img2ImgPipeline", "InpaintPipeline")):
        kwargs.update(height=SIZE, width=SIZE)
    if scheduler == "tcd":
        kwargs["eta"] = eta
    got = ours(generator=fewstep.Generator(seed), **kwargs).images
    want = ref(generator=torch.Generator().manual_seed(seed), **kwargs).images
    return got, want


@pytest.mark.parametrize("class_name,kind,extra", PIPELINES, ids=[f"{c}-{k}" for c, k, _ in PIPELINES])
def test_pipeline_matches_diffusers(class_name, kind, extra):
    for scheduler, eta, guidance, negative in CASES:
        got, want = _run_both(class_name, kind, extra, scheduler, eta, guidance, negative)
        assert got.shape == want.shape
        err = np.abs(got - want).max()
        assert err <= IMAGE_ATOL, f"{scheduler} eta={eta} gs={guidance}: max |fewstep - diffusers| = {err:.3g}"


@pytest.mark.parametrize("class_name,kind,extra", PIPELINES, ids=[f"{c}-{k}" for c, k, _ in PIPELINES])
def test_pipeline_with_the_other_samplers_matches_diffusers(class_name, kind, extra):
    images = {}
    for scheduler, eta, guidance, negative in SAMPLER_CASES:
        got, want = _run_both(class_name, kind, extra, scheduler, eta, guidance, negative)
        err = np.abs(got - want).max()
        assert err <= IMAGE_ATOL, f"{scheduler} gs={guidance}: max |fewstep - diffusers| = {err:.3g}"
        images[scheduler] = got
    # the sampler matters: Euler's trailing and Karras schedules give other pictures
    assert np.abs(images["euler-trailing"] - images["euler-karras"]).max() > 1e-2


def test_batch_of_prompts_with_generator_list_and_images_per_prompt():
    import torch

    ours, ref = _pair("StableDiffusionPipeline", "sd15", "tcd")
    kwargs = dict(prompt=["a cat", "a dog"], num_inference_steps=2, guidance_scale=0.0, eta=0.3,
                  num_images_per_prompt=2, height=SIZE, width=SIZE, output_type="np")
    got = ours(generator=[fewstep.Generator(s) for s in range(4)], **kwargs).images
    want = ref(generator=[torch.Generator().manual_seed(s) for s in range(4)], **kwargs).images
    assert np.abs(got - want).max() <= IMAGE_ATOL


def test_latent_output_callback_and_return_tuple():
    ours, _ = _pair("StableDiffusionPipeline", "sd15", "tcd")
    seen = []

    def callback(pipe, i, t, values):
        seen.append((i, t))
        return {"latents": values["latents"] * 1.0}

    latents = ours("a cat", num_inference_steps=4, guidance_scale=0.0, generator=7, output_type="latent",
                   callback_on_step_end=callback, height=SIZE, width=SIZE).images
    assert [i for i, _ in seen] == [0, 1, 2, 3] and [t for _, t in seen] == [999, 759, 499, 259]
    assert tuple(latents.shape)[0] == 1
    (images,) = ours("a cat", num_inference_steps=1, guidance_scale=0.0, generator=7, return_dict=False,
                     height=SIZE, width=SIZE)
    assert images[0].size == (SIZE, SIZE)


def test_fewstep_scheduler_inside_diffusers_pipeline():
    """The scheduler facade behaves like diffusers' own: dropped into a diffusers pipeline, it gives
    diffusers' result."""
    import diffusers
    import torch

    _, ref = _pair("StableDiffusionPipeline", "sd15", "tcd")
    kwargs = dict(prompt="a cat", num_inference_steps=4, guidance_scale=0.0, eta=0.3, height=SIZE, width=SIZE,
                  output_type="np")
    ref.scheduler = diffusers.TCDScheduler.from_config(ref.scheduler.config)
    want = ref(generator=torch.Generator().manual_seed(3), **kwargs).images
    ref.scheduler = fewstep.TCDScheduler.from_config(ref.scheduler.config)
    got = ref(generator=torch.Generator().manual_seed(3), **kwargs).images
    assert np.abs(got - want).max() <= IMAGE_ATOL


def test_seed_none_is_reported_and_reproducible():
    ours, _ = _pair("StableDiffusionPipeline", "sd15", "tcd")
    first = ours("a cat", num_inference_steps=2, guidance_scale=0.0, eta=0.3, output_type="np", height=SIZE, width=SIZE)
    again = ours("a cat", num_inference_steps=2, guidance_scale=0.0, eta=0.3, output_type="np", height=SIZE, width=SIZE,
                 generator=first.seeds[0])
    np.testing.assert_array_equal(first.images, again.images)


def test_torch_generator_is_honoured_as_diffusers_honours_it():
    import torch

    ours, ref = _pair("StableDiffusionXLPipeline", "sdxl", "lcm")
    kwargs = dict(prompt="a cat", num_inference_steps=4, guidance_scale=0.0, height=SIZE, width=SIZE, output_type="np")
    got = ours(generator=torch.Generator().manual_seed(9), **kwargs).images
    want = ref(generator=torch.Generator().manual_seed(9), **kwargs).images
    assert np.abs(got - want).max() <= IMAGE_ATOL


def test_sdxl_float16_with_vae_upcast_matches_diffusers():
    """In float16 diffusers decodes SDXL latents with the VAE partly upcast to float32 (config
    force_upcast); fewstep does the same and leaves the VAE's fp16 weights unchanged afterwards."""
    import diffusers
    import torch

    folder = tiny_pipeline("sdxl")
    ours = pipelines.StableDiffusionXLPipeline.from_pretrained(folder, backend="torch", dtype="float16")
    ref = diffusers.StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float16)
    assert ours.vae.config["force_upcast"]
    for p in (ours, ref):
        p.set_progress_bar_config(disable=True)
    ours.scheduler = fewstep.TCDScheduler.from_config(ours.scheduler.config)
    ref.scheduler = diffusers.TCDScheduler.from_config(ref.scheduler.config)
    before = {k: v.clone() for k, v in ours.vae.module.state_dict().items()}
    kwargs = dict(prompt="a cat", num_inference_steps=4, guidance_scale=0.0, eta=0.3, height=SIZE, width=SIZE)
    got = ours(generator=fewstep.Generator(2), output_type="np", **kwargs).images
    want = ref(generator=torch.Generator().manual_seed(2), output_type="np", **kwargs).images
    # fewstep folds x0, eps and x_s into one linear combination per step where diffusers rounds each
    # to fp16 (ulp 1e-3 at 1.0), so the latents differ by fp16 ulps per step; measured 1.2e-3 on pixels.
    assert np.abs(got - want).max() <= 5e-3
    after = ours.vae.module.state_dict()
    assert all(after[k].dtype == torch.float16 and torch.equal(after[k], v) for k, v in before.items())

    # The decode itself, on identical latents, is diffusers' upcast path exactly.
    latents = ref(generator=torch.Generator().manual_seed(2), output_type="latent", **kwargs).images
    scaled = latents / ref.vae.config.scaling_factor
    ours_image = ours.vae.decode(scaled, upcast=True)
    ref.upcast_vae()
    ref_image = ref.vae.decode(scaled.to(next(iter(ref.vae.post_quant_conv.parameters())).dtype), return_dict=False)[0]
    assert torch.equal(ours_image, ref_image)


def test_custom_timesteps_match_diffusers():
    got, want = _run_both("StableDiffusionPipeline", "sd15", {}, "lcm", 0.0, 0.0, None, seed=4,
                          timesteps=[999, 499, 259])
    assert np.abs(got - want).max() <= IMAGE_ATOL


def test_prompt_embeds_give_the_prompt_result():
    import torch

    for class_name, kind in (("StableDiffusionPipeline", "sd15"), ("StableDiffusionXLPipeline", "sdxl")):
        ours, ref = _pair(class_name, kind, "tcd")
        kwargs = dict(num_inference_steps=2, guidance_scale=3.0, eta=0.3, height=SIZE, width=SIZE, output_type="np")
        if kind == "sdxl":
            embeds, negative, pooled, negative_pooled = ref.encode_prompt("a cat", negative_prompt="dark")
            extra = dict(pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=negative_pooled)
        else:
            embeds, negative = ref.encode_prompt("a cat", "cpu", 1, True, negative_prompt="dark")
            extra = {}
        from_embeds = ours(prompt_embeds=embeds, negative_prompt_embeds=negative, generator=1, **extra, **kwargs).images
        from_text = ours("a cat", negative_prompt="dark", generator=1, **kwargs).images
        want = ref(prompt_embeds=embeds, negative_prompt_embeds=negative, generator=torch.Generator().manual_seed(1),
                   **extra, **kwargs).images
        assert np.abs(from_embeds - from_text).max() <= IMAGE_ATOL
        assert np.abs(from_embeds - want).max() <= IMAGE_ATOL


def test_prompt_embeds_with_guidance_encode_the_negative_prompt():
    """With prompt_embeds but no negative embeddings, CFG encodes the negative prompt (padded to the
    embeddings' length) as the prompt path does."""
    for class_name, kind in (("StableDiffusionPipeline", "sd15"), ("StableDiffusionXLPipeline", "sdxl")):
        ours, ref = _pair(class_name, kind, "tcd")
        kwargs = dict(num_inference_steps=2, guidance_scale=3.0, eta=0.3, height=SIZE, width=SIZE, output_type="np",
                      negative_prompt="dark", generator=1)
        if kind == "sdxl":
            embeds, _, pooled, _ = ref.encode_prompt("a cat", do_classifier_free_guidance=False)
            extra = dict(pooled_prompt_embeds=pooled)
        else:
            embeds, _ = ref.encode_prompt("a cat", "cpu", 1, False)
            extra = {}
        from_embeds = ours(prompt_embeds=embeds, **extra, **kwargs).images
        from_text = ours("a cat", **kwargs).images
        assert np.abs(from_embeds - from_text).max() <= IMAGE_ATOL
