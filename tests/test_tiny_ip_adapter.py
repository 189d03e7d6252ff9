"""The tiny IP-Adapters of fewstep.testing: laid out like h94/IP-Adapter, loaded by diffusers'
`load_ip_adapter` on the tiny pipelines (plain and Plus, one or two at once), visibly changing the image,
deterministic and cached; and on mindone (MindSpore CPU) against diffusers given the same latents."""

import json
import os

import numpy as np
import pytest

from fewstep.testing import IP_ADAPTER_FILES, IP_ADAPTER_IMAGE_ENCODERS, tiny_ip_adapter, tiny_pipeline
from fewstep.testing.tiny_ip_adapter import FORMAT_VERSION, IP_IMAGE_SIZE, PLUS_CONFIG
from fewstep.testing.tiny_models import FORMAT_VERSION as PIPELINE_FORMAT_VERSION
from fewstep.testing.tiny_models import MARKER, stack_tag

CASES = [(kind, variant) for kind in IP_ADAPTER_FILES for variant in IP_ADAPTER_FILES[kind]]
PICTURE_SEED = 0


def _picture(seed=PICTURE_SEED):
    from PIL import Image

    # not square and not the encoder's size: the feature extractor resizes and crops it
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (48, 40, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-ip-adapter")
    return {kind: tiny_ip_adapter(kind, path=root / kind) for kind in IP_ADAPTER_FILES}


def _tensors(folder):
    from safetensors.numpy import load_file

    out = {}
    for dirpath, _, names in sorted(os.walk(folder)):
        for name in sorted(names):
            if name.endswith(".safetensors"):
                path = os.path.join(dirpath, name)
                out.update({f"{os.path.relpath(path, folder)}:{k}": v for k, v in load_file(path).items()})
    assert out, f"no safetensors in {folder}"
    return out


def _torch_pipe(kind):
    import diffusers

    if kind == "sd15":
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_pipeline(kind), safety_checker=None,
                                                                 requires_safety_checker=False)
    else:
        pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(tiny_pipeline(kind))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tcd(pipe):
    import diffusers

    pipe.scheduler = diffusers.TCDScheduler.from_config(pipe.scheduler.config)
    return pipe


def _call(pipe, image, **kwargs):
    import torch

    return pipe("a squirrel", ip_adapter_image=image, height=64, width=64, num_inference_steps=2,
                guidance_scale=0.0, output_type="np", generator=torch.manual_seed(0), **kwargs).images


# --- layout --------------------------------------------------------------------------------------------
@pytest.mark.torch
@pytest.mark.parametrize("kind", list(IP_ADAPTER_FILES))
def test_layout_like_the_hub_repository(folders, kind):
    import diffusers

    folder = folders[kind]
    for sub, name in IP_ADAPTER_FILES[kind].values():
        assert os.path.isfile(os.path.join(folder, sub, name))
    encoders = IP_ADAPTER_IMAGE_ENCODERS[kind]
    assert encoders[0] == f"{IP_ADAPTER_FILES[kind]['plain'][0]}/image_encoder"  # diffusers' default lookup
    for enc in encoders:
        for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
            assert os.path.isfile(os.path.join(folder, enc, name)), (enc, name)
    first = _tensors(os.path.join(folder, encoders[0]))
    for copy in encoders[1:]:  # the copy is the same encoder
        again = _tensors(os.path.join(folder, copy))
        assert first.keys() == again.keys() and all(np.array_equal(first[k], again[k]) for k in first)

    unet = diffusers.UNet2DConditionModel.from_pretrained(tiny_pipeline(kind), subfolder="unet")
    cross = [n for n in unet.attn_processors if n.endswith("attn2.processor")]
    from safetensors.numpy import load_file

    for variant, (sub, name) in IP_ADAPTER_FILES[kind].items():
        tensors = load_file(os.path.join(folder, sub, name))
        ip_keys = sorted(k for k in tensors if k.startswith("ip_adapter."))
        assert ip_keys == sorted(f"ip_adapter.{2 * i + 1}.{w}.weight" for i in range(len(cross))
                                 for w in ("to_k_ip", "to_v_ip"))
        assert all(k.startswith(("image_proj.", "ip_adapter.")) for k in tensors)
        if variant == "plain":
            assert sorted(k for k in tensors if k.startswith("image_proj.")) == [
                "image_proj.norm.bias", "image_proj.norm.weight", "image_proj.proj.bias", "image_proj.proj.weight"]
        else:  # the original Resampler layout, which diffusers converts
            assert tensors["image_proj.latents"].shape == (1, PLUS_CONFIG["num_queries"], PLUS_CONFIG["hidden_dims"])
            assert "image_proj.layers.3.0.to_kv.weight" in tensors and "image_proj.layers.0.1.3.weight" in tensors
            assert not any(".attn." in k or ".ln0." in k for k in tensors)


