"""Bad IP-Adapter input gets a ValueError naming the fix, with the pipeline unchanged."""

import numpy as np
import pytest

import fewstep
from fewstep import pipelines
from fewstep.testing import tiny_pipeline
from fewstep.testing.tiny_ip_adapter import IP_ADAPTER_FILES, tiny_ip_adapter
from tests.pipeline_cases import SIZE, picture

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def pipe():
    p = pipelines.StableDiffusionPipeline.from_pretrained(tiny_pipeline("sd15"))
    p.set_progress_bar_config(disable=True)
    return p


def _processors(p):
    return dict(p.unet.module.attn_processors)


def test_load_errors_leave_the_pipeline_unchanged(pipe, tmp_path):
    before = _processors(pipe)
    sub, name = IP_ADAPTER_FILES["sdxl"]["plain"]
    cases = [
        (lambda: pipe.load_ip_adapter(tiny_ip_adapter("sdxl"), subfolder=sub, weight_name=name),
         "made for another base model"),
        (lambda: pipe.load_ip_adapter(tiny_ip_adapter("sd15"), subfolder="models", weight_name="ip-adapter_sd15.safetensors",
                                      image_encoder_folder="no_encoder_here"), "No image encoder in .*image_encoder_folder="),
        (lambda: pipe.load_ip_adapter(tiny_ip_adapter("sd15"), subfolder="models", weight_name="ip-adapter_sd15.bin"),
         "not a safetensors file.*safetensors.torch.save_file"),
        (lambda: pipe.load_ip_adapter(str(tmp_path), subfolder="models", weight_name="missing.safetensors"),
         "No IP-Adapter file 'missing.safetensors'"),
    ]
    for action, message in cases:
        with pytest.raises(ValueError, match=message):
            action()
        assert _processors(pipe) == before and pipe._ip_state() is None and pipe.unet.module.encoder_hid_proj is None


def test_scale_and_call_errors(pipe):
    kwargs = dict(prompt="a fox", num_inference_steps=2, guidance_scale=0.0, height=SIZE, width=SIZE, output_type="np")
    with pytest.raises(ValueError, match="no IP-Adapter is loaded: call pipe.load_ip_adapter"):
        pipe(ip_adapter_image=picture(5), **kwargs)
    with pytest.raises(ValueError, match="No IP-Adapter is loaded"):
        pipe.set_ip_adapter_scale(0.5)
    sub, name = IP_ADAPTER_FILES["sd15"]["plain"]
    pipe.load_ip_adapter(tiny_ip_adapter("sd15"), subfolder=sub, weight_name=name)
    try:
        pipe.set_ip_adapter_scale(0.5)
        scales = [p.scale[:] for p in pipe.unet.module.attn_processors.values() if hasattr(p, "to_k_ip")]
        for bad, message in [([0.5, 0.5], "got 2 scales for 1 IP-Adapter"),
                             ({"up": {"block_9": [1.0]}}, "names up.block_9, which is not a block with attention.*block_1"),
                             ({"up": {"block_0": [1.0]}}, "names up.block_0"),
                             ({"down": {"block_0": [1.0, 1.0, 1.0]}}, "has 3 values; that block has 2"),
                             ({"middle": 1.0}, "keys are 'down', 'mid' and 'up'")]:
            with pytest.raises(ValueError, match=message):
                pipe.set_ip_adapter_scale(bad)
            assert [p.scale for p in pipe.unet.module.attn_processors.values() if hasattr(p, "to_k_ip")] == scales
        with pytest.raises(ValueError, match="either ip_adapter_image or ip_adapter_image_embeds"):
            pipe(ip_adapter_image=picture(5), ip_adapter_image_embeds=[np.zeros((1, 1, 32), np.float32)], **kwargs)
        with pytest.raises(ValueError, match="An IP-Adapter is loaded: pass ip_adapter_image="):
            pipe(**kwargs)
        with pytest.raises(ValueError, match="already loaded"):
            pipe.load_ip_adapter(tiny_ip_adapter("sd15"), subfolder=sub, weight_name=name)
    finally:
        pipe.unload_ip_adapter()


@pytest.mark.mindspore
def test_mindspore_load_error_names_the_file():
    ms_pipe = pipelines.StableDiffusionPipeline.from_pretrained(tiny_pipeline("sd15"), backend="mindspore")
    sub, name = IP_ADAPTER_FILES["sdxl"]["plus"]
    with pytest.raises(ValueError, match="another base model"):
        ms_pipe.load_ip_adapter(tiny_ip_adapter("sdxl"), subfolder=sub, weight_name=name)
    assert ms_pipe._ip_state() is None
    assert fewstep.get_backend("mindspore").name == "mindspore"
