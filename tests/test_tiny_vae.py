"""AutoencoderTiny (TAESD / TAESDXL's layout, `fewstep.testing.tiny_autoencoder_tiny`) as the pipelines' `vae=`.

On torch, fewstep against live diffusers with the same AutoencoderTiny object: text-to-image, img2img and
inpainting (9- and 4-channel) for SD, text-to-image and img2img for SDXL; the tiny VAE encodes with no
posterior draw, so the noise that follows is diffusers' (a draw there would shift every later noise: shown).
Also `Cls(**components)`, a saved folder whose model_index.json names AutoencoderTiny, VAE slicing and tiling.
On MindSpore, mindone's AutoencoderTiny against the torch backend. `fewstep generate --tiny-vae` against the
Python API, and its one-line refusals.

Every case asserts the tiny VAE mattered: the image differs from the folder's own AutoencoderKL's.
"""

from __future__ import annotations

import json
import os

import numpy as np
import PIL.Image
import pytest

import fewstep
from fewstep import pipelines
from fewstep.testing import tiny_autoencoder_tiny, tiny_pipeline
from tests.pipeline_cases import SIZE
from tests.test_pipelines_torch import IMAGE_ATOL, PIPELINES

PROMPT = "a red fox in the snow"
# stochastic TCD with CFG: the per-step noise and the initial noise both come from the generator
CALL = dict(num_inference_steps=2, guidance_scale=2.0, negative_prompt="blurry", eta=0.3, output_type="np",
            height=SIZE, width=SIZE)
# what the tiny VAE changes: far above the pipelines' rounding (IMAGE_ATOL)
MATTERS = 1e-2

# tests/test_pipelines_torch.py's pipelines with their inputs: SD 1.5 text-to-image, img2img, 9- and 4-channel
# inpainting, SDXL text-to-image and img2img (SD 2.1-v and SDXL inpainting left out to keep CI's time)
CASES = [case for case in PIPELINES if case[1] in ("sd15", "sd15-inpaint", "sdxl")]
IDS = ["sd15", "sd15-img2img", "sd15-inpaint-9ch", "sd15-inpaint-4ch", "sdxl", "sdxl-img2img"]


def _taesd(kind: str) -> str:
    return tiny_autoencoder_tiny("sdxl" if kind.startswith("sdxl") else "sd15")


def _ours(class_name, kind, backend="torch", **components):
    pipe = getattr(pipelines, class_name).from_pretrained(tiny_pipeline(kind), backend=backend, **components)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = fewstep.TCDScheduler.from_config(pipe.scheduler.config)
    return pipe


def _reference(class_name, kind, vae):
    import diffusers

    xl = class_name.startswith("StableDiffusionXL")
    extra = {} if xl else dict(safety_checker=None, requires_safety_checker=False)
    pipe = getattr(diffusers, class_name).from_pretrained(tiny_pipeline(kind), vae=vae, **extra)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers.TCDScheduler.from_config(pipe.scheduler.config)
    return pipe


def _run(pipe, extra, seed=0, **more):
    return pipe(PROMPT, generator=fewstep.Generator(seed), **CALL, **extra, **more).images


def _run_reference(pipe, extra, seed=0, **more):
    import torch

    return pipe(PROMPT, generator=torch.Generator().manual_seed(seed), **CALL, **extra, **more).images


def _torch_tiny(kind):
    import diffusers

    return diffusers.AutoencoderTiny.from_pretrained(_taesd(kind))


# --------------------------------------------------------------------------- torch against diffusers
@pytest.mark.torch
@pytest.mark.parametrize("class_name,kind,extra", CASES, ids=IDS)
def test_tiny_vae_matches_diffusers(class_name, kind, extra):
    tiny = _torch_tiny(kind)
    ours = _ours(class_name, kind, vae=tiny)
    assert type(ours.vae.module).__name__ == "AutoencoderTiny" and ours.vae_scale_factor == 8
    got = _run(ours, extra)
    want = _run_reference(_reference(class_name, kind, tiny), extra)
    assert got.shape == want.shape == (1, SIZE, SIZE, 3)
    err = np.abs(got - want).max()
    assert err <= IMAGE_ATOL, f"max |fewstep - diffusers| = {err:.3g}"
    own = _run(_ours(class_name, kind), extra)  # the folder's AutoencoderKL
    assert np.abs(got - own).max() > MATTERS


@pytest.mark.torch
def test_a_posterior_draw_for_the_tiny_vae_would_move_the_image_off_diffusers(monkeypatch):
    """The tiny VAE draws no noise. Drawing one (with std 0, so the latents are unchanged) shifts the generator,
    and the image leaves diffusers': the comparison above sees the noise stream."""
    from fewstep.backends.torch_components import TorchVAE

    class_name, kind, extra = CASES[1]
    tiny = _torch_tiny(kind)
    want = _run_reference(_reference(class_name, kind, tiny), extra)
    ours = _ours(class_name, kind, vae=tiny)
    assert np.abs(_run(ours, extra) - want).max() <= IMAGE_ATOL
    encode = TorchVAE.encode

    def with_a_draw(self, image):
        latents, std = encode(self, image)
        assert std is None
        return latents, latents * 0

    monkeypatch.setattr(TorchVAE, "encode", with_a_draw)
    assert np.abs(_run(ours, extra) - want).max() > MATTERS


