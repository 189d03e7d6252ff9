"""AnimateDiff with a few-step LoRA and a motion LoRA, on torch or MindSpore: the AnimateDiff snippets
of diffusers' TCD-LoRA guide (`--guide tcd`, the default) and LCM-LoRA guide (`--guide lcm`).

The guides: MotionAdapter guoyww/animatediff-motion-adapter-v1-5 into AnimateDiffPipeline of
frankjoshua/toonyou_beta6; the few-step LoRA (h1t/TCD-SD15-LoRA, or latent-consistency/lcm-lora-sdv1-5)
beside the motion LoRA guoyww/animatediff-motion-lora-zoom-in (weight_name
diffusion_pytorch_model.safetensors), combined with set_adapters weights [1.0, 1.2] (LCM: [0.55, 1.2]);
5 steps, 24 frames, cross_attention_kwargs={"scale": 1}; TCD: guidance_scale=0, eta=0.3; LCM:
guidance_scale=1.25. The frames go to a GIF with export_to_gif.

    python examples/animatediff.py                       # tiny demo models, offline
    python examples/animatediff.py --guide lcm --model frankjoshua/toonyou_beta6 \\
        --motion-adapter guoyww/animatediff-motion-adapter-v1-5 --lora latent-consistency/lcm-lora-sdv1-5 \\
        --motion-lora guoyww/animatediff-motion-lora-zoom-in --backend mindspore -o animation.gif
"""

import fewstep
from fewstep.pipelines import AnimateDiffPipeline
from fewstep.testing.tiny_motion import tiny_motion_adapter, tiny_motion_lora
from fewstep.utils import export_to_gif

from conditioning import component, example_parser, pipeline_folder

# guide -> (scheduler, few-step LoRA id, its set_adapters weight, guidance_scale, eta)
GUIDES = {"tcd": (fewstep.TCDScheduler, "h1t/TCD-SD15-LoRA", 1.0, 0.0, 0.3),
          "lcm": (fewstep.LCMScheduler, "latent-consistency/lcm-lora-sdv1-5", 0.55, 1.25, None)}

parser = example_parser("AnimateDiff with a few-step LoRA and a motion LoRA.", model="frankjoshua/toonyou_beta6",
                        lora="h1t/TCD-SD15-LoRA (TCD) or latent-consistency/lcm-lora-sdv1-5 (LCM)",
                        prompt="best quality, masterpiece, 1girl, looking at viewer, blurry background, upper body, "
                               "contemporary, dress", output="animation.gif")
parser.set_defaults(steps=5)
parser.add_argument("--guide", choices=sorted(GUIDES), default="tcd")
parser.add_argument("--frames", type=int, default=24)
parser.add_argument("--motion-adapter", help="default: guoyww/animatediff-motion-adapter-v1-5 with --model, "
                                             "else a tiny one")
parser.add_argument("--motion-lora", help="default: guoyww/animatediff-motion-lora-zoom-in with --model, else a tiny one")
args = parser.parse_args()
scheduler_cls, _, lora_weight, guidance, eta = GUIDES[args.guide]

adapter = fewstep.MotionAdapter.from_pretrained(
    component(args, args.motion_adapter, "guoyww/animatediff-motion-adapter-v1-5", tiny_motion_adapter),
    backend=args.backend)
pipe = AnimateDiffPipeline.from_pretrained(pipeline_folder(args, "sd15"), motion_adapter=adapter, backend=args.backend)
pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
names, weights = [], []
if args.lora:
    pipe.load_lora_weights(args.lora, adapter_name=args.guide)
    names, weights = [args.guide], [lora_weight]
pipe.load_lora_weights(component(args, args.motion_lora, "guoyww/animatediff-motion-lora-zoom-in", tiny_motion_lora),
                       weight_name="diffusion_pytorch_model.safetensors", adapter_name="motion-lora")
pipe.set_adapters(names + ["motion-lora"], adapter_weights=weights + [1.2])

kwargs = dict(eta=eta) if eta is not None else {}
frames = pipe(
    prompt=args.prompt,
    num_inference_steps=args.steps,
    guidance_scale=guidance,
    cross_attention_kwargs={"scale": 1},
    num_frames=args.frames,
    generator=fewstep.Generator(args.seed),  # the same noise as torch.manual_seed(seed), on either backend
    **kwargs,
).frames[0]
export_to_gif(frames, args.output)
print(f"wrote {args.output} ({len(frames)} frames, seed {args.seed}, {args.backend})")
