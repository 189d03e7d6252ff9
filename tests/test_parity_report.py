"""The parity report's text, files and pictures, on reports built by hand (no framework, no model):
every stage appears, the out-of-bounds ones are marked, the verdicts are named, report.json reads back
whole (inf / NaN included), and both pictures open at the sizes documented in fewstep.parity.pictures,
drawn by PIL and, when it is installed, by matplotlib."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import PIL.Image
import pytest

from fewstep.parity import pictures
from fewstep.parity.render import IMAGES_PNG, LATENTS_PNG, REPORT_JSON, format_report, read_report, write_report
from fewstep.parity.report import ModuleDiff, ParityReport, StageDiff

STEPS = 4
PER_STEP = ("unet.input", "unet.output", "guidance", "scheduler")


def make_report(images=True, image_max_abs=0.004, tolerance=0.01, stages=None, modules=None, size=(160, 144)):
    """A four-step run: text encoder, the four per-step stages per step, VAE decoder, image. unet.output
    leaves its bound at step 2 (so does everything after it); rel L2 is 0.0 at step 0 (identical)."""
    if stages is None:
        stages = [StageDiff("text_encoder.hidden", 0, (2, 77, 32), 1e-6, 2e-6, 3e-7, 1e-5, True)]
        for step in range(STEPS):
            for k, stage in enumerate(PER_STEP):
                rel = 0.0 if step == 0 else 10.0 ** (-7 + 2 * step) * (1 + k)
                bound = 1e-3
                stages.append(StageDiff(stage, step, (2, 4, 8, 8), rel * 3, rel * 5, rel, bound, rel <= bound))
        stages.append(StageDiff("vae.decoder", 0, (1, 3, 64, 64), np.float64(np.inf), np.nan, np.inf, 1e-3, False,
                                note="non-finite on side b"))
        stages.append(StageDiff("image", 0, (1, 64, 64, 3), image_max_abs, 0.1, 0.02, 1e-2, False))
    if modules is None:
        modules = [ModuleDiff("down_blocks.0.resnets.0", 0, 1e-7, 1e-6, 1e-7, 1e-4, True),
                   ModuleDiff("down_blocks.0.attentions.0.transformer_blocks.0.attn1", 1, 0.25, 3.5, 2e-7, 1e-4, False),
                   ModuleDiff("mid_block.resnets.0", 0, 0.5, 7.0, 0.25, 1e-4, False)]
    pair = None
    if images:
        rng = np.random.default_rng(0)
        h, w = size[1], size[0]
        a = rng.random((1, h, w, 3))
        b = np.clip(a + rng.normal(0, 0.01, a.shape), 0, 1)
        pair = (a, b)
    return ParityReport(
        side_a={"label": "torch", "backend": "torch", "library": "diffusers 0.35.2", "dtype": "float32", "device": "cpu"},
        side_b={"label": "mindspore", "backend": "mindspore", "library": "mindone 0.5.0", "dtype": "float16"},
        stages=stages, tolerance=tolerance, image_max_abs=image_max_abs,
        environment={"python": "3.11.9", "numpy": np.__version__, "seed": 0},
        localised_stage="unet.output[2]", modules=modules, images=pair,
    )


# -- text ------------------------------------------------------------------------------------------


def test_text_lists_every_stage_and_marks_the_out_of_bounds_ones():
    report = make_report()
    text = format_report(report)
    rows = {line.split()[0]: line for line in text.splitlines() if line and "[" in line.split()[0]}
    for stage in report.stages:
        assert stage.label in rows, f"{stage.label} missing from:\n{text}"
        assert rows[stage.label].split()[6] == ("ok" if stage.ok else "!!"), rows[stage.label]
    header = text.splitlines()[0].split()
    assert header[:2] == ["stage", "shape"] and "bound" in header and header[-1] == "ok"
    assert "2x4x8x8" in rows["unet.output[2]"]
    assert "non-finite on side b" in rows["vae.decoder[0]"]
    assert "inf" in rows["vae.decoder[0]"] and "nan" in rows["vae.decoder[0]"]


def test_text_names_the_first_stage_and_module_the_sides_and_the_environment():
    text = format_report(make_report())
    # unet.input and unet.output at step 2: rel 1e-3 * (1 + k) -- unet.input is exactly at its bound (ok).
    assert "first stage out of bounds: unet.output[2]: rel L2 0.002 > bound 0.001" in text
    assert ("first divergent module: down_blocks.0.attentions.0.transformer_blocks.0.attn1 (call 1): "
            "output rel L2 0.25, input rel L2 2e-07") in text
    assert "[rerun of unet.output[2]]" in text
    assert "side a: torch  backend=torch  library=diffusers 0.35.2  dtype=float32  device=cpu" in text
    assert "side b: mindspore" in text and "dtype=float16" in text
    assert "environment:\n  python: 3.11.9\n" in text and "  seed: 0" in text


@pytest.mark.parametrize("image_max_abs, tolerance, verdict", [(0.004, 0.01, "PASS"), (0.01, 0.01, "PASS"),
                                                                (0.02, 0.01, "FAIL"), (np.nan, 0.01, "FAIL")])
def test_text_pass_or_fail_follows_the_tolerance(image_max_abs, tolerance, verdict):
    text = format_report(make_report(image_max_abs=image_max_abs, tolerance=tolerance))
    line = next(line for line in text.splitlines() if line.startswith("image max abs"))
    assert line == f"image max abs {image_max_abs:.3g} vs tolerance {tolerance:.3g}: {verdict}"


def test_text_when_nothing_is_out_of_bounds_or_localised():
    stages = [StageDiff("scheduler", i, (1, 4, 8, 8), 0.0, 0.0, 0.0, 0.0, True) for i in range(2)]
    text = format_report(make_report(stages=stages, modules=[]))
    assert "!!" not in text
    assert "first stage out of bounds: none" in text
    assert "first divergent module: not localised" in text
    within = format_report(make_report(stages=stages, modules=[ModuleDiff("conv_in", 0, 0, 0, 0, 1e-4, True)]))
    assert "first divergent module: not localised (all 1 modules within bounds in the rerun)" in within


# -- files -----------------------------------------------------------------------------------------


def test_write_report_writes_three_files_and_the_json_reads_back(tmp_path):
    report = make_report()
    written = write_report(report, tmp_path / "out")
    assert set(written) == {"report", "images", "latents"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([REPORT_JSON, IMAGES_PNG, LATENTS_PNG])

    # Strict JSON: no bare Infinity / NaN, whatever produced the numbers (np.float64 inf in vae.decoder).
    raw = (tmp_path / "out" / REPORT_JSON).read_text()
    json.loads(raw, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))

    data = read_report(tmp_path / "out")
    same = json.dumps(read_report(written["report"]))      # the folder or the file itself (NaN != NaN: as text)
    assert json.dumps(data) == same
    assert [(s["stage"], s["index"]) for s in data["stages"]] == [(s.stage, s.index) for s in report.stages]
    for stage in PER_STEP:
        assert [s["index"] for s in data["stages"] if s["stage"] == stage] == list(range(STEPS))
    for got, want in zip(data["stages"], report.stages):
        assert got["shape"] == list(want.shape) and got["ok"] == want.ok and got["note"] == want.note
        for field in ("max_abs", "max_rel", "rel_l2", "bound"):
            np.testing.assert_equal(got[field], float(getattr(want, field)))   # NaN == NaN here
    decoder = data["stages"][-2]
    assert decoder["rel_l2"] == np.inf and np.isnan(decoder["max_rel"])
    assert data["first_stage"] == "unet.output[2]" and data["passed"] is True
    assert data["first_module"]["path"] == "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    assert [m["path"] for m in data["modules"]] == [m.path for m in report.modules]
    assert data["environment"]["seed"] == 0 and data["side_b"]["label"] == "mindspore"


def test_non_finite_top_level_numbers_round_trip(tmp_path):
    report = make_report(image_max_abs=np.float32(np.nan), tolerance=np.inf)
    write_report(report, tmp_path)
    data = read_report(tmp_path)
    assert np.isnan(data["image_max_abs"]) and data["tolerance"] == np.inf and data["passed"] is False


def test_read_report_names_what_it_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="report.json"):
        read_report(tmp_path)


def test_without_images_or_per_step_stages_only_the_json_is_written(tmp_path):
    stages = [StageDiff("text_encoder.hidden", 0, (1, 77, 32), 0.0, 0.0, 0.0, 0.0, True)]
    written = write_report(make_report(images=False, stages=stages, modules=[]), tmp_path)
    assert set(written) == {"report"}
    assert [p.name for p in tmp_path.iterdir()] == [REPORT_JSON]
    assert read_report(tmp_path)["stages"][0]["stage"] == "text_encoder.hidden"


# -- pictures --------------------------------------------------------------------------------------


def test_images_png_is_a_heat_map_beside_both_images(tmp_path):
    report = make_report(size=(160, 144))
    with PIL.Image.open(write_report(report, tmp_path)["images"]) as image:
        assert image.size == (3 * 160, pictures.LABEL_BAND + 144)
        pixels = np.asarray(image.convert("RGB"))
    a = (report.images[0][0] * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(pixels[pictures.LABEL_BAND:, :160], a)      # side a drawn as is
    heat = pixels[pictures.LABEL_BAND:, 320:].astype(int)
    diff = np.abs(report.images[0][0] - report.images[1][0]).max(-1)
    # The pixel of the largest difference is the ramp's brightest colour; an unchanged one its darkest.
    assert tuple(heat[np.unravel_index(diff.argmax(), diff.shape)]) == (252, 255, 164)
    assert heat.sum(-1)[diff == 0].max(initial=0) <= 4
    assert pixels[:pictures.LABEL_BAND].max() == 255                          # label text drawn


def test_images_png_enlarges_small_images_and_draws_every_batch_item():
    rng = np.random.default_rng(1)
    a = rng.random((2, 16, 24, 1))                                            # grey, batch of two
    report = make_report(images=False)
    report.images = (a, a.copy())
    image = pictures.images_picture(report)
    scale = -(-pictures.MIN_PANEL_WIDTH // 24)                                # 6
    assert image.size == (3 * 24 * scale, pictures.LABEL_BAND + 2 * 16 * scale)
    heat = np.asarray(image)[pictures.LABEL_BAND:, 2 * 24 * scale:]
    assert heat.max() <= 4                                                    # identical: all dark, no NaN


def test_images_png_with_nan_or_mismatched_shapes_still_draws():
    report = make_report(images=False)
    a = np.full((1, 32, 32, 3), 0.5)
    b = a.copy()
    b[0, 0, 0, 0] = np.nan
    report.images = (a, b)
    assert pictures.images_picture(report).size == (3 * 128, pictures.LABEL_BAND + 128)
    report.images = (a, np.zeros((1, 40, 32, 3)))
    assert pictures.images_picture(report).size == (3 * 128, pictures.LABEL_BAND + 40 * 4)
    report.images = (np.zeros((1, 3, 8, 8)), np.zeros((1, 3, 8, 8)))
    with pytest.raises(ValueError, match="NHWC"):
        pictures.images_picture(report)


def _plot_has_stage_colours(image: PIL.Image.Image, stages) -> bool:
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    found = {tuple(p) for p in np.unique(pixels, axis=0)}
    return all(pictures._COLOURS[s] in found for s in stages)


def test_latents_png_drawn_by_pil_when_matplotlib_is_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)                     # import matplotlib -> ImportError
    with pytest.raises(ImportError):
        import matplotlib  # noqa: F401
    written = write_report(make_report(), tmp_path)
    with PIL.Image.open(written["latents"]) as image:
        assert image.size == pictures.PLOT_SIZE
        assert _plot_has_stage_colours(image, PER_STEP)


def test_latents_png_pil_copes_with_zero_inf_nan_and_a_single_step(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    for values in ([0.0], [0.0, 0.0, 0.0], [1e-3, np.inf, np.nan, 0.0], [np.nan, np.nan]):
        stages = [StageDiff("scheduler", i, (1, 4, 8, 8), v, v, v, 1e-3, v <= 1e-3) for i, v in enumerate(values)]
        image = pictures.steps_plot(make_report(stages=stages, images=False))
        assert image.size == pictures.PLOT_SIZE
    only_guidance = [StageDiff("guidance", i, (1, 4, 8, 8), 0.1, 0.1, 0.1, 1e-3, False) for i in range(3)]
    image = pictures.steps_plot(make_report(stages=only_guidance, images=False))
    assert _plot_has_stage_colours(image, ["guidance"])
    assert not _plot_has_stage_colours(image, ["scheduler"])


def test_latents_png_drawn_by_matplotlib_when_installed(tmp_path):
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed: only the PIL plot is tested (it is optional, not a dependency)")
    written = write_report(make_report(), tmp_path)
    with PIL.Image.open(written["latents"]) as image:
        assert image.size == pictures.PLOT_SIZE
    zero = [StageDiff("scheduler", i, (1, 4, 8, 8), 0.0, 0.0, 0.0, 0.0, True) for i in range(3)]
    assert pictures.steps_plot(make_report(stages=zero), use_matplotlib=True).size == pictures.PLOT_SIZE


def test_the_render_modules_import_no_framework():
    import ast
    import pathlib

    banned = ("torch", "mindspore", "diffusers", "mindone", "transformers", "fewstep.backends")
    folder = pathlib.Path(pictures.__file__).parent
    for name in ("render.py", "text.py", "pictures.py"):
        tree = ast.parse((folder / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [m for m in modules if m.split(".")[0] in banned or m.startswith("fewstep.backends")], name
