"""IP-Adapter on torch against diffusers' `load_ip_adapter` from the same tiny files: SD 1.5 and SDXL,
plain and Plus, a float scale and a per-block dict, TCD and LCM, guidance off and on."""

import numpy as np
import pytest

import fewstep
from fewstep import pipelines
from fewstep.testing import tiny_pipeline
from fewstep.testing.tiny_ip_adapter import IP_ADAPTER_FILES, tiny_ip_adapter
from tests.pipeline_cases import SIZE, picture

pytestmark = pytest.mark.torch

IMAGE_ATOL = 1e-4   # as tests/test_pipelines_torch.py; measured ~5e-7
MIN_EFFECT = 1e-2
REFERENCE = picture(5)
CLASSES = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}
BLOCK_SCALE = {"sd15": {"down": {"block_0": [0.0, 1.0]}, "up": {"block_1": [0.0, 1.0, 0.0]}}, "sdxl": {"down": {"block_1": [0.0, 1.0]}}}
# (scheduler, eta, guidance, negative prompt, scale): each scale with each scheduler and guidance setting
CASES = [("tcd", 0.3, 0.0, None, 0.5), ("lcm", 0.0, 1.5, "blurry", 0.5),
         ("tcd", 0.3, 1.5, "blurry", "blocks"), ("lcm", 0.0, 0.0, None, "blocks")]
VARIANTS = [(k, v) for k in ("sd15", "sdxl") for v in ("plain", "plus")]

_loaded = {}


def set_scheduler(pipe, scheduler, lib=fewstep):
    pipe.scheduler = (lib.TCDScheduler if scheduler == "tcd" else lib.LCMScheduler).from_config(pipe.scheduler.config)


def pipes(kind, class_name=None, backend="torch", **components):
    """(fewstep, diffusers) pipelines on one tiny folder, no IP-Adapter loaded; cached."""
    import diffusers

    class_name = class_name or CLASSES[kind]
    key = (kind, class_name, backend, tuple(components))
    if key not in _loaded:
        ours = getattr(pipelines, class_name).from_pretrained(tiny_pipeline(kind), backend=backend, **components)
        ours.set_progress_bar_config(disable=True)
        ref = None
        if backend == "torch":
            extra = {} if kind == "sdxl" else dict(safety_checker=None, requires_safety_checker=False)
            ref_components = {k: v.module for k, v in components.items()}
            ref = getattr(diffusers, class_name).from_pretrained(tiny_pipeline(kind), **extra, **ref_components)
            ref.set_progress_bar_config(disable=True)
        _loaded[key] = (ours, ref)
    return _loaded[key]


def load(pipe, kind, variants):
    sub, names = IP_ADAPTER_FILES[kind][variants[0]][0], [IP_ADAPTER_FILES[kind][v][1] for v in variants]
    pipe.load_ip_adapter(tiny_ip_adapter(kind), subfolder=sub, weight_name=names if len(names) > 1 else names[0])


def call(kind, scheduler, eta, guidance, negative, **more):
    kwargs = dict(prompt="a red fox", num_inference_steps=4, guidance_scale=guidance, negative_prompt=negative,
                  output_type="np", height=SIZE, width=SIZE, **more)
    if scheduler == "tcd":
        kwargs["eta"] = eta
    return kwargs


def run_both(ours, ref, scheduler, kwargs, seed=0):
    import diffusers
    import torch

    set_scheduler(ours, scheduler)
    set_scheduler(ref, scheduler, diffusers)
    got = ours(generator=fewstep.Generator(seed), **kwargs).images
    want = ref(generator=torch.Generator().manual_seed(seed), **kwargs).images
    return got, want


@pytest.mark.parametrize("kind,variant", VARIANTS, ids=[f"{k}-{v}" for k, v in VARIANTS])
def test_ip_adapter_matches_diffusers_and_changes_the_image(kind, variant):
    ours, ref = pipes(kind)
    load(ours, kind, [variant])
    load(ref, kind, [variant])
    try:
        for scheduler, eta, guidance, negative, scale in CASES:
            scale = BLOCK_SCALE[kind] if scale == "blocks" else scale
            ours.set_ip_adapter_scale(scale)
            ref.set_ip_adapter_scale(scale)
            kwargs = call(kind, scheduler, eta, guidance, negative, ip_adapter_image=REFERENCE)
            got, want = run_both(ours, ref, scheduler, kwargs)
            err = np.abs(got - want).max()
            assert err <= IMAGE_ATOL, f"{scheduler} gs={guidance} scale={scale}: max |fewstep - diffusers| = {err:.3g}"
            ours.set_ip_adapter_scale(0.0)
            effect = np.abs(got - ours(generator=fewstep.Generator(0), **kwargs).images).max()
            assert effect > MIN_EFFECT, f"scale {scale}: the IP-Adapter changed the image by only {effect:.3g}"
    finally:
        ours.unload_ip_adapter()
        ref.unload_ip_adapter()


