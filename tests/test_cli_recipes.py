"""Recipes on the command line: `fewstep generate --recipe NAME --steps N` makes the Python API's image bit for
bit; a known --lora / --model name picks its recipe (and says so); refusals exit 2 in one line before anything
loads or is written; `fewstep recipes` (and --json); `fewstep info` names a known file's recipe; batch items take
`recipe`."""

from __future__ import annotations

import json
import os

import numpy as np
import PIL.Image
import pytest

from fewstep import recipes
from fewstep.cli import main
from fewstep.testing import tiny_pipeline


def _png(path) -> np.ndarray:
    with PIL.Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _api_image(spec, steps, seed, lora=None):
    """The image the Python API makes: the pipeline, the LoRA fused as the CLI fuses it, `recipes.apply`."""
    import fewstep

    pipe = fewstep.AutoPipelineForText2Image.from_pretrained(tiny_pipeline("sd15"), backend="torch")
    pipe.set_progress_bar_config(disable=True)
    if lora:
        pipe.load_lora_weights(os.path.dirname(lora), weight_name=os.path.basename(lora), adapter_name="a")
        pipe.set_adapters(["a"], adapter_weights=[1.0])
        pipe.fuse_lora()
    args = recipes.apply(pipe, spec, steps=steps)
    return np.asarray(pipe("a red fox", generator=fewstep.Generator(seed), height=64, width=64, **args).images[0])


def _printed_record(out: str) -> dict:
    return json.loads(out.split("settings ", 1)[1].splitlines()[0])


