"""Shared inputs for the adapter tests: which pipelines, which models, which calls.

Each case is (fewstep/diffusers pipeline class, tiny kind, component builder, call cases). The tiny
ControlNets and T2I-Adapters have their zero-initialised layers randomised, so an adapter that is
dropped changes the image and the tests see it.
"""

from __future__ import annotations

from tests.pipeline_cases import SIZE, picture

PROMPT = "a red fox in the snow"
CONTROL = picture(7)        # the control / conditioning image, at the output size
CONTROL_2 = picture(8)

# (scheduler, eta, guidance_scale, negative_prompt, extension arguments)
CONTROLNET_CASES = [
    ("tcd", 0.3, 0.0, None, dict(controlnet_conditioning_scale=0.5)),
    ("lcm", 0.0, 1.5, "blurry", dict(controlnet_conditioning_scale=0.8, control_guidance_end=0.5)),
    ("tcd", 0.3, 1.5, "blurry", dict(controlnet_conditioning_scale=0.8, guess_mode=True)),
]
MULTI_CONTROLNET_CASES = [
    ("tcd", 0.3, 0.0, None, dict(controlnet_conditioning_scale=[0.5, 0.8], control_guidance_end=[1.0, 0.5])),
    ("lcm", 0.0, 1.5, "blurry", dict(controlnet_conditioning_scale=[0.8, 0.5], control_guidance_start=[0.0, 0.5])),
]
ADAPTER_CASES = [  # diffusers' SD adapter pipeline has no adapter_conditioning_factor (always on)
    ("tcd", 0.3, 0.0, None, dict(adapter_conditioning_scale=0.8)),
    ("lcm", 0.0, 1.5, "blurry", dict(adapter_conditioning_scale=0.5)),
]
XL_ADAPTER_CASES = [
    ("tcd", 0.3, 0.0, None, dict(adapter_conditioning_scale=0.8, adapter_conditioning_factor=1.0)),
    ("lcm", 0.0, 1.5, "blurry", dict(adapter_conditioning_scale=0.5, adapter_conditioning_factor=0.5)),
]

# (pipeline class, tiny kind, what the pipeline takes: "controlnet", "controlnets" (two), "adapter" or "adapter_xl")
ADAPTER_PIPELINES = [
    ("StableDiffusionControlNetPipeline", "sd15", "controlnet"),
    ("StableDiffusionXLControlNetPipeline", "sdxl", "controlnet"),
    ("StableDiffusionXLControlNetPipeline", "sdxl", "controlnets"),
    ("StableDiffusionAdapterPipeline", "sd15", "adapter"),
    ("StableDiffusionXLAdapterPipeline", "sdxl", "adapter_xl"),
]
PLAIN = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}


def cases_for(what: str):
    return {"controlnet": CONTROLNET_CASES, "controlnets": MULTI_CONTROLNET_CASES, "adapter": ADAPTER_CASES,
            "adapter_xl": XL_ADAPTER_CASES}[what]


def control_image(what: str):
    return [CONTROL, CONTROL_2] if what == "controlnets" else CONTROL


def call_kwargs(what: str, scheduler: str, eta: float, guidance: float, negative, extra: dict) -> dict:
    kwargs = dict(prompt=PROMPT, image=control_image(what), num_inference_steps=4, guidance_scale=guidance,
                  negative_prompt=negative, output_type="np", height=SIZE, width=SIZE, **extra)
    if scheduler == "tcd":
        kwargs["eta"] = eta
    return kwargs


def component_folders(kind: str, what: str):
    """{component keyword: folder or list of folders} for one adapter pipeline case."""
    from fewstep.testing import tiny_controlnet, tiny_t2i_adapter

    if what.startswith("adapter"):
        return {"adapter": tiny_t2i_adapter(kind)}
    if what == "controlnets":
        return {"controlnet": [tiny_controlnet(kind), tiny_controlnet(kind, seed=1)]}
    return {"controlnet": tiny_controlnet(kind)}


def case_ids(pipelines):
    return [f"{c}-{k}-{w}" for c, k, w in pipelines]
