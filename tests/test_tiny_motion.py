"""The tiny AnimateDiff parts of fewstep.testing (MotionAdapter, motion LoRA): built offline, deterministic,
cached, loadable by diffusers, fitting the tiny SD 1.5 UNet, and each visibly changing the frames."""

import json
import os
import re

import numpy as np
import pytest

from fewstep.testing import tiny_motion_adapter, tiny_motion_lora, tiny_pipeline
from fewstep.testing.tiny_models import FORMAT_VERSION as PIPELINE_FORMAT_VERSION
from fewstep.testing.tiny_models import MARKER, stack_tag
from fewstep.testing.tiny_motion import (
    FORMAT_VERSION, MOTION_ADAPTER_CONFIG, MOTION_LORA_RANK, MOTION_LORA_WEIGHT_NAME, build_motion_adapter,
)

pytestmark = pytest.mark.torch

# The frames must move by more than this when a motion part is added: far above float32 noise (~1e-6),
# so a pipeline that silently drops the motion modules or the LoRA fails.
VISIBLE = 1e-2


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-motion")
    return {"adapter": tiny_motion_adapter(path=root / "adapter"), "lora": tiny_motion_lora(path=root / "lora")}


def _tensors(folder):
    from safetensors.numpy import load_file

    return load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors"))


def _zero_init_names():
    """The parameters a fresh diffusers MotionAdapter of our config starts with at exactly zero."""
    import diffusers
    import torch

    with torch.random.fork_rng(devices=[]):
        fresh = diffusers.MotionAdapter(**MOTION_ADAPTER_CONFIG)
    return [n for n, p in fresh.named_parameters() if not p.any()]


def _pipeline(adapter):
    import diffusers

    pipe = diffusers.AnimateDiffPipeline.from_pretrained(tiny_pipeline("sd15"), motion_adapter=adapter)
    pipe.scheduler = diffusers.TCDScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _frames(pipe, num_frames):
    import torch

    out = pipe("a cat walks", num_frames=num_frames, height=64, width=64, num_inference_steps=2,
               guidance_scale=0.0, generator=torch.Generator().manual_seed(0), output_type="np")
    return np.asarray(out.frames)


def _without_motion(folder):
    """The adapter with every temporal transformer's proj_out zeroed: each motion module is then the
    identity (output = input + proj_out(...)), i.e. the plain per-frame UNet path."""
    import diffusers
    import torch

    adapter = diffusers.MotionAdapter.from_pretrained(folder)
    with torch.no_grad():
        for name, param in adapter.named_parameters():
            if ".proj_out." in name:
                param.zero_()
    return adapter


# --- layout ------------------------------------------------------------------------------------------------
def test_adapter_loads_fits_the_tiny_unet_and_has_no_zero_left(folders):
    import diffusers

    adapter = diffusers.MotionAdapter.from_pretrained(folders["adapter"])
    assert list(adapter.config.block_out_channels) == [16, 32]
    assert adapter.config.motion_norm_num_groups == 8 and adapter.config.use_motion_mid_block
    params = dict(adapter.named_parameters())
    zero_init = _zero_init_names()
    # the norm shifts (GroupNorm norm.bias, LayerNorm norm1/2/3.bias) of all 11 motion modules
    assert len(zero_init) == 44 and all(n.endswith(".bias") for n in zero_init)
    assert all(params[n].abs().max() > 1e-2 for n in zero_init)
    assert all(p.any() for p in params.values())
    unet = diffusers.UNet2DConditionModel.from_pretrained(tiny_pipeline("sd15"), subfolder="unet")
    motion_unet = diffusers.UNetMotionModel.from_unet2d(unet, adapter)
    assert len([n for n, _ in motion_unet.named_parameters() if ".motion_modules." in n]) == len(
        [n for n in params if ".motion_modules." in n])


