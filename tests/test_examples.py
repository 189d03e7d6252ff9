"""The scripts in examples/ run as documented: each with its default tiny demo model, on torch and (the
adapter examples and text-to-image) on MindSpore, each writing a PNG of the expected size: the model's
size, and twice its width for the guides' side-by-side grids (control map | image).

The runs of the selected tests are queued together in the first test that needs them and run side by
side, at most one per core (each is mostly interpreter start-up and imports; more at a time only spin
against each other on a small machine); each test then waits for its own. Every subprocess gets one
OpenMP thread for the same reason. MindSpore runs take 2 steps: they are 8-15x slower per model call.
"""

import importlib.util
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64  # the tiny demo models' default output, in px
GRID = (2 * SIZE, SIZE)  # make_image_grid([control_image, image], rows=1, cols=2)
MS_STEPS = ["--steps", "2"]

# (run id, example script, extra arguments, marker, PNG size)
RUNS = [
    ("text_to_image-torch", "text_to_image.py", [], "torch", (SIZE, SIZE)),
    ("img2img-torch", "img2img.py", [], "torch", (SIZE, SIZE)),
    ("inpainting-torch", "inpainting.py", [], "torch", (SIZE, SIZE)),
    ("text_to_image-mindspore", "text_to_image.py", ["--backend", "mindspore"], "mindspore", (SIZE, SIZE)),
]
for _name, _size in [("controlnet_canny_sd15", GRID), ("controlnet_depth_sdxl", GRID), ("controlnet_canny_sdxl", GRID),
                     ("t2i_adapter_canny_sdxl", GRID), ("lcm_full_unet", (SIZE, SIZE)), ("ip_adapter_sdxl", GRID)]:
    RUNS += [(f"{_name}-torch", f"{_name}.py", [], "torch", _size),
             (f"{_name}-mindspore", f"{_name}.py", ["--backend", "mindspore", *MS_STEPS], "mindspore", _size)]
# AnimateDiff writes a GIF of --frames frames (kept short: 4 frames, 2 steps)
_FRAMES = ["--frames", "4", "--steps", "2"]
RUNS += [("animatediff-torch", "animatediff.py", _FRAMES, "torch", (SIZE, SIZE)),
         ("animatediff-lcm-torch", "animatediff.py", ["--guide", "lcm", *_FRAMES], "torch", (SIZE, SIZE)),
         ("animatediff-mindspore", "animatediff.py", ["--backend", "mindspore", *_FRAMES], "mindspore", (SIZE, SIZE))]
BY_ID = {run[0]: run for run in RUNS}
# Kept out of CI (`-m slow` runs them): each MindSpore example run costs 15-25 s on the 2-core CI machine
# and repeats what tests/test_*_mindspore.py check in-process on the same tiny models. CI keeps the two
# MindSpore runs that the PAIRS tests compare with torch.
SLOW = {"controlnet_canny_sd15-mindspore", "controlnet_canny_sdxl-mindspore", "t2i_adapter_canny_sdxl-mindspore",
        "lcm_full_unet-mindspore", "ip_adapter_sdxl-mindspore", "animatediff-mindspore"}

# The tiny folders each example builds on first use: built once here, before the runs start, so that
# two runs never build the same one side by side.
TINY = {
    "controlnet_canny_sd15.py": [("tiny_pipeline", "sd15"), ("tiny_controlnet", "sd15")],
    "controlnet_depth_sdxl.py": [("tiny_pipeline", "sdxl"), ("tiny_controlnet", "sdxl"), ("tiny_dpt",)],
    "controlnet_canny_sdxl.py": [("tiny_pipeline", "sdxl"), ("tiny_controlnet", "sdxl")],
    "t2i_adapter_canny_sdxl.py": [("tiny_pipeline", "sdxl"), ("tiny_t2i_adapter", "sdxl")],
    "inpainting.py": [("tiny_pipeline", "sdxl-inpaint")],
    "animatediff.py": [("tiny_pipeline", "sd15"), ("tiny_motion_adapter",), ("tiny_motion_lora",)],
    "ip_adapter_sdxl.py": [("tiny_pipeline", "sdxl"), ("tiny_ip_adapter", "sdxl")],
}
# Tests beyond test_example_writes_png, and the runs they compare.
PAIRS = {
    "test_text_to_image_example_same_picture_on_both_backends": ("text_to_image-torch", "text_to_image-mindspore"),
    "test_depth_example_same_map_on_both_backends": ("controlnet_depth_sdxl-torch", "controlnet_depth_sdxl-mindspore"),
}


def _selected_runs(session):
    """The run ids the selected tests of this module wait for, in RUNS order."""
    wanted = set()
    for item in session.items:
        if item.module.__name__ != __name__:
            continue
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "run_id" in callspec.params:
            wanted.add(callspec.params["run_id"])
        wanted.update(PAIRS.get(item.originalname, ()))
    return [run[0] for run in RUNS if run[0] in wanted]


