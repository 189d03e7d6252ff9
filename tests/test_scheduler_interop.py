"""fewstep's schedulers as diffusers' and mindone's own: inside their pipelines, saved with them,
reloaded by them, and the types their code relies on (timesteps, previous_timestep, step outputs,
config attributes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import fewstep
from fewstep.testing import tiny_pipeline

SIZE = 64
KINDS = [("StableDiffusionPipeline", "sd15"), ("StableDiffusionXLPipeline", "sdxl")]
SCHEDULERS = [("TCDScheduler", {"eta": 0.3}), ("LCMScheduler", {})]
# The same arithmetic on the same weights in one process: what a scheduler swap may change is only the
# rounding of the step's float32 combinations (measured 3.6e-7 on the image).
ATOL = 1e-5


def _kwargs(extra):
    return dict(prompt="a red fox", num_inference_steps=4, guidance_scale=0.0, output_type="np", height=SIZE,
                width=SIZE, **extra)


# ---------------------------------------------------------------------------------------------
# diffusers


@pytest.mark.torch
@pytest.mark.parametrize("pipeline,kind", KINDS)
@pytest.mark.parametrize("scheduler,extra", SCHEDULERS)
def test_diffusers_pipeline_with_fewstep_scheduler_saves_and_reloads(tmp_path, pipeline, kind, scheduler, extra):
    import diffusers
    import torch

    ours = getattr(fewstep, scheduler)(timestep_spacing="trailing")  # a non-default value must survive
    pipe = getattr(diffusers, pipeline).from_pretrained(tiny_pipeline(kind), scheduler=ours)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler is ours
    before = pipe(generator=torch.manual_seed(2), **_kwargs(extra)).images

    # the reference: the same pipeline with diffusers' own scheduler class from the same config
    pipe.scheduler = getattr(diffusers, scheduler).from_config(ours.config)
    reference = pipe(generator=torch.manual_seed(2), **_kwargs(extra)).images
    assert np.abs(before - reference).max() <= ATOL
    pipe.scheduler = ours

    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", scheduler]  # loadable without fewstep
    reloaded = getattr(diffusers, pipeline).from_pretrained(tmp_path)
    reloaded.set_progress_bar_config(disable=True)
    assert type(reloaded.scheduler) is getattr(diffusers, scheduler)
    assert reloaded.scheduler.config["timestep_spacing"] == "trailing"
    after = reloaded(generator=torch.manual_seed(2), **_kwargs(extra)).images
    assert np.abs(before - after).max() <= ATOL

    # the saved config in diffusers' own class, and back into fewstep's
    own = getattr(diffusers, scheduler).from_pretrained(tmp_path, subfolder="scheduler")
    again = getattr(fewstep, scheduler).from_pretrained(tmp_path, subfolder="scheduler")
    for key, value in ours.config.items():
        if not key.startswith("_"):
            assert own.config[key] == value and again.config[key] == value, key


@pytest.mark.torch
def test_diffusers_from_pretrained_accepts_scheduler_and_rejects_other_objects():
    import diffusers

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_pipeline("sd15"), scheduler=fewstep.LCMScheduler())
    assert isinstance(pipe.scheduler, diffusers.SchedulerMixin)
    assert pipe.config["scheduler"] == ("diffusers", "LCMScheduler")
    with pytest.raises(ValueError, match="should be"):
        diffusers.StableDiffusionPipeline.from_pretrained(tiny_pipeline("sd15"), scheduler=object())


def test_schedulers_become_diffusers_schedulers_whatever_the_import_order():
    # Fresh interpreters: a scheduler built before diffusers is imported, and diffusers imported first.
    for order in ("fewstep_first", "diffusers_first"):
        code = f"""
            import sys
            if "{order}" == "diffusers_first":
                import diffusers
            import fewstep
            s = fewstep.TCDScheduler()
            assert "diffusers" in sys.modules or "{order}" == "fewstep_first"
            import diffusers
            from diffusers import ConfigMixin, SchedulerMixin
            assert isinstance(s, SchedulerMixin) and isinstance(s, ConfigMixin)
            assert issubclass(fewstep.LCMScheduler, SchedulerMixin)
            print("OK")
        """
        result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                                timeout=300)
        if "No module named 'diffusers'" in result.stderr:
            pytest.skip("diffusers is not installed")
        assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# mindone


def _mindone():
    from fewstep.backends.mindspore_cpu import install_cpu_kernels

    install_cpu_kernels()  # before mindone's models are imported (they bind mint ops at import)
    import mindone.diffusers as md

    return md


def _mindone_scheduler(name):
    import mindone.diffusers.schedulers as schedulers  # mindone.diffusers does not export TCDScheduler

    return getattr(schedulers, name)


@pytest.mark.mindspore
@pytest.mark.parametrize("pipeline,kind", KINDS)
def test_fewstep_scheduler_in_mindone_pipeline_gives_mindones_result(pipeline, kind):
    """fewstep's TCD / LCM inside mindone's own pipeline against mindone's scheduler, same latents and
    the same np.random.Generator for the per-step noise."""
    import mindspore as ms

    md = _mindone()
    pipe = getattr(md, pipeline).from_pretrained(tiny_pipeline(kind))
    pipe.set_progress_bar_config(disable=True)
    latents = ms.tensor(fewstep.Generator(11).randn((1, 4, SIZE // 2, SIZE // 2)))  # the tiny VAEs downsample by 2
    for scheduler, extra in SCHEDULERS:
        results = []
        for cls in (_mindone_scheduler(scheduler), getattr(fewstep, scheduler)):
            pipe.scheduler = cls.from_config(pipe.scheduler.config)
            out = pipe(latents=latents, generator=np.random.Generator(np.random.PCG64(3)), **_kwargs(extra))[0]
            results.append(np.asarray(out))
        assert isinstance(pipe.scheduler, getattr(fewstep, scheduler))
        err = np.abs(results[0] - results[1]).max()
        assert err <= ATOL, f"{scheduler}: max |mindone scheduler - fewstep scheduler| = {err:.3g}"


@pytest.mark.mindspore
@pytest.mark.parametrize("pipeline,kind", KINDS)
def test_mindone_pipeline_with_fewstep_scheduler_saves_and_reloads(tmp_path, pipeline, kind):
    import mindspore as ms

    md = _mindone()
    latents = ms.tensor(fewstep.Generator(4).randn((1, 4, SIZE // 2, SIZE // 2)))
    for scheduler, extra in SCHEDULERS:
        folder = tmp_path / scheduler
        ours = getattr(fewstep, scheduler)(timestep_spacing="trailing")
        pipe = getattr(md, pipeline).from_pretrained(tiny_pipeline(kind), scheduler=ours)
        pipe.set_progress_bar_config(disable=True)
        assert pipe.scheduler is ours
        before = pipe(latents=latents, generator=np.random.Generator(np.random.PCG64(1)), **_kwargs(extra))[0]
        pipe.save_pretrained(folder)
        assert json.loads((folder / "model_index.json").read_text())["scheduler"] == ["diffusers", scheduler]
        own = _mindone_scheduler(scheduler).from_pretrained(folder, subfolder="scheduler")
        assert own.config["timestep_spacing"] == "trailing"
        saved = [folder]
        if scheduler == "TCDScheduler":
            # mindone 0.5.0 does not export TCDScheduler from mindone.diffusers, where its from_pretrained looks up
            # the model_index class; fewstep's MindSpore set-up adds the export (mindspore_cpu.complete_mindone_exports),
            # so a folder saved with fewstep's TCD or with mindone's own reloads.
            pipe.scheduler = own
            pipe.save_pretrained(tmp_path / "mindone_own")
            saved.append(tmp_path / "mindone_own")
        for path in saved:
            reloaded = getattr(md, pipeline).from_pretrained(path)
            reloaded.set_progress_bar_config(disable=True)
            assert type(reloaded.scheduler) is _mindone_scheduler(scheduler)
            after = reloaded(latents=latents, generator=np.random.Generator(np.random.PCG64(1)), **_kwargs(extra))[0]
            assert np.abs(np.asarray(before) - np.asarray(after)).max() <= ATOL


# ---------------------------------------------------------------------------------------------
# Types diffusers code relies on


@pytest.mark.torch
def test_timesteps_follow_the_device_set_timesteps_names():
    import torch

    for cls in (fewstep.TCDScheduler, fewstep.LCMScheduler):
        s = cls()
        s.set_timesteps(4, device=torch.device("cpu"))
        assert isinstance(s.timesteps, torch.Tensor) and s.timesteps.dtype == torch.int64
        assert s.timesteps.to("cpu").tolist() == [999, 759, 499, 259]
        assert s.timesteps[1].item() == 759
        previous = s.previous_timestep(s.timesteps[0])
        assert isinstance(previous, torch.Tensor) and previous.item() == 759
        assert s.previous_timestep(s.timesteps[-1]).item() == -1
        s.set_timesteps(4, device="cpu")  # a device string, as diffusers pipelines may pass
        assert isinstance(s.timesteps, torch.Tensor)
        s.set_timesteps(4)  # no device: NumPy again
        assert isinstance(s.timesteps, np.ndarray) and s.timesteps.dtype == np.int64
        previous = s.previous_timestep(999)
        assert isinstance(previous, np.integer) and previous.item() == 759


@pytest.mark.torch
def test_step_with_tensor_timesteps_equals_numpy_timesteps():
    import torch

    x = torch.from_numpy(fewstep.Generator(0).randn((1, 4, 8, 8)))
    eps = torch.from_numpy(fewstep.Generator(1).randn((1, 4, 8, 8)))
    outs = []
    for device in (None, "cpu"):
        s = fewstep.TCDScheduler()
        s.set_timesteps(4, device=device)
        sample, g = x, fewstep.Generator(3)
        for t in s.timesteps:
            sample = s.step(eps, t, sample, eta=0.3, generator=g).prev_sample
        outs.append(sample)
    assert torch.equal(outs[0], outs[1])


def test_step_outputs_are_dict_like():
    x = np.ones((1, 4, 8, 8), np.float32)
    for cls, second in ((fewstep.TCDScheduler, "pred_noised_sample"), (fewstep.LCMScheduler, "denoised")):
        s = cls()
        s.set_timesteps(2)
        out = s.step(x, s.timesteps[0], x, generator=fewstep.Generator(0))
        assert list(out.keys()) == ["prev_sample", second]
        assert out[0] is out.prev_sample is out["prev_sample"]
        assert [v is w for v, w in zip(out.values(), out.to_tuple())] == [True, True]
        assert dict(out.items())[second] is getattr(out, second)
        prev, other = s.step(x, s.timesteps[1], x, return_dict=False)
        assert prev.shape == other.shape == x.shape


def test_config_keys_read_as_attributes_warn_like_diffusers():
    s = fewstep.LCMScheduler(num_train_timesteps=500)
    with pytest.warns(FutureWarning, match="scheduler.config.num_train_timesteps"):
        assert s.num_train_timesteps == 500
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert s.config.num_train_timesteps == 500
        with pytest.raises(AttributeError, match="'LCMScheduler' object has no attribute 'not_a_key'"):
            s.not_a_key
    assert fewstep.TCDScheduler().compatibles == [fewstep.TCDScheduler]
    assert fewstep.TCDScheduler._deprecated_kwargs == []


def test_saved_config_is_diffusers_json(tmp_path):
    s = fewstep.TCDScheduler(beta_schedule="linear")
    s.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert config["_class_name"] == "TCDScheduler" and config["beta_schedule"] == "linear"
    assert os.listdir(tmp_path) == ["scheduler_config.json"]
