"""Every file fewstep writes goes through fewstep.core.files: a link planted at the target is replaced, not
written through; the temporary name is unpredictable, so a link planted under the old predictable names
(`.fewstep-tmp-<pid>-NAME`, `PATH.tmp-<pid>`) is neither used nor touched; a writer that fails midway leaves
the old file as it was and no temporary file behind. And `fewstep parity` writes its picture only where asked.

Writers: an image (cli/outputs.save_image), a GIF and an MP4 (fewstep.utils.export_to_gif / export_to_video),
a parity report (fewstep.parity.render.write_report: report.json and its pictures), a scheduler's
save_config, and `fewstep parity -o FILE`. Only the parity command runs a model (the tiny SD 1.5, 1 step)."""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest

from fewstep.core import files
from fewstep.core.files import TEMP_PREFIX
from fewstep.parity.pictures import MIN_PANEL_WIDTH

VICTIM = b"precious: must never be overwritten\n"
COLOURS = {0: (200, 30, 30), 1: (30, 30, 200)}


# ------------------------------------------------------------------------------------------ the writers
# Each writer: the file names it writes into a folder, write(folder, variant), check(folder, variant) that
# asserts the files hold that variant, and break_midway(monkeypatch) that makes the next write raise after
# it has started writing, with the exception expected.

def _solid(variant, size=(32, 32)):
    return PIL.Image.new("RGB", size, COLOURS[variant])


class Image:
    names = ("out.png",)

    @staticmethod
    def write(folder, variant):
        from fewstep.cli.outputs import save_image

        save_image(_solid(variant), os.path.join(folder, "out.png"))

    @staticmethod
    def check(folder, variant):
        with PIL.Image.open(os.path.join(folder, "out.png")) as image:
            assert image.format == "PNG" and image.convert("RGB").getpixel((5, 5)) == COLOURS[variant]

    @staticmethod
    def break_midway(monkeypatch):
        return _disk_full(monkeypatch)  # encoded in memory first: the file write itself is what can fail


class Gif:
    names = ("anim.gif",)

    @staticmethod
    def write(folder, variant):
        from fewstep.utils import export_to_gif

        assert export_to_gif([_solid(variant), _solid(1 - variant)], os.path.join(folder, "anim.gif"), fps=5) \
            == os.path.join(folder, "anim.gif")

    @staticmethod
    def check(folder, variant):
        with PIL.Image.open(os.path.join(folder, "anim.gif")) as image:
            assert image.format == "GIF" and image.n_frames == 2
            assert image.convert("RGB").getpixel((5, 5)) == COLOURS[variant]

    @staticmethod
    def break_midway(monkeypatch):
        def half_a_gif(image, fp, filename):
            fp.write(b"GIF89a\x20\x00\x20\x00")  # the header, then the encoder fails
            raise OSError("encoder failed midway")

        monkeypatch.setitem(PIL.Image.SAVE_ALL, "GIF", half_a_gif)
        return OSError, "encoder failed midway"


class Mp4:
    names = ("clip.mp4",)

    @staticmethod
    def write(folder, variant):
        from fewstep.utils import export_to_video

        frames = [np.full((32, 32, 3), COLOURS[variant], dtype=np.uint8)] * 3
        assert export_to_video(frames, os.path.join(folder, "clip.mp4"), fps=5) == os.path.join(folder, "clip.mp4")

    @staticmethod
    def check(folder, variant):
        import cv2

        capture = cv2.VideoCapture(os.path.join(folder, "clip.mp4"))
        try:
            ok, frame = capture.read()
        finally:
            capture.release()
        assert ok, "the MP4 does not decode"
        mean = frame[..., ::-1].reshape(-1, 3).mean(axis=0)  # BGR -> RGB; lossy, so near the colour
        assert np.abs(mean - COLOURS[variant]).max() < 25, mean

    @staticmethod
    def break_midway(monkeypatch):
        from fewstep import utils

        def half_a_video(frames, path, fps):
            with open(path, "wb") as f:
                f.write(b"\x00\x00\x00\x18ftypmp42")
            raise OSError("encoder failed midway")

        monkeypatch.setattr(utils, "_video_writer", lambda: half_a_video)
        return OSError, "encoder failed midway"


