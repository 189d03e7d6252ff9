"""fewstep.parity: where two runs part. Clean comparisons stay in bounds at every stage; planted faults
(one UNet attention weight, the VAE decoder, a scheduler timestep, an fp16 overflow) are found at the
right stage and, for a model, in the right module; the CLI and the pytest helper report the same."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import fewstep
from fewstep.parity import compare, load_side, read_report, write_report
from fewstep.testing import ParityError, assert_parity, tiny_pipeline

TO_K = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
STEPS = 3
# one stochastic TCD run with classifier-free guidance and a negative prompt, one LCM run without
CASES = {"tcd": dict(prompt="a red fox", negative_prompt="blurry", num_inference_steps=STEPS, guidance_scale=2.0,
                     eta=0.3),
         "lcm": dict(prompt="a red fox", num_inference_steps=STEPS, guidance_scale=0.0)}

_sides = {}


def _side(kind, backend="torch", library="fewstep", scheduler="tcd", dtype="float32"):
    key = (kind, backend, library, scheduler, dtype)
    if key not in _sides:
        _sides[key] = load_side(tiny_pipeline(kind), library=library, backend=backend, scheduler=scheduler, dtype=dtype)
    return _sides[key]


def _noise(shape, seed=0):
    return 1e-2 * np.random.default_rng(seed).standard_normal(shape)


def _expected_labels(kind):
    encoders = ("text_encoder", "text_encoder_2") if kind == "sdxl" else ("text_encoder",)
    labels = {f"{e}.{part}[0]" for e in encoders for part in ("hidden", "pooled")}
    labels |= {"latents.initial[0]", "vae.decoder[0]", "image[0]"}
    labels |= {f"{stage}[{k}]" for k in range(STEPS) for stage in ("unet.input", "unet.output", "guidance", "scheduler")}
    return labels


def _perturb_torch(module, path):
    import torch

    weight = dict(module.named_parameters())[path]
    with torch.no_grad():
        weight += torch.from_numpy(_noise(tuple(weight.shape))).to(weight.dtype)


# ---------------------------------------------------------------------------------------------
# clean runs


@pytest.mark.parity
@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
@pytest.mark.parametrize("scheduler", ["tcd", "lcm"])
def test_torch_and_mindspore_agree_at_every_stage(tmp_path, kind, scheduler):
    report = compare(_side(kind, "torch", scheduler=scheduler), _side(kind, "mindspore", scheduler=scheduler),
                     CASES[scheduler], seed=3)
    bad = [s.label for s in report.stages if not s.ok]
    assert not bad and report.first_stage is None and report.passed, bad
    assert report.modules == []  # nothing to localise
    labels = {s.label for s in report.stages}
    assert _expected_labels(kind) <= labels
    # the JSON has an entry for every stage and step
    written = write_report(report, tmp_path)
    data = read_report(tmp_path)
    assert {f"{s['stage']}[{s['index']}]" for s in data["stages"]} == labels
    assert data["first_stage"] is None and data["passed"] is True
    assert set(written) == {"report", "images", "latents"}
    assert "mindspore" in data["environment"]["versions"] and "torch" in data["environment"]["versions"]


@pytest.mark.torch
@pytest.mark.parametrize("scheduler", ["tcd", "lcm"])
def test_fewstep_agrees_with_diffusers(scheduler):
    report = compare(_side("sd15", scheduler=scheduler), _side("sd15", library="diffusers", scheduler=scheduler),
                     CASES[scheduler], seed=5)
    assert report.side_b["library"] == "diffusers"
    assert [s.label for s in report.stages if not s.ok] == []
    assert report.passed


@pytest.mark.mindspore
def test_fewstep_agrees_with_mindone():
    report = compare(_side("sd15", "mindspore"), _side("sd15", "mindspore", library="mindone"), CASES["tcd"], seed=5)
    assert report.side_b["library"] == "mindone"
    assert [s.label for s in report.stages if not s.ok] == []
    assert report.passed


@pytest.mark.torch
def test_controlnet_residuals_are_stages_and_a_controlnet_fault_is_found_in_it():
    import diffusers

    from fewstep.parity import Side
    from fewstep.pipelines import StableDiffusionControlNetPipeline
    from fewstep.testing import tiny_controlnet
    from tests.adapter_cases import CONTROL

    folder, net = tiny_pipeline("sd15"), tiny_controlnet("sd15")
    ours = StableDiffusionControlNetPipeline.from_pretrained(
        folder, controlnet=fewstep.ControlNetModel.from_pretrained(net))
    ours.scheduler = fewstep.TCDScheduler.from_config(ours.scheduler.config)
    ref = diffusers.StableDiffusionControlNetPipeline.from_pretrained(
        folder, controlnet=diffusers.ControlNetModel.from_pretrained(net), safety_checker=None,
        requires_safety_checker=False)
    ref.scheduler = diffusers.TCDScheduler.from_config(ref.scheduler.config)
    kwargs = dict(CASES["tcd"], image=CONTROL, controlnet_conditioning_scale=0.8)
    report = compare(Side(ours), Side(ref), kwargs, seed=6)
    residuals = [s for s in report.stages if s.stage.startswith("controlnet.residual")]
    assert len(residuals) >= STEPS * 2 and all(s.ok for s in report.stages), report.first_stage
    _perturb_torch(ref.controlnet, "controlnet_mid_block.weight")
    report = compare(Side(ours), Side(ref), kwargs, seed=6)
    assert report.first_stage.stage.startswith("controlnet.residual") and report.first_stage.index == 0
    assert report.first_module.path == "controlnet_mid_block"


# ---------------------------------------------------------------------------------------------
# planted faults


@pytest.mark.parity
def test_a_perturbed_attention_weight_in_the_mindspore_unet_is_found():
    import mindspore as ms

    side_b = load_side(tiny_pipeline("sd15"), backend="mindspore")
    weight = dict(side_b.pipe.unet.module.parameters_and_names())[TO_K + ".weight"]
    weight.set_data(ms.Tensor((weight.asnumpy() + _noise(weight.shape)).astype(np.float32)))
    report = compare(_side("sd15", "torch"), side_b, CASES["tcd"], seed=3)
    assert report.first_stage.label == "unet.output[0]"
    assert all(s.ok for s in report.stages[:report.stages.index(report.first_stage)])
    assert report.localised_stage == "unet.output[0]"
    module = report.first_module
    assert module.path == TO_K and module.call == 0
    assert module.input_rel_l2 <= module.bound  # it introduces the difference; its inputs agree
    # modules after it that only carry the difference have inputs out of bounds
    after = report.modules[report.modules.index(module) + 1:]
    assert any(not m.ok and m.input_rel_l2 > m.bound for m in after)


@pytest.mark.torch
def test_a_fault_in_the_vae_decoder_is_reported_as_vae_only():
    side_b = load_side(tiny_pipeline("sd15"))
    _perturb_torch(side_b.pipe.vae.module.decoder, "conv_out.weight")
    report = compare(_side("sd15"), side_b, CASES["lcm"], seed=1)
    assert report.first_stage.label == "vae.decoder[0]"
    assert all(s.ok for s in report.stages if s.stage not in ("vae.decoder", "image"))
    assert report.first_module.path == "conv_out"


class _OffByOne(fewstep.TCDScheduler):
    """Steps to timesteps one above the schedule's after the first (a planted off-by-one)."""

    def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
        super().set_timesteps(num_inference_steps, device, **kwargs)
        shifted = np.array(self.timesteps)
        shifted[1:] += 1
        self.timesteps = shifted


