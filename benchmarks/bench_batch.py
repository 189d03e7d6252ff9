"""What `fewstep batch` costs and how it scales: a job of `--items` items (default 40) on the tiny SD 1.5
pipeline (the default model of `fewstep batch`), TCD, 4 steps, `--batch-size` items per pipeline call
(default 4, so 10 batches), one CPU thread per process.

    python benchmarks/bench_batch.py [--items 40] [--batch-size 4] [--repeats 3] [--skip-mindspore]

1. Scale-out, as users start it (each command run once, the job written to a temp dir):
   - torch: `python -m fewstep batch JOB --out DIR --threads 1` vs `torchrun --nproc_per_node=2
     --master_port <free port> -m fewstep batch JOB --out DIR2 --threads 1`;
   - MindSpore (unless `--skip-mindspore`): the same with `--backend mindspore`, two workers under
     `msrun --worker_num=2 --local_worker_num=2 --master_port=<port> --log_dir=<dir> --join=True
     fewstep/__main__.py batch ...`.
   For each command three figures:
   - whole command: wall time of the subprocess (process start, imports, model load, generation, exit;
     msrun's scheduler process and launch included) -> items per second;
   - generation per rank: each rank's wall time from the start of its first batch to the end of its last.
     The rank logs (OUT/logs/rank-<r>.log, "batch u: n items in s s") carry no time stamps, so the end of
     a batch is the modification time of its done-record (OUT/done/batch-<u>.json, written after its
     PNGs, just before its log line) and its start is that minus the record's seconds (the pipeline call
     alone; the first batch's PNG writes are left out, a few ms). Items / the slowest rank's span ->
     items per second. Printed beside it: the job's span (first batch start on any rank to last batch end
     on any rank: also counts ranks that finished loading at different times) and each rank's sum of
     logged per-batch seconds (pipeline calls only).
   The scaling printed is two-process / one-process throughput on the slowest-rank generation figure
   (target >= 1.8 on a 2-core machine), with the job-span and whole-command ratios beside it (model load
   and start-up do not shrink with more processes). The one- and two-process images must be bitwise
   identical: sha256 of every PNG.
2. Bookkeeping overhead, in this process (torch, 1 thread): a `fewstep.batch.runner.BatchWorker` built
   once (its pipeline loaded outside every timed region) runs `run_batch` over all batches into a fresh
   folder (atomic PNG writes with fsync, done-records, log lines) against a plain loop of `pipe(...)` on
   the *same* pipeline object with the same batches, prompts and per-item `fewstep.Generator(seed)`
   lists, keeping the PIL images; and a plain loop that also saves each image with `image.save(path)`.
   One warm-up batch each (its PNG bytes compared: the plain call must give the batch's image), then
   `--repeats` rounds, rotating which goes first; medians; ratio batch / plain loop (target <= 1.05).

Each measurement also prints the CPU that *other* processes used meanwhile (machine busy time from
/proc/stat minus this script's and its children's CPU time, as average cores) and warns above 0.1
cores: on a 2-core machine a concurrent test run makes the scaling figures meaningless.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_pipeline_sdxl import spread_warning, timing_line  # noqa: E402  (the shared helpers)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOG_LINE = re.compile(r"batch (\d+): (\d+) items in ([0-9.]+) s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_job(path: str, items: int) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"defaults": {"num_inference_steps": 4, "scheduler": "tcd"}, "seed": 0}) + "\n")
        for i in range(items):
            f.write(json.dumps({"id": f"item-{i:03d}", "prompt": f"a red fox in the snow, picture {i}"}) + "\n")
    return path


def image_hashes(out: str) -> dict:
    folder = os.path.join(out, "images")
    return {name: hashlib.sha256(open(os.path.join(folder, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(folder))}


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat; 0 where there is none)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_seconds(who) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


class OtherLoad:
    """The CPU other processes on the machine used while a measurement ran: machine busy time minus this
    process's and its (waited-for) descendants' CPU time, as average cores."""

    def __enter__(self):
        self.start = (time.perf_counter(), busy_seconds(), own_seconds(resource.RUSAGE_SELF) +
                      own_seconds(resource.RUSAGE_CHILDREN))
        return self

    def __exit__(self, *exc):
        wall, busy, own = (time.perf_counter(), busy_seconds(), own_seconds(resource.RUSAGE_SELF) +
                           own_seconds(resource.RUSAGE_CHILDREN))
        self.cores = max(0.0, (busy - self.start[1]) - (own - self.start[2])) / max(wall - self.start[0], 1e-9)
        return False


def run_command(cmd, out: str, items: int, msrun_logs: str = None) -> dict:
    """Run one `fewstep batch` command; its wall time, and the generation span from the done-records."""
    launched = time.time()
    start = time.perf_counter()
    with OtherLoad() as other:
        result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-3000:]
        if msrun_logs and os.path.isdir(msrun_logs):
            for name in sorted(os.listdir(msrun_logs)):
                tail += f"\n--- {name}\n" + open(os.path.join(msrun_logs, name), errors="replace").read()[-2000:]
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {result.returncode}:\n{tail}")
    done = os.path.join(out, "done")
    ranks = {}
    for name in sorted(os.listdir(done)):
        path = os.path.join(done, name)
        record = json.load(open(path))
        end = os.stat(path).st_mtime_ns / 1e9
        r = ranks.setdefault(record["rank"], {"starts": [], "ends": [], "batches": 0})
        r["starts"].append(end - record["seconds"])
        r["ends"].append(end)
        r["batches"] += 1
    for rank, r in ranks.items():
        logged = [LOG_LINE.search(line) for line in open(os.path.join(out, "logs", f"rank-{rank}.log"))]
        r["logged_s"] = sum(float(m.group(3)) for m in logged if m)
        r["span"] = max(r["ends"]) - min(r["starts"])
    first = min(min(r["starts"]) for r in ranks.values())
    last = max(max(r["ends"]) for r in ranks.values())
    written = len(image_hashes(out))
    if written != items:
        raise RuntimeError(f"{out} holds {written} images, not {items}")
    return {"wall": wall, "generation": max(r["span"] for r in ranks.values()), "job_span": last - first,
            "before_first": first - launched, "ranks": ranks, "items": items, "other": other.cores}


def report_command(label: str, m: dict) -> None:
    n = m["items"]
    print(f"{label}:")
    print(f"  whole command   {m['wall']:7.2f} s wall  -> {n / m['wall']:6.3f} items/s   "
          f"(process start, imports, model load, generation, exit)")
    print(f"  generation      {m['generation']:7.2f} s       -> {n / m['generation']:6.3f} items/s   "
          f"(slowest rank: its first batch start to its last batch end, from done-record times)")
    print(f"  job span        {m['job_span']:7.2f} s       -> {n / m['job_span']:6.3f} items/s   "
          f"(first batch start on any rank to last batch end on any rank)")
    print(f"  before the first batch started on any rank: {m['before_first']:.2f} s (start-up and model load)")
    for rank in sorted(m["ranks"]):
        r = m["ranks"][rank]
        print(f"  rank {rank}: {r['batches']} batches, {r['logged_s']:.2f} s in pipeline calls (sum of its log's "
              f"per-batch seconds), {r['span']:.2f} s from its first batch start to its last batch end")
    print(f"  other processes on the machine meanwhile: {m['other']:.2f} cores on average"
          f"{'  (warning: not an idle machine; these figures are distorted)' if m['other'] > 0.1 else ''}")


def scale_out(backend: str, job: str, items: int, batch_size: int, tmp: str) -> None:
    import fewstep

    common = ["batch", job, "--batch-size", str(batch_size), "--threads", "1"]
    if backend == "mindspore":
        common += ["--backend", "mindspore"]
    one_out, two_out = os.path.join(tmp, f"{backend}-one"), os.path.join(tmp, f"{backend}-two")
    one_cmd = [sys.executable, "-m", "fewstep", *common, "--out", one_out]
    logs = None
    if backend == "torch":
        two_cmd = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--nproc_per_node=2",
                   f"--master_port={free_port()}", "-m", "fewstep", *common, "--out", two_out]
        two_label = "torch, torchrun --nproc_per_node=2 (two processes, 1 thread each)"
    else:
        logs = os.path.join(tmp, "msrun-logs")
        main = os.path.relpath(os.path.join(os.path.dirname(fewstep.__file__), "__main__.py"), REPO)
        two_cmd = [os.path.join(os.path.dirname(sys.executable), "msrun"), "--worker_num=2", "--local_worker_num=2",
                   f"--master_port={free_port()}", f"--log_dir={logs}", "--join=True", main, *common,
                   "--out", two_out]
        two_label = "mindspore, msrun --worker_num=2 (two workers, 1 thread each, plus msrun's scheduler)"
    one = run_command(one_cmd, one_out, items)
    report_command(f"{backend}, one process (python -m fewstep batch, 1 thread)", one)
    two = run_command(two_cmd, two_out, items, logs)
    report_command(two_label, two)
    print(f"{backend} scaling two / one process throughput: generation (slowest rank) "
          f"{one['generation'] / two['generation']:.2f}x (target >= 1.8); job span "
          f"{one['job_span'] / two['job_span']:.2f}x; whole command {one['wall'] / two['wall']:.2f}x")
    a, b = image_hashes(one_out), image_hashes(two_out)
    same = sum(a[k] == b.get(k) for k in a)
    verdict = "bitwise identical" if same == len(a) == len(b) == items else "NOT all identical"
    print(f"{backend} images one vs two processes: {same} of {items} PNGs with equal sha256 ({verdict})")
    print()


def overhead(job_path: str, batch_size: int, repeats: int, tmp: str) -> None:
    import fewstep
    from fewstep.batch import load_job
    from fewstep.batch.runner import BatchWorker, RunConfig
    from fewstep.batch.store import JobFolder

    job = load_job(job_path)
    worker = BatchWorker(job, os.path.join(tmp, "worker-unused"), RunConfig(batch_size=batch_size, threads=1))
    pipe, batches = worker.pipe, worker.batches
    folders = iter(range(10**6))

    def fresh(prefix: str) -> str:
        path = os.path.join(tmp, f"{prefix}-{next(folders)}")
        os.makedirs(path)
        return path

    def call(batch):
        # what run_batch passes for these items (TCD, no negative prompt, job-default size)
        s = dict(batch[0].settings)
        return pipe(prompt=[item.prompt for item in batch], num_inference_steps=s["num_inference_steps"],
                    guidance_scale=s["guidance_scale"], height=s["height"], width=s["width"], eta=s["eta"],
                    generator=[fewstep.Generator(item.seed) for item in batch], output_type="pil").images

    def plain(indices):
        kept = []
        for u in indices:
            kept.extend(call(batches[u]))
        return kept

    def plain_save(indices):
        folder = fresh("plain-save")
        for u in indices:
            for item, image in zip(batches[u], call(batches[u])):
                image.save(os.path.join(folder, f"{item.id}.png"))

    def batch_worker(indices):
        worker.folder = JobFolder(fresh("batch"))
        for u in indices:
            worker.run_batch(u)

    # warm-up: one batch each; the plain call must give the batch's PNG bytes
    batch_worker([0])
    png = []
    for image in plain([0]):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        png.append(hashlib.sha256(buffer.getvalue()).hexdigest())
    plain_save([0])
    written = [hashlib.sha256(open(worker.folder.image_path(item.id), "rb").read()).hexdigest() for item in batches[0]]
    print(f"warm-up: plain pipe() call and BatchWorker.run_batch give {'the same' if png == written else 'DIFFERENT'} "
          f"PNG bytes for batch 0")

    names = ("plain pipe() loop", "plain loop + image.save", "BatchWorker.run_batch")
    runs = {"plain pipe() loop": plain, "plain loop + image.save": plain_save, "BatchWorker.run_batch": batch_worker}
    times = {name: [] for name in names}
    everything = list(range(len(batches)))
    with OtherLoad() as other:
        for i in range(repeats):
            for name in names[i % 3:] + names[:i % 3]:
                start = time.perf_counter()
                runs[name](everything)
                times[name].append(time.perf_counter() - start)
    print(f"in-process, torch, 1 thread, one pipeline loaded once, {len(job.items)} items in {len(batches)} batches "
          f"of <= {batch_size}, whole job per measurement, medians of {repeats} (order rotated):")
    for name in names:
        print(timing_line(f"  {name:24s}", times[name]))
    spread_warning(times)
    print(f"  other processes on the machine meanwhile: {other.cores:.2f} cores on average"
          f"{'  (warning: not an idle machine)' if other.cores > 0.1 else ''}")
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"ratio BatchWorker.run_batch / plain pipe() loop: "
          f"{med['BatchWorker.run_batch'] / med['plain pipe() loop']:.3f}   (target <= 1.05)")
    print(f"ratio BatchWorker.run_batch / plain loop + image.save: "
          f"{med['BatchWorker.run_batch'] / med['plain loop + image.save']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of part 2 (at least 2)")
    parser.add_argument("--skip-mindspore", action="store_true",
                        help="MindSpore is slow: skip its one process vs msrun")
    args = parser.parse_args()
    if args.repeats < 2:
        parser.error("--repeats must be at least 2 (quartiles are printed)")
    tmp = tempfile.mkdtemp(prefix="fewstep-bench-batch-")
    try:
        job = write_job(os.path.join(tmp, "job.jsonl"), args.items)
        batches = -(-args.items // args.batch_size)
        print(f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min); "
              f"job: {args.items} items, tiny SD 1.5 (the default model), TCD 4 steps, batch size {args.batch_size} "
              f"({batches} batches), --threads 1 per process; each command run once")
        print()
        scale_out("torch", job, args.items, args.batch_size, tmp)
        if not args.skip_mindspore:
            scale_out("mindspore", job, args.items, args.batch_size, tmp)
        overhead(job, args.batch_size, args.repeats, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
