"""Full-size SD 1.5 / SDXL, random weights: fewstep against diffusers on the same modules, per stage and end to end,
eager and (with --compile) compiled.

    python benchmarks/bench_full_size.py --device cpu                   # SD 1.5, 512 px, 2 steps, float32
    python benchmarks/bench_full_size.py --device cuda --dtype float16  # SDXL, 1024 px, 4 steps
        [--model sd15|sdxl] [--size PX] [--steps N] [--scheduler tcd|lcm] [--repeats N] [--warmup N]
        [--threads N] [--compile [--compile-mode MODE]] [--tiny] [--diffusers-device-generator] [--json PATH]

Models. The UNet, VAE and text encoder(s) are built from the published config files in benchmarks/configs/
(where each came from: benchmarks/configs/README.md) with random weights: `torch.manual_seed(--seed)` before each
component, built on the chosen device (`with torch.device(...)`), then cast to the dtype. diffusers'
`UNet2DConditionModel.from_config`, `AutoencoderKL.from_config`, transformers' `CLIPTextModel` /
`CLIPTextModelWithProjection` (the class the config's "architectures" names) from `CLIPTextConfig.from_dict`. SDXL in
float16 uses madebyollin/sdxl-vae-fp16-fix's VAE config (same architecture, force_upcast false, as fp16 SDXL is run in
practice); otherwise the base VAE config. There is no model hub here, so the tokenizers are the tiny ones of
`fewstep.testing.tiny_pipeline(model)` (CLIP byte-level BPE, one token per character, 514 entries, 77 tokens):
their ids (< 514) are valid rows of the full-size encoders' 49408-entry embeddings, and the prompt is padded to 77
tokens as in SD, so the encoders do the full-size work. `--tiny` builds the tiny folder's own configs the same way
(a quick smoke test of every code path, compile included, in seconds).

Pipelines. diffusers' StableDiffusionPipeline / StableDiffusionXLPipeline on those modules, scheduler
`TCDScheduler` (default, eta 0.3) or `LCMScheduler` from the released checkpoint's scheduler config (the tiny
folder's copy of it); fewstep's pipeline of the same name on the *same* module objects with fewstep's scheduler of
the same name from that config. guidance_scale 0, one prompt, output_type "np". Noise: fewstep draws on the host
(`fewstep.Generator`: NumPy reproducing torch's CPU stream, then one copy to the device); it cannot reproduce CUDA's
Philox stream, so diffusers gets `torch.Generator("cpu")` on every device (its `randn_tensor` then also draws on the
host and copies: the same work and the same noise). `--diffusers-device-generator` gives diffusers a generator on
the device instead (its usual GPU setup): the noise then differs, so the images are not compared.
The images are compared once per variant before anything is timed (max |fewstep - diffusers| over [0, 1] values;
fp32 CPU: ~1e-5 or better).

Compiled (`--compile`): diffusers' idiom on both, `pipe.unet = torch.compile(pipe.unet, mode=--compile-mode)` and
`pipe.vae.decode = torch.compile(pipe.vae.decode, mode=...)`. The text encoders stay eager. diffusers' compiled
decode is an attribute of the shared VAE module, so it is installed only around diffusers' calls: fewstep's compiled
decode (an attribute of fewstep's VAE wrapper) must not trace diffusers' compiled function. The first call of each
side (the image check) compiles; compile time is not in any figure.

Time. End to end: the whole `pipe(...)` call, wall clock (`torch.cuda.synchronize()` before reading the clock on
cuda). After the image check, `--warmup` untimed calls per side, then `--repeats` calls per side, alternating which
side goes first; medians (and min) in ms, ratio fewstep / diffusers. Per stage, a wall-clock proxy the same for both
sides: the stage's outermost callable, as each pipeline calls it, is wrapped with a timer (UNet: the object's class
is swapped for a subclass whose `__call__` times the call; VAE decode: the instance attribute `decode` is wrapped),
synchronizing before both clock reads on cuda. So the UNet and decode rows count what the pipeline's own call costs,
fewstep's thin wrappers included, and a call nested inside a timed one (fewstep's wrapper calling the diffusers
module, or torch.compile tracing the wrapper again) passes straight through untimed. The text encoders are timed by
forward hooks on the shared transformers modules (a class swap would stop transformers 5 recording hidden states),
so that row leaves out fewstep's wrapper around them (turning the token ids into a tensor). Rows: text encoding
(all encoder calls of one pipe call, summed), UNet step i, VAE decode, and the rest of the call (scheduler, noise,
latents, post-processing = the call minus its stages). Time stages instead by calling the modules directly and both
sides would time the same call, hiding any difference in how each pipeline calls them. On cuda the syncs would stall
the host's run-ahead, so the stage rows come from separate instrumented calls and the end-to-end row from
uninstrumented ones; on cpu the sync is a no-op and both come from the same calls.

Defaults: cpu -> SD 1.5, 512 px, 2 steps, float32, 2 repeats (3 were too slow), 0 warm-up (the image check warms
each side up): 6 full calls. Measured on the 2-core machine while other work ran (load average 5-8): ~110 s a call,
12 min in all, of which the process's own CPU time was 6 min, so 3-4 min when the machine is otherwise idle.
cuda -> SDXL, 1024 px, 4 steps, float16, 10 repeats, 2 warm-up. On a shared machine pass --threads 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "configs")
PROMPT = "a photo of a red fox in the snow, detailed"
TCD_ETA = 0.3
PIPELINES = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}
ENCODERS = {"sd15": ("text_encoder",), "sdxl": ("text_encoder", "text_encoder_2")}
SIDES = ("diffusers", "fewstep")


# ---------------------------------------------------------------------------------------- models
def config_files(model: str, dtype: str, tiny: bool) -> dict:
    """{component: path of its config.json}: the published ones, or the tiny folder's."""
    if tiny:
        from fewstep.testing import tiny_pipeline

        root, vae = tiny_pipeline(model), "vae"
    else:
        root = os.path.join(CONFIGS, model)
        vae = "vae_fp16_fix" if model == "sdxl" and dtype == "float16" else "vae"
    names = {"unet": "unet", "vae": vae, **{name: name for name in ENCODERS[model]}}
    return {name: os.path.join(root, folder, "config.json") for name, folder in names.items()}