@pytest.mark.torch
def test_an_off_by_one_scheduler_timestep_is_reported_at_the_scheduler():
    side_b = load_side(tiny_pipeline("sd15"))
    side_b.pipe.scheduler = _OffByOne.from_config(side_b.pipe.scheduler.config)
    report = compare(_side("sd15"), side_b, CASES["tcd"], seed=2)
    assert report.first_stage.label == "scheduler[0]"
    assert report.localised_stage is None and report.modules == []  # no model call to rerun


@pytest.mark.torch
def test_float16_against_float32_and_the_vae_upcast():
    """SDXL's VAE overflows float16 in its upper decoder blocks, which is why diffusers (and fewstep)
    decode it in float32. A tiny SDXL VAE with one such activation (a conv scaled by 1e5 before a
    GroupNorm, which undoes the scale) is clean against float32 with the upcast and out of bounds at the
    VAE decoder, in that conv, without it."""
    import torch

    sides = [load_side(tiny_pipeline("sdxl"), dtype=dtype) for dtype in ("float32", "float16")]
    for side in sides:
        conv = side.pipe.vae.module.decoder.up_blocks[0].resnets[0].conv1
        with torch.no_grad():
            conv.weight.mul_(1e5)
            conv.bias.mul_(1e5)
    kwargs = dict(prompt="a red fox", num_inference_steps=2, eta=0.3, guidance_scale=0.0)
    report = compare(sides[0], sides[1], kwargs, seed=4)
    assert report.first_stage is None and report.passed
    assert report.stages[0].bound == 2e-2  # the float16 default
    sides[1].pipe.vae.config["force_upcast"] = False
    report = compare(sides[0], sides[1], kwargs, seed=4)
    assert report.first_stage.label == "vae.decoder[0]"
    assert report.first_module.path == "up_blocks.0.resnets.0.conv1"
    assert not report.passed


# ---------------------------------------------------------------------------------------------
# pytest helper and CLI


