"""LoRA switches on a torch.compile'd UNet: recompilations and the first call after each switch, fewstep vs diffusers.

    python benchmarks/bench_compile_lora.py [--kind sd15|sdxl] [--size 64] [--threads 1] [--warm 5]
                                            [--mode MODE] [--fullgraph] [--skip-diffusers] [--skip-hotswap]
                                            [--diffusers-compile assign|inplace|both]

Setup. The tiny random-weight pipeline folder (`fewstep.testing.tiny_pipeline(kind)`), torch CPU, one process.
Every call: one prompt, TCD 2 steps, eta 0.3, guidance_scale 0, `--size` px square, NumPy output, seed 0
(fewstep: fewstep.Generator(0); diffusers: torch.Generator().manual_seed(0), the same noise). Two LoRAs "a" and
"b" (tests/lora_cases.py: random factors on the UNet's and the text encoders' layers, ranks 4 and 8, written in
the PEFT format both libraries read) go into a temporary folder that is removed at the end.

Sequence. Each library's UNet is compiled the way diffusers' guides write it, `pipe.unet = torch.compile(pipe.unet)`
(`--mode`, `--fullgraph` pass through); the first call compiles, then `--warm` calls give the warm time (median).
Then, in order: load LoRA a, load LoRA b (the newly loaded adapter becomes the active one), set_adapters([a, b],
[1.0, 0.8]), fuse_lora(lora_scale=0.5), unfuse_lora, set_adapters([b]), set_adapters([a]), unload_lora_weights.
After each operation: the time of the operation itself, the time of the first call after it, first/warm (the
acceptance bound is <= 1.5; warm = before any LoRA), the call after that (`2nd`: the steady state with the LoRA,
which for diffusers includes its unfused PEFT layers' extra work), and what dynamo compiled meanwhile, from its
own counters: `graphs` = new graphs (counters["stats"]["unique_graphs"]), `frames` = frames dynamo converted
(counters["frames"]["total"], one per compile or recompile of a frame, graph-break resumes included). Anything
above 0 after an operation is a recompilation. A "hit config.recompile_limit" warning from dynamo (it then runs
that frame eagerly) is caught and reported. `torch._dynamo.reset()` runs before each library's part, so neither
inherits the other's cache entries; inductor's on-disk cache stays, so a repeated run compiles faster than the
first (the graph counts do not change).

diffusers is measured twice (`--diffusers-compile both`, the default), each on a fresh pipeline: with its UNet
compiled as `pipe.unet = torch.compile(pipe.unet)` (diffusers' guides, its hotswap docs included) and as
`pipe.unet.compile()` (nn.Module.compile, in place). The first makes `pipe.unet` a torch OptimizedModule, and
diffusers' set_adapters / fuse_lora / unfuse_lora / unload_lora_weights only act on components that are a
ModelMixin (`issubclass(model.__class__, ModelMixin)` in diffusers/loaders/lora_base.py), so they skip that UNet
without a word (load_lora_weights still reaches it, through OptimizedModule's attribute forwarding). Zero
recompilations there mean nothing happened, so after every operation the script also prints what diffusers'
UNet holds (its PEFT layers, the active adapters with their scaling, how many are merged).

Checks. fewstep's compiled image after every operation equals the same pipeline run eagerly (the UNet's
`use_compiled(None)`, then the compiled runner put back) within 1e-4, and fewstep's and diffusers' compiled images
after "load a" agree within 1e-4; a failed check exits with status 1 after the table. diffusers' operations that
raise are reported in the table and the sequence goes on.

Hotswap. If the installed diffusers has `enable_lora_hotswap` (0.33+), a fresh diffusers pipeline:
enable_lora_hotswap(target_rank=the larger rank of the two LoRAs) before compiling, load a, compile, warm, then
`load_lora_weights(b, adapter_name="a", hotswap=True)`: the same numbers for the first call after it, and its
image against an eager diffusers pipeline with b loaded the ordinary way. diffusers does
not hotswap text-encoder adapters ("not yet supported", its docstring), so this run uses UNet-only copies of a
and b.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; no hub look-ups
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests.lora_cases

import numpy as np  # noqa: E402
import torch  # noqa: E402

import fewstep  # noqa: E402
from fewstep.testing import tiny_pipeline  # noqa: E402
from tests.lora_cases import make_lora, targets_from_folder, write  # noqa: E402

ATOL = 1e-4
BOUND = 1.5  # acceptance: first call after a switch / warm call
PROMPT = "a red fox in the snow"
CLASSES = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=sorted(CLASSES), default="sd15")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--warm", type=int, default=5, help="warm calls after compiling (median = warm time)")
    parser.add_argument("--mode", default=None, help="torch.compile's mode (default: torch's)")
    parser.add_argument("--fullgraph", action="store_true", help="torch.compile(..., fullgraph=True)")
    parser.add_argument("--skip-diffusers", action="store_true")
    parser.add_argument("--skip-hotswap", action="store_true")
    parser.add_argument("--diffusers-compile", choices=("assign", "inplace", "both"), default="both",
                        help="diffusers' UNet compiled as pipe.unet = torch.compile(pipe.unet), as "
                             "pipe.unet.compile(), or each in turn")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


# --------------------------------------------------------------------------- counting compilations
class _LimitWarnings(logging.Handler):
    """Collects dynamo's "hit config.recompile_limit" warnings (dynamo then runs the frame eagerly)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        message = record.getMessage()
        if "hit config." in message:
            self.messages.append(message.splitlines()[0].strip())


