"""`python -m fewstep.demo.train --smoke`: every stage runs, the output loads in fewstep, and a resumed run
gives the same bytes as an uninterrupted one.

One uninterrupted smoke run and one interrupted twice (after stage 1, then inside stage 2 at a checkpoint)
are trained in this process (a few steps each, about 15 s together on 2 cores); the test then compares
every weight file of the two outputs bit for bit, which also shows the training is deterministic for a
seed and a thread count.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

pytestmark = pytest.mark.torch


def _train(out, *extra):
    from fewstep.demo.train import main

    assert main(["--out", str(out), "--smoke", "--threads", "1", *extra]) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-train")
    _train(root / "straight")
    _train(root / "resumed", "--stop-after", "vae")
    assert not (root / "resumed" / "stages" / "unet").exists()
    _train(root / "resumed", "--stop-after", "unet:2")
    assert (root / "resumed" / "checkpoints" / "unet.safetensors").exists()
    _train(root / "resumed")
    return root / "straight", root / "resumed"


def _weights(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.safetensors"))}


def test_resumed_run_gives_the_same_weights(runs):
    straight, resumed = runs
    for part in ("pipeline", "lora"):
        a, b = _weights(straight / part), _weights(resumed / part)
        assert a and a.keys() == b.keys()
        assert [k for k in a if a[k] != b[k]] == [], f"{part}: resumed weights differ from an uninterrupted run"


def test_log_records_every_stage_and_the_final_scores(runs):
    records = [json.loads(line) for line in (runs[0] / "training_log.jsonl").read_text().splitlines()]
    done = {r["stage"]: r for r in records if r.get("event") == "done"}
    assert set(done) == {"vae", "unet", "distill"} and all(r["wall_s"] >= 0 for r in done.values())
    final = [r for r in records if r.get("event") == "final"][-1]
    assert {"teacher", "tcd4", "lcm4"} <= final.keys() and 0 <= final["tcd4"]["all"] <= 1
    assert sum(final["sizes_mb"].values()) <= 12


def test_output_loads_in_fewstep_and_samples_with_the_lora(runs):
    import fewstep
    from fewstep.pipelines import StableDiffusionPipeline

    out = runs[0]
    pipe = StableDiffusionPipeline.from_pretrained(str(out / "pipeline"), backend="torch")
    assert type(pipe.scheduler).__name__ == "TCDScheduler"
    pipe.load_lora_weights(str(out / "lora"))
    image = pipe("a red circle on a blue background", num_inference_steps=4, guidance_scale=1.0, eta=0.3,
                 generator=fewstep.Generator(0), output_type="np").images
    image = np.asarray(image)
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()


def test_finished_stages_are_skipped_and_a_changed_config_is_refused(runs, capsys):
    from fewstep.demo.train import main

    straight = runs[0]
    assert main(["--out", str(straight), "--smoke", "--threads", "1", "--stop-after", "distill"]) == 0
    assert "finished earlier; skipped" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="was trained with"):
        main(["--out", str(straight), "--smoke", "--threads", "1", "--seed", "1", "--stop-after", "vae"])


def test_help_lists_the_stages_flags(capsys):
    from fewstep.demo.train import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    assert all(flag in shown for flag in ("--vae-steps", "--unet-steps", "--distill-steps", "--budget-minutes"))


def test_ship_copies_a_finished_run_with_its_notes_and_refuses_other_files(runs, tmp_path):
    import hashlib

    from fewstep.demo.ship import ship

    straight = runs[0]
    dest = tmp_path / "weights"
    (dest / "old").mkdir(parents=True)  # whatever was shipped before is replaced whole
    files = ship(straight, dest)
    assert {p.relative_to(dest).parts[0] for p in files} == {"pipeline", "lora", "TRAINING.md"}
    assert _weights(dest / "pipeline") == _weights(straight / "pipeline")
    notes = (dest / "TRAINING.md").read_text()
    assert "python -m fewstep.demo.train --out RUN_DIR --seed 0 --threads 1" in notes
    lora = dest / "lora" / "pytorch_lora_weights.safetensors"
    assert hashlib.sha256(lora.read_bytes()).hexdigest() in notes
    (straight / "lora" / "extra.bin").write_bytes(b"pickle")
    try:
        with pytest.raises(SystemExit, match="only safetensors"):
            ship(straight, tmp_path / "other")
    finally:
        (straight / "lora" / "extra.bin").unlink()
    assert not (tmp_path / "other").exists()
