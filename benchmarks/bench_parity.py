"""What a full parity report costs: `fewstep.parity.compare` on the tiny SDXL (4 TCD steps, eta 0.3)
against one plain call of each of the two sides, in one process.

    python benchmarks/bench_parity.py [--repeats 5] [--threads 1] [--against torch|mindspore] [--clean]

Sides: fewstep on torch (side a) and, by default, a second fewstep torch pipeline from a copy of the
tiny SDXL folder with one UNet attention weight (`up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k`)
(`up_blocks.0...` in the tiny SDXL) changed by 1e-2-scale noise, so the report also reruns the first divergent UNet call with every
submodule hooked (per-layer localisation); `--clean` compares two unchanged sides (no localisation);
`--against mindspore` makes side b fewstep on MindSpore. The plain run is side a's call plus side b's
call with the same arguments (what a user runs to compare two images by hand); the report is one
`compare()` with localisation on. Medians over `--repeats` after one warm-up each, alternating order;
prints both and the ratio report / plain (target <= 3).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_pipeline_sdxl import spread_warning, timing_line  # noqa: E402  (the shared helpers)

TO_K = "up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"  # the tiny SDXL UNet's first up block with attention
KWARGS = dict(prompt="a red fox in the snow", num_inference_steps=4, eta=0.3, guidance_scale=0.0)


def faulty_copy(folder: str) -> str:
    from safetensors.numpy import load_file, save_file

    copy = os.path.join(tempfile.mkdtemp(prefix="fewstep-bench-parity-"), "sdxl-faulty")
    shutil.copytree(folder, copy)
    unet = os.path.join(copy, "unet")
    (name,) = [f for f in os.listdir(unet) if f.endswith(".safetensors")]
    tensors = load_file(os.path.join(unet, name))
    tensors[TO_K] = tensors[TO_K] + 1e-2 * np.random.default_rng(0).standard_normal(tensors[TO_K].shape).astype(
        np.float32)
    save_file(tensors, os.path.join(unet, name))
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--against", choices=("torch", "mindspore"), default="torch")
    parser.add_argument("--clean", action="store_true", help="two unchanged sides: no per-layer rerun")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import fewstep
    from fewstep.parity import compare, load_side
    from fewstep.testing import tiny_pipeline

    folder = tiny_pipeline("sdxl")
    side_a = load_side(folder, backend="torch")
    side_b = load_side(folder if args.clean else faulty_copy(folder), backend=args.against)
    size = side_a.default_size()
    call = dict(KWARGS, height=size[0], width=size[1])

    def plain():
        for side in (side_a, side_b):
            side.pipe(generator=fewstep.Generator(1), output_type="np", **call)

    def report():
        return compare(side_a, side_b, call, seed=0)

    first = report()
    print(f"report: first stage out of bounds {first.first_stage.label if first.first_stage else None}, "
          f"first module {first.first_module.path if first.first_module else None}")
    times = {"plain": [], "report": []}
    for i in range(args.repeats + 1):
        for name in (("plain", "report") if i % 2 else ("report", "plain")):
            start = time.perf_counter()
            (plain if name == "plain" else report)()
            if i:
                times[name].append(time.perf_counter() - start)
    print(timing_line("plain run of both sides", times["plain"]))
    print(timing_line("full parity report     ", times["report"]))
    spread_warning(times)
    print(f"ratio report / plain: {statistics.median(times['report']) / statistics.median(times['plain']):.2f} "
          f"(target <= 3)")


if __name__ == "__main__":
    main()
