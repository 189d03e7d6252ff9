"""Inpainting with TCD: repaint the white part of a mask, as in diffusers' TCD-LoRA guide, on torch or MindSpore.

    python examples/inpainting.py                             # tiny demo model, generated picture and mask
    python examples/inpainting.py --model diffusers/stable-diffusion-xl-1.0-inpainting-0.1 \
        --lora h1t/TCD-SDXL-LoRA --image bench.png --mask bench_mask.png --steps 8 -o tiger.png
"""

import numpy as np
from PIL import Image

import fewstep
from fewstep.pipelines import StableDiffusionXLInpaintPipeline
from fewstep.utils import load_image

from conditioning import example_parser, native_size, picture, pipeline_folder, save, demo_picture

parser = example_parser("SDXL inpainting with TCD.", model="diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
                        lora="h1t/TCD-SDXL-LoRA", prompt="a tiger sitting on a park bench", eta=0.3,
                        output="inpainting.png")
parser.add_argument("--image", help="the picture to repaint (default: a generated test picture)")
parser.add_argument("--mask", help="white = repaint, black = keep (default: a centre square)")
parser.add_argument("--strength", type=float, default=0.99, help="keep it below 1.0, as the guide advises")
args = parser.parse_args()

pipe = StableDiffusionXLInpaintPipeline.from_pretrained(pipeline_folder(args, "sdxl-inpaint"), backend=args.backend)
pipe.scheduler = fewstep.TCDScheduler.from_config(pipe.scheduler.config)
if args.lora:
    pipe.load_lora_weights(args.lora)
    pipe.fuse_lora()

size = native_size(pipe)
init_image = picture(args.image, size) if args.image else demo_picture(size)
if args.mask:
    mask_image = load_image(args.mask, convert_method=lambda im: im.convert("L")).resize((size, size))
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
save(image, args)
