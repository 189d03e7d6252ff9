"""The tiny adapter models of fewstep.testing (ControlNet, T2I-Adapter, DPT): built offline, deterministic,
cached, loadable by diffusers/transformers, and shaped to fit the tiny pipelines' UNets."""

import json
import os

import numpy as np
import pytest

from fewstep.testing import tiny_controlnet, tiny_dpt, tiny_pipeline, tiny_t2i_adapter
from fewstep.testing.tiny_adapters import CONTROLNET_ZERO_PREFIXES, FORMAT_VERSION
from fewstep.testing.tiny_models import MARKER, stack_tag

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-adapters")
    out = {f"controlnet-{k}": tiny_controlnet(k, path=root / f"controlnet-{k}") for k in ("sd15", "sd21", "sdxl")}
    out.update({f"t2i-{k}": tiny_t2i_adapter(k, path=root / f"t2i-{k}") for k in ("sd15", "sdxl")})
    out["dpt"] = tiny_dpt(path=root / "dpt")
    return out


@pytest.fixture(scope="module")
def unets():
    """The tiny pipelines' UNets, loaded once per kind."""
    import diffusers

    loaded = {}

    def get(kind):
        if kind not in loaded:
            loaded[kind] = diffusers.UNet2DConditionModel.from_pretrained(tiny_pipeline(kind), subfolder="unet").eval()
        return loaded[kind]

    return get


def _tensors(folder):
    from safetensors.numpy import load_file

    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            out.update({f"{name}:{k}": v for k, v in load_file(os.path.join(folder, name)).items()})
    assert out, f"no safetensors in {folder}"
    return out


def _unet_inputs(kind, unet, batch=1):
    import torch

    g = torch.Generator().manual_seed(0)
    latents = torch.randn(batch, 4, 32, 32, generator=g)
    text = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g)
    kwargs = {}
    if kind == "sdxl":
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, 40, generator=g),
                                       "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * batch)}
    return latents, torch.tensor(500), text, kwargs


# --- ControlNet -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sd15", "sd21", "sdxl"])
def test_controlnet_loads_with_zero_layers_randomised(folders, unets, kind):
    import diffusers
    import torch

    controlnet = diffusers.ControlNetModel.from_pretrained(folders[f"controlnet-{kind}"])
    assert list(controlnet.config.conditioning_embedding_out_channels) == [16, 32]
    params = dict(controlnet.named_parameters())
    zero_init = [n for n in params if n.startswith(CONTROLNET_ZERO_PREFIXES)]
    assert len(zero_init) >= 4 and all(params[n].abs().max() > 1e-2 for n in zero_init)
    # the rest is the UNet of the tiny pipeline it was made from (what from_unet copies)
    unet = unets(kind)
    shared = [n for n, p in unet.named_parameters() if n in params]
    assert any(n.startswith("down_blocks.") for n in shared)
    for name, p in unet.named_parameters():
        if name in params:
            assert torch.equal(p, params[name]), name


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_controlnet_residuals_fit_the_tiny_unet(folders, unets, kind):
    import diffusers
    import torch

    controlnet = diffusers.ControlNetModel.from_pretrained(folders[f"controlnet-{kind}"]).eval()
    unet = unets(kind)
    latents, t, text, kwargs = _unet_inputs(kind, unet)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))  # the 64 px output size
    with torch.no_grad():
        down, mid = controlnet(latents, t, text, controlnet_cond=image, return_dict=False, **kwargs)
        assert len(down) == 6 and mid.shape == (1, 32, 16, 16)  # conv_in + 2 levels x (2 resnets) + 1 downsampler
        with_residuals = unet(latents, t, text, down_block_additional_residuals=down,
                              mid_block_additional_residual=mid, **kwargs).sample
        without = unet(latents, t, text, **kwargs).sample
    assert with_residuals.shape == latents.shape
    assert (with_residuals - without).abs().max() > 1e-2  # the residuals are not zero: dropping them shows


