"""The pipeline object a diffusers user expects (issue 13, item 8): `torch_dtype=` / `mindspore_dtype=`
beside `dtype=`, loading without deprecation warnings, `.to()` returning the pipeline, `pipe.components`
for `OtherPipeline(**pipe.components)`, and the VAE's slicing and tiling switches against diffusers' and
mindone's own pipelines."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fewstep
from fewstep import pipelines
from fewstep.testing import tiny_controlnet, tiny_pipeline
from tests.pipeline_cases import SIZE, picture
from tests.test_docstrings import problems

MS = pytest.mark.mindspore
BACKENDS = [pytest.param("torch", marks=pytest.mark.torch), pytest.param("mindspore", marks=[MS, pytest.mark.torch])]
# diffusers' and fewstep's pipelines on the same weights differ by float32 rounding of the schedulers'
# coefficients (tests/test_pipelines_torch.py measures ~1e-5 on the image): the bound is 1e-4.
IMAGE_ATOL = 1e-4
# The tiny VAE's tile is its config sample_size (64 px, 32 latents): 128 px images are decoded in 4+ tiles.
TILED_SIZE = 128

_pipes = {}


def pipe_of(class_name, kind, backend, **kwargs):
    key = (class_name, kind, backend, tuple(sorted(kwargs.items())))
    if key not in _pipes:
        pipe = getattr(pipelines, class_name).from_pretrained(tiny_pipeline(kind), backend=backend, **kwargs)
        pipe.set_progress_bar_config(disable=True)
        _pipes[key] = pipe
    return _pipes[key]


def weights(component) -> dict:
    """name -> NumPy copy of every parameter of a fewstep component, on either framework."""
    module = component.module
    if hasattr(module, "get_parameters"):  # a MindSpore Cell
        import mindspore as ms

        return {p.name: ms.Tensor(p).astype(ms.float32).asnumpy().copy() for p in module.get_parameters()}
    return {k: v.detach().float().numpy().copy() for k, v in module.state_dict().items()}


def same_weights(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


# ---------------------------------------------------------------------- dtype keywords
@pytest.mark.torch
def test_torch_dtype_gives_the_pipeline_dtype_gives():
    import torch

    by_name = pipe_of("StableDiffusionXLPipeline", "sdxl", "torch", dtype="float16")
    by_object = pipe_of("StableDiffusionXLPipeline", "sdxl", "torch", torch_dtype=torch.float16)
    auto = pipelines.AutoPipelineForText2Image.from_pretrained(tiny_pipeline("sdxl"), torch_dtype=torch.float16)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert getattr(by_object, name).dtype == getattr(auto, name).dtype == "float16"
        assert getattr(by_object, name).module.dtype == torch.float16
        assert same_weights(getattr(by_name, name), getattr(by_object, name)), name
    controlnet = fewstep.ControlNetModel.from_pretrained(tiny_controlnet("sd15"), torch_dtype=torch.bfloat16)
    assert controlnet.dtype == "bfloat16" and controlnet.module.dtype == torch.bfloat16


@MS
@pytest.mark.torch
def test_mindspore_dtype_and_a_ported_torch_dtype_on_mindspore():
    """mindone's keyword, and diffusers' read by name (a diffusers snippet with backend="mindspore")."""
    import mindspore as ms
    import torch

    by_name = pipe_of("StableDiffusionPipeline", "sd15", "mindspore", dtype="float16")
    by_object = pipe_of("StableDiffusionPipeline", "sd15", "mindspore", mindspore_dtype=ms.float16)
    ported = pipelines.StableDiffusionPipeline.from_pretrained(tiny_pipeline("sd15"), backend="mindspore",
                                                             torch_dtype=torch.float16)
    for name in ("unet", "vae", "text_encoder"):
        assert getattr(by_object, name).dtype == getattr(ported, name).dtype == "float16"
        assert same_weights(getattr(by_name, name), getattr(by_object, name)), name
        assert same_weights(getattr(by_name, name), getattr(ported, name)), name


@pytest.mark.torch
@pytest.mark.parametrize("kwargs, message", [
    (dict(dtype="float32", torch_dtype="torch.float16"), "disagree"),
    (dict(torch_dtype="int64"), "not a floating dtype"),
    (dict(torch_dtype="auto"), "not a floating dtype"),
    (dict(dtype=3), "takes a dtype name"),
])
def test_bad_dtype_keywords_fail_before_any_file_is_read(kwargs, message):
    # the path does not exist: the dtype error must come first
    for load in (pipelines.StableDiffusionPipeline.from_pretrained, fewstep.ControlNetModel.from_pretrained,
                 pipelines.AutoPipelineForImage2Image.from_pretrained):
        with pytest.raises(ValueError, match=message):
            load("/nonexistent/folder", **kwargs)


@MS
@pytest.mark.torch
def test_a_dtype_of_the_other_framework_under_a_framework_keyword_is_refused():
    import mindspore as ms
    import torch

    with pytest.raises(ValueError, match="torch_dtype= got mindspore's dtype"):
        pipelines.StableDiffusionPipeline.from_pretrained("/nonexistent", torch_dtype=ms.float16)
    with pytest.raises(ValueError, match="mindspore_dtype= got torch's dtype"):
        fewstep.UNet2DConditionModel.from_pretrained("/nonexistent", backend="mindspore", mindspore_dtype=torch.float16)


# ---------------------------------------------------------------------- no deprecation warnings
@MS
@pytest.mark.torch
def test_loading_every_tiny_pipeline_and_adapter_warns_no_deprecation():
    """transformers 4.57 warns "`torch_dtype` is deprecated!" and mindone.transformers "`mindspore_dtype` is
    deprecated!" for the old keyword; fewstep passes each library its own. Run in a fresh process (see
    tests/quiet_loading.py): import chatter is left out, and the capture is proven to catch the warning."""
    script = os.path.join(os.path.dirname(__file__), "quiet_loading.py")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, script, "torch", "mindspore"], capture_output=True, text=True,
                          env=env, timeout=900, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["probe"], "the capture did not see transformers' own deprecation warning: it proves nothing"
    assert report["deprecated"] == []


# ---------------------------------------------------------------------- .to()
@pytest.mark.torch
def test_to_returns_the_pipeline_and_moves_every_model():
    import torch

    pipe = pipelines.StableDiffusionControlNetPipeline.from_pretrained(
        tiny_pipeline("sd15"), controlnet=[fewstep.ControlNetModel.from_pretrained(tiny_controlnet("sd15"))] * 2)
    assert pipe.to("cpu") is pipe and pipe.device == torch.device("cpu")
    assert pipe.to(torch.float16) is pipe
    for name in ("unet", "vae", "text_encoder"):
        assert getattr(pipe, name).dtype == "float16" and getattr(pipe, name).module.dtype == torch.float16
    assert pipe.controlnet[0].dtype == "float16" and pipe.controlnet[0].module.dtype == torch.float16
    # cast as loading casts: the same weights as from_pretrained(dtype="float16")
    loaded = pipe_of("StableDiffusionPipeline", "sd15", "torch", dtype="float16")
    for name in ("unet", "vae", "text_encoder"):
        assert same_weights(getattr(pipe, name), getattr(loaded, name)), name
    assert pipe.to("cpu", torch.float32) is pipe and pipe.unet.dtype == "float32"
    assert pipe.to(torch_device="cpu", torch_dtype=torch.bfloat16).text_encoder.module.dtype == torch.bfloat16
    assert pipe.to(dtype="float32", device=torch.device("cpu")).text_encoder.dtype == "float32"


@pytest.mark.torch
def test_to_moves_the_ip_adapter_image_encoder():
    import torch
    from fewstep.testing.tiny_ip_adapter import IP_ADAPTER_FILES, tiny_ip_adapter

    pipe = pipelines.StableDiffusionPipeline.from_pretrained(tiny_pipeline("sd15"))
    sub, name = IP_ADAPTER_FILES["sd15"]["plain"]
    pipe.load_ip_adapter(tiny_ip_adapter("sd15"), subfolder=sub, weight_name=name)
    pipe.to(torch.bfloat16)
    assert pipe.image_encoder.dtype == "bfloat16" and pipe.image_encoder.module.dtype == torch.bfloat16


@pytest.mark.torch
@pytest.mark.parametrize("args, kwargs, error, message", [
    (("float16",), {}, ValueError, "read as a device"),
    (("no-such-device",), {}, ValueError, "torch cannot use the device"),
    ((1,), {}, TypeError, "takes a device"),
    ((), {"device": "cpu", "torch_device": "meta"}, ValueError, "different devices"),
    ((), {"dtype": "float16", "torch_dtype": "torch.float32"}, ValueError, "disagree"),
    ((), {"non_blocking": True}, TypeError, "unexpected keyword"),
])
def test_to_refuses_bad_arguments_and_moves_nothing(args, kwargs, error, message):
    pipe = pipe_of("StableDiffusionPipeline", "sd15", "torch")
    before = weights(pipe.unet)
    with pytest.raises(error, match=message):
        pipe.to(*args, **kwargs)
    assert pipe.unet.dtype == "float32" and all(np.array_equal(v, before[k]) for k, v in weights(pipe.unet).items())


@MS
@pytest.mark.torch
def test_to_on_mindspore_casts_and_refuses_a_device():
    import mindspore as ms

    pipe = pipelines.StableDiffusionPipeline.from_pretrained(tiny_pipeline("sd15"), backend="mindspore")
    with pytest.raises(ValueError, match="set_context"):
        pipe.to("Ascend", ms.float16)
    assert pipe.unet.dtype == "float32"
    assert pipe.to(ms.float16) is pipe and pipe.device is None
    loaded = pipe_of("StableDiffusionPipeline", "sd15", "mindspore", dtype="float16")
    for name in ("unet", "vae", "text_encoder"):
        assert getattr(pipe, name).dtype == "float16"
        assert same_weights(getattr(pipe, name), getattr(loaded, name)), name
    assert pipe.to(dtype="float32").unet.dtype == "float32"


# .to() with LoRAs loaded (they follow the weights): tests/test_lora_move.py


# ---------------------------------------------------------------------- components
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind, text2img, img2img", [
    ("sd15", "StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"),
    ("sdxl", "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"),
])
def test_other_pipeline_from_components_gives_the_from_pipe_image(backend, kind, text2img, img2img):
    source = pipe_of(text2img, kind, backend)
    components = source.components
    assert set(components) == set(source.component_names()) | {"scheduler"}
    built = getattr(pipelines, img2img)(**components)
    via_pipe = getattr(pipelines, img2img).from_pipe(source)
    assert built.ops.name == backend and built.unet is source.unet
    kwargs = dict(prompt="a red fox", image=picture(3), strength=0.6, num_inference_steps=2, guidance_scale=0.0,
                  eta=0.3, output_type="np")
    got = built(generator=fewstep.Generator(2), **kwargs).images
    want = via_pipe(generator=fewstep.Generator(2), **kwargs).images
    assert np.array_equal(got, want)
    # the older spelling stays: Cls(backend, scheduler, **models)
    models = {k: v for k, v in components.items() if k != "scheduler"}
    assert getattr(pipelines, img2img)(backend, source.scheduler, **models).unet is source.unet


@pytest.mark.torch
def test_components_without_a_model_or_scheduler_give_clear_errors():
    source = pipe_of("StableDiffusionPipeline", "sd15", "torch")
    with pytest.raises(ValueError, match="needs a scheduler"):
        pipelines.StableDiffusionPipeline(**{k: v for k, v in source.components.items() if k != "scheduler"})
    with pytest.raises(ValueError, match="pass backend="):
        pipelines.StableDiffusionPipeline(scheduler=source.scheduler, tokenizer=source.tokenizer)


# ---------------------------------------------------------------------- VAE slicing and tiling
def _toggle(pipe, slicing: bool, tiling: bool):
    """Through the pipelines' own methods (fewstep's, diffusers' up to 0.3x, mindone's: the same names), else the
    VAE's, as the installed diffusers has it (0.4x keeps only `pipe.vae.enable_slicing()` and the like)."""
    for on, name in ((slicing, "slicing"), (tiling, "tiling")):
        verb = "enable" if on else "disable"
        if hasattr(pipe, f"{verb}_vae_{name}"):
            getattr(pipe, f"{verb}_vae_{name}")()
        else:
            getattr(pipe.vae, f"{verb}_{name}")()


