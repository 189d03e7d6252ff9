"""MindSpore graph mode: `pipe.unet.compile()` runs mindone's UNet under `mindspore.jit` (capture_mode "ast").

Each compiled image is compared with the same pipeline run in PyNative on the same weights (`compile(None)` puts
PyNative back), within 1e-4 (measured ~1e-6), for SD 1.5 with classifier-free guidance, SDXL (added conditions),
LCM's guidance embedding (timestep_cond), a ControlNet (residuals) and a LoRA fused after compiling (the graph
reads the weights that set_data rebinds). Each test also shows that the input it covers changes the compiled image,
and that every UNet call went through the graph. On CPU this needs fewstep's stand-ins for the kernels graph mode
lacks (fewstep.backends.mindspore_cpu: mint.split, GEGLU's chunk). The tiny folders are written with torch.
"""

from __future__ import annotations

import numpy as np
import pytest

import fewstep
from fewstep.testing import tiny_pipeline
from tests.lora_cases import make_lora, targets_from_folder, write
from tests.pipeline_cases import picture

pytestmark = [pytest.mark.parity, pytest.mark.torch, pytest.mark.mindspore]

ATOL = 1e-4
MATTERS = 1e-2  # an input the test covers changes the image by more than this
CALL = dict(prompt="a red fox in the snow", num_inference_steps=2, guidance_scale=0.0, output_type="np")


def run(pipe, **kwargs):
    return pipe(generator=fewstep.Generator(0), **{**CALL, **kwargs}).images


def pynative(pipe, **kwargs):
    """The same call with the UNet in PyNative; compiled again afterwards (the same graph: nothing is rebuilt)."""
    graph = pipe.unet._graph
    pipe.unet.compile(None)
    assert not pipe.unet.compiled
    try:
        return run(pipe, **kwargs)
    finally:
        pipe.unet._graph = graph


def through_graph(pipe, **kwargs):
    """The compiled image, checking that every UNet call of it went through the compiled function."""
    unet = pipe.unet
    graph, calls = unet._graph, []
    unet._graph = lambda *args: calls.append(1) or graph(*args)
    try:
        image = run(pipe, **kwargs)
    finally:
        unet._graph = graph
    assert calls, "the compiled function was not called"
    return image, len(calls)


