"""Time fewstep.Generator(seed).randn against torch.randn on a seeded CPU torch.Generator.

Both sides do the same work per repeat: build a generator from a seed, then draw one SD-sized
latent of shape (1, 4, 128, 128) in float32. Runs in one process, reports the median of each side
and the ratio fewstep / torch (target: <= 3).

    python benchmarks/bench_randn.py [--repeats 500] [--shape 1 4 128 128] [--seed 1234]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _median_seconds(fn, repeats: int, warmup: int = 20) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=500, help="timed repeats per side (>= 200)")
    parser.add_argument("--shape", type=int, nargs="+", default=[1, 4, 128, 128])
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    repeats = max(args.repeats, 200)
    shape = tuple(args.shape)

    import torch

    import fewstep

    seed = args.seed

    def draw_fewstep():
        return fewstep.Generator(seed).randn(shape)

    def draw_torch():
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed))

    # same numbers, so the comparison is apples to apples
    diff = float(np.abs(draw_fewstep() - draw_torch().numpy()).max())

    # interleave the sides in rounds so drifting machine load hits both alike
    fewstep_times, torch_times = [], []
    rounds = 5
    for _ in range(rounds):
        fewstep_times.append(_median_seconds(draw_fewstep, repeats // rounds + 1))
        torch_times.append(_median_seconds(draw_torch, repeats // rounds + 1))
    t_fewstep = statistics.median(fewstep_times)
    t_torch = statistics.median(torch_times)

    print(f"shape {shape} float32, seed {seed}, {repeats} repeats per side (median of {rounds} rounds)")
    print(f"torch {torch.__version__}, numpy {np.__version__}; max |fewstep - torch| = {diff:.2e}")
    print(f"fewstep.Generator(seed).randn : {t_fewstep * 1e6:9.1f} us")
    print(f"torch.randn(generator=...)    : {t_torch * 1e6:9.1f} us")
    print(f"ratio fewstep / torch         : {t_fewstep / t_torch:9.2f}")


if __name__ == "__main__":
    main()
