"""Recipes: the sampler settings each published few-step model was distilled for, in one table.

A few-step LoRA or UNet gives good pictures only with the scheduler, timesteps, step count and guidance it was
trained for; getting one of them wrong is the most common complaint (timesteps that do not match training,
CFG on a model distilled without it). `RECIPES` holds them, one `Recipe` per method, taken from the models'
own cards (the URL is on each recipe):

    args = fewstep.recipes.apply(pipe, "dmd2", steps=4)   # sets pipe.scheduler
    image = pipe("a photo of a cat", **args).images[0]    # num_inference_steps, timesteps, guidance_scale

`recipe_for("ByteDance/SDXL-Lightning", "sdxl_lightning_4step_lora.safetensors")` names the recipe of a
published file from its hub id or file name alone (nothing is downloaded); `describe()` lists the table.

Plain data only: scheduler classes are named, and looked up in fewstep when a recipe is applied, so importing
this module imports no framework and no scheduler.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["RECIPES", "NAMES", "Recipe", "Variant", "Weights", "Plan", "Pick", "apply", "plan", "recipe_for",
           "describe", "get"]

SD15, SDXL = "sd15", "sdxl"


@dataclass(frozen=True)
class Weights:
    """A published file (or a whole repository when `file` is None) a variant belongs to."""

    repo: str                      # hub id
    file: Optional[str]            # file name in the repository (its folder in `subfolder`); None: the repository
    kind: str                      # "lora", "unet" or "pipeline"
    family: str                    # SD15 or SDXL
    steps: Optional[int] = None    # the step count the file was distilled for; None: any the variant supports
    subfolder: Optional[str] = None


@dataclass(frozen=True)
class Variant:
    """One way of sampling a method's models: a scheduler configured one way, the step counts it supports."""

    name: str
    steps: Tuple[int, ...]                    # supported step counts
    default_steps: int
    scheduler: str                            # fewstep class name, e.g. "EulerDiscreteScheduler"
    overrides: Tuple[Tuple[str, Any], ...]    # from_config(pipe.scheduler.config, **overrides)
    guidance: float                           # guidance_scale
    eta: Optional[float] = None               # passed to the call (TCD gamma); None: the call's default
    timesteps: Tuple[Tuple[int, Tuple[int, ...]], ...] = ()  # explicit timesteps per step count
    weights: Tuple[Weights, ...] = ()
    note: str = ""

    def timesteps_for(self, steps: int) -> Optional[List[int]]:
        return next((list(t) for n, t in self.timesteps if n == steps), None)


@dataclass(frozen=True)
class Recipe:
    name: str
    method: str                   # the method's name, as its authors write it
    card: str                     # the model card the settings come from
    variants: Tuple[Variant, ...]

    @property
    def steps(self) -> Tuple[int, ...]:
        """Every step count some variant supports, ascending."""
        return tuple(sorted({n for v in self.variants for n in v.steps}))

    def variant(self, name: Optional[str] = None, steps: Optional[int] = None) -> Variant:
        """The named variant, else the first that supports `steps` (the first of all when steps is None);
        a ValueError listing the choices otherwise."""
        if name is not None:
            found = next((v for v in self.variants if v.name == name), None)
            if found is None:
                raise ValueError(f"{self.name} has the variants {', '.join(v.name for v in self.variants)}; got "
                                 f"{name!r}.")
            if steps is not None and steps not in found.steps:
                raise ValueError(f"{self.name}:{found.name} supports {_counts(found.steps)} steps; got {steps}.")
            return found
        if steps is None:
            return self.variants[0]
        found = next((v for v in self.variants if steps in v.steps), None)
        if found is None:
            raise ValueError(f"{self.name} supports {_counts(self.steps)} steps; got {steps}.")
        return found


def _counts(steps: Sequence[int]) -> str:
    """"1 or 4", "1, 2, 4 or 8", "1 to 8"."""
    steps = sorted(steps)
    if len(steps) > 3 and steps == list(range(steps[0], steps[-1] + 1)):
        return f"{steps[0]} to {steps[-1]}"
    return steps[0].__str__() if len(steps) == 1 else ", ".join(map(str, steps[:-1])) + f" or {steps[-1]}"


def _files(repo, pattern, kind, family, steps, subfolder=None) -> Tuple[Weights, ...]:
    return tuple(Weights(repo, pattern.format(n), kind, family, n, subfolder) for n in steps)


_TRAILING = (("timestep_spacing", "trailing"),)