LIMITS = _LimitWarnings()
logging.getLogger("torch._dynamo.convert_frame").addHandler(LIMITS)


def counts() -> tuple:
    c = torch._dynamo.utils.counters
    return int(c["stats"]["unique_graphs"]), int(c["frames"]["total"]), len(LIMITS.messages)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return (time.perf_counter() - start) * 1e3, out


def measured_call(call):
    """(ms, image, new graphs, frames converted, recompile-limit warnings) of one call."""
    before = counts()
    ms, image = timed(call)
    after = counts()
    return ms, image, after[0] - before[0], after[1] - before[1], LIMITS.messages[before[2]:after[2]]


def compile_options(args) -> dict:
    options = {"fullgraph": True} if args.fullgraph else {}
    if args.mode:
        options["mode"] = args.mode
    return options


# --------------------------------------------------------------------------- the two sides
class Side:
    """One library's pipeline, its call, and the results of the sequence (rows keyed by operation)."""

    def __init__(self, name, pipe, call, state=None):
        self.name, self.pipe, self.call, self.rows, self.images = name, pipe, call, {}, {}
        self.warm_ms, self.state = None, state

    def compile_and_warm(self, options, warm, in_place=False):
        if in_place:  # nn.Module.compile: the UNet keeps its class, so diffusers' LoRA methods still reach it
            self.pipe.unet.compile(**options)
        else:
            self.pipe.unet = torch.compile(self.pipe.unet, **options)
        ms, image, graphs, frames, limits = measured_call(self.call)
        times = [timed(self.call)[0] for _ in range(warm)]
        self.rows["compile (1st call)"] = dict(op=None, first=ms, second=times[0], graphs=graphs, frames=frames,
                                               limits=limits)
        self.warm_ms = statistics.median(times)
        self.images["base"] = image
        return image

    def run(self, what, operation, check=None):
        try:
            op_ms, _ = timed(operation)
        except Exception as e:  # reported in the table; the sequence goes on
            first_line = (str(e).strip().splitlines() or [""])[0]
            self.rows[what] = dict(error=f"{type(e).__name__}: {first_line[:120]}")
            return None
        ms, image, graphs, frames, limits = measured_call(self.call)
        self.rows[what] = dict(op=op_ms, first=ms, second=timed(self.call)[0], graphs=graphs, frames=frames,
                               limits=limits)
        self.images[what] = image
        if self.state is not None:
            self.rows[what]["state"] = self.state(self.pipe)
        if check is not None:
            self.rows[what]["check"] = check(image)
        return image


