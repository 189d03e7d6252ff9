"""Bad adapter input gets a ValueError that names the fix, before anything is loaded or run."""

import pytest

import fewstep
from fewstep import pipelines
from fewstep.pipelines import loading
from fewstep.testing import tiny_controlnet, tiny_pipeline, tiny_t2i_adapter
from tests.adapter_cases import CONTROL, CONTROL_2

pytestmark = pytest.mark.torch

_cache = {}


def _sd_control(two=False):
    key = ("cn", two)
    if key not in _cache:
        nets = [fewstep.ControlNetModel.from_pretrained(tiny_controlnet("sd15", seed=s)) for s in ((0, 1) if two else (0,))]
        pipe = pipelines.StableDiffusionControlNetPipeline.from_pretrained(tiny_pipeline("sd15"),
                                                                           controlnet=nets if two else nets[0])
        pipe.set_progress_bar_config(disable=True)
        _cache[key] = pipe
    return _cache[key]


def test_controlnet_that_does_not_fit_the_unet_fails_at_construction():
    import diffusers

    xl = fewstep.ControlNetModel.from_pretrained(tiny_controlnet("sdxl"))
    with pytest.raises(ValueError, match="ControlNet 0 does not fit the UNet: its cross_attention_dim is 80"):
        pipelines.StableDiffusionControlNetPipeline.from_pretrained(tiny_pipeline("sd15"), controlnet=xl)
    wide = diffusers.ControlNetModel(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                     cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8,
                                     conditioning_embedding_out_channels=(16, 32))
    with pytest.raises(ValueError, match="block_out_channels is \\[32, 64\\], the UNet's \\[16, 32\\]"):
        pipelines.StableDiffusionControlNetPipeline.from_pretrained(tiny_pipeline("sd15"), controlnet=wide)


def test_sdxl_adapter_in_an_sd_pipeline_and_the_reverse():
    xl = fewstep.T2IAdapter.from_pretrained(tiny_t2i_adapter("sdxl"))
    with pytest.raises(ValueError, match="an SDXL T2I-Adapter \\(full_adapter_xl\\) but the UNet is SD 1.x"):
        pipelines.StableDiffusionAdapterPipeline.from_pretrained(tiny_pipeline("sd15"), adapter=xl)
    sd = fewstep.T2IAdapter.from_pretrained(tiny_t2i_adapter("sd15"))
    with pytest.raises(ValueError, match="full_adapter_xl"):
        pipelines.StableDiffusionXLAdapterPipeline.from_pretrained(tiny_pipeline("sdxl"), adapter=sd)


def test_unknown_component_keyword_fails_before_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a component was loaded before the bad keyword was reported")

    monkeypatch.setattr(loading, "load_components", refuse)
    adapter = object()
    with pytest.raises(ValueError, match="StableDiffusionControlNetPipeline has no component\\(s\\) \\['adapter'\\]"):
        pipelines.StableDiffusionControlNetPipeline.from_pretrained(tiny_pipeline("sd15"), adapter=adapter)
    with pytest.raises(ValueError, match="needs a 'controlnet'.*fewstep.ControlNetModel.from_pretrained"):
        monkeypatch.undo()
        pipelines.StableDiffusionControlNetPipeline.from_pretrained(tiny_pipeline("sd15"))


def test_call_argument_errors_name_the_fix():
    one, two = _sd_control(), _sd_control(two=True)
    base = dict(prompt="a fox", num_inference_steps=2, guidance_scale=0.0, output_type="np")
    cases = [
        (one, dict(), "needs image= \\(the control image\\)"),
        (one, dict(image="edges.png"), "Control image 0 is a str; pass a PIL image"),
        (one, dict(image=[CONTROL, CONTROL], prompt="a fox"), "holds 2 images for 1 prompts"),
        (two, dict(image=CONTROL), "2 ControlNets need 2 control images in a list"),
        (two, dict(image=[CONTROL]), "2 ControlNets need 2 control images.*got 1"),
        (two, dict(image=[CONTROL, CONTROL_2], controlnet_conditioning_scale=[0.5, 0.5, 0.5]),
         "controlnet_conditioning_scale has 3 entries for 2 ControlNet"),
        (one, dict(image=CONTROL, control_guidance_start=0.5, control_guidance_end=0.5), "0 <= start < end <= 1"),
        (one, dict(image=CONTROL, control_guidance_start=-0.1), "0 <= start < end <= 1"),
        (one, dict(image=CONTROL, control_guidance_end=1.5), "0 <= start < end <= 1"),
        (two, dict(image=[CONTROL, CONTROL_2], control_guidance_end=[1.0]), "control_guidance_end has 1 entries"),
    ]
    for pipe, extra, message in cases:
        with pytest.raises(ValueError, match=message):
            pipe(**{**base, **extra})
    with pytest.raises(TypeError, match="unexpected argument\\(s\\) \\['adapter_conditioning_scale'\\]"):
        one(**base, image=CONTROL, adapter_conditioning_scale=0.5)


def test_adapter_call_errors():
    pipe = pipelines.StableDiffusionAdapterPipeline.from_pretrained(
        tiny_pipeline("sd15"), adapter=fewstep.T2IAdapter.from_pretrained(tiny_t2i_adapter("sd15")))
    base = dict(prompt="a fox", num_inference_steps=2, guidance_scale=0.0, output_type="np")
    with pytest.raises(ValueError, match="needs image=: the adapter's conditioning image"):
        pipe(**base)
    with pytest.raises(ValueError, match="adapter_conditioning_factor is the share of steps"):
        pipe(**base, image=CONTROL, adapter_conditioning_factor=2.0)
    with pytest.raises(ValueError, match="adapter image is a int"):
        pipe(**base, image=3)


@pytest.mark.mindspore
def test_component_of_the_other_backend_is_refused():
    ms_net = fewstep.ControlNetModel.from_pretrained(tiny_controlnet("sd15"), backend="mindspore")
    with pytest.raises(ValueError, match="'controlnet' component is a mindspore model but this pipeline runs on torch"):
        pipelines.StableDiffusionControlNetPipeline.from_pretrained(tiny_pipeline("sd15"), backend="torch",
                                                                    controlnet=ms_net)


def test_model_loader_errors(tmp_path):
    with pytest.raises(ValueError, match="holds a UNet2DConditionModel, not a ControlNetModel"):
        fewstep.ControlNetModel.from_pretrained(tiny_pipeline("sd15"), subfolder="unet")
    with pytest.raises(ValueError, match="has no config.json.*subfolder="):
        fewstep.UNet2DConditionModel.from_pretrained(tiny_pipeline("sd15"))
    with pytest.raises(TypeError, match="from_pretrained"):
        fewstep.ControlNetModel()
