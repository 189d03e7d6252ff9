"""fewstep's schedulers as diffusers' and mindone's own: inside their pipelines, saved with them (through
the classes `fewstep.backends.scheduler_interop` builds), reloaded by them, the same `isinstance` answers
whatever the import order, and the types their code relies on (timesteps, previous_timestep, step outputs,
config attributes)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import fewstep
from fewstep.backends.scheduler_interop import diffusers_class, for_diffusers, for_mindone, mindone_class
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

    # a non-default value must survive; diffusers accepts and saves a scheduler of its SchedulerMixin only
    ours = diffusers_class(getattr(fewstep, scheduler))(timestep_spacing="trailing")
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

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_pipeline("sd15"),
                                                             scheduler=for_diffusers(fewstep.LCMScheduler()))
    assert isinstance(pipe.scheduler, diffusers.SchedulerMixin)
    assert pipe.config["scheduler"] == ("diffusers", "LCMScheduler")
    with pytest.raises(ValueError, match="should be"):
        diffusers.StableDiffusionPipeline.from_pretrained(tiny_pipeline("sd15"), scheduler=object())
    # fewstep's own class is no SchedulerMixin, imports or not: asking for the interop class is explicit
    with pytest.raises(ValueError, match="should be"):
        diffusers.StableDiffusionPipeline.from_pretrained(tiny_pipeline("sd15"), scheduler=fewstep.LCMScheduler())


# One fresh interpreter per import order. It fails if `import fewstep` imports a framework, if a plain
# fewstep scheduler is a SchedulerMixin (built before or after diffusers), or if diffusers' own
# from_pretrained refuses the interop scheduler.
_ORDER_CHECK = """
import sys

def frameworks():
    return {{m.split(".")[0] for m in sys.modules}} & {{"torch", "diffusers", "mindspore", "mindone"}}

if {order!r} == "diffusers_first":
    import diffusers
before = frameworks()
{import_fewstep}
added = sorted(frameworks() - before)
assert not added, f"import fewstep imported {{added}}"
early = fewstep.TCDScheduler()
import diffusers
from fewstep.backends.scheduler_interop import diffusers_class, for_diffusers
late = fewstep.TCDScheduler()
print("PLAIN", isinstance(early, diffusers.SchedulerMixin), isinstance(late, diffusers.SchedulerMixin),
      issubclass(fewstep.LCMScheduler, diffusers.SchedulerMixin), fewstep.TCDScheduler.__bases__)