@pytest.mark.torch
def test_generate_with_a_recipe_makes_the_api_image_bit_for_bit(tmp_path, capsys):
    out = tmp_path / "dmd2.png"
    assert main(["generate", "a red fox", "--model", tiny_pipeline("sd15"), "--recipe", "dmd2", "--steps", "1",
                 "--seed", "7", "--width", "64", "--height", "64", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    record = _printed_record(printed)
    assert (record["recipe"], record["steps"], record["guidance"]) == ("dmd2", 1, 0.0)
    assert "seed 7  backend torch  1 steps  recipe dmd2" in printed
    assert np.array_equal(_png(out), _api_image("dmd2", 1, 7))


@pytest.mark.torch
def test_a_known_lora_file_name_picks_its_recipe_and_says_so(tmp_path, capsys):
    from tests.lora_cases import make_lora, targets_from_folder, write

    lora = write(str(tmp_path), "Hyper-SD15-1step-lora", make_lora(targets_from_folder(tiny_pipeline("sd15")), seed=2),
                 "kohya", "sd15")
    out = tmp_path / "unified.png"
    assert main(["generate", "a red fox", "--model", tiny_pipeline("sd15"), "--lora", lora, "--steps", "2",
                 "--seed", "3", "--width", "64", "--height", "64", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{lora} is a known LoRA (Hyper-SD unified LoRA): using recipe hyper-sd-unified: TCDScheduler, 2 steps, " \
           f"guidance 0, eta 1" in printed
    record = _printed_record(printed)
    assert (record["recipe"], record["steps"], record["eta"], record["guidance"]) == ("hyper-sd-unified", 2, 1.0, 0.0)
    assert np.array_equal(_png(out), _api_image("hyper-sd-unified", 2, 3, lora=lora))


@pytest.mark.parametrize("extra,message", [
    (["--recipe", "dmd2", "--steps", "3"], "dmd2 supports 1 or 4 steps; got 3."),
    (["--recipe", "sdxl-lightning"], "Unknown recipe 'sdxl-lightning'; use one of lightning, hyper-sd, "
                                     "hyper-sd-unified, dmd2, pcm, turbo, flash, nitrofusion, lcm, tcd"),
    (["--recipe", "tcd", "--scheduler", "lcm"], "--recipe sets the scheduler: give --recipe or --scheduler, not both."),
    (["--lora", "ByteDance/SDXL-Lightning", "--lora-weight-name", "sdxl_lightning_2step_lora.safetensors", "--steps",
      "3"], "lightning supports 1, 2, 4 or 8 steps; got 3."),
    (["--lora", "tianweiy/DMD2", "--lora-weight-name", "dmd2_sdxl_4step_lora_fp16.safetensors", "--steps", "2"],
     "dmd2 supports 1 or 4 steps; got 2."),
])
def test_a_refused_recipe_exits_2_in_one_line_and_writes_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "x.png"
    assert main(["generate", "a red fox", "--model", str(tmp_path / "not-loaded"), "-o", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fewstep: error: {message}")
    assert os.listdir(tmp_path) == []  # refused before the model was looked up: nothing written


def test_recipes_lists_the_table_and_its_json_parses(capsys):
    assert main(["recipes", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table == json.loads(json.dumps(recipes.describe())) and [r["name"] for r in table] == list(recipes.NAMES)
    assert main(["recipes"]) == 0
    text = capsys.readouterr().out
    for name in recipes.NAMES:
        assert f"\n{name}: " in "\n" + text
    assert "--recipe dmd2" in text and "4-step timesteps [999, 749, 499, 249]" in text
    assert "ByteDance/SDXL-Lightning sdxl_lightning_4step_lora.safetensors" in text


@pytest.mark.torch
def test_info_names_the_recipe_of_a_known_file(tmp_path, capsys):
    from tests.lora_cases import make_lora, targets_from_folder, write

    layers = make_lora(targets_from_folder(tiny_pipeline("sd15")), seed=1)
    known = write(str(tmp_path), "sdxl_lightning_4step_lora", layers, "kohya", "sd15")
    other = write(str(tmp_path), "my_style", layers, "kohya", "sd15")
    assert main(["info", known]) == 0
    text = capsys.readouterr().out
    assert "  recipe:     lightning (lightning: EulerDiscreteScheduler(timestep_spacing='trailing'), 4 steps, guidance " \
           "0); sample with --recipe lightning --steps 4; card https://huggingface.co/ByteDance/SDXL-Lightning" in text
    assert main(["info", known, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recipe"] == {
        "name": "lightning", "steps": 4, "card": "https://huggingface.co/ByteDance/SDXL-Lightning",
        "settings": "lightning: EulerDiscreteScheduler(timestep_spacing='trailing'), 4 steps, guidance 0"}
    assert main(["info", other, "--json"]) == 0
    assert "recipe" not in json.loads(capsys.readouterr().out)


def test_batch_items_take_a_recipe_and_refuse_a_count_it_does_not_support(tmp_path):
    from fewstep.batch import JobError, load_job

    job = tmp_path / "job.jsonl"
    job.write_text('{"id": "a", "prompt": "x", "recipe": "dmd2", "num_inference_steps": 1}\n'
                   '{"id": "b", "prompt": "x", "recipe": "hyper-sd-unified", "eta": 0.5}\n'
                   '{"id": "c", "prompt": "x"}\n')
    a, b, c = load_job(str(job)).items
    assert {k: a.setting(k) for k in ("recipe", "num_inference_steps", "guidance_scale", "eta")} == dict(
        recipe="dmd2", num_inference_steps=1, guidance_scale=0.0, eta=0.0)
    assert (b.setting("num_inference_steps"), b.setting("eta")) == (1, 0.5)  # the recipe's steps, the item's eta
    assert "recipe" not in c.record() and c.setting("recipe") is None  # jobs without recipes keep their digest
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "x", "recipe": "dmd2", '
                   '"num_inference_steps": 3}\n')
    with pytest.raises(JobError, match=r"bad.jsonl, line 2: dmd2 supports 1 or 4 steps; got 3\."):
        load_job(str(bad))
    bad.write_text('{"id": "a", "prompt": "x", "recipe": "dmd3"}\n')
    with pytest.raises(JobError, match=r"line 1: `recipe`: Unknown recipe 'dmd3'; use one of lightning"):
        load_job(str(bad))


@pytest.mark.torch
def test_a_batch_item_with_a_recipe_is_the_api_image(tmp_path):
    import fewstep.batch

    job = tmp_path / "job.jsonl"
    job.write_text('{"id": "a", "prompt": "a red fox", "seed": 7, "recipe": "dmd2", "num_inference_steps": 1, '
                   '"width": 64, "height": 64}\n')
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)  # not the run's 1: the run must give back what it found
    try:
        summary = fewstep.batch.run(str(job), str(tmp_path / "out"), model=tiny_pipeline("sd15"), batch_size=1,
                                    progress=False)
        assert torch.get_num_threads() == threads + 1  # the caller's thread count, not the run's pinned one
    finally:
        torch.set_num_threads(threads)
    assert summary["manifest"]
    assert np.array_equal(_png(tmp_path / "out" / "images" / "a.png"), _api_image("dmd2", 1, 7))
