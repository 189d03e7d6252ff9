"""AnimateDiff on torch against diffusers' AnimateDiffPipeline on the same tiny components, and on
MindSpore against torch and mindone; the video layout, the motion LoRA, the CLI and bad input."""

import os

import numpy as np
import pytest

import fewstep
from fewstep import pipelines
from fewstep.testing import tiny_pipeline
from fewstep.testing.tiny_motion import tiny_motion_adapter, tiny_motion_lora
from tests.pipeline_cases import SIZE

pytestmark = pytest.mark.torch

FRAMES_ATOL = 1e-4  # as tests/test_pipelines_torch.py; measured ~6e-7
MIN_EFFECT = 1e-2
# (scheduler, eta, guidance, frames)
CASES = [("tcd", 0.3, 0.0, 4), ("lcm", 0.0, 1.25, 8)]
# On MindSpore (8-15x slower per model call on CPU) the guided case takes 4 frames: the same code paths
# (CFG, the motion modules' frame attention) at half the cost; torch checks 8 frames against diffusers.
MS_CASES = [(scheduler, eta, guidance, 4) for scheduler, eta, guidance, _ in CASES]
MOTION_LORA = "diffusion_pytorch_model.safetensors"

_loaded = {}


def set_scheduler(pipe, scheduler, lib=fewstep):
    pipe.scheduler = (lib.TCDScheduler if scheduler == "tcd" else lib.LCMScheduler).from_config(pipe.scheduler.config)


def ours(backend="torch"):
    if backend not in _loaded:
        adapter = fewstep.MotionAdapter.from_pretrained(tiny_motion_adapter(), backend=backend)
        pipe = pipelines.AnimateDiffPipeline.from_pretrained(tiny_pipeline("sd15"), backend=backend, motion_adapter=adapter)
        pipe.set_progress_bar_config(disable=True)
        _loaded[backend] = pipe
    return _loaded[backend]


def reference():
    import diffusers

    if "ref" not in _loaded:
        adapter = diffusers.MotionAdapter.from_pretrained(tiny_motion_adapter())
        pipe = diffusers.AnimateDiffPipeline.from_pretrained(tiny_pipeline("sd15"), motion_adapter=adapter)
        pipe.set_progress_bar_config(disable=True)
        _loaded["ref"] = pipe
    return _loaded["ref"]


def call(scheduler, eta, guidance, frames, **more):
    kwargs = dict(prompt="a red fox running", num_frames=frames, num_inference_steps=4, guidance_scale=guidance,
                  negative_prompt="blurry" if guidance > 1 else None, height=SIZE, width=SIZE, output_type="np", **more)
    if scheduler == "tcd":
        kwargs["eta"] = eta
    return kwargs


def both(scheduler, kwargs, seed=0):
    import diffusers
    import torch

    mine, ref = ours(), reference()
    set_scheduler(mine, scheduler)
    set_scheduler(ref, scheduler, diffusers)
    return (mine(generator=fewstep.Generator(seed), **kwargs).frames,
            ref(generator=torch.Generator().manual_seed(seed), **kwargs).frames)


