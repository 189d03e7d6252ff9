"""The whole AnimateDiff text-to-video call, 8 frames, 4 TCD steps: fewstep vs diffusers on the same modules (torch CPU).

    python benchmarks/bench_animatediff.py [--repeats 5] [--frames 8] [--size 64] [--threads 1]
                                           [--skip-mindspore] [--skip-memory]

Setup. fewstep's side is loaded the way a user loads it:
`fewstep.pipelines.AnimateDiffPipeline.from_pretrained(tiny_pipeline("sd15"),
motion_adapter=fewstep.MotionAdapter.from_pretrained(tiny_motion_adapter()))` (random weights), its
scheduler replaced by TCD. diffusers' `AnimateDiffPipeline` is then built on fewstep's torch modules:
`unet=` fewstep's motion UNet (`pipe.unet.module`, a UNetMotionModel, which diffusers keeps as is),
`vae`, `text_encoder`, `tokenizer`, `motion_adapter` (`.module`), with `TCDScheduler.from_config` of
the folder's scheduler; so both run identical weights. Both get one prompt, `--frames` frames, 4
steps, eta 0.3, guidance_scale 0 (no CFG), `--size` px square, output_type "np"; seeds
fewstep.Generator(0) vs torch.manual_seed(0) (the same noise). The `.frames` must agree within 1e-4
(max abs difference over [0, 1] values) before anything is timed, or the script stops.

Time, memory and MindSpore are measured with bench_pipeline_sdxl.py's helpers (imported, not
copied): `--warmup` then `--repeats` calls of each side, alternating which goes first, median wall
time of the whole call and the ratio fewstep/diffusers (target <= 1.0); peak RSS increase per call in
a fresh subprocess per side that builds both sides and calls one (fixed glibc malloc thresholds, peak
mark reset before each of 3 calls after one warm-up; median), ratio fewstep/diffusers (target <= 1.1);
fewstep loaded with backend="mindspore" (MotionAdapter too) in its own subprocess, median of
max(3, repeats // 3) calls after one warm-up, ratio MindSpore/torch (fewstep on both). One torch
thread by default (`--threads`): on a shared machine OpenMP threads spinning against other processes
distort the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_pipeline_sdxl import (  # noqa: E402  (the shared helpers)
    alternate,
    folder_tcd_scheduler,
    measure_call_memory,
    report_memory_and_mindspore,
    spread_warning,
    time_calls,
    timing_line,
    worker_result,
)

PROMPT = "a red fox running in the snow"
STEPS, ETA, SEED, AGREE_TOL = 4, 0.3, 0, 1e-4


def build_pair(threads):
    """(diffusers AnimateDiffPipeline, fewstep AnimateDiffPipeline) sharing fewstep's torch modules."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    import diffusers

    import fewstep
    from fewstep.testing import tiny_pipeline
    from fewstep.testing.tiny_motion import tiny_motion_adapter

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    folder = tiny_pipeline("sd15")
    adapter = fewstep.MotionAdapter.from_pretrained(tiny_motion_adapter())
    ours = fewstep.pipelines.AnimateDiffPipeline.from_pretrained(folder, motion_adapter=adapter)
    scheduler = folder_tcd_scheduler(folder)
    ref = diffusers.AnimateDiffPipeline(
        vae=ours.vae.module, text_encoder=ours.text_encoder.module, tokenizer=ours.tokenizer,
        unet=ours.unet.module, motion_adapter=ours.motion_adapter.module, scheduler=scheduler,
    )
    assert ref.unet is ours.unet.module, "diffusers rebuilt the motion UNet: the sides would not share it"
    ref.set_progress_bar_config(disable=True)
    ours.scheduler = fewstep.TCDScheduler.from_config(scheduler.config)
    ours.set_progress_bar_config(disable=True)
    return ref, ours


def call_kwargs(size, frames, output_type="np") -> dict:
    return dict(prompt=PROMPT, num_frames=frames, num_inference_steps=STEPS, eta=ETA, guidance_scale=0.0,
                height=size, width=size, output_type=output_type)