def test_two_ip_adapters_with_scales_and_images_match_diffusers():
    ours, ref = pipes("sd15")
    load(ours, "sd15", ["plain", "plus"])
    load(ref, "sd15", ["plain", "plus"])
    try:
        for p in (ours, ref):
            p.set_ip_adapter_scale([0.5, 0.8])
        kwargs = call("sd15", "tcd", 0.3, 1.5, "blurry", ip_adapter_image=[REFERENCE, picture(6)])
        got, want = run_both(ours, ref, "tcd", kwargs)
        assert np.abs(got - want).max() <= IMAGE_ATOL
    finally:
        ours.unload_ip_adapter()
        ref.unload_ip_adapter()


@pytest.mark.parametrize("class_name,kind,extra", [
    ("StableDiffusionImg2ImgPipeline", "sd15", dict(image=picture(1), strength=0.6)),
    ("StableDiffusionXLInpaintPipeline", "sdxl", dict(image=picture(2), mask_image=None, strength=0.99)),
    ("StableDiffusionControlNetPipeline", "sd15", dict(image=picture(7), controlnet_conditioning_scale=0.8)),
])
def test_ip_adapter_on_other_pipelines_matches_diffusers(class_name, kind, extra):
    from fewstep.testing import tiny_controlnet
    from tests.pipeline_cases import mask

    components = {}
    if "ControlNet" in class_name:
        components["controlnet"] = fewstep.ControlNetModel.from_pretrained(tiny_controlnet(kind))
    if "mask_image" in extra:
        extra["mask_image"] = mask()
    ours, ref = pipes(kind, class_name, **components)
    load(ours, kind, ["plain"])
    load(ref, kind, ["plain"])
    try:
        kwargs = call(kind, "tcd", 0.3, 1.5, "blurry", ip_adapter_image=REFERENCE, **extra)
        if "strength" in extra:
            kwargs.pop("height"), kwargs.pop("width")
        got, want = run_both(ours, ref, "tcd", kwargs)
        assert np.abs(got - want).max() <= IMAGE_ATOL
    finally:
        ours.unload_ip_adapter()
        ref.unload_ip_adapter()


def test_precomputed_embeds_give_the_same_image():
    ours, _ = pipes("sdxl")
    load(ours, "sdxl", ["plus"])
    try:
        set_scheduler(ours, "tcd")
        kwargs = call("sdxl", "tcd", 0.3, 1.5, "blurry")
        direct = ours(generator=fewstep.Generator(4), ip_adapter_image=REFERENCE, **kwargs).images
        embeds = ours.prepare_ip_adapter_image_embeds(REFERENCE, None, None, 1, True)
        reused = ours(generator=fewstep.Generator(4), ip_adapter_image_embeds=embeds, **kwargs).images
        np.testing.assert_array_equal(direct, reused)
    finally:
        ours.unload_ip_adapter()


def test_unload_and_lora_stay_bitwise_exact(tmp_path):
    from tests.lora_cases import make_lora, targets_from_folder, write

    ours, _ = pipes("sd15")
    set_scheduler(ours, "tcd")
    kwargs = call("sd15", "tcd", 0.3, 0.0, None)
    image = lambda **more: ours(generator=fewstep.Generator(1), **kwargs, **more).images  # noqa: E731
    base = image()
    lora = write(str(tmp_path), "style", make_lora(targets_from_folder(tiny_pipeline("sd15")), seed=2), "kohya", "sd15")
    # IP-Adapter first, then a LoRA fused and unfused
    load(ours, "sd15", ["plain"])
    with_ip = image(ip_adapter_image=REFERENCE)
    ours.load_lora_weights(lora, adapter_name="style")
    both = image(ip_adapter_image=REFERENCE)
    ours.unfuse_lora()
    np.testing.assert_array_equal(image(ip_adapter_image=REFERENCE), with_ip)
    ours.fuse_lora()
    np.testing.assert_array_equal(image(ip_adapter_image=REFERENCE), both)
    # unloading the IP-Adapter under a fused LoRA, then the LoRA: back to the base bit for bit
    ours.unload_ip_adapter()
    lora_only = image()
    ours.unload_lora_weights()
    np.testing.assert_array_equal(image(), base)
    # LoRA first, then the IP-Adapter on top
    ours.load_lora_weights(lora, adapter_name="style")
    load(ours, "sd15", ["plain"])
    np.testing.assert_array_equal(image(ip_adapter_image=REFERENCE), both)
    ours.unload_ip_adapter()
    np.testing.assert_array_equal(image(), lora_only)
    ours.unload_lora_weights()
    np.testing.assert_array_equal(image(), base)
    assert not np.array_equal(both, with_ip) and not np.array_equal(with_ip, base)