# --- SDXL-Lightning: https://huggingface.co/ByteDance/SDXL-Lightning
# EulerDiscreteScheduler.from_config(..., timestep_spacing="trailing"), guidance_scale=0, the step count of the
# checkpoint; the 1-step UNet (sdxl_lightning_1step_unet_x0) predicts x0: prediction_type="sample".
_LIGHTNING = "ByteDance/SDXL-Lightning"
LIGHTNING = Recipe("lightning", "SDXL-Lightning", "https://huggingface.co/ByteDance/SDXL-Lightning", (
    Variant("default", (2, 4, 8), 4, "EulerDiscreteScheduler", _TRAILING, 0.0,
            weights=_files(_LIGHTNING, "sdxl_lightning_{}step_unet.safetensors", "unet", SDXL, (2, 4, 8))
            + _files(_LIGHTNING, "sdxl_lightning_{}step_lora.safetensors", "lora", SDXL, (2, 4, 8))),
    Variant("x0", (1,), 1, "EulerDiscreteScheduler", _TRAILING + (("prediction_type", "sample"),), 0.0,
            weights=(Weights(_LIGHTNING, "sdxl_lightning_1step_unet_x0.safetensors", "unet", SDXL, 1),),
            note="the 1-step UNet predicts x0"),
))

# --- Hyper-SD: https://huggingface.co/ByteDance/Hyper-SD
# N-step LoRAs: DDIMScheduler(timestep_spacing="trailing"), guidance 0, N steps. CFG LoRAs (negative prompts):
# the same sampler, guidance_scale 5 ("we recommend 5~8"). 1-step SDXL UNet: LCMScheduler, timesteps=[800].
# The 1-step LoRAs are the unified ones: recipe hyper-sd-unified.
_HYPER = "ByteDance/Hyper-SD"
HYPER_SD = Recipe("hyper-sd", "Hyper-SD", "https://huggingface.co/ByteDance/Hyper-SD", (
    Variant("lora", (2, 4, 8), 4, "DDIMScheduler", _TRAILING, 0.0,
            weights=_files(_HYPER, "Hyper-SD15-{}steps-lora.safetensors", "lora", SD15, (2, 4, 8))
            + _files(_HYPER, "Hyper-SDXL-{}steps-lora.safetensors", "lora", SDXL, (2, 4, 8))),
    Variant("cfg", (8, 12), 8, "DDIMScheduler", _TRAILING, 5.0,
            weights=_files(_HYPER, "Hyper-SD15-{}steps-CFG-lora.safetensors", "lora", SD15, (8, 12))
            + _files(_HYPER, "Hyper-SDXL-{}steps-CFG-lora.safetensors", "lora", SDXL, (8, 12)),
            note="CFG-preserving LoRAs: guidance 5 to 8, negative prompts work"),
    Variant("unet", (1,), 1, "LCMScheduler", (), 0.0, timesteps=((1, (800,)),),
            weights=(Weights(_HYPER, "Hyper-SDXL-1step-Unet.safetensors", "unet", SDXL, 1),),
            note="the 1-step SDXL UNet starts at timestep 800"),
))

# Unified 1-step LoRAs (1 to 8 steps): TCDScheduler, eta=1.0 ("lower eta results in more detail for multi-steps
# inference"), guidance 0. Same card.
HYPER_SD_UNIFIED = Recipe("hyper-sd-unified", "Hyper-SD unified LoRA", "https://huggingface.co/ByteDance/Hyper-SD", (
    Variant("lora", tuple(range(1, 9)), 1, "TCDScheduler", (), 0.0, eta=1.0,
            weights=(Weights(_HYPER, "Hyper-SD15-1step-lora.safetensors", "lora", SD15),
                     Weights(_HYPER, "Hyper-SDXL-1step-lora.safetensors", "lora", SDXL)),
            note="lower --eta with more steps for more detail"),
))

# --- DMD2: https://huggingface.co/tianweiy/DMD2
# LCMScheduler.from_config(...), guidance_scale=0, timesteps=[999, 749, 499, 249] ("LCMScheduler's default
# timesteps are different from the one we used for training"); the 1-step UNet: timesteps=[399].
_DMD2 = "tianweiy/DMD2"
DMD2 = Recipe("dmd2", "DMD2", "https://huggingface.co/tianweiy/DMD2", (
    Variant("default", (1, 4), 4, "LCMScheduler", (), 0.0, timesteps=((4, (999, 749, 499, 249)), (1, (399,))),
            weights=(Weights(_DMD2, "dmd2_sdxl_4step_unet_fp16.bin", "unet", SDXL, 4),
                     Weights(_DMD2, "dmd2_sdxl_4step_lora_fp16.safetensors", "lora", SDXL, 4),
                     Weights(_DMD2, "dmd2_sdxl_1step_unet_fp16.bin", "unet", SDXL, 1))),
))

