"""Shared inputs for the combination pipelines (issue 25 item 3): which class, which tiny folder and parts,
which call, and what the image must differ from. See /work/notes/combos.md for diffusers' semantics.

A combination is (class name) -> Combo: the tiny pipeline folder, the parts passed to from_pretrained
({keyword: (kind of part, folder or [folders])}), the schedules to run and the call arguments. Loading and
running both sides (fewstep on torch or MindSpore, diffusers, mindone) lives here so that the torch and the
MindSpore test files share the loaded pipelines (module-level cache `_loaded`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import PIL.ImageOps

from tests.pipeline_cases import SIZE, mask, picture

PROMPT = "a red fox in the snow"
INIT, CONTROL, CONTROL_2, MASK = picture(3), picture(7), picture(8), mask()
FRAMES = 4
VIDEO = [picture(20 + i) for i in range(FRAMES)]
VIDEO_2 = [PIL.ImageOps.invert(frame) for frame in VIDEO]  # far from VIDEO, so the input must show
CONDITIONING_FRAMES = [picture(10 + i) for i in range(FRAMES)]
STEPS = 4        # image classes: strength 0.75 keeps 3 of them (an SD-style cut that is not a no-op)
VIDEO_STEPS = 2  # video classes: the motion UNet costs frames x an image step

# (scheduler, eta, guidance_scale, negative_prompt): TCD stochastic with CFG, LCM without.
TCD_CFG = ("tcd", 0.3, 1.5, "blurry")
LCM_PLAIN = ("lcm", 0.0, 0.0, None)
SCHEDULES = (TCD_CFG, LCM_PLAIN)
# diffusers' LCM pipelines pass eta=None to scheduler.step (prepare_extra_step_kwargs(generator, None)), so
# TCDScheduler fails there (`assert 0 <= eta` on None: TypeError) and only LCMScheduler can be compared.
# No CFG (always off), guidance goes through the w-embedding: 8.5 is their default.
LCM_ONLY = (("lcm", 0.0, 8.5, None),)


@dataclass
class Combo:
    kind: str                       # tiny pipeline kind, for the plain pipeline and the folder
    folder: Callable[[], str]       # the pipeline folder to load
    parts: dict                     # {from_pretrained keyword: (part kind, folder or list of folders)}
    video: bool = False
    steps: int = STEPS
    schedules: tuple = SCHEDULES
    # per schedule index: the class-specific call arguments
    inputs: Callable[[int], dict] = lambda i: {}
    plain: Optional[str] = None     # fewstep class the image must differ from (> MIN_EFFECT)
    plain_drop: tuple = ()          # arguments the plain class does not take
    plain_extra: dict = field(default_factory=dict)


def _tiny(kind):
    from fewstep.testing import tiny_pipeline

    return lambda: tiny_pipeline(kind)


def _controlnet(kind):
    from fewstep.testing import tiny_controlnet

    return "controlnet", ("controlnet", tiny_controlnet(kind))


def _motion(xl=False):
    from fewstep.testing import tiny_motion_adapter, tiny_sdxl_motion_adapter

    return "motion_adapter", ("motion_adapter", tiny_sdxl_motion_adapter() if xl else tiny_motion_adapter())


def _multi_folder(kind):
    from fewstep.testing import tiny_multi_adapter_pipeline

    return lambda: tiny_multi_adapter_pipeline(kind)


def _lcm_folder():
    from fewstep.testing import tiny_lcm_pipeline

    return tiny_lcm_pipeline()


def _parts_controlnet(kind):
    return lambda: dict([_controlnet(kind)])


CONTROL_ONLY = ("control_image", "controlnet_conditioning_scale", "height", "width")

COMBOS = {
    # strength 0.75 of 4 steps -> the last 3 timesteps; one VAE posterior draw, then the noise
    "StableDiffusionControlNetImg2ImgPipeline": Combo(
        "sd15", _tiny("sd15"), _parts_controlnet("sd15"),
        inputs=lambda i: dict(image=INIT, control_image=CONTROL, strength=0.75,
                              controlnet_conditioning_scale=(0.8, 0.5)[i], height=SIZE, width=SIZE),
        plain="StableDiffusionImg2ImgPipeline", plain_drop=CONTROL_ONLY),
    # TCD: strength 1.0 (default: pure noise, VAE draws for the blend and the masked image);
    # LCM: 0.75 (init + noise). The control image is passed as is (no masking by the pipeline).
    "StableDiffusionControlNetInpaintPipeline": Combo(
        "sd15", _tiny("sd15"), _parts_controlnet("sd15"),
        inputs=lambda i: dict(image=INIT, mask_image=MASK, control_image=CONTROL, height=SIZE, width=SIZE,
                              controlnet_conditioning_scale=0.8, **({} if i == 0 else dict(strength=0.75))),
        plain="StableDiffusionInpaintPipeline", plain_drop=("control_image", "controlnet_conditioning_scale")),
    "StableDiffusionXLControlNetImg2ImgPipeline": Combo(
        "sdxl", _tiny("sdxl"), _parts_controlnet("sdxl"),
        inputs=lambda i: dict(image=INIT, control_image=CONTROL, strength=0.75, height=SIZE, width=SIZE,
                              controlnet_conditioning_scale=(0.8, 0.5)[i]),
        plain="StableDiffusionXLImg2ImgPipeline", plain_drop=CONTROL_ONLY),
    # TCD: strength 0.75; LCM: the default 0.9999 (int(4 * 0.9999) = 3 steps, init + noise)
    "StableDiffusionXLControlNetInpaintPipeline": Combo(
        "sdxl", _tiny("sdxl"), _parts_controlnet("sdxl"),
        inputs=lambda i: dict(image=INIT, mask_image=MASK, control_image=CONTROL, height=SIZE, width=SIZE,
                              controlnet_conditioning_scale=0.8, **(dict(strength=0.75) if i == 0 else {})),
        plain="StableDiffusionXLInpaintPipeline", plain_drop=("control_image", "controlnet_conditioning_scale")),
    # A folder diffusers saved with a MultiAdapter (adapter/, adapter_1/); the scale list is the weights.
    # Plain: the first adapter alone at its weight, so the second adapter must show.
    "StableDiffusionAdapterPipeline": Combo(
        "sd15", _multi_folder("sd15"), lambda: {},
        inputs=lambda i: dict(image=[CONTROL, CONTROL_2], adapter_conditioning_scale=[(0.5, 0.8), (0.8, 0.4)][i],
                              height=SIZE, width=SIZE)),
    "StableDiffusionXLAdapterPipeline": Combo(
        "sdxl", _multi_folder("sdxl"), lambda: {},
        inputs=lambda i: dict(image=[CONTROL, CONTROL_2], adapter_conditioning_scale=[(0.5, 0.8), (0.8, 0.4)][i],
                              adapter_conditioning_factor=(1.0, 0.5)[i], height=SIZE, width=SIZE)),
    # The ControlNet runs on the (CFG x frames) batch with one control image per frame.
    "AnimateDiffControlNetPipeline": Combo(
        "sd15", _tiny("sd15"), lambda: dict([_motion(), _controlnet("sd15")]), video=True, steps=VIDEO_STEPS,
        inputs=lambda i: dict(num_frames=FRAMES, conditioning_frames=CONDITIONING_FRAMES, height=SIZE, width=SIZE,
                              controlnet_conditioning_scale=(0.8, 0.5)[i]),
        plain="AnimateDiffPipeline", plain_drop=("conditioning_frames", "controlnet_conditioning_scale")),
    # strength 0.5 of 4 steps (2 run, not set_begin_index'd); frames encoded by the VAE, then the noise
    # drawn in (b, f, c, h, w) order
    "AnimateDiffVideoToVideoPipeline": Combo(
        "sd15", _tiny("sd15"), lambda: dict([_motion()]), video=True, steps=4,
        inputs=lambda i: dict(video=VIDEO, strength=0.5, height=SIZE, width=SIZE)),
    "AnimateDiffSDXLPipeline": Combo(
        "sdxl", _tiny("sdxl"), lambda: dict([_motion(xl=True)]), video=True, steps=VIDEO_STEPS,
        inputs=lambda i: dict(num_frames=FRAMES, height=SIZE, width=SIZE)),
    "LatentConsistencyModelPipeline": Combo(
        "sd15", _lcm_folder, lambda: {}, schedules=LCM_ONLY,
        inputs=lambda i: dict(height=SIZE, width=SIZE)),
    # strength goes into LCMScheduler.set_timesteps: 2 steps at 0.8 run [799, 399]. Plain: SD Img2Img on the
    # same LCM folder cuts [999, 499] to [499] (one step), so the images differ.
    "LatentConsistencyModelImg2ImgPipeline": Combo(
        "sd15", _lcm_folder, lambda: {}, schedules=LCM_ONLY, steps=2,
        inputs=lambda i: dict(image=INIT, strength=0.8),
        plain="StableDiffusionImg2ImgPipeline"),
}
NAMES = list(COMBOS)
LCM_IMG2IMG_TIMESTEPS = [799, 399]

_loaded = {}


def call_kwargs(name: str, index: int) -> dict:
    """The full call for schedule `index` of combination `name` (no generator)."""
    combo = COMBOS[name]
    scheduler, eta, guidance, negative = combo.schedules[index]
    kwargs = dict(prompt=PROMPT, num_inference_steps=combo.steps, guidance_scale=guidance, output_type="np",
                  **combo.inputs(index))
    if not name.startswith("LatentConsistency"):  # the LCM classes take neither
        kwargs["negative_prompt"] = negative
        if scheduler == "tcd":
            kwargs["eta"] = eta
    return kwargs


def output(result, video: bool):
    return np.asarray(result.frames if video else result.images)


def set_scheduler(pipe, scheduler: str, lib):
    pipe.scheduler = (lib.TCDScheduler if scheduler == "tcd" else lib.LCMScheduler).from_config(pipe.scheduler.config)


def _ours_part(part: str, folder, backend: str):
    import fewstep

    loader = {"controlnet": fewstep.ControlNetModel, "motion_adapter": fewstep.MotionAdapter,
              "adapter": fewstep.T2IAdapter}[part]
    if isinstance(folder, list):
        return [loader.from_pretrained(f, backend=backend) for f in folder]
    return loader.from_pretrained(folder, backend=backend)


def _ref_part(part: str, folder, lib):
    loader = {"controlnet": lib.ControlNetModel, "motion_adapter": lib.MotionAdapter, "adapter": lib.T2IAdapter}[part]
    if isinstance(folder, list):
        return [loader.from_pretrained(f) for f in folder]
    return loader.from_pretrained(folder)


def ours(name: str, scheduler: str, backend: str = "torch"):
    """fewstep's class `name` on `backend`, from the combination's folder and parts (cached)."""
    import fewstep
    from fewstep import pipelines

    key = ("ours", name, backend)
    if key not in _loaded:
        combo = COMBOS[name]
        parts = {kw: _ours_part(part, folder, backend) for kw, (part, folder) in combo.parts().items()}
        pipe = getattr(pipelines, name).from_pretrained(combo.folder(), backend=backend, **parts)
        pipe.set_progress_bar_config(disable=True)
        _loaded[key] = pipe
    pipe = _loaded[key]
    set_scheduler(pipe, scheduler, fewstep)
    return pipe


def reference(name: str, scheduler: str, lib_name: str = "diffusers"):
    """diffusers' (or mindone.diffusers') class `name` from the same folder and parts (cached)."""
    import importlib

    lib = importlib.import_module("mindone.diffusers" if lib_name == "mindone" else "diffusers")
    key = (lib_name, name)
    if key not in _loaded:
        combo = COMBOS[name]
        parts = {kw: _ref_part(part, folder, lib) for kw, (part, folder) in combo.parts().items()}
        has_checker = combo.kind == "sd15" and not combo.video  # SD 1.5 image classes take a safety checker
        extra = dict(safety_checker=None, requires_safety_checker=False) if has_checker else {}
        pipe = getattr(lib, name).from_pretrained(combo.folder(), **parts, **extra)
        pipe.set_progress_bar_config(disable=True)
        if combo.video and getattr(pipe.unet, "add_embedding", None) is not None:
            # diffusers' UNetMotionModel.from_unet2d (0.35.2 and 0.42, and mindone's port) does not copy SDXL's
            # add_embedding: it is left at its random init, so the reference would differ from itself run to
            # run; fewstep copies it from the UNet, and the reference here gets the same fix
            unet = lib.UNet2DConditionModel.from_pretrained(combo.folder(), subfolder="unet")
            if lib_name == "diffusers":
                pipe.unet.add_embedding.load_state_dict(unet.add_embedding.state_dict())
            else:
                import mindspore

                for mine, theirs in zip(pipe.unet.add_embedding.get_parameters(), unet.add_embedding.get_parameters()):
                    mine.set_data(mindspore.Tensor(theirs.asnumpy()))
        _loaded[key] = pipe
    pipe = _loaded[key]
    set_scheduler(pipe, scheduler, lib)
    return pipe


def plain(name: str, scheduler: str, backend: str = "torch"):
    """fewstep's plain class for combination `name`, from the combination's folder (cached)."""
    import fewstep
    from fewstep import pipelines

    combo = COMBOS[name]
    key = ("plain", combo.plain, combo.kind, backend, name.startswith("LatentConsistency"))
    if key not in _loaded:
        parts = {kw: _ours_part(part, folder, backend) for kw, (part, folder) in combo.parts().items()
                 if part == "motion_adapter"}
        pipe = getattr(pipelines, combo.plain).from_pretrained(combo.folder(), backend=backend, **parts)
        pipe.set_progress_bar_config(disable=True)
        _loaded[key] = pipe
    pipe = _loaded[key]
    set_scheduler(pipe, scheduler, fewstep)
    return pipe


def plain_kwargs(name: str, kwargs: dict) -> dict:
    combo = COMBOS[name]
    return {k: v for k, v in kwargs.items() if k not in combo.plain_drop} | combo.plain_extra
