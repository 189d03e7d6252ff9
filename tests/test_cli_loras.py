"""`--lora` on the command line: the flags' parsing, and differential tests against the Python API
(load_lora_weights(adapter_name=...), set_adapters(names, weights), fuse_lora()) on the same tiny weights,
on torch and MindSpore; batch's --lora beside the items' own; a LoRA that does not fit."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest

import fewstep
from fewstep.cli import main
from fewstep.cli.loras import LoraSpec, parse_lora, specs_from_flags
from fewstep.pipelines import StableDiffusionPipeline
from fewstep.testing import tiny_pipeline

PROMPT = "a red fox"
CALL = dict(num_inference_steps=2, guidance_scale=0.0, eta=0.3)


def flags():
    """The tiny SD 1.5 named explicitly: without --model, `generate` draws with the trained demo model."""
    return ["--steps", "2", "--model", tiny_pipeline("sd15")]


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory):
    """A kohya file and a diffusers/PEFT file for the tiny SD 1.5 (UNet and text encoder)."""
    from tests.lora_cases import make_lora, targets_from_folder, write

    folder = tmp_path_factory.mktemp("cli-loras")
    targets = targets_from_folder(tiny_pipeline("sd15"))
    return {"kohya": write(str(folder), "tcd", make_lora(targets, seed=1), "kohya", "sd15"),
            "peft": write(str(folder), "style", make_lora(targets, seed=2), "peft", "sd15")}


def _png(path) -> np.ndarray:
    with PIL.Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def python_api(backend: str, loras, seed: int) -> np.ndarray:
    """The guide's calls: the image the CLI must give."""
    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline("sd15"), backend=backend)
    pipe.scheduler = fewstep.TCDScheduler.from_config(pipe.scheduler.config)
    for path, name, _ in loras:
        pipe.load_lora_weights(path, adapter_name=name)
    if loras:
        pipe.set_adapters([name for _, name, _ in loras], adapter_weights=[weight for _, _, weight in loras])
        pipe.fuse_lora()
    return np.asarray(pipe(PROMPT, generator=fewstep.Generator(seed), **CALL).images[0])


# --------------------------------------------------------------------------- parsing (no model)
def test_lora_flags_parse_names_weights_and_paths_with_colons(tmp_path):
    assert parse_lora("h1t/TCD-SDXL-LoRA") == LoraSpec("TCD-SDXL-LoRA", "h1t/TCD-SDXL-LoRA", 1.0)
    assert parse_lora("h1t/TCD-SDXL-LoRA:0.5").weight == 0.5
    assert parse_lora("tcd=h1t/TCD-SDXL-LoRA:-1e-1") == LoraSpec("tcd", "h1t/TCD-SDXL-LoRA", -0.1)
    # a ':' whose suffix is not a number is part of the path; an existing path is taken whole
    assert parse_lora("dir:v2/style") == LoraSpec("style", "dir:v2/style", 1.0)
    odd = tmp_path / "a=b:1.5.safetensors"
    odd.write_bytes(b"")
    spec = parse_lora(str(odd))
    assert spec.source == str(odd) and spec.weight == 1.0 and spec.name == "a=b:1.5"
    assert parse_lora(f"{odd}:0.25") == LoraSpec("a=b:1.5", str(odd), 0.25)
    specs = specs_from_flags([("lora", "repo/a"), ("weight_name", "x.safetensors"), ("lora", "b=repo/a:0.8"),
                              ("weight_name", "y.safetensors")])
    assert [(s.name, s.weight_name, s.weight) for s in specs] == [("a", "x.safetensors", 1.0),
                                                                   ("b", "y.safetensors", 0.8)]


@pytest.mark.parametrize("items, message", [
    ([("weight_name", "x.safetensors")], "comes before any --lora"),
    ([("lora", "repo/a"), ("weight_name", "x"), ("weight_name", "y")], "two --lora-weight-name"),
    ([("lora", "repo/a"), ("lora", "other/a:0.5")], "share the adapter name 'a'"),
    ([("lora", ":0.5")], "names no file"),
])
def test_bad_lora_flags_say_what_to_do(items, message):
    with pytest.raises(ValueError, match=message):
        specs_from_flags(items)


def test_bad_lora_flags_exit_2_before_any_model_loads(tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["generate", "x", "--lora-weight-name", "a.safetensors", "--lora", "r/a", "-o", str(out)]) == 2
    assert "comes before any --lora" in capsys.readouterr().err and not out.exists()


# --------------------------------------------------------------------------- differential, torch
@pytest.mark.torch
def test_one_and_two_loras_give_the_python_apis_image_on_torch(tmp_path, lora_files):
    kohya, peft = lora_files["kohya"], lora_files["peft"]
    one = tmp_path / "one.png"
    assert main(["generate", PROMPT, *flags(), "--seed", "3", "--lora", kohya, "-o", str(one)]) == 0
    np.testing.assert_array_equal(_png(one), python_api("torch", [(kohya, "tcd", 1.0)], 3))
    assert np.abs(_png(one).astype(int) - python_api("torch", [], 3)).max() > 2  # the LoRA changes the image
    two = tmp_path / "two.png"
    assert main(["generate", PROMPT, *flags(), "--seed", "3", "--lora", f"{kohya}:1.0", "--lora", f"mystyle={peft}:0.8",
                 "-o", str(two)]) == 0
    np.testing.assert_array_equal(_png(two), python_api("torch", [(kohya, "tcd", 1.0), (peft, "mystyle", 0.8)], 3))
    assert np.abs(_png(one).astype(int) - _png(two)).max() > 2  # the second LoRA changes the image


