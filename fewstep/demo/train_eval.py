"""Periodic evaluation during training: sample with diffusers' own pipeline and score with the demo checker.

The teacher is judged as it will be used (DDIM, 25 steps, guidance 4); the distilled LoRA at 4 steps with
guidance 1 through diffusers' TCDScheduler (gamma = eta 0.3, fewstep's CLI default) and LCMScheduler.
Using diffusers here, not fewstep, keeps training independent of the sampler under test: the benchmark
later checks fewstep's samplers against these figures.
"""

from __future__ import annotations

import numpy as np
import torch

from fewstep.demo.checker import score_images
from fewstep.demo.dataset import evaluation_prompts
from fewstep.demo.train_common import SCHEDULE

TEACHER = dict(scheduler="ddim", steps=25, guidance=4.0)
FEW_STEP = {"tcd4": dict(scheduler="tcd", steps=4, guidance=1.0, eta=0.3),
            "lcm4": dict(scheduler="lcm", steps=4, guidance=1.0)}
EVAL_SEED = 1234  # evaluation prompts/seeds; fixed so that evaluations over a run are comparable


def make_scheduler(name: str):
    from diffusers import DDIMScheduler, LCMScheduler, TCDScheduler

    return {"ddim": DDIMScheduler, "tcd": TCDScheduler, "lcm": LCMScheduler}[name].from_config(SCHEDULE)


@torch.no_grad()
def sample(vae, text_encoder, tokenizer, unet, pairs, scheduler: str, steps: int, guidance: float,
           eta: float = 0.0, batch: int = 100) -> np.ndarray:
    """Float images [n, 32, 32, 3] in [0, 1] for (prompt, seed) `pairs`, one CPU generator per image."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=make_scheduler(scheduler), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    extra = {"eta": eta} if scheduler == "tcd" else {}
    images = []
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        images.append(pipe(
            [p for p, _ in chunk], num_inference_steps=steps, guidance_scale=guidance, output_type="np",
            generator=[torch.Generator().manual_seed(s) for _, s in chunk], **extra,
        ).images)
    return np.concatenate(images)


def evaluate(components: dict, n: int, settings: dict) -> dict:
    """{setting name: checker scores} over the first `n` fixed evaluation prompts."""
    pairs = evaluation_prompts(n, EVAL_SEED)
    results = {}
    for name, setting in settings.items():
        images = sample(**components, pairs=pairs, scheduler=setting["scheduler"], steps=setting["steps"],
                        guidance=setting["guidance"], eta=setting.get("eta", 0.0))
        results[name] = score_images(images, [p for p, _ in pairs])
    return results


def summary(results: dict) -> str:
    """One line: `name all% (shape/colour/background%)` per setting."""
    return "; ".join(f"{name} all {r['all']:.0%} (shape {r['shape']:.0%}, colour {r['colour']:.0%}, "
                     f"bg {r['background']:.0%})" for name, r in results.items())