def fewstep_side(args, folder) -> Side:
    pipe = getattr(fewstep, CLASSES[args.kind]).from_pretrained(folder, backend="torch")
    pipe.set_progress_bar_config(disable=True)

    def call():
        return pipe(prompt=PROMPT, num_inference_steps=2, guidance_scale=0.0, eta=0.3, height=args.size,
                    width=args.size, generator=fewstep.Generator(0), output_type="np").images

    return Side("fewstep", pipe, call)


def diffusers_side(args, folder, name="diffusers") -> Side:
    import diffusers

    pipe = getattr(diffusers, CLASSES[args.kind]).from_pretrained(folder)
    pipe.scheduler = diffusers.TCDScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def call():
        return pipe(prompt=PROMPT, num_inference_steps=2, guidance_scale=0.0, eta=0.3, height=args.size,
                    width=args.size, generator=torch.Generator().manual_seed(0), output_type="np").images

    return Side(name, pipe, call, state=unet_lora_state)


def eager_image(side: Side):
    """fewstep's call with the UNet run eagerly (same weights, same fusion), then the compiled runner put back."""
    unet = side.pipe.unet
    saved = unet._compiled
    unet.use_compiled(None)
    try:
        return side.call()
    finally:
        unet.use_compiled(saved)


def sequence(load):
    """The operations in order: (name, function of the pipeline). `load(pipe, path, name)` loads a LoRA file."""
    return [
        ("load_lora_weights a", lambda p, f: load(p, f["a"], "a")),
        ("load_lora_weights b", lambda p, f: load(p, f["b"], "b")),
        ("set_adapters [a,b] [1,.8]", lambda p, f: p.set_adapters(["a", "b"], [1.0, 0.8])),
        ("fuse_lora(lora_scale=0.5)", lambda p, f: p.fuse_lora(lora_scale=0.5)),
        ("unfuse_lora", lambda p, f: p.unfuse_lora()),
        ("set_adapters [b]", lambda p, f: p.set_adapters(["b"])),
        ("set_adapters [a]", lambda p, f: p.set_adapters(["a"])),
        ("unload_lora_weights", lambda p, f: p.unload_lora_weights()),
    ]


def load_path(pipe, path, name):  # fewstep takes the file's path
    pipe.load_lora_weights(path, adapter_name=name)


def load_folder(pipe, path, name, **kwargs):  # diffusers wants folder + weight_name when HF_HUB_OFFLINE is set
    pipe.load_lora_weights(os.path.dirname(path), weight_name=os.path.basename(path), adapter_name=name, **kwargs)


def run_fewstep(args, folder, files, failures) -> Side:
    torch._dynamo.reset()
    side = fewstep_side(args, folder)
    eager_base = side.call()
    base = side.compile_and_warm(compile_options(args), args.warm)
    err = float(np.abs(base - eager_base).max())
    side.rows["compile (1st call)"]["check"] = err
    if err > ATOL:
        failures.append(f"fewstep compiled vs eager (no LoRA): {err:.3g} > {ATOL}")

    def check(image):
        return float(np.abs(image - eager_image(side)).max())

    for what, operation in sequence(load_path):
        side.run(what, lambda: operation(side.pipe, files), check)
        row = side.rows[what]
        if "error" in row:
            failures.append(f"fewstep {what}: {row['error']}")
        elif row["check"] > ATOL:
            failures.append(f"fewstep {what}: max |compiled - eager| = {row['check']:.3g} > {ATOL}")
    return side


