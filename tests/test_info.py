"""`fewstep.info.describe` / `format_info` (`fewstep info`) on every tiny folder, LoRA file and checkpoint the
tests make, against what each was built or written with; LoRA module counts against fewstep's own loader
(`normalise` on the model's module list, and on torch the loaded pipeline itself)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from fewstep.core.lora import normalise, read_lora
from fewstep.info import describe, format_info
from fewstep.testing import (IP_ADAPTER_FILES, KINDS, MOTION_LORA_WEIGHT_NAME, tiny_controlnet, tiny_ip_adapter,
                             tiny_motion_adapter, tiny_motion_lora, tiny_pipeline, tiny_t2i_adapter)
from fewstep.testing.tiny_models import TEXT_HIDDEN, XL_TEXT2_HIDDEN
from fewstep.testing.tiny_motion import MOTION_LORA_PROJECTIONS, MOTION_LORA_RANK
from tests.lora_cases import FORMATS, make_lora, old_diffusers_file, targets_from_folder, write

LORA_KINDS = ("sd15", "sdxl")
_loras = {}


def check(description: dict) -> str:
    """Every description must survive JSON and format as text; returns the text."""
    assert json.loads(json.dumps(description)) == description
    text = format_info(description)
    assert text.splitlines()[0].endswith(description["path"])
    return text


def index_of(folder):
    with open(os.path.join(folder, "model_index.json")) as f:
        return json.load(f)


# ----------------------------------------------------------------------------------- folders
@pytest.mark.parametrize("kind", KINDS)
def test_pipeline_folder(kind):
    folder = tiny_pipeline(kind)
    d = describe(folder)
    index = index_of(folder)
    assert d["kind"] == "pipeline" and d["class"] == index["_class_name"] == d["fewstep_class"]
    assert d["family"] == kind and d["base"] == kind.split("-")[0]
    assert sorted(d["components"]) == sorted(k for k, v in index.items() if isinstance(v, list) and v[1])
    for name in ("unet", "vae", "text_encoder"):
        c = d["components"][name]
        assert (c["library"], c["class"]) == tuple(index[name]) and c["dtype"] == "float32" and c["parameters"] > 0
    assert d["variants"] == [] and "dtype" not in d["components"]["tokenizer"]
    scheduler = d["scheduler"]
    assert scheduler["class"] == index["scheduler"][1] and scheduler["fewstep_scheduler"] == "TCDScheduler"
    assert scheduler["prediction_type"] == ("v_prediction" if kind == "sd21-v" else "epsilon")
    assert f"family:     {kind}:" in check(d)


def test_variants_and_their_dtypes(tmp_path):
    import safetensors.numpy

    folder = str(tmp_path / "sd15")
    shutil.copytree(tiny_pipeline("sd15"), folder)
    tensors = safetensors.numpy.load_file(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"))
    safetensors.numpy.save_file({k: v.astype(np.float16) for k, v in tensors.items()},
                                os.path.join(folder, "unet", "diffusion_pytorch_model.fp16.safetensors"))
    d = describe(folder)
    assert d["variants"] == ["fp16"]
    unet = d["components"]["unet"]
    assert unet["dtype"] == "float32" and unet["variants"] == {"fp16": "float16"}
    assert unet["files"] == ["diffusion_pytorch_model.safetensors"]
    assert "fp16 (float16)" in check(d)


@pytest.mark.parametrize("build, cls, base", [
    (lambda: tiny_controlnet("sd15"), "ControlNetModel", "sd15"),
    (lambda: tiny_controlnet("sdxl"), "ControlNetModel", "sdxl"),
    (lambda: tiny_t2i_adapter("sd15"), "T2IAdapter", "sd15"),
    (lambda: tiny_t2i_adapter("sdxl"), "T2IAdapter", "sdxl"),
    (lambda: tiny_motion_adapter(), "MotionAdapter", "sd15"),
    (lambda: os.path.join(tiny_pipeline("sd21"), "unet"), "UNet2DConditionModel", "sd21"),
    (lambda: os.path.join(tiny_pipeline("sdxl"), "text_encoder_2"), "CLIPTextModelWithProjection", None),
], ids=["controlnet-sd15", "controlnet-sdxl", "t2i-sd15", "t2i-sdxl", "motion-adapter", "unet-sd21", "te2"])
def test_model_folder(build, cls, base):
    d = describe(build())
    assert d["kind"] == "model" and d["class"] == cls and d["base"] == base
    assert d["dtype"] == "float32" and d["parameters"] > 0 and d["variants"] == {}
    check(d)


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_ip_adapter_repository(kind):
    folder = tiny_ip_adapter(kind)
    d = describe(folder)
    assert d["kind"] == "repository"
    items = {item["name"]: item for item in d["items"]}
    cross = TEXT_HIDDEN + (XL_TEXT2_HIDDEN if kind == "sdxl" else 0)
    for variant, (sub, name) in IP_ADAPTER_FILES[kind].items():
        item = items[f"{sub}/{name}"]
        assert item["kind"] == "ip_adapter" and item["variant"] == variant
        assert item["cross_attention_dim"] == cross and item["image_tokens"] == (16 if variant == "plus" else 4)
        assert item["attention_layers"] > 0
        assert describe(folder, weight_name=f"{sub}/{name}") == {k: v for k, v in item.items() if k != "name"}
    assert items[f"{IP_ADAPTER_FILES[kind]['plain'][0]}/image_encoder"]["class"] == "CLIPVisionModelWithProjection"
    check(d)


# ----------------------------------------------------------------------------------- LoRA files
def lora_case(kind, tmp_path_factory):
    """(folder, written layers, {format: path}) for a tiny kind, written once per session."""
    if kind not in _loras:
        folder = tiny_pipeline(kind)
        layers = make_lora(targets_from_folder(folder), seed=0)
        tmp = str(tmp_path_factory.mktemp(f"info-lora-{kind}"))
        _loras[kind] = folder, layers, {fmt: write(tmp, fmt, layers, fmt, kind) for fmt in FORMATS}
    return _loras[kind]


def loader_counts(path, folder):
    """How many modules per component fewstep's LoRA loader places (normalise on the model's modules)."""
    with open(os.path.join(folder, "unet", "config.json")) as f:
        config = json.load(f)
    source = read_lora(path)
    layers = normalise(source.tensors, targets_from_folder(folder), unet_config=config, metadata=source.metadata)
    return {c: len(p) for c, p in layers.items()}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", LORA_KINDS)
def test_lora_formats(kind, fmt, tmp_path_factory):
    folder, layers, files = lora_case(kind, tmp_path_factory)
    d = describe(files[fmt])
    assert d["kind"] == "lora" and d["format"] == fmt
    written = [(c, down, alpha) for c, paths in layers.items() for down, _, alpha in paths.values()]
    ranks, alphas = Counter(down.shape[0] for _, down, _ in written), Counter(a for _, _, a in written)
    assert d["ranks"] == sorted(ranks) and d["rank"] == ranks.most_common(1)[0][0]
    assert d["alphas"] == sorted(alphas) and d["alpha"] == alphas.most_common(1)[0][0]
    assert d["alpha_source"] == ("metadata" if fmt == "peft" else "per-module")
    counts = {c: len(p) for c, p in layers.items()}
    assert {c: v["modules"] for c, v in d["components"].items()} == counts == loader_counts(files[fmt], folder)
    assert d["modules"] == sum(counts.values())
    conv = sum(down.ndim == 4 for _, down, _ in written)
    assert d["conv"] and d["conv_modules"] == conv > 0
    for c, paths in layers.items():
        assert d["components"][c]["ranks"] == sorted({down.shape[0] for down, _, _ in paths.values()})
        assert d["components"][c]["alphas"] == sorted({alpha for _, _, alpha in paths.values()})
    assert d["fits"]["base"] == kind and d["dtype"] == "float16" and d["base_check"] is None
    assert not d["unrecognised_count"] and not d["unsupported"] and not d["unpaired_components"]
    text = check(d)
    assert f"[{fmt}]" in text and f"[{kind}]" in text


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", LORA_KINDS)
def test_lora_on_a_base_model(kind, fmt, tmp_path_factory):
    folder, layers, files = lora_case(kind, tmp_path_factory)
    check_ = describe(files[fmt], base=folder)["base_check"]
    assert check_["fits"] and check_["error"] is None and check_["base"] == folder and check_["base_family"] == kind
    assert check_["placed"] == loader_counts(files[fmt], folder)
    other = tiny_pipeline("sdxl" if kind == "sd15" else "sd15")
    wrong = describe(files[fmt], base=other)
    assert not wrong["base_check"]["fits"] and wrong["base_check"]["placed"] == {}
    # SD 1.5's files name modules SDXL's UNet does not have; SDXL's carry a text encoder SD 1.5 lacks
    assert ("match no module" if kind == "sd15" else "text_encoder_2") in wrong["base_check"]["error"]
    assert "does NOT fit" in format_info(wrong)


@pytest.mark.parametrize("kind", ["sd15", "sd21"])
def test_lora_base_from_structure(kind, tmp_path):
    """SD 1.x and 2.x files differ in the transformers' projections (1x1 conv vs Linear); a UNet-only file
    without alphas and a text-encoder-only one."""
    folder = tiny_pipeline(kind)
    layers = make_lora(targets_from_folder(folder), seed=1)
    d = describe(write(str(tmp_path), "both", layers, "peft", kind))
    assert d["fits"]["base"] == kind
    unet_only = {"unet": layers["unet"]}
    bare = {k[len("unet."):]: v for k, v in old_diffusers_file(unet_only, alphas=False).items()}
    import safetensors.numpy

    path = str(tmp_path / "bare.safetensors")
    safetensors.numpy.save_file(bare, path)
    d = describe(path)
    assert d["fits"]["base"] == kind and list(d["components"]) == ["unet"]
    assert d["alpha_source"] == "default" and d["alphas"] == d["ranks"] == [4, 8]
    assert describe(path, base=folder)["base_check"]["placed"] == {"unet": len(layers["unet"])}
    te_only = describe(write(str(tmp_path), "te", {"text_encoder": layers["text_encoder"]}, "kohya", kind))
    assert te_only["fits"]["base"] is None  # a text encoder alone is SD 1.x's, 2.x's or SDXL's first


def test_motion_lora():
    folder = tiny_motion_lora()
    d = describe(folder, weight_name=MOTION_LORA_WEIGHT_NAME)
    assert describe(folder) == d  # its only .safetensors file
    modules = 11 * 2 * len(MOTION_LORA_PROJECTIONS)  # motion modules x attentions x projections
    assert d["format"] == "old_diffusers" and d["modules"] == d["components"]["unet"]["modules"] == modules
    assert d["ranks"] == [MOTION_LORA_RANK] and d["alpha_source"] == "default" and d["alpha"] == MOTION_LORA_RANK
    assert d["fits"]["motion"] and d["fits"]["base"] == "sd15" and not d["conv"]
    on_adapter = describe(folder, base=tiny_motion_adapter())["base_check"]
    assert on_adapter["fits"] and on_adapter["placed"] == {"unet": modules}
    assert (on_adapter["base_class"], on_adapter["base_family"]) == ("MotionAdapter", "sd15")
    assert not describe(folder, base=tiny_pipeline("sd15"))["base_check"]["fits"]  # no motion modules there
    check(d)


@pytest.mark.torch
@pytest.mark.parametrize("kind", LORA_KINDS)
def test_lora_counts_match_the_loaded_pipeline(kind, tmp_path_factory):
    """Differential against the real loader: the modules `load_lora_weights` places on a torch pipeline."""
    from fewstep.pipelines import DiffusionPipeline

    folder, _, files = lora_case(kind, tmp_path_factory)
    pipe = DiffusionPipeline.from_pretrained(folder, backend="torch")
    for fmt, path in files.items():
        pipe.load_lora_weights(path, adapter_name=fmt)
        placed = {c: len(p) for c, p in pipe._lora.adapters[fmt].layers.items()}
        d = describe(path, base=folder)
        assert placed == {c: v["modules"] for c, v in d["components"].items()} == d["base_check"]["placed"], fmt


# ----------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("kind", KINDS)
def test_single_file_checkpoint(kind):
    from fewstep.testing.tiny_single_file import tiny_checkpoint

    d = describe(tiny_checkpoint(kind))
    assert d["kind"] == "checkpoint" and d["family"] == kind and d["base"] == kind.split("-")[0]
    assert d["fewstep_class"] == index_of(tiny_pipeline(kind))["_class_name"]
    assert d["dtype"] == "float32" and {"unet", "vae", "text_encoder"} <= set(d["parts"])
    assert ("text_encoder_2" in d["parts"]) == kind.startswith("sdxl")
    check(d)


# ----------------------------------------------------------------------------------- errors
def _text_file(tmp):
    path = os.path.join(tmp, "notes.txt")
    with open(path, "w") as f:
        f.write("not a model at all, but long enough to have a header length\n" * 4)
    return path


def _pickle(tmp):
    path = os.path.join(tmp, "model.ckpt")
    with open(path, "wb") as f:
        f.write(b"\x80\x02}q\x00" + b"\x00" * 64)
    return path


def _other_safetensors(tmp):
    import safetensors.numpy

    path = os.path.join(tmp, "other.safetensors")
    safetensors.numpy.save_file({"encoder.weight": np.zeros((2, 2), np.float32)}, path)
    return path


def _loha(tmp):
    import safetensors.numpy

    path = os.path.join(tmp, "loha.safetensors")
    safetensors.numpy.save_file({f"lora_unet_conv_in.hada_w1_{ab}": np.zeros((4, 4), np.float32) for ab in "ab"}, path)
    return path


def _empty_folder(tmp):
    os.mkdir(os.path.join(tmp, "empty"))
    return os.path.join(tmp, "empty")


# (what is passed, extra arguments, the message) for each input describe refuses
ERRORS = {
    "missing file": (lambda tmp: os.path.join(tmp, "missing.safetensors"), {}, "does not exist"),
    "missing folder": (lambda tmp: os.path.join(tmp, "missing"), {}, "does not exist"),
    "text file": (_text_file, {}, "is not a safetensors file.*Expected a diffusers pipeline folder"),
    "pickled ckpt": (_pickle, {}, "pickled checkpoint.*safetensors"),
    "other weights": (_other_safetensors, {}, "not a LoRA, a single-file checkpoint or an IP-Adapter"),
    "LoHa": (_loha, {}, "is a LoHa \\(LyCORIS\\) file, not a plain LoRA"),
    "empty folder": (_empty_folder, {}, "holds no model_index.json, config.json or weight files"),
    "base for a controlnet": (lambda tmp: tiny_controlnet("sd15"), {"base": "."}, "base= checks a LoRA"),
    "missing weight_name": (lambda tmp: tiny_motion_lora(), {"weight_name": "nope.safetensors"},
                            "has no file 'nope.safetensors'"),
    # HF_HUB_OFFLINE (conftest): nothing is fetched
    "unknown hub id": (lambda tmp: "fewstep-tests/no-such-repo", {}, "neither a local folder nor a hub repository"),
    "not a path": (lambda tmp: 3, {}, "Expected a path or hub id"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_errors(case, tmp_path):
    make, kwargs, message = ERRORS[case]
    with pytest.raises(ValueError, match=message):
        describe(make(str(tmp_path)), **kwargs)


def test_hub_id_through_the_cache(tmp_path, monkeypatch):
    """A hub id resolves through huggingface_hub's cache (offline): the snapshot layout it reads."""
    import huggingface_hub.constants

    commit = "0" * 40
    repo = tmp_path / "models--fewstep-tests--motion-lora"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(tiny_motion_lora(), repo / "snapshots" / commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    d = describe("fewstep-tests/motion-lora", weight_name=MOTION_LORA_WEIGHT_NAME)
    assert d["kind"] == "lora" and d["path"].startswith(str(repo))


def test_no_framework_is_imported(tmp_path_factory):
    folder, _, files = lora_case("sdxl", tmp_path_factory)
    code = ("import sys; from fewstep.info import describe, format_info; "
            f"[format_info(describe(p)) for p in ({folder!r}, {files['kohya_sgm']!r})]; "
            f"format_info(describe({files['peft']!r}, base={folder!r})); "
            "print(sorted(m for m in ('torch', 'mindspore', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == "[]", out.stderr
