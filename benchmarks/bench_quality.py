"""Sampling quality on the shipped demo model (fewstep/demo/weights): does a few-step sampler draw what the
prompt asks for? TCD vs LCM vs the teacher, scored by the demo's analytic checker.

Every setting draws the same fixed (prompt, seed) pairs (`fewstep.demo.evaluation_prompts(n, 2026)`: the 60
shape x colour x background prompts in turn, each pair its own seed) and reports the fraction of pictures
with the prompt's shape, shape colour and background all right ("all"), its standard error, each attribute
alone, an edge-contrast figure (mean absolute pixel step between neighbours, relative to the training
data's for the same prompts: below 1 is smoother, above 1 busier) and the seconds per image.

Settings (guidance 4 for the undistilled model, none with the LoRA, as the released LoRAs are used):
- the teacher: DDIM 25 and 50 steps (diffusers' own pipeline and DDIMScheduler: the teacher is the reference
  the few-step samplers are judged against, so it stays the reference library's);
- the undistilled model at 4 steps: DDIM, and fewstep's TCD (eta 0.3) without the LoRA;
- fewstep, the consistency LoRA fused: LCM at 1, 2, 4 and 8 steps; TCD at 2, 4 and 8 steps for eta (gamma)
  0, 0.3, 0.6 and 1.0; and the samplers the other few-step methods ship with (issue 27), each with trailing
  timestep spacing as those methods set it: DDIM (Hyper-SD, PCM), Euler (SDXL-Lightning) and Euler-ancestral
  (SD-Turbo) at 1, 2, 4 and 8 steps, to see which sampler suits a consistency LoRA at each step count;
- diffusers on the same weights, its LoRA fused through PEFT, TCD 4 (eta 0.3) and LCM 4: the same pairs,
  so its accuracy, the largest pixel difference from fewstep's pictures and the time ratio show that
  fewstep's samplers are diffusers'.

One grid per setting (the first 16 pairs, 4 x 4, each picture 4x nearest-neighbour) and an overview (a row
per setting, the first 8 pairs) go to --out. The table prints in Markdown, as the README shows it.

    python benchmarks/bench_quality.py [--n 400] [--out benchmarks/out/quality] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import time

import numpy as np

BENCH_SEED = 2026  # tests/test_demo_model.py checks its floor on the first 100 of these pairs
GRID_PAIRS, OVERVIEW_PAIRS, ZOOM = 16, 8, 4


def settings():
    """(label, library, lora, scheduler, steps, guidance, eta) in table order."""
    rows = [("teacher: DDIM 25, guidance 4", "diffusers", False, "ddim", 25, 4.0, None),
            ("teacher: DDIM 50, guidance 4", "diffusers", False, "ddim", 50, 4.0, None),
            ("undistilled: DDIM 4, guidance 4", "diffusers", False, "ddim", 4, 4.0, None),
            ("undistilled: TCD 4 (eta 0.3), guidance 4", "fewstep", False, "tcd", 4, 4.0, 0.3)]
    rows += [(f"LCM-LoRA: LCM {steps}", "fewstep", True, "lcm", steps, 0.0, None) for steps in (1, 2, 4, 8)]
    rows += [(f"TCD-LoRA: TCD {steps}, eta {eta}", "fewstep", True, "tcd", steps, 0.0, eta)
             for steps in (2, 4, 8) for eta in (0.0, 0.3, 0.6, 1.0)]
    rows += [(f"LoRA: {name} {steps}", "fewstep", True, key, steps, 0.0, None)
             for key, name in (("ddim-trailing", "DDIM trailing"), ("euler-trailing", "Euler trailing"),
                               ("euler-a-trailing", "Euler-ancestral trailing"))
             for steps in (1, 2, 4, 8)]
    rows += [("diffusers, LoRA: TCD 4, eta 0.3", "diffusers", True, "tcd", 4, 0.0, 0.3),
             ("diffusers, LoRA: LCM 4", "diffusers", True, "lcm", 4, 0.0, None)]
    return rows


def edge_contrast(images: np.ndarray) -> float:
    """Mean |difference| between horizontal and vertical neighbours, images in [0, 1]."""
    return float((np.abs(np.diff(images, axis=1)).mean() + np.abs(np.diff(images, axis=2)).mean()) / 2)


class Samplers:
    """The shipped model on fewstep (with and without the LoRA) and on diffusers, each loaded once."""

    def __init__(self):
        self._cache = {}

    def fewstep(self, lora: bool, scheduler: str):
        from fewstep.demo import load_demo

        key = ("fewstep", lora)
        if key not in self._cache:
            self._cache[key] = load_demo("torch", lora=lora)
            self._cache[key].set_progress_bar_config(disable=True)
        pipe = self._cache[key]
        import fewstep

        cls, overrides = {"tcd": (fewstep.TCDScheduler, {}), "lcm": (fewstep.LCMScheduler, {}),
                          "ddim-trailing": (fewstep.DDIMScheduler, {"timestep_spacing": "trailing"}),
                          "euler-trailing": (fewstep.EulerDiscreteScheduler, {"timestep_spacing": "trailing"}),
                          "euler-a-trailing": (fewstep.EulerAncestralDiscreteScheduler,
                                               {"timestep_spacing": "trailing"})}[scheduler]
        pipe.scheduler = cls.from_config(pipe.scheduler.config, **overrides)
        return pipe

    def diffusers_components(self, lora: bool) -> dict:
        key = ("diffusers", lora)
        if key not in self._cache:
            import diffusers

            from fewstep.demo import model

            pipe = diffusers.StableDiffusionPipeline.from_pretrained(model.PIPELINE_FOLDER)
            if lora:
                pipe.load_lora_weights(model.LORA_FOLDER, weight_name=model.LORA_FILE)
                pipe.fuse_lora()
            self._cache[key] = dict(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                    unet=pipe.unet)
        return self._cache[key]

    def sampler(self, library, lora, scheduler):
        """A function (pairs, steps, guidance, eta) -> images, its models loaded now (not while timed)."""
        if library == "fewstep":
            from fewstep.demo import sample

            pipe = self.fewstep(lora, scheduler)

            def draw(pairs, steps, guidance, eta):
                extra = {"eta": eta} if eta is not None else {}
                return sample(pipe, pairs, num_inference_steps=steps, guidance_scale=guidance, **extra)
            return draw
        from fewstep.demo.train_eval import sample  # diffusers' own pipeline, one torch generator per image

        components = self.diffusers_components(lora)

        def draw(pairs, steps, guidance, eta):
            return sample(**components, pairs=pairs, scheduler=scheduler, steps=steps, guidance=guidance,
                          eta=eta or 0.0)
        return draw


def save_grid(images: np.ndarray, path: str) -> None:
    from PIL import Image

    from fewstep.utils import make_image_grid

    cells = [Image.fromarray(np.rint(image * 255).astype(np.uint8)).resize(
        (image.shape[1] * ZOOM, image.shape[0] * ZOOM), Image.NEAREST) for image in images[:GRID_PAIRS]]
    side = math.isqrt(len(cells))
    make_image_grid(cells[:side * side], rows=side, cols=side).save(path)


def save_overview(rows, path: str) -> None:
    """A row per setting: its label, then its first OVERVIEW_PAIRS pictures (4x nearest-neighbour)."""
    from PIL import Image, ImageDraw

    cell, label_width = 32 * ZOOM, 300
    sheet = Image.new("RGB", (label_width + OVERVIEW_PAIRS * cell, len(rows) * cell), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, images) in enumerate(rows):
        draw.text((6, r * cell + cell // 2 - 6), label, fill="black")
        for c, image in enumerate(images[:OVERVIEW_PAIRS]):
            picture = Image.fromarray(np.rint(image * 255).astype(np.uint8)).resize((cell, cell), Image.NEAREST)
            sheet.paste(picture, (label_width + c * cell, r * cell))
    sheet.save(path)


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=400, help="prompt/seed pairs per setting (default 400)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "quality"),
                        help="folder for the grids and the overview")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    args = parser.parse_args(argv)

    import torch

    from fewstep.demo import evaluation_prompts, parse_prompt, render, score_images

    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    pairs = evaluation_prompts(args.n, BENCH_SEED)
    prompts = [prompt for prompt, _ in pairs]
    # the training data's edge contrast for the same prompts (each picture drawn with its pair's seed)
    data = np.stack([render(parse_prompt(p), np.random.default_rng(s)) for p, s in pairs]).astype(np.float32) / 255
    data_edges = edge_contrast(data)

    samplers = Samplers()
    results, overview, drawn = [], [], {}
    for label, library, lora, scheduler, steps, guidance, eta in settings():
        draw = samplers.sampler(library, lora, scheduler)
        start = time.perf_counter()
        images = draw(pairs, steps, guidance, eta)
        seconds = (time.perf_counter() - start) / len(pairs)
        drawn[label] = images
        scores = score_images(images, prompts)
        results.append((label, scores, edge_contrast(images) / data_edges, seconds))
        save_grid(images, os.path.join(args.out, f"grid-{slug(label)}.png"))
        overview.append((label, images))
        print(f"{label}: all {scores['all']:.3f} ({seconds * 1000:.1f} ms/image)", flush=True)
    save_overview(overview, os.path.join(args.out, "overview.png"))

    print(f"\n{args.n} prompt/seed pairs (evaluation_prompts(n, {BENCH_SEED})), the shipped demo model, torch on CPU, "
          f"{args.threads} threads\n")
    print("| setting | all three | ± s.e. | shape | shape colour | background | edge contrast (data = 1) | ms / image |")
    print("|---|---|---|---|---|---|---|---|")
    for label, s, edges, seconds in results:
        print(f"| {label} | {s['all']:.1%} | {s['all_se']:.1%} | {s['shape']:.1%} | {s['colour']:.1%} | "
              f"{s['background']:.1%} | {edges:.2f} | {seconds * 1000:.1f} |")
    print()
    for few, ref in (("TCD-LoRA: TCD 4, eta 0.3", "diffusers, LoRA: TCD 4, eta 0.3"),
                     ("LCM-LoRA: LCM 4", "diffusers, LoRA: LCM 4")):
        times = {label: seconds for label, _, _, seconds in results}
        diff = np.abs(drawn[few] - drawn[ref]).max()
        print(f"{few}: fewstep vs diffusers, same pairs: largest pixel difference {diff:.2e}; "
              f"time ratio fewstep / diffusers {times[few] / times[ref]:.3f}")
    print(f"\ngrids and overview: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
