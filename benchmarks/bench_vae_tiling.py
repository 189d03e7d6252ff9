"""Peak host memory (RSS) of a 512x512 VAE decode with and without `pipe.enable_vae_tiling()` (torch CPU).

The VAE is the tiny SD 1.5 pipeline's (`fewstep.testing.tiny_pipeline("sd15")`: blocks (16, 32), a
factor of 2, tiles of its sample_size, 64 px), so a 512x512 image is 256x256 latents and tiling cuts it
into overlapping 64 px tiles. Each measurement runs in a fresh process: load the pipeline, draw the
latents, reset the peak (VmHWM, through /proc/self/clear_refs), decode once through the pipeline's VAE
wrapper (what `__call__` decodes with), and report the peak RSS above the RSS before the decode. The
processes run with glibc's mmap threshold fixed at 128 KiB (MALLOC_MMAP_THRESHOLD_), so freed
activations go back to the system at once and the peak is the decode's, not the allocator's.
Medians over `--repeats` processes per mode; the ratio is tiled / untiled.

    python benchmarks/bench_vae_tiling.py [--size 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_lora_memory import _reset_peak, _status  # noqa: E402  (/proc/self readers, stdlib only)


def measure(size: int, tiled: bool) -> dict:
    import gc

    import fewstep
    from fewstep.testing import tiny_pipeline

    pipe = fewstep.pipelines.StableDiffusionPipeline.from_pretrained(tiny_pipeline("sd15"), backend="torch")
    if tiled:
        pipe.enable_vae_tiling()
    factor = pipe.vae_scale_factor
    latents = pipe.ops.from_numpy(fewstep.Generator(0).randn((1, 4, size // factor, size // factor)))
    gc.collect()
    with pipe.ops.no_grad():
        pipe.vae.decode(latents[:, :, :8, :8])  # first-call set-up (kernels, caches) outside the measurement
        gc.collect()
        _reset_peak()
        before = _status("VmRSS")
        start = time.perf_counter()
        image = pipe.vae.decode(latents)
        seconds = time.perf_counter() - start
        peak = _status("VmHWM")
    assert tuple(image.shape) == (1, 3, size, size)
    return {"peak_above_mib": (peak - before) / 2**20, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measure", choices=("tiled", "untiled"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.size, args.measure == "tiled")))
        return
    from fewstep.testing import tiny_pipeline

    tiny_pipeline("sd15")  # build the folder once, outside the measuring processes
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(128 * 1024), HF_HUB_OFFLINE="1")
    results = {}
    for mode in ("untiled", "tiled"):
        runs = []
        for _ in range(args.repeats):
            out = subprocess.run([sys.executable, __file__, "--measure", mode, "--size", str(args.size)], env=env,
                                 capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        results[mode] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        each = ", ".join("%.1f" % r["peak_above_mib"] for r in runs)
        print(f"{mode:>8}: peak RSS above the start of the decode {results[mode]['peak_above_mib']:8.1f} MiB "
              f"(median of {args.repeats} fresh processes; runs: {each}), decode {results[mode]['seconds']:.2f} s")
    ratio = results["tiled"]["peak_above_mib"] / results["untiled"]["peak_above_mib"]
    print(f"tiny SD 1.5 VAE, {args.size}x{args.size} decode, torch CPU: tiled / untiled peak = {ratio:.3f} "
          f"({1 / ratio:.1f}x less memory with enable_vae_tiling)")


if __name__ == "__main__":
    main()
