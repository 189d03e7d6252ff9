"""The whole SDXL text-to-image call, 4 TCD steps: fewstep vs diffusers on the same modules (torch CPU).

    python benchmarks/bench_pipeline_sdxl.py [--repeats 10] [--size 64|256] [--threads N]
                                             [--skip-mindspore] [--skip-memory] [--profile]
                                             [--controlnet | --ip-adapter]

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

IP-Adapter. `--ip-adapter` times the same call with the tiny plain SDXL IP-Adapter
(`fewstep.testing.tiny_ip_adapter.tiny_ip_adapter("sdxl")`, `IP_ADAPTER_FILES["sdxl"]["plain"]`) loaded on
both sides (everything above holds, with these differences). Each side loads it itself, with its own
`pipe.load_ip_adapter(folder, subfolder=, weight_name=)` from the same files, then
`set_ip_adapter_scale(0.5)`; both get `ip_adapter_image=` one fixed reference picture of the output size
(colour gradients and shapes). Loading installs IP attention processors on the UNet, and loading twice
on one UNet module conflicts, so here each side has *its own copy of the UNet*, loaded from the same
folder: fewstep's `StableDiffusionXLPipeline.from_pretrained(tiny_pipeline("sdxl"))` (torch backend)
has its own, and diffusers' `StableDiffusionXLPipeline` is built on fewstep's other torch modules (vae,
both text encoders; tokenizers) with `diffusers.UNet2DConditionModel.from_pretrained(folder,
subfolder="unet")` and `TCDScheduler.from_config` of the folder's scheduler. The image encoder is each
side's own too (load_ip_adapter loads it). Seeds: fewstep.Generator(0) vs torch.manual_seed(0). The
images must agree within 1e-4 before anything is timed, or the script stops. Besides the call, the
script times `load_ip_adapter` itself: after the call timing both sides unload, then `--warmup` +
`--repeats` cycles of each side, alternating which goes first, each cycle `load_ip_adapter(...)` (timed:
reading and checking the file, loading the image encoder, installing the processors) then
`unload_ip_adapter()` (outside the timed region, timed separately, so that it can be loaded again); the
medians and the ratio fewstep/diffusers of the load alone are printed (target <= 1.0). `--profile` then
also profiles both sides' loads. The memory workers build both sides (so the baseline is the same) and
call one. The MindSpore side loads the IP-Adapter itself from the same files
(`StableDiffusionXLPipeline.from_pretrained(folder, backend="mindspore")`, then `load_ip_adapter`).
As with `--controlnet`, fewer than 10 `--repeats` give a quick check that it runs.
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
IP_ADAPTER_SCALE, IP_ADAPTER_VARIANT = 0.5, "plain"


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


def folder_tcd_scheduler(folder):
    """diffusers' TCDScheduler from the config of the folder's own scheduler class (what build_pair does)."""
    import diffusers

    base = getattr(diffusers, diffusers.TCDScheduler.load_config(folder, subfolder="scheduler")["_class_name"])
    return diffusers.TCDScheduler.from_config(base.from_pretrained(folder, subfolder="scheduler").config)


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
    scheduler = folder_tcd_scheduler(folder)
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


def ip_adapter_files():
    """(folder, subfolder, weight_name) of the tiny plain SDXL IP-Adapter, as load_ip_adapter takes them."""
    from fewstep.testing.tiny_ip_adapter import IP_ADAPTER_FILES, tiny_ip_adapter

    subfolder, weight_name = IP_ADAPTER_FILES["sdxl"][IP_ADAPTER_VARIANT]
    return tiny_ip_adapter("sdxl"), subfolder, weight_name


def load_ip_adapter(pipe) -> None:
    """The pipeline's own load_ip_adapter (fewstep's or diffusers') from the tiny files; the scale is set apart."""
    folder, subfolder, weight_name = ip_adapter_files()
    pipe.load_ip_adapter(folder, subfolder=subfolder, weight_name=weight_name)


