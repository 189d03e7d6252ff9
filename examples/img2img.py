"""Image-to-image with TCD: start from a picture, re-draw it in a few steps, on torch or MindSpore.

    python examples/img2img.py                                # tiny demo model and a generated picture
    python examples/img2img.py --model stabilityai/stable-diffusion-xl-base-1.0 \
        --lora h1t/TCD-SDXL-LoRA --image photo.png --strength 0.5 -o out.png
"""

import argparse

import numpy as np
from PIL import Image

import fewstep
from fewstep.pipelines import StableDiffusionXLImg2ImgPipeline

parser = argparse.ArgumentParser(description="SDXL img2img with TCD.")
parser.add_argument("--model", help="SDXL pipeline folder or hub id (default: the tiny random-weight demo model)")
parser.add_argument("--lora", help="a TCD LoRA to fuse, e.g. h1t/TCD-SDXL-LoRA")
parser.add_argument("--backend", choices=("torch", "mindspore"), default="torch")
parser.add_argument("--image", help="the picture to start from (default: a generated test picture)")
parser.add_argument("--prompt", default="a watercolor painting of a mountain lake at sunrise")
parser.add_argument("--strength", type=float, default=0.5, help="how much to change: 0 keeps the image, 1 ignores it")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--steps", type=int, default=4)
parser.add_argument("--eta", type=float, default=0.3, help="TCD's gamma: 0 deterministic, more adds detail")
parser.add_argument("-o", "--output", default="img2img.png")
args = parser.parse_args()

if args.model is None:
    from fewstep.testing import tiny_pipeline

    args.model = tiny_pipeline("sdxl")
    print(f"No --model: using a tiny random-weight demo model ({args.model}); its images are noise.")

pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(args.model, backend=args.backend)
pipe.scheduler = fewstep.TCDScheduler.from_config(pipe.scheduler.config)
if args.lora:
    pipe.load_lora_weights(args.lora)
    pipe.fuse_lora()

if args.image:
    init_image = Image.open(args.image).convert("RGB")
else:  # a colour gradient at the model's native size, so the example runs offline
    size = pipe.unet.config["sample_size"] * pipe.vae_scale_factor
    x, y = np.meshgrid(np.linspace(0, 255, size), np.linspace(0, 255, size))
    init_image = Image.fromarray(np.dstack([x, y, np.full_like(x, 128)]).astype(np.uint8))

image = pipe(
    prompt=args.prompt,
    image=init_image,
    strength=args.strength,  # runs int(steps * strength) of the steps
    num_inference_steps=args.steps,
    guidance_scale=0,
    eta=args.eta,
    generator=fewstep.Generator(args.seed),
).images[0]
image.save(args.output)
print(f"wrote {args.output} ({image.width}x{image.height}, seed {args.seed}, {args.backend})")
