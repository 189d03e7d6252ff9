"""Ship a finished training run as the package's demo model: `python -m fewstep.demo.ship RUN_DIR`.

Copies RUN_DIR/pipeline and RUN_DIR/lora (what `python -m fewstep.demo.train --out RUN_DIR` wrote) into
fewstep/demo/weights, refusing anything but safetensors, JSON and tokenizer text, or more than the 12 MB the
package allows, and writes weights/TRAINING.md from RUN_DIR/training_log.jsonl: the command, per-stage wall
time, the accuracies the script measured and each file's SHA-256, so the shipped bytes can be traced to
the run that made them. Framework-free: it only copies files and reads JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

from fewstep.core.files import write_text
from fewstep.demo.model import LORA_FILE, WEIGHTS

LIMIT_MB = 12.0
ALLOWED = (".safetensors", ".json", ".txt")


def _records(run: Path) -> list:
    return [json.loads(line) for line in (run / "training_log.jsonl").read_text().splitlines() if line.strip()]


def _files(folder: Path) -> list:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _accuracy_rows(results: dict) -> list:
    rows = []
    for name, r in results.items():
        rows.append(f"| {name} | {r['n']} | {r['all']:.1%} ± {r['all_se']:.1%} | {r['shape']:.1%} | "
                    f"{r['colour']:.1%} | {r['background']:.1%} |")
    return rows


def training_notes(run: Path, files: list, root: Path) -> str:
    """TRAINING.md: how the shipped files were made, from the run's own log."""
    records = _records(run)
    final = next(r for r in reversed(records) if r.get("event") == "final")
    done = {r["stage"]: r for r in records if r.get("event") == "done"}
    args = final["args"]
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in args.items()
                     if k in ("seed", "threads") and v is not None)
    lines = ["# The demo model: how these files were made", "",
             "The output of one run of the training script, shipped unchanged:", "",
             "```bash", f"python -m fewstep.demo.train --out RUN_DIR {flags}", "```", "",
             "(every other setting at its default; `python -m fewstep.demo.train --help` lists them). Then "
             "`python -m fewstep.demo.ship RUN_DIR` copied `RUN_DIR/pipeline` and `RUN_DIR/lora` here and "
             "wrote this file from `RUN_DIR/training_log.jsonl`.", "",
             "## Wall time (this machine: see the closing note of the run)", "",
             "| stage | steps | wall time |", "|---|---|---|"]
    for stage in ("vae", "unet", "distill"):
        if stage in done:
            lines.append(f"| {stage} | {done[stage]['steps']} | {done[stage]['wall_s'] / 60:.1f} min |")
    lines += [f"| whole run (this invocation, evaluation included) | | {final['wall_s_this_run'] / 60:.1f} min |", "",
              "## Accuracy measured by the script", "",
              "diffusers' own pipeline on the saved files, the demo checker (`fewstep.demo.score_images`) over "
              f"the first {args.get('final_eval_n')} evaluation prompts (`evaluation_prompts(n, 1234)`): the teacher "
              "with DDIM 25 steps at guidance 4; the LoRA fused, TCD (eta 0.3) and LCM at 4 steps, no guidance. "
              "`benchmarks/bench_quality.py` measures more settings on fewstep's samplers.", "",
              "| setting | n | all three | shape | shape colour | background |", "|---|---|---|---|---|---|"]
    lines += _accuracy_rows({k: v for k, v in final.items() if isinstance(v, dict) and "all" in v})
    lines += ["", "## Files", "", "| file | bytes | SHA-256 |", "|---|---|---|"]
    for path in files:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"| {path.relative_to(root)} | {path.stat().st_size} | `{digest}` |")
    return "\n".join(lines) + "\n"


def ship(run: Path, dest: Path = WEIGHTS) -> list:
    """Copy the run's pipeline and LoRA into `dest` (replacing what is there) and write TRAINING.md."""
    sources = {"pipeline": run / "pipeline", "lora": run / "lora"}
    if not (sources["pipeline"] / "model_index.json").is_file() or not (sources["lora"] / LORA_FILE).is_file():
        raise SystemExit(f"{run} holds no finished run (pipeline/model_index.json and lora/{LORA_FILE}): "
                         f"run `python -m fewstep.demo.train --out {run}` to the end first")
    files = [p for folder in sources.values() for p in _files(folder)]
    odd = [str(p) for p in files if p.suffix not in ALLOWED]
    if odd:
        raise SystemExit(f"only safetensors, JSON and tokenizer text ship; found {odd}")
    size = sum(p.stat().st_size for p in files) / 2**20
    if size > LIMIT_MB:
        raise SystemExit(f"the pipeline and LoRA take {size:.1f} MB, over the package's {LIMIT_MB} MB")
    staging = dest.with_name(dest.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    for name, folder in sources.items():
        shutil.copytree(folder, staging / name)
    shipped = [p for p in _files(staging)]
    write_text(str(staging / "TRAINING.md"), training_notes(run, shipped, staging))
    shutil.rmtree(dest, ignore_errors=True)  # replaced only once the new copy is complete
    staging.rename(dest)
    return _files(dest)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fewstep.demo.ship", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the --out folder of a finished `python -m fewstep.demo.train` run")
    args = parser.parse_args(argv)
    files = ship(args.run)
    print(f"shipped {len(files)} files ({sum(p.stat().st_size for p in files) / 2**20:.2f} MB) to {WEIGHTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
