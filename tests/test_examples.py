"""The scripts in examples/ run as documented: each with its default tiny demo model on torch, and
text-to-image on MindSpore too, each writing a PNG of the model's size.

All runs start together in the first test that needs them (each is mostly interpreter start-up and
imports, so running them side by side keeps the file well under 40 s); each test then waits for its
own. Every subprocess gets one OpenMP thread: several torch processes with the default thread count
on a small machine spin against each other and run far slower.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64  # the tiny demo models' default output, in px

# (run id, example script, extra arguments, marker)
RUNS = [
    ("text_to_image-torch", "text_to_image.py", [], "torch"),
    ("img2img-torch", "img2img.py", [], "torch"),
    ("inpainting-torch", "inpainting.py", [], "torch"),
    ("text_to_image-mindspore", "text_to_image.py", ["--backend", "mindspore"], "mindspore"),
]


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """{run id: (Popen, output path)} for every run whose framework is importable."""
    from tests.conftest import framework_available

    from fewstep.testing import tiny_pipeline

    if framework_available("torch")[0]:  # build the cached folders once, not in two runs at a time
        tiny_pipeline("sdxl")
        tiny_pipeline("sdxl-inpaint")
    out_dir = tmp_path_factory.mktemp("examples")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    procs = {}
    for run_id, script, extra, marker in RUNS:
        if not framework_available(marker)[0]:
            continue
        output = out_dir / f"{run_id}.png"
        cmd = [sys.executable, str(ROOT / "examples" / script), "--seed", "3", "-o", str(output), *extra]
        procs[run_id] = (subprocess.Popen(cmd, cwd=str(out_dir), env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True), output)
    yield procs
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _finished(started, run_id):
    proc, output = started[run_id]
    log, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, f"examples/{run_id} exited with {proc.returncode}:\n{log[-3000:]}"
    assert "random-weight demo model" in log  # says plainly that the default images are noise
    return output


def _image(path):
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        return im.copy()


@pytest.mark.parametrize(
    "run_id", [pytest.param(r, marks=getattr(pytest.mark, m)) for r, _, _, m in RUNS], ids=[r for r, *_ in RUNS]
)
def test_example_writes_png(started, run_id):
    image = _image(_finished(started, run_id))
    assert image.size == (SIZE, SIZE) and image.mode == "RGB"


@pytest.mark.parity
def test_text_to_image_example_same_picture_on_both_backends(started):
    torch_png = np.asarray(_image(_finished(started, "text_to_image-torch")), dtype=np.int16)
    ms_png = np.asarray(_image(_finished(started, "text_to_image-mindspore")), dtype=np.int16)
    # The float images agree to ~1e-6; rounding to 8 bits can still split a value that sits on a
    # .5 boundary, so one level is allowed, never more.
    assert np.abs(torch_png - ms_png).max() <= 1
