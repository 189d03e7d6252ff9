"""The trained demo model that ships inside the package: where its files are, how it samples by default,
and loading it as any diffusers-format model is loaded.

    pipe = fewstep.demo.load_demo(backend="torch")         # the few-step LoRA fused, TCD (eta 0.3)
    pipe("a red circle on a blue background", generator=fewstep.Generator(0), **SAMPLING)

The files are the output of one documented run of `python -m fewstep.demo.train` (the command and its
figures are in weights/TRAINING.md): a Stable-Diffusion-layout pipeline folder (VAE, CLIP text encoder and
tokenizer, UNet, TCD scheduler config; safetensors) that draws 32x32 coloured shapes, and the consistency
LoRA distilled from it that both TCD and LCM sample with. `load_demo` goes through the same
`from_pretrained` / `load_lora_weights` / `fuse_lora` as any model; nothing here is special-cased below.

No framework is imported here: `load_demo` imports fewstep's pipelines (and so the backend) when called.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fewstep.demo.dataset import parse_prompt

WEIGHTS = Path(__file__).resolve().parent / "weights"
PIPELINE_FOLDER = WEIGHTS / "pipeline"
LORA_FOLDER = WEIGHTS / "lora"
LORA_FILE = "pytorch_lora_weights.safetensors"
LORA_NAME = "demo-consistency"
# How the demo samples unless told otherwise: the distilled LoRA was trained against a guided teacher, so
# it needs no classifier-free guidance of its own (as the released TCD / LCM LoRAs).
SAMPLING = dict(num_inference_steps=4, guidance_scale=0.0, eta=0.3)


def available() -> bool:
    """Whether the shipped weights are installed (they are package data; a stripped install may lack them)."""
    return (PIPELINE_FOLDER / "model_index.json").is_file() and (LORA_FOLDER / LORA_FILE).is_file()


def check_installed() -> None:
    if not available():
        raise FileNotFoundError(f"the demo model's weights are missing from {WEIGHTS}: reinstall fewstep (they "
                                f"ship as package data), or pass --model PATH_OR_ID for a real checkpoint")


def check_prompt(prompt: str) -> None:
    """Raises ValueError, naming what the demo knows and what to do instead, for a prompt it cannot draw."""
    try:
        parse_prompt(prompt)
    except ValueError as error:
        raise ValueError(f"{error}. For anything else pass --model PATH_OR_ID with a real checkpoint "
                         f"(e.g. a Stable Diffusion folder or hub id).") from None


def load_demo(backend: str = "torch", dtype=None, device=None, lora: bool = True, scheduler: str = "tcd"):
    """The demo pipeline on `backend`, its consistency LoRA fused (unless `lora=False`: the undistilled
    model), with `scheduler` "tcd" or "lcm" built from the folder's config. (The teacher's own sampler,
    DDIM, is diffusers': `fewstep.demo.train_eval.sample` runs it.)"""
    import fewstep

    check_installed()
    pipe = fewstep.AutoPipelineForText2Image.from_pretrained(PIPELINE_FOLDER, backend=backend, dtype=dtype,
                                                             device=device)
    schedulers = {"tcd": fewstep.TCDScheduler, "lcm": fewstep.LCMScheduler}
    if scheduler not in schedulers:
        raise ValueError(f"scheduler {scheduler!r}: the demo samples with one of {', '.join(schedulers)}")
    pipe.scheduler = schedulers[scheduler].from_config(pipe.scheduler.config)
    if lora:
        pipe.load_lora_weights(LORA_FOLDER, weight_name=LORA_FILE, adapter_name=LORA_NAME)
        pipe.fuse_lora()
    return pipe


def sample(pipe, pairs, batch: int = 100, **call) -> np.ndarray:
    """Float images [n, H, W, 3] in [0, 1] for (prompt, seed) `pairs`: one `fewstep.Generator(seed)` per image,
    which draws what `torch.Generator().manual_seed(seed)` draws in diffusers, so the images of a batch are
    those of each pair alone (up to float rounding) and comparable with diffusers' for the same pairs."""
    import fewstep

    images = []
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        images.append(pipe([prompt for prompt, _ in chunk], generator=[fewstep.Generator(seed) for _, seed in chunk],
                           output_type="np", **call).images)
    return np.concatenate(images)
