"""The settings record: printed by every run, --save-settings then --settings makes the same images bitwise
(from another folder), flags beside --settings override the file; --num-images (seed, seed+1, ..., each the
image its seed alone gives), seeded output names, --grid; bad settings files get clear errors."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest

from fewstep.cli import build_parser, main
from fewstep.cli import generate as generate_cmd
from fewstep.cli import settings
from fewstep.testing import tiny_controlnet, tiny_pipeline


def _png(path) -> np.ndarray:
    with PIL.Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _printed_record(out: str) -> dict:
    return json.loads(out.split("settings ", 1)[1].splitlines()[0])


@pytest.mark.torch
def test_save_settings_then_settings_makes_the_same_images(tmp_path, monkeypatch, capsys):
    from tests.lora_cases import make_lora, targets_from_folder, write
    from tests.pipeline_cases import picture

    lora = write(str(tmp_path), "style", make_lora(targets_from_folder(tiny_pipeline("sd15")), seed=4), "kohya", "sd15")
    picture(3).save(tmp_path / "control.png")
    first = tmp_path / "first"
    first.mkdir()
    monkeypatch.chdir(first)  # relative paths: the record must make them absolute
    assert main(["generate", "a red fox", "--steps", "2", "--lora", f"{lora}:0.7",
                 "--controlnet", tiny_controlnet("sd15"), "--control-image", "../control.png", "--control-scale", "0.5",
                 "--num-images", "2", "-o", "a.png", "--grid", "grid.png", "--save-settings", "run.json"]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((first / "run.json").read_text())
    assert saved == _printed_record(printed)
    seed = saved["seed"]
    assert saved["fewstep_settings"] == 1 and saved["seeds"] == [seed, seed + 1] and saved["num_images"] == 2
    assert saved["loras"] == [{"name": "style", "source": lora, "weight": 0.7, "weight_name": None}]
    assert saved["controlnets"] == [{"source": tiny_controlnet("sd15"), "image": str(tmp_path / "control.png"),
                                     "scale": 0.5}]
    assert {k: saved[k] for k in ("backend", "dtype", "device", "scheduler", "steps", "eta", "guidance")} == dict(
        backend="torch", dtype="float32", device=None, scheduler="tcd", steps=2, eta=0.3, guidance=0.0)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted([f"a-{seed}.png", f"a-{seed + 1}.png", "grid.png", "run.json"])
    assert f"seed {seed} " in printed and f"seed {seed + 1} " in printed
    assert _png(first / "grid.png").shape == (128, 128, 3)  # control + 2 images on a 2 x 2 sheet

    second = tmp_path / "second"
    second.mkdir()
    monkeypatch.chdir(second)
    assert main(["generate", "--settings", str(first / "run.json"), "-o", "b.png"]) == 0
    for s in (seed, seed + 1):
        np.testing.assert_array_equal(_png(second / f"b-{s}.png"), _png(first / f"a-{s}.png"))
    # a flag beside --settings overrides the file: image i equals the run of its seed alone
    assert main(["generate", "--settings", str(first / "run.json"), "--seed", str(seed + 1), "--num-images", "1",
                 "-o", "c.png"]) == 0
    np.testing.assert_array_equal(_png(second / "c.png"), _png(first / f"a-{seed + 1}.png"))
    assert _printed_record(capsys.readouterr().out.split("wrote", 1)[1])["seeds"] == [seed + 1]


def _resolve(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    return settings.resolve(args, generate_cmd.parse_given(build_parser(), argv))


def test_flags_override_the_settings_file_group_by_group(tmp_path):
    path = tmp_path / "run.json"
    record = dict(fewstep_settings=1, prompt="a fox", steps=6, seed=3, num_images=2, eta=0.5,
                  loras=[{"name": "a", "source": "x/a", "weight": 0.5, "weight_name": None}],
                  controlnets=[{"source": "cn", "image": "c.png", "scale": None}], seeds=[3, 4])
    path.write_text(json.dumps(record))
    s = _resolve(["generate", "--settings", str(path)])
    assert (s.prompt, s.steps, s.seed, s.num_images, s.eta, s.guidance) == ("a fox", 6, 3, 2, 0.5, 0.0)
    assert s.loras == record["loras"] and s.controlnets == record["controlnets"]
    s = _resolve(["generate", "a cat", "--settings", str(path), "--steps", "3", "--lora", "y/b:0.25"])
    assert (s.prompt, s.steps, s.seed, s.eta) == ("a cat", 3, 3, 0.5)
    assert s.loras == [{"name": "b", "source": "y/b", "weight": 0.25, "weight_name": None}]  # the group replaced
    assert s.controlnets == record["controlnets"]
    assert settings.seeds(s) == [3, 4]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"prompt": "x"}), "\"fewstep_settings\": 1"),
    (json.dumps({"fewstep_settings": 2, "prompt": "x"}), "format version 2; this fewstep reads version 1"),
    (json.dumps({"fewstep_settings": 1, "prompt": "x", "stpes": 4}), "unknown key(s) ['stpes']"),
    (json.dumps({"fewstep_settings": 1, "prompt": "x", "steps": "4"}), "\"steps\" must be an int, got '4'"),
    (json.dumps({"fewstep_settings": 1, "prompt": "x", "backend": "jax"}), "must be one of ['torch', 'mindspore']"),
    (json.dumps({"fewstep_settings": 1, "prompt": "x", "loras": [{"source": "a", "weight": 1}]}),
     "\"loras\"[0] must be an object with exactly the keys"),
    (json.dumps({"fewstep_settings": 1, "prompt": "x", "t2i_adapter": {"source": "a", "image": 3, "scale": None}}),
     "\"t2i_adapter\".image must be a str"),
])
def test_bad_settings_files_are_refused_with_what_to_do(tmp_path, capsys, content, message):
    path = tmp_path / "run.json"
    path.write_text(content)
    out = tmp_path / "x.png"
    assert main(["generate", "--settings", str(path), "-o", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_prompt_or_settings_file(tmp_path, capsys):
    assert main(["generate", "-o", str(tmp_path / "x.png")]) == 2
    assert "No prompt" in capsys.readouterr().err
    assert main(["generate", "--settings", str(tmp_path / "none.json")]) == 2
    assert "--save-settings" in capsys.readouterr().err
    assert main(["generate", "x", "--num-images", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err


def _gif(path, seeds=(1, 2, 3)):
    from tests.pipeline_cases import picture

    first, *rest = [picture(seed) for seed in seeds]
    first.save(path, save_all=True, append_images=rest, duration=125, loop=0)


def test_video_is_recorded_absolute_and_a_flag_overrides_the_files(tmp_path, monkeypatch):
    _gif(tmp_path / "in.gif")
    _gif(tmp_path / "other.gif", seeds=(4, 5))
    monkeypatch.chdir(tmp_path)
    s = _resolve(["generate", "a fox", "--video", "in.gif", "--seed", "1"])
    assert s.video == str(tmp_path / "in.gif")
    path = tmp_path / "run.json"
    path.write_text(settings.dumps(s))
    assert json.loads(path.read_text())["video"] == str(tmp_path / "in.gif")
    assert _resolve(["generate", "--settings", str(path)]).video == str(tmp_path / "in.gif")
    assert _resolve(["generate", "--settings", str(path), "--video", "other.gif"]).video == str(tmp_path / "other.gif")
    assert _resolve(["generate", "a fox"]).video is None


@pytest.mark.torch
def test_save_settings_then_settings_replays_a_video_to_video_run(tmp_path, monkeypatch, capsys):
    _gif(tmp_path / "in.gif")
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)  # a relative --video: the record makes it absolute
    assert main(["generate", "a fox", "--video", "../in.gif", "--steps", "2", "--seed", "5", "-o", "a.gif",
                 "--save-settings", "run.json"]) == 0
    saved = json.loads((first / "run.json").read_text())
    assert saved == _printed_record(capsys.readouterr().out)
    assert saved["video"] == str(tmp_path / "in.gif") and saved["frames"] is None and saved["strength"] is None
    monkeypatch.chdir(second)
    assert main(["generate", "--settings", str(first / "run.json"), "-o", "b.gif"]) == 0
    assert (second / "b.gif").read_bytes() == (first / "a.gif").read_bytes()
    assert sorted(p.name for p in second.iterdir()) == ["b.gif"]
