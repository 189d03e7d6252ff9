"""Every recipe on fewstep's pipelines against diffusers' pipelines configured by hand as the model cards say
(the cards' own scheduler classes and calls; same folders, same seed), on tiny SD 1.5 and SDXL folders; and
fewstep on MindSpore against fewstep on torch. One image per (recipe, family), at a small step count."""

from __future__ import annotations

import numpy as np
import pytest

import fewstep
from fewstep import recipes
from fewstep.testing import tiny_pipeline
from test_ddim_scheduler import _card_class as _timestep_shift_lcm  # NitroFusion's card class
from tests.pipeline_cases import SIZE

IMAGE_ATOL = 1e-4  # as tests/test_pipelines_torch.py: float32 rounding carried through the tiny VAE
PROMPT = "a red fox in the snow"

# (recipe spec, steps) per family: each recipe once on SD 1.5 and once on SDXL, other variants where they differ
CASES = {
    "sd15": [("lightning", 2), ("hyper-sd", 2), ("hyper-sd-unified", 2), ("dmd2", 1), ("pcm", 2), ("turbo", 1),
             ("flash", 4), ("nitrofusion", 2), ("lcm", 2), ("tcd", 2)],
    "sdxl": [("lightning:x0", 1), ("hyper-sd:unet", 1), ("hyper-sd-unified", 2), ("dmd2", 4), ("pcm:normalcfg", 4),
             ("turbo", 2), ("flash", 4), ("nitrofusion:vibrant", 2), ("lcm:model", 2), ("tcd", 2)],
}


def card_setup(spec: str, steps: int, config):
    """diffusers' scheduler and call arguments for `spec`, written out as each card writes them (not read from
    fewstep's table: this is what the table is checked against)."""
    import diffusers as d

    trailing = dict(timestep_spacing="trailing")
    call = dict(num_inference_steps=steps, guidance_scale=0.0)
    if spec == "lightning":
        return d.EulerDiscreteScheduler.from_config(config, **trailing), call
    if spec == "lightning:x0":
        return d.EulerDiscreteScheduler.from_config(config, prediction_type="sample", **trailing), call
    if spec == "hyper-sd":
        return d.DDIMScheduler.from_config(config, **trailing), call
    if spec == "hyper-sd:unet":
        return d.LCMScheduler.from_config(config), dict(call, timesteps=[800])
    if spec == "hyper-sd-unified":
        return d.TCDScheduler.from_config(config), dict(call, eta=1.0)
    if spec == "dmd2":
        return d.LCMScheduler.from_config(config), dict(call, timesteps={4: [999, 749, 499, 249], 1: [399]}[steps])
    if spec in ("pcm", "pcm:normalcfg"):
        scheduler = d.DDIMScheduler.from_config(config, clip_sample=False, set_alpha_to_one=False, **trailing)
        return scheduler, dict(call, guidance_scale=7.5 if spec == "pcm:normalcfg" else 0.0)
    if spec == "turbo":
        return d.EulerAncestralDiscreteScheduler.from_config(config, **trailing), call
    if spec == "flash":
        return d.LCMScheduler.from_config(config, **trailing), call
    if spec in ("nitrofusion", "nitrofusion:vibrant"):
        shift = 500 if spec.endswith("vibrant") else 250
        return _timestep_shift_lcm().from_config(config, shifted_timestep=shift, original_inference_steps=4), call
    if spec in ("lcm", "lcm:model"):
        return d.LCMScheduler.from_config(config), dict(call, guidance_scale=8.0 if spec == "lcm:model" else 1.0)
    if spec == "tcd":
        return d.TCDScheduler.from_config(config), dict(call, eta=0.3)
    raise AssertionError(spec)


_loaded = {}


def _ours(kind: str, backend: str = "torch"):
    key = ("fewstep", kind, backend)
    if key not in _loaded:
        pipe = fewstep.AutoPipelineForText2Image.from_pretrained(tiny_pipeline(kind), backend=backend)
        pipe.set_progress_bar_config(disable=True)
        _loaded[key] = pipe
    return _loaded[key]


def _reference(kind: str):
    import diffusers

    key = ("diffusers", kind)
    if key not in _loaded:
        cls = diffusers.StableDiffusionXLPipeline if kind == "sdxl" else diffusers.StableDiffusionPipeline
        extra = {} if kind == "sdxl" else dict(safety_checker=None, requires_safety_checker=False)
        pipe = cls.from_pretrained(tiny_pipeline(kind), **extra)
        pipe.set_progress_bar_config(disable=True)
        _loaded[key] = (pipe, pipe.scheduler.config)
    return _loaded[key]


def _fewstep_image(kind, spec, steps, backend="torch"):
    pipe = _ours(kind, backend)
    args = recipes.apply(pipe, spec, steps=steps)
    return pipe(PROMPT, generator=fewstep.Generator(3), height=SIZE, width=SIZE, output_type="np", **args).images


@pytest.mark.torch
@pytest.mark.parametrize("kind,spec,steps", [(k, s, n) for k, cases in CASES.items() for s, n in cases],
                         ids=[f"{k}-{s}-{n}" for k, cases in CASES.items() for s, n in cases])
def test_recipe_matches_diffusers_configured_as_the_card_says(kind, spec, steps):
    import torch

    got = _fewstep_image(kind, spec, steps)
    ref, config = _reference(kind)
    ref.scheduler, call = card_setup(spec, steps, config)
    want = ref(PROMPT, generator=torch.Generator().manual_seed(3), height=SIZE, width=SIZE, output_type="np",
               **call).images
    assert got.shape == want.shape == (1, SIZE, SIZE, 3)
    err = float(np.abs(got - want).max())
    assert err <= IMAGE_ATOL, f"{spec} at {steps} steps: max |fewstep - diffusers| = {err:.3g}"


@pytest.mark.parity
@pytest.mark.torch
@pytest.mark.mindspore
@pytest.mark.parametrize("spec,steps", CASES["sd15"], ids=[f"sd15-{s}-{n}" for s, n in CASES["sd15"]])
def test_recipe_on_mindspore_matches_torch(spec, steps):
    images = {b: _fewstep_image("sd15", spec, steps, b) for b in ("torch", "mindspore")}
    err = float(np.abs(images["torch"] - images["mindspore"]).max())
    assert err <= IMAGE_ATOL, f"{spec} at {steps} steps: max |torch - mindspore| = {err:.3g}"


@pytest.mark.torch
def test_every_recipe_gives_its_own_picture():
    """The recipe's settings reach the picture: on one folder, seed and prompt, no two recipes draw the same
    image (were a recipe's scheduler, overrides, timesteps, eta or guidance dropped, it would fall onto another's)."""
    # hyper-sd and pcm are both DDIM trailing; pcm's clip_sample=False and set_alpha_to_one=False are what SD 1.5's
    # scheduler config (and this folder's) already says, so on it the two rightly draw the same picture
    images = {spec: _fewstep_image("sd15", spec, steps) for spec, steps in CASES["sd15"] if spec != "pcm"}
    specs = sorted(images)
    closest = min((float(np.abs(images[a] - images[b]).max()), a, b)
                  for i, a in enumerate(specs) for b in specs[i + 1:])
    # above the tolerance the pictures are compared with: DDIM at eta 0 and Euler are the same ODE step in other
    # coordinates, so hyper-sd and lightning differ least (8.8e-4 here), but by more than rounding
    assert closest[0] > 2 * IMAGE_ATOL, \
        f"{closest[1]} and {closest[2]} draw the same picture (max difference {closest[0]:.3g})"