# --- PCM: https://huggingface.co/wangfuyun/PCM_Weights (files in sd15/ and sdxl/); the authors' demo
# (https://github.com/G-U-N/Phased-Consistency-Model/blob/master/demo/app.py) samples smallcfg LoRAs at guidance 0
# and normalcfg ones at 7.5, the N-step LoRA at N steps, with a deterministic trailing DDIM-type sampler (TCD at
# eta 0 there, which is DDIM with set_alpha_to_one=False): DDIMScheduler(timestep_spacing="trailing",
# clip_sample=False, set_alpha_to_one=False). The "LCM-like" LoRAs are LCM LoRAs: recipe lcm.
_PCM = "wangfuyun/PCM_Weights"
_PCM_DDIM = _TRAILING + (("clip_sample", False), ("set_alpha_to_one", False))
PCM = Recipe("pcm", "PCM (Phased Consistency Model)", "https://huggingface.co/wangfuyun/PCM_Weights", (
    Variant("smallcfg", (2, 4, 8, 16), 4, "DDIMScheduler", _PCM_DDIM, 0.0,
            weights=_files(_PCM, "pcm_sd15_smallcfg_{}step_converted.safetensors", "lora", SD15, (2, 4, 8, 16), SD15)
            + _files(_PCM, "pcm_sdxl_smallcfg_{}step_converted.safetensors", "lora", SDXL, (2, 4, 8, 16), SDXL)),
    Variant("normalcfg", (4, 8, 16), 8, "DDIMScheduler", _PCM_DDIM, 7.5,
            weights=_files(_PCM, "pcm_sd15_normalcfg_{}step_converted.safetensors", "lora", SD15, (4, 8, 16), SD15)
            + _files(_PCM, "pcm_sdxl_normalcfg_{}step_converted.safetensors", "lora", SDXL, (4, 8, 16), SDXL),
            note="normal-CFG LoRAs: guidance on, negative prompts work"),
))

# --- SD-Turbo / SDXL-Turbo: https://huggingface.co/stabilityai/sdxl-turbo (and /sd-turbo); diffusers' SDXL Turbo
# page: guidance_scale=0.0, timestep_spacing='trailing', between 1 and 4 steps; the repositories' own scheduler
# is EulerAncestralDiscreteScheduler.
TURBO = Recipe("turbo", "SD-Turbo / SDXL-Turbo", "https://huggingface.co/stabilityai/sdxl-turbo", (
    Variant("default", (1, 2, 3, 4), 1, "EulerAncestralDiscreteScheduler", _TRAILING, 0.0,
            weights=(Weights("stabilityai/sd-turbo", None, "pipeline", SD15),
                     Weights("stabilityai/sdxl-turbo", None, "pipeline", SDXL))),
))

# --- Flash Diffusion: https://huggingface.co/jasperai/flash-sdxl (and /flash-sd)
# LCMScheduler.from_pretrained(base, subfolder="scheduler", timestep_spacing="trailing"), 4 steps, guidance 0.
FLASH = Recipe("flash", "Flash Diffusion (Flash-SD, Flash-SDXL)", "https://huggingface.co/jasperai/flash-sdxl", (
    Variant("default", (4,), 4, "LCMScheduler", _TRAILING, 0.0,
            weights=(Weights("jasperai/flash-sd", None, "lora", SD15),
                     Weights("jasperai/flash-sdxl", None, "lora", SDXL))),
))

# --- NitroFusion: https://huggingface.co/ChenDY/NitroFusion
# TimestepShiftLCMScheduler.from_pretrained(base, subfolder="scheduler", shifted_timestep=250) (NitroSD-Realism;
# 500 for NitroSD-Vibrant) with original_inference_steps = 4, guidance 0, 1 to 4 steps: LCM whose UNet sees
# the timesteps scaled by shifted_timestep / num_train_timesteps (fewstep.LCMScheduler's `shifted_timestep`).
_NITRO = "ChenDY/NitroFusion"
NITROFUSION = Recipe("nitrofusion", "NitroFusion", "https://huggingface.co/ChenDY/NitroFusion", tuple(
    Variant(name, (1, 2, 3, 4), 1, "LCMScheduler", (("shifted_timestep", shift), ("original_inference_steps", 4)),
            0.0, weights=(Weights(_NITRO, f"nitrosd-{name}_unet.safetensors", "unet", SDXL),))
    for name, shift in (("realism", 250), ("vibrant", 500))))

