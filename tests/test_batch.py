"""fewstep batch: jobs checked line by line, images that depend only on their item (one process,
torchrun, msrun and Ray give the same files), atomic outputs and resume after a crash.

The runs go through subprocesses (`python -m fewstep batch`, torchrun, msrun, a Ray driver) as users start
them: the runner pins the thread count of its process, which must not leak into this test process.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fewstep.batch import JobError, load_job, plan_batches
from fewstep.batch.job import derive_seed

ITEMS = 10
BATCH = 3
# TCD and LCM, with and without guidance, two sizes: settings change inside the job, so some batches are cut short
JOB_LINES = [{"defaults": {"num_inference_steps": 2}, "seed": 11}] + [
    {"id": f"item-{i}", "prompt": f"a picture number {i}",
     **({"scheduler": "lcm"} if i in (3, 4) else {}),
     **({"guidance_scale": 1.5, "negative_prompt": "blurry"} if i == 6 else {}),
     **({"seed": 1234} if i == 8 else {})} for i in range(ITEMS)]


def _write_job(path, lines=JOB_LINES):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd, env=None, timeout=600):
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    return result


def _cli(*args):
    return [sys.executable, "-m", "fewstep", "batch", *map(str, args)]


def _hashes(folder) -> dict:
    images = os.path.join(folder, "images")
    return {name: hashlib.sha256(open(os.path.join(images, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(images))}


def _temporary_files(folder) -> list:
    return [os.path.join(r, f) for r, _, files in os.walk(folder) for f in files if f.startswith(".fewstep-tmp-")]


@pytest.fixture(scope="module")
def job_file(tmp_path_factory):
    return _write_job(tmp_path_factory.mktemp("job") / "job.jsonl")


@pytest.fixture(scope="module")
def one_process(job_file, tmp_path_factory):
    """The reference: the job run by one process on torch."""
    out = str(tmp_path_factory.mktemp("one") / "out")
    result = _run(_cli(job_file, "--out", out, "--batch-size", BATCH))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


# ---------------------------------------------------------------------------------------------
# jobs (no framework)


def test_job_defaults_seeds_and_batches(tmp_path):
    job = load_job(_write_job(tmp_path / "job.jsonl"))
    assert [item.id for item in job.items] == [f"item-{i}" for i in range(ITEMS)]
    assert job.lookup("item-8").seed == 1234
    assert job.lookup("item-0").seed == derive_seed(11, "item-0") != derive_seed(12, "item-0")
    assert job.lookup("item-3").setting("scheduler") == "lcm" and job.lookup("item-0").setting("num_inference_steps") == 2
    # a seed depends on (job seed, id) only: the same item at another position draws the same
    reordered = load_job(_write_job(tmp_path / "reordered.jsonl", [JOB_LINES[0]] + JOB_LINES[:0:-1]))
    assert all(reordered.lookup(i.id).seed == i.seed for i in job.items)
    batches = [[item.id for item in batch] for batch in plan_batches(job, BATCH)]
    assert batches == [["item-0", "item-1", "item-2"], ["item-3", "item-4"], ["item-5"], ["item-6"],
                       ["item-7", "item-8", "item-9"]]


def test_csv_jobs_and_caller_defaults(tmp_path):
    path = tmp_path / "job.csv"
    path.write_text("id,prompt,seed,loras\na,a fox,3,\nb,a cat,,x.safetensors:0.5;y.safetensors\n")
    job = load_job(str(path), defaults={"guidance_scale": 2.0}, seed=5)
    assert job.lookup("a").seed == 3 and job.lookup("b").seed == derive_seed(5, "b")
    assert [(lora.name, lora.weight) for lora in job.lookup("b").setting("loras")] == [("x", 0.5), ("y", 1.0)]
    assert job.lookup("a").setting("guidance_scale") == 2.0


@pytest.mark.parametrize("lines,message", [
    (['{"id": "a", "prompt": "x"}', '{"id": "b", "prompt": '], "line 2: not valid JSON"),
    (['{"id": "a", "prompt": "x", "steps": 4}'], r"line 1: unknown field\(s\) \['steps'\]"),
    (['{"id": "a", "prompt": "x"}', '{"id": "a", "prompt": "y"}'], "line 2: duplicate id 'a' \\(first on line 1\\)"),
    (['{"id": "a", "prompt": "x", "seed": "seven"}'], "line 1: `seed` must be an integer"),
    (['{"id": "a", "prompt": "x", "seed": 1.5}'], "line 1: `seed` must be an integer"),
    (['{"prompt": "x"}'], "line 1: the item has no `id`"),
    (['{"id": "a/b", "prompt": "x"}'], "cannot name a file"),
    (['{"id": "a", "prompt": "x"}', '{"defaults": {}}'], "line 2: the defaults header must be the first line"),
    (['{"id": "a", "prompt": "x", "scheduler": "ddim"}'], "`scheduler` must be"),
    (['[1, 2]'], "line 1: each line must be a JSON object"),
])
def test_bad_jobs_name_the_line_and_the_fix(tmp_path, lines, message):
    path = tmp_path / "job.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(JobError, match=message):
        load_job(str(path))


# ---------------------------------------------------------------------------------------------
# one process, torchrun, msrun, Ray


@pytest.mark.torch
def test_every_image_equals_fewstep_generate_with_its_seed(one_process, job_file, tmp_path):
    """Batch size 1: the same call `fewstep generate` makes, bit for bit. Larger batches group items into
    one call, which changes the last float bits, so there the PNGs agree within one level."""
    from PIL import Image

    from fewstep.testing import tiny_pipeline

    job = load_job(job_file)
    single = str(tmp_path / "single")
    result = _run(_cli(job_file, "--out", single, "--batch-size", 1))
    assert result.returncode == 0, result.stderr[-3000:]
    for item_id in ("item-0", "item-4", "item-6"):
        item = job.lookup(item_id)
        out = tmp_path / f"{item_id}.png"
        args = ["-m", "fewstep", "generate", item.prompt, "--seed", str(item.seed), "-o", str(out),
                # batch's default for these prompts, which the trained demo model (generate's default) cannot draw
                "--model", tiny_pipeline("sd15"),
                "--steps", str(item.setting("num_inference_steps")), "--guidance", str(item.setting("guidance_scale")),
                "--scheduler", item.setting("scheduler"), "--eta", str(item.setting("eta"))]
        if item.setting("negative_prompt"):
            args += ["--negative-prompt", item.setting("negative_prompt")]
        result = _run([sys.executable, *args], env={"OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-3000:]
        generated = np.asarray(Image.open(out), dtype=np.int16)
        assert np.array_equal(generated, np.asarray(Image.open(os.path.join(single, "images", f"{item_id}.png"))))
        batched = np.asarray(Image.open(os.path.join(one_process, "images", f"{item_id}.png")), dtype=np.int16)
        assert np.abs(generated - batched).max() <= 1


@pytest.mark.torch
def test_torchrun_two_ranks_write_the_same_files_as_one_process(one_process, job_file, tmp_path):
    out = str(tmp_path / "out")
    result = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                   f"--master_port={_free_port()}", "-m", "fewstep", "batch", job_file, "--out", out,
                   "--batch-size", str(BATCH)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert _hashes(out) == _hashes(one_process) and len(_hashes(out)) == ITEMS
    assert open(os.path.join(out, "manifest.jsonl")).read() == open(os.path.join(one_process, "manifest.jsonl")).read()
    ranks = {json.load(open(os.path.join(out, "done", name)))["rank"] for name in os.listdir(os.path.join(out, "done"))}
    assert ranks == {0, 1} and sorted(os.listdir(os.path.join(out, "logs"))) == ["rank-0.log", "rank-1.log"]


# slow: msrun starts a scheduler and two MindSpore workers (~85 s on the 2-core CI machine); the sharding,
# manifest and file naming it exercises are the same code the torchrun and Ray tests check in CI.
@pytest.mark.slow
@pytest.mark.mindspore
def test_msrun_two_workers_write_the_same_files_as_one_process(job_file, tmp_path):
    import fewstep

    one = str(tmp_path / "one")
    result = _run(_cli(job_file, "--out", one, "--batch-size", BATCH, "--backend", "mindspore"))
    assert result.returncode == 0, result.stderr[-3000:]
    two = str(tmp_path / "two")
    main = os.path.join(os.path.dirname(fewstep.__file__), "__main__.py")
    result = _run(["msrun", "--worker_num=2", "--local_worker_num=2", f"--master_port={_free_port()}",
                   f"--log_dir={tmp_path / 'msrun-logs'}", "--join=True", main, "batch", job_file, "--out", two,
                   "--batch-size", str(BATCH), "--backend", "mindspore"], timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert _hashes(two) == _hashes(one) and len(_hashes(two)) == ITEMS
    assert open(os.path.join(two, "manifest.jsonl")).read() == open(os.path.join(one, "manifest.jsonl")).read()


@pytest.mark.torch
def test_ray_actors_write_the_same_files_as_one_process(one_process, job_file, tmp_path):
    pytest.importorskip("ray", reason="Ray is installed by the README's test command (the ray extra)")
    out = str(tmp_path / "out")
    driver = textwrap.dedent(f"""
        import ray
        import fewstep.batch
        ray.init(num_cpus=2, include_dashboard=False)
        summary = fewstep.batch.run({job_file!r}, {out!r}, batch_size={BATCH}, engine="ray", num_workers=2,
                                    progress=False)
        assert summary["manifest"], summary
    """)
    result = _run([sys.executable, "-c", driver])
    assert result.returncode == 0, result.stderr[-3000:]
    assert _hashes(out) == _hashes(one_process)
    assert open(os.path.join(out, "manifest.jsonl")).read() == open(os.path.join(one_process, "manifest.jsonl")).read()


# ---------------------------------------------------------------------------------------------
# resume


@pytest.mark.torch
def test_a_crash_costs_only_the_unfinished_batches(one_process, job_file, tmp_path):
    out = str(tmp_path / "out")
    crashed = _run(_cli(job_file, "--out", out, "--batch-size", BATCH), env={"FEWSTEP_BATCH_FAIL_AFTER": "2"})
    assert crashed.returncode == 17  # the injected exit, mid-way through the third batch
    done = sorted(os.listdir(os.path.join(out, "done")))
    assert done == ["batch-00000.json", "batch-00001.json"] and _temporary_files(out)
    finished = {p: os.stat(p).st_mtime_ns for p in
                [os.path.join(out, "done", name) for name in done] +
                [os.path.join(out, "images", f"item-{i}.png") for i in range(5)]}
    assert not os.path.exists(os.path.join(out, "manifest.jsonl"))

    # resume at another world size: only the unfinished batches run, nothing finished is rewritten
    result = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                   f"--master_port={_free_port()}", "-m", "fewstep", "batch", job_file, "--out", out,
                   "--batch-size", str(BATCH)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p: os.stat(p).st_mtime_ns for p in finished} == finished
    ran = sorted(json.load(open(os.path.join(out, "done", n)))["batch"] for n in os.listdir(os.path.join(out, "done")))
    assert ran == [0, 1, 2, 3, 4]
    assert _hashes(out) == _hashes(one_process)
    assert open(os.path.join(out, "manifest.jsonl")).read() == open(os.path.join(one_process, "manifest.jsonl")).read()
    assert _temporary_files(out) == []

    # a complete job reruns nothing
    again = _run(_cli(job_file, "--out", out, "--batch-size", BATCH))
    assert again.returncode == 0 and "ran 0 batches (resumed)" in again.stdout


@pytest.mark.torch
def test_a_folder_of_another_job_or_environment_is_refused_and_left_alone(one_process, job_file, tmp_path):
    before = sorted(os.walk(one_process))
    other = _write_job(tmp_path / "other.jsonl", JOB_LINES[:3])
    result = _run(_cli(other, "--out", one_process, "--batch-size", BATCH))
    assert result.returncode == 2 and "holds another job's records" in result.stderr
    result = _run(_cli(job_file, "--out", one_process, "--batch-size", 2))
    assert result.returncode == 2 and "another batch plan" in result.stderr
    result = _run(_cli(job_file, "--out", one_process, "--batch-size", BATCH, "--threads", "2"))
    assert result.returncode == 2 and "another environment" in result.stderr and "--allow-different-env" in result.stderr
    assert sorted(os.walk(one_process)) == before


@pytest.mark.torch
def test_a_lora_that_does_not_fit_fails_before_the_first_image(tmp_path):
    from safetensors.numpy import save_file

    lora = tmp_path / "wrong.safetensors"
    save_file({"unet.down_blocks.9.attentions.0.proj_in.lora_A.weight": np.zeros((4, 32), np.float32),
               "unet.down_blocks.9.attentions.0.proj_in.lora_B.weight": np.zeros((32, 4), np.float32)}, str(lora))
    job = _write_job(tmp_path / "job.jsonl", [{"id": "a", "prompt": "x", "loras": [f"{lora}:0.5"]}])
    out = tmp_path / "out"
    result = _run(_cli(job, "--out", out))
    assert result.returncode == 2 and "does not fit the model" in result.stderr and "down_blocks.9" in result.stderr
    assert not (out / "images").exists() and not (out / "done").exists()


@pytest.mark.torch
def test_loras_per_item_and_the_grid(tmp_path):
    """Two items with a LoRA at two weights and one without: the LoRA changes the image, its weight too, and
    the item without it equals the plain job's image."""
    from PIL import Image

    from fewstep.testing import tiny_pipeline
    from tests.lora_cases import make_lora, targets_from_folder, write

    # a diffusers/PEFT LoRA file for the tiny SD 1.5 UNet and text encoder
    lora = write(str(tmp_path), "style", make_lora(targets_from_folder(tiny_pipeline("sd15")), seed=3), "peft", "sd15")
    job = _write_job(tmp_path / "job.jsonl", [
        {"defaults": {"num_inference_steps": 2}},
        {"id": "plain", "prompt": "a fox", "seed": 1},
        {"id": "half", "prompt": "a fox", "seed": 1, "loras": [{"path": lora, "weight": 0.5}]},
        {"id": "full", "prompt": "a fox", "seed": 1, "loras": [{"path": lora, "weight": 1.0}]}])
    out = tmp_path / "out"
    result = _run(_cli(job, "--out", out, "--grid", tmp_path / "grid.png"))
    assert result.returncode == 0, result.stderr[-3000:]
    images = {i: np.asarray(Image.open(out / "images" / f"{i}.png"), dtype=np.int16) for i in ("plain", "half", "full")}
    assert np.abs(images["plain"] - images["half"]).max() > 2 and np.abs(images["half"] - images["full"]).max() > 2
    assert Image.open(tmp_path / "grid.png").size == (128, 128)  # 3 images on a 2 x 2 sheet
