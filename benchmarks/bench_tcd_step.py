"""One TCD step (eta 0.3) on a (1, 4, 128, 128) float32 torch CPU tensor: fewstep vs diffusers.

Both schedulers run in the same process on the same tensors, each with its own torch.Generator (so
both draw the same noise with diffusers' randn_tensor). Each repeat re-arms the step index with
set_begin_index(0) outside the timed region, so every timed call is the first, noisy step of a
4-step schedule (t = 999 -> 759), the common case. Prints the medians over the repeats and the ratio
fewstep / diffusers.

    python benchmarks/bench_tcd_step.py [--repeats 400] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import TCDScheduler as DiffusersTCD

import fewstep


def median_step_seconds(scheduler, model_output, sample, timestep, generator, repeats: int, warmup: int) -> float:
    times = []
    for i in range(warmup + repeats):
        scheduler.set_begin_index(0)
        start = time.perf_counter()
        scheduler.step(model_output, timestep, sample, eta=0.3, generator=generator)
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    shape = (1, 4, 128, 128)
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(shape, generator=g)
    model_output = torch.randn(shape, generator=g)

    ours, ref = fewstep.TCDScheduler(), DiffusersTCD()
    ours.set_timesteps(4)
    ref.set_timesteps(4)
    t_ours, t_ref = int(ours.timesteps[0]), ref.timesteps[0]

    # Same inputs and noise: check the two agree before timing them.
    ours.set_begin_index(0)
    ref.set_begin_index(0)
    a = ours.step(model_output, t_ours, sample, eta=0.3, generator=torch.Generator().manual_seed(1)).prev_sample
    b = ref.step(model_output, t_ref, sample, eta=0.3, generator=torch.Generator().manual_seed(1)).prev_sample
    rel = ((a - b).abs().max() / b.abs().max()).item()

    gen_ours, gen_ref = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    # Interleave the two measurements in rounds so drift in machine load affects both alike.
    ours_times, ref_times = [], []
    rounds = 4
    per_round = max(args.repeats // rounds, 1)
    for _ in range(rounds):
        ref_times.append(median_step_seconds(ref, model_output, sample, t_ref, gen_ref, per_round, args.warmup))
        ours_times.append(median_step_seconds(ours, model_output, sample, t_ours, gen_ours, per_round, args.warmup))
    m_ours, m_ref = statistics.median(ours_times), statistics.median(ref_times)

    # The noise draw is the same call (diffusers' randn_tensor) on both sides; time it alone too.
    noise_gen = torch.Generator().manual_seed(3)
    from diffusers.utils.torch_utils import randn_tensor

    noise_times = []
    for i in range(args.warmup + args.repeats):
        start = time.perf_counter()
        randn_tensor(shape, generator=noise_gen, device=sample.device, dtype=sample.dtype)
        if i >= args.warmup:
            noise_times.append(time.perf_counter() - start)
    m_noise = statistics.median(noise_times)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, shape {shape}, float32, eta 0.3, t=999 (noisy step)")
    print(f"max |fewstep - diffusers| / max |diffusers| = {rel:.2e}")
    print(f"diffusers TCDScheduler.step median: {m_ref * 1e6:8.1f} us")
    print(f"fewstep   TCDScheduler.step median: {m_ours * 1e6:8.1f} us")
    print(f"  of which the shared noise draw:   {m_noise * 1e6:8.1f} us (randn_tensor alone)")
    print(f"ratio fewstep / diffusers: {m_ours / m_ref:.3f}")
    print(f"ratio without the shared noise draw: {(m_ours - m_noise) / (m_ref - m_noise):.3f}")


if __name__ == "__main__":
    main()
