"""`fewstep generate` and `fewstep parity` end to end with the default tiny model."""

import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from fewstep.cli import main


def _png(path):
    with PIL.Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        return np.asarray(image)


@pytest.mark.torch
def test_generate_on_torch(tmp_path, capsys):
    out = tmp_path / "fox.png"
    assert main(["generate", "a fox", "--steps", "2", "--seed", "4", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tiny random-weight demo pipeline" in printed
    assert "seed 4" in printed and "ms/step" in printed and str(out) in printed
    assert _png(out).shape == (64, 64, 3)


@pytest.mark.mindspore
def test_generate_on_mindspore_and_parity(tmp_path, capsys):
    out = tmp_path / "fox-ms.png"
    assert main(["generate", "a fox", "--steps", "2", "--seed", "4", "--backend", "mindspore", "-o", str(out)]) == 0
    assert _png(out).shape == (64, 64, 3)
    side = tmp_path / "parity.png"
    assert main(["parity", "a fox", "--steps", "2", "--seed", "4", "-o", str(side)]) == 0
    printed = capsys.readouterr().out
    assert "largest difference torch vs mindspore" in printed
    diff = float(printed.split("largest difference torch vs mindspore: ")[1].split()[0])
    assert diff < 1e-3
    assert _png(side).shape == (64, 128, 3)


@pytest.mark.torch
def test_img2img_and_inpaint_from_files(tmp_path):
    from tests.pipeline_cases import mask, picture

    picture(0).save(tmp_path / "in.png")
    mask().save(tmp_path / "mask.png")
    out = tmp_path / "edit.png"
    assert main(["generate", "a fox", "--steps", "4", "--image", str(tmp_path / "in.png"), "--strength", "0.5",
                 "-o", str(out)]) == 0
    assert _png(out).shape == (64, 64, 3)
    assert main(["generate", "a fox", "--steps", "2", "--image", str(tmp_path / "in.png"), "--mask",
                 str(tmp_path / "mask.png"), "-o", str(out)]) == 0
    assert _png(out).shape == (64, 64, 3)


def test_bad_arguments_exit_with_a_message(tmp_path, capsys):
    assert main(["generate", "a fox", "--model", str(tmp_path), "-o", str(tmp_path / "x.png")]) == 2
    assert "no model_index.json" in capsys.readouterr().err


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "fewstep", "generate", "--help"], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == 0 and "--scheduler" in result.stdout
