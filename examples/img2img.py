"""Image-to-image with TCD: start from a picture, re-draw it in a few steps, on torch or MindSpore.

    python examples/img2img.py                                # tiny demo model and a generated picture
    python examples/img2img.py --model stabilityai/stable-diffusion-xl-base-1.0 \
        --lora h1t/TCD-SDXL-LoRA --image photo.png --strength 0.5 -o out.png
"""

import fewstep
from fewstep.pipelines import StableDiffusionXLImg2ImgPipeline

from conditioning import example_parser, native_size, picture, pipeline_folder, save, demo_picture

parser = example_parser("SDXL img2img with TCD.", model="stabilityai/stable-diffusion-xl-base-1.0",
                        lora="h1t/TCD-SDXL-LoRA", prompt="a watercolor painting of a mountain lake at sunrise",
                        eta=0.3, output="img2img.png")
parser.add_argument("--image", help="the picture to start from (default: a generated test picture)")
parser.add_argument("--strength", type=float, default=0.5, help="how much to change: 0 keeps the image, 1 ignores it")
args = parser.parse_args()

pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(pipeline_folder(args, "sdxl"), backend=args.backend)
pipe.scheduler = fewstep.TCDScheduler.from_config(pipe.scheduler.config)
if args.lora:
    pipe.load_lora_weights(args.lora)
    pipe.fuse_lora()

init_image = picture(args.image) if args.image else demo_picture(native_size(pipe))  # at the model's size

image = pipe(
    prompt=args.prompt,
    image=init_image,
    strength=args.strength,  # runs int(steps * strength) of the steps
    num_inference_steps=args.steps,
    guidance_scale=0,
    eta=args.eta,
    generator=fewstep.Generator(args.seed),
).images[0]
save(image, args)
