"""`--model file.safetensors` (+ `--config`): a single-file checkpoint, its family named, the Python API's image;
pickles and misplaced --config refused; `fewstep info` on a folder and a LoRA file."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest

import fewstep
from fewstep.cli import main
from fewstep.testing import tiny_pipeline


@pytest.mark.torch
def test_single_file_checkpoint_gives_the_python_apis_image(tmp_path, capsys):
    from fewstep.pipelines import StableDiffusionPipeline
    from fewstep.testing.tiny_single_file import tiny_checkpoint

    checkpoint, out = tiny_checkpoint("sd15"), tmp_path / "sf.png"
    assert main(["generate", "a red fox", "--steps", "2", "--seed", "5", "--model", checkpoint, "--config",
                 tiny_pipeline("sd15"), "-o", str(out), "--save-settings", str(tmp_path / "run.json")]) == 0
    assert "single-file checkpoint, family SD 1.5, loaded as StableDiffusionPipeline" in capsys.readouterr().out
    assert json.loads((tmp_path / "run.json").read_text())["config"] == tiny_pipeline("sd15")
    pipe = StableDiffusionPipeline.from_single_file(checkpoint, config=tiny_pipeline("sd15"))
    pipe.scheduler = fewstep.TCDScheduler.from_config(pipe.scheduler.config)
    want = pipe("a red fox", num_inference_steps=2, guidance_scale=0.0, eta=0.3, generator=fewstep.Generator(5))
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(out)), np.asarray(want.images[0]))


def test_pickles_and_a_config_without_a_checkpoint_are_refused(tmp_path, capsys):
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"\x80\x04not really")
    out = tmp_path / "x.png"
    assert main(["generate", "x", "--model", str(pickle), "-o", str(out)]) == 2
    assert "pickle" in capsys.readouterr().err.lower() and not out.exists()
    assert main(["generate", "x", "--config", str(tmp_path), "-o", str(out)]) == 2
    assert "single-file checkpoint" in capsys.readouterr().err and not out.exists()


def test_info_describes_a_folder_and_a_lora(tmp_path, capsys):
    from tests.lora_cases import make_lora, targets_from_folder, write

    assert main(["info", tiny_pipeline("sd15")]) == 0
    assert "StableDiffusionPipeline" in capsys.readouterr().out
    lora = write(str(tmp_path), "style", make_lora(targets_from_folder(tiny_pipeline("sd15")), seed=1), "kohya", "sd15")
    assert main(["info", lora, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "lora"
    assert main(["info", str(tmp_path / "none.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------------- parity on a checkpoint
def _parity(capsys, *flags) -> tuple:
    """(exit status, the largest difference line) of `fewstep parity` on the tiny SD 1.5 checkpoint."""
    from fewstep.testing.tiny_single_file import tiny_checkpoint

    code = main(["parity", "a red fox", "--model", tiny_checkpoint("sd15"), "--config", tiny_pipeline("sd15"),
                 "--steps", "2", "--seed", "3", "--no-localise", *flags])
    out = capsys.readouterr().out
    return code, next(line for line in out.splitlines() if "largest difference" in line)


@pytest.mark.parity
def test_parity_of_a_checkpoint_torch_against_mindspore(tmp_path, capsys):
    code, line = _parity(capsys, "--against", "mindspore", "-o", str(tmp_path / "p.png"))
    assert code == 0 and "torch vs mindspore" in line


@pytest.mark.torch
def test_parity_of_a_checkpoint_against_diffusers_own_from_single_file(tmp_path, capsys):
    code, line = _parity(capsys, "--against", "diffusers", "-o", str(tmp_path / "p.png"))
    assert code == 0 and "torch vs diffusers" in line


@pytest.mark.mindspore
@pytest.mark.torch  # the tiny folder the checkpoint is written from is built with torch
def test_parity_of_a_checkpoint_against_mindones_own_from_single_file(tmp_path, capsys):
    code, line = _parity(capsys, "--backend", "mindspore", "--against", "mindone", "-o", str(tmp_path / "p.png"))
    assert code == 0 and "mindspore vs mindone" in line


@pytest.mark.torch
def test_parity_of_a_checkpoint_against_its_folder(tmp_path, capsys):
    from fewstep.testing.tiny_single_file import tiny_checkpoint

    out = tmp_path / "p.png"
    assert main(["parity", "a red fox", "--model", tiny_pipeline("sd15"), "--model-b", tiny_checkpoint("sd15"),
                 "--config", tiny_pipeline("sd15"), "--steps", "2", "--seed", "3", "--no-localise",
                 "--tolerance", "1e-6", "-o", str(out)]) == 0
    assert "torch vs torch (sd15.safetensors)" in capsys.readouterr().out and out.exists()


def test_parity_config_without_a_checkpoint_is_refused(tmp_path, capsys):
    assert main(["parity", "x", "--config", str(tmp_path), "-o", str(tmp_path / "p.png")]) == 2
    assert "--config describes a single-file checkpoint" in capsys.readouterr().err
