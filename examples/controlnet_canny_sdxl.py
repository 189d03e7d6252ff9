"""Canny ControlNet with TCD on SDXL, in 4 steps, on torch or MindSpore: the "Canny ControlNet" snippet of
diffusers' TCD-LoRA guide (using-diffusers/inference_with_tcd_lora.md, "Adapters" > "ControlNet").

The guide: stabilityai/stable-diffusion-xl-base-1.0 + diffusers/controlnet-canny-sdxl-1.0 + the TCD LoRA
h1t/TCD-SDXL-LoRA, TCDScheduler, a ready canny map (bird_canny.png), 4 steps, guidance_scale=0, eta=0.3,
controlnet_conditioning_scale=0.5. --image runs the guides' cv2.Canny on a picture instead.

    python examples/controlnet_canny_sdxl.py                  # tiny demo models and a generated picture
    python examples/controlnet_canny_sdxl.py --model stabilityai/stable-diffusion-xl-base-1.0 \
        --lora h1t/TCD-SDXL-LoRA --backend mindspore -o blue_bird.png --control-image \
        https://huggingface.co/datasets/hf-internal-testing/diffusers-images/resolve/main/sd_controlnet/bird_canny.png
"""

import fewstep
from fewstep.pipelines import StableDiffusionXLControlNetPipeline
from fewstep.testing import tiny_controlnet
from fewstep.utils import make_image_grid

from conditioning import canny, component, control_image, example_parser, native_size, pipeline_folder, save

parser = example_parser("SDXL canny ControlNet with TCD.", model="stabilityai/stable-diffusion-xl-base-1.0",
                        lora="h1t/TCD-SDXL-LoRA", prompt="ultrarealistic shot of a furry blue bird", eta=0.3,
                        output="controlnet_canny_sdxl.png", image=True)
parser.add_argument("--controlnet", help="ControlNet folder or hub id (default: diffusers/controlnet-canny-sdxl-1.0 "
                                         "with --model, else the tiny demo ControlNet)")
args = parser.parse_args()

model = pipeline_folder(args, "sdxl")
controlnet = fewstep.ControlNetModel.from_pretrained(
    component(args, args.controlnet, "diffusers/controlnet-canny-sdxl-1.0", lambda: tiny_controlnet("sdxl")),
    backend=args.backend)
pipe = StableDiffusionXLControlNetPipeline.from_pretrained(model, controlnet=controlnet, backend=args.backend)
pipe.scheduler = fewstep.TCDScheduler.from_config(pipe.scheduler.config)
if args.lora:
    pipe.load_lora_weights(args.lora)
    pipe.fuse_lora()

canny_image = control_image(args, canny, native_size(pipe))

image = pipe(
    args.prompt,
    image=canny_image,
    num_inference_steps=args.steps,
    guidance_scale=0,
    eta=args.eta,  # "gamma" in the paper: the stochasticity of each step
    controlnet_conditioning_scale=0.5,  # recommended for good generalization
    generator=fewstep.Generator(args.seed),  # the same noise as torch.manual_seed(seed), on either backend
).images[0]
save(make_image_grid([canny_image, image], rows=1, cols=2), args)
