"""Depth ControlNet with TCD on SDXL, in 4 steps, on torch or MindSpore: the "Depth ControlNet" snippet of
diffusers' TCD-LoRA guide (using-diffusers/inference_with_tcd_lora.md, "Adapters" > "ControlNet").

The guide: stabilityai/stable-diffusion-xl-base-1.0 + diffusers/controlnet-depth-sdxl-1.0 + the TCD LoRA
h1t/TCD-SDXL-LoRA, TCDScheduler, a depth map from Intel/dpt-hybrid-midas (its `get_depth_map`: DPT,
bicubic resize to 1024x1024, normalised to [0, 1], 3 channels), 4 steps, guidance_scale=0, eta=0.3,
controlnet_conditioning_scale=0.5.

    python examples/controlnet_depth_sdxl.py                  # tiny demo models and a generated picture
    python examples/controlnet_depth_sdxl.py --model stabilityai/stable-diffusion-xl-base-1.0 \
        --lora h1t/TCD-SDXL-LoRA --backend mindspore -o stormtrooper.png \
        --image https://huggingface.co/lllyasviel/sd-controlnet-depth/resolve/main/images/stormtrooper.png
"""

import fewstep
from fewstep.pipelines import StableDiffusionXLControlNetPipeline
from fewstep.testing import tiny_controlnet, tiny_dpt
from fewstep.utils import make_image_grid

from conditioning import component, control_image, depth_estimator, example_parser, native_size, pipeline_folder, save

parser = example_parser("SDXL depth ControlNet with TCD.", model="stabilityai/stable-diffusion-xl-base-1.0",
                        lora="h1t/TCD-SDXL-LoRA", prompt="stormtrooper lecture, photorealistic", eta=0.3,
                        output="controlnet_depth_sdxl.png", image=True)
parser.add_argument("--controlnet", help="ControlNet folder or hub id (default: diffusers/controlnet-depth-sdxl-1.0 "
                                         "with --model, else the tiny demo ControlNet)")
parser.add_argument("--depth-model", help="DPT depth estimator folder or hub id (default: Intel/dpt-hybrid-midas "
                                          "with --model, else a tiny random-weight DPT)")
args = parser.parse_args()

model = pipeline_folder(args, "sdxl")
controlnet = fewstep.ControlNetModel.from_pretrained(
    component(args, args.controlnet, "diffusers/controlnet-depth-sdxl-1.0", lambda: tiny_controlnet("sdxl")),
    backend=args.backend)
pipe = StableDiffusionXLControlNetPipeline.from_pretrained(model, controlnet=controlnet, backend=args.backend)
pipe.scheduler = fewstep.TCDScheduler.from_config(pipe.scheduler.config)
if args.lora:
    pipe.load_lora_weights(args.lora)
    pipe.fuse_lora()

get_depth_map = depth_estimator(component(args, args.depth_model, "Intel/dpt-hybrid-midas", tiny_dpt), args.backend)
size = native_size(pipe)
depth_image = control_image(args, lambda image: get_depth_map(image, size), size)

image = pipe(
    args.prompt,
    image=depth_image,
    num_inference_steps=args.steps,
    guidance_scale=0,
    eta=args.eta,  # "gamma" in the paper: the stochasticity of each step
    controlnet_conditioning_scale=0.5,  # recommended for good generalization
    generator=fewstep.Generator(args.seed),  # the same noise as torch.manual_seed(seed), on either backend
).images[0]
save(make_image_grid([depth_image, image], rows=1, cols=2), args)