def _per_frame_sd(kwargs, scheduler):
    """The same latents through the plain SD UNet frame by frame: what the motion modules change."""
    key = "plain"
    if key not in _loaded:
        _loaded[key] = pipelines.StableDiffusionPipeline.from_pretrained(tiny_pipeline("sd15"))
        _loaded[key].set_progress_bar_config(disable=True)
    plain = _loaded[key]
    set_scheduler(plain, scheduler)
    frames = kwargs["num_frames"]
    latents = fewstep.Generator(0).randn((1, 4, frames, SIZE // 2, SIZE // 2))
    per_frame = np.ascontiguousarray(latents[0].transpose(1, 0, 2, 3))
    rest = {k: v for k, v in kwargs.items() if k not in ("num_frames", "prompt")}
    return plain(prompt=["a red fox running"] * frames, latents=per_frame, generator=fewstep.Generator(0),
                 **rest).images[None], latents


def test_animatediff_matches_diffusers_and_the_motion_modules_matter():
    for scheduler, eta, guidance, frames in CASES:
        kwargs = call(scheduler, eta, guidance, frames)
        got, want = both(scheduler, kwargs)
        assert got.shape == want.shape == (1, frames, SIZE, SIZE, 3)
        err = np.abs(got - want).max()
        assert err <= FRAMES_ATOL, f"{scheduler} gs={guidance} {frames} frames: max |fewstep - diffusers| = {err:.3g}"
    plain, latents = _per_frame_sd(call("tcd", 0.0, 0.0, 4), "tcd")
    mine = ours()
    set_scheduler(mine, "tcd")
    video = mine(latents=latents, generator=fewstep.Generator(0), **call("tcd", 0.0, 0.0, 4)).frames
    assert np.abs(video - plain).max() > MIN_EFFECT


def test_motion_lora_beside_a_few_step_lora_matches_diffusers(tmp_path):
    from tests.lora_cases import make_lora, targets_from_folder, write

    few_step = write(str(tmp_path), "tcd", make_lora(targets_from_folder(tiny_pipeline("sd15")), seed=3,
                                                    components=("unet",)), "peft", "sd15")
    motion = tiny_motion_lora()
    mine, ref = ours(), reference()
    mine.load_lora_weights(few_step, adapter_name="tcd")
    mine.load_lora_weights(motion, weight_name=MOTION_LORA, adapter_name="motion-lora")
    ref.load_lora_weights(str(tmp_path), weight_name="tcd.safetensors", adapter_name="tcd")
    ref.load_lora_weights(motion, weight_name=MOTION_LORA, adapter_name="motion-lora")
    try:
        for p in (mine, ref):
            p.set_adapters(["tcd", "motion-lora"], adapter_weights=[1.0, 1.2])
        for scheduler, eta, guidance, frames in CASES:
            kwargs = call(scheduler, eta, guidance, frames, cross_attention_kwargs={"scale": 1})
            got, want = both(scheduler, kwargs)
            assert np.abs(got - want).max() <= FRAMES_ATOL, scheduler
        mine.set_adapters(["tcd", "motion-lora"], adapter_weights=[1.0, 0.0])
        without_motion = mine(generator=fewstep.Generator(0), **call("tcd", 0.3, 0.0, 4)).frames
        mine.set_adapters(["tcd", "motion-lora"], adapter_weights=[1.0, 1.2])
        with_motion = mine(generator=fewstep.Generator(0), **call("tcd", 0.3, 0.0, 4)).frames
        assert np.abs(with_motion - without_motion).max() > MIN_EFFECT
    finally:
        mine.unload_lora_weights()
        ref.unload_lora_weights()


def test_decode_chunk_size_and_pil_frames():
    mine = ours()
    set_scheduler(mine, "tcd")
    kwargs = call("tcd", 0.3, 0.0, 4)
    whole = mine(generator=fewstep.Generator(2), **kwargs).frames
    chunked = mine(generator=fewstep.Generator(2), decode_chunk_size=1, **kwargs).frames
    # one frame per VAE call vs four: the same frames up to the convolutions' float rounding
    assert np.abs(whole - chunked).max() <= 1e-5
    kwargs["output_type"] = "pil"
    pil = mine(generator=fewstep.Generator(2), **kwargs).frames
    assert len(pil) == 1 and len(pil[0]) == 4 and pil[0][0].size == (SIZE, SIZE)


def test_entry_points_and_from_pipe():
    adapter = fewstep.MotionAdapter.from_pretrained(tiny_motion_adapter())
    auto = fewstep.AutoPipelineForText2Image.from_pretrained(tiny_pipeline("sd15"), motion_adapter=adapter)
    assert type(auto) is pipelines.AnimateDiffPipeline
    base = pipelines.StableDiffusionPipeline.from_pretrained(tiny_pipeline("sd15"))
    video = pipelines.AnimateDiffPipeline.from_pipe(base, motion_adapter=adapter)
    assert video.vae is base.vae and video.text_encoder is base.text_encoder
    assert "motion_max_seq_length" in video.unet.config


def test_bad_input(tmp_path):
    import diffusers

    mine = ours()
    with pytest.raises(ValueError, match="num_frames=64 is more than this motion adapter's motion_max_seq_length"):
        mine("a fox", num_frames=64, num_inference_steps=1)
    wide = diffusers.MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=2, motion_num_attention_heads=2,
                                   motion_norm_num_groups=8)
    with pytest.raises(ValueError, match="block_out_channels are \\[32, 64\\], the UNet's \\[16, 32\\]"):
        pipelines.AnimateDiffPipeline.from_pretrained(tiny_pipeline("sd15"), motion_adapter=wide)
    with pytest.raises(ValueError, match="UNet is SDXL's"):
        pipelines.AnimateDiffPipeline.from_pretrained(tiny_pipeline("sdxl"), motion_adapter=mine.motion_adapter)
    # a motion LoRA on a model without motion modules: the modules it names are not there
    plain = pipelines.StableDiffusionPipeline.from_pretrained(tiny_pipeline("sd15"))
    with pytest.raises(ValueError, match="motion_modules"):
        plain.load_lora_weights(tiny_motion_lora(), weight_name=MOTION_LORA)


def test_cli_writes_a_gif_and_refuses_other_outputs(tmp_path, capsys):
    from PIL import Image

    from fewstep.cli import main

    out = tmp_path / "fox.gif"
    assert main(["generate", "a fox", "--frames", "4", "--steps", "2", "--seed", "1", "-o", str(out)]) == 0
    with Image.open(out) as gif:
        assert gif.n_frames == 4 and gif.size == (SIZE, SIZE)
    assert main(["generate", "a fox", "--frames", "4", "-o", str(tmp_path / "fox.png")]) == 2
    assert "name the output .gif or .mp4" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "fox.png")


