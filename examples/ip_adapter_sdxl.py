"""An image prompt with TCD on SDXL, in 4 steps, on torch or MindSpore: the IP-Adapter snippet of
diffusers' TCD-LoRA guide (using-diffusers/inference_with_tcd_lora.md, "Adapters" > "IP-Adapter").

The guide: stabilityai/stable-diffusion-xl-base-1.0 + the TCD LoRA h1t/TCD-SDXL-LoRA, TCDScheduler, the
SDXL IP-Adapter of h94/IP-Adapter (subfolder sdxl_models, ip-adapter_sdxl.safetensors, image encoder in
sdxl_models/image_encoder) at scale 0.5, a 512x512 reference picture, "best quality, high quality,
wearing sunglasses", 4 steps, guidance_scale=0, eta=0.3.

    python examples/ip_adapter_sdxl.py                         # tiny demo models and a generated picture
    python examples/ip_adapter_sdxl.py --model stabilityai/stable-diffusion-xl-base-1.0 \\
        --lora h1t/TCD-SDXL-LoRA --ip-adapter h94/IP-Adapter --backend mindspore -o sunglasses.png \\
        --image https://raw.githubusercontent.com/tencent-ailab/IP-Adapter/main/assets/images/woman.png
"""

import fewstep
from fewstep.pipelines import StableDiffusionXLPipeline
from fewstep.testing.tiny_ip_adapter import IP_ADAPTER_FILES, tiny_ip_adapter
from fewstep.utils import make_image_grid

from conditioning import component, demo_picture, example_parser, native_size, picture, pipeline_folder, save

parser = example_parser("SDXL IP-Adapter with TCD.", model="stabilityai/stable-diffusion-xl-base-1.0",
                        lora="h1t/TCD-SDXL-LoRA", prompt="best quality, high quality, wearing sunglasses", eta=0.3,
                        output="ip_adapter_sdxl.png")
parser.add_argument("--image", help="the reference picture (path or URL; default: a generated test picture)")
parser.add_argument("--ip-adapter", help="IP-Adapter repository (default: h94/IP-Adapter with --model, else a tiny one)")
parser.add_argument("--scale", type=float, default=0.5, help="the IP-Adapter's scale (the guide's 0.5)")
args = parser.parse_args()

pipe = StableDiffusionXLPipeline.from_pretrained(pipeline_folder(args, "sdxl"), backend=args.backend)
pipe.scheduler = fewstep.TCDScheduler.from_config(pipe.scheduler.config)
if args.lora:
    pipe.load_lora_weights(args.lora)
    pipe.fuse_lora()
subfolder, weight_name = IP_ADAPTER_FILES["sdxl"]["plain"]  # the real repository's names
pipe.load_ip_adapter(component(args, args.ip_adapter, "h94/IP-Adapter", lambda: tiny_ip_adapter("sdxl")),
                     subfolder=subfolder, weight_name=weight_name)
pipe.set_ip_adapter_scale(args.scale)

size = native_size(pipe) // 2  # the guide's 512x512 reference for a 1024 model
ref_image = picture(args.image, size) if args.image else demo_picture(size)
image = pipe(
    prompt=args.prompt,
    ip_adapter_image=ref_image,
    num_inference_steps=args.steps,
    guidance_scale=0,
    eta=args.eta,  # "gamma" in the paper: the stochasticity of each step
    generator=fewstep.Generator(args.seed),  # the same noise as torch.manual_seed(seed), on either backend
).images[0]
save(make_image_grid([ref_image, image], rows=1, cols=2, resize=image.width), args)
