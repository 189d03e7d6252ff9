"""torch.compile on fewstep's pipelines, as diffusers' guides write it: `pipe.unet = torch.compile(pipe.unet)`,
`pipe.vae.decode = torch.compile(pipe.vae.decode)`, a compiled ControlNet passed in; and LoRA switches on the
compiled UNet that never recompile.

Compilation is CPU inductor (the C++ compiler is on CI's machines). Each compiled image is compared with the
same pipeline run eagerly on the same weights (`use_compiled(None)` puts the eager path back), within 1e-4.
Recompilations are counted with dynamo's own counters: `unique_graphs` grows by one for every graph compiled.
These tests run in `torch_latest` only (noxfile.py): the newest diffusers is what a compiling user runs, and
each compilation costs tens of seconds on CI's two cores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fewstep
from fewstep.testing import tiny_pipeline
from tests.lora_cases import make_lora, targets_from_folder, write

pytestmark = pytest.mark.torch

ATOL = 1e-4
CALL = dict(prompt="a red fox in the snow", num_inference_steps=2, guidance_scale=0.0, eta=0.3, output_type="np")


def graphs_compiled() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def run(pipe, **kwargs):
    return pipe(generator=fewstep.Generator(0), **{**CALL, **kwargs}).images


def eager(pipe, *names, **kwargs):
    """The same call with the named components run eagerly, then compiled again."""
    saved = {name: getattr(pipe, name)._compiled for name in names}
    for name in names:
        getattr(pipe, name).use_compiled(None)
    try:
        return run(pipe, **kwargs)
    finally:
        for name, runner in saved.items():
            getattr(pipe, name).use_compiled(runner)


@pytest.fixture(scope="module")
def compiled_sd(tmp_path_factory):
    """A tiny SD 1.5 pipeline with the UNet and the VAE decoder compiled as diffusers' guides do, its eager image,
    and two LoRAs for it."""
    folder = tiny_pipeline("sd15")
    pipe = fewstep.StableDiffusionPipeline.from_pretrained(folder, backend="torch")
    pipe.set_progress_bar_config(disable=True)
    eager_image = run(pipe)
    pipe.unet = torch.compile(pipe.unet, fullgraph=True)
    pipe.vae.decode = torch.compile(pipe.vae.decode, fullgraph=True)
    targets, tmp = targets_from_folder(folder), str(tmp_path_factory.mktemp("compile-loras"))
    loras = {name: write(tmp, name, make_lora(targets, seed=seed), "peft", "sd15") for name, seed in (("a", 0), ("b", 1))}
    return pipe, eager_image, loras


def test_compiled_unet_and_decoder_give_the_eager_image(compiled_sd):
    pipe, eager_image, _ = compiled_sd
    # the pipeline keeps its component: the compiled function runs inside it, config and weights stay
    assert type(pipe.unet).__name__ == "TorchUNet" and pipe.unet.compiled
    before = graphs_compiled()
    image = run(pipe)
    assert graphs_compiled() > before, "nothing was compiled"
    err = np.abs(image - eager_image).max()
    assert err <= ATOL, f"max |compiled - eager| = {err:.3g}"
    # a second call, other timesteps included (4 steps), compiles nothing: the timestep goes in as a tensor
    before = graphs_compiled()
    four = run(pipe, num_inference_steps=4)
    assert graphs_compiled() == before, "a new timestep recompiled the UNet"
    assert np.abs(four - eager(pipe, "unet", num_inference_steps=4)).max() <= ATOL


def test_lora_operations_on_the_compiled_unet_never_recompile(compiled_sd):
    pipe, _, loras = compiled_sd
    base = run(pipe)  # compiled already (the test above, or here)
    steps = [
        ("load_lora_weights a", lambda: pipe.load_lora_weights(loras["a"], adapter_name="a")),
        ("load_lora_weights b", lambda: pipe.load_lora_weights(loras["b"], adapter_name="b")),
        ("set_adapters a+b", lambda: pipe.set_adapters(["a", "b"], [1.0, 0.8])),
        ("fuse_lora 0.5", lambda: pipe.fuse_lora(lora_scale=0.5)),
        ("unfuse_lora", lambda: pipe.unfuse_lora()),
        ("switch to b", lambda: pipe.set_adapters(["b"])),
        ("switch to a", lambda: pipe.set_adapters(["a"], [1.0])),
    ]
    images = {}
    for what, operation in steps:
        operation()
        before = graphs_compiled()
        images[what] = image = run(pipe)
        assert graphs_compiled() == before, f"{what} recompiled the UNet"
        err = np.abs(image - eager(pipe, "unet")).max()
        assert err <= ATOL, f"{what}: max |compiled - eager fusion| = {err:.3g}"
    # every operation changed the picture, or the comparisons above prove nothing
    assert np.abs(images["load_lora_weights a"] - base).max() > 1e-2
    assert np.abs(images["switch to b"] - images["switch to a"]).max() > 1e-2
    assert np.abs(images["set_adapters a+b"] - images["fuse_lora 0.5"]).max() > 1e-2
    pipe.unload_lora_weights()
    before = graphs_compiled()
    assert np.array_equal(run(pipe), base), "unloading did not give the base image back"
    assert graphs_compiled() == before


def test_a_compiled_controlnet_passed_in_gives_the_eager_image():
    import diffusers

    from fewstep.testing import tiny_controlnet

    net = torch.compile(diffusers.ControlNetModel.from_pretrained(tiny_controlnet("sd15")), fullgraph=True)
    pipe = fewstep.StableDiffusionControlNetPipeline.from_pretrained(tiny_pipeline("sd15"), controlnet=net,
                                                                     backend="torch")
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.controlnet).__name__ == "TorchControlNet" and pipe.controlnet.compiled
    assert pipe.controlnet.module is net._orig_mod  # the model's own weights, not a copy
    control = np.zeros((64, 64, 3), np.float32)
    control[16:48, 24:40] = 1.0
    before = graphs_compiled()
    image = run(pipe, image=control, height=64, width=64)
    assert graphs_compiled() > before, "nothing was compiled"
    err = np.abs(image - eager(pipe, "controlnet", image=control, height=64, width=64)).max()
    assert err <= ATOL, f"max |compiled - eager| = {err:.3g}"
    # the ControlNet matters: another control image gives another picture
    assert np.abs(image - run(pipe, image=1.0 - control, height=64, width=64)).max() > 1e-2


def test_compiling_a_component_fewstep_does_not_run_compiled_says_what_to_compile(compiled_sd):
    pipe = compiled_sd[0]
    encoder = pipe.text_encoder
    with pytest.raises(ValueError, match=r"^fewstep does not run a compiled TorchTextEncoder; compile the UNet"):
        pipe.text_encoder = torch.compile(encoder)
    assert pipe.text_encoder is encoder


def test_pipe_compile_and_generate_compile_give_the_eager_image(tmp_path):
    """`pipe.compile()` compiles what the call runs (the UNet and the VAE decoder here), and `fewstep generate
    --compile` writes the picture an uncompiled run writes (PNG levels: at most one apart)."""
    import PIL.Image

    from fewstep.cli import main

    folder = tiny_pipeline("sd15")
    pipe = fewstep.StableDiffusionPipeline.from_pretrained(folder, backend="torch")
    pipe.set_progress_bar_config(disable=True)
    eager_image = run(pipe)
    assert pipe.compile(fullgraph=True) is pipe
    assert pipe.unet.compiled and "decode" in vars(pipe.vae)  # the decode compiled on the wrapper alone
    assert np.abs(run(pipe) - eager_image).max() <= ATOL
    with pytest.raises(TypeError, match=r"^TorchUNet\.compile takes keyword options .*, or None alone"):
        pipe.compile("max-autotune")
    assert pipe.compile(None) is pipe and not pipe.unet.compiled and "decode" not in vars(pipe.vae)

    base = ["generate", "a red fox in the snow", "--model", folder, "--steps", "2", "--seed", "3", "--width", "64",
            "--height", "64"]
    assert main(base + ["-o", str(tmp_path / "eager.png")]) == 0
    torch._dynamo.reset()  # dynamo would reuse the code compiled above for the same wrapper class and shapes
    before = graphs_compiled()
    assert main(base + ["--compile", "-o", str(tmp_path / "compiled.png")]) == 0
    assert graphs_compiled() > before, "--compile compiled nothing"
    eager_png, compiled_png = (np.asarray(PIL.Image.open(tmp_path / f"{n}.png"), dtype=np.int16)
                               for n in ("eager", "compiled"))
    assert np.abs(eager_png - compiled_png).max() <= 1