@pytest.mark.parity
@pytest.mark.mindspore
def test_mindspore_matches_torch_and_mindone():
    import mindspore as ms

    from fewstep.backends.mindspore_cpu import install_cpu_kernels

    for scheduler, eta, guidance, frames in MS_CASES:
        kwargs = call(scheduler, eta, guidance, frames)
        images = {}
        for backend in ("torch", "mindspore"):
            pipe = ours(backend)
            set_scheduler(pipe, scheduler)
            images[backend] = pipe(generator=fewstep.Generator(5), **kwargs).frames
        err = np.abs(images["torch"] - images["mindspore"]).max()
        assert err <= FRAMES_ATOL, f"{scheduler}: max |torch - mindspore| = {err:.3g}"
    install_cpu_kernels()  # before mindone is imported
    import mindone.diffusers as md
    from mindone.diffusers.schedulers import TCDScheduler as MdTCD

    ref = md.AnimateDiffPipeline.from_pretrained(tiny_pipeline("sd15"),
                                                 motion_adapter=md.MotionAdapter.from_pretrained(tiny_motion_adapter()))
    ref.set_progress_bar_config(disable=True)
    ref.scheduler = MdTCD.from_config(ref.scheduler.config)
    pipe = ours("mindspore")
    set_scheduler(pipe, "tcd")
    latents = fewstep.Generator(11).randn((1, 4, 4, SIZE // 2, SIZE // 2))
    kwargs = call("tcd", 0.3, 0.0, 4)
    got = pipe(latents=latents, generator=np.random.Generator(np.random.PCG64(3)), **kwargs).frames
    want = ref(latents=ms.tensor(latents), generator=np.random.Generator(np.random.PCG64(3)), **kwargs)[0]
    err = np.abs(got - np.asarray(want)).max()
    assert err <= FRAMES_ATOL, f"max |fewstep - mindone| = {err:.3g}"


@pytest.mark.parity
@pytest.mark.mindspore
def test_mindspore_motion_lora_matches_torch(tmp_path):
    """The motion LoRA beside a few-step LoRA, fused by fewstep on both frameworks: the same frames."""
    from tests.lora_cases import make_lora, targets_from_folder, write

    few_step = write(str(tmp_path), "tcd", make_lora(targets_from_folder(tiny_pipeline("sd15")), seed=3,
                                                    components=("unet",)), "peft", "sd15")
    frames = {}
    for backend in ("torch", "mindspore"):
        pipe = ours(backend)
        pipe.load_lora_weights(few_step, adapter_name="tcd")
        pipe.load_lora_weights(tiny_motion_lora(), weight_name=MOTION_LORA, adapter_name="motion-lora")
        try:
            pipe.set_adapters(["tcd", "motion-lora"], adapter_weights=[1.0, 1.2])
            set_scheduler(pipe, "tcd")
            frames[backend] = pipe(generator=fewstep.Generator(5), **call("tcd", 0.3, 0.0, 4)).frames
        finally:
            pipe.unload_lora_weights()
    err = np.abs(frames["torch"] - frames["mindspore"]).max()
    assert err <= FRAMES_ATOL, f"max |torch - mindspore| with the LoRAs = {err:.3g}"