def _run(cmd, cwd, env):
    return subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def started(request, tmp_path_factory):
    """{run id: (future of the finished process, output path)} for every selected run whose framework
    is importable."""
    from tests.conftest import framework_available

    import fewstep.testing

    runs = [BY_ID[r] for r in _selected_runs(request.session) if framework_available(BY_ID[r][3])[0]]
    if framework_available("torch")[0]:
        built = set()
        for _, script, *_ in runs:
            for builder, *kind in TINY.get(script, [("tiny_pipeline", "sdxl")]):
                if (builder, *kind) not in built:
                    getattr(fewstep.testing, builder)(*kind)
                    built.add((builder, *kind))
    out_dir = tmp_path_factory.mktemp("examples")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    pool = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1))
    procs = {}
    for run_id, script, extra, _, _ in runs:
        output = out_dir / f"{run_id}.{'gif' if script.startswith('animatediff') else 'png'}"
        cmd = [sys.executable, str(ROOT / "examples" / script), "--seed", "3", "-o", str(output), *extra]
        procs[run_id] = (pool.submit(_run, cmd, str(out_dir), env), output)
    yield procs
    for future, _ in procs.values():
        future.cancel()
    pool.shutdown(wait=True)


def _finished(started, run_id):
    future, output = started[run_id]
    proc = future.result(timeout=900)  # queued behind the other runs
    assert proc.returncode == 0, f"examples/{run_id} exited with {proc.returncode}:\n{proc.stdout[-3000:]}"
    assert "random-weight demo model" in proc.stdout  # says plainly that the default images are noise
    return output


def _image(path):
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if path.suffix == ".gif":  # a video example: every frame is there
            assert im.format == "GIF" and im.n_frames == 4
            return im.convert("RGB")
        assert im.format == "PNG"
        return im.copy()


@pytest.mark.parametrize(
    "run_id", [pytest.param(r[0], marks=[getattr(pytest.mark, r[3])] + ([pytest.mark.slow] if r[0] in SLOW else []))
               for r in RUNS], ids=[r[0] for r in RUNS]
)
def test_example_writes_png(started, run_id):
    image = _image(_finished(started, run_id))
    assert image.size == BY_ID[run_id][4] and image.mode == "RGB"


@pytest.mark.parity
def test_text_to_image_example_same_picture_on_both_backends(started):
    torch_png, ms_png = (np.asarray(_image(_finished(started, r)), dtype=np.int16)
                         for r in PAIRS["test_text_to_image_example_same_picture_on_both_backends"])
    # The float images agree to ~1e-6; rounding to 8 bits can still split a value that sits on a
    # .5 boundary, so one level is allowed, never more.
    assert np.abs(torch_png - ms_png).max() <= 1


@pytest.mark.parity
def test_depth_example_same_map_on_both_backends(started):
    # The grid's left half: the tiny DPT on transformers vs mindone.transformers, then the same NumPy
    # resize. The models agree to float32 rounding; the map is truncated to 8 bits, so one level.
    torch_map, ms_map = (np.asarray(_image(_finished(started, r)), dtype=np.int16)[:, :SIZE]
                         for r in PAIRS["test_depth_example_same_map_on_both_backends"])
    assert np.abs(torch_map - ms_map).max() <= 1
    assert torch_map.max() > torch_map.min()  # a real map, not a flat one


@pytest.mark.torch
def test_depth_map_is_the_guides():
    """examples/conditioning.py's NumPy bicubic resize and normalisation give the map the TCD guide's
    get_depth_map computes with torch (interpolate(mode="bicubic", align_corners=False), amin/amax)."""
    import torch
    from transformers import DPTForDepthEstimation, DPTImageProcessor

    from fewstep.testing import tiny_dpt

    spec = importlib.util.spec_from_file_location("conditioning", ROOT / "examples" / "conditioning.py")
    conditioning = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conditioning)

    folder = tiny_dpt()
    image = conditioning.demo_picture(48)
    size = 80  # predicted_depth is 64x64: resize up, to a size that is no multiple of it
    ours = np.asarray(conditioning.depth_estimator(folder, "torch")(image, size), dtype=np.int16)

    feature_extractor, model = DPTImageProcessor.from_pretrained(folder), DPTForDepthEstimation.from_pretrained(folder)
    with torch.no_grad():  # the guide's get_depth_map, on the CPU and without autocast
        depth_map = model(feature_extractor(images=image, return_tensors="pt").pixel_values).predicted_depth
    depth_map = torch.nn.functional.interpolate(depth_map.unsqueeze(1), size=(size, size), mode="bicubic",
                                                align_corners=False)
    depth_min = torch.amin(depth_map, dim=[1, 2, 3], keepdim=True)
    depth_max = torch.amax(depth_map, dim=[1, 2, 3], keepdim=True)
    depth_map = (depth_map - depth_min) / (depth_max - depth_min)
    guide = torch.cat([depth_map] * 3, dim=1).permute(0, 2, 3, 1).numpy()[0]
    guide = (guide * 255.0).clip(0, 255).astype(np.uint8).astype(np.int16)

    assert ours.shape == guide.shape == (size, size, 3)
    # float64 here, float32 in torch: truncation to 8 bits may split a value at a level boundary.
    assert np.abs(ours - guide).max() <= 1
    assert guide.max() - guide.min() > 100  # the map spans the range: the check is not trivially met