def _reference(library, class_name, kind):
    key = (library, class_name, kind)
    if key not in _pipes:
        if library == "diffusers":
            import diffusers as lib
        else:
            from fewstep.backends.mindspore_cpu import install_cpu_kernels

            install_cpu_kernels()
            import mindone.diffusers as lib
        extra = {} if "XL" in class_name else dict(safety_checker=None, requires_safety_checker=False)
        ref = getattr(lib, class_name).from_pretrained(tiny_pipeline(kind), **extra)
        ref.set_progress_bar_config(disable=True)
        _pipes[key] = ref
    ref = _pipes[key]
    return ref


def _run_pair(backend, class_name, kind, size, slicing, tiling, batch=1, reference=True, steps=1, **more):
    """(fewstep's images, the reference library's images or None without `reference`)."""
    ours = pipe_of(class_name, kind, backend)
    library = "diffusers" if backend == "torch" else "mindone"
    ref = _reference(library, class_name, kind)
    if backend == "torch":
        import diffusers
        ref.scheduler = diffusers.TCDScheduler.from_config(ref.scheduler.config)
    else:
        from mindone.diffusers.schedulers import TCDScheduler
        ref.scheduler = TCDScheduler.from_config(ref.scheduler.config)
    ours.scheduler = fewstep.TCDScheduler.from_config(ours.scheduler.config)
    for pipe in (ours, ref):
        _toggle(pipe, slicing, tiling)
    kwargs = dict(prompt=["a red fox"] * batch, num_inference_steps=steps, guidance_scale=0.0, eta=0.0, output_type="np",
                  **more)
    if "image" not in more:
        kwargs.update(height=size, width=size)
    # text-to-image: the same initial latents on both sides; img2img draws them from the generator
    latents = None if "image" in more else fewstep.Generator(11).randn((batch, 4, size // 2, size // 2))
    try:
        if backend == "torch":
            import torch

            ref_latents = {} if latents is None else {"latents": torch.from_numpy(latents)}
            want = ref(generator=torch.Generator().manual_seed(3), **ref_latents, **kwargs).images if reference else None
            got = ours(latents=latents, generator=fewstep.Generator(3), **kwargs).images
        else:
            import mindspore as ms

            ref_latents = {} if latents is None else {"latents": ms.tensor(latents)}
            want = (np.asarray(ref(generator=np.random.Generator(np.random.PCG64(3)), **ref_latents, **kwargs)[0])
                    if reference else None)
            got = ours(latents=latents, generator=fewstep.Generator(3, stream="numpy"), **kwargs).images
    finally:
        for pipe in (ours, ref):
            _toggle(pipe, False, False)
    return got, want


# MindSpore's CPU convolutions make the 128 px tiled decodes take ~40 s: too slow for CI. The switch is the
# same code on both backends (the library's own AutoencoderKL.enable_tiling), checked end to end on torch
# in CI and on MindSpore with -m slow; MindSpore's slicing runs in CI below.
_TILING_BACKENDS = [BACKENDS[0], pytest.param("mindspore", marks=[MS, pytest.mark.torch, pytest.mark.slow])]


@pytest.mark.parametrize("backend", _TILING_BACKENDS)
def test_vae_tiling_tiles_and_matches_the_reference(backend):
    tiled, want = _run_pair(backend, "StableDiffusionPipeline", "sd15", TILED_SIZE, slicing=False, tiling=True)
    whole, _ = _run_pair(backend, "StableDiffusionPipeline", "sd15", TILED_SIZE, slicing=False, tiling=False,
                         reference=False)
    assert tiled.shape == (1, TILED_SIZE, TILED_SIZE, 3)
    assert np.abs(tiled - want).max() <= IMAGE_ATOL
    # tiling really tiled: blended seams differ from the whole decode well beyond the bound
    assert np.abs(tiled - whole).max() > 100 * IMAGE_ATOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_vae_slicing_matches_the_reference(backend):
    sliced, want = _run_pair(backend, "StableDiffusionPipeline", "sd15", SIZE, slicing=True, tiling=False, batch=2)
    whole, _ = _run_pair(backend, "StableDiffusionPipeline", "sd15", SIZE, slicing=False, tiling=False, batch=2,
                         reference=False)
    assert sliced.shape[0] == 2
    assert np.abs(sliced - want).max() <= IMAGE_ATOL
    assert np.abs(sliced - whole).max() <= IMAGE_ATOL


@pytest.mark.torch
def test_img2img_encodes_tiled_too():
    """img2img's encode goes through the same AutoencoderKL.encode, which tiles an image over one tile."""
    image = picture(5, TILED_SIZE)
    tiled, want = _run_pair("torch", "StableDiffusionImg2ImgPipeline", "sd15", TILED_SIZE, slicing=True, tiling=True,
                            image=image, strength=0.5, steps=2)
    whole, _ = _run_pair("torch", "StableDiffusionImg2ImgPipeline", "sd15", TILED_SIZE, slicing=False, tiling=False,
                         reference=False, image=image, strength=0.5, steps=2)
    assert np.abs(tiled - want).max() <= IMAGE_ATOL
    assert np.abs(tiled - whole).max() > 100 * IMAGE_ATOL


# ---------------------------------------------------------------------- documentation
@pytest.mark.parametrize("method", ["to", "enable_vae_slicing", "disable_vae_slicing", "enable_vae_tiling",
                                    "disable_vae_tiling"])
def test_new_methods_are_documented_in_diffusers_style(method):
    import inspect

    function = getattr(pipelines.DiffusionPipeline, method)
    arguments = {n: p.default for n, p in inspect.signature(function).parameters.items()
                 if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    if method == "to":
        arguments["args"] = None  # *args, documented as optional
        assert problems(function.__qualname__, function.__doc__, arguments, "kwargs") == []
    else:
        assert function.__doc__ and "Returns:" in function.__doc__
