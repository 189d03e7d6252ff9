"""Train the demo model: `python -m fewstep.demo.train --out DIR`.

Stages, each checkpointed under DIR/checkpoints and finished into DIR/stages/<name> (rerunning the same
command resumes the unfinished stage from its last checkpoint and skips finished ones):
  1. vae      AutoencoderKL, 32x32 RGB <-> 4x16x16 latents            (train_vae.py)
  2. unet     CLIP text encoder + UNet, epsilon prediction, CFG dropout (train_unet.py)
  3. distill  one consistency LoRA for TCD and LCM (LCM-LoRA recipe)    (train_distill.py)
then DIR/pipeline (diffusers format, safetensors, TCD scheduler config) and DIR/lora/
pytorch_lora_weights.safetensors, and a final evaluation of both. DIR/training_log.jsonl records losses,
per-stage wall time and the checker's accuracies along the way.

Deterministic given --seed and --threads: the same command from scratch gives the same bytes. The default
step counts fit in 2 hours on a 2-core CPU (measured there at batch 64 with 2 threads: VAE 1.5 it/s, UNet
2.26 it/s; so about 5 min VAE, 70 min UNet, 15-20 min distillation (estimated), a few minutes of data
and evaluation); --budget-minutes caps wall time instead (a stage that runs out stops early, so its
result then depends on the machine's speed -- use step counts to reproduce).

torch, diffusers, transformers and peft load when this runs; nothing in `fewstep` or `fewstep.demo`'s
__init__ imports this module.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

STAGES = ("vae", "unet", "distill")
# How --budget-minutes is split (what is left after the stages pays for data, evaluation and saving).
BUDGET_SHARES = {"vae": 0.04, "unet": 0.72, "distill": 0.18}
SMOKE = dict(data_size=64, vae_steps=2, vae_batch=4, unet_steps=3, unet_batch=8, distill_steps=2,
             distill_batch=4, eval_n=1, final_eval_n=1, eval_every=1000, distill_eval_every=1000, ckpt_every=2,
             log_every=1)
SIZE_LIMIT_MB = 12.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fewstep.demo.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, type=Path,
                   help="output folder (checkpoints, stages, pipeline, lora, log); rerun to resume")
    p.add_argument("--seed", type=int, default=0, help="seeds the data, the models and every step's draws")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch intra-op threads (results are reproducible for a fixed count)")
    p.add_argument("--data-size", type=int, default=32768, help="procedural training images")
    p.add_argument("--vae-steps", type=int, default=450, help="stage 1 steps")
    p.add_argument("--vae-batch", type=int, default=64, help="stage 1 batch")
    p.add_argument("--vae-lr", type=float, default=1e-3, help="stage 1 peak learning rate (cosine)")
    p.add_argument("--vae-kl", type=float, default=1e-5, help="KL weight (per pixel value, against the MSE)")
    p.add_argument("--unet-steps", type=int, default=9500, help="stage 2 steps")
    p.add_argument("--unet-batch", type=int, default=64, help="stage 2 batch")
    p.add_argument("--unet-lr", type=float, default=1e-3, help="stage 2 peak learning rate (cosine)")
    p.add_argument("--uncond-prob", type=float, default=0.1, help="caption dropout for classifier-free guidance")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the saved text encoder and UNet")
    p.add_argument("--distill-steps", type=int, default=1500, help="stage 3 steps")
    p.add_argument("--distill-batch", type=int, default=32, help="stage 3 batch")
    p.add_argument("--distill-lr", type=float, default=3e-4, help="stage 3 peak learning rate (cosine)")
    p.add_argument("--lora-rank", type=int, default=16, help="LoRA rank (alpha = rank)")
    p.add_argument("--w-min", type=float, default=2.0, help="teacher guidance w (LCM form: scale = w + 1)")
    p.add_argument("--w-max", type=float, default=6.0, help="upper end of the guidance range")
    p.add_argument("--huber-c", type=float, default=0.001, help="pseudo-Huber loss constant")
    p.add_argument("--ddim-timesteps", type=int, default=50, help="solver grid (skip = 1000 // this)")
    p.add_argument("--eval-every", type=int, default=2000, help="stage 2 steps between evaluations")
    p.add_argument("--distill-eval-every", type=int, default=500, help="stage 3 steps between evaluations")
    p.add_argument("--eval-n", type=int, default=64, help="prompts per periodic evaluation")
    p.add_argument("--final-eval-n", type=int, default=200, help="prompts in the final evaluation")
    p.add_argument("--log-every", type=int, default=50, help="steps between log records")
    p.add_argument("--ckpt-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="cap on total wall time, split across stages as " +
                        ", ".join(f"{k} {v * 100:.0f}%%" for k, v in BUDGET_SHARES.items()))  # %% : argparse
    p.add_argument("--stop-after", default=None, metavar="STAGE[:STEP]",
                   help="stop (checkpointed) after a stage, or after STEP steps of it; rerun to resume")
    p.add_argument("--smoke", action="store_true",
                   help="a few steps per stage and a tiny evaluation (CI): " +
                        ", ".join(f"{k}={v}" for k, v in SMOKE.items()))
    args = p.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    minutes = args.budget_minutes
    args.budgets = {k: share * minutes * 60 for k, share in BUDGET_SHARES.items()} if minutes else {}
    return args


def stage_configs(args) -> dict:
    """What each stage's result depends on; a finished stage recorded with other values is not reused."""
    common = dict(seed=args.seed, threads=args.threads, data_size=args.data_size)
    vae = dict(common, steps=args.vae_steps, batch=args.vae_batch, lr=args.vae_lr, kl=args.vae_kl,
               budget=args.budgets.get("vae"))
    unet = dict(vae=vae, steps=args.unet_steps, batch=args.unet_batch, lr=args.unet_lr,
                uncond_prob=args.uncond_prob, ema=args.ema, budget=args.budgets.get("unet"))
    distill = dict(unet=unet, steps=args.distill_steps, batch=args.distill_batch, lr=args.distill_lr,
                   rank=args.lora_rank, w=[args.w_min, args.w_max], huber_c=args.huber_c,
                   ddim_timesteps=args.ddim_timesteps, budget=args.budgets.get("distill"))
    return {"vae": vae, "unet": unet, "distill": distill}


