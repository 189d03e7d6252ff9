"""What the demo's training stages share: the models' shapes, seeded randomness, checkpoints, progress, the log.

Never imported by `import fewstep` or `fewstep.demo` (it imports torch and diffusers at module level); only
`python -m fewstep.demo.train` and the stage modules beside it load it.

Resumable and reproducible by construction:
- every random draw of a training step comes from generators seeded with (seed, stage, step), so a step
  draws the same batch, noise and timesteps whether the run got there in one go or resumed from a
  checkpoint -- there is no RNG state to save;
- a checkpoint holds the weights, the optimizer's state, the EMA and the step in one safetensors file: the
  tensors as tensors, everything else (step, wall time, the optimizer's hyperparameters, the config) as JSON
  in its metadata, so nothing is unpickled on resume (a pickled `.pt` found there is ignored, never opened);
  it is written whole or not at all (fewstep.core.files), so an interrupted write leaves the previous one;
- each stage reads its inputs from the previous stage's saved folder, never from memory, so a resumed run
  and an uninterrupted one start every stage from the same bytes.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fewstep.core.files import atomic_path, write_json

# --- model shapes (issue 14's measured recipe) ----------------------------------------------------------
IMAGE_SIZE = 32
LATENT_CHANNELS = 4
VAE_BLOCKS = (32, 64)  # two levels -> latents 4 x 16 x 16; ~0.66 M parameters
UNET_BLOCKS = (32, 64)  # 16x16 plain, 8x8 with cross-attention (+ the mid block); ~1.0 M parameters
TEXT_HIDDEN = 64
STAGE_IDS = {"vae": 1, "unet": 2, "distill": 3}
# SD's training schedule, written as the DDIM config the teacher samples with (SD 1.5's keys).
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                timestep_spacing="leading")


def new_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_BLOCKS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_BLOCKS),
        block_out_channels=VAE_BLOCKS, layers_per_block=1, norm_num_groups=16, sample_size=IMAGE_SIZE,
    )


def new_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2 ** (len(VAE_BLOCKS) - 1), in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=UNET_BLOCKS,
        layers_per_block=1, norm_num_groups=8, cross_attention_dim=TEXT_HIDDEN, attention_head_dim=8,
    )


def new_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=4 * TEXT_HIDDEN,
        projection_dim=TEXT_HIDDEN, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))


def demo_tokenizer():
    """The word-level tokenizer over every caption form of every demo combination."""
    from fewstep.demo.dataset import CAPTION_FORMS, all_attributes, caption
    from fewstep.demo.tokenizer import build_tokenizer

    return build_tokenizer(caption(a, form) for a in all_attributes() for form in range(len(CAPTION_FORMS)))


def teacher_scheduler():
    """The DDIM scheduler the teacher samples with; its alphas_cumprod is the training schedule."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(SCHEDULE)


# --- randomness and determinism -------------------------------------------------------------------------
def step_rng(seed: int, stage: str, step: int):
    """(numpy Generator, torch Generator) for one step of one stage: a function of the three numbers only."""
    rng = np.random.default_rng([seed, STAGE_IDS.get(stage, 0), step])
    return rng, torch.Generator().manual_seed(int(rng.integers(2**62)))


@contextlib.contextmanager
def deterministic(threads: int):
    """torch with `threads` intra-op threads and deterministic algorithms; the caller's settings come back
    afterwards (the smoke test trains inside the pytest process)."""
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])


def cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warmup to `peak`, then a half cosine to a tenth of it; a function of the step (no state)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    """EMA with warmup (min(decay, (1 + step) / (10 + step))), so a short run is not dominated by the init."""
    rate = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(rate).add_(p.detach(), alpha=1 - rate)


# --- data -----------------------------------------------------------------------------------------------
def load_images(n: int, seed: int):
    """(float32 [n, 3, 32, 32] in [-1, 1], prompts) from the demo's procedural dataset."""
    from fewstep.demo.dataset import make_dataset

    images, prompts, _ = make_dataset(n, seed, size=IMAGE_SIZE)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    return pixels.contiguous(), prompts


# --- checkpoints ----------------------------------------------------------------------------------------
CHECKPOINT_KEY = "fewstep.checkpoint"  # the safetensors metadata entry holding a checkpoint's JSON part


