"""Text-to-image with TCD in 4 steps: the first snippet of diffusers' TCD-LoRA guide, on torch or MindSpore.

    python examples/text_to_image.py                          # tiny random-weight demo model, offline
    python examples/text_to_image.py --model stabilityai/stable-diffusion-xl-base-1.0 \
        --lora h1t/TCD-SDXL-LoRA --backend mindspore -o cat.png
"""

import argparse

import fewstep
from fewstep.pipelines import StableDiffusionXLPipeline

PROMPT = ("Painting of the orange cat Otto von Garfield, Count of Bismarck-Schönhausen, Duke of Lauenburg, "
          "Minister-President of Prussia. Depicted wearing a Prussian Pickelhaube and eating his favorite meal "
          "- lasagna.")

parser = argparse.ArgumentParser(description="SDXL text-to-image with TCD.")
parser.add_argument("--model", help="SDXL pipeline folder or hub id (default: the tiny random-weight demo model)")
parser.add_argument("--lora", help="a TCD LoRA to fuse, e.g. h1t/TCD-SDXL-LoRA")
parser.add_argument("--backend", choices=("torch", "mindspore"), default="torch")
parser.add_argument("--prompt", default=PROMPT)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--steps", type=int, default=4)
parser.add_argument("--eta", type=float, default=0.3, help="TCD's gamma: 0 deterministic, more adds detail")
parser.add_argument("-o", "--output", default="text_to_image.png")
args = parser.parse_args()

if args.model is None:
    from fewstep.testing import tiny_pipeline

    args.model = tiny_pipeline("sdxl")
    print(f"No --model: using a tiny random-weight demo model ({args.model}); its images are noise.")

pipe = StableDiffusionXLPipeline.from_pretrained(args.model, backend=args.backend)
pipe.scheduler = fewstep.TCDScheduler.from_config(pipe.scheduler.config)
if args.lora:
    pipe.load_lora_weights(args.lora)
    pipe.fuse_lora()

image = pipe(
    prompt=args.prompt,
    num_inference_steps=args.steps,
    guidance_scale=0,
    eta=args.eta,  # "gamma" in the paper: the stochasticity of each step
    generator=fewstep.Generator(args.seed),  # the same noise as torch.manual_seed(seed), on either backend
).images[0]
image.save(args.output)
print(f"wrote {args.output} ({image.width}x{image.height}, seed {args.seed}, {args.backend})")