@pytest.mark.torch
def test_components_and_a_saved_folder_naming_autoencoder_tiny(tmp_path):
    """`Cls(**{**pipe.components, "vae": tiny})` and a folder diffusers saved with vae=AutoencoderTiny (its
    model_index.json names the class) give the image `from_pretrained(..., vae=tiny)` gives."""
    class_name, kind, extra = CASES[1]
    tiny = _torch_tiny(kind)
    want = _run(_ours(class_name, kind, vae=tiny), extra)
    built = getattr(pipelines, class_name)(**{**_ours(class_name, kind).components, "vae": tiny})
    built.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(_run(built, extra), want, atol=1e-6, rtol=0)

    folder = tmp_path / "with-taesd"
    _reference(class_name, kind, tiny).save_pretrained(str(folder), safe_serialization=True)
    assert json.loads((folder / "model_index.json").read_text())["vae"] == ["diffusers", "AutoencoderTiny"]
    loaded = getattr(pipelines, class_name).from_pretrained(str(folder))
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.vae.module).__name__ == "AutoencoderTiny"
    np.testing.assert_allclose(_run(loaded, extra), want, atol=1e-6, rtol=0)


@pytest.mark.torch
def test_slicing_and_tiling_with_the_tiny_vae_match_diffusers():
    """Two images decoded (and, for img2img, encoded) one at a time and in tiles, on both sides: the same images;
    the decode-memory estimate reads the tiny VAE's block_out_channels and tile size without complaint."""
    class_name, kind, extra = CASES[1]
    tiny = _torch_tiny(kind)
    ours, ref = _ours(class_name, kind, vae=tiny), _reference(class_name, kind, tiny)
    whole = _run(ours, extra, num_images_per_prompt=2)
    ours.enable_vae_slicing()  # on the AutoencoderTiny both pipelines share (diffusers 0.4x has no pipeline method)
    ours.enable_vae_tiling()
    try:
        assert tiny.use_slicing and tiny.use_tiling
        got = _run(ours, extra, num_images_per_prompt=2)
        want = _run_reference(ref, extra, num_images_per_prompt=2)
    finally:
        tiny.disable_slicing()
        tiny.disable_tiling()
    assert got.shape == (2, SIZE, SIZE, 3)
    assert np.abs(got - want).max() <= IMAGE_ATOL
    assert np.abs(got - whole).max() <= IMAGE_ATOL  # one tile at this size: slicing and tiling change nothing
    assert np.abs(got[0] - got[1]).max() > MATTERS  # two images, not one twice


# --------------------------------------------------------------------------- MindSpore
# Text-to-image starts at 499, not 999: the random tiny UNet does not predict the noise, so its x0 from t=999 is about
# 50 (a trained one's about 4), where float32's relative 2e-6 between the frameworks (the latents differ by 1e-4 with
# the AutoencoderKL too) is 1e-4 absolute, and the tiny decoder, which has no GroupNorm to scale it away, carries that
# to the pixels (2e-4). From 499 the latents stay at a trained model's scale (7) and the images agree to 6e-6, as
# img2img's (noised to 0.6 of the schedule) do.
MS_CASES = [("StableDiffusionPipeline", "sd15", {"timesteps": [499, 199]}), CASES[1]]


@pytest.mark.parity
@pytest.mark.torch
@pytest.mark.mindspore
@pytest.mark.parametrize("class_name,kind,extra", MS_CASES, ids=IDS[:2])
def test_mindspore_tiny_vae_matches_torch(class_name, kind, extra):
    """mindone's AutoencoderTiny on the MindSpore backend against diffusers' on torch, two images in slices
    (mindone 0.5's own sliced decode would decode the batch once per slice)."""
    from fewstep.backends.mindspore_cpu import install_cpu_kernels

    install_cpu_kernels()  # before mindone's modules bind their ops
    import mindone.diffusers as md

    images = {}
    tinies = {"torch": _torch_tiny(kind), "mindspore": md.AutoencoderTiny.from_pretrained(_taesd(kind))}
    for backend, tiny in tinies.items():
        pipe = _ours(class_name, kind, backend=backend, vae=tiny)
        pipe.enable_vae_slicing()
        images[backend] = _run(pipe, extra, num_images_per_prompt=2)
        if backend == "mindspore":
            with pytest.raises(ValueError, match=r"^mindone's AutoencoderTiny does not tile .*backend='torch'\.$"):
                pipe.enable_vae_tiling()
            assert not pipe.vae.module.use_tiling
            own = _run(_ours(class_name, kind, backend=backend), extra)
            assert np.abs(images[backend][:1] - own).max() > MATTERS
    assert images["mindspore"].shape == (2, SIZE, SIZE, 3)
    err = np.abs(images["torch"] - images["mindspore"]).max()
    assert err <= IMAGE_ATOL, f"max |torch - mindspore| = {err:.3g}"