cls = diffusers_class(fewstep.TCDScheduler)
ours = for_diffusers(early)
print("INTEROP", issubclass(cls, diffusers.SchedulerMixin), issubclass(cls, diffusers.ConfigMixin), type(ours) is cls)
pipe = diffusers.StableDiffusionPipeline.from_pretrained({folder!r}, scheduler=ours)
print("ACCEPTED", pipe.scheduler is ours, list(pipe.config["scheduler"]))
"""


def _order_check(order, import_fewstep="import fewstep"):
    code = _ORDER_CHECK.format(order=order, import_fewstep=import_fewstep, folder=tiny_pipeline("sd15"))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.mark.torch
@pytest.mark.parametrize("order", ["fewstep_first", "diffusers_first"])
def test_isinstance_answers_the_same_whatever_the_import_order(order):
    result = _order_check(order)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [ln for ln in result.stdout.splitlines() if ln.split(" ")[0] in ("PLAIN", "INTEROP", "ACCEPTED")]
    assert lines == [
        "PLAIN False False False (<class 'fewstep.core.schedulers.scheduler.ConsistencyScheduler'>,)",
        "INTEROP True True True",
        "ACCEPTED True ['diffusers', 'TCDScheduler']",
    ], result.stdout


@pytest.mark.torch
def test_order_check_fails_when_importing_fewstep_imports_a_framework():
    # The check above must be able to fail: here the import step pulls diffusers (and torch) in.
    result = _order_check("fewstep_first", import_fewstep="import fewstep, diffusers")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "AssertionError: import fewstep imported ['diffusers', 'torch']"
    assert "PLAIN" not in result.stdout


# ---------------------------------------------------------------------------------------------
# The interop module itself


@pytest.mark.torch
def test_interop_class_is_built_once_and_is_the_fewstep_class_with_the_mixins():
    import diffusers

    from fewstep.core.schedulers.scheduler import ConsistencyScheduler

    cls = diffusers_class(fewstep.TCDScheduler)
    assert cls is diffusers_class(fewstep.TCDScheduler) is diffusers_class(cls)  # cached, and idempotent
    assert cls.__name__ == "TCDScheduler" and issubclass(cls, fewstep.TCDScheduler)
    assert cls.__mro__[1:5] == (fewstep.TCDScheduler, ConsistencyScheduler, *ConsistencyScheduler.__mro__[1:3])
    assert issubclass(cls, diffusers.SchedulerMixin) and issubclass(cls, diffusers.ConfigMixin)
    assert not issubclass(fewstep.TCDScheduler, diffusers.SchedulerMixin)  # building it changed no fewstep class
    assert type(cls.from_config(fewstep.TCDScheduler().config)) is cls
    # the core's compatibles list fewstep's own classes, not the interop ones built on them
    assert fewstep.TCDScheduler().compatibles == cls().compatibles == [fewstep.TCDScheduler]


@pytest.mark.torch
def test_for_diffusers_copies_config_and_state_and_leaves_the_scheduler_alone(tmp_path):
    import diffusers

    x = fewstep.Generator(0).randn((1, 4, 8, 8))
    plain = fewstep.LCMScheduler(timestep_spacing="trailing")
    plain.set_timesteps(4)
    x1 = plain.step(x, plain.timesteps[0], x, generator=fewstep.Generator(1)).prev_sample
    ours = for_diffusers(plain)
    assert type(ours) is diffusers_class(fewstep.LCMScheduler) and isinstance(ours, diffusers.SchedulerMixin)
    assert not isinstance(plain, diffusers.SchedulerMixin)
    assert ours.config == plain.config and ours.config["timestep_spacing"] == "trailing"
    assert np.array_equal(ours.timesteps, plain.timesteps) and ours.step_index == plain.step_index == 1
    # the next step from the copied state equals the original's, and moves only the copy's index
    t = ours.timesteps[1]
    got = ours.step(x, t, x1, generator=fewstep.Generator(2)).prev_sample
    assert ours.step_index == 2 and plain.step_index == 1
    want = plain.step(x, t, x1, generator=fewstep.Generator(2)).prev_sample
    assert np.array_equal(got, want)
    assert for_diffusers(ours) is ours
    again = pickle.loads(pickle.dumps(ours))
    assert type(again) is type(ours) and again.config == ours.config and again.step_index == 2
    ours.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "scheduler_config.json").read_text())["_class_name"] == "LCMScheduler"


def test_interop_refuses_what_is_not_a_fewstep_scheduler():
    from fewstep.backends import scheduler_interop

    built = dict(scheduler_interop._CLASSES)
    with pytest.raises(TypeError) as err:
        for_diffusers(object())
    assert str(err.value).splitlines()[0] == (
        "for_diffusers takes a fewstep scheduler (fewstep.TCDScheduler, fewstep.LCMScheduler), got 'object'; "
        "build one with fewstep.TCDScheduler.from_config(scheduler.config).")
    with pytest.raises(TypeError, match=r"^mindone_class takes a fewstep scheduler class .* got <class 'dict'>\.$"):
        mindone_class(dict)
    assert scheduler_interop._CLASSES == built  # nothing built, no library imported for it


def test_interop_class_without_the_library_says_how_to_install_it(monkeypatch):
    from fewstep.backends import scheduler_interop

    class OwnTCD(fewstep.TCDScheduler):  # not built before, so the library is asked for
        pass

    built = dict(scheduler_interop._CLASSES)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if diffusers were not installed
    with pytest.raises(ImportError) as err:
        diffusers_class(OwnTCD)
    first = str(err.value).splitlines()[0]
    assert first.startswith("diffusers_class needs diffusers, which cannot be imported (")
    assert first.endswith("); install it with `pip install 'fewstep[torch]' -c constraints.txt`.")
    assert scheduler_interop._CLASSES == built


# ---------------------------------------------------------------------------------------------
# mindone


def _mindone():
    from fewstep.backends.mindspore_cpu import install_cpu_kernels

    install_cpu_kernels()  # before mindone's models are imported (they bind mint ops at import); completes its exports
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
        ours = mindone_class(getattr(fewstep, scheduler))(timestep_spacing="trailing")
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


@pytest.mark.mindspore
@pytest.mark.torch
def test_mindone_class_from_either_class_and_for_mindone():
    import diffusers

    md = _mindone()
    from mindone.diffusers.schedulers.scheduling_utils import SchedulerMixin

    cls = mindone_class(fewstep.TCDScheduler)
    assert cls is mindone_class(diffusers_class(fewstep.TCDScheduler)) is mindone_class(cls)
    assert cls is not diffusers_class(fewstep.TCDScheduler) and issubclass(cls, md.ConfigMixin)
    plain = fewstep.TCDScheduler(beta_schedule="linear")
    plain.set_timesteps(2)
    ours = for_mindone(for_diffusers(plain))
    assert type(ours) is cls and isinstance(ours, SchedulerMixin) and not isinstance(ours, diffusers.SchedulerMixin)
    assert ours.config == plain.config and np.array_equal(ours.timesteps, plain.timesteps)
    assert not isinstance(plain, SchedulerMixin)


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