# --- T2I-Adapter ------------------------------------------------------------------------------------
T2I_FEATURES = {"sd15": [(16, 32, 32), (32, 16, 16)], "sdxl": [(16, 16, 16), (32, 16, 16)]}
T2I_PIPELINE = {"sd15": "StableDiffusionAdapterPipeline", "sdxl": "StableDiffusionXLAdapterPipeline"}


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_t2i_adapter_features_fit_and_all_reach_the_unet(folders, unets, kind):
    import diffusers
    import torch

    adapter = diffusers.T2IAdapter.from_pretrained(folders[f"t2i-{kind}"]).eval()
    assert all(p.any() for p in adapter.parameters())  # nothing zero-initialised to redraw
    unet = unets(kind)
    latents, t, text, kwargs = _unet_inputs(kind, unet)
    with torch.no_grad():
        features = adapter(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
        assert [tuple(f.shape[1:]) for f in features] == T2I_FEATURES[kind]
        base = unet(latents, t, text, down_intrablock_additional_residuals=[f.clone() for f in features],
                    **kwargs).sample
        for k in range(len(features)):  # the UNet skips a feature that fits no block; none may be skipped
            changed = [f.clone() * (2.0 if i == k else 1.0) for i, f in enumerate(features)]
            out = unet(latents, t, text, down_intrablock_additional_residuals=changed, **kwargs).sample
            assert (out - base).abs().max() > 1e-3, f"feature {k} does not reach the UNet"


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_t2i_adapter_runs_in_the_diffusers_pipeline(folders, kind):
    import diffusers
    import torch
    from PIL import Image

    adapter = diffusers.T2IAdapter.from_pretrained(folders[f"t2i-{kind}"])
    pipe = getattr(diffusers, T2I_PIPELINE[kind]).from_pretrained(tiny_pipeline(kind), adapter=adapter)
    # one TCD step starts at t=999, where the UNet's output (and so the adapter) shapes the whole image;
    # the folders' PNDM / Euler would take their single step near t=1, where it barely shows
    pipe.scheduler = diffusers.TCDScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    image = Image.fromarray(np.random.RandomState(0).randint(0, 256, (64, 64, 3), dtype=np.uint8))
    images = {}
    for scale in (1.0, 0.0):
        images[scale] = pipe("a squirrel", image=image, height=64, width=64, num_inference_steps=1,
                             guidance_scale=0.0, adapter_conditioning_scale=scale, output_type="np",
                             generator=torch.Generator().manual_seed(0)).images
    assert images[1.0].shape == (1, 64, 64, 3) and np.isfinite(images[1.0]).all()
    assert np.abs(images[1.0] - images[0.0]).max() > 1e-2  # the adapter changes the image


# --- DPT --------------------------------------------------------------------------------------------
def test_dpt_loads_and_predicts_depth(folders):
    import torch
    from PIL import Image
    from transformers import DPTForDepthEstimation, DPTImageProcessor

    processor = DPTImageProcessor.from_pretrained(folders["dpt"])
    model = DPTForDepthEstimation.from_pretrained(folders["dpt"]).eval()
    assert all(p.any() for p in model.parameters())  # zero-initialised tensors were redrawn
    rng = np.random.RandomState(0)
    images = [Image.fromarray(rng.randint(0, 256, (80, 100, 3), dtype=np.uint8)) for _ in range(2)]
    pixels = processor(images=images, return_tensors="pt").pixel_values
    assert pixels.shape == (2, 3, 64, 64)
    with torch.no_grad():
        depth = model(pixel_values=pixels).predicted_depth
    assert depth.shape == (2, 64, 64)
    assert depth.min() > 0 and depth[0].std() > 1e-3  # the final ReLU does not zero it
    assert (depth[0] - depth[1]).abs().max() > 1e-2  # depends on the image


@pytest.mark.slow  # importing mindone takes ~10 s
@pytest.mark.parity
@pytest.mark.mindspore
def test_dpt_on_mindone_matches_transformers(folders):
    import torch
    from transformers import DPTForDepthEstimation

    from fewstep.backends.mindspore_cpu import install_cpu_kernels

    install_cpu_kernels()  # before mindone is imported (GeluExt has no CPU kernel)
    import mindspore as ms
    import mindone.transformers as mt

    pixels = np.random.RandomState(0).uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = DPTForDepthEstimation.from_pretrained(folders["dpt"]).eval()(
            pixel_values=torch.tensor(pixels)).predicted_depth.numpy()
    model = mt.DPTForDepthEstimation.from_pretrained(folders["dpt"])
    model.set_train(False)
    got = model(pixel_values=ms.Tensor(pixels))[0].asnumpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)  # float32 reductions in another order; seen 1.8e-7


# --- seeds and the cache ----------------------------------------------------------------------------
BUILDERS = {
    "controlnet": lambda seed, path: tiny_controlnet("sd15", seed=seed, path=path),
    "t2i-sd15": lambda seed, path: tiny_t2i_adapter("sd15", seed=seed, path=path),
    "t2i-sdxl": lambda seed, path: tiny_t2i_adapter("sdxl", seed=seed, path=path),
    "dpt": lambda seed, path: tiny_dpt(seed=seed, path=path),
}
FIXTURE_NAME = {"controlnet": "controlnet-sd15", "t2i-sd15": "t2i-sd15", "t2i-sdxl": "t2i-sdxl", "dpt": "dpt"}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_deterministic_from_seed(folders, tmp_path, name):
    import torch

    state = torch.random.get_rng_state()
    again = _tensors(BUILDERS[name](0, tmp_path / "again"))
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left alone
    first = _tensors(folders[FIXTURE_NAME[name]])
    assert first.keys() == again.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], again[key], err_msg=key)
    if name != "controlnet":  # (a ControlNet of seed 1 would also build the seed-1 pipeline)
        other = _tensors(BUILDERS[name](1, tmp_path / "other"))
        assert any(not np.array_equal(first[k], other[k]) for k in first)


