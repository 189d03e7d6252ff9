"""The tiny diffusers-format pipelines of fewstep.testing: built offline, deterministic, cached, and
loadable by diffusers as the right pipeline class."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fewstep.testing import KINDS, tiny_pipeline
from fewstep.testing.tiny_models import MARKER, stack_tag

pytestmark = pytest.mark.torch

PIPELINE_CLASS = {
    "sd15": "StableDiffusionPipeline",
    "sd21": "StableDiffusionPipeline",
    "sd21-v": "StableDiffusionPipeline",
    "sd15-inpaint": "StableDiffusionInpaintPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sdxl-inpaint": "StableDiffusionXLInpaintPipeline",
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {kind: tiny_pipeline(kind, path=root / kind) for kind in KINDS}


def _tensors(folder):
    from safetensors.numpy import load_file

    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            if name.endswith(".safetensors"):
                rel = os.path.relpath(os.path.join(dirpath, name), folder)
                for key, value in load_file(os.path.join(dirpath, name)).items():
                    out[f"{rel}:{key}"] = value
    return out


def _size(folder):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


@pytest.mark.parametrize("kind", KINDS)
def test_layout(folders, kind):
    folder = folders[kind]
    index = json.load(open(os.path.join(folder, "model_index.json")))
    assert index["_class_name"] == PIPELINE_CLASS[kind]
    xl = kind.startswith("sdxl")
    expected = {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} | (
        {"text_encoder_2", "tokenizer_2"} if xl else set())
    assert {k for k, v in index.items() if isinstance(v, list) and v[0] is not None} == expected
    for name in expected:
        assert os.path.isdir(os.path.join(folder, name))
    if not xl:  # optional components are recorded as absent, so neither library asks for them
        assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    assert index["feature_extractor"] == [None, None]
    assert _size(folder) < 5 * 2**20
    unet = json.load(open(os.path.join(folder, "unet", "config.json")))
    assert unet["in_channels"] == (9 if kind.endswith("inpaint") else 4)
    scheduler = json.load(open(os.path.join(folder, "scheduler", "scheduler_config.json")))
    assert scheduler["steps_offset"] == 1 and scheduler["set_alpha_to_one"] is False
    assert scheduler.get("prediction_type", "epsilon") == ("v_prediction" if kind == "sd21-v" else "epsilon")
    if kind == "sdxl-inpaint":
        assert index["requires_aesthetics_score"] is False


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_deterministic_from_seed(folders, tmp_path, kind):
    again = _tensors(tiny_pipeline(kind, path=tmp_path / "again", seed=0))
    first = _tensors(folders[kind])
    assert first.keys() == again.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], again[key], err_msg=key)
    other = _tensors(tiny_pipeline(kind, path=tmp_path / "other", seed=1))
    assert any(not np.array_equal(first[k], other[k]) for k in first)


def test_cache_reuses_and_rebuilds(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSTEP_CACHE", str(tmp_path / "cache"))
    folder = tiny_pipeline("sd15", seed=3)
    assert folder == str(tmp_path / "cache" / "tiny" / stack_tag() / "sd15-3")
    weights = os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors")
    stamp = os.stat(weights).st_mtime_ns
    assert tiny_pipeline("sd15", seed=3) == folder and os.stat(weights).st_mtime_ns == stamp  # cached
    marker = os.path.join(folder, MARKER)
    json.dump({"kind": "sd15", "seed": 3, "format": -1}, open(marker, "w"))  # an older format: rebuilt
    assert tiny_pipeline("sd15", seed=3) == folder
    assert json.load(open(marker))["format"] != -1
    assert not [p for p in os.listdir(tmp_path / "cache" / "tiny" / stack_tag()) if p.startswith(".")]  # no staging left


def test_each_library_stack_has_its_own_cache(tmp_path, monkeypatch):
    """A folder written by one diffusers / transformers / torch is never reused by another: the pinned stack and
    the newest-releases stack (and the installed one) each get their own cache folder."""
    from importlib.metadata import version

    import fewstep.testing.tiny_models as tiny_models

    pinned = stack_tag({"torch": "2.13.0", "diffusers": "0.35.2", "transformers": "4.57.1"})
    newest = stack_tag({"torch": "2.13.0", "diffusers": "0.42.1", "transformers": "5.25.0"})
    assert pinned != newest
    assert f"diffusers-{version('diffusers')}" in stack_tag() and f"transformers-{version('transformers')}" in stack_tag()
    monkeypatch.setenv("FEWSTEP_CACHE", str(tmp_path / "cache"))
    folders = {}
    for tag in (pinned, newest):
        monkeypatch.setattr(tiny_models, "stack_tag", lambda tag=tag: tag)
        folders[tag] = tiny_pipeline("sd15", seed=3)
    assert folders[pinned] == str(tmp_path / "cache" / "tiny" / pinned / "sd15-3")
    assert folders[newest] == str(tmp_path / "cache" / "tiny" / newest / "sd15-3")
    assert all(os.path.isfile(os.path.join(f, "model_index.json")) for f in folders.values())


def test_refuses_foreign_folder_and_unknown_kind(tmp_path):
    (tmp_path / "mine.txt").write_text("not a model")
    with pytest.raises(FileExistsError):
        tiny_pipeline("sd15", path=tmp_path)
    with pytest.raises(ValueError, match="sd15"):
        tiny_pipeline("sd3")


def test_tokenizer_takes_any_prompt(folders):
    from transformers import CLIPTokenizer

    for sub, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        tok = CLIPTokenizer.from_pretrained(folders["sdxl"], subfolder=sub)
        prompt = "A café in 東京, at night ☕ -- 50% off!"
        ids = tok(prompt).input_ids  # byte-level: every character is known, none maps to unk
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids[1:-1]
        padded = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
        assert len(padded) == 77 == tok.model_max_length
        assert tok.pad_token == pad and padded[-1] == tok.pad_token_id
        long = tok("word " * 200, truncation=True, max_length=77).input_ids
        assert len(long) == 77 and long[-1] == tok.eos_token_id


@pytest.mark.parametrize("kind", KINDS)
def test_diffusers_loads_and_generates(folders, kind):
    import diffusers
    import torch
    from PIL import Image

    pipe = diffusers.DiffusionPipeline.from_pretrained(folders[kind])
    assert type(pipe).__name__ == PIPELINE_CLASS[kind]
    assert pipe.vae_scale_factor == 2
    pipe.scheduler = diffusers.TCDScheduler.from_config(pipe.scheduler.config)
    assert pipe.scheduler.config.set_alpha_to_one is False and pipe.scheduler.config.steps_offset == 1
    pipe.set_progress_bar_config(disable=True)
    args = dict(prompt="a squirrel eating a burger", num_inference_steps=2, output_type="np",
                generator=torch.Generator().manual_seed(0))
    if kind.endswith("inpaint"):
        rng = np.random.RandomState(0)
        args["image"] = Image.fromarray(rng.randint(0, 256, (64, 64, 3), dtype=np.uint8))
        mask = np.zeros((64, 64), np.uint8)
        mask[16:48, 16:48] = 255
        args["mask_image"] = Image.fromarray(mask)
    images = pipe(**args).images
    assert images.shape == (1, 64, 64, 3)  # default size: unet sample_size 32 x vae_scale_factor 2
    assert np.isfinite(images).all()


def test_importing_testing_imports_no_framework():
    code = ("import sys, fewstep.testing; "
            "bad = [m for m in ('torch', 'diffusers', 'transformers', 'mindspore') if m in sys.modules]; "
            "sys.exit(', '.join(bad) or None)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env)
    assert result.returncode == 0, result.stderr or result.stdout