def _parity_report(variant):
    from fewstep.parity.report import ParityReport, StageDiff

    width = 40 + 8 * variant  # images.png: 3 panels, each enlarged by a whole factor to at least MIN_PANEL_WIDTH
    rng = np.random.default_rng(variant)
    a = rng.random((1, 32, width, 3))
    stages = [StageDiff("scheduler", step, (1, 4, 4, 4), 0.1, 0.1, 10.0 ** -(step + 3), 1e-3, True)
              for step in range(3)]
    return ParityReport(side_a={"label": "torch"}, side_b={"label": "mindspore"}, stages=stages,
                        tolerance=0.5 + variant, image_max_abs=0.0, images=(a, a.copy()))


class Report:
    names = ("report.json", "images.png", "latents.png")

    @staticmethod
    def write(folder, variant):
        from fewstep.parity.render import write_report

        written = write_report(_parity_report(variant), folder)
        assert sorted(os.path.basename(p) for p in written.values()) == sorted(Report.names)

    @staticmethod
    def check(folder, variant):
        from fewstep.parity.render import read_report

        assert read_report(folder)["tolerance"] == 0.5 + variant
        with PIL.Image.open(os.path.join(folder, "images.png")) as image:
            width = 40 + 8 * variant
            assert image.format == "PNG" and image.size[0] == 3 * width * math.ceil(MIN_PANEL_WIDTH / width)
        with PIL.Image.open(os.path.join(folder, "latents.png")) as image:
            assert image.format == "PNG"

    @staticmethod
    def break_midway(monkeypatch):
        from fewstep.parity import render

        def half_a_json(data, f):
            f.write('{"side_a": {"label": "tor')
            raise OSError("report failed midway")

        monkeypatch.setattr(render, "_dump", half_a_json)
        return OSError, "report failed midway"


class SchedulerConfig:
    names = ("scheduler_config.json",)

    @staticmethod
    def write(folder, variant):
        from fewstep.core.schedulers.lcm import LCMScheduler

        path = LCMScheduler(beta_start=0.0008 + variant * 1e-4).save_config(folder)
        assert path == os.path.join(folder, "scheduler_config.json")

    @staticmethod
    def check(folder, variant):
        with open(os.path.join(folder, "scheduler_config.json"), encoding="utf-8") as f:
            config = json.load(f)
        assert config["_class_name"] == "LCMScheduler" and config["beta_start"] == 0.0008 + variant * 1e-4

    @staticmethod
    def break_midway(monkeypatch):
        from fewstep.core.schedulers.lcm import LCMScheduler

        # a lone surrogate cannot be encoded as UTF-8: the write fails once the file is open
        monkeypatch.setattr(LCMScheduler, "to_json_string", lambda self: '{"beta_start": "\ud800"}\n')
        return UnicodeEncodeError, "surrogates not allowed"


WRITERS = [Image, Gif, Mp4, Report, SchedulerConfig]
ids = [w.__name__ for w in WRITERS]


def _disk_full(monkeypatch):
    # the file is filled, then flushing it fails as on a full disk
    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "_fsync", full)
    return OSError, "No space left on device"


def _victim(tmp_path, name="victim.txt"):
    victim = tmp_path / "elsewhere" / name
    victim.parent.mkdir(exist_ok=True)
    victim.write_bytes(VICTIM)
    return victim


def _listing(folder):
    return sorted(os.listdir(folder))


def _snapshot(folder):
    """Every entry of the folder: a link as ('link', where it points), a file as ('file', its bytes)."""
    out = {}
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        out[name] = ("link", os.readlink(path)) if os.path.islink(path) else ("file", open(path, "rb").read())
    return out


def _record_mkstemp(monkeypatch):
    names = []
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        handle, name = real(*args, **kwargs)
        names.append(name)
        return handle, name

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    return names


# ------------------------------------------------------------------------------------------ (a) a link at the target