def flatten_state(state):
    """(tensors, JSON-able description) of a nested state (module and optimizer state dicts, numbers): every
    tensor becomes an entry of `tensors` (named by a counter) that the description points to, and every node
    says its type, so that `unflatten_state` rebuilds the same structure, int keys and tuples (the optimizer's)
    included, bit for bit."""
    tensors = {}

    def encode(value):
        if isinstance(value, torch.Tensor):
            key = str(len(tensors))
            # a copy of its own: safetensors refuses tensors that share memory
            tensors[key] = value.detach().to("cpu", copy=True).contiguous()
            return {"tensor": key}
        if isinstance(value, dict):
            return {"dict": [[encode(k), encode(v)] for k, v in value.items()]}
        if isinstance(value, (list, tuple)):
            return {type(value).__name__: [encode(v) for v in value]}
        if value is None or isinstance(value, (bool, int, float, str)):
            return {"value": value}
        raise TypeError(f"A checkpoint holds tensors, numbers, strings and their dicts and lists, not a "
                        f"{type(value).__name__} ({value!r}).")

    return tensors, encode(state)


def unflatten_state(tensors, description):
    """The state `flatten_state` described; only dicts, lists, tuples, numbers, strings and the tensors given
    are made (nothing named in the file is imported or called)."""

    def decode(node):
        if not isinstance(node, dict) or len(node) != 1:
            raise ValueError(f"unexpected entry {str(node)[:80]!r}")
        (kind, value), = node.items()
        if kind == "tensor":
            return tensors[value]
        if kind == "dict":
            return {decode(k): decode(v) for k, v in value}
        if kind in ("list", "tuple"):
            items = [decode(v) for v in value]
            return items if kind == "list" else tuple(items)
        if kind == "value" and (value is None or isinstance(value, (bool, int, float, str))):
            return value
        raise ValueError(f"unexpected entry kind {kind!r}")

    return decode(description)


class Stage:
    """One stage's folders under OUT: `checkpoints/<name>.safetensors` while it runs, `stages/<name>/` when it
    is done (its weights plus done.json). `config` is what the stage's result depends on; a finished stage
    whose recorded config differs is an error rather than a silent reuse."""

    def __init__(self, out: Path, name: str, config: dict):
        self.name, self.config = name, config
        self.checkpoint = out / "checkpoints" / f"{name}.safetensors"
        # what earlier versions wrote with torch.save: a pickle, never opened
        self.pickled_checkpoint = out / "checkpoints" / f"{name}.pt"
        self.folder = out / "stages" / name
        self.log_path = out / "training_log.jsonl"

    def done(self) -> bool:
        marker = self.folder / "done.json"
        if not marker.exists():
            return False
        recorded = json.loads(marker.read_text())["config"]
        if recorded != json.loads(json.dumps(self.config)):
            raise SystemExit(f"{self.folder} was trained with {recorded}, not {self.config}; "
                             f"pass another --out or remove that folder to retrain it.")
        return True

    def finish(self, summary: dict) -> None:
        """Write done.json (last, so a stage without it counts as unfinished) and drop the checkpoint."""
        summary = dict(summary, config=self.config)
        write_json(str(self.folder / "done.json"), summary, indent=1)
        self.checkpoint.unlink(missing_ok=True)
        self.log({"event": "done", **{k: v for k, v in summary.items() if k != "config"}})

    def save(self, state: dict) -> None:
        """The state (tensors, and numbers, strings, dicts and lists of them) as one safetensors file."""
        from safetensors.torch import save_file

        tensors, description = flatten_state(dict(state, config=self.config))
        metadata = {CHECKPOINT_KEY: json.dumps(description, allow_nan=False)}
        with atomic_path(str(self.checkpoint)) as temp:
            save_file(tensors, temp, metadata=metadata)

    def load(self):
        """The last checkpoint's state (None when there is none); refuses one from another config or one that
        cannot be read. Nothing is unpickled: a pickled `<name>.pt` (what earlier versions wrote, or a file
        planted there) is reported and left unopened."""
        if self.pickled_checkpoint.exists():
            print(f"[{self.name}] ignoring {self.pickled_checkpoint}: a pickled checkpoint is never loaded (unpickling "
                  f"can run code); delete it. The stage resumes from {self.checkpoint.name} if there is one, else "
                  f"from step 0.", file=sys.stderr, flush=True)
        if not self.checkpoint.exists():
            return None
        try:
            state = self._read_checkpoint()
        except Exception as err:  # not safetensors, cut short, or metadata that is not ours
            reason = " ".join(str(err).split())[:200] or type(err).__name__
            raise SystemExit(f"{self.checkpoint} is not a checkpoint this training can read ({reason}); delete it to "
                             f"restart stage {self.name!r} from step 0.") from err
        if state.pop("config") != self.config:
            raise SystemExit(f"{self.checkpoint} comes from another configuration; rerun with the same flags "
                             f"or remove it to restart stage {self.name!r}.")
        return state

    def _read_checkpoint(self) -> dict:
        from safetensors import safe_open

        with safe_open(str(self.checkpoint), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
        if CHECKPOINT_KEY not in metadata:
            raise ValueError(f"no {CHECKPOINT_KEY!r} entry in its metadata")
        state = unflatten_state(tensors, json.loads(metadata[CHECKPOINT_KEY]))
        if not isinstance(state, dict) or not {"config", "step", "elapsed"} <= state.keys():
            raise ValueError("its metadata does not describe a training state")
        return state

    def log(self, record: dict) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"stage": self.name, "time": round(time.time(), 1), **record}) + "\n")


