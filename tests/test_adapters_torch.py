"""ControlNet and T2I-Adapter pipelines on torch against diffusers' own, from the same tiny folders
and adapter weights: diffusers on `torch.manual_seed(s)`, fewstep on `fewstep.Generator(s)`."""

import numpy as np
import pytest

import fewstep
from fewstep import pipelines
from fewstep.pipelines.controlnet import ControlNet
from fewstep.pipelines.parts import owned_arguments
from fewstep.pipelines.t2i_adapter import T2IAdapter
from fewstep.testing import tiny_pipeline
from tests.adapter_cases import (ADAPTER_PIPELINES, PLAIN, call_kwargs, case_ids, cases_for, component_folders)
from tests.pipeline_cases import SIZE

pytestmark = pytest.mark.torch

# as tests/test_pipelines_torch.py: Python-float vs float32-tensor scheduler coefficients, carried
# through the VAE; measured ~5e-7 with adapters
IMAGE_ATOL = 1e-4
# an adapter's effect on the image must be far above the matching bound, or a dropped residual passes
MIN_EFFECT = 1e-2

_loaded = {}


def _ours_components(folders, backend="torch"):
    def one(name, folder):
        loader = fewstep.T2IAdapter if name == "adapter" else fewstep.ControlNetModel
        return loader.from_pretrained(folder, backend=backend)

    return {name: [one(name, f) for f in v] if isinstance(v, list) else one(name, v) for name, v in folders.items()}


def _ref_components(folders):
    import diffusers

    def one(name, folder):
        return (diffusers.T2IAdapter if name == "adapter" else diffusers.ControlNetModel).from_pretrained(folder)

    return {name: [one(name, f) for f in v] if isinstance(v, list) else one(name, v) for name, v in folders.items()}


def pair(class_name, kind, what, scheduler):
    """(fewstep pipeline, diffusers pipeline) on the same folder and adapters, cached."""
    import diffusers

    key = (class_name, kind, what)
    if key not in _loaded:
        folder, folders = tiny_pipeline(kind), component_folders(kind, what)
        ours = getattr(pipelines, class_name).from_pretrained(folder, backend="torch", **_ours_components(folders))
        extra = {} if kind == "sdxl" else dict(safety_checker=None, requires_safety_checker=False)
        ref = getattr(diffusers, class_name).from_pretrained(folder, **_ref_components(folders), **extra)
        for p in (ours, ref):
            p.set_progress_bar_config(disable=True)
        _loaded[key] = (ours, ref)
    ours, ref = _loaded[key]
    ours.scheduler = (fewstep.TCDScheduler if scheduler == "tcd" else fewstep.LCMScheduler).from_config(ours.scheduler.config)
    ref.scheduler = (diffusers.TCDScheduler if scheduler == "tcd" else diffusers.LCMScheduler).from_config(ref.scheduler.config)
    return ours, ref


def plain(kind, scheduler, backend="torch"):
    key = ("plain", kind, backend)
    if key not in _loaded:
        pipe = getattr(pipelines, PLAIN[kind]).from_pretrained(tiny_pipeline(kind), backend=backend)
        pipe.set_progress_bar_config(disable=True)
        _loaded[key] = pipe
    pipe = _loaded[key]
    pipe.scheduler = (fewstep.TCDScheduler if scheduler == "tcd" else fewstep.LCMScheduler).from_config(pipe.scheduler.config)
    return pipe


def plain_image(kind, scheduler, kwargs, seed=0, backend="torch"):
    owned = set(owned_arguments((ControlNet("image"),))) | set(owned_arguments((T2IAdapter(),)))
    return plain(kind, scheduler, backend)(generator=fewstep.Generator(seed),
                                          **{k: v for k, v in kwargs.items() if k not in owned}).images


@pytest.mark.parametrize("class_name,kind,what", ADAPTER_PIPELINES, ids=case_ids(ADAPTER_PIPELINES))
def test_adapter_pipeline_matches_diffusers_and_changes_the_image(class_name, kind, what):
    import torch

    for scheduler, eta, guidance, negative, extra in cases_for(what):
        ours, ref = pair(class_name, kind, what, scheduler)
        kwargs = call_kwargs(what, scheduler, eta, guidance, negative, extra)
        got = ours(generator=fewstep.Generator(0), **kwargs).images
        want = ref(generator=torch.Generator().manual_seed(0), **kwargs).images
        assert got.shape == want.shape == (1, SIZE, SIZE, 3)
        err = np.abs(got - want).max()
        assert err <= IMAGE_ATOL, f"{scheduler} gs={guidance} {extra}: max |fewstep - diffusers| = {err:.3g}"
        effect = np.abs(got - plain_image(kind, scheduler, kwargs)).max()
        assert effect > MIN_EFFECT, f"{extra}: the adapter changed the image by only {effect:.3g}"