# --- diffusers --------------------------------------------------------------------------------------------
@pytest.mark.torch
@pytest.mark.parametrize("kind,variant", CASES)
def test_diffusers_loads_it_and_the_image_changes(folders, kind, variant):
    import torch
    from safetensors.torch import load_file
    from transformers import CLIPImageProcessor

    sub, name = IP_ADAPTER_FILES[kind][variant]
    pipe = _tcd(_torch_pipe(kind))
    pipe.load_ip_adapter(folders[kind], subfolder=sub, weight_name=name)
    assert pipe.image_encoder is not None and pipe.image_encoder.config.image_size == IP_IMAGE_SIZE
    # the saved processor preprocesses exactly as the one load_ip_adapter created
    saved = CLIPImageProcessor.from_pretrained(os.path.join(folders[kind], sub, "image_encoder"))
    np.testing.assert_array_equal(saved(_picture(), return_tensors="np").pixel_values,
                                  pipe.feature_extractor(_picture(), return_tensors="np").pixel_values)

    # the weights in the file are the ones that land in the UNet
    file = load_file(os.path.join(folders[kind], sub, name))
    projection = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    if variant == "plain":
        assert torch.equal(projection.image_embeds.weight, file["image_proj.proj.weight"])
        assert projection.num_image_text_embeds == 4
    else:
        assert torch.equal(projection.latents, file["image_proj.latents"])
        assert torch.equal(torch.cat([projection.layers[3].attn.to_k.weight, projection.layers[3].attn.to_v.weight]),
                           file["image_proj.layers.3.0.to_kv.weight"])
    processors = [p for n, p in pipe.unet.attn_processors.items() if n.endswith("attn2.processor")]
    assert torch.equal(processors[-1].to_v_ip[0].weight, file[f"ip_adapter.{2 * len(processors) - 1}.to_v_ip.weight"])

    images = {}
    for scale in (0.5, 0.0):
        pipe.set_ip_adapter_scale(scale)
        images[scale] = _call(pipe, _picture())
    assert images[0.5].shape == (1, 64, 64, 3) and np.isfinite(images[0.5]).all()
    assert np.abs(images[0.5] - images[0.0]).max() > 1e-2  # the adapter changes the image (seen 0.05-0.065)
    pipe.set_ip_adapter_scale(0.5)
    other = _call(pipe, _picture(seed=1))
    assert np.abs(other - images[0.5]).max() > 1e-3  # and the change depends on the picture


@pytest.mark.torch
def test_two_sd15_adapters_at_once(folders):
    subs = [IP_ADAPTER_FILES["sd15"][v][0] for v in ("plain", "plus")]
    names = [IP_ADAPTER_FILES["sd15"][v][1] for v in ("plain", "plus")]
    pipe = _tcd(_torch_pipe("sd15"))
    pipe.load_ip_adapter(folders["sd15"], subfolder=subs, weight_name=names)
    assert len(pipe.unet.encoder_hid_proj.image_projection_layers) == 2
    images = {}
    for scales in ([0.5, 0.5], [0.5, 0.0], [0.0, 0.0]):
        pipe.set_ip_adapter_scale(scales)
        images[tuple(scales)] = _call(pipe, [_picture(), _picture(seed=1)])
    assert np.isfinite(images[(0.5, 0.5)]).all()
    assert np.abs(images[(0.5, 0.5)] - images[(0.5, 0.0)]).max() > 1e-2  # the second adapter counts
    assert np.abs(images[(0.5, 0.0)] - images[(0.0, 0.0)]).max() > 1e-2  # and the first


# --- seeds and the cache ----------------------------------------------------------------------------------
@pytest.mark.torch
@pytest.mark.parametrize("kind", list(IP_ADAPTER_FILES))
def test_deterministic_from_seed(folders, tmp_path, kind):
    import torch

    state = torch.random.get_rng_state()
    again = _tensors(tiny_ip_adapter(kind, path=tmp_path / "again"))
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left alone
    first = _tensors(folders[kind])
    assert first.keys() == again.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], again[key], err_msg=key)
    other = _tensors(tiny_ip_adapter(kind, seed=1, path=tmp_path / "other"))
    assert all(not np.array_equal(first[k], other[k]) for k in first if k.endswith("to_k_ip.weight"))
    # no zero-initialised tensor left, and the plain and Plus files draw different to_k_ip
    assert all(v.any() for v in first.values())
    plain, plus = (IP_ADAPTER_FILES[kind][v] for v in ("plain", "plus"))
    key = "ip_adapter.1.to_k_ip.weight"
    assert not np.array_equal(first[f"{plain[0]}/{plain[1]}:{key}"], first[f"{plus[0]}/{plus[1]}:{key}"])


