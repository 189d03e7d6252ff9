"""Bad pipeline input gets a ValueError that says what to do."""

import shutil

import numpy as np
import pytest

import fewstep
from fewstep import pipelines
from fewstep.testing import tiny_pipeline
from tests.pipeline_cases import SIZE, mask, picture

pytestmark = pytest.mark.torch

_pipes = {}


def pipe(class_name="StableDiffusionPipeline", kind="sd15"):
    if (class_name, kind) not in _pipes:
        p = getattr(pipelines, class_name).from_pretrained(tiny_pipeline(kind), backend="torch")
        p.set_progress_bar_config(disable=True)
        _pipes[class_name, kind] = p
    return _pipes[class_name, kind]


def test_mask_count_not_matching_the_images():
    with pytest.raises(ValueError, match="mask_image holds 2 masks for 1 images"):
        pipe("StableDiffusionInpaintPipeline", "sd15-inpaint")("a cat", image=picture(0), mask_image=[mask(), mask()])


def test_strength_zero_and_above_one():
    for strength in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
            pipe("StableDiffusionImg2ImgPipeline")("a cat", image=picture(0), strength=strength)


def test_strength_too_small_for_the_steps():
    with pytest.raises(ValueError, match="leaves no step to run"):
        pipe("StableDiffusionImg2ImgPipeline")("a cat", image=picture(0), strength=0.1, num_inference_steps=4)


def test_size_not_divisible_by_the_vae_factor():
    with pytest.raises(ValueError, match="multiples of 2"):
        pipe()("a cat", height=63, width=64)


def test_generator_list_not_matching_the_prompts():
    with pytest.raises(ValueError, match="3 generators were passed for 2 images"):
        pipe()(["a cat", "a dog"], generator=[fewstep.Generator(i) for i in range(3)], num_inference_steps=1)


def test_prompt_and_prompt_embeds_together_or_neither():
    with pytest.raises(ValueError, match="either prompt or prompt_embeds"):
        pipe()("a cat", prompt_embeds=np.zeros((1, 77, 32), np.float32))
    with pytest.raises(ValueError, match="Pass a prompt"):
        pipe()()


def test_image_given_to_text_to_image_and_missing_from_img2img():
    with pytest.raises(ValueError, match="Img2Img or Inpaint"):
        pipe()("a cat", image=picture(0))
    with pytest.raises(ValueError, match="needs image="):
        pipe("StableDiffusionImg2ImgPipeline")("a cat")


@pytest.mark.mindspore
def test_tensor_of_the_other_framework():
    import mindspore as ms
    import torch

    latents = np.zeros((1, 4, SIZE // 2, SIZE // 2), np.float32)
    with pytest.raises(ValueError, match="mindspore tensor but this pipeline runs on torch"):
        pipe()("a cat", latents=ms.tensor(latents), num_inference_steps=1)
    ms_pipe = pipelines.StableDiffusionPipeline.from_pretrained(tiny_pipeline("sd15"), backend="mindspore")
    with pytest.raises(ValueError, match="torch tensor but this pipeline runs on mindspore"):
        ms_pipe("a cat", latents=torch.from_numpy(latents), num_inference_steps=1)


def test_folder_missing_a_component(tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_pipeline("sd15"), folder)
    shutil.rmtree(folder / "vae")
    with pytest.raises(ValueError, match="missing its 'vae' component"):
        pipelines.StableDiffusionPipeline.from_pretrained(str(folder), backend="torch")


def test_folder_without_model_index_and_unknown_hub_id(tmp_path):
    with pytest.raises(ValueError, match="no model_index.json"):
        pipelines.StableDiffusionPipeline.from_pretrained(str(tmp_path), backend="torch")
    with pytest.raises(ValueError, match="neither a local folder nor a hub repository"):
        pipelines.StableDiffusionPipeline.from_pretrained("no-such-user/no-such-model", backend="torch")


def test_sdxl_folder_in_sd_pipeline_is_refused(tmp_path):
    """An SD pipeline needs no text_encoder_2; loading an SD folder into SDXL fails naming it."""
    with pytest.raises(ValueError, match="missing its 'text_encoder_2' component"):
        pipelines.StableDiffusionXLPipeline.from_pretrained(tiny_pipeline("sd15"), backend="torch")