def test_controlnet_batch_images_per_prompt_and_default_size():
    """Two prompts x two images each, one control image per prompt; no height/width: the control
    image's size, as diffusers."""
    import torch

    from tests.adapter_cases import CONTROL, CONTROL_2

    ours, ref = pair("StableDiffusionControlNetPipeline", "sd15", "controlnet", "tcd")
    kwargs = dict(prompt=["a cat", "a dog"], image=[CONTROL, CONTROL_2], num_inference_steps=2, guidance_scale=1.5,
                  eta=0.3, num_images_per_prompt=2, output_type="np")
    got = ours(generator=[fewstep.Generator(s) for s in range(4)], **kwargs).images
    want = ref(generator=[torch.Generator().manual_seed(s) for s in range(4)], **kwargs).images
    assert got.shape == want.shape == (4, SIZE, SIZE, 3)
    assert np.abs(got - want).max() <= IMAGE_ATOL


def test_lcm_unet_passed_in_matches_diffusers(tmp_path):
    """The LCM guide's case: an LCM-distilled full UNet (time_cond_proj_dim set) passed as unet= into
    an SDXL pipeline; guidance goes through the w-embedding, not CFG."""
    import diffusers
    import torch

    folder = tiny_pipeline("sdxl")
    config = dict(diffusers.UNet2DConditionModel.load_config(folder, subfolder="unet"))
    config["time_cond_proj_dim"] = 32
    torch.manual_seed(3)
    diffusers.UNet2DConditionModel.from_config(config).save_pretrained(tmp_path / "lcm-unet")
    unet = fewstep.UNet2DConditionModel.from_pretrained(str(tmp_path / "lcm-unet"), backend="torch")
    ours = pipelines.StableDiffusionXLPipeline.from_pretrained(folder, unet=unet, scheduler=None)
    ours.scheduler = fewstep.LCMScheduler.from_config(ours.scheduler.config)
    ref = diffusers.StableDiffusionXLPipeline.from_pretrained(
        folder, unet=diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "lcm-unet"))
    ref.scheduler = diffusers.LCMScheduler.from_config(ref.scheduler.config)
    for p in (ours, ref):
        p.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="a fox", num_inference_steps=4, guidance_scale=8.0, height=SIZE, width=SIZE, output_type="np")
    got = ours(generator=fewstep.Generator(1), **kwargs).images
    want = ref(generator=torch.manual_seed(1), **kwargs).images
    assert ours.unet is unet
    assert np.abs(got - want).max() <= IMAGE_ATOL


def test_raw_diffusers_models_are_accepted_as_components():
    """A diffusers ControlNetModel passed in (as the guides load it) is wrapped, not refused."""
    import diffusers

    from fewstep.testing import tiny_controlnet

    raw = diffusers.ControlNetModel.from_pretrained(tiny_controlnet("sd15"))
    pipe = pipelines.StableDiffusionControlNetPipeline.from_pretrained(tiny_pipeline("sd15"), controlnet=raw)
    assert pipe.controlnet.module is raw


def test_lora_with_controlnet_matches_diffusers_and_leaves_the_controlnet_alone(tmp_path):
    import os

    import torch

    from tests.lora_cases import make_lora, targets_from_folder, write

    ours, ref = pair("StableDiffusionControlNetPipeline", "sd15", "controlnet", "tcd")
    path = write(str(tmp_path), "style", make_lora(targets_from_folder(tiny_pipeline("sd15")), seed=4), "peft", "sd15")
    before = {k: v.detach().clone() for k, v in ours.controlnet.module.state_dict().items()}
    try:
        ours.load_lora_weights(path, adapter_name="style")
        ours.fuse_lora()
        ref.load_lora_weights(os.path.dirname(path), weight_name=os.path.basename(path), adapter_name="style")
        ref.fuse_lora()
        kwargs = call_kwargs("controlnet", "tcd", 0.3, 1.5, "blurry", dict(controlnet_conditioning_scale=0.8))
        got = ours(generator=fewstep.Generator(2), **kwargs).images
        want = ref(generator=torch.Generator().manual_seed(2), **kwargs).images
        assert np.abs(got - want).max() <= IMAGE_ATOL
        after = ours.controlnet.module.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), "a LoRA changed the ControlNet's weights"
    finally:
        ours.unload_lora_weights()
        ref.unload_lora_weights()