class Progress:
    """Progress lines with the rate and an ETA at most every `every` seconds (and at the last step)."""

    def __init__(self, stage: str, start: int, total: int, every: float = 10.0):
        self.stage, self.start, self.total, self.every = stage, start, total, every
        self.t0 = self.last = time.monotonic()

    def update(self, step: int, **values) -> None:
        now = time.monotonic()
        if now - self.last < self.every and step != self.total:
            return
        self.last = now
        rate = (step - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        shown = " ".join(f"{k} {v:.4g}" for k, v in values.items())
        print(f"[{self.stage}] step {step}/{self.total} {shown} {rate:.2f} it/s ETA {format_seconds(eta)}",
              file=sys.stderr, flush=True)


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Clock:
    """Wall time of a stage across resumes (`offset` is what earlier runs spent), and its optional budget."""

    def __init__(self, offset: float = 0.0, budget_s: float = None):
        self.offset, self.budget_s, self.t0 = offset, budget_s, time.monotonic()

    def elapsed(self) -> float:
        return self.offset + time.monotonic() - self.t0

    def over_budget(self) -> bool:
        return self.budget_s is not None and self.elapsed() >= self.budget_s


def run_steps(stage: Stage, args, steps: int, start: int, clock: Clock, step_fn, state_fn, stop_at: int = None,
              after_step=None):
    """The loop every stage shares: `step_fn(step)` trains one step and returns its scalars (loss, ...);
    progress lines, log records every `args.log_every` steps, a checkpoint (`state_fn()` + step + wall
    time) every `args.ckpt_every` steps and when stopping at `stop_at` (the resume test's interruption);
    `after_step(done)` runs after each step (periodic evaluation). Stops early when the stage's time
    budget is spent. Returns (steps done, True if the stage ran to its end or its budget)."""
    progress = Progress(stage.name, start, steps)
    done = start
    for step in range(start, steps):
        if clock.over_budget():
            print(f"[{stage.name}] time budget spent after {done} steps", file=sys.stderr, flush=True)
            stage.log({"event": "budget", "step": done})
            break
        values = step_fn(step)
        done = step + 1
        progress.update(done, **values)
        if done % args.log_every == 0 or done == steps:
            stage.log({"step": done, **{k: round(v, 6) for k, v in values.items()},
                       "elapsed": round(clock.elapsed(), 1)})
        if after_step is not None:
            after_step(done)
        stopping = stop_at is not None and done >= stop_at
        if stopping or (done % args.ckpt_every == 0 and done < steps):
            stage.save({**state_fn(), "step": done, "elapsed": clock.elapsed()})
        if stopping:
            return done, False
    return done, True


def resume(stage: Stage, clock: Clock, modules: dict) -> int:
    """Load the stage's last checkpoint into `modules` ({key: module or optimizer}); returns the step to
    start from (0 without a checkpoint) and sets the clock's offset to the wall time already spent."""
    state = stage.load()
    if not state:
        return 0
    for key, module in modules.items():
        module.load_state_dict(state[key])
    clock.offset = state["elapsed"]
    print(f"[{stage.name}] resuming at step {state['step']}", file=sys.stderr, flush=True)
    return state["step"]


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# --- what stages 2 and 3 share --------------------------------------------------------------------------
@torch.no_grad()
def dataset_latents(out: Path, args):
    """(posterior means, stds, prompts) of the training set under the stage-1 VAE, and the VAE itself.

    Encoded once per stage start: the VAE is frozen after stage 1, so drawing `mean + std * noise` per step
    is exactly sampling `latent_dist` as SD's training does, at a fraction of the cost."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(out / "stages" / "vae").eval()
    pixels, prompts = load_images(args.data_size, args.seed)
    means, stds = [], []
    for i in range(0, len(pixels), 512):
        dist = vae.encode(pixels[i:i + 512]).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds), prompts, vae


def prompt_index(prompts, tokenizer):
    """(unique prompts' token ids [u, L], index of each prompt into them): the dataset has 60 captions,
    so each is tokenized (and, when frozen, encoded) once."""
    unique = sorted(set(prompts))
    where = {p: i for i, p in enumerate(unique)}
    return tokenize(tokenizer, unique), torch.tensor([where[p] for p in prompts])


def tokenize(tokenizer, texts) -> torch.Tensor:
    return tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def noisy_latents(z: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor):
    """The forward process q(z_t | z_0), as diffusers' add_noise."""
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    return a.sqrt() * z + (1 - a).sqrt() * noise
