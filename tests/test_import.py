"""`import fewstep` imports no framework; `get_backend` / `backend_of` resolve names, aliases and objects."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fewstep

FRAMEWORKS = ("torch", "mindspore", "diffusers", "mindone")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_import_fewstep_imports_no_framework():
    # A fresh interpreter: this test process may already hold torch or MindSpore.
    # Beyond the bare import, the NumPy backend and the core modules are used too: none of it may
    # pull a framework in, not even to ask whether an object belongs to it.
    result = _run(f"""
        import sys
        import numpy as np
        import fewstep
        import fewstep.backends, fewstep.core.ops, fewstep.core.noise
        import fewstep.parity, fewstep.batch, fewstep.testing, fewstep.cli  # framework-neutral until used
        ops = fewstep.get_backend("numpy")
        ops = fewstep.get_backend(np.zeros(2))
        fewstep.backend_of(np.zeros(2), None)
        try:
            fewstep.get_backend(object())
        except ValueError:
            pass
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {FRAMEWORKS!r})
        print("LOADED:" + ",".join(loaded))
    """)
    assert result.returncode == 0, result.stderr
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("LOADED:")][-1]
    assert line == "LOADED:", f"`import fewstep` imported frameworks: {line[len('LOADED:'):]}"


def test_every_pipeline_class_and_utils_are_reachable_from_fewstep_as_from_diffusers():
    """`fewstep.<Name>` for every class of the table (as `diffusers.<Name>`), and `fewstep.utils.export_to_gif`
    after a bare `import fewstep` (as `diffusers.utils.export_to_gif`), without importing a framework."""
    result = _run(f"""
        import sys
        import fewstep
        from fewstep.pipelines.table import TABLE

        for row in TABLE:
            cls = getattr(fewstep, row.name)
            assert cls.__name__ == row.name and cls.__module__ == "fewstep.pipelines", cls
        for name in ("DiffusionPipeline", "AutoPipelineForText2Image", "AutoPipelineForImage2Image",
                     "AutoPipelineForInpainting", "ControlNetModel", "T2IAdapter", "MotionAdapter", "UNet2DConditionModel"):
            getattr(fewstep, name)
        assert callable(fewstep.utils.export_to_gif) and callable(fewstep.utils.load_image)
        assert set(row.name for row in TABLE) <= set(dir(fewstep))
        try:
            fewstep.StableDiffusionXLPipelin
        except AttributeError as err:
            print("MISSING:" + str(err))
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {FRAMEWORKS!r})
        print("LOADED:" + ",".join(loaded))
    """)
    assert result.returncode == 0, result.stderr
    assert "MISSING:module 'fewstep' has no attribute 'StableDiffusionXLPipelin'" in result.stdout
    assert result.stdout.splitlines()[-1] == "LOADED:"


def test_import_fewstep_installs_no_import_hook_and_patches_no_class():
    # No sys.meta_path finder (which would run code when diffusers or mindone is imported later), and
    # the schedulers' bases are the core's own, before and after any use of the backends.
    result = _run("""
        import sys
        finders = list(sys.meta_path)
        import fewstep
        import fewstep.backends, fewstep.backends.scheduler_interop
        from fewstep.core.schedulers.scheduler import ConsistencyScheduler
        fewstep.get_backend("numpy")
        print("FINDERS", sys.meta_path == finders)
        print("BASES", [c.__name__ for c in ConsistencyScheduler.__mro__], fewstep.TCDScheduler.__bases__)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == [
        "FINDERS True",
        "BASES ['ConsistencyScheduler', 'DiscreteScheduler', 'Configurable', 'object'] "
        "(<class 'fewstep.core.schedulers.scheduler.ConsistencyScheduler'>,)",
    ]


@pytest.mark.parametrize("spec", ["numpy", "np", "NumPy"])
def test_get_backend_numpy_names(spec):
    ops = fewstep.get_backend(spec)
    assert ops.name == "numpy"
    assert ops is fewstep.get_backend("numpy")  # one instance per backend


@pytest.mark.torch
@pytest.mark.parametrize("spec", ["torch", "pt", "pytorch", "PyTorch"])
def test_get_backend_torch_names(spec):
    assert fewstep.get_backend(spec).name == "torch"
    assert fewstep.get_backend(spec) is fewstep.get_backend("torch")


@pytest.mark.mindspore
@pytest.mark.parametrize("spec", ["mindspore", "ms", "MindSpore"])
def test_get_backend_mindspore_names(spec):
    assert fewstep.get_backend(spec).name == "mindspore"
    assert fewstep.get_backend(spec) is fewstep.get_backend("mindspore")


def test_get_backend_unknown_name():
    with pytest.raises(ValueError, match="numpy, torch, mindspore"):
        fewstep.get_backend("jax")


def test_get_backend_unknown_object_says_how_to_choose():
    with pytest.raises(ValueError, match="backend='torch'"):
        fewstep.get_backend([1.0, 2.0])


def test_get_backend_of_numpy_objects():
    assert fewstep.get_backend(np.zeros(3)).name == "numpy"
    assert fewstep.get_backend(np.float32(1.0)).name == "numpy"


def test_get_backend_passes_a_backend_through():
    ops = fewstep.get_backend("numpy")
    assert fewstep.get_backend(ops) is ops


@pytest.mark.torch
def test_get_backend_of_torch_objects():
    import torch

    assert fewstep.get_backend(torch.zeros(2)).name == "torch"
    assert fewstep.get_backend(torch.nn.Linear(2, 2)).name == "torch"
    assert fewstep.backend_of(torch.zeros(2), None, torch.ones(1)).name == "torch"


@pytest.mark.mindspore
def test_get_backend_of_mindspore_objects():
    import mindspore as ms

    assert fewstep.get_backend(ms.Tensor(np.zeros(2, np.float32))).name == "mindspore"
    assert fewstep.get_backend(ms.nn.Dense(2, 2)).name == "mindspore"
    assert fewstep.backend_of(ms.Tensor(np.zeros(2, np.float32)), None).name == "mindspore"


def test_backend_of_numpy_and_nothing():
    assert fewstep.backend_of(np.zeros(2), None).name == "numpy"
    with pytest.raises(ValueError, match="No tensor"):
        fewstep.backend_of(None, None)


@pytest.mark.torch
def test_backend_of_mixed_numpy_and_torch_says_to_convert():
    import torch

    with pytest.raises(ValueError, match="convert") as err:
        fewstep.backend_of(np.zeros(2), torch.zeros(2))
    assert "from_numpy" in str(err.value)


@pytest.mark.mindspore
def test_backend_of_mixed_numpy_and_mindspore_says_to_convert():
    import mindspore as ms

    with pytest.raises(ValueError, match="convert"):
        fewstep.backend_of(ms.Tensor(np.zeros(2, np.float32)), np.zeros(2))


@pytest.mark.torch
@pytest.mark.mindspore
def test_backend_of_torch_and_mindspore_says_to_convert():
    import mindspore as ms
    import torch

    with pytest.raises(ValueError, match="convert"):
        fewstep.backend_of(torch.zeros(2), ms.Tensor(np.zeros(2, np.float32)))
