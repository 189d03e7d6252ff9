"""`pipe.to(...)` with LoRAs loaded (fewstep.pipelines.lora, `_LoraState.move`): after any chain of moves
the weights are bit for bit what moving the base pipeline the same way and then loading and fusing the same
LoRAs gives, in every keep_base mode, fused or not; unfusing, switching and unloading after the move are
exact too; and a move that cannot be finished moves nothing.

Bitwise throughout: a cast rounds the same way whichever tensor it is applied to, and fusing after the move
is the same arithmetic as fusing after loading in that dtype (float16 weights are fused from the file's
factors in float32 and rounded once, not fused in float32 and then cast).
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from fewstep import get_backend, pipelines
from fewstep.core.lora import LoraError, fused_weight
from fewstep.pipelines import lora_bases
from fewstep.testing import tiny_pipeline
from tests.lora_cases import make_lora, targets_from_folder, write
from tests.test_pipeline_object import weights

pytestmark = pytest.mark.torch

LORA_COMPONENTS = ("unet", "text_encoder")
ADAPTERS = (["a", "b"], [1.0, 0.7])
# (the dtype loaded in, then the moves). float32 -> float16 -> float32: the weights end holding float16
# values, the LoRA fused from its file's values; bfloat16 is kept as float32 on the host; loaded in float16
# and moved to float32, the factors must still be the file's, not float16-rounded ones
CHAINS = [("float32", "float16", "float32"), ("float32", "bfloat16"), ("float16", "float32")]
_cache = {}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("lora-move"))
    targets = targets_from_folder(tiny_pipeline("sd15"))
    # B in float32 with values float16 cannot hold: fused in float16 they are rounded; moved back to
    # float32, loading gives the file's values, so the moved pipeline must too (not float16-rounded ones)
    b = {component: {path: (down.astype(np.float32) * np.float32(1.001), up.astype(np.float32) * np.float32(0.999),
                            alpha) for path, (down, up, alpha) in paths.items()}
         for component, paths in make_lora(targets, seed=5, strength=0.5).items()}
    return write(tmp, "a", make_lora(targets, seed=4), "kohya", "sd15"), write(tmp, "b", b, "peft", "sd15")


def state(pipe) -> dict:
    return {name: weights(getattr(pipe, name)) for name in LORA_COMPONENTS}


def assert_same(got, want):
    different = [(n, k) for n in want for k in want[n] if not np.array_equal(got[n][k], want[n][k])]
    assert not different, f"{len(different)} weights differ, e.g. {different[:3]}"


def native(backend, dtype):
    if backend == "torch":
        import torch
    else:
        import mindspore as torch  # noqa: N813 - the same attribute names
    return getattr(torch, dtype)


def load(backend="torch", folder=None, dtype="float32"):
    pipe = pipelines.StableDiffusionPipeline.from_pretrained(folder or tiny_pipeline("sd15"), backend=backend,
                                                             dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def with_loras(pipe, files, mode="file"):
    pipe.fuse_lora(keep_base=mode)
    pipe.load_lora_weights(files[0], adapter_name="a")
    pipe.load_lora_weights(files[1], adapter_name="b")
    pipe.set_adapters(*ADAPTERS)
    return pipe


def reference(files, chain, backend="torch"):
    """(base weights, fused with A + 0.7 B, fused with 0.3 B) of a pipeline loaded in `chain[0]` and moved
    through the rest first."""
    key = (chain, backend)
    if key not in _cache:
        pipe = load(backend, dtype=chain[0])
        for dtype in chain[1:]:
            pipe.to(native(backend, dtype))
        base = state(pipe)
        with_loras(pipe, files)
        fused = state(pipe)
        pipe.set_adapters(["b"], [0.3])
        _cache[key] = base, fused, state(pipe)
    return _cache[key]


@pytest.mark.parametrize("chain", CHAINS)
@pytest.mark.parametrize("mode", ["file", "host", "device"])
def test_moved_weights_are_those_of_loading_after_the_move(files, mode, chain):
    base, fused, switched = reference(files, chain)
    pipe = with_loras(load(dtype=chain[0]), files, mode)
    for dtype in chain[1:]:
        assert pipe.to(native("torch", dtype)) is pipe
    assert pipe.unet.dtype == pipe.text_encoder.dtype == chain[-1]
    assert_same(state(pipe), fused)
    assert {lora_bases.kind(s) for s in pipe._lora_state().saved.values()} <= {mode, "host"}
    pipe.set_adapters(["b"], [0.3])
    assert_same(state(pipe), switched)
    pipe.fuse_lora(keep_base={"file": "device", "host": "file", "device": "host"}[mode])  # moved bases move on
    assert_same(state(pipe), switched)
    pipe.unfuse_lora()
    assert_same(state(pipe), base)
    pipe.fuse_lora()
    assert_same(state(pipe), switched)
    pipe.unload_lora_weights()
    assert_same(state(pipe), base)


@pytest.mark.parametrize("mode", ["file", "host", "device"])
def test_unfused_loras_move_and_fuse_there(files, mode):
    chain = CHAINS[0]
    base, fused, _ = reference(files, chain)
    pipe = with_loras(load(), files, mode)
    pipe.unfuse_lora()
    for dtype in chain[1:]:
        pipe.to(dtype=dtype)
    assert_same(state(pipe), base)
    pipe.fuse_lora()
    assert_same(state(pipe), fused)


def test_a_same_device_move_runs_the_device_path(files, monkeypatch):
    """On a CPU-only machine a real device change cannot be made; the move of the LoRA state is run with
    the device given (every factor and base placed, every fused weight fused again) and changes nothing."""
    import torch
    from fewstep.pipelines import lora

    pipe = with_loras(load(), files, "device")
    before = state(pipe)
    assert pipe.to("cpu") is pipe  # nothing changes: no model moves
    fusions = []
    monkeypatch.setattr(lora, "fused_weight", lambda *a, **k: fusions.append(1) or fused_weight(*a, **k))
    changes = [(n, m) for n, m in pipe._models() if n in LORA_COMPONENTS]
    pipe._move_models(changes, torch.device("cpu"), None)  # what pipe.to(device) calls once the device is checked
    assert len(fusions) == len(pipe._lora_state().saved) > 0  # every fused weight fused again
    assert_same(state(pipe), before)
    factors = [f for a in pipe._lora_state().adapters.values() for c in a.layers.values() for f in c.values()]
    assert {(f.up.device.type, f.up.dtype) for f in factors} == {("cpu", torch.float32)}
    pipe.to("cpu", torch.float16)
    assert {(f.up.device.type, f.up.dtype) for f in factors} == {("cpu", torch.float32)}  # kept unrounded
    assert all(s.dtype == torch.float16 for s in pipe._lora_state().saved.values())     # "device" bases cast


def test_host_bases_record_casts_and_drop_exact_round_trips():
    import torch

    host = lora_bases.HostBase(np.zeros(2, np.float32), ("bfloat16",))  # bfloat16 kept as float32
    like = {d: torch.zeros(2, dtype=native("torch", d)) for d in ("float16", "float32")}
    ops = get_backend("torch")
    step = lora_bases.moved(ops, host, None, like["float32"])
    assert step.dtypes == ("bfloat16", "float32")
    step = lora_bases.moved(ops, step, None, like["float16"])
    assert step.dtypes == ("bfloat16", "float32", "float16")
    step = lora_bases.moved(ops, step, None, like["float32"])  # float16 -> float32 -> float16 gives float16 back
    step = lora_bases.moved(ops, step, None, like["float16"])
    assert step.dtypes == ("bfloat16", "float32", "float16") and step.array is host.array


def test_bfloat16_host_bases_are_float32_arrays(files):
    import torch

    pipe = load()
    pipe.to(torch.bfloat16)
    with_loras(pipe, files, "host")
    kept = list(pipe._lora_state().saved.values())
    assert kept and all(s.array.dtype == np.float32 and s.dtypes == ("bfloat16",) for s in kept)


def test_a_bad_device_or_a_changed_file_moves_nothing(files, tmp_path):
    import torch

    folder = str(tmp_path / "model")
    shutil.copytree(tiny_pipeline("sd15"), folder)
    pipe = with_loras(load(folder=folder), files, "file")
    before = state(pipe)
    with pytest.raises(ValueError, match="torch cannot use the device"):
        pipe.to("no-such-device", torch.float16)
    from safetensors.numpy import load_file, save_file

    unet_file = os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors")

    tensors = load_file(unet_file)
    name = next(f"{path}.weight" for component, path in pipe._lora_state().saved if component == "unet")
    tensors[name] = tensors[name] + np.float32(1e-3)
    save_file(tensors, unet_file)
    with pytest.raises(LoraError, match="has changed since"):
        pipe.to(torch.float16)
    assert pipe.unet.dtype == pipe.text_encoder.dtype == "float32"
    assert_same(state(pipe), before)


@pytest.mark.mindspore
@pytest.mark.parametrize("mode", ["device", "host"])
def test_mindspore_casts_loras_with_the_weights(files, mode):
    import mindspore as ms

    base, fused, switched = reference(files, ("float32", "float16"), "mindspore")
    pipe = with_loras(load("mindspore"), files, mode)
    assert pipe.to(ms.float16) is pipe and pipe.unet.dtype == "float16"
    assert_same(state(pipe), fused)
    pipe.set_adapters(["b"], [0.3])
    assert_same(state(pipe), switched)
    pipe.unfuse_lora()
    assert_same(state(pipe), base)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_factors_are_kept_unrounded_and_rounded_to_the_weight_dtype_when_fused(dtype):
    """What the move relies on: the factors on the device are the file's values (float32), and each fusion
    rounds them to the weight's dtype first, as PEFT stores them, so the fused weight is what it was when
    the factors were rounded at load."""
    import torch
    from fewstep.core.lora import LoraLayer

    rng = np.random.default_rng(0)
    layer = LoraLayer(down=rng.standard_normal((4, 6)).astype(np.float32),
                      up=rng.standard_normal((5, 4)).astype(np.float32), alpha=2.0)
    weight = torch.from_numpy(rng.standard_normal((5, 6)).astype(np.float32)).to(native("torch", dtype))
    ops = get_backend("torch")
    up, down = layer.device_factors(ops, weight, dtype)
    assert up.dtype == down.dtype == torch.float32 and np.array_equal(up.numpy(), layer.up)
    rounded = [torch.from_numpy(f).to(weight.dtype).float() for f in (layer.up, layer.down)]
    want = torch.addmm(weight.float(), *rounded, alpha=layer.scaling()).to(weight.dtype)
    assert torch.equal(fused_weight(ops, weight, [(up, down, layer.scaling())]), want)