def build_module(name: str, config: dict):
    import diffusers
    import transformers

    if name == "unet":
        return diffusers.UNet2DConditionModel.from_config(config)
    if name == "vae":
        return diffusers.AutoencoderKL.from_config(config)
    text_config = transformers.CLIPTextConfig.from_dict(config)
    return getattr(transformers, config["architectures"][0])(text_config)


def build_modules(files: dict, device: str, dtype: str, seed: int) -> dict:
    """Random-weight modules from the config files, each seeded, built on `device` and cast to `dtype`."""
    import torch

    modules = {}
    for name, path in files.items():
        with open(path) as f:
            config = json.load(f)
        torch.manual_seed(seed)
        with torch.device(device):  # initialised where it runs: a GPU builds SDXL in seconds
            module = build_module(name, config)
        modules[name] = module.to(dtype=getattr(torch, dtype)).eval().requires_grad_(False)
    return modules


def build_pipelines(args, modules: dict):
    """(diffusers pipeline, fewstep pipeline) on the same module objects and the tiny folder's tokenizers."""
    import diffusers
    import transformers

    import fewstep
    import fewstep.pipelines
    from fewstep.testing import tiny_pipeline

    diffusers.utils.logging.set_verbosity_error()
    folder = tiny_pipeline(args.model)
    tokenizers = {name: transformers.CLIPTokenizer.from_pretrained(os.path.join(folder, name))
                  for name in ("tokenizer", "tokenizer_2") if os.path.isdir(os.path.join(folder, name))}
    base_config = diffusers.TCDScheduler.load_config(folder, subfolder="scheduler")  # the released checkpoint's
    scheduler_class = {"tcd": "TCDScheduler", "lcm": "LCMScheduler"}[args.scheduler]
    scheduler = getattr(diffusers, scheduler_class).from_config(
        getattr(diffusers, base_config["_class_name"]).from_config(base_config).config)
    extra = (dict(force_zeros_for_empty_prompt=True, add_watermarker=False) if args.model == "sdxl" else
             dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False))
    ref = getattr(diffusers, PIPELINES[args.model])(scheduler=scheduler, **modules, **tokenizers, **extra)
    ref.set_progress_bar_config(disable=True)
    ours = getattr(fewstep.pipelines, PIPELINES[args.model])(
        "torch", getattr(fewstep, scheduler_class).from_config(scheduler.config), **modules, **tokenizers)
    if args.model == "sdxl":
        ours.force_zeros_for_empty_prompt = ref.config.force_zeros_for_empty_prompt
    ours.set_progress_bar_config(disable=True)
    return ref, ours


