"""A full LCM-distilled UNet in an SDXL pipeline, in 4 steps, on torch or MindSpore: the first
"Text-to-image" snippet (the "LCM" tab) of diffusers' LCM guide (using-diffusers/inference_with_lcm.md).

The guide: UNet2DConditionModel.from_pretrained("latent-consistency/lcm-sdxl") passed as unet= to
stabilityai/stable-diffusion-xl-base-1.0, LCMScheduler, 4 steps, guidance_scale=8.0 (an LCM UNet takes
the guidance scale as an embedding, so the batch is not doubled). The tiny default passes the tiny SDXL
pipeline's own UNet (its unet/ folder), which has no guidance embedding: there guidance 8.0 is ordinary
classifier-free guidance.

    python examples/lcm_full_unet.py                          # tiny random-weight demo model, offline
    python examples/lcm_full_unet.py --model stabilityai/stable-diffusion-xl-base-1.0 \
        --unet latent-consistency/lcm-sdxl --backend mindspore -o cyborg.png
"""

import fewstep
from fewstep.pipelines import StableDiffusionXLPipeline
from fewstep.utils import make_image_grid

from conditioning import example_parser, pipeline_folder, save

parser = example_parser("SDXL with a full LCM UNet.", model="stabilityai/stable-diffusion-xl-base-1.0",
                        prompt="Self-portrait oil painting, a beautiful cyborg with golden hair, 8k",
                        output="lcm_full_unet.png")
parser.add_argument("--unet", help="UNet folder or hub id (default: latent-consistency/lcm-sdxl with --model, else "
                                   "the tiny pipeline's own UNet)")
parser.add_argument("--unet-subfolder", help="the UNet's folder inside --unet, e.g. unet for a whole pipeline repo")
args = parser.parse_args()

model = pipeline_folder(args, "sdxl")
if args.unet or args.model:
    unet = fewstep.UNet2DConditionModel.from_pretrained(args.unet or "latent-consistency/lcm-sdxl",
                                                        subfolder=args.unet_subfolder, backend=args.backend)
else:
    unet = fewstep.UNet2DConditionModel.from_pretrained(model, subfolder="unet", backend=args.backend)
pipe = StableDiffusionXLPipeline.from_pretrained(model, unet=unet, backend=args.backend)
pipe.scheduler = fewstep.LCMScheduler.from_config(pipe.scheduler.config)

image = pipe(
    prompt=args.prompt,
    num_inference_steps=args.steps,
    guidance_scale=8.0,
    generator=fewstep.Generator(args.seed),  # the same noise as torch.manual_seed(seed), on either backend
).images[0]
save(make_image_grid([image], rows=1, cols=1), args)
