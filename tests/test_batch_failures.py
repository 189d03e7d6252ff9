"""fewstep batch under hostile and unlucky input: nothing is lost, stranded or half-written.

Each case gives the input, the exit status, the first line of the message and what the folder holds after
(nothing written, nothing changed, or exactly the uninterrupted run's files). Runs that must be killed or must
race another process are subprocesses; the rest call `fewstep.cli.main` in this process (seconds instead of a
Python start each), putting back the torch thread count the runner pins.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from fewstep.core.files import TEMP_PREFIX
from tests.test_batch import _cli, _hashes, _temporary_files, _write_job

ITEMS = 12
BATCH = 2
JOB_LINES = [{"defaults": {"num_inference_steps": 1}, "seed": 5}] + [
    {"id": f"item-{i}", "prompt": f"a picture number {i}", **({"seed": 77} if i == 3 else {})} for i in range(ITEMS)]
DEMO_PROMPT = "a red circle on a blue background"


def _main(capsys, *args):
    """`fewstep batch ARGS` (or another command) in this process: (exit status, stdout, stderr)."""
    from fewstep.cli import main

    threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    capsys.readouterr()
    try:
        code = main([str(a) for a in (args if args[0] in ("generate",) else ("batch", *args))])
    finally:
        if threads is not None:
            sys.modules["torch"].set_num_threads(threads)
    out, err = capsys.readouterr()
    return code, out, err


def _first_line(text: str) -> str:
    """The first line of a message, progress bars' redrawn lines ("fewstep batch:   0%|...", and transformers 5's
    "Loading weights:  0%|...") aside."""
    return next((line for line in text.replace("\r", "\n").splitlines()
                 if line.strip() and not re.match(r"[^|]*: +\d+%\|", line)), "")


def _is_interrupted(line: str) -> bool:
    """The CLI's one line for Ctrl-C (exit 130): "fewstep: ... interrupted ..."."""
    return line.startswith("fewstep: ") and "interrupted" in line


def _snapshot(folder, skip=(".lock",)) -> dict:
    """relative path -> (mtime_ns, sha256) of every file under `folder` (the lock file aside)."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if rel not in skip:
                found[rel] = (os.stat(path).st_mtime_ns, hashlib.sha256(open(path, "rb").read()).hexdigest())
    return found


def _manifest(folder) -> str:
    return open(os.path.join(folder, "manifest.jsonl")).read()


def _records(folder) -> list:
    done = os.path.join(folder, "done")
    return sorted(os.listdir(done)) if os.path.isdir(done) else []


def _assert_consistent(folder):
    """What a crash may leave: every done-record's images whole and as recorded; job.json with its environment."""
    for name in _records(folder):
        for entry in json.load(open(os.path.join(folder, "done", name)))["items"]:
            data = open(os.path.join(folder, entry["file"]), "rb").read()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"], (name, entry["id"])
    if _records(folder):
        assert os.path.exists(os.path.join(folder, "job.json"))
    if os.path.exists(os.path.join(folder, "job.json")):
        assert os.path.exists(os.path.join(folder, "environment.json"))


@pytest.fixture(scope="module")
def job_file(tmp_path_factory):
    return _write_job(tmp_path_factory.mktemp("job") / "job.jsonl", JOB_LINES)