def test_motion_lora_layout(folders):
    tensors = _tensors(folders["lora"])
    assert os.listdir(folders["lora"]) and MOTION_LORA_WEIGHT_NAME in os.listdir(folders["lora"])
    # 11 motion modules x (attn1, attn2) x (to_q, to_k, to_v, to_out) x (down, up)
    assert len(tensors) == 176
    key = "unet.down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.processor.to_q_lora"
    assert tensors[f"{key}.down.weight"].shape == (MOTION_LORA_RANK, 16)
    assert tensors[f"{key}.up.weight"].shape == (16, MOTION_LORA_RANK)
    key = "unet.mid_block.motion_modules.0.transformer_blocks.0.attn2.processor.to_out_lora"
    assert tensors[f"{key}.down.weight"].shape == (MOTION_LORA_RANK, 32)
    assert {k.split(".")[1] for k in tensors} == {"down_blocks", "mid_block", "up_blocks"}
    assert all(k.startswith("unet.") and ".processor." in k for k in tensors)
    assert all(v.dtype == np.float32 and v.any() for v in tensors.values())


# --- the frames change ---------------------------------------------------------------------------------------
def test_zeroed_motion_modules_are_the_plain_unet(folders):
    """What the frames are compared against below: with proj_out zeroed, the motion UNet is the 2-D UNet
    applied frame by frame."""
    import diffusers
    import torch

    unet = diffusers.UNet2DConditionModel.from_pretrained(tiny_pipeline("sd15"), subfolder="unet").eval()
    g = torch.Generator().manual_seed(0)
    frames, latents = 3, torch.randn(1, 4, 3, 16, 16, generator=g)
    text = torch.randn(frames, 77, 32, generator=g)
    with torch.no_grad():
        per_frame = unet(latents[0].permute(1, 0, 2, 3), 500, text).sample
        zeroed = diffusers.UNetMotionModel.from_unet2d(unet, _without_motion(folders["adapter"])).eval()
        plain = zeroed(latents, 500, text).sample[0].permute(1, 0, 2, 3)
        motion = diffusers.UNetMotionModel.from_unet2d(
            unet, diffusers.MotionAdapter.from_pretrained(folders["adapter"])).eval()
        moved = motion(latents, 500, text).sample[0].permute(1, 0, 2, 3)
    torch.testing.assert_close(plain, per_frame, rtol=0, atol=1e-5)  # same ops, other batching: float32 noise
    assert (moved - per_frame).abs().max() > VISIBLE


@pytest.mark.parametrize("num_frames", [4, 8])
def test_motion_adapter_changes_the_frames(folders, num_frames):
    import diffusers

    frames = _frames(_pipeline(diffusers.MotionAdapter.from_pretrained(folders["adapter"])), num_frames)
    assert frames.shape == (1, num_frames, 64, 64, 3) and np.isfinite(frames).all()
    plain = _frames(_pipeline(_without_motion(folders["adapter"])), num_frames)
    assert np.abs(frames - plain).max() > VISIBLE


def test_motion_lora_loads_and_changes_the_frames(folders):
    import diffusers

    pipe = _pipeline(diffusers.MotionAdapter.from_pretrained(folders["adapter"]))
    before = _frames(pipe, 4)
    pipe.load_lora_weights(folders["lora"], weight_name=MOTION_LORA_WEIGHT_NAME, adapter_name="motion-lora")
    pipe.set_adapters(["motion-lora"], [1.2])
    assert pipe.get_list_adapters() == {"unet": ["motion-lora"]}
    # every file key reached the motion UNet: 88 projections, each with lora_A and lora_B
    lora = [n for n, _ in pipe.unet.named_parameters() if ".lora_" in n]
    assert len(lora) == 176 and all(".motion_modules." in n for n in lora)
    with_lora = _frames(pipe, 4)
    assert np.abs(with_lora - before).max() > VISIBLE
    pipe.disable_lora()
    np.testing.assert_array_equal(_frames(pipe, 4), before)