# ---------------------------------------------------------------------------------------- stage timing
class StageClock:
    """Wall time of the stages of one pipe call, for whichever side is running (`records`, or None: not timing)."""

    def __init__(self, device: str):
        import torch

        self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        self.depth = 0  # > 0 inside a timed call: nested calls (and torch.compile re-entering) pass straight through
        self.records = None

    def run(self, stage: str, fn, args, kwargs):
        if self.depth:
            return fn(*args, **kwargs)
        self.depth += 1
        try:
            if self.records is None:
                return fn(*args, **kwargs)
            self.sync()
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.sync()
            self.records.append((stage, time.perf_counter() - start))
            return out
        finally:
            self.depth -= 1


def time_calls_of(obj, stage: str, clock: StageClock) -> None:
    """Swap obj's class for a subclass whose __call__ goes through the clock (undone by `untime`). A class swap,
    not a replaced attribute: diffusers' pipelines register what is assigned to them, and __call__ is looked up
    on the type."""
    cls = type(obj)
    base_call = cls.__call__

    def __call__(self, *args, **kwargs):
        if clock.depth:  # the check torch.compile sees when it traces a wrapper it re-enters: no clock code
            return base_call(self, *args, **kwargs)
        return clock.run(stage, lambda *a, **k: base_call(self, *a, **k), args, kwargs)

    obj.__class__ = type(cls.__name__, (cls,), {"__call__": __call__, "_timed_base": cls})


def time_forward_of(module, stage: str, clock: StageClock):
    """Time a module's calls with forward hooks (its class stays: transformers 5 records hidden states by the
    model's own class); returns the hook handles. Only for modules torch.compile never traces: the text encoders."""
    starts = []

    def before(mod, args):
        if clock.depth:
            starts.append(None)
            return
        clock.depth += 1
        if clock.records is not None:
            clock.sync()
        starts.append(time.perf_counter())

    def after(mod, args, out):
        start = starts.pop()
        if start is None:
            return
        if clock.records is not None:
            clock.sync()
            clock.records.append((stage, time.perf_counter() - start))
        clock.depth -= 1

    return [module.register_forward_pre_hook(before), module.register_forward_hook(after)]


def untime(obj) -> None:
    base = type(obj).__dict__.get("_timed_base")
    if base is not None:
        obj.__class__ = base


def timed_function(fn, stage: str, clock: StageClock):
    def run(*args, **kwargs):
        return clock.run(stage, fn, args, kwargs)
    return run


