"""Adapter flags against the Python API on the same tiny weights: ControlNet (one, two; with --image / --mask, the
ControlNet img2img / inpainting pipelines; with --frames, AnimateDiffControlNetPipeline), T2I-Adapter, IP-Adapter,
--frames / --motion-adapter, --video (AnimateDiffVideoToVideoPipeline) (torch; one MindSpore case); --canny against
OpenCV, --depth against transformers' depth pipeline; --grid with the control image; parity with a ControlNet; bad
combinations."""

from __future__ import annotations

import functools

import numpy as np
import PIL.Image
import pytest

import fewstep
from fewstep.cli import main
from fewstep.pipelines import (AnimateDiffControlNetPipeline, AnimateDiffPipeline, AnimateDiffVideoToVideoPipeline,
                               StableDiffusionAdapterPipeline, StableDiffusionControlNetImg2ImgPipeline,
                               StableDiffusionControlNetInpaintPipeline, StableDiffusionControlNetPipeline,
                               StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline, StableDiffusionPipeline)
from fewstep.testing import (IP_ADAPTER_FILES, tiny_controlnet, tiny_dpt, tiny_ip_adapter, tiny_motion_adapter,
                             tiny_pipeline, tiny_t2i_adapter)
from fewstep.utils import load_image

PROMPT = "a red fox"
BASE = ["generate", PROMPT, "--steps", "2", "--seed", "7"]
CALL = dict(num_inference_steps=2, guidance_scale=0.0, eta=0.3)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    from tests.pipeline_cases import picture

    from tests.pipeline_cases import mask

    folder = tmp_path_factory.mktemp("cli-adapter-pictures")
    paths = {}
    for name, seed in (("control", 7), ("control2", 8), ("reference", 9), ("init", 1)):
        paths[name] = str(folder / f"{name}.png")
        picture(seed).save(paths[name])
    paths["mask"] = str(folder / "mask.png")
    mask().save(paths["mask"])
    for name, seeds in (("video", (1, 2, 3)), ("video2", (4, 5, 6))):  # 3-frame animated GIFs
        paths[name] = str(folder / f"{name}.gif")
        first, *rest = [picture(seed) for seed in seeds]
        first.save(paths[name], save_all=True, append_images=rest, duration=125, loop=0)
    return paths


def _png(path) -> np.ndarray:
    with PIL.Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _api(cls, backend="torch", kind="sd15", **components):
    pipe = cls.from_pretrained(tiny_pipeline(kind), backend=backend, **components)
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


# --------------------------------------------------------------------------- ControlNet with a task, --video
def _open(path):
    """A picture as the CLI reads --image / --mask: PIL's own mode (the mask stays greyscale)."""
    image = PIL.Image.open(path)
    image.load()
    return image


def _gif(path) -> list:
    """The frames of a GIF as the CLI reads --video: PIL's ImageSequence, each converted to RGB."""
    from PIL import ImageSequence

    with PIL.Image.open(path) as video:
        return [frame.convert("RGB") for frame in ImageSequence.Iterator(video)]


def _same_gif(path, frames, tmp_path) -> None:
    """The CLI's video file is byte for byte the one fewstep.utils.export_to_gif writes of `frames`."""
    from fewstep.utils import export_to_gif

    want = export_to_gif(frames, str(tmp_path / "want.gif"), fps=8)
    assert path.read_bytes() == open(want, "rb").read()


def _frames_changed(frames, others) -> bool:
    return _changed(np.stack([np.asarray(f) for f in frames]), np.stack([np.asarray(f) for f in others]))


@pytest.mark.torch
def test_controlnet_with_image_is_the_controlnet_img2img_pipeline(tmp_path, pictures):
    out = tmp_path / "cn-img2img.png"
    assert main(BASE + ["--controlnet", tiny_controlnet("sd15"), "--control-image", pictures["control"], "--image",
                        pictures["init"], "--strength", "0.6", "-o", str(out)]) == 0
    pipe = _api(StableDiffusionControlNetImg2ImgPipeline,
                controlnet=fewstep.ControlNetModel.from_pretrained(tiny_controlnet("sd15")))
    control, init = load_image(pictures["control"]), _open(pictures["init"])
    want = _image(pipe, image=init, control_image=control, strength=0.6)
    np.testing.assert_array_equal(_png(out), want)
    # the ControlNet counts (against plain img2img) and so does the picture to start from
    assert _changed(want, _image(_api(StableDiffusionImg2ImgPipeline), image=init, strength=0.6))
    assert _changed(want, _image(pipe, image=_open(pictures["reference"]), control_image=control, strength=0.6))


@pytest.mark.torch
def test_controlnet_with_image_and_mask_is_the_controlnet_inpaint_pipeline(tmp_path, pictures):
    out = tmp_path / "cn-inpaint.png"
    assert main(BASE + ["--controlnet", tiny_controlnet("sd15"), "--control-image", pictures["control"], "--image",
                        pictures["init"], "--mask", pictures["mask"], "-o", str(out)]) == 0
    # without --model, inpainting draws with the tiny inpainting pipeline
    pipe = _api(StableDiffusionControlNetInpaintPipeline, kind="sd15-inpaint",
                controlnet=fewstep.ControlNetModel.from_pretrained(tiny_controlnet("sd15")))
    inputs = dict(image=_open(pictures["init"]), mask_image=_open(pictures["mask"]))
    want = _image(pipe, control_image=load_image(pictures["control"]), **inputs)
    np.testing.assert_array_equal(_png(out), want)
    assert _changed(want, _image(_api(StableDiffusionInpaintPipeline, kind="sd15-inpaint"), **inputs))


