"""Adapter flags against the Python API on the same tiny weights: ControlNet (one, two), T2I-Adapter,
IP-Adapter, --frames / --motion-adapter (torch; one MindSpore case); --canny against OpenCV, --depth against
transformers' depth pipeline; --grid with the control image; parity with a ControlNet; bad combinations."""

from __future__ import annotations

import functools

import numpy as np
import PIL.Image
import pytest

import fewstep
from fewstep.cli import main
from fewstep.pipelines import (AnimateDiffPipeline, StableDiffusionAdapterPipeline, StableDiffusionControlNetPipeline,
                               StableDiffusionPipeline)
from fewstep.testing import (IP_ADAPTER_FILES, tiny_controlnet, tiny_dpt, tiny_ip_adapter, tiny_motion_adapter,
                             tiny_pipeline, tiny_t2i_adapter)
from fewstep.utils import load_image

PROMPT = "a red fox"
BASE = ["generate", PROMPT, "--steps", "2", "--seed", "7"]
CALL = dict(num_inference_steps=2, guidance_scale=0.0, eta=0.3)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    from tests.pipeline_cases import picture

    folder = tmp_path_factory.mktemp("cli-adapter-pictures")
    paths = {}
    for name, seed in (("control", 7), ("control2", 8), ("reference", 9)):
        paths[name] = str(folder / f"{name}.png")
        picture(seed).save(paths[name])
    return paths


def _png(path) -> np.ndarray:
    with PIL.Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _api(cls, backend="torch", **components):
    pipe = cls.from_pretrained(tiny_pipeline("sd15"), backend=backend, **components)
    pipe.scheduler = fewstep.TCDScheduler.from_config(pipe.scheduler.config)
    return pipe


def _image(pipe, **kwargs) -> np.ndarray:
    return np.asarray(pipe(PROMPT, generator=fewstep.Generator(7), **CALL, **kwargs).images[0])


@functools.lru_cache(maxsize=None)
def _plain(backend: str) -> np.ndarray:
    """The same call with no adapter: each flag's image must differ from it, or a flag dropped on its way
    to the pipeline would still match the Python API's image."""
    return _image(_api(StableDiffusionPipeline, backend=backend))


def _changed(image: np.ndarray, plain: np.ndarray) -> bool:
    return np.abs(image.astype(int) - plain.astype(int)).max() > 2


# --------------------------------------------------------------------------- ControlNet
@pytest.mark.torch
def test_controlnet_gives_the_python_apis_image_and_the_grid_shows_the_control(tmp_path, pictures):
    out, grid = tmp_path / "cn.png", tmp_path / "grid.png"
    assert main(BASE + ["--controlnet", tiny_controlnet("sd15"), "--control-image", pictures["control"],
                        "--control-scale", "0.5", "-o", str(out), "--grid", str(grid)]) == 0
    net = fewstep.ControlNetModel.from_pretrained(tiny_controlnet("sd15"))
    want = _image(_api(StableDiffusionControlNetPipeline, controlnet=net), image=load_image(pictures["control"]),
                  controlnet_conditioning_scale=0.5)
    np.testing.assert_array_equal(_png(out), want)
    assert _changed(want, _plain("torch"))
    sheet = _png(grid)
    assert sheet.shape == (64, 128, 3)  # the control image beside the result
    np.testing.assert_array_equal(sheet[:, :64], np.asarray(load_image(pictures["control"])))
    np.testing.assert_array_equal(sheet[:, 64:], want)


@pytest.mark.torch
def test_two_controlnets_take_their_images_and_scales_in_order(tmp_path, pictures):
    out = tmp_path / "cn2.png"
    nets = [tiny_controlnet("sd15"), tiny_controlnet("sd15", seed=1)]
    assert main(BASE + ["--controlnet", nets[0], "--control-image", pictures["control"], "--control-scale", "0.5",
                        "--controlnet", nets[1], "--control-image", pictures["control2"], "--control-scale", "0.8",
                        "-o", str(out)]) == 0
    pipe = _api(StableDiffusionControlNetPipeline,
                controlnet=[fewstep.ControlNetModel.from_pretrained(n) for n in nets])
    want = _image(pipe, image=[load_image(pictures["control"]), load_image(pictures["control2"])],
                  controlnet_conditioning_scale=[0.5, 0.8])
    np.testing.assert_array_equal(_png(out), want)
    one = _image(_api(StableDiffusionControlNetPipeline, controlnet=fewstep.ControlNetModel.from_pretrained(nets[0])),
                 image=load_image(pictures["control"]), controlnet_conditioning_scale=0.5)
    assert _changed(want, one)  # the second ControlNet counts


