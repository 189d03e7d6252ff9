"""Nothing fewstep runs unpickles a file: no call in its source that can, and the demo training's checkpoints
are safetensors plus JSON, with a planted pickle never opened (issue 24)."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

import fewstep

ROOT = Path(fewstep.__file__).parent
# modules whose load / loads unpickle (numpy's only with allow_pickle=True, torch's unless weights_only=True)
_UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "torch"}


def _unpickling_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in _UNPICKLERS - {"torch"}:
                    yield node.lineno, f"import {alias.name}"
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _UNPICKLERS - {"torch"}:
            yield node.lineno, f"from {node.module} import ..."
        if not isinstance(node, ast.Call):
            continue
        keywords = {k.arg: k.value for k in node.keywords}
        for name in ("allow_pickle", "weights_only"):
            value = keywords.get(name)
            if isinstance(value, ast.Constant) and value.value is (name == "allow_pickle"):
                yield node.lineno, f"{name}={value.value}"
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("load", "loads", "Unpickler", "read_pickle"):
            owner = func.value.id if isinstance(func.value, ast.Name) else ""
            safe = owner == "torch" and isinstance(keywords.get("weights_only"), ast.Constant) \
                and keywords["weights_only"].value is True
            if owner in _UNPICKLERS and not safe:
                yield node.lineno, f"{owner}.{func.attr}(...)"


def test_the_source_has_no_call_that_unpickles():
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        for line, what in _unpickling_calls(ast.parse(path.read_text(encoding="utf-8"))):
            found.append(f"{path.relative_to(ROOT.parent)}:{line}: {what}")
    assert found == []


def test_the_source_check_finds_what_it_looks_for():
    """The check above can fail: each way of unpickling is found."""
    code = ("import pickle\nfrom dill import loads\nimport torch, numpy as np\ntorch.load(p, weights_only=False)\n"
            "torch.load(p)\nnp.load(p, allow_pickle=True)\npickle.loads(b)\ntorch.load(p, weights_only=True)\n")
    assert [what for _, what in _unpickling_calls(ast.parse(code))] == [
        "import pickle", "from dill import ...", "weights_only=False", "torch.load(...)", "torch.load(...)",
        "allow_pickle=True", "pickle.loads(...)"]


# --- the demo training's checkpoints --------------------------------------------------------------------
class _Plant:
    """A pickle that creates `marker` when it is unpickled: what a planted checkpoint could do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def _plant(path: Path, marker: Path) -> bytes:
    """A checkpoint as torch.save writes one (what the training used to resume from), holding a _Plant."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": _Plant(str(marker)), "step": 1}, path)
    return path.read_bytes()


@pytest.mark.torch
def test_the_planted_pickle_runs_code_when_unpickled(tmp_path):
    """Control: the file the next tests plant does create its marker under the old `torch.load(weights_only=False)`."""
    import torch

    marker = tmp_path / "ran"
    _plant(tmp_path / "vae.pt", marker)
    torch.load(tmp_path / "vae.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.torch
def test_a_planted_pickle_checkpoint_is_never_opened(tmp_path, capsys):
    from fewstep.demo.train_common import Stage

    marker = tmp_path / "ran"
    data = _plant(tmp_path / "out" / "checkpoints" / "vae.pt", marker)
    stage = Stage(tmp_path / "out", "vae", {"steps": 3})
    assert stage.load() is None  # no checkpoint of its own: the stage starts at step 0
    err = capsys.readouterr().err
    assert err.startswith(f"[vae] ignoring {tmp_path / 'out' / 'checkpoints' / 'vae.pt'}: a pickled checkpoint is "
                          f"never loaded (unpickling can run code); delete it.")
    assert not marker.exists()
    assert (tmp_path / "out" / "checkpoints" / "vae.pt").read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["checkpoints", "vae.pt"]


@pytest.mark.torch
def test_a_pickle_under_the_checkpoint_name_is_refused_unopened(tmp_path):
    from fewstep.demo.train_common import Stage

    marker = tmp_path / "ran"
    data = _plant(tmp_path / "out" / "checkpoints" / "vae.safetensors", marker)
    stage = Stage(tmp_path / "out", "vae", {"steps": 3})
    with pytest.raises(SystemExit) as info:
        stage.load()
    assert str(info.value.code).startswith(f"{stage.checkpoint} is not a checkpoint this training can read (")
    assert str(info.value.code).endswith("delete it to restart stage 'vae' from step 0.")
    assert not marker.exists() and stage.checkpoint.read_bytes() == data


def _state():
    """A module's and an AdamW optimizer's state after two steps, and the numbers a stage saves beside them."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(5, 3)).square().sum().backward()
        optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 2, "elapsed": 1.25}


def _same(a, b):
    import torch

    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return type(b) is dict and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


@pytest.mark.torch
def test_a_checkpoint_round_trips_bit_for_bit_as_safetensors_and_json(tmp_path):
    from safetensors import safe_open

    from fewstep.demo.train_common import CHECKPOINT_KEY, Stage

    state = _state()
    stage = Stage(tmp_path, "unet", {"steps": 4, "blocks": (32, 64)})
    stage.save(state)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["unet.safetensors"]  # no temporary file left
    with safe_open(str(stage.checkpoint), framework="pt") as f:
        described = json.loads(f.metadata()[CHECKPOINT_KEY])
    assert "tensor" in json.dumps(described) and '"step"' in json.dumps(described)
    loaded = stage.load()
    # the optimizer's int state keys, its betas tuple, every tensor and its dtype come back as they were
    assert _same(state, loaded)
    assert list(loaded["optimizer"]["state"]) == [0, 1, 2, 3]
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)


@pytest.mark.torch
def test_a_checkpoint_of_another_config_or_with_foreign_metadata_is_refused(tmp_path):
    import torch
    from safetensors.torch import save_file

    from fewstep.demo.train_common import CHECKPOINT_KEY, Stage

    Stage(tmp_path, "vae", {"steps": 4}).save(_state())
    with pytest.raises(SystemExit, match=r"comes from another configuration; rerun with the same flags"):
        Stage(tmp_path, "vae", {"steps": 5}).load()
    stage = Stage(tmp_path, "vae", {"steps": 4})
    for metadata in ({}, {CHECKPOINT_KEY: '{"call": ["os.system", "touch x"]}'},
                     {CHECKPOINT_KEY: '{"tensor": "missing"}'}, {CHECKPOINT_KEY: "[" * 100000}):
        save_file({"0": torch.zeros(1)}, str(stage.checkpoint), metadata=metadata)
        with pytest.raises(SystemExit) as info:
            stage.load()
        assert str(info.value.code).startswith(f"{stage.checkpoint} is not a checkpoint this training can read (")
    assert not (tmp_path / "x").exists()


@pytest.mark.torch
def test_training_resumes_past_a_planted_pickle_without_running_it(tmp_path, capsys):
    """`python -m fewstep.demo.train` with a pickle planted in its checkpoints folder: it trains, says the file is
    ignored, and the pickle's code never runs."""
    pytest.importorskip("diffusers")
    from fewstep.demo.train import main

    out, marker = tmp_path / "out", tmp_path / "ran"
    _plant(out / "checkpoints" / "vae.pt", marker)
    assert main(["--out", str(out), "--smoke", "--threads", "1", "--stop-after", "vae"]) == 0
    assert "[vae] ignoring" in capsys.readouterr().err
    assert not marker.exists() and (out / "stages" / "vae" / "done.json").exists()
    assert sorted(os.listdir(out / "checkpoints")) == ["vae.pt"]  # the finished stage dropped its own checkpoint
