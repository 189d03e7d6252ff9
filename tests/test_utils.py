"""fewstep.utils: load_image, make_image_grid, export_to_gif, export_to_video, offline and framework-free."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import types

import numpy as np
import PIL.Image
import pytest

from fewstep.utils import export_to_gif, export_to_video, load_image, make_image_grid

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _solid(colour, size=(4, 3), mode="RGB"):
    return PIL.Image.new(mode, size, colour)


# --- load_image ---------------------------------------------------------------------------------


def test_load_image_png_path(tmp_path):
    path = tmp_path / "red.png"
    _solid(RED, (5, 7)).save(path)
    for arg in (str(path), path):  # str as in diffusers, and a pathlib.Path
        image = load_image(arg)
        assert image.mode == "RGB" and image.size == (5, 7)
        assert image.getpixel((2, 3)) == RED


def test_load_image_applies_exif_orientation(tmp_path):
    # 4 wide, 2 tall: left half red, right half blue. Orientation 6 means "rotate 90 degrees clockwise
    # to display", so the displayed image is 2 wide, 4 tall with red on top.
    raw = PIL.Image.new("RGB", (4, 2), BLUE)
    raw.paste(_solid(RED, (2, 2)), (0, 0))
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # Orientation
    path = tmp_path / "rotated.png"
    raw.save(path, exif=exif)
    assert PIL.Image.open(path).getexif().get(0x0112) == 6  # the tag survived the round trip

    image = load_image(str(path))
    assert image.size == (2, 4)
    assert image.getpixel((0, 0)) == RED and image.getpixel((1, 1)) == RED
    assert image.getpixel((0, 3)) == BLUE and image.getpixel((1, 2)) == BLUE


def test_load_image_rgba_becomes_rgb(tmp_path):
    path = tmp_path / "rgba.png"
    _solid((10, 20, 30, 128), mode="RGBA").save(path)
    image = load_image(str(path))
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (10, 20, 30)  # convert("RGB") drops alpha, as in diffusers


def test_load_image_convert_method(tmp_path):
    path = tmp_path / "rgba.png"
    _solid((10, 20, 30, 128), mode="RGBA").save(path)
    seen = []

    def to_gray(img):
        seen.append(img.mode)
        return img.convert("L")

    image = load_image(str(path), convert_method=to_gray)
    assert seen == ["RGBA"]  # called instead of convert("RGB"), on the unconverted image
    assert image.mode == "L"


def test_load_image_from_pil_image():
    source = _solid(GREEN, (3, 3), mode="RGBA")
    image = load_image(source)
    assert image.mode == "RGB" and image.size == (3, 3) and image.getpixel((1, 1)) == GREEN


def test_load_image_missing_path_names_it(tmp_path):
    missing = str(tmp_path / "nope.png")
    with pytest.raises(ValueError, match="nope.png"):
        load_image(missing)


def test_load_image_wrong_type():
    with pytest.raises(ValueError, match="path, an http"):
        load_image(42)
    with pytest.raises(ValueError, match="fromarray"):
        load_image(np.zeros((2, 2, 3), np.uint8))


def test_load_image_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(ValueError, match="not an image"):
        load_image(str(path))


def _closed_port() -> int:
    # Bind to get a free port, then close it: nothing listens there, and nothing leaves the machine.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("client", ["requests", "urllib"])
def test_load_image_unreachable_url_says_to_pass_a_local_file(client, monkeypatch):
    if client == "requests":
        pytest.importorskip("requests")
    else:
        monkeypatch.setitem(sys.modules, "requests", None)  # `import requests` now raises ImportError
    # A proxy from the environment must not be asked for 127.0.0.1.
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.setenv("no_proxy", "*")

    url = f"http://127.0.0.1:{_closed_port()}/image.png"
    with pytest.raises(ValueError) as err:
        load_image(url)
    message = str(err.value)
    assert "Could not fetch" in message and url in message
    assert "local path" in message
    assert err.value.__cause__ is not None  # the reason is kept, not swallowed


# --- make_image_grid ----------------------------------------------------------------------------


def test_make_image_grid_size_and_placement():
    colours = [RED, GREEN, BLUE, WHITE, (0, 0, 0), (255, 255, 0)]
    w, h = 4, 3
    grid = make_image_grid([_solid(c, (w, h)) for c in colours], rows=2, cols=3)
    assert grid.mode == "RGB" and grid.size == (3 * w, 2 * h)
    for i, colour in enumerate(colours):  # row-major
        row, col = divmod(i, 3)
        for x, y in ((0, 0), (w - 1, h - 1)):  # both corners of each cell
            assert grid.getpixel((col * w + x, row * h + y)) == colour, (i, x, y)


def test_make_image_grid_resize():
    images = [_solid(RED, (4, 3)), _solid(BLUE, (6, 5))]
    grid = make_image_grid(images, rows=1, cols=2, resize=8)
    assert grid.size == (16, 8)
    assert grid.getpixel((7, 7)) == RED and grid.getpixel((8, 0)) == BLUE


def test_make_image_grid_accepts_arrays():
    float_red = np.zeros((3, 4, 3), np.float32)
    float_red[..., 0] = 1.0
    uint8_blue = np.zeros((3, 4, 3), np.uint8)
    uint8_blue[..., 2] = 255
    grid = make_image_grid([float_red, uint8_blue], rows=2, cols=1)
    assert grid.size == (4, 6)
    assert grid.getpixel((0, 0)) == RED and grid.getpixel((3, 5)) == BLUE

    nhwc = np.stack([float_red, float_red])  # a pipeline's output_type="np"
    assert make_image_grid(nhwc, rows=1, cols=2).size == (8, 3)


def test_make_image_grid_wrong_count():
    with pytest.raises(ValueError, match=r"got 3 images .* = 4"):
        make_image_grid([_solid(RED)] * 3, rows=2, cols=2)


def test_image_array_errors_teach_the_fix():
    with pytest.raises(ValueError, match=r"\(array \+ 1\) / 2"):
        make_image_grid([np.full((2, 2, 3), -1.0)], rows=1, cols=1)
    with pytest.raises(ValueError, match="transpose"):
        make_image_grid([np.zeros((3, 5, 6), np.float32)], rows=1, cols=1)


# --- export_to_gif ------------------------------------------------------------------------------


@pytest.mark.parametrize("fps", [10, 4])  # 100 ms and 250 ms: GIF stores centiseconds
def test_export_to_gif_frames_duration_colours(tmp_path, fps):
    colours = [RED, GREEN, BLUE]
    path = str(tmp_path / "anim.gif")
    assert export_to_gif([_solid(c, (8, 6)) for c in colours], path, fps=fps) == path

    with PIL.Image.open(path) as gif:
        assert gif.n_frames == len(colours)
        assert gif.info.get("loop") == 0
        for i, colour in enumerate(colours):
            gif.seek(i)
            assert gif.info["duration"] == 1000 // fps
            pixel = np.array(gif.convert("RGB").getpixel((4, 3)))
            # Palette quantisation may move a colour slightly; solid primaries should survive almost exactly.
            assert np.abs(pixel - np.array(colour)).max() <= 8, (i, pixel)


def test_export_to_gif_arrays_and_temp_file():
    frames = np.zeros((2, 6, 8, 3), np.float32)  # NHWC float in [0, 1]
    frames[0, ..., 0] = 1.0
    frames[1, ..., 2] = 1.0
    path = export_to_gif(list(frames[:1]) + [(frames[1] * 255).astype(np.uint8)])
    assert path.endswith(".gif")
    try:
        with PIL.Image.open(path) as gif:
            assert gif.n_frames == 2 and gif.size == (8, 6)
            assert gif.info["duration"] == 100  # fps=10 by default
            gif.seek(1)
            assert np.abs(np.array(gif.convert("RGB").getpixel((0, 0))) - np.array(BLUE)).max() <= 8
    finally:
        os.remove(path)


def test_export_to_gif_empty_frames():
    with pytest.raises(ValueError, match="no frames"):
        export_to_gif([])


# --- export_to_video ----------------------------------------------------------------------------


def _read_video(path):
    """(CAP_PROP_FRAME_COUNT, frames read as RGB arrays, width, height, fps) through OpenCV."""
    cv2 = pytest.importorskip("cv2")
    cap = cv2.VideoCapture(path)
    assert cap.isOpened(), path
    try:
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        size = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = cap.get(cv2.CAP_PROP_FPS)
        frames = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    return count, frames, size, fps


# mp4v is lossy, and chroma is subsampled (4:2:0): a solid frame comes back within a few levels of
# its colour on average; seen <= 5 levels off (blue, white) for these solid frames at 32x24.
VIDEO_MEAN_TOL = 12


@pytest.mark.parametrize("fps", [10, 4, 12.5])
def test_export_to_video_frames_size_fps_colours(tmp_path, fps):
    pytest.importorskip("cv2")
    colours = [RED, GREEN, BLUE, WHITE, (0, 0, 0)]
    path = str(tmp_path / "clip.mp4")
    assert export_to_video([_solid(c, (32, 24)) for c in colours], path, fps=fps) == path

    count, frames, size, got_fps = _read_video(path)
    assert count == len(colours) and len(frames) == len(colours)
    assert size == (32, 24) and frames[0].shape == (24, 32, 3)
    assert got_fps == pytest.approx(fps, rel=1e-3)
    for i, (frame, colour) in enumerate(zip(frames, colours)):
        mean = frame.reshape(-1, 3).mean(axis=0)
        assert np.abs(mean - np.array(colour)).max() <= VIDEO_MEAN_TOL, (i, mean)


def test_export_to_video_arrays_and_temp_file(tmp_path):
    pytest.importorskip("cv2")
    frames = np.zeros((3, 16, 24, 3), np.float32)  # NHWC float in [0, 1], as output_type="np" gives
    frames[0, ..., 0] = 1.0
    frames[1, ..., 1] = 1.0
    frames[2, :8] = 1.0  # top half white, bottom half black: where things are survives too
    path = export_to_video(list(frames[:2]) + [(frames[2] * 255).astype(np.uint8)])
    assert path.endswith(".mp4")
    try:
        count, read, size, fps = _read_video(path)
        assert count == 3 and len(read) == 3 and size == (24, 16) and fps == pytest.approx(10)  # fps=10 default
        assert np.abs(read[0].reshape(-1, 3).mean(0) - np.array(RED)).max() <= VIDEO_MEAN_TOL
        assert np.abs(read[1].reshape(-1, 3).mean(0) - np.array(GREEN)).max() <= VIDEO_MEAN_TOL
        assert read[2][:6].mean() >= 255 - VIDEO_MEAN_TOL and read[2][10:].mean() <= VIDEO_MEAN_TOL
    finally:
        os.remove(path)

    nhwc = str(tmp_path / "nhwc.mp4")
    assert export_to_video(frames, nhwc) == nhwc and _read_video(nhwc)[0] == 3  # a 4-D array: its frames


def test_export_to_video_bad_input(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        export_to_video([])
    with pytest.raises(ValueError, match="fps must be a positive number"):
        export_to_video([_solid(RED)], str(tmp_path / "a.mp4"), fps=0)
    with pytest.raises(ValueError, match="fps must be a positive number"):
        export_to_video([_solid(RED)], str(tmp_path / "a.mp4"), fps=-5)
    with pytest.raises(ValueError, match="frames of one size"):
        export_to_video([_solid(RED, (8, 8)), _solid(RED, (8, 6))], str(tmp_path / "a.mp4"))
    with pytest.raises(ValueError, match="not a single image"):
        export_to_video(_solid(RED))
    assert not (tmp_path / "a.mp4").exists()


def test_export_to_video_without_a_backend_says_what_to_install(monkeypatch):
    for name in ("cv2", "imageio", "imageio_ffmpeg"):
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError
    with pytest.raises(ValueError) as err:
        export_to_video([_solid(RED)])
    assert "pip install opencv-python" in str(err.value)
    assert "pip install imageio imageio-ffmpeg" in str(err.value)


def test_export_to_video_falls_back_to_imageio(tmp_path, monkeypatch):
    """Without OpenCV the frames go to imageio's ffmpeg writer (a stand-in module records them)."""
    calls = []

    class Writer:
        def __init__(self, path, **kwargs):
            calls.append(("open", path, kwargs))

        def append_data(self, frame):
            calls.append(("frame", frame.dtype, frame.shape, tuple(frame[0, 0])))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "cv2", None)
    monkeypatch.setitem(sys.modules, "imageio", types.SimpleNamespace(get_writer=Writer))
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", types.ModuleType("imageio_ffmpeg"))
    path = str(tmp_path / "clip.mp4")
    assert export_to_video([_solid(RED, (8, 6)), np.ones((6, 8, 3), np.float32)], path, fps=8) == path
    # imageio writes a fresh temporary name beside the path (fewstep.core.files), renamed onto it once finished
    opened, temp, options = calls[0]
    assert opened == "open" and options == {"format": "FFMPEG", "fps": 8, "quality": 5.0, "macro_block_size": 16}
    assert os.path.dirname(temp) == str(tmp_path) and os.path.basename(temp).startswith(".fewstep-tmp-")
    assert temp.endswith(".mp4") and not os.path.exists(temp) and os.path.isfile(path)
    assert calls[1:] == [("frame", np.uint8, (6, 8, 3), RED), ("frame", np.uint8, (6, 8, 3), WHITE), ("close",)]


# --- imports ------------------------------------------------------------------------------------


def test_import_utils_imports_no_framework():
    # A fresh interpreter: this test process may already hold torch or MindSpore.
    code = textwrap.dedent("""
        import sys
        import fewstep.utils
        from PIL import Image
        fewstep.utils.make_image_grid([Image.new("RGB", (2, 2))], rows=1, cols=1)
        loaded = sorted(m for m in sys.modules
                        if m.split(".")[0] in {"torch", "mindspore", "diffusers", "mindone", "cv2", "imageio"})
        print("LOADED:" + ",".join(loaded))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("LOADED:")][-1]
    assert line == "LOADED:", f"`import fewstep.utils` imported frameworks or video libraries: {line[len('LOADED:'):]}"