def test_cache_reuses_and_rebuilds(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSTEP_CACHE", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / "tiny" / stack_tag()
    folder = tiny_t2i_adapter("sdxl", seed=3)
    assert folder == str(cache / "t2i-adapter-sdxl-3")
    assert tiny_dpt(seed=3) == str(cache / "dpt-3")
    weights = os.path.join(folder, "diffusion_pytorch_model.safetensors")
    stamp = os.stat(weights).st_mtime_ns
    assert tiny_t2i_adapter("sdxl", seed=3) == folder and os.stat(weights).st_mtime_ns == stamp  # cached
    marker = os.path.join(folder, MARKER)
    assert json.load(open(marker)) == {"kind": "t2i-adapter-sdxl", "seed": 3, "format": FORMAT_VERSION}
    json.dump({"kind": "t2i-adapter-sdxl", "seed": 3, "format": -1}, open(marker, "w"))  # older: rebuilt
    assert tiny_t2i_adapter("sdxl", seed=3) == folder and json.load(open(marker))["format"] == FORMAT_VERSION
    assert not [p for p in os.listdir(cache) if p.startswith(".")]  # no staging folder left


def test_refuses_foreign_folder_and_unknown_kind(tmp_path):
    (tmp_path / "mine.txt").write_text("not a model")
    with pytest.raises(FileExistsError, match="ControlNet"):
        tiny_controlnet("sd15", path=tmp_path)
    with pytest.raises(FileExistsError, match="DPT"):
        tiny_dpt(path=tmp_path)
    with pytest.raises(ValueError, match="sd21"):
        tiny_controlnet("sd15-inpaint")
    with pytest.raises(ValueError, match="sdxl"):
        tiny_t2i_adapter("sd21")


# --- whole-pipeline folders: a diffusers-saved MultiAdapter pipeline, an LCM pipeline -------------------------
@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_multi_adapter_pipeline_folder_is_what_diffusers_saves(kind, tmp_path):
    import diffusers

    from fewstep.testing import tiny_multi_adapter_pipeline

    folder = tiny_multi_adapter_pipeline(kind, path=tmp_path / "multi")
    index = json.load(open(os.path.join(folder, "model_index.json")))
    assert index["adapter"] == ["diffusers", "MultiAdapter"]
    assert {"adapter", "adapter_1"} <= set(os.listdir(folder)) and "adapter_2" not in os.listdir(folder)
    for sub, seed in (("adapter", 0), ("adapter_1", 1)):  # each one the tiny adapter of that seed
        got, want = _tensors(os.path.join(folder, sub)), _tensors(tiny_t2i_adapter(kind, seed=seed))
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in got), sub
    loaded = diffusers.MultiAdapter.from_pretrained(os.path.join(folder, "adapter"))
    assert loaded.num_adapter == 2


def test_multi_adapter_pipeline_refuses_other_than_two_seeds(tmp_path):
    from fewstep.testing import tiny_multi_adapter_pipeline

    with pytest.raises(ValueError, match="^A tiny MultiAdapter pipeline takes exactly two adapter seeds, got 3"):
        tiny_multi_adapter_pipeline("sd15", seeds=(0, 1, 2), path=tmp_path / "multi")
    with pytest.raises(ValueError, match="^Unknown tiny T2I-Adapter kind 'sd21'"):
        tiny_multi_adapter_pipeline("sd21", path=tmp_path / "multi")
    assert os.listdir(tmp_path) == []


def test_lcm_pipeline_folder_has_an_lcm_unet_and_scheduler(tmp_path):
    import diffusers

    from fewstep.testing import tiny_lcm_pipeline
    from fewstep.testing.tiny_adapters import LCM_UNET_TIME_COND_PROJ_DIM

    folder = tiny_lcm_pipeline(path=tmp_path / "lcm")
    index = json.load(open(os.path.join(folder, "model_index.json")))
    assert index["_class_name"] == "LatentConsistencyModelPipeline" and index["scheduler"][1] == "LCMScheduler"
    config = diffusers.UNet2DConditionModel.load_config(folder, subfolder="unet")
    assert config["time_cond_proj_dim"] == LCM_UNET_TIME_COND_PROJ_DIM
    unet = _tensors(os.path.join(folder, "unet"))
    assert unet["diffusion_pytorch_model.safetensors:time_embedding.cond_proj.weight"].any()  # the guidance input
    assert _tensors(os.path.join(folder, "vae")).keys() == _tensors(os.path.join(tiny_pipeline("sd15"), "vae")).keys()
    again = _tensors(os.path.join(tiny_lcm_pipeline(path=tmp_path / "again"), "unet"))
    assert all(np.array_equal(unet[k], again[k]) for k in unet)