@pytest.mark.torch
def test_cache_reuses_and_rebuilds(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSTEP_CACHE", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / "tiny" / stack_tag()
    folder = tiny_ip_adapter("sd15", seed=3)
    assert folder == str(cache / "ip-adapter-sd15-3")
    weights = os.path.join(folder, *IP_ADAPTER_FILES["sd15"]["plus"])
    stamp = os.stat(weights).st_mtime_ns
    assert tiny_ip_adapter("sd15", seed=3) == folder and os.stat(weights).st_mtime_ns == stamp  # cached
    marker = os.path.join(folder, MARKER)
    want = {"kind": "ip-adapter-sd15", "seed": 3, "format": FORMAT_VERSION, "pipeline_format": PIPELINE_FORMAT_VERSION}
    assert json.load(open(marker)) == want
    json.dump(dict(want, format=-1), open(marker, "w"))  # older: rebuilt
    assert tiny_ip_adapter("sd15", seed=3) == folder and json.load(open(marker)) == want
    assert not [p for p in os.listdir(cache) if p.startswith(".")]  # no staging folder left


def test_refuses_foreign_folder_and_unknown_kind(tmp_path):
    (tmp_path / "mine.txt").write_text("not a model")
    with pytest.raises(FileExistsError, match="IP-Adapter"):
        tiny_ip_adapter("sd15", path=tmp_path)
    with pytest.raises(ValueError, match="sdxl"):
        tiny_ip_adapter("sd21")


# --- mindone on MindSpore CPU -------------------------------------------------------------------------------
# mindone 0.5.0's IPAdapterPlusImageProjection.__init__ draws its `latents` with `mint.randn`, which has no
# MindSpore 2.10 CPU kernel ("RuntimeError: Create kernelmod for op InplaceNormal failed"); fewstep's CPU
# stand-ins replace it (fewstep/backends/mindspore_cpu.py), so both files load with those alone.
MINDONE_ATOL = 1e-4  # mindone's models match diffusers' to ~1e-5 per forward; seen 1.4e-6 (plain), 1.5e-6 (Plus)


def _mindone():
    from fewstep.backends.mindspore_cpu import install_cpu_kernels

    install_cpu_kernels()  # before mindone is imported
    import mindone.diffusers as md

    return md


def _mindone_pipe(md, variant, folder):
    from mindone.diffusers.schedulers import TCDScheduler as MdTCD

    sub, name = IP_ADAPTER_FILES["sd15"][variant]
    pipe = md.StableDiffusionPipeline.from_pretrained(tiny_pipeline("sd15"))
    pipe.load_ip_adapter(folder, subfolder=sub, weight_name=name)
    pipe.set_ip_adapter_scale(0.5)
    pipe.scheduler = MdTCD.from_config(pipe.scheduler.config)  # (not exported at mindone.diffusers' top level)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.slow  # importing mindone ~10 s, each pipeline load ~5 s
@pytest.mark.parity
@pytest.mark.torch
@pytest.mark.mindspore
@pytest.mark.parametrize("variant", ["plain", "plus"])
def test_mindone_matches_diffusers(folders, variant):
    import mindspore as ms
    import torch

    md = _mindone()
    latents = np.random.RandomState(1).standard_normal((1, 4, 32, 32)).astype(np.float32)
    kwargs = dict(prompt="a squirrel", ip_adapter_image=_picture(), height=64, width=64, num_inference_steps=2,
                  guidance_scale=0.0, eta=0.0, output_type="np")  # eta 0: TCD draws no noise
    sub, name = IP_ADAPTER_FILES["sd15"][variant]
    ref = _tcd(_torch_pipe("sd15"))
    ref.load_ip_adapter(folders["sd15"], subfolder=sub, weight_name=name)
    ref.set_ip_adapter_scale(0.5)
    want = ref(latents=torch.tensor(latents), **kwargs).images
    got = np.asarray(_mindone_pipe(md, variant, folders["sd15"])(latents=ms.tensor(latents), **kwargs)[0])
    assert got.shape == want.shape
    err = np.abs(got - want).max()
    assert err <= MINDONE_ATOL, f"max |mindone - diffusers| = {err:.3g}"
