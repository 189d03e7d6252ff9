"""Inpainting with TCD: repaint the white part of a mask, as in diffusers' TCD-LoRA guide, on torch or MindSpore.

    python examples/inpainting.py                             # tiny demo model, generated picture and mask
    python examples/inpainting.py --model diffusers/stable-diffusion-xl-1.0-inpainting-0.1 \
        --lora h1t/TCD-SDXL-LoRA --image bench.png --mask bench_mask.png --steps 8 -o tiger.png
"""

import argparse

import numpy as np
from PIL import Image

import fewstep
from fewstep.pipelines import StableDiffusionXLInpaintPipeline

parser = argparse.ArgumentParser(description="SDXL inpainting with TCD.")
parser.add_argument("--model", help="SDXL inpainting folder or hub id (default: the tiny random-weight demo model)")
parser.add_argument("--lora", help="a TCD LoRA to fuse, e.g. h1t/TCD-SDXL-LoRA")
parser.add_argument("--backend", choices=("torch", "mindspore"), default="torch")
parser.add_argument("--image", help="the picture to repaint (default: a generated test picture)")
parser.add_argument("--mask", help="white = repaint, black = keep (default: a centre square)")
parser.add_argument("--prompt", default="a tiger sitting on a park bench")
parser.add_argument("--strength", type=float, default=0.99, help="keep it below 1.0, as the guide advises")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--steps", type=int, default=4)
parser.add_argument("--eta", type=float, default=0.3, help="TCD's gamma: 0 deterministic, more adds detail")
parser.add_argument("-o", "--output", default="inpainting.png")
args = parser.parse_args()

if args.model is None:
    from fewstep.testing import tiny_pipeline

    args.model = tiny_pipeline("sdxl-inpaint")
    print(f"No --model: using a tiny random-weight demo model ({args.model}); its images are noise.")

pipe = StableDiffusionXLInpaintPipeline.from_pretrained(args.model, backend=args.backend)
pipe.scheduler = fewstep.TCDScheduler.from_config(pipe.scheduler.config)
if args.lora:
    pipe.load_lora_weights(args.lora)
    pipe.fuse_lora()

size = pipe.unet.config["sample_size"] * pipe.vae_scale_factor  # the model's native size
if args.image:
    init_image = Image.open(args.image).convert("RGB").resize((size, size))
else:  # a colour gradient, so the example runs offline
    x, y = np.meshgrid(np.linspace(0, 255, size), np.linspace(0, 255, size))
    init_image = Image.fromarray(np.dstack([x, y, np.full_like(x, 128)]).astype(np.uint8))
if args.mask:
    mask_image = Image.open(args.mask).convert("L").resize((size, size))
else:  # repaint the centre square
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
    mask_image = Image.fromarray(mask)

image = pipe(
    prompt=args.prompt,
    image=init_image,
    mask_image=mask_image,
    num_inference_steps=args.steps,
    guidance_scale=0,
    eta=args.eta,
    strength=args.strength,  # below 1.0, so the masked area starts from the noised picture
    generator=fewstep.Generator(args.seed),
).images[0]
image.save(args.output)
print(f"wrote {args.output} ({image.width}x{image.height}, seed {args.seed}, {args.backend})")