@pytest.mark.torch
def test_assert_parity_passes_clean_and_raises_with_the_table():
    report = assert_parity(_side("sd15"), _side("sd15", library="diffusers"), CASES["lcm"])
    assert report.passed
    side_b = load_side(tiny_pipeline("sd15"))
    _perturb_torch(side_b.pipe.unet.module, TO_K + ".weight")
    with pytest.raises(ParityError, match=f"part at unet.output\\[0\\], first in module {TO_K}") as err:
        assert_parity(_side("sd15"), side_b, CASES["lcm"])
    assert "stage" in str(err.value) and "!!" in str(err.value)
    assert err.value.report.first_module.path == TO_K


@pytest.fixture(scope="module")
def faulty_folder(tmp_path_factory):
    """A copy of the tiny SD 1.5 folder with one attention weight of its UNet changed on disk."""
    from safetensors.numpy import load_file, save_file

    folder = tmp_path_factory.mktemp("faulty") / "sd15-faulty"
    shutil.copytree(tiny_pipeline("sd15"), folder)
    (path,) = (folder / "unet").glob("*.safetensors")
    tensors = load_file(str(path))
    tensors[TO_K + ".weight"] = tensors[TO_K + ".weight"] + _noise(tensors[TO_K + ".weight"].shape).astype(np.float32)
    save_file(tensors, str(path))
    return folder


@pytest.mark.torch
def test_cli_model_b_finds_the_fault_and_the_exit_status_follows_the_tolerance(tmp_path, capsys, faulty_folder):
    from fewstep.cli import main

    argv = ["parity", "a fox", "--model", str(tiny_pipeline("sd15")), "--model-b", str(faulty_folder),
            "--steps", "2", "--seed", "1", "-o", str(tmp_path / "side.png")]
    assert main(argv + ["--json", "--tolerance", "1e-5", "--report", str(tmp_path / "report")]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["first_stage"] == "unet.output[0]" and data["first_module"]["path"] == TO_K
    assert data["passed"] is False and data["tolerance"] == 1e-5
    assert read_report(tmp_path / "report")["first_module"]["path"] == TO_K
    from PIL import Image

    assert Image.open(tmp_path / "report" / "images.png").size[0] % (3 * 64) == 0  # a, b, |a - b|
    assert Image.open(tmp_path / "report" / "latents.png").size == (640, 360)
    assert np.asarray(Image.open(tmp_path / "side.png")).shape == (64, 128, 3)
    # the same difference passes a looser tolerance; the table names the module
    assert main(argv + ["--tolerance", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"first divergent module: {TO_K}" in printed and "PASS" in printed


@pytest.mark.torch
def test_cli_against_diffusers_and_float16_are_clean(capsys):
    from fewstep.cli import main

    assert main(["parity", "a fox", "--model", tiny_pipeline("sd15"), "--against", "diffusers", "--steps", "2", "--seed", "2"]) == 0
    assert "first stage out of bounds: none" in capsys.readouterr().out
    assert main(["parity", "a fox", "--model", tiny_pipeline("sd15"), "--against", "float16", "--steps", "2", "--seed", "2", "--device-b", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "dtype=float16" in printed and "device=cpu" in printed


@pytest.mark.torch
def test_bad_parity_input_is_refused_before_anything_runs():
    from fewstep.cli import main

    with pytest.raises(ValueError, match="generator"):
        compare(_side("sd15"), _side("sd15"), {"prompt": "x", "generator": 1})
    # pipelines of two architectures: the structural difference is reported, not a crash
    report = compare(_side("sd15"), _side("sdxl"), {"prompt": "x", "num_inference_steps": 1})
    assert report.first_stage.note and any(s.note == "missing on side a" for s in report.stages)
    assert main(["parity", "a fox", "--model", tiny_pipeline("sd15"), "--against", "mindone", "--backend", "torch"]) == 2
    with pytest.raises(ValueError, match="library"):
        load_side(tiny_pipeline("sd15"), library="jax")


@pytest.mark.torch
def test_recording_leaves_nothing_behind():
    # Recording is hooks installed for one call: after `compare` the pipeline's models hold no hooks and
    # the scheduler's step is the class's own again, so a pipeline that is not compared pays nothing.
    # (transformers 5 models hold forward hooks of their own, for the hidden states they return: only fewstep's
    # recording hooks, functions of fewstep's modules, must be gone.)
    side = load_side(tiny_pipeline("sd15"))
    modules = [side.pipe.unet.module, side.pipe.vae.module, side.pipe.text_encoder.module]

    def ours():
        return [h for module in modules for m in module.modules() for h in m._forward_hooks.values()
                if getattr(h, "__module__", "").startswith("fewstep.")]

    compare(_side("sd15"), side, CASES["lcm"])
    assert not ours()
    assert "step" not in vars(side.pipe.scheduler)
