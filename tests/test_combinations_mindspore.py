"""The combination pipelines of issue 25 on MindSpore: against fewstep on torch (same fewstep.Generator seed,
the first schedule of each combination: TCD eta 0.3 with CFG, LCM for the LCM classes), and against
mindone's own class of the same name (mindone 0.5 has every one) for a few, given the same initial latents."""

import numpy as np
import pytest

import fewstep
from tests.combination_cases import COMBOS, CONTROL, NAMES, PROMPT, SIZE, call_kwargs, ours, output, reference

pytestmark = [pytest.mark.parity, pytest.mark.torch, pytest.mark.mindspore]

# as tests/test_adapters_mindspore.py: mindone's / MindSpore's models match torch's to ~1e-5 per forward
PARITY_ATOL = 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_mindspore_matches_torch(name):
    combo = COMBOS[name]
    scheduler = combo.schedules[0][0]
    kwargs = call_kwargs(name, 0)
    want = output(ours(name, scheduler, "torch")(generator=fewstep.Generator(5), **kwargs), combo.video)
    got = output(ours(name, scheduler, "mindspore")(generator=fewstep.Generator(5), **kwargs), combo.video)
    assert got.shape == want.shape
    err = np.abs(got - want).max()
    assert err <= PARITY_ATOL, f"{name} {scheduler}: max |torch - mindspore| = {err:.3g}"


# (class, call arguments beside the prompt): latents given on both sides, so the only draws left are the
# scheduler's per-step noise, taken from the same np.random.Generator on both sides (as
# tests/test_adapters_mindspore.py). The img2img class starts from those latents (no VAE draw).
MINDONE = [
    ("StableDiffusionControlNetImg2ImgPipeline",
     dict(image=CONTROL, control_image=CONTROL, strength=0.75, controlnet_conditioning_scale=0.8,
          height=SIZE, width=SIZE, eta=0.3, guidance_scale=0.0)),
    ("StableDiffusionAdapterPipeline",
     dict(image=[CONTROL, CONTROL], adapter_conditioning_scale=[0.5, 0.8], height=SIZE, width=SIZE, eta=0.3,
          guidance_scale=0.0)),
    ("LatentConsistencyModelPipeline", dict(height=SIZE, width=SIZE, guidance_scale=8.5)),
]


@pytest.mark.parametrize("name,extra", MINDONE, ids=[n for n, _ in MINDONE])
def test_mindspore_matches_mindone_pipeline(name, extra):
    import mindspore as ms

    from fewstep.backends.mindspore_cpu import install_cpu_kernels

    install_cpu_kernels()  # before mindone is imported (see fewstep/backends/mindspore_cpu.py)
    scheduler = COMBOS[name].schedules[0][0]
    ref = reference(name, scheduler, "mindone")
    mine = ours(name, scheduler, "mindspore")
    latents = fewstep.Generator(11).randn((1, 4, SIZE // 2, SIZE // 2))
    kwargs = dict(prompt=PROMPT, num_inference_steps=COMBOS[name].steps, output_type="np", **extra)
    got = mine(latents=latents, generator=np.random.Generator(np.random.PCG64(3)), **kwargs).images
    want = ref(latents=ms.tensor(latents), generator=np.random.Generator(np.random.PCG64(3)), **kwargs)[0]
    err = np.abs(np.asarray(got) - np.asarray(want)).max()
    assert err <= PARITY_ATOL, f"{name}: max |fewstep - mindone| = {err:.3g}"