# --- LCM: https://huggingface.co/latent-consistency/lcm-lora-sdxl (and lcm-lora-sdv1-5, lcm-sdxl,
# LCM_Dreamshaper_v7). LCMScheduler; LoRAs with guidance off (1.0: at most 1 runs no CFG), the distilled UNets
# (guidance embedding) with guidance_scale=8.0; 4 steps on the cards. PCM's "LCM-like" LoRAs sample the same way.
_LCM_LORAS = (Weights("latent-consistency/lcm-lora-sdv1-5", None, "lora", SD15),
              Weights("latent-consistency/lcm-lora-sdxl", None, "lora", SDXL),
              Weights("latent-consistency/lcm-lora-ssd-1b", None, "lora", SDXL),
              Weights(_PCM, "pcm_sd15_lcmlike_lora_converted.safetensors", "lora", SD15, subfolder=SD15),
              Weights(_PCM, "pcm_sdxl_lcmlike_lora_converted.safetensors", "lora", SDXL, subfolder=SDXL))
LCM = Recipe("lcm", "LCM, LCM-LoRA", "https://huggingface.co/latent-consistency/lcm-lora-sdxl", (
    Variant("lora", tuple(range(1, 51)), 4, "LCMScheduler", (), 1.0, weights=_LCM_LORAS),
    Variant("model", tuple(range(1, 51)), 4, "LCMScheduler", (), 8.0,
            weights=(Weights("latent-consistency/lcm-sdxl", None, "unet", SDXL),
                     Weights("SimianLuo/LCM_Dreamshaper_v7", None, "pipeline", SD15)),
            note="LCM-distilled UNets take the guidance as an embedding"),
))

# --- TCD: https://huggingface.co/h1t/TCD-SDXL-LoRA (and TCD-SD15-LoRA): TCDScheduler, guidance 0, eta 0.3, 4 steps.
TCD = Recipe("tcd", "TCD", "https://huggingface.co/h1t/TCD-SDXL-LoRA", (
    Variant("lora", tuple(range(1, 51)), 4, "TCDScheduler", (), 0.0, eta=0.3,
            weights=(Weights("h1t/TCD-SD15-LoRA", None, "lora", SD15),
                     Weights("h1t/TCD-SDXL-LoRA", None, "lora", SDXL))),
))

RECIPES: Dict[str, Recipe] = {r.name: r for r in (LIGHTNING, HYPER_SD, HYPER_SD_UNIFIED, DMD2, PCM, TURBO, FLASH,
                                                  NITROFUSION, LCM, TCD)}
NAMES: Tuple[str, ...] = tuple(RECIPES)

# where the scheduler classes live, for those fewstep does not (yet) export at its top level
_MODULES = {"DDIMScheduler": "fewstep.core.schedulers.ddim", "EulerDiscreteScheduler": "fewstep.core.schedulers.euler",
            "EulerAncestralDiscreteScheduler": "fewstep.core.schedulers.euler_ancestral",
            "LCMScheduler": "fewstep.core.schedulers.lcm", "TCDScheduler": "fewstep.core.schedulers.tcd"}


def split(spec: str) -> Tuple[str, Optional[str]]:
    """"nitrofusion:vibrant" -> ("nitrofusion", "vibrant"); "dmd2" -> ("dmd2", None)."""
    if not isinstance(spec, str):
        raise ValueError(f"A recipe is named by a string (one of {', '.join(NAMES)}); got {spec!r}.")
    name, colon, variant = spec.partition(":")
    return name, (variant if colon else None)


def get(spec: str) -> Recipe:
    """The recipe named `spec` (NAME or NAME:VARIANT), or a ValueError listing the names."""
    name, _ = split(spec)
    if name not in RECIPES:
        raise ValueError(f"Unknown recipe {name!r}; use one of {', '.join(NAMES)} (`fewstep recipes` lists them).")
    return RECIPES[name]