# --------------------------------------------------------------------------- fewstep generate --tiny-vae
def _png(path) -> np.ndarray:
    with PIL.Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


CLI_BASE = ["generate", PROMPT, "--steps", "2", "--seed", "7", "--width", str(SIZE), "--height", str(SIZE)]


@pytest.mark.torch
def test_generate_with_tiny_vae_gives_the_python_apis_image(tmp_path):
    from fewstep.cli import main

    out, record = tmp_path / "taesd.png", tmp_path / "settings.json"
    folder, taesd = tiny_pipeline("sd15"), _taesd("sd15")
    assert main(CLI_BASE + ["--model", folder, "--tiny-vae", taesd, "-o", str(out), "--save-settings",
                            str(record)]) == 0
    call = dict(num_inference_steps=2, guidance_scale=0.0, eta=0.3, height=SIZE, width=SIZE)  # generate's defaults

    def api(**components):
        pipe = _ours("StableDiffusionPipeline", "sd15", **components)
        return np.asarray(pipe(PROMPT, generator=fewstep.Generator(7), **call).images[0])

    want = api(vae=_torch_tiny("sd15"))
    np.testing.assert_array_equal(_png(out), want)
    assert np.abs(want.astype(int) - api().astype(int)).max() > 2  # not the folder's own VAE
    assert json.loads(record.read_text())["tiny_vae"] == os.path.abspath(taesd)


@pytest.mark.torch  # the tiny pipeline folder is built with torch
@pytest.mark.parametrize("source,message", [
    ("missing", "is not a folder; pass an AutoencoderTiny folder"),
    ("file", "is a file; pass an AutoencoderTiny folder"),
    ("no-config", ": the folder has no config.json; pass an AutoencoderTiny folder"),
    ("kl", ": its config.json names AutoencoderKL, not AutoencoderTiny; pass an AutoencoderTiny folder"),
])
def test_a_bad_tiny_vae_fails_in_one_line_before_anything_loads(tmp_path, capsys, source, message):
    from fewstep.cli import main

    given = tmp_path / "given"
    given.mkdir()
    paths = {"missing": given / "no-such-taesd", "file": given / "taesd.safetensors", "no-config": given,
             "kl": None}
    (given / "taesd.safetensors").write_bytes(b"not a model")
    before = sorted(given.iterdir())
    path = str(paths[source]) if source != "kl" else os.path.join(tiny_pipeline("sd15"), "vae")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "x.png"
    assert main(CLI_BASE + ["--model", tiny_pipeline("sd15"), "--tiny-vae", path, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fewstep: error: --tiny-vae {path}") and message in err
    assert "madebyollin/taesd" in err and err.count("\n") == 1  # one line, naming what to pass
    assert list(out_dir.iterdir()) == [] and sorted(given.iterdir()) == before


@pytest.mark.parity
@pytest.mark.torch
@pytest.mark.mindspore
@pytest.mark.parametrize("class_name,kind,extra", MS_CASES[:1], ids=IDS[:1])
def test_mindspore_tiny_vae_matches_mindones_own_pipeline(class_name, kind, extra):
    """fewstep on MindSpore and mindone's own pipeline with the same AutoencoderTiny object, TCD, the same initial
    latents and per-step noise from one np.random.Generator seed (drawn the way mindone draws). Text-to-image only:
    mindone 0.5's img2img cannot encode with its AutoencoderTiny (its `retrieve_latents` reads the VAE's
    `diag_gauss_dist`, which AutoencoderTiny has not: AttributeError), so img2img is compared with torch above."""
    from fewstep.backends.mindspore_cpu import install_cpu_kernels

    install_cpu_kernels()  # before mindone's modules bind their ops
    import mindspore as ms
    import mindone.diffusers as md

    tiny = md.AutoencoderTiny.from_pretrained(_taesd(kind))
    ref = getattr(md, class_name).from_pretrained(tiny_pipeline(kind), vae=tiny)
    ref.set_progress_bar_config(disable=True)
    ref.scheduler = md.TCDScheduler.from_config(ref.scheduler.config)
    ours = _ours(class_name, kind, backend="mindspore", vae=tiny)
    call = dict(CALL, **extra)
    latents = fewstep.Generator(11).randn((1, 4, SIZE // 8, SIZE // 8))
    if "image" not in extra:
        call["latents"] = latents
    got = ours(PROMPT, generator=np.random.Generator(np.random.PCG64(3)), **call).images
    if "image" not in extra:
        call["latents"] = ms.tensor(latents)
    want = np.asarray(ref(PROMPT, generator=np.random.Generator(np.random.PCG64(3)), **call)[0])
    err = np.abs(got - want).max()
    assert err <= IMAGE_ATOL, f"max |fewstep - mindone| = {err:.3g}"