@pytest.mark.parametrize("dangling", [False, True], ids=["link-to-file", "dangling-link"])
@pytest.mark.parametrize("writer", WRITERS, ids=ids)
def test_a_link_at_the_target_is_replaced_not_written_through(tmp_path, writer, dangling):
    folder = tmp_path / "out"
    folder.mkdir()
    victims = []
    for name in writer.names:
        victim = tmp_path / "elsewhere" / f"victim-{name}"
        if not dangling:
            victim = _victim(tmp_path, f"victim-{name}")
        os.symlink(victim, folder / name)
        victims.append(victim)

    writer.write(str(folder), 0)

    for name, victim in zip(writer.names, victims):
        target = folder / name
        assert not target.is_symlink() and target.is_file(), f"{name} is still a link"
        if dangling:
            assert not victim.exists(), f"the write went through the dangling link at {name}"
        else:
            assert victim.read_bytes() == VICTIM, f"the write went through the link at {name}"
        umask = os.umask(0)
        os.umask(umask)
        assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() makes it, not mkstemp's 0600
    writer.check(str(folder), 0)
    assert _listing(folder) == sorted(writer.names)  # no temporary file left


# ------------------------------------------------------------------------------------------ (b) temporary names

@pytest.mark.parametrize("writer", WRITERS, ids=ids)
def test_temporary_names_are_unpredictable_and_old_predictable_names_are_left_alone(tmp_path, monkeypatch, writer):
    folder = tmp_path / "out"
    folder.mkdir()
    victim = _victim(tmp_path)
    pid = os.getpid()
    for name in writer.names:  # the names the old writers used, each a link to the victim
        os.symlink(victim, folder / f"{TEMP_PREFIX}{pid}-{name}")
        os.symlink(victim, folder / f"{name}.tmp-{pid}")
    planted = _snapshot(folder)
    temps = _record_mkstemp(monkeypatch)

    writer.write(str(folder), 0)
    writer.write(str(folder), 1)

    ours = [t for t in temps if os.path.dirname(t) == str(folder)]
    assert len(ours) == 2 * len(writer.names), temps
    assert len(set(ours)) == len(ours), f"two writes used the same temporary name: {ours}"
    for temp in ours:
        base = os.path.basename(temp)
        assert base.startswith(TEMP_PREFIX) and base not in planted, base
        assert os.path.splitext(base)[1] in {os.path.splitext(n)[1] for n in writer.names}  # keeps the extension
        assert not os.path.lexists(temp)
    assert victim.read_bytes() == VICTIM
    after = _snapshot(folder)
    assert {k: after[k] for k in planted} == planted, "a planted name was changed"
    assert sorted(after) == sorted([*planted, *writer.names])
    writer.check(str(folder), 1)


# ------------------------------------------------------------------------------------------ (c) a failure midway

@pytest.mark.parametrize("failure", ["writer", "disk-full"])
@pytest.mark.parametrize("writer", WRITERS, ids=ids)
def test_a_failure_midway_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch, writer, failure):
    folder = tmp_path / "out"
    folder.mkdir()
    writer.write(str(folder), 0)
    before = _snapshot(folder)
    temps = _record_mkstemp(monkeypatch)
    error, message = writer.break_midway(monkeypatch) if failure == "writer" else _disk_full(monkeypatch)

    with pytest.raises(error, match=message):
        writer.write(str(folder), 1)

    assert temps, "the failure came before any temporary file was made: it tests nothing"
    assert _snapshot(folder) == before  # old files byte for byte, nothing added
    assert not any(os.path.lexists(t) for t in temps)
    writer.check(str(folder), 0)


def test_export_without_a_path_still_returns_a_new_file(tmp_path, monkeypatch):
    # export_to_gif / export_to_video with no path write a fresh temporary file and leave it for the caller
    from fewstep.utils import export_to_gif

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    path = export_to_gif([_solid(0)])
    assert os.path.dirname(path) == str(tmp_path) and path.endswith(".gif")
    with PIL.Image.open(path) as image:
        assert image.format == "GIF"
    assert _listing(tmp_path) == [os.path.basename(path)]


