"""Canny ControlNet with LCM-LoRA on SD 1.5, in 4 steps, on torch or MindSpore: the "ControlNet" snippet
of diffusers' LCM-LoRA guide (using-diffusers/inference_with_lcm_lora.md, "ControlNet/T2I-Adapter").

The guide: runwayml/stable-diffusion-v1-5 + lllyasviel/sd-controlnet-canny + the LCM-LoRA
latent-consistency/lcm-lora-sdv1-5, LCMScheduler, a canny map of Vermeer's girl at 512x512,
4 steps, guidance_scale=1.5, controlnet_conditioning_scale=0.8, cross_attention_kwargs={"scale": 1}.

    python examples/controlnet_canny_sd15.py                  # tiny demo models and a generated picture
    python examples/controlnet_canny_sd15.py --model runwayml/stable-diffusion-v1-5 \
        --lora latent-consistency/lcm-lora-sdv1-5 --backend mindspore -o mona_lisa.png \
        --image https://hf.co/datasets/huggingface/documentation-images/resolve/main/diffusers/input_image_vermeer.png
"""

import fewstep
from fewstep.pipelines import StableDiffusionControlNetPipeline
from fewstep.testing import tiny_controlnet
from fewstep.utils import make_image_grid

from conditioning import canny, component, control_image, example_parser, native_size, pipeline_folder, save

parser = example_parser("SD 1.5 canny ControlNet with LCM-LoRA.", model="runwayml/stable-diffusion-v1-5",
                        lora="latent-consistency/lcm-lora-sdv1-5", prompt="the mona lisa",
                        output="controlnet_canny_sd15.png", image=True)
parser.add_argument("--controlnet", help="ControlNet folder or hub id (default: lllyasviel/sd-controlnet-canny "
                                         "with --model, else the tiny demo ControlNet)")
args = parser.parse_args()

model = pipeline_folder(args, "sd15")
controlnet = fewstep.ControlNetModel.from_pretrained(
    component(args, args.controlnet, "lllyasviel/sd-controlnet-canny", lambda: tiny_controlnet("sd15")),
    backend=args.backend)
pipe = StableDiffusionControlNetPipeline.from_pretrained(model, controlnet=controlnet, backend=args.backend)
pipe.scheduler = fewstep.LCMScheduler.from_config(pipe.scheduler.config)
if args.lora:
    pipe.load_lora_weights(args.lora)  # the LCM-LoRA: what makes 4 steps enough

size = native_size(pipe)  # the guide resizes the picture to 512x512 before finding its edges
canny_image = control_image(args, canny, size, detect_at=size)

image = pipe(
    args.prompt,
    image=canny_image,
    num_inference_steps=args.steps,
    guidance_scale=1.5,
    controlnet_conditioning_scale=0.8,
    cross_attention_kwargs={"scale": 1},  # the LoRA's scale
    generator=fewstep.Generator(args.seed),  # the same noise as torch.manual_seed(seed), on either backend
).images[0]
save(make_image_grid([canny_image, image], rows=1, cols=2), args)