@dataclass(frozen=True)
class Plan:
    """A recipe resolved for one step count: what `apply` sets and returns."""

    recipe: str
    variant: str
    steps: int
    scheduler: str
    overrides: Dict[str, Any]
    guidance: float
    eta: Optional[float]
    timesteps: Optional[List[int]]

    def call_arguments(self) -> Dict[str, Any]:
        """The pipeline call's arguments: num_inference_steps (and the fixed timesteps where the method has
        them), guidance_scale, and eta where the recipe sets one."""
        args: Dict[str, Any] = {"num_inference_steps": self.steps, "guidance_scale": self.guidance}
        if self.timesteps is not None:
            args["timesteps"] = list(self.timesteps)
        if self.eta is not None:
            args["eta"] = self.eta
        return args

    def summary(self) -> str:
        """One line for a run's log: "dmd2: LCMScheduler, 4 steps, timesteps [999, 749, 499, 249], guidance 0"."""
        parts = [f"{self.scheduler}" + (f"({', '.join(f'{k}={v!r}' for k, v in self.overrides.items())})"
                                        if self.overrides else ""), f"{self.steps} step{'s' if self.steps > 1 else ''}"]
        if self.timesteps is not None:
            parts.append(f"timesteps {self.timesteps}")
        parts.append(f"guidance {self.guidance:g}")
        if self.eta is not None:
            parts.append(f"eta {self.eta:g}")
        return f"{self.recipe}{'' if self.variant == RECIPES[self.recipe].variants[0].name else ':' + self.variant}: " \
               + ", ".join(parts)


def plan(spec: str, steps: Optional[int] = None, variant: Optional[str] = None) -> Plan:
    """The settings of recipe `spec` (NAME or NAME:VARIANT) at `steps` (default: the variant's default).
    A step count the method does not support is a ValueError listing the ones it does."""
    recipe = get(spec)
    variant = variant if variant is not None else split(spec)[1]
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)):
        raise ValueError(f"steps must be an integer, got {steps!r}.")
    chosen = recipe.variant(variant, steps)
    steps = chosen.default_steps if steps is None else steps
    return Plan(recipe.name, chosen.name, steps, chosen.scheduler, dict(chosen.overrides), chosen.guidance, chosen.eta,
                chosen.timesteps_for(steps))


def scheduler_class(name: str) -> type:
    """fewstep's scheduler class `name`, looked up when a recipe is applied (not at import)."""
    import importlib

    import fewstep

    cls = getattr(fewstep, name, None)
    if cls is None and name in _MODULES:
        try:
            cls = getattr(importlib.import_module(_MODULES[name]), name, None)
        except ImportError:
            cls = None
    if cls is None:
        raise ValueError(f"This recipe needs fewstep.{name}, which this version of fewstep does not have; update "
                         f"fewstep or choose another recipe.")
    return cls


def apply(pipe, name: str, steps: Optional[int] = None, variant: Optional[str] = None) -> Dict[str, Any]:
    """Set `pipe.scheduler` to recipe `name`'s scheduler and return the call arguments.

    Args:
        pipe: a fewstep pipeline (torch or MindSpore), or a diffusers / mindone pipeline: anything with a
            `scheduler` whose `config` a fewstep scheduler's `from_config` takes.
        name (`str`): one of `NAMES`, optionally with a variant: "nitrofusion:vibrant", "hyper-sd:cfg".
        steps (`int`, *optional*): the step count (default: the variant's default).
        variant (`str`, *optional*): the variant, instead of writing it in `name`.

    Returns:
        `dict`: num_inference_steps, guidance_scale, and timesteps / eta where the method fixes them; pass it
        to the pipeline's call (`pipe(prompt, **args)`).

    Raises ValueError for an unknown name or variant or a step count the method does not support (DMD2 with 3
    steps: "dmd2 supports 1 or 4 steps; got 3"); the pipeline is not changed then.
    """
    chosen = plan(name, steps, variant)
    pipe.scheduler = build_scheduler(chosen, pipe.scheduler)  # last: a refusal above leaves the pipeline as it was
    return chosen.call_arguments()


_BASE = "_fewstep_recipe_base_config"


def build_scheduler(chosen: Plan, current):
    """The plan's scheduler, configured from the pipeline's own scheduler config. A scheduler a recipe built
    remembers the config it started from, so a second recipe starts there too: lightning:x0's
    prediction_type="sample" or nitrofusion's shift must not carry over into the next recipe."""
    import inspect

    cls = scheduler_class(chosen.scheduler)
    accepted = inspect.signature(cls.__init__).parameters
    missing = sorted(set(chosen.overrides) - set(accepted))
    if missing:  # from_config ignores unknown keys; a recipe's setting must never be dropped silently
        raise ValueError(f"Recipe {chosen.recipe} needs fewstep.{chosen.scheduler} with {', '.join(missing)}, which "
                         f"this version of fewstep does not have; update fewstep or choose another recipe.")
    base = getattr(current, _BASE, None) or dict(getattr(current, "config", current))  # a scheduler or a config
    scheduler = cls.from_config(base, **chosen.overrides)
    object.__setattr__(scheduler, _BASE, base)
    return scheduler


