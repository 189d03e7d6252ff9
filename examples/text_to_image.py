"""Text-to-image with TCD in 4 steps: the first snippet of diffusers' TCD-LoRA guide, on torch or MindSpore.

    python examples/text_to_image.py                          # tiny random-weight demo model, offline
    python examples/text_to_image.py --model stabilityai/stable-diffusion-xl-base-1.0 \
        --lora h1t/TCD-SDXL-LoRA --backend mindspore -o cat.png
"""

import fewstep
from fewstep.pipelines import StableDiffusionXLPipeline

from conditioning import example_parser, pipeline_folder, save

PROMPT = ("Painting of the orange cat Otto von Garfield, Count of Bismarck-Schönhausen, Duke of Lauenburg, "
          "Minister-President of Prussia. Depicted wearing a Prussian Pickelhaube and eating his favorite meal "
          "- lasagna.")

args = example_parser("SDXL text-to-image with TCD.", model="stabilityai/stable-diffusion-xl-base-1.0",
                      lora="h1t/TCD-SDXL-LoRA", prompt=PROMPT, eta=0.3, output="text_to_image.png").parse_args()

pipe = StableDiffusionXLPipeline.from_pretrained(pipeline_folder(args, "sdxl"), backend=args.backend)
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
save(image, args)
