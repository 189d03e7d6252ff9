"""Fusing LoRAs into fewstep pipelines: against diffusers + PEFT on torch, MindSpore against torch,
exact unfuse and switching, and bad inputs that leave the weights untouched.

The reference is diffusers' own `load_lora_weights` + `fuse_lora` (PEFT) on the same tiny folder, fed
the PEFT-format file; fewstep reads the same factors from every format (tests/lora_cases.py), so
every format is compared with the one reference.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import fewstep
from fewstep import pipelines
from fewstep.core.lora import LoraError
from fewstep.testing import tiny_pipeline
from tests.lora_cases import FORMATS, kohya_file, make_lora, rel_err, targets_from_folder, write

# diffusers warns when a second adapter is loaded into its pipeline; expected here
pytestmark = [pytest.mark.torch, pytest.mark.filterwarnings("ignore:Already found a `peft_config`:UserWarning")]

# Fused weights: the acceptance bound. On torch the arithmetic is PEFT's own (same matmul, same scale,
# same order of additions), and the weights come out bit-identical; MindSpore's matmul may sum in
# another order, a few float32 ulps of the delta.
WEIGHT_RTOL = 1e-6
# Images: the pipeline bounds of tests/test_pipelines_torch.py (fewstep vs diffusers) and
# tests/test_pipelines_mindspore.py (torch vs MindSpore); with the same weights, LoRA adds nothing.
IMAGE_ATOL = 1e-4
PARITY_ATOL = 1e-4
CALL = dict(prompt="a red fox in the snow", num_inference_steps=2, guidance_scale=0.0, eta=0.3, height=64, width=64,
            output_type="np")
CLASSES = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}
_cache = {}


class Case:
    """One tiny model: its LoRA files (adapter A in every format, adapter B in PEFT format) and what
    diffusers makes of them: fused weights and images, for A alone and for A + 0.8 B."""

    def __init__(self, kind, folder, tmp):
        import diffusers
        import torch

        self.kind, self.folder = kind, folder
        targets = targets_from_folder(folder)
        self.a = make_lora(targets, seed=0)
        self.b = make_lora(targets, seed=1, strength=0.5)
        self.files = {fmt: write(tmp, f"a-{fmt}", self.a, fmt, kind) for fmt in FORMATS}
        self.file_b = write(tmp, "b-peft", self.b, "peft", kind)
        self.components = sorted(self.a)
        self.modules = [(c, p) for c in self.components for p in sorted(set(self.a[c]) | set(self.b[c]))]

        def reference():
            cls = getattr(diffusers, CLASSES[kind])
            extra = {} if kind == "sdxl" else dict(safety_checker=None, requires_safety_checker=False)
            pipe = cls.from_pretrained(folder, **extra)
            pipe.scheduler = diffusers.TCDScheduler.from_config(pipe.scheduler.config)
            pipe.set_progress_bar_config(disable=True)
            return pipe

        def image(pipe, **kwargs):
            return pipe(generator=torch.Generator().manual_seed(0), **CALL, **kwargs).images

        def weights(pipe):
            out = {}
            for c, p in self.modules:
                model = getattr(pipe, c)
                bare = p.startswith("text_model.") and not hasattr(model, "text_model")  # transformers 5's CLIP
                module = model.get_submodule(p[len("text_model."):] if bare else p)
                out[(c, p)] = getattr(module, "base_layer", module).weight.detach().numpy().copy()
            return out

        def load(pipe, path, name):  # diffusers wants folder + weight_name when HF_HUB_OFFLINE is set
            pipe.load_lora_weights(os.path.dirname(path), weight_name=os.path.basename(path), adapter_name=name)

        ref = reference()
        self.base_weights = weights(ref)
        self.base_image = image(ref)
        load(ref, self.files["peft"], "a")
        ref.fuse_lora(components=self.components)
        self.weights_a, self.image_a = weights(ref), image(ref)
        # The LoRA at scale 0.5. Not diffusers' unfused `cross_attention_kwargs={"scale": 0.5}`: its UNet
        # scales the PEFT layers only after the time embedding and conv_in have run, so LoRAs on those
        # (this one has some) stay at 1.0 there; fused at 0.5, every module is at 0.5.
        ref = reference()  # a fresh base every time: PEFT's unfuse subtracts, which is not exact
        load(ref, self.files["peft"], "a")
        ref.fuse_lora(components=self.components, lora_scale=0.5)
        self.weights_half, self.image_half = weights(ref), image(ref)
        ref = reference()
        load(ref, self.files["peft"], "a")
        load(ref, self.file_b, "b")
        ref.set_adapters(["a", "b"], [1.0, 0.8])
        ref.fuse_lora(components=self.components)
        self.weights_ab, self.image_ab = weights(ref), image(ref)
        # the LoRA must change the picture well beyond the bounds, or the image checks prove nothing
        assert np.abs(self.image_a - self.base_image).max() > 100 * IMAGE_ATOL

    def pipeline(self, backend):
        key = (self.kind, backend)
        if key not in _cache:
            pipe = getattr(pipelines, CLASSES[self.kind]).from_pretrained(self.folder, backend=backend)
            pipe.set_progress_bar_config(disable=True)
            _cache[key] = pipe
        pipe = _cache[key]
        pipe.unload_lora_weights()
        return pipe


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def case(request, tmp_path_factory):
    kind = request.param
    if kind not in _cache:
        _cache[kind] = Case(kind, tiny_pipeline(kind), str(tmp_path_factory.mktemp(f"lora-{kind}")))
    return _cache[kind]


def sd15_case(tmp_path_factory):
    if "sd15" not in _cache:
        _cache["sd15"] = Case("sd15", tiny_pipeline("sd15"), str(tmp_path_factory.mktemp("lora-sd15")))
    return _cache["sd15"]


def fused(pipe, case):
    return {(c, p): pipe.ops.to_numpy(getattr(pipe, c).named_weight(p)).copy() for c, p in case.modules}


def assert_weights(got, want, rtol=WEIGHT_RTOL):
    worst = max(rel_err(got[k], want[k]) for k in want)
    assert worst <= rtol, f"fused weights differ by {worst:.3g} relative"


def assert_bitwise(got, want):
    different = [k for k in want if not np.array_equal(got[k], want[k])]
    assert not different, f"{len(different)} weights differ, e.g. {different[:3]}"


def run(pipe, **kwargs):
    return pipe(generator=fewstep.Generator(0), **CALL, **kwargs).images


# ----------------------------------------------------------------------------------- torch vs diffusers
def test_every_format_fuses_like_diffusers(case):
    pipe = case.pipeline("torch")
    for fmt in FORMATS:
        pipe.load_lora_weights(case.files[fmt], adapter_name=fmt)
        assert_weights(fused(pipe, case), case.weights_a)
        err = np.abs(run(pipe) - case.image_a).max()
        assert err <= IMAGE_ATOL, f"{fmt}: max |fewstep - diffusers| = {err:.3g}"
        pipe.unload_lora_weights()
        assert_bitwise(fused(pipe, case), case.base_weights)


def test_two_adapters_weighted_like_diffusers(case):
    pipe = case.pipeline("torch")
    pipe.load_lora_weights(case.files["kohya_sgm"], adapter_name="a")
    pipe.load_lora_weights(case.file_b, adapter_name="b")
    assert pipe.get_active_adapters() == ["b"]  # loading activates the new adapter alone, as in diffusers
    pipe.set_adapters(["a", "b"], adapter_weights=[1.0, 0.8])
    assert pipe.get_list_adapters() == {c: ["a", "b"] for c in case.components}
    assert_weights(fused(pipe, case), case.weights_ab)
    err = np.abs(run(pipe) - case.image_ab).max()
    assert err <= IMAGE_ATOL, f"max |fewstep - diffusers| = {err:.3g}"


def test_fuse_unfuse_and_twenty_switches_are_exact(tmp_path_factory):
    case = sd15_case(tmp_path_factory)
    pipe = case.pipeline("torch")
    pipe.load_lora_weights(case.files["kohya"], adapter_name="a")
    pipe.load_lora_weights(case.file_b, adapter_name="b")
    pipe.unfuse_lora()
    assert_bitwise(fused(pipe, case), case.base_weights)
    switches = [(["a"], None), (["b"], [0.3]), (["a", "b"], [0.5, 0.5]), (["b", "a"], [1.0, 0.2]), (["a"], [2.0])]
    for i in range(20):
        names, weights = switches[i % len(switches)]
        pipe.set_adapters(names, weights)
        if i % 7 == 3:
            pipe.fuse_lora(lora_scale=0.5)
        if i % 7 == 5:
            pipe.fuse_lora(components=["unet"])
            pipe.fuse_lora()
    pipe.fuse_lora(lora_scale=1.0)
    pipe.set_adapters(["a", "b"], [1.0, 0.8])
    switched = fused(pipe, case)
    pipe.unload_lora_weights()
    assert_bitwise(fused(pipe, case), case.base_weights)
    pipe.load_lora_weights(case.files["kohya"], adapter_name="a")
    pipe.load_lora_weights(case.file_b, adapter_name="b")
    pipe.set_adapters(["a", "b"], [1.0, 0.8])
    assert_bitwise(switched, fused(pipe, case))
    assert_weights(switched, case.weights_ab)
    pipe.delete_adapters("b")
    assert pipe.get_active_adapters() == ["a"]
    assert_weights(fused(pipe, case), case.weights_a)


def test_cross_attention_scale_applies_the_lora_at_that_scale(tmp_path_factory):
    case = sd15_case(tmp_path_factory)
    pipe = case.pipeline("torch")
    pipe.load_lora_weights(case.files["peft"])
    err = np.abs(run(pipe, cross_attention_kwargs={"scale": 0.5}) - case.image_half).max()
    assert err <= IMAGE_ATOL, f"max |fewstep - diffusers| at scale 0.5 = {err:.3g}"
    assert_weights(fused(pipe, case), case.weights_half)
    assert np.abs(run(pipe) - case.image_a).max() <= IMAGE_ATOL  # no scale: back to the fuse_lora scale
    assert_bitwise(fused(pipe, case), case.weights_a)
    pipe.fuse_lora(lora_scale=0.5)
    assert_weights(fused(pipe, case), case.weights_half)


def test_bad_inputs_raise_and_leave_every_weight_unchanged(tmp_path_factory, tmp_path):
    case = sd15_case(tmp_path_factory)
    pipe = case.pipeline("torch")
    pipe.load_lora_weights(case.files["kohya"], adapter_name="a")
    before = fused(pipe, case)

    xl_targets = targets_from_folder(tiny_pipeline("sdxl"))
    xl_file = write(str(tmp_path), "xl", make_lora(xl_targets, seed=3), "kohya_sgm", "sdxl")
    mismatched = kohya_file(case.a)
    mismatched["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"] = np.zeros((4, 24, 1, 1), np.float16)
    unmatched = dict(kohya_file(case.a), **{"lora_unet_down_blocks_9_resnets_0_conv1.lora_down.weight": np.zeros(1)})
    data = open(case.files["kohya"], "rb").read()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[:-4096])
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(data[:9] + b"\xff" + data[10:])

    bad = [
        (lambda: pipe.load_lora_weights(xl_file), r"text_encoder_2"),
        (lambda: pipe.load_lora_weights(mismatched), r"'down_blocks.0.attentions.0.proj_in'.*does not fit"),
        (lambda: pipe.load_lora_weights(unmatched), r"lora_unet_down_blocks_9_resnets_0_conv1"),
        (lambda: pipe.load_lora_weights(str(truncated)), r"truncated.safetensors is truncated"),
        (lambda: pipe.load_lora_weights(str(corrupt)), r"corrupt.safetensors is corrupt"),
        (lambda: pipe.load_lora_weights("nobody/no-such-lora", local_files_only=True), r"'nobody/no-such-lora'"),
        (lambda: pipe.load_lora_weights(case.files["peft"], adapter_name="a"), r"'a' is already in use"),
        (lambda: pipe.set_adapters(["a", "nope"]), r"\['nope'\]"),
        (lambda: pipe.set_adapters(["a"], [1.0, 2.0]), r"1 adapters but 2 adapter_weights"),
        (lambda: pipe.delete_adapters("nope"), r"\['nope'\]"),
        (lambda: pipe.fuse_lora(adapter_names=["nope"]), r"\['nope'\]"),
        (lambda: pipe.fuse_lora(components=["vae"]), r"\['vae'\]"),
        (lambda: pipe.fuse_lora(lora_scale=float("inf"), safe_fusing=True), r"^lora_scale must be a finite number"),
        (lambda: pipe.set_adapters("a", float("nan")), r"^adapter_weights for 'a' must be a finite number; got nan"),
        (lambda: pipe.set_adapters("a", -1e30), r"^Adapter 'a' at its adapter weight .* No weight was changed\.$"),
    ]
    for action, message in bad:
        with pytest.raises(LoraError, match=message):
            action()
        assert_bitwise(fused(pipe, case), before)
        assert pipe.get_active_adapters() == ["a"] and list(pipe.get_list_adapters()) == case.components


@pytest.mark.parametrize("backend", ["torch", pytest.param("mindspore", marks=pytest.mark.mindspore)])
def test_safe_fusing_checks_on_the_device_and_writes_what_plain_fusing_writes(tmp_path_factory, backend, monkeypatch):
    case = sd15_case(tmp_path_factory)
    pipe = case.pipeline(backend)
    pipe.load_lora_weights(case.files["kohya"], adapter_name="a")
    before = fused(pipe, case)
    # the checks in front (a finite lora_scale, fewstep.core.lora.fusion.MAX_CHANGE) lifted: inf reaches the device
    monkeypatch.setattr(pipelines.lora, "_finite", lambda value, what: float(value))
    monkeypatch.setattr(pipelines.lora, "MAX_CHANGE", float("inf"))
    with pytest.raises(LoraError, match=r"NaN or inf in .* no weight was changed"):
        pipe.fuse_lora(lora_scale=float("inf"), safe_fusing=True)
    assert_bitwise(fused(pipe, case), before)
    pipe.fuse_lora(lora_scale=0.5, safe_fusing=True)
    safe = fused(pipe, case)
    pipe.fuse_lora(lora_scale=1.0)
    pipe.fuse_lora(lora_scale=0.5)
    assert_bitwise(fused(pipe, case), safe)


# ----------------------------------------------------------------------------------- MindSpore
@pytest.mark.mindspore
@pytest.mark.parity
def test_mindspore_fuses_the_same_weights_and_image(case):
    pipe = case.pipeline("mindspore")
    pipe.load_lora_weights(case.files["kohya_sgm"], adapter_name="a")
    assert_weights(fused(pipe, case), case.weights_a)
    pipe.load_lora_weights(case.file_b, adapter_name="b")
    pipe.set_adapters(["a", "b"], [1.0, 0.8])
    assert_weights(fused(pipe, case), case.weights_ab)
    err = np.abs(run(pipe) - case.image_ab).max()
    assert err <= PARITY_ATOL, f"max |MindSpore - diffusers (torch)| = {err:.3g}"
    for _ in range(3):  # switching and unfusing are exact on MindSpore too
        pipe.set_adapters(["b"], [0.3])
        pipe.set_adapters(["a", "b"], [1.0, 0.8])
    assert_weights(fused(pipe, case), case.weights_ab)
    pipe.unfuse_lora()
    assert_bitwise(fused(pipe, case), case.base_weights)


@pytest.mark.torch
def test_text_encoder_lora_in_released_and_transformers5_names(case, tmp_path):
    """Released LoRAs name CLIP text-encoder modules `text_model.encoder...`; one saved with transformers 5 has no
    `text_model.` level. Either file fuses diffusers' weights (which takes both) on every transformers version."""
    def strip(p):
        return p[len("text_model."):] if p.startswith("text_model.") else p

    te = case.a["text_encoder"]
    want = {strip(p): case.weights_a[("text_encoder", p)] for p in te}
    base = {strip(p): case.base_weights[("text_encoder", p)] for p in te}
    for name, rename in (("released", lambda p: "text_model." + strip(p)), ("transformers5", strip)):
        path = write(str(tmp_path), name, {"text_encoder": {rename(p): v for p, v in te.items()}}, "peft", case.kind)
        pipe = case.pipeline("torch")
        pipe.load_lora_weights(path, adapter_name=name)
        pipe.fuse_lora()
        got = {p: pipe.ops.to_numpy(pipe.text_encoder.named_weight("text_model." + p)).copy() for p in want}
        assert_weights(got, want)
        assert all(not np.array_equal(got[p], base[p]) for p in got), name
