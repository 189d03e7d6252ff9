"""`fewstep generate` and `fewstep parity` end to end with their default models: the trained demo model
(generate) and the tiny random-weight one (parity, inpainting)."""

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


DEMO_PROMPT = "a red circle on a blue background"


def _recognised(path, prompt=DEMO_PROMPT):
    """The demo checker reads the prompt's shape and colours in the picture: the default is no noise."""
    from fewstep.demo import classify, parse_prompt

    return classify(_png(path)) == parse_prompt(prompt)


@pytest.mark.torch
def test_generate_on_torch_draws_with_the_trained_demo_model(tmp_path, capsys):
    out = tmp_path / "circle.png"
    assert main(["generate", DEMO_PROMPT, "--seed", "4", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "trained demo model" in printed and "LoRA fused" in printed
    assert "seed 4" in printed and "ms/step" in printed and str(out) in printed
    assert _png(out).shape == (32, 32, 3)
    assert _recognised(out)
    # the picture fewstep.demo.load_demo draws for that seed with the demo's defaults (TCD, eta 0.3, 4 steps)
    from fewstep.demo import SAMPLING, load_demo, sample

    want = sample(load_demo("torch"), [(DEMO_PROMPT, 4)], **SAMPLING)[0]
    assert np.abs(_png(out).astype(np.int16) - np.rint(want * 255)).max() <= 1


def test_a_prompt_outside_the_demo_vocabulary_names_it(tmp_path, capsys):
    out = tmp_path / "fox.png"
    assert main(["generate", "a red fox in the snow", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "outside the demo's vocabulary" in err and "circle, square, triangle" in err
    assert "red, green, blue, cyan, pink" in err and "--model" in err
    assert not out.exists()


@pytest.mark.mindspore
def test_generate_on_mindspore_and_parity(tmp_path, capsys):
    out = tmp_path / "circle-ms.png"
    assert main(["generate", DEMO_PROMPT, "--seed", "4", "--backend", "mindspore", "-o", str(out)]) == 0
    assert _png(out).shape == (32, 32, 3)
    assert _recognised(out)
    side = tmp_path / "parity.png"
    # no --model: parity compares the same default model generate draws with
    assert main(["parity", DEMO_PROMPT, "--steps", "2", "--seed", "4", "-o", str(side)]) == 0
    printed = capsys.readouterr().out
    assert "largest difference torch vs mindspore" in printed
    diff = float(printed.split("largest difference torch vs mindspore: ")[1].split()[0])
    assert diff < 1e-3
    assert _png(side).shape == (32, 64, 3)


@pytest.mark.torch
def test_img2img_on_the_demo_model_and_inpaint_on_the_tiny_one(tmp_path, capsys):
    from tests.pipeline_cases import mask, picture

    picture(0).save(tmp_path / "in.png")
    mask().save(tmp_path / "mask.png")
    out = tmp_path / "edit.png"
    assert main(["generate", DEMO_PROMPT, "--steps", "4", "--image", str(tmp_path / "in.png"), "--strength", "0.5",
                 "-o", str(out)]) == 0
    assert "trained demo model" in capsys.readouterr().out
    assert _png(out).shape == (64, 64, 3)
    # the demo model has no inpainting counterpart: the tiny random-weight one serves, and says so
    assert main(["generate", "a fox", "--steps", "2", "--image", str(tmp_path / "in.png"), "--mask",
                 str(tmp_path / "mask.png"), "-o", str(out)]) == 0
    assert "tiny random-weight demo pipeline" in capsys.readouterr().out
    assert _png(out).shape == (64, 64, 3)


def test_bad_arguments_exit_with_a_message(tmp_path, capsys):
    assert main(["generate", "a fox", "--model", str(tmp_path), "-o", str(tmp_path / "x.png")]) == 2
    assert "no model_index.json" in capsys.readouterr().err


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "fewstep", "generate", "--help"], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == 0 and "--scheduler" in result.stdout


def _video_inputs(folder):
    """(name -> path) of --video inputs that cannot make a video: missing, a folder, not a picture, one frame."""
    from tests.pipeline_cases import picture

    (folder / "text.gif").write_text("not a gif")
    picture(0).save(folder / "still.gif")
    (folder / "frames").mkdir()
    return {"missing": str(folder / "none.gif"), "folder": str(folder / "frames"), "text": str(folder / "text.gif"),
            "still": str(folder / "still.gif")}


@pytest.mark.parametrize("case, message", [
    ("missing", "--video '{path}' does not exist; give an animated .gif."),
    ("folder", "--video '{path}' is a folder; give an animated .gif."),
    ("text", "--video '{path}' is not a video PIL can read ("),
    ("still", "--video '{path}' has one frame; give an animated .gif of several frames (or use --image for one "
              "picture)."),
])
def test_a_video_that_cannot_be_read_fails_in_one_line_before_anything_loads(tmp_path, capsys, case, message):
    path = _video_inputs(tmp_path)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "v.gif"
    assert main(["generate", "a fox", "--video", path, "--steps", "2", "-o", str(out)]) == 2
    printed = capsys.readouterr()
    err = printed.err
    assert err.startswith("fewstep: error: " + message.format(path=path)) and err.count("\n") == 1
    assert "tiny random-weight" not in printed.out  # refused before a model was made
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_video_with_a_model_needs_a_motion_adapter(tmp_path, capsys):
    from tests.pipeline_cases import picture

    first, *rest = [picture(seed) for seed in (1, 2)]
    first.save(tmp_path / "in.gif", save_all=True, append_images=rest)
    out = tmp_path / "v.gif"
    assert main(["generate", "a fox", "--video", str(tmp_path / "in.gif"), "--model", "some/model", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == ("fewstep: error: --video with --model needs --motion-adapter PATH_OR_ID (e.g. "
                   "guoyww/animatediff-motion-adapter-v1-5).\n")
    assert not out.exists()