class Side:
    """One pipeline as the timing loop drives it: what to install around each call, and its stage timers."""

    def __init__(self, name: str, pipe, model: str, clock: StageClock):
        self.name, self.pipe, self.model, self.clock = name, pipe, model, clock
        self.timed, self.hooks = [], []
        self.compiled_decode = None  # diffusers' compiled decode: on the shared VAE only around diffusers' calls
        self.decode = None  # the (timed) decode installed around each diffusers call
        self.own_decode = None  # fewstep's VAE wrapper's decode attribute before the timer (its compiled decode)

    def install_timers(self) -> None:
        pipe, clock = self.pipe, self.clock
        time_calls_of(pipe.unet, "UNet", clock)
        self.timed.append(pipe.unet)
        if self.name == "diffusers":  # the encoder modules both sides call (fewstep through its wrappers)
            for name in ENCODERS[self.model]:
                self.hooks += time_forward_of(getattr(pipe, name), "text encoding", clock)
        if self.name == "fewstep":  # fewstep's VAE wrapper is its own object: its attribute stays for the variant
            self.own_decode = pipe.vae.__dict__.get("decode")
            pipe.vae.decode = timed_function(pipe.vae.decode, "VAE decode", clock)
        else:
            self.decode = timed_function(self.compiled_decode or pipe.vae.decode, "VAE decode", clock)

    def remove_timers(self) -> None:
        for obj in self.timed:
            untime(obj)
        for handle in self.hooks:
            handle.remove()
        self.timed, self.hooks = [], []
        self.decode = None
        if self.name == "fewstep":
            del self.pipe.vae.decode
            if self.own_decode is not None:
                self.pipe.vae.decode = self.own_decode

    def __enter__(self):
        if self.decode is not None:
            self.pipe.vae.decode = self.decode
        return self

    def __exit__(self, *exc):
        if self.decode is not None:
            del self.pipe.vae.decode
        return False


def compile_side(side: Side, mode) -> bool:
    """diffusers' idiom on this side's pipeline; False when fewstep's pipeline does not take it (yet)."""
    import torch

    pipe = side.pipe
    pipe.unet = torch.compile(pipe.unet, mode=mode)
    if side.name == "diffusers":
        side.compiled_decode = torch.compile(pipe.vae.decode, mode=mode)
        return True
    if not type(pipe.unet).__module__.startswith("fewstep"):
        return False
    pipe.vae.decode = torch.compile(pipe.vae.decode, mode=mode)
    return True


# ---------------------------------------------------------------------------------------- calls
def call_kwargs(args) -> dict:
    kwargs = dict(prompt=PROMPT, num_inference_steps=args.steps, guidance_scale=0.0, height=args.size,
                  width=args.size, output_type="np")
    if args.scheduler == "tcd":
        kwargs["eta"] = TCD_ETA
    return kwargs


def caller(side: Side, args):
    import torch

    import fewstep

    kwargs = call_kwargs(args)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    def generator():
        if side.name == "fewstep":
            return fewstep.Generator(args.seed)
        device = args.device if args.diffusers_device_generator else "cpu"
        return torch.Generator(device).manual_seed(args.seed)

    def run():
        with side:
            images = side.pipe(generator=generator(), **kwargs).images
        sync()
        return images
    return run


def alternate(sides, runs, calls: int, clock: StageClock, stages: bool):
    """{side: [(seconds, [(stage, seconds), ...]), ...]} of `calls` calls per side, alternating which goes first."""
    out = {side.name: [] for side in sides}
    for i in range(calls):
        for side in (sides if i % 2 == 0 else sides[::-1]):
            clock.records = [] if stages else None
            start = time.perf_counter()
            runs[side.name]()
            elapsed = time.perf_counter() - start
            out[side.name].append((elapsed, clock.records or []))
            clock.records = None
    return out


def stage_rows(calls, steps: int) -> dict:
    """{row: [ms per call]} from the (seconds, records) of instrumented calls."""
    rows = {}
    for total, records in calls:
        unet = [s for stage, s in records if stage == "UNet"]
        call = {"text encoding": sum(s for stage, s in records if stage == "text encoding"),
                **{f"UNet step {i + 1}": s for i, s in enumerate(unet)},
                "VAE decode": sum(s for stage, s in records if stage == "VAE decode")}
        call["rest of the call"] = total - sum(call.values())
        if len(unet) != steps:
            call[f"(UNet calls: {len(unet)})"] = 0.0
        for row, seconds in call.items():
            rows.setdefault(row, []).append(seconds * 1e3)
    return rows