def callers(ref, ours, size, frames):
    """Zero-argument callables, one per side, each making one video from fresh seed-0 generators."""
    import torch

    import fewstep

    kwargs = call_kwargs(size, frames)

    def run_ref():
        return ref(generator=torch.manual_seed(SEED), **kwargs).frames

    def run_ours():
        return ours(generator=fewstep.Generator(SEED), **kwargs).frames

    return {"diffusers": run_ref, "fewstep": run_ours}


def mindspore_worker(size, frames, calls) -> dict:
    import fewstep
    from fewstep.testing import tiny_pipeline
    from fewstep.testing.tiny_motion import tiny_motion_adapter

    start = time.perf_counter()
    adapter = fewstep.MotionAdapter.from_pretrained(tiny_motion_adapter(), backend="mindspore")
    pipe = fewstep.pipelines.AnimateDiffPipeline.from_pretrained(tiny_pipeline("sd15"), backend="mindspore",
                                                                 motion_adapter=adapter)
    load_s = time.perf_counter() - start
    pipe.scheduler = fewstep.TCDScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    kwargs = call_kwargs(size, frames)
    return {"times": time_calls(lambda: pipe(generator=fewstep.Generator(SEED), **kwargs), calls), "load_s": load_s}


def run_worker(args, *extra) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--size", str(args.size), "--frames", str(args.frames),
           "--threads", str(args.threads), *extra]
    return worker_result(cmd, " ".join(extra))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per side (at least 5; default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per side first (default 1)")
    parser.add_argument("--frames", type=int, default=8, help="video frames (default 8)")
    parser.add_argument("--size", type=int, default=64, help="frame side in px (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1; 0: torch's)")
    parser.add_argument("--skip-mindspore", action="store_true", help="do not time fewstep on MindSpore")
    parser.add_argument("--skip-memory", action="store_true", help="do not measure peak memory")
    parser.add_argument("--worker", choices=("memory-fewstep", "memory-diffusers", "mindspore"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker == "mindspore":
        print(json.dumps(mindspore_worker(args.size, args.frames, max(3, args.repeats // 3))))
        return
    if args.worker:
        ref, ours = build_pair(args.threads)
        print(json.dumps(measure_call_memory(callers(ref, ours, args.size, args.frames)[args.worker.split("-")[1]])))
        return
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")

    import numpy as np
    import torch

    ref, ours = build_pair(args.threads)
    run = callers(ref, ours, args.size, args.frames)
    got, want = run["fewstep"](), run["diffusers"]()
    if got.shape != want.shape:
        sys.exit(f"frames of different shapes: fewstep {got.shape}, diffusers {want.shape}")
    diff = float(np.abs(got - want).max())
    if not diff <= AGREE_TOL:
        sys.exit(f"max |fewstep - diffusers| over the frames is {diff:.2e} > {AGREE_TOL:.0e}: the two AnimateDiff "
                 f"pipelines do not make the same video, so timing them would not compare equal work.")
    times = alternate(run, args.warmup, args.repeats)
    med = {side: statistics.median(t) for side, t in times.items()}

    latent = args.size // ours.vae_scale_factor
    print(f"tiny AnimateDiff (SD 1.5 + motion adapter, random weights), {args.frames} frames of {args.size}x{args.size} "
          f"px = 4x{args.frames}x{latent}x{latent} latents, TCD {STEPS} steps, eta {ETA}, guidance 0, float32 CPU, "
          f"output_type np; diffusers on fewstep's torch modules (motion UNet, VAE, text encoder, motion adapter)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{args.repeats} timed calls per side after {args.warmup} warm-up, order alternating")
    print(f"max |fewstep - diffusers| over the frames {tuple(got.shape)} (values in [0, 1]): {diff:.2e}"
          f"   (agree within {AGREE_TOL:.0e}: yes)")
    for side in ("diffusers", "fewstep"):
        print(timing_line(f"{side:9s} AnimateDiffPipeline", times[side]))
    print(f"time ratio fewstep / diffusers: {med['fewstep'] / med['diffusers']:.3f}   (target <= 1.0)")
    spread_warning(times)

    report_memory_and_mindspore(args, run_worker, med["fewstep"])

if __name__ == "__main__":
    main()
