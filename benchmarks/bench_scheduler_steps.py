"""One step of fewstep's DDIM, Euler and Euler-ancestral samplers vs diffusers', on a (1, 4, 128, 128) float32
torch CPU latent (an SDXL-size latent), in one process.

Each sampler is set to a 4-step trailing schedule (the few-step setting: SDXL-Lightning, Hyper-SD, Turbo)
outside the timed region before every repeat, so every timed call is the first step (from t = 999), the
two libraries timed alternately (order swapped every repeat) so machine load affects both alike. DDIM and
Euler run at zero noise (DDIM eta 0, Euler s_churn 0); Euler-ancestral draws noise every step, as diffusers'
does, so it is reported with its noise draw (each side with its own torch.Generator: the same noise), and
also with the shared draw's median subtracted from both. Prints the medians and the ratios fewstep/diffusers
(target <= 0.6 at zero noise). Euler's timed call includes scale_model_input, which every Euler step needs.

    python benchmarks/bench_scheduler_steps.py [--repeats 400] [--threads N]
"""

from __future__ import annotations

import importlib
import statistics

import diffusers
import torch
from diffusers.utils.torch_utils import randn_tensor

from bench_tcd_step import parse_args, time_alternately  # the shared options and timing loop

SHAPE = (1, 4, 128, 128)
CONFIG = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="trailing")
# (name, fewstep module, extra step kwargs, calls scale_model_input, draws noise, config overrides): DDIM twice,
# with its default clip_sample=True (what Hyper-SD's from_config of an SDXL config gives) and as PCM sets it
SAMPLERS = [
    ("DDIMScheduler", "fewstep.core.schedulers.ddim", dict(eta=0.0), False, False, {}),
    ("DDIMScheduler", "fewstep.core.schedulers.ddim", dict(eta=0.0), False, False,
     dict(clip_sample=False, set_alpha_to_one=False)),
    ("EulerDiscreteScheduler", "fewstep.core.schedulers.euler", {}, True, False, {}),
    ("EulerAncestralDiscreteScheduler", "fewstep.core.schedulers.euler_ancestral", {}, True, True, {}),
]


def _step_fn(scheduler, model_output, sample, scaled: bool, kwargs: dict, generator):
    t = scheduler.timesteps[0]

    def run():
        x = scheduler.scale_model_input(sample, t) if scaled else sample
        del x  # the UNet would take it; the step itself takes the unscaled sample
        return scheduler.step(model_output, t, sample, generator=generator, **kwargs)

    return run


def _bench(name, ours_cls, kwargs, scaled, noisy, overrides, model_output, sample, args):
    config = {**CONFIG, **overrides}
    ours, ref = ours_cls(**config), getattr(diffusers, name)(**config)
    for s in (ours, ref):
        s.set_timesteps(4)
    a = _step_fn(ours, model_output, sample, scaled, kwargs, torch.Generator().manual_seed(1))().prev_sample
    b = _step_fn(ref, model_output, sample, scaled, kwargs, torch.Generator().manual_seed(1))().prev_sample
    rel = ((a - b).abs().max() / b.abs().max()).item()

    gen_ours, gen_ref, gen_noise = (torch.Generator().manual_seed(s) for s in (2, 2, 3))

    def repeat():
        for s in (ours, ref):
            s.set_timesteps(4)
        return (_step_fn(ours, model_output, sample, scaled, kwargs, gen_ours),
                _step_fn(ref, model_output, sample, scaled, kwargs, gen_ref))

    draw = lambda: randn_tensor(SHAPE, generator=gen_noise, dtype=sample.dtype)  # noqa: E731
    times = time_alternately(args, repeat, draw if noisy else None)
    m_ours, m_ref = statistics.median(times["ours"]), statistics.median(times["ref"])
    label = name + "".join(f" {k}={v}" for k, v in overrides.items() if k == "clip_sample")
    line = (f"{label:32s} diffusers {m_ref * 1e6:7.1f} us  fewstep {m_ours * 1e6:7.1f} us  "
            f"ratio {m_ours / m_ref:.3f}  (max rel diff {rel:.1e})")
    if noisy:
        m_noise = statistics.median(times["noise"])
        line += (f"\n{'':32s} with noise; the shared draw alone {m_noise * 1e6:.1f} us, ratio without it "
                 f"{(m_ours - m_noise) / (m_ref - m_noise):.3f}")
    print(line)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(SHAPE, generator=g) * 14.6
    model_output = torch.randn(SHAPE, generator=g)
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, {torch.get_num_threads()} threads, "
          f"shape {SHAPE}, float32, 4-step trailing schedule, first step, {args.repeats} repeats")
    for name, module, kwargs, scaled, noisy, overrides in SAMPLERS:
        _bench(name, getattr(importlib.import_module(module), name), kwargs, scaled, noisy, overrides, model_output,
               sample, args)


if __name__ == "__main__":
    main()