def measure_variant(variant: str, sides, args, clock: StageClock) -> dict:
    import numpy as np

    runs = {side.name: caller(side, args) for side in sides}
    for side in sides:
        side.install_timers()
    try:
        images = {side.name: runs[side.name]() for side in sides}  # the check; it also warms up (and compiles)
        diff = float(np.abs(images["fewstep"].astype(np.float64) - images["diffusers"]).max())
        finite = all(bool(np.isfinite(im).all()) for im in images.values())
        graphs = compiled_graphs()
        alternate(sides, runs, args.warmup, clock, stages=False)
        separate = args.device == "cuda"
        e2e = alternate(sides, runs, args.repeats, clock, stages=not separate)
        staged = alternate(sides, runs, args.repeats, clock, stages=True) if separate else e2e
        recompiled = compiled_graphs() - graphs  # 0 unless a timer or a side's call upsets torch.compile's guards
    finally:
        for side in sides:
            side.remove_timers()
    rows = {}
    for side in sides:
        side_rows = stage_rows(staged[side.name], args.steps)
        side_rows["end to end"] = [seconds * 1e3 for seconds, _ in e2e[side.name]]
        rows[side.name] = side_rows
    return {"max_abs_diff": None if args.diffusers_device_generator else diff, "finite": finite,
            "graphs_compiled_while_timing": recompiled, "ms": rows}


def compiled_graphs() -> int:
    """Graphs torch.compile has made in this process so far (0 where it was never used)."""
    utils = sys.modules.get("torch._dynamo.utils")
    return 0 if utils is None else int(utils.counters["stats"]["unique_graphs"])


# ---------------------------------------------------------------------------------------- report
def print_table(variant: str, result: dict, args) -> None:
    diff = result["max_abs_diff"]
    print(f"\n[{variant}] max |fewstep - diffusers| over the image (values in [0, 1]): "
          + ("not compared (diffusers draws its noise on the device)" if diff is None else f"{diff:.2e}")
          + ("" if result["finite"] else "   WARNING: the image has NaN/inf values (random weights overflowed)"))
    if result["graphs_compiled_while_timing"]:
        print(f"WARNING: torch.compile made {result['graphs_compiled_while_timing']} graph(s) during the timed calls: "
              f"recompilation is in the figures")
    ms = result["ms"]
    rows = [row for row in ms["diffusers"] if row in ms["fewstep"]]
    print(f"{'stage (median ms, min in brackets)':36s} {'diffusers':>20s} {'fewstep':>20s} {'fewstep/diffusers':>18s}")
    for row in rows:
        d, f = statistics.median(ms["diffusers"][row]), statistics.median(ms["fewstep"][row])
        ratio = f / d if d > 0 else float("nan")
        cells = [f"{statistics.median(v):9.1f} ({min(v):8.1f})" for v in (ms["diffusers"][row], ms["fewstep"][row])]
        print(f"{variant + ' ' + row:36s} {cells[0]:>20s} {cells[1]:>20s} {ratio:18.3f}")
    noisy = [side for side in SIDES if len(ms[side]["end to end"]) >= 4
             and statistics.quantiles(ms[side]["end to end"], n=4)[2] > 1.25 * statistics.quantiles(
                 ms[side]["end to end"], n=4)[0]]
    if noisy:
        print("warning: the end-to-end quartiles are far apart, so other load is distorting the medians: compare "
              "the minimums, or rerun with --threads 1 and more --repeats.")


