"""Where LoRA fusion keeps base weights (`fuse_lora(keep_base="file" | "host" | "device")`): every mode
unfuses and switches bit for bit and fuses what diffusers fuses, on torch and MindSpore; "file" and
"host" keep no copy beside the weights; "file" trusts a safetensors file only when it still gives the
weight in memory exactly (a weight changed after loading, a file rewritten after loading get copies,
and a file rewritten after fusing is refused with nothing written).

The diffusers references (fused weights, images) are tests/test_lora_fusion.py's, on the tiny SD 1.5.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from fewstep import pipelines
from fewstep.core.lora import LoraError
from fewstep.pipelines import lora_bases
from tests.test_lora_fusion import (IMAGE_ATOL, PARITY_ATOL, assert_bitwise, assert_weights, fused, run,
                                    sd15_case)

pytestmark = [pytest.mark.torch, pytest.mark.filterwarnings("ignore:Already found a `peft_config`:UserWarning")]

BACKENDS = ["torch", pytest.param("mindspore", marks=pytest.mark.mindspore)]
UNET_FILE = os.path.join("unet", "diffusion_pytorch_model.safetensors")


def kinds(pipe) -> dict:
    """(component, path) -> where its base is kept now."""
    return {key: lora_bases.kind(saved) for key, saved in pipe._lora_state().saved.items()}


@pytest.fixture
def shared_pipe(tmp_path_factory):
    """The cached tiny SD 1.5 pipeline of tests/test_lora_fusion.py, put back to the default mode after."""
    pipes = []

    def get(backend):
        pipe = sd15_case(tmp_path_factory).pipeline(backend)
        pipes.append(pipe)
        return pipe

    yield get
    for pipe in pipes:
        pipe.unload_lora_weights()
        pipe.fuse_lora(keep_base="file")


@pytest.mark.parametrize("mode", ["file", "host", "device"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_mode_unfuses_switches_and_fuses_exactly(tmp_path_factory, shared_pipe, backend, mode):
    case = sd15_case(tmp_path_factory)
    pipe = shared_pipe(backend)
    pipe.fuse_lora(keep_base=mode)
    pipe.load_lora_weights(case.files["kohya"], adapter_name="a")
    pipe.load_lora_weights(case.file_b, adapter_name="b")
    # where the bases are: "file" keeps only references (the tiny pipeline was loaded from its files),
    # "host" NumPy copies, "device" the weights' own tensors; no framework tensor outside "device"
    assert kinds(pipe) and set(kinds(pipe).values()) == {mode}
    if mode != "device":
        assert not any(pipe.ops.is_tensor(saved) for saved in pipe._lora_state().saved.values())
    pipe.unfuse_lora()
    assert_bitwise(fused(pipe, case), case.base_weights)
    switches = [(["a"], None), (["b"], [0.3]), (["a", "b"], [0.5, 0.5]), (["b", "a"], [1.0, 0.2]), (["a"], [2.0])]
    for i in range(20):
        pipe.set_adapters(*switches[i % len(switches)])
        if i % 7 == 3:
            pipe.fuse_lora(lora_scale=0.5)
    pipe.fuse_lora(lora_scale=1.0)
    pipe.set_adapters(["a", "b"], [1.0, 0.8])
    switched = fused(pipe, case)
    assert_weights(switched, case.weights_ab)
    err = np.abs(run(pipe) - case.image_ab).max()
    assert err <= (IMAGE_ATOL if backend == "torch" else PARITY_ATOL), f"max |fewstep - diffusers| = {err:.3g}"
    pipe.unload_lora_weights()
    assert_bitwise(fused(pipe, case), case.base_weights)
    pipe.load_lora_weights(case.files["kohya"], adapter_name="a")
    pipe.load_lora_weights(case.file_b, adapter_name="b")
    pipe.set_adapters(["a", "b"], [1.0, 0.8])
    assert_bitwise(switched, fused(pipe, case))  # 20 switches end where one fusion does
    # moving the kept bases to another place is exact too
    other = {"file": "device", "host": "file", "device": "host"}[mode]
    pipe.fuse_lora(keep_base=other)
    assert set(kinds(pipe).values()) == {other}
    assert_bitwise(fused(pipe, case), switched)
    pipe.unfuse_lora()
    assert_bitwise(fused(pipe, case), case.base_weights)


@pytest.mark.parametrize("mode", ["file", "host"])
def test_file_and_host_modes_fuse_and_switch_in_the_weights_own_memory(shared_pipe, tmp_path_factory, mode):
    """What keeps fusing from growing the process (tests/test_lora_keep_base's slow memory test measures
    it at SD 1.5 size): with the base kept apart, the first fusion writes into the loaded weight and a
    switch into the fused one, on torch, so no weight is ever allocated anew; "file" restores by reading
    the file into the same memory. "device" keeps the loaded tensor as the base, so its fused weight is new."""
    case = sd15_case(tmp_path_factory)
    pipe = shared_pipe("torch")
    pipe.fuse_lora(keep_base=mode)

    def addresses():
        return {key: getattr(pipe, key[0]).named_weight(key[1]).data_ptr() for key in pipe._lora_state().saved}

    loaded = {key: getattr(pipe, key[0]).named_weight(key[1]).data_ptr()
              for key in [(c, p) for c in ("unet", "text_encoder") for p in getattr(pipe, c).lora_targets()]}
    pipe.load_lora_weights(case.files["kohya"], adapter_name="a")
    pipe.load_lora_weights(case.file_b, adapter_name="b")
    first = addresses()
    assert first and all(first[key] == loaded[key] for key in first)
    pipe.set_adapters(["a", "b"], [1.0, 0.8])
    assert addresses() == first
    assert_weights(fused(pipe, case), case.weights_ab)
    keys = list(first)
    pipe.unfuse_lora()
    assert_bitwise(fused(pipe, case), case.base_weights)
    if mode == "file":
        assert all(getattr(pipe, c).named_weight(p).data_ptr() == first[(c, p)] for c, p in keys)
    pipe.unload_lora_weights()
    pipe.fuse_lora(keep_base="device")
    unfused = {(c, p): getattr(pipe, c).named_weight(p).data_ptr() for c, p in keys}
    pipe.load_lora_weights(case.files["kohya"], adapter_name="a")
    assert all(ptr != unfused[key] for key, ptr in addresses().items())  # the unfused tensor is the base


def test_an_interrupted_switch_or_unfuse_is_finished_by_the_next_one(shared_pipe, tmp_path_factory, monkeypatch):
    """Re-fusing and restoring write into the weights themselves: one stopped part-way (Ctrl-C, out of
    memory) must leave no weight that the LoRA state takes for done."""
    import fewstep.pipelines.lora as lora_module

    case = sd15_case(tmp_path_factory)
    pipe = shared_pipe("torch")
    pipe.fuse_lora(keep_base="file")
    pipe.load_lora_weights(case.files["kohya"], adapter_name="a")
    pipe.load_lora_weights(case.file_b, adapter_name="b")
    pipe.set_adapters(["a"])
    keys = list(pipe._lora_state().saved)

    def weights():
        return {key: pipe.ops.to_numpy(getattr(pipe, key[0]).named_weight(key[1])).copy() for key in keys}

    only_a = weights()

    def stopping(real, after):
        calls = []

        def wrapper(*args, **kwargs):
            calls.append(1)
            if len(calls) > after:
                raise KeyboardInterrupt
            return real(*args, **kwargs)
        return wrapper

    # stopped after the base of the 4th weight was read into it, before its fusion
    monkeypatch.setattr(lora_module, "fused_weight", stopping(lora_module.fused_weight, 3))
    with pytest.raises(KeyboardInterrupt):
        pipe.set_adapters(["a", "b"], [1.0, 0.8])
    monkeypatch.undo()
    pipe.set_adapters(["a"])  # back to what most weights still carry
    assert_bitwise(weights(), only_a)
    # a restore stopped part-way: the bases of the rest are still there
    monkeypatch.setattr(lora_bases, "materialize", stopping(lora_bases.materialize, 3))
    with pytest.raises(KeyboardInterrupt):
        pipe.unfuse_lora()
    monkeypatch.undo()
    pipe.unfuse_lora()
    assert_bitwise(fused(pipe, case), case.base_weights)
    pipe.set_adapters(["a"])
    assert_bitwise(weights(), only_a)


def _load(folder, backend):
    pipe = pipelines.StableDiffusionPipeline.from_pretrained(folder, backend=backend)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _rewrite_unet_file(folder, path, delta=1e-3):
    """Replace the UNet's safetensors file (a new file moved in place) with `path`'s weight changed."""
    from safetensors.numpy import load_file, save_file

    file = os.path.join(folder, UNET_FILE)
    tensors = load_file(file)
    tensors[f"{path}.weight"] = tensors[f"{path}.weight"] + np.float32(delta)
    save_file(tensors, file + ".new")
    os.replace(file + ".new", file)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_weight_changed_after_loading_is_restored_to_its_changed_value(tmp_path_factory, backend):
    case = sd15_case(tmp_path_factory)
    path = sorted(case.a["unet"])[0]
    pipe = _load(case.folder, backend)
    if backend == "torch":
        import torch

        with torch.no_grad():
            pipe.unet.module.get_submodule(path).weight += 1e-3   # in place, as a user would
    else:
        pipe.unet.set_weight(path, pipe.unet.named_weight(path) + 1e-3)
    changed = fused(pipe, case)
    assert not np.array_equal(changed[("unet", path)], case.base_weights[("unet", path)])
    pipe.load_lora_weights(case.files["kohya"])        # keep_base="file", the default
    where = kinds(pipe)
    assert where[("unet", path)] == "host"               # its file no longer holds it: a copy
    assert set(v for k, v in where.items() if k != ("unet", path)) == {"file"}
    pipe.set_adapters(["default_0"], [0.5])
    pipe.unfuse_lora()
    assert_bitwise(fused(pipe, case), changed)


def test_a_file_rewritten_after_loading_is_not_trusted(tmp_path_factory, tmp_path):
    case = sd15_case(tmp_path_factory)
    folder = str(tmp_path / "model")
    shutil.copytree(case.folder, folder)
    path = sorted(case.a["unet"])[0]
    pipe = _load(folder, "torch")
    _rewrite_unet_file(folder, path)
    pipe.load_lora_weights(case.files["kohya"])
    where = kinds(pipe)
    assert {v for (c, _), v in where.items() if c == "unet"} == {"host"}  # every weight of that file: copies
    assert {v for (c, _), v in where.items() if c != "unet"} == {"file"}
    pipe.unfuse_lora()
    assert_bitwise(fused(pipe, case), case.base_weights)  # the values loaded, not the file's new ones


def test_a_file_rewritten_after_fusing_is_refused_with_nothing_written(tmp_path_factory, tmp_path):
    case = sd15_case(tmp_path_factory)
    folder = str(tmp_path / "model")
    shutil.copytree(case.folder, folder)
    original = open(os.path.join(folder, UNET_FILE), "rb").read()
    path = sorted(case.a["unet"])[0]
    pipe = _load(folder, "torch")
    pipe.load_lora_weights(case.files["kohya"])
    before = fused(pipe, case)
    _rewrite_unet_file(folder, path)
    with pytest.raises(LoraError, match=r"has changed since.*No weight was changed"):
        pipe.unfuse_lora()
    assert_bitwise(fused(pipe, case), before)
    with pytest.raises(LoraError, match=r"has changed since"):
        pipe.set_adapters(["default_0"], [0.5])
    assert_bitwise(fused(pipe, case), before)
    # the same bytes written again (a new file, new stamp): its tensors still give the weights exactly
    with open(os.path.join(folder, UNET_FILE) + ".new", "wb") as f:
        f.write(original)
    os.replace(os.path.join(folder, UNET_FILE) + ".new", os.path.join(folder, UNET_FILE))
    pipe.unfuse_lora()
    assert_bitwise(fused(pipe, case), case.base_weights)


def test_components_not_loaded_from_files_keep_host_copies(tmp_path_factory):
    import diffusers

    case = sd15_case(tmp_path_factory)
    unet = diffusers.UNet2DConditionModel.from_pretrained(os.path.join(case.folder, "unet"))
    pipe = pipelines.StableDiffusionPipeline.from_pretrained(case.folder, backend="torch", unet=unet)
    pipe.load_lora_weights(case.files["kohya"])
    assert {v for (c, _), v in kinds(pipe).items() if c == "unet"} == {"host"}
    pipe.unload_lora_weights()
    assert_bitwise(fused(pipe, case), case.base_weights)


def test_keep_base_is_checked_and_outlives_unload(shared_pipe):
    pipe = shared_pipe("torch")
    with pytest.raises(LoraError, match=r"keep_base must be one of \['file', 'host', 'device'\]; got 'disk'"):
        pipe.fuse_lora(keep_base="disk")
    assert pipe._lora_state().keep_base == "file"  # the default
    pipe.fuse_lora(keep_base="host")
    pipe.unload_lora_weights()
    assert pipe._lora_state().keep_base == "host"  # a pipeline setting, not an adapter's


@pytest.mark.slow  # builds, saves and reloads an SD 1.5-size UNet (1.7 GB in float16) in fresh processes: ~2 min
def test_fusing_a_rank_64_lora_into_an_sd15_unet_keeps_no_copy_with_keep_base_file():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_lora_memory", os.path.join(os.path.dirname(__file__), "..", "benchmarks", "bench_lora_memory.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    [result] = bench.run_all("float16", ["file"])
    assert result["kept_as"] == ["FileBase"]
    assert result["fuse_peak"] <= 0.15, f"fuse_lora() raised peak RSS by {100 * result['fuse_peak']:.1f}% of the UNet"