def load(class_name, folder, **components):
    pipe = getattr(fewstep, class_name).from_pretrained(folder, backend="mindspore", **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def assert_close(got, want, what):
    err = np.abs(got - want).max()
    assert err <= ATOL, f"{what}: max |jit - PyNative| = {err:.3g}"


def assert_differs(a, b, what):
    diff = np.abs(a - b).max()
    assert diff > MATTERS, f"{what} changed the compiled image by only {diff:.3g}"


@pytest.fixture(scope="module")
def sd():
    pipe = load("StableDiffusionPipeline", tiny_pipeline("sd15"))
    assert pipe.unet.compile() is pipe.unet and pipe.unet.compiled
    return pipe


def test_sd15_with_cfg_matches_pynative(sd):
    cfg = dict(guidance_scale=3.0, negative_prompt="blurry")
    image, calls = through_graph(sd, **cfg)
    assert calls == 2  # one batched (uncond, cond) call per step
    assert_close(image, pynative(sd, **cfg), "SD 1.5, CFG")
    plain, _ = through_graph(sd)  # guidance off: batch 1, a graph of its own
    assert_close(plain, pynative(sd), "SD 1.5, no CFG")
    assert_differs(image, plain, "classifier-free guidance")


def test_inputs_the_graph_does_not_take_are_refused_by_name(sd):
    with pytest.raises(ValueError) as err:
        run(sd, cross_attention_kwargs={"temb": None})
    assert str(err.value).splitlines() == ["The compiled MindSpore UNet does not take cross_attention_kwargs: call "
                                           "pipe.unet.compile(None) to run it in PyNative."]
    sample = np.zeros((1, 4, 8, 8), np.float32)
    import mindspore as ms

    with pytest.raises(ValueError, match="^The compiled MindSpore UNet does not take "
                                         "down_intrablock_additional_residuals, image_embeds: call"):
        sd.unet(ms.tensor(sample), 1, ms.tensor(np.zeros((1, 77, 32), np.float32)),
                added_cond={"image_embeds": [ms.tensor(sample)]}, down_intrablock_additional_residuals=[])


def test_sdxl_matches_pynative():
    pipe = load("StableDiffusionXLPipeline", tiny_pipeline("sdxl"))
    pipe.unet.compile()
    image, calls = through_graph(pipe)
    assert calls == 2
    assert_close(image, pynative(pipe), "SDXL")
    # the added conditions reach the graph: other time_ids (original size) change the image
    other, _ = through_graph(pipe, original_size=(16, 16), target_size=(16, 16))
    assert_close(other, pynative(pipe, original_size=(16, 16), target_size=(16, 16)), "SDXL, other time_ids")
    assert_differs(image, other, "SDXL's time_ids")


def test_lcm_guidance_embedding_matches_pynative():
    from fewstep.testing import tiny_lcm_pipeline

    pipe = load("StableDiffusionPipeline", tiny_lcm_pipeline())
    pipe.unet.compile()
    image, calls = through_graph(pipe, guidance_scale=3.0)
    assert calls == 2  # no CFG: the guidance goes in as timestep_cond
    assert_close(image, pynative(pipe, guidance_scale=3.0), "LCM, w=3")
    other, _ = through_graph(pipe, guidance_scale=8.0)
    assert_close(other, pynative(pipe, guidance_scale=8.0), "LCM, w=8")
    assert_differs(image, other, "the guidance embedding (timestep_cond)")


def test_controlnet_residuals_match_pynative():
    from fewstep.testing import tiny_controlnet

    controlnet = fewstep.ControlNetModel.from_pretrained(tiny_controlnet("sd15"), backend="mindspore")
    pipe = load("StableDiffusionControlNetPipeline", tiny_pipeline("sd15"), controlnet=controlnet)
    pipe.unet.compile()
    control = dict(image=picture(7), controlnet_conditioning_scale=0.8)
    image, calls = through_graph(pipe, **control)
    assert calls == 2
    assert_close(image, pynative(pipe, **control), "ControlNet")
    other, _ = through_graph(pipe, image=picture(7), controlnet_conditioning_scale=0.0)  # zero residuals
    assert_differs(image, other, "the ControlNet residuals")


def test_lora_fused_after_compiling_is_seen_by_the_graph(sd, tmp_path):
    folder = tiny_pipeline("sd15")
    lora = write(str(tmp_path), "style", make_lora(targets_from_folder(folder), seed=3, components=("unet",)),
                 "peft", "sd15")
    base, _ = through_graph(sd)
    sd.load_lora_weights(lora, adapter_name="style")
    sd.fuse_lora()
    try:
        fused, _ = through_graph(sd)
        assert_close(fused, pynative(sd), "LoRA fused after compiling")
        assert_differs(fused, base, "the fused LoRA")
    finally:
        sd.unfuse_lora()
        sd.unload_lora_weights()
    again, _ = through_graph(sd)
    assert_close(again, base, "after unfusing")


def test_compile_again_replaces_the_graph_and_none_goes_back(sd):
    first = sd.unet._graph
    with pytest.raises(TypeError) as err:
        sd.unet.compile(None, capture_mode="ast")
    assert str(err.value).splitlines()[0].startswith("MindSporeUNet.compile takes keyword options for the framework's compiler")
    assert sd.unet._graph is first  # unchanged by the refused call
    # a cast would rebind the weights behind the graph's back: refused, nothing cast
    with pytest.raises(ValueError) as err:
        sd.unet.to(dtype="float16")
    assert str(err.value).splitlines() == ["Cast the MindSpore UNet before compiling it: call pipe.unet.compile(None), "
                                           "then pipe.to('float16'), then compile() again."]
    assert sd.unet.dtype == "float32" and {str(p.dtype) for p in sd.unet.module.get_parameters()} == {"Float32"}
    assert sd.unet.to(dtype="float32") is sd.unet and sd.unet._graph is first
    want = pynative(sd)
    sd.unet.compile(capture_mode="ast", jit_level="O0")  # other options: a new graph, which gives the same image
    assert sd.unet.compiled and sd.unet._graph is not first
    image, _ = through_graph(sd)
    assert_close(image, want, "compiled again")
    sd.unet.compile(None)
    assert not sd.unet.compiled
    assert np.array_equal(run(sd), want)


def test_graph_mode_stand_ins_give_the_originals_values():
    """mint.split and GEGLU's construct, replaced for graph mode on CPU, give exactly what the originals give in
    PyNative (they slice where the originals split / chunk)."""
    import mindspore as ms
    from mindspore import mint

    from fewstep.backends import mindspore_cpu as mc

    assert mc.install_cpu_kernels() is True and mc.install_mindone_layers() is True  # before mindone's models
    from mindone.diffusers.models.activations import GEGLU

    assert mint.split is mc.split and GEGLU.construct is mc._geglu_construct
    x = ms.tensor(np.random.default_rng(0).standard_normal((2, 5, 6)).astype(np.float32))
    for sections in (2, [1, 5], (3, 3)):
        got, want = mint.split(x, sections, dim=-1), mc.original(mint, "split")(x, sections, dim=-1)
        assert [p.shape for p in got] == [p.shape for p in want]
        assert all(np.array_equal(a.asnumpy(), b.asnumpy()) for a, b in zip(got, want))
    geglu = GEGLU(6, 4)
    assert np.array_equal(geglu(x).asnumpy(), mc.original(GEGLU, "construct")(geglu, x).asnumpy())