def parse_stop(value):
    """'unet' -> ('unet', None); 'unet:200' -> ('unet', 200)."""
    if value is None:
        return None, None
    name, _, step = value.partition(":")
    if name not in STAGES:
        raise SystemExit(f"--stop-after {value!r}: the stages are {', '.join(STAGES)} (optionally STAGE:STEP)")
    return name, int(step) if step else None


def assemble(out: Path, args) -> dict:
    """Write DIR/pipeline and DIR/lora from the finished stages; returns their sizes in MB."""
    import diffusers
    from transformers import CLIPTextModel, CLIPTokenizer

    from fewstep.demo.train_common import SCHEDULE
    from fewstep.demo.train_distill import LORA_FILE

    stages = out / "stages"
    pipe = diffusers.StableDiffusionPipeline(
        vae=diffusers.AutoencoderKL.from_pretrained(stages / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(stages / "unet" / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(stages / "unet" / "tokenizer"),
        unet=diffusers.UNet2DConditionModel.from_pretrained(stages / "unet" / "unet"),
        # TCD is what the demo samples with; the config keeps SD's keys, so DDIM/LCM.from_config read it too
        scheduler=diffusers.TCDScheduler.from_config(SCHEDULE),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    for name in ("pipeline", "lora"):
        shutil.rmtree(out / name, ignore_errors=True)
    pipe.save_pretrained(out / "pipeline", safe_serialization=True)
    (out / "lora").mkdir()
    shutil.copyfile(stages / "distill" / LORA_FILE, out / "lora" / LORA_FILE)
    sizes = {name: sum(f.stat().st_size for f in (out / name).rglob("*") if f.is_file()) / 2**20
             for name in ("pipeline", "lora")}
    return {k: round(v, 2) for k, v in sizes.items()}


def final_eval(out: Path, n: int) -> dict:
    """Teacher, TCD and LCM scores of the saved files, loaded back through diffusers as a user would."""
    import diffusers

    from fewstep.demo.train_distill import LORA_FILE
    from fewstep.demo.train_eval import FEW_STEP, TEACHER, evaluate

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(out / "pipeline")
    components = dict(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet)
    results = evaluate(components, n, {"teacher": TEACHER})
    pipe.load_lora_weights(out / "lora", weight_name=LORA_FILE)
    pipe.fuse_lora()
    return {**results, **evaluate(components, n, FEW_STEP)}


def main(argv=None) -> int:
    args = parse_args(argv)
    from fewstep.demo import train_distill, train_unet, train_vae
    from fewstep.demo.train_common import Stage, deterministic
    from fewstep.demo.train_eval import summary

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    configs = stage_configs(args)
    runners = {"vae": train_vae.run, "unet": train_unet.run, "distill": train_distill.run}
    stop_stage, stop_step = parse_stop(args.stop_after)
    t0 = time.monotonic()
    with deterministic(args.threads):
        for name in STAGES:
            stage = Stage(out, name, configs[name])
            if stage.done():
                print(f"[{name}] finished earlier; skipped", file=sys.stderr, flush=True)
            else:
                print(f"[{name}] training", file=sys.stderr, flush=True)
                stop_at = stop_step if name == stop_stage else None
                if not runners[name](stage, args, stop_at=stop_at):
                    print(f"[{name}] stopped at step {stop_at} as asked; rerun to resume", file=sys.stderr)
                    return 0
            if name == stop_stage:
                print(f"[{name}] stopped after this stage as asked; rerun to continue", file=sys.stderr)
                return 0
        log = Stage(out, "final", {})
        sizes = assemble(out, args)
        if sum(sizes.values()) > SIZE_LIMIT_MB:
            print(f"warning: the pipeline and LoRA take {sizes} MB, over {SIZE_LIMIT_MB} MB", file=sys.stderr)
        results = final_eval(out, args.final_eval_n)
    print(f"[final] {summary(results)}", flush=True)
    log.log({"event": "final", "sizes_mb": sizes, "wall_s_this_run": round(time.monotonic() - t0, 1),
             "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, **results})
    print(f"pipeline: {out / 'pipeline'}  LoRA: {out / 'lora'}  log: {out / 'training_log.jsonl'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
