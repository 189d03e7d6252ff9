"""The whole SDXL text-to-image call, 4 TCD steps: fewstep vs diffusers on the same modules (torch CPU).

    python benchmarks/bench_pipeline_sdxl.py [--repeats 10] [--size 64|256] [--threads N]
                                             [--skip-mindspore] [--skip-memory] [--profile] [--controlnet]

Setup. The tiny random-weight SDXL folder (`fewstep.testing.tiny_pipeline("sdxl")`) is loaded once
with diffusers' StableDiffusionXLPipeline, whose scheduler becomes `TCDScheduler.from_config(...)`.
fewstep's StableDiffusionXLPipeline (torch backend) is built on the *same* already loaded modules
(TorchUNet(pipe.unet), TorchVAE(pipe.vae), ...), so both run identical weights. Both get the same
inputs: one prompt, 4 steps, eta 0.3, guidance_scale 0 (no CFG), `--size` px square, PIL output,
seed 0 (diffusers: a CPU torch.Generator; fewstep: fewstep.Generator, which draws the same noise).
The images are compared once before anything is timed.

Time. After `--warmup` calls of each, `--repeats` calls of each, alternating which goes first, so
machine load hits both alike; the median wall time of the whole `pipe(...)` call is reported, and
the ratio fewstep/diffusers (target <= 1.0). On a shared or small machine torch's OpenMP threads can
spin against other processes and inflate calls 100-fold at random (the quartiles printed beside
the medians show it, and the script warns): pass `--threads 1` there.

Memory. Each side runs in a fresh subprocess that loads exactly what the timing process loads (the
diffusers pipeline plus the fewstep wrappers around its modules, so the baseline is the same) and
calls only its own pipeline: one warm-up call, then 3 measured calls. Before each measured call the
process's peak-RSS mark is reset (`echo 5 > /proc/self/clear_refs`, Linux >= 4.0) and its current
RSS read; after the call the peak (VmHWM) is read. Peak minus start is the extra resident memory the
call needed at its worst moment, everything included: torch's CPU allocations (CPU torch has no
allocator statistics, it allocates through malloc), NumPy, PIL, Python objects. glibc would
otherwise keep freed blocks resident and move its mmap threshold between calls, which hides or
smears what a call needs, so the workers run with a fixed `MALLOC_MMAP_THRESHOLD_=65536` and
`MALLOC_TRIM_THRESHOLD_=131072` (the same for both sides): every large buffer is mmapped and returned
on free, and RSS follows what is live. The reported figure is the median of the 3 calls; the ratio
fewstep/diffusers has target <= 1.1. At 64 px a call needs only ~2 MiB, so that ratio is coarse;
`--size 256` (~30 MiB a call) measures it properly. Where /proc/self/clear_refs cannot be written,
the fallback is the cruder `ru_maxrss` after the first call minus `ru_maxrss` after loading (0 when
loading peaked higher than the call).

MindSpore. fewstep's pipeline loaded separately from the same folder with backend="mindspore"
(mindone modules), in its own subprocess, median of max(3, repeats // 3) calls after one warm-up;
the ratio MindSpore/torch compares it with fewstep-on-torch's median.

`--profile` prints cProfile's top functions of both sides (after the timing), to see where any
difference goes.

ControlNet. `--controlnet` times the same call with one ControlNet instead (everything above holds,
with these differences). fewstep's side is loaded the way a user loads it:
`StableDiffusionXLControlNetPipeline.from_pretrained(tiny_pipeline("sdxl"),
controlnet=ControlNetModel.from_pretrained(tiny_controlnet("sdxl")))`, its scheduler replaced by TCD.
diffusers' `StableDiffusionXLControlNetPipeline` is then built on fewstep's torch modules (`.module` of
each component: unet, vae, both text encoders, the ControlNet) and tokenizers, with
`TCDScheduler.from_config` of the folder's scheduler, so again both run identical weights. Both get
`image=` one fixed control picture of the output size (white shapes on black, like an edge map) and
controlnet_conditioning_scale 0.5. The images must agree within 1e-4 (max abs difference over [0, 1]
values) before anything is timed, or the script stops: the timing must compare equal work. The
MindSpore side loads the ControlNet with `ControlNetModel.from_pretrained(folder, backend="mindspore")`.
Fewer than 10 `--repeats` are accepted with `--controlnet` for a quick check that it runs (the output
says so); a measurement needs at least 10.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import re
import resource
import statistics
import subprocess
import sys
import time

PROMPT = "a photo of a red fox in the snow, detailed"
STEPS, ETA, SEED = 4, 0.3, 0
CONTROLNET_SCALE, AGREE_TOL = 0.5, 1e-4


# ---------------------------------------------------------------------------------------- building
def build_pair(threads):
    """(diffusers pipeline, fewstep pipeline) sharing one set of loaded torch modules."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    import diffusers

    import fewstep
    from fewstep.backends.torch_components import TorchTextEncoder, TorchUNet, TorchVAE
    from fewstep.pipelines import StableDiffusionXLPipeline
    from fewstep.testing import tiny_pipeline

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()  # the loading bar; the pipelines' bars are disabled below
    folder = tiny_pipeline("sdxl")
    ref = diffusers.StableDiffusionXLPipeline.from_pretrained(folder)
    ref.scheduler = diffusers.TCDScheduler.from_config(ref.scheduler.config)
    ref.set_progress_bar_config(disable=True)
    ours = StableDiffusionXLPipeline(
        "torch", fewstep.TCDScheduler.from_config(ref.scheduler.config),
        unet=TorchUNet(ref.unet), vae=TorchVAE(ref.vae), text_encoder=TorchTextEncoder(ref.text_encoder),
        text_encoder_2=TorchTextEncoder(ref.text_encoder_2), tokenizer=ref.tokenizer, tokenizer_2=ref.tokenizer_2,
    )
    ours.force_zeros_for_empty_prompt = ref.config.force_zeros_for_empty_prompt
    ours.set_progress_bar_config(disable=True)
    return ref, ours