def defaults(args) -> None:
    cuda = args.device == "cuda"
    args.dtype = args.dtype or ("float16" if cuda else "float32")
    args.model = args.model or ("sdxl" if cuda else "sd15")
    args.size = args.size or (64 if args.tiny else 1024 if args.model == "sdxl" else 512)
    args.steps = args.steps or (4 if cuda else 2)
    args.repeats = args.repeats or (10 if cuda else 2)
    args.warmup = (2 if cuda else 0) if args.warmup is None else args.warmup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "float16"), help="default float32 on cpu, float16 on cuda")
    parser.add_argument("--model", choices=tuple(PIPELINES), help="default sd15 on cpu, sdxl on cuda")
    parser.add_argument("--size", type=int, help="image side in px (default 512 sd15, 1024 sdxl, 64 --tiny)")
    parser.add_argument("--steps", type=int, help="denoising steps (default 2 on cpu, 4 on cuda)")
    parser.add_argument("--scheduler", choices=("tcd", "lcm"), default="tcd", help="default tcd (eta 0.3)")
    parser.add_argument("--repeats", type=int, help="timed calls per side and variant (default 2 cpu, 10 cuda)")
    parser.add_argument("--warmup", type=int, help="untimed calls per side after the image check (default 0 cpu, "
                                                   "2 cuda)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="weights and noise seed (default 0)")
    parser.add_argument("--compile", action="store_true", help="add the torch.compile rows (UNet and VAE decode)")
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode, e.g. max-autotune-no-cudagraphs, reduce-overhead (default: torch's)")
    parser.add_argument("--tiny", action="store_true", help="the tiny test folder's configs: a smoke test in seconds")
    parser.add_argument("--diffusers-device-generator", action="store_true",
                        help="diffusers draws its noise with a generator on the device (images then not compared)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    defaults(args)
    if args.repeats < 1 or args.warmup < 0 or args.steps < 1 or args.size < 8:
        parser.error("--repeats and --steps must be at least 1, --warmup at least 0, --size at least 8")

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device here; use --device cpu.")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    files = config_files(args.model, args.dtype, args.tiny)
    modules = build_modules(files, args.device, args.dtype, args.seed)
    ref, ours = build_pipelines(args, modules)
    clock = StageClock(args.device)
    sides = [Side("diffusers", ref, args.model, clock), Side("fewstep", ours, args.model, clock)]
    built_s = time.perf_counter() - start

    import diffusers

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"{os.cpu_count()} CPUs"
    what = "tiny test configs" if args.tiny else "published configs"
    print(f"{PIPELINES[args.model]} ({args.model}, {what}, random weights), {args.size}x{args.size} px, "
          f"{args.steps} steps {args.scheduler.upper()}" + (f" eta {TCD_ETA}" if args.scheduler == "tcd" else "")
          + f", guidance 0, {args.dtype} on {args.device} ({device_name})")
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, {torch.get_num_threads()} threads; "
          f"{args.repeats} timed calls per side after the image check + {args.warmup} warm-up, order alternating; "
          f"models built in {built_s:.1f} s")
    if args.repeats < 10:
        print(f"note: {args.repeats} timed calls per side: a rough figure (medians of few calls)")

    results = {"eager": measure_variant("eager", sides, args, clock)}
    print_table("eager", results["eager"], args)
    if args.compile:
        compiled = [compile_side(side, args.compile_mode) for side in sides]
        if not all(compiled):
            print(f"\n[compiled] not measured: fewstep's pipeline does not take `pipe.unet = torch.compile(pipe.unet)` "
                  f"in this checkout (pipe.unet became {type(ours.unet).__name__}).")
        else:
            start = time.perf_counter()
            results["compiled"] = measure_variant("compiled", sides, args, clock)
            print_table("compiled", results["compiled"], args)
            print(f"(compiled variant incl. compilation: {time.perf_counter() - start:.0f} s)")
    if args.json:
        from fewstep.core.files import write_json

        settings = {k: v for k, v in vars(args).items() if k != "json"}
        write_json(args.json, {"settings": settings, "device_name": device_name, "torch": torch.__version__,
                               "diffusers": diffusers.__version__, "variants": results}, indent=1)
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
