"""Bad input to the combination classes of issue 25 (MultiAdapter, ControlNet img2img, AnimateDiff with a
ControlNet, video-to-video) gets one ValueError that names the fix, before any model runs."""

import numpy as np
import pytest

import fewstep
from fewstep import pipelines
from fewstep.testing import tiny_controlnet, tiny_motion_adapter, tiny_pipeline, tiny_t2i_adapter
from tests.adapter_cases import CONTROL, CONTROL_2

pytestmark = pytest.mark.torch

_cache = {}


def _pipe(name, **components):
    if name not in _cache:
        pipe = getattr(pipelines, name).from_pretrained(tiny_pipeline("sd15"), **components)
        pipe.set_progress_bar_config(disable=True)
        _cache[name] = pipe
    return _cache[name]


def _refused(pipe, message, **kwargs):
    """The call fails with `message` (one line) and the UNet never ran: no timesteps were set."""
    pipe.scheduler = fewstep.TCDScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match=message) as err:
        pipe("a red fox", num_inference_steps=2, output_type="np", **kwargs)
    assert "\n" not in str(err.value)
    assert pipe.scheduler.timesteps is None or len(np.asarray(pipe.scheduler.timesteps)) == 0 or \
        pipe.scheduler.num_inference_steps is None


def test_multi_adapter_needs_one_image_and_at_most_one_weight_per_adapter():
    adapters = [fewstep.T2IAdapter.from_pretrained(tiny_t2i_adapter("sd15", seed=s)) for s in (0, 1)]
    pipe = _pipe("StableDiffusionAdapterPipeline", adapter=adapters)
    _refused(pipe, r"^2 T2I-Adapters need 2 conditioning images in a list \(image=\), one per adapter; got 1\.$",
             image=CONTROL)
    _refused(pipe, r"^adapter_conditioning_scale has 3 entries for 2 T2I-Adapters; pass one number, or one per adapter\.$",
             image=[CONTROL, CONTROL_2], adapter_conditioning_scale=[0.5, 0.5, 0.5])
    _refused(pipe, r"^adapter_conditioning_scale must be a finite number; got nan\.",
             image=[CONTROL, CONTROL_2], adapter_conditioning_scale=[0.5, float("nan")])


def test_controlnet_img2img_needs_its_control_image_under_its_own_name():
    net = fewstep.ControlNetModel.from_pretrained(tiny_controlnet("sd15"))
    pipe = _pipe("StableDiffusionControlNetImg2ImgPipeline", controlnet=net)
    _refused(pipe, r"^This ControlNet pipeline needs control_image= \(the control image\)", image=CONTROL)
    with pytest.raises(TypeError, match=r"unexpected argument\(s\) \['conditioning_frames'\]"):
        pipe("a red fox", image=CONTROL, control_image=CONTROL, conditioning_frames=[CONTROL])


def test_animatediff_controlnet_needs_one_conditioning_frame_per_frame():
    net = fewstep.ControlNetModel.from_pretrained(tiny_controlnet("sd15"))
    motion = fewstep.MotionAdapter.from_pretrained(tiny_motion_adapter())
    pipe = _pipe("AnimateDiffControlNetPipeline", controlnet=net, motion_adapter=motion)
    _refused(pipe, r"^Conditioning video 0 has 2 frames for num_frames=4; pass one conditioning frame per frame\.$",
             num_frames=4, conditioning_frames=[CONTROL, CONTROL_2])
    _refused(pipe, r"^guess_mode with classifier-free guidance is not supported for video ControlNets",
             num_frames=2, conditioning_frames=[CONTROL, CONTROL_2], guess_mode=True, guidance_scale=2.0)


def test_video_to_video_needs_a_video():
    motion = fewstep.MotionAdapter.from_pretrained(tiny_motion_adapter())
    pipe = _pipe("AnimateDiffVideoToVideoPipeline", motion_adapter=motion)
    _refused(pipe, r"^AnimateDiffVideoToVideoPipeline needs video=: the frames to start from")
    _refused(pipe, r"^video= must be a non-empty list of frames", video=[])
    _refused(pipe, r"^video= must be a non-empty list of frames", video=[[CONTROL], [CONTROL, CONTROL_2]])
    _refused(pipe, r"^AnimateDiffVideoToVideoPipeline starts from video= \(a list of frames\); it takes no image= or "
             r"mask_image=\.$", video=[CONTROL], image=CONTROL)
