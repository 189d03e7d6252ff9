"""Peak host memory (RSS) of fusing a LoRA into an SD 1.5-size UNet, per `keep_base` mode (torch CPU).

The UNet has the real SD 1.5 config with random weights, saved to safetensors and loaded from there with
`fewstep.UNet2DConditionModel.from_pretrained` (so `keep_base="file"` has its files); the LoRA is the
synthetic rank-64 one of bench_lora_fuse.py, on every Linear and Conv2d. Per mode, in a fresh process:
load the LoRA (which fuses), unfuse, then measure `fuse_lora()` from the unfused state: the peak RSS
(VmHWM, reset through /proc/self/clear_refs just before) minus the RSS before, and the RSS kept after, as
fractions of the UNet's size. On torch CPU the "device" is host memory, so "device" and "host" both
keep one more UNet; "file" keeps none.

The measuring processes run with the allocator as users run it (glibc's default malloc, whose mmap
threshold rises to 32 MiB, so freed blocks below it stay in the heap and count in the RSS).
`--mmap-threshold` also measures with it fixed at 128 KiB (MALLOC_MMAP_THRESHOLD_), where every freed
weight goes back to the system at once: the difference is what the heap holds on to.

    python benchmarks/bench_lora_memory.py [--dtype float16] [--modes file,host,device] [--mmap-threshold]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def _trim() -> None:
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def prepare(workdir: str, dtype: str) -> None:
    """Write the UNet folder and the LoRA file into `workdir`."""
    import torch
    from bench_lora_fuse import torch_unet, write_lora

    from fewstep.backends.torch_backend import TORCH_DTYPES

    unet = torch_unet().to(TORCH_DTYPES.native(dtype))
    unet.save_pretrained(os.path.join(workdir, "unet"), safe_serialization=True)
    shapes = {p: tuple(m.weight.shape) for p, m in unet.named_modules()
              if isinstance(m, torch.nn.Linear) or (isinstance(m, torch.nn.Conv2d) and m.groups == 1)}
    write_lora(shapes, os.path.join(workdir, "lora.safetensors"), seed=1)


def measure(workdir: str, dtype: str, mode: str) -> dict:
    """In this process: the figures of one mode (see the module docstring)."""
    import fewstep
    from bench_lora_fuse import unet_only

    wrapper = fewstep.UNet2DConditionModel.from_pretrained(os.path.join(workdir, "unet"), backend="torch", dtype=dtype)
    ours = unet_only("torch", wrapper.module)
    ours.unet.weight_files = wrapper.weight_files  # the files it was loaded from
    size = sum(p.numel() * p.element_size() for p in wrapper.module.parameters())
    ours.fuse_lora(keep_base=mode)
    _trim()
    before_load = _status("VmRSS")
    _reset_peak()
    ours.load_lora_weights(os.path.join(workdir, "lora.safetensors"))
    load_peak = _status("VmHWM") - before_load
    ours.unfuse_lora()
    _trim()
    before = _status("VmRSS")
    _reset_peak()
    ours.fuse_lora()
    peak = _status("VmHWM") - before
    _trim()
    kept = _status("VmRSS") - before
    kinds = sorted({type(v).__name__ for v in ours._lora_state().saved.values()})
    return {"mode": mode, "dtype": dtype, "unet_bytes": size, "fuse_peak": peak / size, "fuse_kept": kept / size,
            "load_and_fuse_peak": load_peak / size, "kept_as": kinds}


def run_all(dtype: str, modes, default_malloc: bool = True) -> list:
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if not default_malloc:
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    with tempfile.TemporaryDirectory(prefix="fewstep-lora-mem-") as workdir:
        subprocess.run([sys.executable, __file__, "--prepare", workdir, "--dtype", dtype], check=True)
        results = []
        for mode in modes:
            out = subprocess.run([sys.executable, __file__, "--measure", workdir, "--dtype", dtype, "--modes", mode],
                                 check=True, capture_output=True, text=True, env=env)
            results.append(dict(json.loads(out.stdout.strip().splitlines()[-1]), default_malloc=default_malloc))
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--modes", default="file,host,device")
    parser.add_argument("--mmap-threshold", action="store_true",
                        help="also measure with glibc's mmap threshold fixed at 128 KiB")
    parser.add_argument("--prepare", help=argparse.SUPPRESS)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        return prepare(args.prepare, args.dtype)
    if args.measure:
        print(json.dumps(measure(args.measure, args.dtype, args.modes)))
        return
    results = run_all(args.dtype, args.modes.split(","))
    if args.mmap_threshold:
        results += run_all(args.dtype, args.modes.split(","), default_malloc=False)
    for r in results:
        malloc = "glibc default malloc" if r["default_malloc"] else "mmap threshold 128 KiB"
        print(f"keep_base={r['mode']:6s} {r['dtype']}, {malloc}: UNet {r['unet_bytes'] / 2**30:.2f} GiB; "
              f"fuse_lora() peak RSS "
              f"+{100 * r['fuse_peak']:.1f}% of the UNet, kept after +{100 * r['fuse_kept']:.1f}%; first "
              f"load_lora_weights (reads the LoRA, fuses; includes paging in the UNet's weights, which loading "
              f"left memory-mapped on disk) peak +{100 * r['load_and_fuse_peak']:.1f}%; bases kept as "
              f"{r['kept_as']}")


if __name__ == "__main__":
    main()
