"""Canny T2I-Adapter with LCM-LoRA on SDXL, in 4 steps, on torch or MindSpore: the "T2I-Adapter" snippet of
diffusers' LCM-LoRA guide (using-diffusers/inference_with_lcm_lora.md, "ControlNet/T2I-Adapter").

The guide: stabilityai/stable-diffusion-xl-base-1.0 + TencentARC/t2i-adapter-canny-sdxl-1.0 + the LCM-LoRA
latent-consistency/lcm-lora-sdxl, LCMScheduler, a canny map found at 384x384 ("to avoid high-frequency
details") and resized to 1024x1024, 4 steps, guidance_scale=1.5, adapter_conditioning_scale=0.8,
adapter_conditioning_factor=1.

    python examples/t2i_adapter_canny_sdxl.py                 # tiny demo models and a generated picture
    python examples/t2i_adapter_canny_sdxl.py --model stabilityai/stable-diffusion-xl-base-1.0 \
        --lora latent-consistency/lcm-lora-sdxl --backend mindspore -o fairy.png \
        --image https://huggingface.co/Adapter/t2iadapter/resolve/main/figs_SDXLV1.0/org_canny.jpg
"""

import fewstep
from fewstep.pipelines import StableDiffusionXLAdapterPipeline
from fewstep.testing import tiny_t2i_adapter
from fewstep.utils import make_image_grid

from conditioning import canny, component, control_image, example_parser, native_size, pipeline_folder, save

NEGATIVE_PROMPT = ("extra digit, fewer digits, cropped, worst quality, low quality, glitch, deformed, mutated, ugly, "
                   "disfigured")

parser = example_parser("SDXL canny T2I-Adapter with LCM-LoRA.", model="stabilityai/stable-diffusion-xl-base-1.0",
                        lora="latent-consistency/lcm-lora-sdxl",
                        prompt="Mystical fairy in real, magic, 4k picture, high quality",
                        output="t2i_adapter_canny_sdxl.png", image=True)
parser.add_argument("--negative-prompt", default=NEGATIVE_PROMPT)
parser.add_argument("--adapter", help="T2I-Adapter folder or hub id (default: TencentARC/t2i-adapter-canny-sdxl-1.0 "
                                      "with --model, else the tiny demo adapter)")
args = parser.parse_args()

model = pipeline_folder(args, "sdxl")
adapter = fewstep.T2IAdapter.from_pretrained(
    component(args, args.adapter, "TencentARC/t2i-adapter-canny-sdxl-1.0", lambda: tiny_t2i_adapter("sdxl")),
    backend=args.backend)
pipe = StableDiffusionXLAdapterPipeline.from_pretrained(model, adapter=adapter, backend=args.backend)
pipe.scheduler = fewstep.LCMScheduler.from_config(pipe.scheduler.config)
if args.lora:
    pipe.load_lora_weights(args.lora)  # the LCM-LoRA: what makes 4 steps enough

size = native_size(pipe)
canny_image = control_image(args, canny, size, detect_at=size * 3 // 8)  # the guide: 384 px for 1024

image = pipe(
    prompt=args.prompt,
    negative_prompt=args.negative_prompt,
    image=canny_image,
    num_inference_steps=args.steps,
    guidance_scale=1.5,
    adapter_conditioning_scale=0.8,
    adapter_conditioning_factor=1,  # the adapter is on for every step
    generator=fewstep.Generator(args.seed),  # the same noise as torch.manual_seed(seed), on either backend
).images[0]
save(make_image_grid([canny_image, image], rows=1, cols=2), args)