def build_ip_adapter_pair(threads):
    """(diffusers pipeline, fewstep pipeline), each with its own UNet (same folder) and the IP-Adapter
    loaded by its own load_ip_adapter; the VAE, text encoders and tokenizers are fewstep's, shared."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    import diffusers

    import fewstep
    from fewstep.pipelines import StableDiffusionXLPipeline
    from fewstep.testing import tiny_pipeline

    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()  # both sides' image encoders: "`torch_dtype` is deprecated"
    folder = tiny_pipeline("sdxl")
    ours = StableDiffusionXLPipeline.from_pretrained(folder)
    scheduler = folder_tcd_scheduler(folder)
    ref = diffusers.StableDiffusionXLPipeline(
        vae=ours.vae.module, text_encoder=ours.text_encoder.module, text_encoder_2=ours.text_encoder_2.module,
        tokenizer=ours.tokenizer, tokenizer_2=ours.tokenizer_2,
        unet=diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet"),  # its own copy
        scheduler=scheduler, force_zeros_for_empty_prompt=ours.force_zeros_for_empty_prompt, add_watermarker=False,
    )
    assert ref.unet is not ours.unet.module
    ref.set_progress_bar_config(disable=True)
    ours.scheduler = fewstep.TCDScheduler.from_config(scheduler.config)
    ours.set_progress_bar_config(disable=True)
    for pipe in (ref, ours):
        load_ip_adapter(pipe)
        pipe.set_ip_adapter_scale(IP_ADAPTER_SCALE)
    return ref, ours


def build(mode, threads):
    return {"plain": build_pair, "controlnet": build_controlnet_pair, "ip-adapter": build_ip_adapter_pair}[mode](threads)


def reference_image(size):
    """A fixed IP-Adapter reference picture, `size` px square: colour gradients with a few filled shapes."""
    import numpy as np
    from PIL import Image, ImageDraw

    ramp = np.linspace(0, 255, size, dtype=np.float32)
    pixels = np.stack([np.broadcast_to(ramp[None, :], (size, size)), np.broadcast_to(ramp[:, None], (size, size)),
                       np.full((size, size), 96.0, np.float32)], axis=-1)
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((size // 6, size // 4, size * 3 // 5, size * 4 // 5), fill=(230, 120, 30))
    draw.rectangle((size // 2, size // 8, size * 7 // 8, size // 2), fill=(20, 40, 160))
    return image


def call_kwargs(size, mode: str, output_type="pil") -> dict:
    kwargs = dict(prompt=PROMPT, num_inference_steps=STEPS, eta=ETA, guidance_scale=0.0, height=size, width=size,
                  output_type=output_type)
    if mode == "controlnet":
        kwargs.update(image=control_image(size), controlnet_conditioning_scale=CONTROLNET_SCALE)
    elif mode == "ip-adapter":
        kwargs.update(ip_adapter_image=reference_image(size))
    return kwargs


def callers(ref, ours, size, output_type="pil", mode: str = "plain"):
    """Zero-argument callables, one per side, each making one image from fresh seed-0 generators."""
    import torch

    import fewstep

    kwargs = call_kwargs(size, mode, output_type)

    def run_ref():
        # the same noise either way; with the IP-Adapter the generator is torch.manual_seed's, as in its guides
        generator = torch.manual_seed(SEED) if mode == "ip-adapter" else torch.Generator().manual_seed(SEED)
        return ref(generator=generator, **kwargs).images

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


def memory_worker(side: str, size: int, threads, calls: int = 3, mode: str = "plain") -> dict:
    ref, ours = build(mode, threads)
    return measure_call_memory(callers(ref, ours, size, mode=mode)[side], calls)


def measure_call_memory(run, calls: int = 3) -> dict:
    """Peak RSS increase of `calls` calls of run() after one warm-up (see the module docstring, Memory)."""
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


def mindspore_worker(size: int, calls: int, mode: str = "plain") -> dict:
    import fewstep
    from fewstep.pipelines import StableDiffusionXLControlNetPipeline, StableDiffusionXLPipeline
    from fewstep.testing import tiny_controlnet, tiny_pipeline

    start = time.perf_counter()
    if mode == "controlnet":
        cn = fewstep.ControlNetModel.from_pretrained(tiny_controlnet("sdxl"), backend="mindspore")
        pipe = StableDiffusionXLControlNetPipeline.from_pretrained(tiny_pipeline("sdxl"), backend="mindspore",
                                                                   controlnet=cn)
    else:
        pipe = StableDiffusionXLPipeline.from_pretrained(tiny_pipeline("sdxl"), backend="mindspore")
    if mode == "ip-adapter":  # its own load_ip_adapter (mindone installs the processors), same files
        load_ip_adapter(pipe)
        pipe.set_ip_adapter_scale(IP_ADAPTER_SCALE)
    load_s = time.perf_counter() - start
    pipe.scheduler = fewstep.TCDScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    kwargs = call_kwargs(size, mode)
    del kwargs["output_type"]  # the default, "pil"
    return {"times": time_calls(lambda: pipe(generator=fewstep.Generator(SEED), **kwargs), calls), "load_s": load_s}


def time_calls(fn, calls: int, warmup: int = 1) -> list:
    """Seconds of each of `calls` calls of fn() after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def run_worker(args, *extra) -> dict:
    """Run this script as a worker in a fresh process; its last stdout line is the JSON result."""
    cmd = [sys.executable, os.path.abspath(__file__), "--size", str(args.size), *extra]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.mode != "plain":
        cmd.append("--" + args.mode)
    return worker_result(cmd, " ".join(extra))