@pytest.mark.torch
def test_lora_weight_name_picks_a_file_of_a_folder(tmp_path, lora_files, capsys):
    import os

    folder = os.path.dirname(lora_files["kohya"])  # holds tcd.safetensors and style.safetensors
    out = tmp_path / "w.png"
    assert main(["generate", PROMPT, *flags(), "--seed", "5", "--lora", f"{folder}:0.7", "--lora-weight-name",
                 "style.safetensors", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    record = json.loads(printed.split("settings ", 1)[1].splitlines()[0])
    assert record["loras"] == [{"name": os.path.basename(folder), "source": folder, "weight": 0.7,
                                "weight_name": "style.safetensors"}]
    np.testing.assert_array_equal(_png(out), python_api("torch", [(lora_files["peft"], os.path.basename(folder), 0.7)],
                                                        5))


@pytest.mark.torch
def test_a_lora_that_does_not_fit_fails_before_the_first_step(tmp_path, capsys):
    from safetensors.numpy import save_file

    lora = tmp_path / "wrong.safetensors"
    save_file({"unet.down_blocks.9.attentions.0.proj_in.lora_A.weight": np.zeros((4, 32), np.float32),
               "unet.down_blocks.9.attentions.0.proj_in.lora_B.weight": np.zeros((32, 4), np.float32)}, str(lora))
    out = tmp_path / "never.png"
    argv = ["generate", PROMPT, *flags(), "--lora", str(lora), "-o", str(out), "--save-settings", str(tmp_path / "s.json")]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "down_blocks.9" in captured.err and "--lora" in captured.err
    assert "ms/step" not in captured.out  # no step ran
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wrong.safetensors"]  # nothing written


@pytest.mark.torch
def test_parity_applies_the_loras_to_both_sides(tmp_path, lora_files, capsys):
    # fewstep's fused LoRA against diffusers + PEFT loading the same file through the same calls
    assert main(["parity", PROMPT, *flags(), "--seed", "1", "--against", "diffusers", "--lora", f"{lora_files['peft']}:0.8",
                 "--no-localise", "--tolerance", "1e-5", "-o", str(tmp_path / "side.png")]) == 0
    assert "first stage out of bounds: none" in capsys.readouterr().out


@pytest.mark.torch
def test_batch_lora_flags_apply_to_every_item_beside_their_own(tmp_path, lora_files):
    import torch

    kohya, peft = lora_files["kohya"], lora_files["peft"]
    threads = str(torch.get_num_threads())  # the runner pins threads: keep this process's setting
    with_file = tmp_path / "with.jsonl"
    with_file.write_text("\n".join(json.dumps(item) for item in [
        {"id": "a", "prompt": PROMPT, "seed": 1, "num_inference_steps": 2,
         "loras": [{"path": kohya, "weight": 0.5}, {"path": peft, "weight": 1.0}]},
        {"id": "b", "prompt": PROMPT, "seed": 2, "num_inference_steps": 2, "loras": [{"path": kohya, "weight": 1.0}]}]))
    from_flags = tmp_path / "flags.jsonl"  # the same items: the kohya LoRA from --lora, item b overriding its weight
    from_flags.write_text("\n".join(json.dumps(item) for item in [
        {"id": "a", "prompt": PROMPT, "seed": 1, "num_inference_steps": 2, "loras": [{"path": peft, "weight": 1.0}]},
        {"id": "b", "prompt": PROMPT, "seed": 2, "num_inference_steps": 2, "loras": [f"{kohya}:1.0"]}]))
    common = ["--batch-size", "1", "--threads", threads]
    assert main(["batch", str(with_file), "--out", str(tmp_path / "one"), *common]) == 0
    assert main(["batch", str(from_flags), "--out", str(tmp_path / "two"), "--lora", f"{kohya}:0.5", *common]) == 0
    for item in ("a", "b"):
        np.testing.assert_array_equal(_png(tmp_path / "one" / "images" / f"{item}.png"),
                                      _png(tmp_path / "two" / "images" / f"{item}.png"))


# --------------------------------------------------------------------------- differential, MindSpore
def ms_base():
    return ["generate", PROMPT, *flags(), "--seed", "3", "--backend", "mindspore"]


@pytest.mark.mindspore
def test_two_loras_give_the_python_apis_image_on_mindspore(tmp_path, lora_files):
    kohya, peft = lora_files["kohya"], lora_files["peft"]
    assert main(ms_base() + ["--lora", kohya, "--lora", f"{peft}:0.8", "-o", str(tmp_path / "two.png")]) == 0
    np.testing.assert_array_equal(_png(tmp_path / "two.png"),
                                  python_api("mindspore", [(kohya, "tcd", 1.0), (peft, "style", 0.8)], 3))


@pytest.mark.mindspore
def test_one_lora_gives_the_python_apis_image_on_mindspore(tmp_path, lora_files):
    kohya = lora_files["kohya"]
    assert main(ms_base() + ["--lora", kohya, "-o", str(tmp_path / "one.png")]) == 0
    np.testing.assert_array_equal(_png(tmp_path / "one.png"), python_api("mindspore", [(kohya, "tcd", 1.0)], 3))
    assert np.abs(_png(tmp_path / "one.png").astype(int) - python_api("mindspore", [], 3)).max() > 2
