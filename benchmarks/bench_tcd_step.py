"""One TCD step (eta 0.3) on a (1, 4, 128, 128) float32 torch CPU tensor: fewstep vs diffusers.

Both schedulers run in the same process on the same tensors, each with its own torch.Generator (so
both draw the same noise through diffusers' randn_tensor). Each repeat calls set_timesteps(4) on both
outside the timed region, so every timed call is the first, noisy step of a 4-step schedule
(t = 999 -> 759), the common case. The two are timed alternately within each repeat (order swapped
every repeat) so machine load affects both alike. Prints the medians and the ratio fewstep/diffusers,
and, for context, the median of the noise draw alone, which both steps share and neither can avoid.

    python benchmarks/bench_tcd_step.py [--repeats 400] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Optional

import torch
from diffusers import TCDScheduler as DiffusersTCD
from diffusers.utils.torch_utils import randn_tensor

import fewstep

SHAPE = (1, 4, 128, 128)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def parse_args(description: str) -> argparse.Namespace:
    """The options of the scheduler-step benchmarks (bench_scheduler_steps.py takes them too); applies --threads."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def time_alternately(args: argparse.Namespace, repeat: Callable[[], tuple], draw: Optional[Callable] = None) -> dict:
    """{"ours", "ref", "noise"}: lists of seconds per timed call, after args.warmup untimed repeats. `repeat()`
    resets both schedulers outside the timed region and returns the two calls (fewstep's, diffusers'), timed
    alternately (order swapped every repeat) so machine load affects both alike; `draw`, the noise draw both
    steps share, is timed after them."""
    times = {"ours": [], "ref": [], "noise": []}
    for i in range(args.warmup + args.repeats):
        step_ours, step_ref = repeat()
        order = (("ours", step_ours), ("ref", step_ref)) if i % 2 else (("ref", step_ref), ("ours", step_ours))
        for key, fn in order + ((("noise", draw),) if draw is not None else ()):
            elapsed = _timed(fn)
            if i >= args.warmup:
                times[key].append(elapsed)
    return times


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])

    g = torch.Generator().manual_seed(0)
    sample = torch.randn(SHAPE, generator=g)
    model_output = torch.randn(SHAPE, generator=g)
    ours, ref = fewstep.TCDScheduler(), DiffusersTCD()

    # Same inputs and the same noise: check the two agree before timing them.
    ours.set_timesteps(4)
    ref.set_timesteps(4)
    t_ours, t_ref = int(ours.timesteps[0]), ref.timesteps[0]
    a = ours.step(model_output, t_ours, sample, eta=0.3, generator=torch.Generator().manual_seed(1)).prev_sample
    b = ref.step(model_output, t_ref, sample, eta=0.3, generator=torch.Generator().manual_seed(1)).prev_sample
    rel = ((a - b).abs().max() / b.abs().max()).item()

    gen_ours, gen_ref, gen_noise = (torch.Generator().manual_seed(s) for s in (2, 2, 3))
    step_ours = lambda: ours.step(model_output, t_ours, sample, eta=0.3, generator=gen_ours)  # noqa: E731
    step_ref = lambda: ref.step(model_output, t_ref, sample, eta=0.3, generator=gen_ref)  # noqa: E731
    draw = lambda: randn_tensor(SHAPE, generator=gen_noise, device=sample.device, dtype=sample.dtype)  # noqa: E731

    def repeat():
        ours.set_timesteps(4)
        ref.set_timesteps(4)
        return step_ours, step_ref

    times = time_alternately(args, repeat, draw)
    m_ours, m_ref, m_noise = (statistics.median(times[k]) for k in ("ours", "ref", "noise"))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, shape {SHAPE}, float32, eta 0.3, "
          f"t=999 (noisy step), {args.repeats} repeats")
    print(f"max |fewstep - diffusers| / max |diffusers| = {rel:.2e}")
    print(f"diffusers TCDScheduler.step median: {m_ref * 1e6:8.1f} us")
    print(f"fewstep   TCDScheduler.step median: {m_ours * 1e6:8.1f} us")
    print(f"shared noise draw (randn_tensor):   {m_noise * 1e6:8.1f} us")
    print(f"ratio fewstep / diffusers: {m_ours / m_ref:.3f}")
    print(f"ratio excluding the shared noise draw: {(m_ours - m_noise) / (m_ref - m_noise):.3f}")


if __name__ == "__main__":
    main()