def worker_result(cmd, what: str) -> dict:
    """Run a worker command in a fresh process (fixed malloc thresholds, offline); its last stdout line is JSON."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="131072",
               HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------- main
# Where each side's own code (not the shared torch modules) spends its time, cumulative.
OWN_CODE = {"fewstep": r"fewstep/",
            "diffusers": r"pipeline_stable_diffusion_xl\.py|pipeline_controlnet_sd_xl\.py|scheduling_tcd|"
                         r"image_processor|torch_utils|loaders/ip_adapter|loaders/unet"}


def _profile(name, fn, calls: int, top: int = 15, after=None, what: str = "calls") -> None:
    """cProfile `calls` runs of fn; `after` (if given) runs after each, outside the profile."""
    prof = cProfile.Profile()
    for _ in range(calls):
        prof.enable()
        fn()
        prof.disable()
        if after is not None:
            after()
    for title, sort, restrict in (("own time, everything", "tottime", ()),
                                  ("cumulative time, the pipeline's own code", "cumulative", (OWN_CODE[name],))):
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats(sort).print_stats(*restrict, top)
        lines = out.getvalue().splitlines()
        start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
        print(f"\n--- cProfile {name}, {calls} {what}: top {top} by {title} ---")
        print("\n".join(re.sub(r"\S*(site-packages|lib/python3\.\d+)/", "", line).replace(os.getcwd() + "/", "")
                        for line in lines[start:] if line.strip()))


def alternate(fns, warmup: int, repeats: int, after=None):
    """{side: [seconds]} of `repeats` timed runs of each side's fn after `warmup` untimed ones, alternating
    which side goes first. With `after` ({side: fn}), each run is followed by that side's `after` fn,
    timed apart: then ({side: [fn seconds]}, {side: [after seconds]}) is returned."""
    times = {"fewstep": [], "diffusers": []}
    after_times = {"fewstep": [], "diffusers": []}
    for i in range(warmup + repeats):
        order = ("fewstep", "diffusers") if i % 2 else ("diffusers", "fewstep")
        for side in order:
            start = time.perf_counter()
            fns[side]()
            elapsed = time.perf_counter() - start
            if after is not None:
                start = time.perf_counter()
                after[side]()
                after_elapsed = time.perf_counter() - start
            if i >= warmup:
                times[side].append(elapsed)
                if after is not None:
                    after_times[side].append(after_elapsed)
    return times if after is None else (times, after_times)


def spread_warning(times) -> None:
    if any(statistics.quantiles(t, n=4)[2] > 1.25 * statistics.quantiles(t, n=4)[0] for t in times.values()):
        print("warning: the quartiles are far apart, so other load on this machine is distorting the medians. "
              "Compare the minimums, or rerun with --threads 1 and more --repeats.")


def timing_line(label: str, times) -> str:
    """'<label> median: ... ms   (min ..., quartiles ...-...)' of a list of seconds."""
    q1, _, q3 = statistics.quantiles(times, n=4)
    return (f"{label} median: {statistics.median(times) * 1e3:9.2f} ms   "
            f"(min {min(times) * 1e3:.2f}, quartiles {q1 * 1e3:.2f}-{q3 * 1e3:.2f})")


def report_memory_and_mindspore(args, run_worker, fewstep_median: float) -> None:
    """The peak-memory and MindSpore/torch lines every mode prints; `run_worker(args, *extra)` runs one
    measurement in a fresh process of the calling script."""
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
            print(f"ratio MindSpore / torch (fewstep on both): {m / fewstep_median:.2f}")



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per side (at least 10; default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per side first (default 2)")
    parser.add_argument("--size", type=int, default=64, help="image side in px (default 64 = 32x32 latents; try 256)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--skip-mindspore", action="store_true", help="do not time fewstep on MindSpore")
    parser.add_argument("--skip-memory", action="store_true", help="do not measure peak memory")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions of both sides")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--controlnet", action="store_true",
                       help="time StableDiffusionXLControlNetPipeline with one tiny ControlNet instead")
    modes.add_argument("--ip-adapter", action="store_true",
                       help="time the call with the tiny plain IP-Adapter loaded (scale 0.5), and load_ip_adapter")
    parser.add_argument("--worker", choices=("memory-fewstep", "memory-diffusers", "mindspore"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.mode = "controlnet" if args.controlnet else "ip-adapter" if args.ip_adapter else "plain"

    if args.worker == "mindspore":
        print(json.dumps(mindspore_worker(args.size, max(3, args.repeats // 3), mode=args.mode)))
        return
    if args.worker:
        print(json.dumps(memory_worker(args.worker.split("-")[1], args.size, args.threads, mode=args.mode)))
        return
    if args.repeats < (2 if args.mode != "plain" else 10):
        parser.error("--repeats must be at least 10 (medians of fewer calls are too noisy to compare)"
                     + (f"; with --{args.mode}, 2 to 9 give a quick check that it runs" if args.mode != "plain" else ""))

    import numpy as np
    import torch

    ref, ours = build(args.mode, args.threads)
    check = callers(ref, ours, args.size, output_type="np", mode=args.mode)
    diff = float(np.abs(check["fewstep"]() - check["diffusers"]()).max())
    checked = args.mode != "plain"
    if checked and not diff <= AGREE_TOL:
        what = {"controlnet": "ControlNet", "ip-adapter": "IP-Adapter"}[args.mode]
        sys.exit(f"max |fewstep - diffusers| over the image is {diff:.2e} > {AGREE_TOL:.0e}: the two {what} "
                 f"pipelines do not make the same image, so timing them would not compare equal work.")
    run = callers(ref, ours, args.size, mode=args.mode)
    times = alternate(run, args.warmup, args.repeats)
    med = {side: statistics.median(t) for side, t in times.items()}

    load_times = None
    if args.mode == "ip-adapter":  # load_ip_adapter itself: load (timed), then unload (timed apart)
        pipes = {"fewstep": ours, "diffusers": ref}
        for pipe in pipes.values():
            pipe.unload_ip_adapter()
        loads = {side: (lambda pipe=pipe: load_ip_adapter(pipe)) for side, pipe in pipes.items()}
        unloads = {side: pipe.unload_ip_adapter for side, pipe in pipes.items()}
        load_times, unload_times = alternate(loads, args.warmup, args.repeats, after=unloads)
        load_med = {side: statistics.median(t) for side, t in load_times.items()}

    latent = args.size // ours.vae_scale_factor
    pipeline_name = "StableDiffusionXLControlNetPipeline" if args.controlnet else "StableDiffusionXLPipeline"
    print(f"tiny SDXL (random weights), {args.size}x{args.size} px = 4x{latent}x{latent} latents, TCD {STEPS} steps, "
          f"eta {ETA}, guidance 0, float32 CPU"
          + (f", 1 tiny ControlNet (conditioning scale {CONTROLNET_SCALE}, fixed {args.size} px control image)"
             if args.mode == "controlnet" else "")
          + (f", tiny {IP_ADAPTER_VARIANT} IP-Adapter (scale {IP_ADAPTER_SCALE}, fixed {args.size} px reference image)"
             if args.mode == "ip-adapter" else ""))
    if args.mode == "ip-adapter":
        print("IP-Adapter: each side loaded it with its own load_ip_adapter from the same files, on its own copy of "
              "the UNet loaded from the same folder (fewstep: StableDiffusionXLPipeline.from_pretrained; diffusers: "
              "UNet2DConditionModel.from_pretrained(folder, subfolder='unet')); VAE, text encoders and tokenizers "
              "shared; each side its own image encoder. Seeds: fewstep.Generator(0) / torch.manual_seed(0)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{args.repeats} timed calls per side after {args.warmup} warm-up, order alternating")
    if args.repeats < 10:
        print(f"note: only {args.repeats} timed calls per side: a check that the benchmark runs, not a measurement "
              f"(use --repeats 10 or more)")
    print(f"max |fewstep - diffusers| over the image (values in [0, 1]): {diff:.2e}"
          + (f"   (agree within {AGREE_TOL:.0e}: yes)" if checked else ""))
    for side in ("diffusers", "fewstep"):
        print(timing_line(f"{side:9s} {pipeline_name}", times[side]))
    print(f"time ratio fewstep / diffusers: {med['fewstep'] / med['diffusers']:.3f}   (target <= 1.0)")
    spread_warning(times)
    if load_times is not None:
        print(f"load_ip_adapter: {args.repeats} load + unload cycles per side after {args.warmup} warm-up, order "
              f"alternating; the load timed alone (file read and checked, image encoder loaded, processors "
              f"installed), the unload apart")
        for side in ("diffusers", "fewstep"):
            q1, _, q3 = statistics.quantiles(load_times[side], n=4)
            print(f"{side:9s} load_ip_adapter median: {load_med[side] * 1e3:9.2f} ms   "
                  f"(min {min(load_times[side]) * 1e3:.2f}, quartiles {q1 * 1e3:.2f}-{q3 * 1e3:.2f});   "
                  f"unload_ip_adapter median {statistics.median(unload_times[side]) * 1e3:.2f} ms")
        print(f"load_ip_adapter time ratio fewstep / diffusers: {load_med['fewstep'] / load_med['diffusers']:.3f}   "
              f"(target <= 1.0)")
        spread_warning(load_times)
        for pipe in (ref, ours):  # loaded again, for the profile below
            load_ip_adapter(pipe)
            pipe.set_ip_adapter_scale(IP_ADAPTER_SCALE)

    if args.profile:
        for side in ("fewstep", "diffusers"):
            _profile(side, run[side], args.repeats)
        if load_times is not None:
            pipes = {"fewstep": ours, "diffusers": ref}
            for side, pipe in pipes.items():
                pipe.unload_ip_adapter()
                _profile(side, lambda pipe=pipe: load_ip_adapter(pipe), args.repeats, after=pipe.unload_ip_adapter,
                         what="load_ip_adapter calls")

    report_memory_and_mindspore(args, run_worker, med["fewstep"])

if __name__ == "__main__":
    main()