def build_controlnet_pair(threads):
    """(diffusers pipeline, fewstep pipeline), both with one ControlNet, sharing fewstep's torch modules."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    import diffusers

    import fewstep
    from fewstep.testing import tiny_controlnet, tiny_pipeline

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    folder = tiny_pipeline("sdxl")
    cn = fewstep.ControlNetModel.from_pretrained(tiny_controlnet("sdxl"))
    ours = fewstep.pipelines.StableDiffusionXLControlNetPipeline.from_pretrained(folder, controlnet=cn)
    # the folder's own scheduler class first, then TCD from its config: what build_pair does
    base = getattr(diffusers, diffusers.TCDScheduler.load_config(folder, subfolder="scheduler")["_class_name"])
    scheduler = diffusers.TCDScheduler.from_config(base.from_pretrained(folder, subfolder="scheduler").config)
    ref = diffusers.StableDiffusionXLControlNetPipeline(
        vae=ours.vae.module, text_encoder=ours.text_encoder.module, text_encoder_2=ours.text_encoder_2.module,
        tokenizer=ours.tokenizer, tokenizer_2=ours.tokenizer_2, unet=ours.unet.module, controlnet=cn.module,
        scheduler=scheduler, force_zeros_for_empty_prompt=ours.force_zeros_for_empty_prompt, add_watermarker=False,
    )
    ref.set_progress_bar_config(disable=True)
    ours.scheduler = fewstep.TCDScheduler.from_config(scheduler.config)
    ours.set_progress_bar_config(disable=True)
    return ref, ours


def control_image(size):
    """A fixed control picture, `size` px square: white outlines on black, like an edge map."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    line = max(1, size // 32)
    draw.ellipse((size // 8, size // 8, size * 5 // 8, size * 5 // 8), outline="white", width=line)
    draw.rectangle((size * 3 // 8, size * 3 // 8, size * 7 // 8, size * 7 // 8), outline="white", width=line)
    draw.line((0, size - 1, size - 1, 0), fill="white", width=line)
    return image


def call_kwargs(size, controlnet: bool, output_type="pil") -> dict:
    kwargs = dict(prompt=PROMPT, num_inference_steps=STEPS, eta=ETA, guidance_scale=0.0, height=size, width=size,
                  output_type=output_type)
    if controlnet:
        kwargs.update(image=control_image(size), controlnet_conditioning_scale=CONTROLNET_SCALE)
    return kwargs


def callers(ref, ours, size, output_type="pil", controlnet: bool = False):
    """Zero-argument callables, one per side, each making one image from fresh seed-0 generators."""
    import torch

    import fewstep

    kwargs = call_kwargs(size, controlnet, output_type)

    def run_ref():
        return ref(generator=torch.Generator().manual_seed(SEED), **kwargs).images

    def run_ours():
        return ours(generator=fewstep.Generator(SEED), **kwargs).images

    return {"diffusers": run_ref, "fewstep": run_ours}


# ---------------------------------------------------------------------------------------- memory
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_worker(side: str, size: int, threads, calls: int = 3, controlnet: bool = False) -> dict:
    ref, ours = (build_controlnet_pair if controlnet else build_pair)(threads)
    run = callers(ref, ours, size, controlnet=controlnet)[side]
    if not _reset_peak():
        gc.collect()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"method": "ru_maxrss", "increase_kb": [after - before], "peak_kb": after}
    run()  # warm-up: one-time initialisation is not what a call costs
    increases, peaks = [], []
    for _ in range(calls):
        gc.collect()
        _reset_peak()
        start = _status_kb("VmRSS")
        images = run()
        peak = _status_kb("VmHWM")
        del images
        increases.append(peak - start)
        peaks.append(peak)
    return {"method": "VmHWM", "increase_kb": increases, "peak_kb": max(peaks)}


def mindspore_worker(size: int, calls: int, controlnet: bool = False) -> dict:
    import fewstep
    from fewstep.pipelines import StableDiffusionXLControlNetPipeline, StableDiffusionXLPipeline
    from fewstep.testing import tiny_controlnet, tiny_pipeline

    start = time.perf_counter()
    if controlnet:
        cn = fewstep.ControlNetModel.from_pretrained(tiny_controlnet("sdxl"), backend="mindspore")
        pipe = StableDiffusionXLControlNetPipeline.from_pretrained(tiny_pipeline("sdxl"), backend="mindspore",
                                                                   controlnet=cn)
    else:
        pipe = StableDiffusionXLPipeline.from_pretrained(tiny_pipeline("sdxl"), backend="mindspore")
    load_s = time.perf_counter() - start
    pipe.scheduler = fewstep.TCDScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    kwargs = call_kwargs(size, controlnet)
    del kwargs["output_type"]  # the default, "pil"
    pipe(generator=fewstep.Generator(SEED), **kwargs)  # warm-up
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        pipe(generator=fewstep.Generator(SEED), **kwargs)
        times.append(time.perf_counter() - start)
    return {"times": times, "load_s": load_s}


def run_worker(args, *extra) -> dict:
    """Run this script as a worker in a fresh process; its last stdout line is the JSON result."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="131072",
               HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    cmd = [sys.executable, os.path.abspath(__file__), "--size", str(args.size), *extra]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.controlnet:
        cmd.append("--controlnet")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {' '.join(extra)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------- main
# Where each side's own code (not the shared torch modules) spends its time, cumulative.
OWN_CODE = {"fewstep": r"fewstep/",
            "diffusers": r"pipeline_stable_diffusion_xl\.py|pipeline_controlnet_sd_xl\.py|scheduling_tcd|"
                         r"image_processor|torch_utils"}


def _profile(name, fn, calls: int, top: int = 15) -> None:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    for title, sort, restrict in (("own time, everything", "tottime", ()),
                                  ("cumulative time, the pipeline's own code", "cumulative", (OWN_CODE[name],))):
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats(sort).print_stats(*restrict, top)
        lines = out.getvalue().splitlines()
        start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
        print(f"\n--- cProfile {name}, {calls} calls: top {top} by {title} ---")
        print("\n".join(re.sub(r"\S*(site-packages|lib/python3\.\d+)/", "", line).replace(os.getcwd() + "/", "")
                        for line in lines[start:] if line.strip()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per side (at least 10; default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per side first (default 2)")
    parser.add_argument("--size", type=int, default=64, help="image side in px (default 64 = 32x32 latents; try 256)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--skip-mindspore", action="store_true", help="do not time fewstep on MindSpore")
    parser.add_argument("--skip-memory", action="store_true", help="do not measure peak memory")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions of both sides")
    parser.add_argument("--controlnet", action="store_true",
                        help="time StableDiffusionXLControlNetPipeline with one tiny ControlNet instead")
    parser.add_argument("--worker", choices=("memory-fewstep", "memory-diffusers", "mindspore"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker == "mindspore":
        print(json.dumps(mindspore_worker(args.size, max(3, args.repeats // 3), controlnet=args.controlnet)))
        return
    if args.worker:
        print(json.dumps(memory_worker(args.worker.split("-")[1], args.size, args.threads,
                                       controlnet=args.controlnet)))
        return
    if args.repeats < (2 if args.controlnet else 10):
        parser.error("--repeats must be at least 10 (medians of fewer calls are too noisy to compare)"
                     + ("; with --controlnet, 2 to 9 give a quick check that it runs" if args.controlnet else ""))

    import numpy as np
    import torch

    ref, ours = (build_controlnet_pair if args.controlnet else build_pair)(args.threads)
    check = callers(ref, ours, args.size, output_type="np", controlnet=args.controlnet)
    diff = float(np.abs(check["fewstep"]() - check["diffusers"]()).max())
    if args.controlnet and not diff <= AGREE_TOL:
        sys.exit(f"max |fewstep - diffusers| over the image is {diff:.2e} > {AGREE_TOL:.0e}: the two ControlNet "
                 f"pipelines do not make the same image, so timing them would not compare equal work.")
    run = callers(ref, ours, args.size, controlnet=args.controlnet)
    times = {"fewstep": [], "diffusers": []}
    for i in range(args.warmup + args.repeats):
        order = ("fewstep", "diffusers") if i % 2 else ("diffusers", "fewstep")
        for side in order:
            start = time.perf_counter()
            run[side]()
            elapsed = time.perf_counter() - start
            if i >= args.warmup:
                times[side].append(elapsed)
    med = {side: statistics.median(t) for side, t in times.items()}

    latent = args.size // ours.vae_scale_factor
    pipeline_name = "StableDiffusionXLControlNetPipeline" if args.controlnet else "StableDiffusionXLPipeline"
    print(f"tiny SDXL (random weights), {args.size}x{args.size} px = 4x{latent}x{latent} latents, TCD {STEPS} steps, "
          f"eta {ETA}, guidance 0, float32 CPU"
          + (f", 1 tiny ControlNet (conditioning scale {CONTROLNET_SCALE}, fixed {args.size} px control image)"
             if args.controlnet else ""))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{args.repeats} timed calls per side after {args.warmup} warm-up, order alternating")
    if args.repeats < 10:
        print(f"note: only {args.repeats} timed calls per side: a check that the benchmark runs, not a measurement "
              f"(use --repeats 10 or more)")
    print(f"max |fewstep - diffusers| over the image (values in [0, 1]): {diff:.2e}"
          + (f"   (agree within {AGREE_TOL:.0e}: yes)" if args.controlnet else ""))
    for side in ("diffusers", "fewstep"):
        q1, _, q3 = statistics.quantiles(times[side], n=4)
        print(f"{side:9s} {pipeline_name} median: {med[side] * 1e3:9.2f} ms   "
              f"(min {min(times[side]) * 1e3:.2f}, quartiles {q1 * 1e3:.2f}-{q3 * 1e3:.2f})")
    print(f"time ratio fewstep / diffusers: {med['fewstep'] / med['diffusers']:.3f}   (target <= 1.0)")
    if any(statistics.quantiles(t, n=4)[2] > 1.25 * statistics.quantiles(t, n=4)[0] for t in times.values()):
        print("warning: the quartiles are far apart, so other load on this machine is distorting the medians. "
              "Compare the minimums, or rerun with --threads 1 and more --repeats.")

    if args.profile:
        for side in ("fewstep", "diffusers"):
            _profile(side, run[side], args.repeats)

    if not args.skip_memory:
        mem = {side: run_worker(args, "--worker", f"memory-{side}") for side in ("fewstep", "diffusers")}
        inc = {side: statistics.median(m["increase_kb"]) for side, m in mem.items()}
        print(f"peak RSS increase per call ({mem['fewstep']['method']}, fresh process per side, median of "
              f"{len(mem['fewstep']['increase_kb'])}): diffusers {inc['diffusers'] / 1024:.1f} MiB, "
              f"fewstep {inc['fewstep'] / 1024:.1f} MiB")
        print(f"   (process peak incl. loaded models: diffusers {mem['diffusers']['peak_kb'] / 1024:.0f} MiB, "
              f"fewstep {mem['fewstep']['peak_kb'] / 1024:.0f} MiB)")
        print(f"memory ratio fewstep / diffusers: {inc['fewstep'] / max(inc['diffusers'], 1):.3f}   (target <= 1.1)")

    if not args.skip_mindspore:
        try:
            ms = run_worker(args, "--worker", "mindspore", "--repeats", str(args.repeats))
        except RuntimeError as err:
            print(f"MindSpore: not timed ({err})")
        else:
            m = statistics.median(ms["times"])
            print(f"fewstep on MindSpore median: {m * 1e3:9.2f} ms  ({len(ms['times'])} calls after 1 warm-up, "
                  f"separate load {ms['load_s']:.1f} s)")
            print(f"ratio MindSpore / torch (fewstep on both): {m / med['fewstep']:.2f}")


if __name__ == "__main__":
    main()