@pytest.mark.mindspore
def test_controlnet_on_mindspore_gives_the_python_apis_image(tmp_path, pictures):
    out = tmp_path / "cn-ms.png"
    assert main(BASE + ["--backend", "mindspore", "--controlnet", tiny_controlnet("sd15"), "--control-image",
                        pictures["control"], "--control-scale", "0.5", "-o", str(out)]) == 0
    net = fewstep.ControlNetModel.from_pretrained(tiny_controlnet("sd15"), backend="mindspore")
    want = _image(_api(StableDiffusionControlNetPipeline, backend="mindspore", controlnet=net),
                  image=load_image(pictures["control"]), controlnet_conditioning_scale=0.5)
    np.testing.assert_array_equal(_png(out), want)
    assert _changed(want, _plain("mindspore"))


# --------------------------------------------------------------------------- T2I-Adapter, IP-Adapter, motion
@pytest.mark.torch
def test_t2i_adapter_gives_the_python_apis_image(tmp_path, pictures):
    out = tmp_path / "t2i.png"
    assert main(BASE + ["--t2i-adapter", tiny_t2i_adapter("sd15"), "--adapter-image", pictures["control"],
                        "--adapter-scale", "0.8", "-o", str(out)]) == 0
    pipe = _api(StableDiffusionAdapterPipeline, adapter=fewstep.T2IAdapter.from_pretrained(tiny_t2i_adapter("sd15")))
    want = _image(pipe, image=load_image(pictures["control"]), adapter_conditioning_scale=0.8)
    np.testing.assert_array_equal(_png(out), want)
    assert _changed(want, _plain("torch"))


@pytest.mark.torch
def test_ip_adapter_gives_the_python_apis_image(tmp_path, pictures):
    subfolder, weight_name = IP_ADAPTER_FILES["sd15"]["plain"]
    out = tmp_path / "ip.png"
    assert main(BASE + ["--ip-adapter", f"{tiny_ip_adapter('sd15')}:{subfolder}/{weight_name}", "--ip-image",
                        pictures["reference"], "--ip-scale", "0.6", "-o", str(out)]) == 0
    pipe = _api(StableDiffusionPipeline)
    pipe.load_ip_adapter(tiny_ip_adapter("sd15"), subfolder=subfolder, weight_name=weight_name)
    pipe.set_ip_adapter_scale(0.6)
    want = _image(pipe, ip_adapter_image=load_image(pictures["reference"]))
    np.testing.assert_array_equal(_png(out), want)
    assert _changed(want, _plain("torch"))


@pytest.mark.torch
def test_frames_and_motion_adapter_give_the_python_apis_video(tmp_path):
    from fewstep.utils import export_to_gif

    out = tmp_path / "fox.gif"
    assert main(BASE + ["--frames", "4", "--motion-adapter", tiny_motion_adapter(), "-o", str(out)]) == 0
    pipe = _api(AnimateDiffPipeline, motion_adapter=fewstep.MotionAdapter.from_pretrained(tiny_motion_adapter()))
    frames = pipe(PROMPT, generator=fewstep.Generator(7), num_frames=4, **CALL).frames[0]
    want = export_to_gif(frames, str(tmp_path / "want.gif"), fps=8)
    assert out.read_bytes() == open(want, "rb").read()


# --------------------------------------------------------------------------- --canny / --depth
def test_canny_is_the_guides_opencv_edges(pictures):
    import cv2

    from fewstep.cli.control_images import prepare

    image = load_image(pictures["control"])
    edges = cv2.Canny(np.array(image), 100, 200)
    got = np.asarray(prepare([pictures["control"]], "canny")[0])
    assert got.shape == (64, 64, 3) and edges.any()
    for channel in range(3):
        np.testing.assert_array_equal(got[..., channel], edges)


