"""IP-Adapter on MindSpore: against fewstep on torch (every case of the torch tests, same seed), and
against mindone's own pipeline with `load_ip_adapter` given the same initial latents."""

import numpy as np
import pytest

import fewstep
from fewstep.testing import tiny_pipeline
from fewstep.testing.tiny_ip_adapter import IP_ADAPTER_FILES, tiny_ip_adapter
from tests.pipeline_cases import SIZE
from tests.test_ip_adapter_torch import BLOCK_SCALE, CASES, CLASSES, REFERENCE, VARIANTS, call, load, pipes, set_scheduler

pytestmark = [pytest.mark.parity, pytest.mark.torch, pytest.mark.mindspore]

PARITY_ATOL = 1e-4  # as tests/test_pipelines_mindspore.py; the CLIP image encoder adds ~2e-6


@pytest.mark.parametrize("kind,variant", VARIANTS, ids=[f"{k}-{v}" for k, v in VARIANTS])
def test_mindspore_matches_torch(kind, variant):
    sides = {b: pipes(kind, backend=b)[0] for b in ("torch", "mindspore")}
    for pipe in sides.values():
        load(pipe, kind, [variant])
    try:
        for scheduler, eta, guidance, negative, scale in CASES:
            images = {}
            for backend, pipe in sides.items():
                pipe.set_ip_adapter_scale(BLOCK_SCALE[kind] if scale == "blocks" else scale)
                set_scheduler(pipe, scheduler)
                kwargs = call(kind, scheduler, eta, guidance, negative, ip_adapter_image=REFERENCE)
                images[backend] = pipe(generator=fewstep.Generator(5), **kwargs).images
            err = np.abs(images["torch"] - images["mindspore"]).max()
            assert err <= PARITY_ATOL, f"{scheduler} gs={guidance} scale={scale}: max |torch - mindspore| = {err:.3g}"
    finally:
        for pipe in sides.values():
            pipe.unload_ip_adapter()


@pytest.mark.parametrize("kind,variant", [("sd15", "plus"), ("sdxl", "plain")])
def test_mindspore_matches_mindone_pipeline(kind, variant):
    import mindspore as ms

    from fewstep.backends.mindspore_cpu import install_cpu_kernels

    install_cpu_kernels()  # before mindone is imported
    import mindone.diffusers as md
    from mindone.diffusers.schedulers import TCDScheduler as MdTCD

    sub, name = IP_ADAPTER_FILES[kind][variant]
    ref = getattr(md, CLASSES[kind]).from_pretrained(tiny_pipeline(kind))
    ref.set_progress_bar_config(disable=True)
    ref.scheduler = MdTCD.from_config(ref.scheduler.config)
    ref.load_ip_adapter(tiny_ip_adapter(kind), subfolder=sub, weight_name=name)
    ref.set_ip_adapter_scale(0.5)
    ours = pipes(kind, backend="mindspore")[0]
    load(ours, kind, [variant])
    try:
        ours.set_ip_adapter_scale(0.5)
        set_scheduler(ours, "tcd")
        latents = fewstep.Generator(11).randn((1, 4, SIZE // 2, SIZE // 2))
        kwargs = dict(prompt="a red fox", ip_adapter_image=REFERENCE, num_inference_steps=4, guidance_scale=1.5,
                      eta=0.3, output_type="np", height=SIZE, width=SIZE)
        got = ours(latents=latents, generator=np.random.Generator(np.random.PCG64(3)), **kwargs).images
        want = ref(latents=ms.tensor(latents), generator=np.random.Generator(np.random.PCG64(3)), **kwargs)[0]
        err = np.abs(got - np.asarray(want)).max()
        assert err <= PARITY_ATOL, f"max |fewstep - mindone| = {err:.3g}"
    finally:
        ours.unload_ip_adapter()
