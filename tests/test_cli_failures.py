"""Every failure a user can cause on the command line ends in one line on stderr that says what to do, a
non-zero exit, and nothing written: each case is its input, the exit status, the message's first line and the
folder left as it was (issue: hostile and unlucky input)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from fewstep.cli import main
from fewstep.testing import tiny_pipeline

PROMPT = "a red circle on a blue background"


def _fails(capsys, tmp_path, argv, code, first_line):
    """Run the CLI in `tmp_path` (as cwd); assert exit `code`, one stderr line containing `first_line`, no
    traceback, and no file added to the folder."""
    before = sorted(os.listdir(tmp_path))
    got = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert got == code, err
    assert err and err[-1].startswith("fewstep: error: ") and first_line in err[-1], err
    assert not any("Traceback" in line for line in err), err
    assert sorted(os.listdir(tmp_path)) == before, "the failed run left files behind"
    return err[-1]


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _png_header_claiming(path, width, height):
    """A 1x1 PNG whose header says width x height: what a decompression bomb looks like to PIL."""
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(open(path, "rb").read())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    open(path, "wb").write(bytes(data))


@pytest.mark.torch
@pytest.mark.parametrize("kind,message", [
    ("garbage", "is not a picture PIL can read"), ("truncated", "is not a picture PIL can read"),
    ("folder", "is a folder"), ("missing", "does not exist"), ("bomb", "too large to read safely"),
])
def test_bad_input_pictures(capsys, here, kind, message):
    inputs = here / "inputs"
    inputs.mkdir()
    path = inputs / "in.png"
    if kind == "garbage":
        path.write_bytes(b"not a picture at all")
    elif kind == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "folder":
        path.mkdir()
    elif kind == "bomb":
        _png_header_claiming(path, 30000, 30000)
    _fails(capsys, here, ["generate", PROMPT, "--image", str(path), "-o", "out.png"], 2, message)


@pytest.mark.torch
@pytest.mark.parametrize("flags,message", [
    (["--guidance", "inf"], "--guidance must be a finite number"),
    (["--guidance", "1e309"], "--guidance must be a finite number"),
    (["--guidance", "nan"], "--guidance must be a finite number"),
    (["--guidance", "-5"], "--guidance must be at least 0"),
    (["--eta", "nan"], "--eta must be a finite number"),
    (["--eta", "2"], "--eta must be at least 0.0 and at most 1.0"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--width", "0"], "--width must be at least 1"),
    (["--num-images", "1000000000"], "--num-images must be at least 1 and at most 10000"),
    (["--strength", "0", "--image", "{picture}"], "--strength must be in (0, 1]"),
    (["--lora", "{lora}:nan"], "the weight must be a finite number"),
    (["--lora", "{lora}:inf"], "the weight must be a finite number"),
])
def test_numbers_are_checked_where_they_enter(capsys, here, flags, message):
    inputs = here / "inputs"
    inputs.mkdir()
    Image.new("RGB", (32, 32)).save(inputs / "in.png")
    (inputs / "lora.safetensors").write_bytes(b"")
    flags = [f.format(picture=inputs / "in.png", lora=inputs / "lora.safetensors") for f in flags]
    _fails(capsys, here, ["generate", PROMPT, *flags, "-o", "out.png"], 2, message)


@pytest.mark.torch
@pytest.mark.parametrize("content,message", [
    ('{"fewstep_settings": 1, "prompt": "%s", "guidance": Infinity}' % PROMPT, "is not valid JSON"),
    ('{"fewstep_settings": 1, "prompt": "%s", "eta": NaN}' % PROMPT, "is not valid JSON"),
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
])
def test_settings_files_with_non_numbers_or_deep_nesting(capsys, here, content, message):
    (here / "inputs").mkdir()
    path = here / "inputs" / "settings.json"
    path.write_text(content)
    _fails(capsys, here, ["generate", "--settings", str(path), "-o", "out.png"], 2, message)


@pytest.mark.torch
@pytest.mark.parametrize("damage,message", [
    ("empty", "is not valid JSON"), ("truncated", "is not valid JSON"), ("binary", "is not valid JSON"),
    ("list", "holds a JSON list, not an object"), ("entry", "not [library, class name]"),
    ("pickled", "holds its weights only as pickles"),
])
def test_damaged_pipeline_folders_are_named(capsys, here, damage, message):
    folder = here / "inputs" / "model"
    shutil.copytree(tiny_pipeline("sd15"), folder)
    index = folder / "model_index.json"
    text = index.read_text()
    if damage == "empty":
        index.write_text("")
    elif damage == "truncated":
        index.write_text(text[: len(text) // 2])
    elif damage == "binary":
        index.write_bytes(bytes(range(200, 256)) * 4)
    elif damage == "list":
        index.write_text("[1, 2]")
    elif damage == "entry":
        index.write_text(json.dumps({**json.loads(text), "unet": 5}))
    else:
        for f in (folder / "unet").glob("*.safetensors"):
            f.unlink()
        (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    line = _fails(capsys, here, ["generate", "x", "--model", str(folder), "-o", "out.png"], 2, message)
    assert str(folder) in line


@pytest.mark.torch
def test_a_device_that_is_not_there(capsys, here):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the case is a machine without it")
    _fails(capsys, here, ["generate", PROMPT, "--device", "cuda", "-o", "out.png"], 2,
           "torch cannot use the device 'cuda'")


def test_lora_files_nested_too_deep_or_with_absurd_shapes(capsys, here):
    (here / "inputs").mkdir()
    deep = here / "inputs" / "deep.safetensors"
    header = ("{\"a\":" * 100000 + "1" + "}" * 100000).encode()
    deep.write_bytes(struct.pack("<Q", len(header)) + header)
    _fails(capsys, here, ["info", str(deep)], 2, "nested too deeply")
    huge = here / "inputs" / "huge.safetensors"
    header = json.dumps({"unet.down.lora_A.weight": {"dtype": "F16", "shape": [2 ** 40, 2 ** 40],
                                                        "data_offsets": [0, 8]}}).encode()
    huge.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    _fails(capsys, here, ["info", str(huge)], 2, "is corrupt")


@pytest.mark.torch
def test_ctrl_c_is_one_line_and_writes_nothing(capsys, here, monkeypatch):
    import fewstep

    def interrupted(*args, **kwargs):  # Ctrl-C in the middle of the denoising loop
        raise KeyboardInterrupt

    monkeypatch.setattr(fewstep.TCDScheduler, "step", interrupted)
    _fails(capsys, here, ["generate", PROMPT, "-o", "out.png"], 130, "interrupted (Ctrl-C)")


@pytest.mark.torch
def test_a_full_disk_is_one_line_and_leaves_nothing(capsys, here, monkeypatch):
    import fewstep.core.files as files

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "_fsync", full)
    _fails(capsys, here, ["generate", PROMPT, "--seed", "0", "-o", "out.png"], 1, "no space left on the device")


@pytest.mark.torch
def test_an_unexpected_error_is_one_line_and_its_traceback_only_with_verbose(capsys, here, monkeypatch):
    import fewstep

    def broken(*args, **kwargs):
        raise ZeroDivisionError("simulated")

    monkeypatch.setattr(fewstep.TCDScheduler, "step", broken)
    _fails(capsys, here, ["generate", PROMPT, "-o", "out.png"], 1, "ZeroDivisionError: simulated")
    assert main(["generate", PROMPT, "-o", "out.png", "--verbose"]) == 1
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.torch
def test_long_prompts(capsys, here, caplog):
    # the demo model: the error names the unknown words, not a 10,000-word prompt
    line = _fails(capsys, here, ["generate", "a red circle on " + "gleaming " * 10000 + "blue", "-o", "out.png"], 2,
                  "words outside the demo's vocabulary ('gleaming')")
    assert len(line) < 600
    # a real model cuts the prompt to 77 tokens and says so, as diffusers does
    caplog.set_level("WARNING", logger="fewstep.pipelines.prompts")
    assert main(["generate", "word " * 200, "--model", tiny_pipeline("sd15"), "--steps", "1", "-o", "long.png"]) == 0
    assert any("truncated because CLIP can only handle sequences up to 77 tokens" in r.getMessage()
               for r in caplog.records)


@pytest.mark.torch
def test_a_word_the_demo_tokenizer_splits_is_refused_by_the_pipeline_not_the_embedding():
    """The demo's vocab.json lists its BPE merges' intermediate symbols (transformers 5 needs them), at ids its text
    encoder has no row for: a prompt outside its vocabulary is a ValueError naming the pieces, not an index error."""
    from fewstep.demo import load_demo

    pipe = load_demo("torch")
    with pytest.raises(ValueError, match=r"^The prompt has tokens the text encoder has no embedding for \(.*\): its "
                                         r"vocabulary has 14 entries"):
        pipe("a purple hexagon", num_inference_steps=1)
    assert pipe(PROMPT, num_inference_steps=1, output_type="np").images.shape == (1, 32, 32, 3)