@pytest.fixture(scope="module")
def reference(job_file, tmp_path_factory):
    """The uninterrupted run (tiny SD 1.5: the prompts are not the demo model's), and its generation time."""
    torch = pytest.importorskip("torch", reason="the batch runs need PyTorch")
    import fewstep.batch

    out = str(tmp_path_factory.mktemp("reference") / "out")
    threads = torch.get_num_threads()
    start = time.perf_counter()
    try:
        summary = fewstep.batch.run(job_file, out, batch_size=BATCH, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert summary["manifest"] and len(_hashes(out)) == ITEMS
    return out, time.perf_counter() - start


@pytest.fixture
def finished(reference, tmp_path):
    """A copy of the finished reference folder (times kept), to rerun and tamper with."""
    out = str(tmp_path / "out")
    shutil.copytree(reference[0], out)
    return out


# ---------------------------------------------------------------------------------------------
# every item checked when the job is read: nothing written (no framework needed)


def _lines(*items):
    return [{"defaults": {"num_inference_steps": 1}}, {"id": "ok", "prompt": "x"}, *items]


@pytest.mark.parametrize("items,flags,message", [
    ([{"id": "a", "prompt": "x", "num_inference_steps": 0}], (), r"line 3: `num_inference_steps` must be in \[1, 1000\], got 0"),
    ([{"id": "a", "prompt": "x", "num_inference_steps": 100000}], (), r"line 3: `num_inference_steps` must be in \[1, 1000\]"),
    ([{"id": "a", "prompt": "x", "eta": 1.5}], (), r"line 3: `eta` must be in \[0.0, 1.0\], got 1.5"),
    ([{"id": "a", "prompt": "x", "eta": -0.1}], (), r"line 3: `eta` must be in \[0.0, 1.0\]"),
    ([{"id": "a", "prompt": "x", "guidance_scale": -5}], (), r"line 3: `guidance_scale` must be in \[0.0, 100.0\], got -5"),
    ([{"id": "a", "prompt": "x", "guidance_scale": float("nan")}], (), r"line 3: `guidance_scale` must be a finite number, got nan"),
    ([{"id": "a", "prompt": "x", "guidance_scale": float("inf")}], (), r"line 3: `guidance_scale` must be a finite number, got inf"),
    ([{"id": "a", "prompt": "x", "guidance_scale": "1e309"}], (), r"line 3: `guidance_scale` must be a finite number"),
    ([{"id": "a", "prompt": "x", "width": 0}], (), r"line 3: `width` must be a positive multiple of 8 up to 4096, got 0"),
    ([{"id": "a", "prompt": "x", "height": 100}], (), r"line 3: `height` must be a positive multiple of 8"),
    ([{"id": "a", "prompt": "x", "width": 100000}], (), r"line 3: `width` must be a positive multiple of 8 up to 4096"),
    ([{"id": "a", "prompt": "x", "negative_prompt": 3}], (), r"line 3: `negative_prompt` must be a string"),
    ([{"id": "a", "prompt": "x", "loras": [{"path": "s.safetensors", "weight": float("nan")}]}], (),
     r"line 3: `loras weight` must be a finite number, got nan"),
    ([{"id": "a", "prompt": "x", "loras": [{"path": "s.safetensors", "weight": -1e30}]}], (),
     r"line 3: a LoRA weight must be in \[-100, 100\]"),
    ([{"id": "a", "prompt": "x", "loras": ["s.safetensors:inf"]}], (), r"line 3: `loras weight` must be a finite number"),
    ([{"id": TEMP_PREFIX + "a", "prompt": "x"}], (), r"line 3: the id '\.fewstep-tmp-a' starts with '\.fewstep-tmp-'"),
    ([{"id": "a" * 300, "prompt": "x"}], (), r"line 3: the id 'a{40}\.\.\.' makes an image name of 304 bytes, more than the 255"),
    ([{"id": "\u732b" * 100, "prompt": "x"}], (), r"line 3: the id '\u732b{40}\.\.\.' makes an image name of 304 bytes"),
    ([], ("--guidance", "inf"), r"the defaults passed \(command-line flags\): `guidance_scale` must be a finite number"),
    ([], ("--eta", "2"), r"the defaults passed \(command-line flags\): `eta` must be in \[0.0, 1.0\]"),
    ([], ("--steps", "0"), r"`num_inference_steps` must be in \[1, 1000\], got 0"),
    ([], ("--width", "0"), r"`width` must be a positive multiple of 8"),
    ([], ("--threads", "0"), r"threads must be a positive integer, got 0 \(--threads\)"),
    ([], ("--batch-size", "0"), r"batch_size must be a positive integer, got 0"),
])
def test_bad_values_are_refused_with_their_line_before_anything_is_written(tmp_path, capsys, items, flags, message):
    job = _write_job(tmp_path / "job.jsonl", _lines(*items))
    out = tmp_path / "out"
    code, _, err = _main(capsys, job, "--out", out, *flags)
    assert code == 2, err
    first = _first_line(err)
    assert first.startswith("fewstep: error: ") and re.search(message, first), first
    if items:
        assert first.startswith(f"fewstep: error: {job}, line 3: ")
    assert not out.exists()  # not even the folder


def test_defaults_header_values_name_the_header_line(tmp_path, capsys):
    job = _write_job(tmp_path / "job.jsonl", [{"defaults": {"eta": float("nan")}}, {"id": "a", "prompt": "x"}])
    code, _, err = _main(capsys, job, "--out", tmp_path / "out")
    assert code == 2 and _first_line(err) == f"fewstep: error: {job}, line 1: `eta` must be a finite number, got nan."
    assert not (tmp_path / "out").exists()


def test_csv_items_are_checked_too(tmp_path, capsys):
    job = tmp_path / "job.csv"
    job.write_text("id,prompt,eta,loras\na,x,0.3,\nb,y,nan,\n")
    code, _, err = _main(capsys, job, "--out", tmp_path / "out")
    assert code == 2 and _first_line(err) == f"fewstep: error: {job}, line 3: `eta` must be a finite number, got 'nan'."
    assert not (tmp_path / "out").exists()


def test_loras_passed_for_every_item_are_checked(tmp_path):
    from fewstep.batch import JobError, Lora, load_job

    job = _write_job(tmp_path / "job.jsonl", _lines())
    with pytest.raises(JobError, match=r"LoRA 's.safetensors' passed for every item \(--lora\): `loras weight` must be "
                                       r"a finite number, got nan"):
        load_job(job, loras=(Lora("s.safetensors", float("nan")),))


def test_records_are_strict_json_and_replace_a_link(tmp_path):
    from fewstep.batch.store import JobFolder

    folder = JobFolder(str(tmp_path / "out"))
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        folder.write_record(0, {"weight": float("nan")})
    assert not os.path.exists(folder.record_path(0)) and _temporary_files(str(tmp_path)) == []
    target = tmp_path / "elsewhere.json"
    target.write_text("keep")
    os.makedirs(os.path.dirname(folder.record_path(0)))
    os.symlink(target, folder.record_path(0))
    folder.write_record(0, {"batch": 0})
    assert target.read_text() == "keep" and not os.path.islink(folder.record_path(0))
    assert json.load(open(folder.record_path(0))) == {"batch": 0}


def test_batch_help_names_the_default_model_generate_uses(capsys):
    from fewstep.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["batch", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "default, as for generate: the trained demo model of coloured shapes" in text
    assert "the tiny demo model)" not in text


# ---------------------------------------------------------------------------------------------
# a failed start leaves a folder the corrected command accepts


@pytest.mark.torch
def test_a_failed_start_leaves_nothing_that_refuses_the_corrected_command(reference, job_file, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _main(capsys, job_file, "--out", out, "--batch-size", BATCH, "--model", tmp_path / "tiny-sd15-typo")
    assert code == 2 and _first_line(err).startswith(f"fewstep: error: '{tmp_path / 'tiny-sd15-typo'}' is neither a "
                                                     f"local folder nor a hub repository"), err
    assert not out.exists()
    code, _, err = _main(capsys, job_file, "--out", out, "--batch-size", BATCH, "--threads", "0")
    assert code == 2 and _first_line(err) == "fewstep: error: threads must be a positive integer, got 0 (--threads)."
    assert not out.exists()
    # Ctrl-C in the first batch: the model had loaded, but no batch ran, so the folder is not claimed yet
    import fewstep.batch.runner as runner

    original = runner.BatchWorker.generate

    def interrupted(self, u):
        raise KeyboardInterrupt

    runner.BatchWorker.generate = interrupted
    try:
        code, _, err = _main(capsys, job_file, "--out", out, "--batch-size", BATCH, "--threads", "2")
    finally:
        runner.BatchWorker.generate = original
    assert code == 130 and _is_interrupted(_first_line(err))
    assert sorted(os.listdir(out)) == [".lock"]
    code, out_text, err = _main(capsys, job_file, "--out", out, "--batch-size", BATCH)
    assert code == 0, err
    assert "ran 6 batches;" in out_text and "job complete:" in out_text
    assert _hashes(out) == _hashes(reference[0]) and _manifest(out) == _manifest(reference[0])


@pytest.mark.torch
def test_steps_the_model_cannot_take_are_refused_with_their_line_before_any_image(tmp_path, capsys):
    job = _write_job(tmp_path / "job.jsonl", _lines({"id": "a", "prompt": "x", "num_inference_steps": 60}))
    out = tmp_path / "out"
    code, _, err = _main(capsys, job, "--out", out)
    assert code == 2
    assert _first_line(err).startswith(f"fewstep: error: {job}, line 3: `num_inference_steps`=60 is more than the 50 "
                                       f"timesteps available")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# a finished job is checked against its records on every rerun


@pytest.mark.torch
def test_an_intact_job_reruns_nothing_and_writes_nothing(finished, job_file, capsys):
    before = _snapshot(finished)
    code, out, err = _main(capsys, job_file, "--out", finished, "--batch-size", BATCH)
    assert code == 0, err
    assert "ran 0 batches (resumed)" in out and f"job complete: {finished}/manifest.jsonl" in out
    assert _snapshot(finished) == before
    assert open(os.path.join(finished, ".lock")).read() == f"{os.getpid()}\n"  # the last run's pid


@pytest.mark.torch
def test_a_deleted_or_changed_image_is_made_again_and_said_so(reference, finished, job_file, capsys):
    before = _snapshot(finished)
    os.remove(os.path.join(finished, "images", "item-1.png"))              # batch 0
    path = os.path.join(finished, "images", "item-4.png")                  # batch 2
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    open(os.path.join(finished, "done", "batch-00005.json"), "w").write("{")  # a garbled record: batch 5
    leftover = os.path.join(finished, "images", TEMP_PREFIX + "abc123.png")  # a crash's leftover, from before
    open(leftover, "wb").write(b"half")
    os.utime(leftover, (time.time() - 60, time.time() - 60))
    code, out, err = _main(capsys, job_file, "--out", finished, "--batch-size", BATCH)
    assert code == 0, err
    lines = out.splitlines()
    assert f"{job_file}, line 3: images/item-1.png is missing; making batch 0 again" in lines
    assert (f"{job_file}, line 6: images/item-4.png has changed since it was made (its sha256 differs from the record); "
            f"making batch 2 again") in lines
    assert f"{os.path.join(finished, 'done', 'batch-00005.json')} is not a readable done-record; making batch 5 again" in lines
    assert "rank 0 of 1: ran 3 batches (resumed)" in out
    assert _hashes(finished) == _hashes(reference[0]) and _manifest(finished) == _manifest(reference[0])
    assert not os.path.exists(leftover)
    after = _snapshot(finished)
    untouched = [f"done/batch-0000{u}.json" for u in (1, 3, 4)] + [f"images/item-{i}.png" for i in (2, 3, 6, 7, 8, 9)]
    assert {k: after[k] for k in untouched} == {k: before[k] for k in untouched}


@pytest.mark.torch
def test_a_folder_in_place_of_an_image_is_reported_with_its_line(finished, job_file, capsys):
    os.remove(os.path.join(finished, "images", "item-7.png"))
    os.mkdir(os.path.join(finished, "images", "item-7.png"))
    before = _snapshot(finished)
    code, _, err = _main(capsys, job_file, "--out", finished, "--batch-size", BATCH)
    assert code == 2
    assert _first_line(err) == (f"fewstep: error: {job_file}, line 9: images/item-7.png is a folder, not the item's "
                                f"image; move it away and run again.")
    assert _snapshot(finished) == before


# ---------------------------------------------------------------------------------------------
# Ctrl-C, SIGKILL: only finished batches count, and the resumed folder equals the uninterrupted one


@pytest.mark.torch
@pytest.mark.parametrize("where", ["generate", "between-images", "inside-a-write"])
def test_ctrl_c_leaves_a_folder_that_resumes_to_the_same_files(reference, job_file, tmp_path, capsys, monkeypatch,
                                                               where):
    import fewstep.batch.runner as runner
    import fewstep.core.files as files

    calls = {"n": 0}

    def after(n, function):
        def wrapped(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            return function(*args, **kwargs)
        return wrapped

    if where == "generate":  # in the third batch's pipeline call
        monkeypatch.setattr(runner.BatchWorker, "generate", after(3, runner.BatchWorker.generate))
    elif where == "between-images":  # the third batch's first image written, not its second
        monkeypatch.setattr(runner, "atomic_write", after(6, runner.atomic_write))
    else:  # inside the helper, with the third batch's second image in its temporary file
        monkeypatch.setattr(files, "_fsync", _fsync_after(files, 6))
    out = tmp_path / "out"
    code, _, err = _main(capsys, job_file, "--out", out, "--batch-size", BATCH)
    monkeypatch.undo()
    assert code == 130 and _is_interrupted(_first_line(err)), err
    assert _records(out) == ["batch-00000.json", "batch-00001.json"]
    assert _temporary_files(str(out)) == [] and not (out / "manifest.jsonl").exists()
    _assert_consistent(str(out))
    code, text, err = _main(capsys, job_file, "--out", out, "--batch-size", BATCH)
    assert code == 0 and "ran 4 batches (resumed)" in text, err
    assert _hashes(out) == _hashes(reference[0]) and _manifest(out) == _manifest(reference[0])


def _fsync_after(files, image: int):
    """files._fsync raising KeyboardInterrupt at the `image`-th image file's sync (after it is filled, before
    its rename); records, logs and job files are synced too but not counted."""
    original, count = files._fsync, {"n": 0}

    def fsync(path):
        if os.path.basename(path).endswith(".png"):
            count["n"] += 1
            if count["n"] == image:
                raise KeyboardInterrupt
        return original(path)
    return fsync


@pytest.mark.torch
def test_sigkill_at_random_points_then_resume_equals_the_uninterrupted_run(reference, job_file, tmp_path, capsys):
    """Two runs killed at a random point each: in a random batch (of those left), a random time into it (up to
    one batch's time in the reference run), then a third run finishes the job."""
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    batches = ITEMS // BATCH
    per_batch = sum(json.load(open(os.path.join(reference[0], "done", name)))["seconds"]
                    for name in _records(reference[0])) / batches
    out = tmp_path / "out"
    killed = []
    for attempt in range(2):
        if len(_records(out)) == batches:
            break   # the first run was killed after its last batch (the delay can outlast it): nothing left to kill
        process = subprocess.Popen(_cli(job_file, "--out", out, "--batch-size", BATCH, "--quiet"),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        target = rng.randrange(len(_records(out)), batches)   # kill while this batch runs
        delay = rng.uniform(0, 1.2 * per_batch)
        deadline = time.time() + 300
        # wait until the run holds the folder (its model loaded) and has finished `target` batches
        while process.poll() is None and time.time() < deadline:
            lock = out / ".lock"
            if lock.exists() and lock.read_text().strip() == str(process.pid) and len(_records(out)) >= target:
                break
            time.sleep(0.005)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        stderr = process.communicate()[1]
        killed.append((target, round(delay, 3), process.returncode, len(_records(out))))
        assert process.returncode in (-signal.SIGKILL, 0), (seed, stderr[-2000:])
        _assert_consistent(str(out))
    code, text, err = _main(capsys, job_file, "--out", out, "--batch-size", BATCH)
    assert code == 0, (seed, killed, err)
    assert _hashes(out) == _hashes(reference[0]), f"random seed {seed}, kills {killed}"
    assert _manifest(out) == _manifest(reference[0]) and _temporary_files(str(out)) == []


# ---------------------------------------------------------------------------------------------
# two runs on one folder


@pytest.mark.torch
def test_a_second_run_on_a_held_folder_names_the_holder_and_changes_nothing(finished, job_file, capsys):
    path = os.path.join(finished, ".lock")
    with open(path, "w") as f:
        f.write("4242\n")
        f.flush()
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = _snapshot(finished, skip=())
        code, _, err = _main(capsys, job_file, "--out", finished, "--batch-size", BATCH)
        assert code == 2
        assert _first_line(err) == (f"fewstep: error: {finished} is in use: process 4242 is running a batch job there "
                                    f"(it holds {path}); wait for it to finish, or use another --out folder.")
        assert _snapshot(finished, skip=()) == before


RACER = textwrap.dedent("""
    import os, sys, time
    import fewstep.batch.runner as runner
    from fewstep.cli import main

    entered, gate = sys.argv[1], sys.argv[2]
    original = runner.BatchWorker.generate

    def generate(self, u):  # hold the folder inside the first batch until the test opens the gate
        if not os.path.exists(entered):
            open(entered, "w").close()
            deadline = time.time() + 300
            while not os.path.exists(gate) and time.time() < deadline:
                time.sleep(0.02)
        return original(self, u)

    runner.BatchWorker.generate = generate
    sys.exit(main(["batch", *sys.argv[3:]]))
""")


@pytest.mark.torch
def test_two_runs_racing_on_one_folder(reference, job_file, tmp_path, capsys):
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    entered, gate, out = tmp_path / "entered", tmp_path / "gate", tmp_path / "out"
    first = subprocess.Popen([sys.executable, str(script), str(entered), str(gate), job_file, "--out", str(out),
                              "--batch-size", str(BATCH), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        deadline = time.time() + 300
        while not entered.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert entered.exists(), first.communicate()[1][-2000:]
        before = _snapshot(out, skip=())
        code, _, err = _main(capsys, job_file, "--out", out, "--batch-size", BATCH)
        assert code == 2
        assert _first_line(err) == (f"fewstep: error: {out} is in use: process {first.pid} is running a batch job "
                                    f"there (it holds {out / '.lock'}); wait for it to finish, or use another --out "
                                    f"folder.")
        assert _snapshot(out, skip=()) == before
    finally:
        gate.touch()
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
    assert _hashes(out) == _hashes(reference[0]) and _manifest(out) == _manifest(reference[0])


# ---------------------------------------------------------------------------------------------
# one default model


@pytest.mark.torch
def test_with_no_model_an_item_equals_fewstep_generate_with_its_seed(tmp_path, capsys):
    import torch

    job = _write_job(tmp_path / "job.jsonl", [{"id": "circle", "prompt": DEMO_PROMPT, "seed": 7,
                                               "num_inference_steps": 2}])
    out = tmp_path / "out"
    code, text, err = _main(capsys, job, "--out", out)
    assert code == 0, err
    assert _first_line(text).startswith("No --model given: using the trained demo model at ")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the batch runs with --threads 1
    try:
        code, text, err = _main(capsys, "generate", DEMO_PROMPT, "--seed", "7", "--steps", "2", "-o",
                                tmp_path / "generated.png")
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    assert (tmp_path / "generated.png").read_bytes() == (out / "images" / "circle.png").read_bytes()


@pytest.mark.torch
def test_with_no_model_a_prompt_the_demo_cannot_draw_gets_the_tiny_model_said_as_generate_says(tmp_path, capsys):
    job = _write_job(tmp_path / "job.jsonl", [{"id": "a", "prompt": DEMO_PROMPT, "num_inference_steps": 1},
                                              {"id": "b", "prompt": "a photo of a cat", "num_inference_steps": 1}])
    code, text, err = _main(capsys, job, "--out", tmp_path / "out")
    assert code == 0, err
    lines = text.splitlines()
    assert lines[0] == (f"Not the trained demo model: {job}, line 2: 'a photo of a cat' is not a prompt the trained "
                        f"demo model can draw (coloured shapes, e.g. 'a red circle on a blue background').")
    assert lines[1].startswith("No --model given: using the tiny random-weight demo pipeline (sd15) at ")
    assert json.load(open(tmp_path / "out" / "job.json"))["model"] == "tiny:sd15"
