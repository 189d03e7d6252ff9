"""DiffusionPipeline.from_pretrained and the AutoPipelines pick the right fewstep class for every
folder kind on both backends; from_pipe shares the loaded weights."""

import json

import pytest

import fewstep
from fewstep import pipelines
from fewstep.testing import KINDS, tiny_controlnet, tiny_pipeline, tiny_t2i_adapter

EXPECTED = {"sd15": "StableDiffusionPipeline", "sd21": "StableDiffusionPipeline", "sd21-v": "StableDiffusionPipeline",
            "sdxl": "StableDiffusionXLPipeline", "sd15-inpaint": "StableDiffusionInpaintPipeline",
            "sdxl-inpaint": "StableDiffusionXLInpaintPipeline"}
AUTO = {  # (folder kind, AutoPipeline) -> class
    ("sd15", "AutoPipelineForText2Image"): "StableDiffusionPipeline",
    ("sd15", "AutoPipelineForImage2Image"): "StableDiffusionImg2ImgPipeline",
    ("sd15", "AutoPipelineForInpainting"): "StableDiffusionInpaintPipeline",
    ("sd15-inpaint", "AutoPipelineForText2Image"): "StableDiffusionPipeline",
    ("sdxl", "AutoPipelineForImage2Image"): "StableDiffusionXLImg2ImgPipeline",
    ("sdxl", "AutoPipelineForInpainting"): "StableDiffusionXLInpaintPipeline",
    ("sdxl-inpaint", "AutoPipelineForText2Image"): "StableDiffusionXLPipeline",
}


@pytest.fixture(scope="module")
def adapter_folders(tmp_path_factory):
    """ControlNet and T2I-Adapter pipeline folders as diffusers' save_pretrained writes them."""
    import diffusers

    root = tmp_path_factory.mktemp("adapter-pipelines")
    folders = {}
    for kind, cls, name, loader, part in (
            ("sd15", "StableDiffusionControlNetPipeline", "controlnet", diffusers.ControlNetModel, tiny_controlnet),
            ("sdxl", "StableDiffusionXLControlNetPipeline", "controlnet", diffusers.ControlNetModel, tiny_controlnet),
            ("sd15", "StableDiffusionAdapterPipeline", "adapter", diffusers.T2IAdapter, tiny_t2i_adapter),
            ("sdxl", "StableDiffusionXLAdapterPipeline", "adapter", diffusers.T2IAdapter, tiny_t2i_adapter)):
        extra = {} if kind == "sdxl" else dict(safety_checker=None, requires_safety_checker=False)
        pipe = getattr(diffusers, cls).from_pretrained(tiny_pipeline(kind), **{name: loader.from_pretrained(part(kind))},
                                                       **extra)
        pipe.save_pretrained(root / cls)
        folders[cls] = str(root / cls)
    return folders


@pytest.mark.torch
@pytest.mark.parametrize("backend", ["torch", pytest.param("mindspore", marks=pytest.mark.mindspore)])
def test_diffusion_pipeline_picks_the_class_of_every_folder(backend, adapter_folders):
    for kind in KINDS:
        pipe = fewstep.DiffusionPipeline.from_pretrained(tiny_pipeline(kind), backend=backend)
        assert type(pipe).__name__ == EXPECTED[kind], kind
        assert pipe.ops.name == backend
    for cls, folder in adapter_folders.items():
        pipe = fewstep.DiffusionPipeline.from_pretrained(folder, backend=backend)
        assert type(pipe).__name__ == cls
        part = pipe.controlnet if hasattr(pipe, "controlnet") else pipe.adapter
        assert part.module.__class__.__module__.startswith("mindone" if backend == "mindspore" else "diffusers")


@pytest.mark.torch
@pytest.mark.parametrize("backend", ["torch", pytest.param("mindspore", marks=pytest.mark.mindspore)])
def test_auto_pipelines_map_as_diffusers(backend):
    for (kind, auto), expected in AUTO.items():
        pipe = getattr(fewstep, auto).from_pretrained(tiny_pipeline(kind), backend=backend)
        assert type(pipe).__name__ == expected, (kind, auto)
    controlnet = fewstep.ControlNetModel.from_pretrained(tiny_controlnet("sdxl"), backend=backend)
    pipe = fewstep.AutoPipelineForText2Image.from_pretrained(tiny_pipeline("sdxl"), backend=backend, controlnet=controlnet)
    assert type(pipe) is pipelines.StableDiffusionXLControlNetPipeline and pipe.controlnet is controlnet


@pytest.mark.torch
def test_controlnet_folder_and_auto_pipeline_without_a_controlnet(adapter_folders):
    folder = adapter_folders["StableDiffusionControlNetPipeline"]
    assert type(fewstep.AutoPipelineForText2Image.from_pretrained(folder)) is pipelines.StableDiffusionControlNetPipeline
    assert type(fewstep.AutoPipelineForText2Image.from_pretrained(folder, controlnet=None)) is pipelines.StableDiffusionPipeline
    # diffusers' AutoPipelineForImage2Image keeps the ControlNet too (refused before issue 25)
    assert type(fewstep.AutoPipelineForImage2Image.from_pretrained(folder)) is \
        pipelines.StableDiffusionControlNetImg2ImgPipeline
    with pytest.raises(ValueError, match="no img2img pipeline for SD with adapter"):
        fewstep.AutoPipelineForImage2Image.from_pretrained(adapter_folders["StableDiffusionAdapterPipeline"])


@pytest.mark.torch
def test_from_pipe_shares_the_weights():
    base = pipelines.StableDiffusionPipeline.from_pretrained(tiny_pipeline("sd15"))
    img2img = fewstep.AutoPipelineForImage2Image.from_pipe(base)
    controlnet = fewstep.ControlNetModel.from_pretrained(tiny_controlnet("sd15"))
    control = pipelines.StableDiffusionControlNetPipeline.from_pipe(base, controlnet=controlnet)
    back = fewstep.AutoPipelineForText2Image.from_pipe(control, controlnet=None)
    assert type(img2img) is pipelines.StableDiffusionImg2ImgPipeline and type(back) is pipelines.StableDiffusionPipeline
    for pipe in (img2img, control, back):
        for name in ("unet", "vae", "text_encoder"):
            ours, theirs = getattr(pipe, name).module, getattr(base, name).module
            assert ours is theirs
            for p, q in zip(ours.parameters(), theirs.parameters()):
                assert p.data_ptr() == q.data_ptr()
        assert pipe.tokenizer is base.tokenizer
    with pytest.raises(ValueError, match="needs \\['controlnet'\\]"):
        pipelines.StableDiffusionControlNetPipeline.from_pipe(base)


def test_unknown_pipeline_class_lists_what_fewstep_runs(tmp_path):
    folder = tmp_path / "flux"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match="FluxPipeline, which fewstep does not run.*StableDiffusionXLControlNetPipeline"):
        fewstep.DiffusionPipeline.from_pretrained(str(folder))
    with pytest.raises(ValueError, match="FluxPipeline"):
        fewstep.AutoPipelineForText2Image.from_pretrained(str(folder))