def unet_lora_state(pipe) -> str:
    """What diffusers' UNet holds after an operation (PEFT layers, the active adapters and their scaling on one
    layer, how many layers are merged): shows whether the operation reached the UNet at all."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    unet = getattr(pipe.unet, "_orig_mod", pipe.unet)
    layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        return "no LoRA layers"
    first = layers[0]
    scaling = {name: round(float(first.scaling[name]), 3) for name in first.active_adapters if name in first.scaling}
    merged = sum(bool(getattr(m, "merged", False)) for m in layers)
    return f"{len(layers)} LoRA layers, active {scaling} (name: scaling), {merged} merged"


def run_diffusers(args, folder, files, in_place) -> Side:
    torch._dynamo.reset()
    side = diffusers_side(args, folder, "diffusers " + ("pipe.unet.compile()" if in_place else "torch.compile(unet)"))
    side.compile_and_warm(compile_options(args), args.warm, in_place)
    for what, operation in sequence(load_folder):
        side.run(what, lambda: operation(side.pipe, files))
    return side


def run_hotswap(args, folder, files, rank) -> Side:
    torch._dynamo.reset()
    side = diffusers_side(args, folder, "diffusers hotswap")
    side.pipe.enable_lora_hotswap(target_rank=rank)  # before compiling, as its docstring says
    load_folder(side.pipe, files["a_unet"], "a")
    side.compile_and_warm(compile_options(args), args.warm)
    side.run("hotswap a -> b", lambda: load_folder(side.pipe, files["b_unet"], "a", hotswap=True))
    return side


# --------------------------------------------------------------------------- the table
def cells(side, what) -> str:
    row = side.rows.get(what) if side is not None else None
    if row is None:
        return f"{'-':>8} {'-':>9} {'-':>6} {'-':>6} {'-':>6}"
    if "error" in row:
        return f"{'raised':>8} {'-':>9} {'-':>6} {'-':>6} {'-':>6}"
    op = "-" if row["op"] is None else f"{row['op']:.1f}"
    graphs = f"{row['graphs']}/{row['frames']}" + ("!" if row["limits"] else "")
    return f"{op:>8} {row['first']:9.1f} {row['first'] / side.warm_ms:6.2f} {row['second']:6.0f} {graphs:>6}"


def print_table(sides, hot, names):
    """One block of columns per side (fewstep first), one row per operation; then the hotswap rows."""
    head = f"{'op ms':>8} {'1st call':>9} {'1st/wm':>6} {'2nd':>6} {'graphs':>6}"
    width = len(head)
    print("\n" + f"{'operation':<27}" + "".join(f"| {side.name[:width]:^{width}} " for side in sides))
    print(f"{'':<27}" + f"| {head} " * len(sides))
    print("-" * 27 + ("+" + "-" * (width + 2)) * len(sides))
    print(f"{'warm call (median)':<27}"
          + "".join(f"| {'':>8} {s.warm_ms:9.1f} {'1.00':>6} {'':>6} {'':>6} " for s in sides))
    for what in ["compile (1st call)"] + names:
        print(f"{what:<27}" + "".join(f"| {cells(side, what)} " for side in sides))
    if hot is not None:
        print(f"\n{'diffusers hotswap':<27}| {head} |  (enable_lora_hotswap, load a, pipe.unet = torch.compile(...))")
        print(f"{'warm call (median)':<27}| {'':>8} {hot.warm_ms:9.1f} {'1.00':>6} {'':>6} {'':>6} |")
        for what, label in (("compile (1st call)", "load a, compile"), ("hotswap a -> b", "load b, hotswap=True")):
            print(f"{label:<27}| {cells(hot, what)} |")
    print(f"dynamo's recompile_limit: {torch._dynamo.config.recompile_limit} compiled entries per frame; "
          + ", ".join(f"{side.name}: {sum(r.get('frames', 0) for r in side.rows.values())} frames converted in all"
                      for side in sides))
    print("ms; 1st/wm = first call after the operation / warm call (median, before any LoRA); 2nd = the call after "
          "that; graphs = new graphs / frames converted by dynamo during the first call (0/0 = no recompilation); "
          "! = dynamo hit its recompile limit")
    for side in sides + ([hot] if hot else []):
        for what, row in side.rows.items():
            if "error" in row:
                print(f"  {side.name}, {what}: raised {row['error']}")
            for message in row.get("limits", ()):
                print(f"  {side.name}, {what}: {message}")
    for side in sides[1:] + ([hot] if hot else []):
        print(f"{side.name}: UNet after each operation")
        for what, row in side.rows.items():
            if "state" in row:
                print(f"  {what:<27} {row['state']}")


def main() -> None:
    args = parse_args()
    import diffusers

    try:
        import peft
        peft_version = peft.__version__
    except ImportError:
        peft_version = None
    folder = tiny_pipeline(args.kind)
    targets = targets_from_folder(folder)
    tmp = tempfile.mkdtemp(prefix="bench-compile-lora-")
    try:
        layers = {name: make_lora(targets, seed=seed) for name, seed in (("a", 0), ("b", 1))}
        files = {name: write(tmp, name, lora, "peft", args.kind) for name, lora in layers.items()}
        for name, lora in layers.items():  # UNet-only copies for diffusers' hotswap
            files[f"{name}_unet"] = write(tmp, f"{name}_unet", {"unet": lora["unet"]}, "peft", args.kind)
        rank = max(down.shape[0] for lora in layers.values() for down, _, _ in lora["unet"].values())

        print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, peft {peft_version}, "
              f"{torch.get_num_threads()} thread(s), {args.kind} tiny, {args.size} px, TCD 2 steps, guidance 0, "
              f"torch.compile({compile_options(args) or ''})", flush=True)
        failures, notes = [], []
        names = [what for what, _ in sequence(load_path)]
        ours = run_fewstep(args, folder, files, failures)
        print(f"fewstep done: compile call {ours.rows['compile (1st call)']['first']:.0f} ms", flush=True)
        refs, hot = [], None
        if not args.skip_diffusers and peft_version is None:
            notes.append("diffusers part skipped: PEFT is not installed (diffusers needs it for LoRAs)")
        elif not args.skip_diffusers:
            for in_place in {"assign": (False,), "inplace": (True,), "both": (False, True)}[args.diffusers_compile]:
                ref = run_diffusers(args, folder, files, in_place)
                refs.append(ref)
                print(f"{ref.name} done: compile call {ref.rows['compile (1st call)']['first']:.0f} ms", flush=True)
                a_ours, a_ref = ours.images.get("load_lora_weights a"), ref.images.get("load_lora_weights a")
                if a_ours is not None and a_ref is not None:
                    err = float(np.abs(a_ours - a_ref).max())
                    notes.append(f"fewstep vs {ref.name}, compiled images after load a: max |diff| = {err:.3g}")
                    if err > ATOL:
                        failures.append(f"fewstep vs {ref.name} after load a: {err:.3g} > {ATOL}")
            if args.skip_hotswap:
                pass
            elif not hasattr(refs[0].pipe, "enable_lora_hotswap"):
                notes.append(f"diffusers {diffusers.__version__} has no enable_lora_hotswap: no hotswap row")
            else:
                try:
                    hot = run_hotswap(args, folder, files, rank)
                    if "hotswap a -> b" in hot.images:
                        swapped = hot.images["hotswap a -> b"]
                        moved = float(np.abs(swapped - hot.images["base"]).max())
                        plain = diffusers_side(args, folder, "diffusers eager")  # b loaded the ordinary way
                        load_folder(plain.pipe, files["b_unet"], "b")
                        err = float(np.abs(swapped - plain.call()).max())
                        notes.append(f"hotswap changed the image by max {moved:.3g}; hotswapped b vs b loaded the "
                                     f"ordinary way (eager): max |diff| = {err:.3g}")
                except Exception:
                    notes.append("diffusers hotswap run failed:\n" + traceback.format_exc(limit=3))

        print_table([ours] + refs, hot, names)
        checks = {what: row["check"] for what, row in ours.rows.items() if "check" in row}
        print(f"fewstep compiled vs eager, max |diff| over the sequence: {max(checks.values()):.3g} (bound {ATOL})")
        worst = max((ours.rows[w]["first"] / ours.warm_ms for w in names if "first" in ours.rows[w]), default=0)
        recompiled = [w for w in names if ours.rows[w].get("graphs") or ours.rows[w].get("frames")]
        print(f"fewstep: operations that recompiled: {recompiled or 'none'}; worst first/warm {worst:.2f} "
              f"(bound {BOUND}: {'met' if worst <= BOUND else 'NOT met'})")
        for note in notes:
            print(note)
        for failure in failures:
            print(f"FAILED: {failure}")
        if failures:
            sys.exit(1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
