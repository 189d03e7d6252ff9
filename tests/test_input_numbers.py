"""Numbers checked where they enter the Python API (issue 24, deliverable 5): NaN, inf and out-of-range values
of every call argument, LoRA weight and scale, and adapter scale get a ValueError naming the argument, before
anything runs or any weight changes; a LoRA file holding NaN or inf is refused naming the key."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fewstep
from fewstep import pipelines
from fewstep.core import checks
from fewstep.core.lora import LoraError
from fewstep.testing import tiny_pipeline
from fewstep.testing.tiny_adapters import tiny_controlnet, tiny_t2i_adapter
from fewstep.testing.tiny_ip_adapter import IP_ADAPTER_FILES, tiny_ip_adapter
from tests.lora_cases import make_lora, peft_file, targets_from_folder
from tests.pipeline_cases import SIZE, picture

pytestmark = pytest.mark.torch

NAN, INF = float("nan"), float("inf")
CALL = dict(prompt="a fox", num_inference_steps=1, guidance_scale=0.0, height=32, width=32, output_type="np")
_pipes = {}


def pipe(class_name="StableDiffusionPipeline", **components):
    if class_name not in _pipes:
        p = getattr(pipelines, class_name).from_pretrained(tiny_pipeline("sd15"), backend="torch", **components)
        p.set_progress_bar_config(disable=True)
        _pipes[class_name] = p
    return _pipes[class_name]


def lora_state_dict(seed=0):
    return dict(peft_file(make_lora(targets_from_folder(tiny_pipeline("sd15")), seed=seed, components=("unet",
                                                                                                       "text_encoder")))[0])


def weights(p) -> dict:
    """Every weight a LoRA may change, copied to NumPy."""
    return {(name, path): p.ops.to_numpy(comp.named_weight(path)).copy()
            for name, comp in p._lora_components().items() for path in comp.lora_targets()}


def assert_bitwise(got: dict, want: dict):
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].tobytes() == want[key].tobytes(), key


def first_line(err) -> str:
    return str(err.value).splitlines()[0]


# ------------------------------------------------------------------------------------------- the call
@pytest.mark.parametrize("kwargs, message", [
    (dict(guidance_scale=NAN), r"^guidance_scale must be a finite number; got nan\. Use e\.g\. 7\.5"),
    (dict(guidance_scale=INF), r"^guidance_scale must be a finite number; got inf\."),
    (dict(guidance_scale=-INF), r"^guidance_scale must be a finite number; got -inf\."),
    (dict(guidance_scale=10 ** 400), r"^guidance_scale must be a finite number; got inf\."),
    (dict(guidance_scale="7.5"), r"^guidance_scale must be a number; got '7\.5'\."),
    (dict(eta=NAN), r"^eta must be a finite number; got nan\."),
    (dict(eta=-0.1), r"^eta must be in \[0, 1\]; got -0\.1\. 0 is deterministic"),
    (dict(eta=1.5), r"^eta must be in \[0, 1\]; got 1\.5\."),
    (dict(cross_attention_kwargs={"scale": NAN}), r'^cross_attention_kwargs\["scale"\] must be a finite number; got nan'),
    (dict(cross_attention_kwargs={"scale": -INF}), r'^cross_attention_kwargs\["scale"\] must be a finite number'),
    (dict(width=0), r"^height and width must be positive multiples of 2 .* got 32x0\."),
    (dict(height=-32), r"^height and width must be positive multiples of 2 .* got -32x32\."),
    (dict(height=33), r"^height and width must be positive multiples of 2 .* got 33x32\. Try 32x32\."),
    (dict(height=32.0), r"^height must be a whole number of pixels; got 32\.0\."),
    (dict(width=NAN), r"^width must be a whole number of pixels; got nan\."),
    (dict(width=100000, height=100000), r"^100000x100000 is larger than fewstep makes \(16384 pixels a side; decoding "
                                        r"one image would take about [\d,]+ GiB\): ask for at most 16384x16384"),
    (dict(width=16384, height=16384, num_images_per_prompt=64),
     r"^Decoding 64 image\(s\) of 16384x16384 at once would take about \d+ GiB \(the limit is 256 GiB\); use "
     r"pipe\.enable_vae_slicing\(\), pipe\.enable_vae_tiling\(\)"),
    (dict(num_images_per_prompt=0), r"^num_images_per_prompt must be from 1 to 1024; got 0\."),
    (dict(num_images_per_prompt=10 ** 9), r"^num_images_per_prompt must be from 1 to 1024; got 1000000000\. Make more "
                                          r"images with several calls"),
    (dict(num_images_per_prompt=2.0), r"^num_images_per_prompt must be a whole number; got 2\.0\."),
    (dict(prompt=["a fox"] * 3, num_images_per_prompt=400), r"^3 prompts x num_images_per_prompt=400 is 1200 images; "
                                                            r"one call makes at most 1024\."),
])
def test_call_numbers_refused_before_anything_runs(kwargs, message):
    p = pipe()
    p.scheduler.set_timesteps(3)
    before = np.asarray(p.scheduler.timesteps).copy()
    with pytest.raises(ValueError, match=message) as err:
        p(**{**CALL, **kwargs})
    assert "\n" not in str(err.value)
    # refused before the scheduler was set for the call: nothing ran
    assert np.array_equal(np.asarray(p.scheduler.timesteps), before)


def test_strength_nan_inf_and_out_of_range():
    p = pipe("StableDiffusionImg2ImgPipeline")
    for strength, message in [(NAN, r"^strength must be a finite number; got nan\. Use 1\.0"),
                              (INF, r"^strength must be a finite number; got inf\."),
                              (0.0, r"^strength must be in \(0, 1\]; got 0\.0\."),
                              (1.5, r"^strength must be in \(0, 1\]; got 1\.5\.")]:
        with pytest.raises(ValueError, match=message):
            p(image=picture(0, 32), strength=strength, **CALL)


def test_in_range_values_still_run_as_diffusers_runs_them():
    """Negative guidance is diffusers' "no CFG" (refused only when not finite), eta 0 and 1 are the ends of TCD's
    range, and the decode check is skipped for latents: each runs and gives finite output."""
    p = pipe()
    for kwargs in (dict(guidance_scale=-5.0), dict(eta=1.0), dict(eta=0.0), dict(output_type="latent")):
        out = p(**{**CALL, **kwargs, "generator": 0})
        assert np.isfinite(p.ops.to_numpy(out.images) if kwargs.get("output_type") else out.images).all()


def test_decode_check_counts_slicing_and_tiling():
    """The decode estimate follows the VAE's own slicing and tiling: with slicing on, the same request is judged
    one image at a time (here refused only by its one-image size, which tiling then brings under the limit)."""
    checks.decode_memory(64, 16384, 16384, [16, 32], 4, sliced=True, tile=None)  # 96 GiB: accepted
    with pytest.raises(ValueError, match=r"^Decoding 64 image\(s\) of 16384x16384 at once would take about 6144 GiB"):
        checks.decode_memory(64, 16384, 16384, [16, 32], 4, sliced=False, tile=None)
    with pytest.raises(ValueError, match=r"about 768 GiB .*; use pipe\.enable_vae_tiling\(\), fewer images"):
        checks.decode_memory(1, 16384, 16384, [128, 256, 512, 512], 4, sliced=False, tile=None)
    checks.decode_memory(1, 16384, 16384, [128, 256, 512, 512], 4, sliced=False, tile=512)


@pytest.mark.parametrize("value, message", [
    (True, r"^x must be a number; got True\."), (None, r"^x must be a number; got None\."),
    (np.float32("nan"), r"^x must be a finite number; got nan\."), (-(10 ** 400), r"^x must be a finite number; got inf"),
    (object(), r"^x must be a number; got a object\."),
])
def test_number_refuses_what_is_not_a_finite_number(value, message):
    with pytest.raises(ValueError, match=message):
        checks.number(value, "x")


# ------------------------------------------------------------------------------------------- adapters
def test_controlnet_scale_nan_and_inf_named():
    p = pipe("StableDiffusionControlNetPipeline", controlnet=fewstep.ControlNetModel.from_pretrained(tiny_controlnet()))
    for scale, message in [(NAN, r"^controlnet_conditioning_scale must be a finite number; got nan\."),
                           (INF, r"^controlnet_conditioning_scale must be a finite number; got inf\.")]:
        with pytest.raises(ValueError, match=message):
            p(image=picture(7, SIZE), controlnet_conditioning_scale=scale, **{**CALL, "height": SIZE, "width": SIZE})


def test_t2i_adapter_scale_nan_and_inf_named():
    p = pipe("StableDiffusionAdapterPipeline", adapter=fewstep.T2IAdapter.from_pretrained(tiny_t2i_adapter()))
    for scale, message in [(NAN, r"^adapter_conditioning_scale must be a finite number; got nan\."),
                           (-INF, r"^adapter_conditioning_scale must be a finite number; got -inf\.")]:
        with pytest.raises(ValueError, match=message):
            p(image=picture(7, SIZE), adapter_conditioning_scale=scale, **{**CALL, "height": SIZE, "width": SIZE})


def test_ip_adapter_scales_nan_and_inf_named_with_the_unet_unchanged():
    p = pipelines.StableDiffusionPipeline.from_pretrained(tiny_pipeline("sd15"), backend="torch")
    sub, name = IP_ADAPTER_FILES["sd15"]["plain"]
    p.load_ip_adapter(tiny_ip_adapter("sd15"), subfolder=sub, weight_name=name)
    p.set_ip_adapter_scale(0.5)

    def scales():
        return [list(q.scale) for q in p.unet.module.attn_processors.values() if hasattr(q, "to_k_ip")]

    before = scales()
    for bad, message in [(NAN, r"^set_ip_adapter_scale's scale must be a finite number; got nan\."),
                         ([INF], r"^set_ip_adapter_scale's scale must be a finite number; got inf\."),
                         ({"down": {"block_0": [1.0, NAN]}},
                          r"^set_ip_adapter_scale's scale\.down\.block_0\[1\] must be a finite number; got nan\.")]:
        with pytest.raises(ValueError, match=message):
            p.set_ip_adapter_scale(bad)
        assert scales() == before


# ------------------------------------------------------------------------------------------- LoRA
@pytest.fixture(scope="module")
def lora_pipe():  # shared: every test using it asserts it leaves the weights and adapters as they were
    p = pipelines.StableDiffusionPipeline.from_pretrained(tiny_pipeline("sd15"), backend="torch")
    p.set_progress_bar_config(disable=True)
    p.load_lora_weights(lora_state_dict(0), adapter_name="a")
    p.load_lora_weights(lora_state_dict(1), adapter_name="b")
    p.set_adapters(["a", "b"], [1.0, 0.5])
    return p


@pytest.mark.parametrize("action, message", [
    (lambda p: p.set_adapters(["a", "b"], [NAN, 1.0]), r"^adapter_weights for 'a' must be a finite number; got nan\."),
    (lambda p: p.set_adapters("b", INF), r"^adapter_weights for 'b' must be a finite number; got inf\."),
    (lambda p: p.set_adapters("a", {"unet": 1.0, "text_encoder": np.float32("nan")}),
     r"^adapter_weights for 'a'\['text_encoder'\] must be a finite number; got nan\."),
    (lambda p: p.fuse_lora(lora_scale=NAN), r"^lora_scale must be a finite number; got nan\."),
    (lambda p: p.fuse_lora(lora_scale=-INF, safe_fusing=True), r"^lora_scale must be a finite number; got -inf\."),
    (lambda p: p.set_adapters(["a", "b"], [1.0, -1e30]),
     r"^Adapter 'b' at its adapter weight and lora_scale would change (unet|text_encoder) module '.*' by up to "
     r"[\d.e+]+ \(at most 10000; .*\): use a smaller adapter weight.*No weight was changed\.$"),
    (lambda p: p.fuse_lora(lora_scale=1e300), r"^Adapter '.' at its adapter weight and lora_scale would change"),
    (lambda p: p(cross_attention_kwargs={"scale": 1e30}, **CALL), r"^Adapter '.' at its adapter weight"),
])
def test_lora_weights_and_scales_refused_with_every_weight_unchanged(lora_pipe, action, message):
    before = weights(lora_pipe)
    with pytest.raises(LoraError, match=message) as err:
        action(lora_pipe)
    assert "\n" not in str(err.value)
    assert_bitwise(weights(lora_pipe), before)
    assert lora_pipe.get_active_adapters() == ["a", "b"]
    # the state still matches the weights: the previous combination fuses to what is there now
    lora_pipe.set_adapters(["a", "b"], [1.0, 0.5])
    assert_bitwise(weights(lora_pipe), before)


def test_lora_refused_at_load_when_a_weight_would_pass_the_bound():
    p = pipelines.StableDiffusionPipeline.from_pretrained(tiny_pipeline("sd15"), backend="torch")
    base = weights(p)
    huge = {k: (v.astype(np.float32) * 1e20) for k, v in lora_state_dict(0).items()}
    with pytest.raises(LoraError, match=r"^Adapter 'big' at its adapter weight .* No weight was changed\.$"):
        p.load_lora_weights(huge, adapter_name="big")
    assert_bitwise(weights(p), base)
    assert p.get_list_adapters() == {} and p.get_active_adapters() == []


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
@pytest.mark.parametrize("as_file", [False, True])
def test_lora_file_with_non_finite_values_refused_naming_the_key(lora_pipe, tmp_path, bad, as_file):
    from safetensors.numpy import save_file

    tensors = lora_state_dict(2)
    key = sorted(k for k in tensors if k.startswith("unet.") and k.endswith("lora_B.weight"))[3]
    tensors[key] = tensors[key].copy()
    tensors[key].flat[5] = bad
    source = tensors
    if as_file:
        source = str(tmp_path / "broken.safetensors")
        save_file(tensors, source)
    before = weights(lora_pipe)
    with pytest.raises(LoraError, match=rf"tensor '{key}' holds 1 NaN or infinite value\(s\) of \d+; the file is "
                                        rf"broken: download or export it again\.$"):
        lora_pipe.load_lora_weights(source, adapter_name="broken")
    assert_bitwise(weights(lora_pipe), before)
    assert "broken" not in lora_pipe.get_list_adapters().get("unet", [])
    assert lora_pipe.get_active_adapters() == ["a", "b"]


def test_safe_fusing_still_catches_overflow_when_the_bound_is_lifted(monkeypatch):
    """The bound refuses first; behind it, safe_fusing's device check still writes nothing on inf (a float16 weight
    fused at lora_scale 1e10 overflows when the float32 sum is rounded back)."""
    p = pipelines.StableDiffusionPipeline.from_pretrained(tiny_pipeline("sd15"), backend="torch", dtype="float16")
    p.load_lora_weights(lora_state_dict(0), adapter_name="a")
    monkeypatch.setattr(fewstep.pipelines.lora, "MAX_CHANGE", math.inf)
    before = weights(p)
    with pytest.raises(LoraError, match=r"^Fusing gives NaN or inf in .* no weight was changed"):
        p.fuse_lora(lora_scale=1e10, safe_fusing=True)
    assert_bitwise(weights(p), before)