@pytest.mark.torch
def test_canny_flag_conditions_the_controlnet_on_the_edges(tmp_path, pictures):
    from fewstep.cli.control_images import canny

    out, grid = tmp_path / "canny.png", tmp_path / "grid.png"
    assert main(BASE + ["--controlnet", tiny_controlnet("sd15"), "--control-image", pictures["control"], "--canny",
                        "-o", str(out), "--grid", str(grid)]) == 0
    edges = canny(load_image(pictures["control"]))
    np.testing.assert_array_equal(_png(grid)[:, :64], np.asarray(edges))
    pipe = _api(StableDiffusionControlNetPipeline,
                controlnet=fewstep.ControlNetModel.from_pretrained(tiny_controlnet("sd15")))
    np.testing.assert_array_equal(_png(out), _image(pipe, image=edges))
    # the edges, not the plain picture, reached the ControlNet (the tiny ControlNet moves the image little,
    # so any difference counts)
    assert np.abs(_png(out).astype(int) - _image(pipe, image=load_image(pictures["control"]))).max() > 0


@pytest.mark.torch
def test_depth_is_transformers_depth_pipeline_output(tmp_path, pictures):
    from transformers import pipeline

    from fewstep.cli.control_images import prepare

    depth = np.array(pipeline("depth-estimation", model=tiny_dpt())(load_image(pictures["control"]))["depth"])
    got = np.asarray(prepare([pictures["control"]], "depth", tiny_dpt())[0])
    assert got.shape == (64, 64, 3) and depth.std() > 0
    for channel in range(3):
        np.testing.assert_array_equal(got[..., channel], depth)
    # and the flag feeds it to the adapter
    grid = tmp_path / "grid.png"
    assert main(BASE + ["--t2i-adapter", tiny_t2i_adapter("sd15"), "--adapter-image", pictures["control"], "--depth",
                        "--depth-model", tiny_dpt(), "-o", str(tmp_path / "d.png"), "--grid", str(grid)]) == 0
    np.testing.assert_array_equal(_png(grid)[:, :64], got)


# --------------------------------------------------------------------------- parity and errors
@pytest.mark.torch
def test_parity_runs_a_controlnet_on_both_sides_and_refuses_reference_libraries(tmp_path, pictures, capsys):
    argv = ["parity", PROMPT, "--steps", "2", "--seed", "7", "--controlnet", tiny_controlnet("sd15"),
            "--control-image", pictures["control"], "--no-localise", "-o", str(tmp_path / "side.png")]
    assert main(argv + ["--model-b", tiny_pipeline("sd15")]) == 0
    printed = capsys.readouterr().out
    assert "largest difference torch vs torch (sd15" in printed and "controlnet" in printed
    assert main(argv + ["--against", "diffusers"]) == 2
    assert "adapters" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--control-image", "x.png"], "needs --controlnet"),
    (["--controlnet", "a", "--controlnet", "b", "--control-image", "x.png"], "2 --controlnet but 1 --control-image"),
    (["--controlnet", "a", "--control-image", "x.png", "--control-scale", "1", "--control-scale", "2"],
     "1 --controlnet but 2 --control-scale"),
    (["--controlnet", "a", "--control-image", "x.png", "--t2i-adapter", "b", "--adapter-image", "x.png"],
     "cannot be combined"),
    (["--controlnet", "a", "--control-image", "x.png", "--image", "x.png"], "text-to-image"),
    (["--canny"], "give a --controlnet or --t2i-adapter"),
    (["--t2i-adapter", "b"], "go together"),
    (["--ip-adapter", "h94/IP-Adapter", "--ip-image", "x.png"], "SUBFOLDER/WEIGHT_NAME"),
    (["--frames", "4"], "name the output .gif or .mp4"),
])
def test_bad_adapter_flags_fail_before_anything_loads(tmp_path, capsys, flags, message):
    out = tmp_path / "x.png"
    assert main(BASE + flags + ["-o", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