# --- seeds and the cache ---------------------------------------------------------------------------------
def test_deterministic_from_seed(folders, tmp_path):
    import torch

    state = torch.random.get_rng_state()
    for kind, build in (("adapter", tiny_motion_adapter), ("lora", tiny_motion_lora)):
        first = _tensors(folders[kind])
        again = _tensors(build(path=tmp_path / f"{kind}-again"))
        assert first.keys() == again.keys()
        for key in first:
            np.testing.assert_array_equal(first[key], again[key], err_msg=key)
        other = _tensors(build(seed=1, path=tmp_path / f"{kind}-other"))
        # drawn from the seed: all but the sinusoidal tables and the norm scales (ones, as in a fresh model)
        drawn = [k for k in first if not k.endswith(".pe") and not re.search(r"norm\d?\.weight$", k)]
        assert len(drawn) > len(first) // 2
        assert all(not np.array_equal(first[k], other[k]) for k in drawn), kind
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left alone
    saved = _tensors(folders["adapter"])
    for name, param in build_motion_adapter(0).state_dict().items():
        np.testing.assert_array_equal(saved[name], param.numpy(), err_msg=name)


def test_cache_reuses_and_rebuilds(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSTEP_CACHE", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / "tiny" / stack_tag()
    for name, build in (("motion-adapter", tiny_motion_adapter), ("motion-lora", tiny_motion_lora)):
        folder = build(seed=3)
        assert folder == str(cache / f"{name}-3")
        weights = os.path.join(folder, "diffusion_pytorch_model.safetensors")
        stamp = os.stat(weights).st_mtime_ns
        assert build(seed=3) == folder and os.stat(weights).st_mtime_ns == stamp  # cached
        marker = os.path.join(folder, MARKER)
        want = {"kind": name, "seed": 3, "format": FORMAT_VERSION, "pipeline_format": PIPELINE_FORMAT_VERSION}
        assert json.load(open(marker)) == want
        json.dump(dict(want, pipeline_format=-1), open(marker, "w"))  # built for other tiny models: rebuilt
        assert build(seed=3) == folder and json.load(open(marker)) == want
    assert not [p for p in os.listdir(cache) if p.startswith(".")]  # no staging folder left


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("not a model")
    with pytest.raises(FileExistsError, match="MotionAdapter"):
        tiny_motion_adapter(path=tmp_path)
    with pytest.raises(FileExistsError, match="motion LoRA"):
        tiny_motion_lora(path=tmp_path)


# --- the SDXL MotionAdapter --------------------------------------------------------------------------------
def test_sdxl_adapter_fits_the_tiny_sdxl_pipeline_is_deterministic_and_moves_the_frames(tmp_path):
    import diffusers
    import torch

    from fewstep.testing import tiny_sdxl_motion_adapter
    from fewstep.testing.tiny_motion import SDXL_MOTION_ADAPTER_CONFIG

    folder = tiny_sdxl_motion_adapter(path=tmp_path / "a")
    saved = _tensors(folder)
    assert saved == {} or all(v.any() for v in saved.values()), "an all-zero tensor was left"
    again = _tensors(tiny_sdxl_motion_adapter(path=tmp_path / "b"))
    assert saved.keys() == again.keys() and all(np.array_equal(saved[k], again[k]) for k in saved)
    assert not any(k.startswith("mid_block.") for k in saved)  # no mid-block motion module, as the released SDXL one
    assert json.load(open(os.path.join(folder, MARKER)))["kind"] == "motion-adapter-sdxl"
    adapter = diffusers.MotionAdapter.from_pretrained(folder)
    assert adapter.config.use_motion_mid_block is SDXL_MOTION_ADAPTER_CONFIG["use_motion_mid_block"] is False
    pipe = diffusers.AnimateDiffSDXLPipeline.from_pretrained(tiny_pipeline("sdxl"), motion_adapter=adapter)
    pipe.scheduler = diffusers.TCDScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    frames = np.asarray(pipe("a cat walks", num_frames=2, height=64, width=64, num_inference_steps=2,
                             guidance_scale=0.0, generator=torch.Generator().manual_seed(0), output_type="np").frames)
    assert frames.shape == (1, 2, 64, 64, 3)
    assert np.abs(frames[0, 0] - frames[0, 1]).max() > VISIBLE  # the frames are not all the same picture


def test_sdxl_adapter_refuses_foreign_folder(tmp_path):
    from fewstep.testing import tiny_sdxl_motion_adapter

    (tmp_path / "mine.txt").write_text("not a model")
    with pytest.raises(FileExistsError, match="SDXL MotionAdapter"):
        tiny_sdxl_motion_adapter(path=tmp_path)
    assert os.listdir(tmp_path) == ["mine.txt"]
