"""Wall time of `fewstep generate PROMPT` with the default model, as a new user runs it: a fresh
process each time (interpreter start, imports, loading the tiny demo pipeline, 4 TCD steps, writing the
PNG, exit).

    python benchmarks/bench_cli_wall.py [--runs 5] [--baseline REF] [--backend torch] [-- EXTRA FLAGS]

This checkout is timed against `--baseline` (a git commit, default the commit before issue 13's
work, 88bc845), checked out once into a temporary worktree and run from there with PYTHONPATH pointing
at it, so both sides use this venv's libraries and differ only in fewstep's code. One untimed warm-up
per side (it builds the tiny model's cache folder if missing), then `--runs` runs per side, alternating
sides so machine load hits both alike; medians, and the ratio this checkout / baseline (target <= 1.0:
issue 13 asks that the command not get slower). The PNGs of both sides must be identical (same seed).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_pipeline_sdxl import spread_warning, timing_line  # noqa: E402  (the shared helpers)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worktree(ref: str, where: str) -> str:
    path = os.path.join(where, "baseline")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", path, ref], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return path


def _run(tree: str, args, output: str) -> float:
    env = dict(os.environ, PYTHONPATH=tree)
    cmd = [sys.executable, "-m", "fewstep", "generate", args.prompt, "-o", output, "--seed", "0",
           "--backend", args.backend, *args.extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed in {tree}:\n{done.stderr[-2000:]}")
    return elapsed


def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs per side, at least 2")
    parser.add_argument("--baseline", default="88bc845", help="git commit to compare with ('' for none)")
    parser.add_argument("--backend", default="torch", choices=("torch", "mindspore"))
    parser.add_argument("--prompt", default="a red fox in the snow")
    parser.add_argument("extra", nargs="*", help="more flags for both sides (after --)")
    args = parser.parse_args()
    if args.runs < 2:
        parser.error("--runs must be at least 2 (quartiles need two runs)")
    work = tempfile.mkdtemp(prefix="bench-cli-")
    sides = {"this checkout": ROOT}
    try:
        if args.baseline:
            sides[f"baseline {args.baseline}"] = _worktree(args.baseline, work)
        outputs = {name: os.path.join(work, f"{i}.png") for i, name in enumerate(sides)}
        for name, tree in sides.items():  # warm-up: caches, page cache of the libraries
            _run(tree, args, outputs[name])
        times = {name: [] for name in sides}
        for i in range(args.runs):
            for name in (list(sides) if i % 2 == 0 else list(sides)[::-1]):
                times[name].append(_run(sides[name], args, outputs[name]))
        print(f"`fewstep generate {args.prompt!r} --seed 0 --backend {args.backend}` (default model), fresh "
              f"process, {args.runs} runs per side")
        for name, t in times.items():
            print(timing_line(f"{name:>22}", t) + f"   png {_sha(outputs[name])}")
        spread_warning(times)
        if len(sides) == 2:
            ours, base = (statistics.median(t) for t in times.values())
            print(f"ratio this checkout / baseline: {ours / base:.3f}   (target <= 1.0)")
            same = len({_sha(p) for p in outputs.values()}) == 1
            print(f"images identical: {same}")
    finally:
        if args.baseline and len(sides) == 2:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", list(sides.values())[1]],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