# --- picking a recipe from a hub id or a file name -------------------------------------------------------------

@dataclass(frozen=True)
class Pick:
    """The recipe a hub id or file belongs to: `spec` for apply / --recipe, and the step count it was made for."""

    recipe: str
    variant: str
    steps: Optional[int]
    weights: Weights

    @property
    def spec(self) -> str:
        default = RECIPES[self.recipe].variants[0].name
        return self.recipe if self.variant == default else f"{self.recipe}:{self.variant}"


_CACHE_FOLDER = re.compile(r"models--([^/\\]+?)--([^/\\]+)")


def _all_weights():
    for recipe in RECIPES.values():
        for variant in recipe.variants:
            for weights in variant.weights:
                yield recipe, variant, weights


def _hub_id(source: str) -> Optional[str]:
    """The hub id `source` names: "owner/name" itself, or the one in a huggingface_hub cache path
    (…/models--owner--name/snapshots/…)."""
    found = _CACHE_FOLDER.search(source)
    if found:
        return f"{found.group(1)}/{found.group(2)}"
    parts = source.strip("/").split("/")
    if len(parts) == 2 and not os.path.exists(source) and all(parts):
        return source
    return None


def recipe_for(name_or_path_or_hub_id, filename: Optional[str] = None) -> Optional[Pick]:
    """The recipe of a published model, from its names alone (no download, no file read), or None.

    Args:
        name_or_path_or_hub_id: a hub id ("ByteDance/SDXL-Lightning"), a file name or path
            (".../sdxl_lightning_4step_lora.safetensors"), or a folder (a huggingface_hub cache folder names
            its repository).
        filename (`str`, *optional*): the file inside the repository or folder (`weight_name`).

    A known file name decides alone (case-insensitively); without one, a repository whose every file belongs
    to one recipe (stabilityai/sdxl-turbo, latent-consistency/lcm-lora-sdxl, ByteDance/SDXL-Lightning) does.
    A repository holding several methods' files (ByteDance/Hyper-SD) needs the file name.
    """
    source = os.fspath(name_or_path_or_hub_id) if name_or_path_or_hub_id is not None else ""
    names = [os.path.basename(filename)] if filename else []
    if source and os.path.splitext(source)[1].lower() in (".safetensors", ".bin", ".ckpt", ".pt", ".pth"):
        names.append(os.path.basename(source))
    for name in names:
        for recipe, variant, weights in _all_weights():
            if weights.file and weights.file.lower() == name.lower():
                return Pick(recipe.name, variant.name, weights.steps, weights)
    hub_id = _hub_id(source) if source else None
    if hub_id is None:
        return None
    matches = [(r, v, w) for r, v, w in _all_weights() if w.repo.lower() == hub_id.lower()]
    whole = [(r, v, w) for r, v, w in matches if w.file is None]
    if whole:
        recipe, variant, weights = whole[0]
        return Pick(recipe.name, variant.name, None, weights)
    # a repository of named files decides only when no other file of it is asked for
    if matches and not filename and len({r.name for r, _, _ in matches}) == 1:
        recipe, variant, weights = matches[0]
        return Pick(recipe.name, recipe.variants[0].name, None, weights)
    return None


# --- listing ------------------------------------------------------------------------------------------------------

def describe() -> List[Dict[str, Any]]:
    """The table as JSON-ready dicts: one per recipe, its variants with their settings and files."""
    out = []
    for recipe in RECIPES.values():
        variants = []
        for v in recipe.variants:
            variants.append({
                "name": v.name, "steps": list(v.steps), "default_steps": v.default_steps, "scheduler": v.scheduler,
                "config": dict(v.overrides), "guidance_scale": v.guidance, "eta": v.eta,
                "timesteps": {str(n): list(t) for n, t in v.timesteps}, "note": v.note,
                "weights": [{"repo": w.repo, "file": w.file, "subfolder": w.subfolder, "kind": w.kind,
                             "family": w.family, "steps": w.steps} for w in v.weights]})
        out.append({"name": recipe.name, "method": recipe.method, "card": recipe.card, "steps": list(recipe.steps),
                    "variants": variants})
    return out