# ------------------------------------------------------------------------------------------ fewstep parity

def _parity_argv(*flags):
    from fewstep.testing import tiny_pipeline

    return ["parity", "a fox", "--model", str(tiny_pipeline("sd15")), "--against", "torch", "--steps", "1",
            "--seed", "1", "--no-localise", *flags]


@pytest.mark.torch
@pytest.mark.parametrize("where", ["neither", "output", "report"])
def test_parity_writes_its_picture_only_where_asked(tmp_path, monkeypatch, capsys, where):
    from fewstep.cli import main

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "out"
    flags = {"neither": [], "output": ["-o", str(out / "side.png")], "report": ["--report", str(out)]}[where]

    assert main(_parity_argv(*flags)) == 0
    printed = capsys.readouterr().out

    assert os.listdir(cwd) == [], "parity wrote into the current directory"
    if where == "neither":
        assert not out.exists()
        assert "no picture written: give -o FILE for the two images side by side, or --report DIR" in printed
        return
    assert "no picture written" not in printed
    if where == "output":
        assert _listing(out) == ["side.png"]
        with PIL.Image.open(out / "side.png") as image:
            assert image.size == (128, 64)  # the two 64 x 64 images side by side
        assert f"wrote {out / 'side.png'} (left torch, right torch)" in printed
    else:
        assert _listing(out) == ["images.png", "latents.png", "report.json"]
        assert f"wrote {out / 'images.png'} (the picture: left torch, middle torch, right their difference" in printed


@pytest.mark.torch
def test_parity_output_replaces_a_link_and_uses_an_unpredictable_temporary_name(tmp_path, monkeypatch, capsys):
    from fewstep.cli import main

    out = tmp_path / "out"
    out.mkdir()
    victim = _victim(tmp_path)
    os.symlink(victim, out / "side.png")
    pid = os.getpid()
    os.symlink(victim, out / f"{TEMP_PREFIX}{pid}-side.png")
    os.symlink(victim, out / f"side.png.tmp-{pid}")
    temps = _record_mkstemp(monkeypatch)

    assert main(_parity_argv("-o", str(out / "side.png"))) == 0
    capsys.readouterr()

    assert victim.read_bytes() == VICTIM
    assert not (out / "side.png").is_symlink()
    with PIL.Image.open(out / "side.png") as image:
        assert image.format == "PNG" and image.size == (128, 64)
    ours = [os.path.basename(t) for t in temps if os.path.dirname(t) == str(out)]
    assert len(ours) == 1 and ours[0].startswith(TEMP_PREFIX) and ours[0].endswith(".png")
    assert ours[0] not in (f"{TEMP_PREFIX}{pid}-side.png", f"side.png.tmp-{pid}")
    assert {n: os.readlink(out / n) for n in os.listdir(out) if n != "side.png"} == \
        {f"{TEMP_PREFIX}{pid}-side.png": str(victim), f"side.png.tmp-{pid}": str(victim)}


def test_parity_output_on_a_full_disk_fails_with_one_line_and_keeps_the_old_picture(tmp_path, monkeypatch, capsys):
    # the comparison is stubbed (no model): what is tested is the write of -o FILE
    from fewstep.cli import main
    from fewstep.cli import parity as parity_cli
    from fewstep import parity

    monkeypatch.setattr(parity_cli, "model_source", lambda *args: ("unused", []))
    monkeypatch.setattr(parity_cli, "parity_sides",
                        lambda *args: (SimpleNamespace(label="torch"), SimpleNamespace(label="mindspore")))
    monkeypatch.setattr(parity, "compare", lambda *args, **kwargs: _parity_report(0))
    out = tmp_path / "out"
    out.mkdir()
    _solid(1).save(out / "side.png")
    before = _snapshot(out)
    _disk_full(monkeypatch)

    assert main(["parity", "a fox", "--seed", "1", "-o", str(out / "side.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fewstep: error: ") and "No space left on device" in err.splitlines()[0]
    assert "Traceback" not in err
    assert _snapshot(out) == before