@pytest.mark.torch
def test_frames_with_controlnet_is_animatediff_controlnet_with_the_picture_on_every_frame(tmp_path, pictures):
    out = tmp_path / "cn-video.gif"
    # no --motion-adapter: the tiny demo model's tiny motion adapter, as for --frames alone
    assert main(BASE + ["--frames", "2", "--controlnet", tiny_controlnet("sd15"), "--control-image",
                        pictures["control"], "--control-scale", "0.5", "-o", str(out)]) == 0
    pipe = _api(AnimateDiffControlNetPipeline,
                controlnet=fewstep.ControlNetModel.from_pretrained(tiny_controlnet("sd15")),
                motion_adapter=fewstep.MotionAdapter.from_pretrained(tiny_motion_adapter()))
    frames = pipe(PROMPT, generator=fewstep.Generator(7), num_frames=2, **CALL, controlnet_conditioning_scale=0.5,
                  conditioning_frames=[load_image(pictures["control"])] * 2).frames[0]
    _same_gif(out, frames, tmp_path)
    plain = _api(AnimateDiffPipeline, motion_adapter=fewstep.MotionAdapter.from_pretrained(tiny_motion_adapter()))
    assert _frames_changed(frames, plain(PROMPT, generator=fewstep.Generator(7), num_frames=2, **CALL).frames[0])


@pytest.mark.torch
def test_frames_with_two_controlnets_give_each_its_picture_on_every_frame(tmp_path, pictures):
    out = tmp_path / "cn2-video.gif"
    nets = [tiny_controlnet("sd15"), tiny_controlnet("sd15", seed=1)]
    assert main(BASE + ["--frames", "2", "--controlnet", nets[0], "--control-image", pictures["control"],
                        "--controlnet", nets[1], "--control-image", pictures["control2"], "-o", str(out)]) == 0
    pipe = _api(AnimateDiffControlNetPipeline, controlnet=[fewstep.ControlNetModel.from_pretrained(n) for n in nets],
                motion_adapter=fewstep.MotionAdapter.from_pretrained(tiny_motion_adapter()))
    conditioning = [[load_image(pictures["control"])] * 2, [load_image(pictures["control2"])] * 2]  # per net
    frames = pipe(PROMPT, generator=fewstep.Generator(7), num_frames=2, conditioning_frames=conditioning,
                  **CALL).frames[0]
    _same_gif(out, frames, tmp_path)


@pytest.mark.torch
def test_video_is_the_video_to_video_pipeline_with_the_videos_frame_count(tmp_path, pictures):
    out = tmp_path / "v2v.gif"
    assert main(BASE + ["--video", pictures["video"], "--strength", "0.5", "-o", str(out)]) == 0
    pipe = _api(AnimateDiffVideoToVideoPipeline,
                motion_adapter=fewstep.MotionAdapter.from_pretrained(tiny_motion_adapter()))
    frames = pipe(PROMPT, generator=fewstep.Generator(7), video=_gif(pictures["video"]), strength=0.5,
                  **CALL).frames[0]
    _same_gif(out, frames, tmp_path)
    assert len(_gif(out)) == 3  # the input's frame count
    other = pipe(PROMPT, generator=fewstep.Generator(7), video=_gif(pictures["video2"]), strength=0.5, **CALL)
    assert _frames_changed(frames, other.frames[0])  # the video, not only the noise, makes the frames


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
    (["--t2i-adapter", "b", "--adapter-image", "x.png", "--image", "x.png"],
     "--t2i-adapter makes pictures from text only (fewstep has no T2I-Adapter pipeline with --image); drop --image, "
     "or use --controlnet, which works with --image, --mask and --frames."),
    (["--t2i-adapter", "b", "--adapter-image", "x.png", "--frames", "4"],
     "--t2i-adapter makes pictures from text only (fewstep has no T2I-Adapter pipeline with --frames)"),
    (["--t2i-adapter", "b", "--adapter-image", "x.png", "--video", "v.gif"], "no T2I-Adapter pipeline with --video"),
    (["--video", "v.gif", "--frames", "3"], "--video makes as many frames as the video has; drop --frames."),
    (["--video", "v.gif", "--image", "x.png"], "--video starts from a video; --image / --mask"),
    (["--video", "v.gif", "--controlnet", "a", "--control-image", "x.png"],
     "--video cannot be combined with --controlnet: fewstep has no video-to-video ControlNet pipeline"),
    (["--video", "v.gif"], "--video makes a video: name the output .gif or .mp4"),
    (["--canny"], "give a --controlnet or --t2i-adapter"),
    (["--t2i-adapter", "b"], "go together"),
    (["--ip-adapter", "h94/IP-Adapter", "--ip-image", "x.png"], "SUBFOLDER/WEIGHT_NAME"),
    (["--frames", "4"], "name the output .gif or .mp4"),
])
def test_bad_adapter_flags_fail_before_anything_loads(tmp_path, capsys, flags, message):
    out = tmp_path / "x.png"
    assert main(BASE + flags + ["-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("fewstep: error: ") and err.count("\n") == 1  # one line
    assert not out.exists() and list(tmp_path.iterdir()) == []
