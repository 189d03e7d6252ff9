"""fewstep.recipes: the table (every method, the settings its card gives), `apply` per recipe and step count,
refusals that leave the pipeline as it was, and the recipe picked from a hub id or file name (offline: the name
alone decides). NumPy only: the pipeline here is a stand-in holding a fewstep scheduler."""

from __future__ import annotations

import subprocess
import sys

import pytest

import fewstep
from fewstep import recipes

# Stable Diffusion's own scheduler config (PNDM), as a pipeline folder holds it
SD_CONFIG = {"_class_name": "PNDMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "trained_betas": None, "skip_prk_steps": True, "set_alpha_to_one": False,
             "steps_offset": 1, "clip_sample": False, "prediction_type": "epsilon", "timestep_spacing": "leading"}


class Pipe:
    """What `apply` touches of a pipeline: its scheduler."""

    def __init__(self):
        self.scheduler = fewstep.TCDScheduler.from_config(SD_CONFIG)


def _available(name: str) -> bool:
    try:
        recipes.scheduler_class(name)
        return True
    except ValueError:
        return False


def test_the_table_has_one_recipe_per_method_with_the_cards_settings():
    assert recipes.NAMES == ("lightning", "hyper-sd", "hyper-sd-unified", "dmd2", "pcm", "turbo", "flash",
                             "nitrofusion", "lcm", "tcd")
    for recipe in recipes.RECIPES.values():
        assert recipe.card.startswith("https://huggingface.co/"), recipe.name
        assert recipe.variants and len({v.name for v in recipe.variants}) == len(recipe.variants)
        for v in recipe.variants:
            assert v.steps and v.default_steps in v.steps, (recipe.name, v.name)
            assert v.scheduler in ("DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                                   "LCMScheduler", "TCDScheduler"), v.scheduler
            assert v.weights and all(w.repo.count("/") == 1 and w.kind in ("lora", "unet", "pipeline")
                                     and w.family in ("sd15", "sdxl") for w in v.weights), (recipe.name, v.name)
            for n, timesteps in v.timesteps:
                assert n in v.steps and len(timesteps) == n and list(timesteps) == sorted(timesteps, reverse=True)
    # the settings the cards give (a typo here is a wrong picture for every user of that model)
    p = recipes.plan
    assert p("lightning", 4).overrides == {"timestep_spacing": "trailing"} and p("lightning", 4).guidance == 0.0
    assert p("lightning", 1).overrides == {"timestep_spacing": "trailing", "prediction_type": "sample"}
    assert recipes.get("lightning").steps == (1, 2, 4, 8)
    assert (p("hyper-sd", 2).scheduler, p("hyper-sd", 2).overrides) == ("DDIMScheduler", {"timestep_spacing": "trailing"})
    assert p("hyper-sd", 12).guidance == 5.0 and p("hyper-sd", 8).guidance == 0.0 and p("hyper-sd:cfg", 8).guidance == 5.0
    assert (p("hyper-sd", 1).scheduler, p("hyper-sd", 1).timesteps) == ("LCMScheduler", [800])
    assert (p("hyper-sd-unified", 1).scheduler, p("hyper-sd-unified", 1).eta) == ("TCDScheduler", 1.0)
    assert p("dmd2", 4).timesteps == [999, 749, 499, 249] and p("dmd2", 1).timesteps == [399]
    assert p("dmd2").steps == 4 and p("dmd2").scheduler == "LCMScheduler" and p("dmd2").guidance == 0.0
    assert p("pcm", 2).overrides == {"timestep_spacing": "trailing", "clip_sample": False, "set_alpha_to_one": False}
    assert p("pcm:normalcfg", 8).guidance == 7.5 and p("pcm", 4).guidance == 0.0
    assert (p("turbo").scheduler, p("turbo").overrides, p("turbo").steps) == (
        "EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}, 1)
    assert recipes.get("turbo").steps == (1, 2, 3, 4)
    assert (p("flash").scheduler, p("flash").overrides, p("flash").steps, recipes.get("flash").steps) == (
        "LCMScheduler", {"timestep_spacing": "trailing"}, 4, (4,))
    assert p("nitrofusion", 2).overrides == {"shifted_timestep": 250, "original_inference_steps": 4}
    assert p("nitrofusion:vibrant", 2).overrides == {"shifted_timestep": 500, "original_inference_steps": 4}
    assert (p("tcd").scheduler, p("tcd").eta, p("tcd").guidance, p("tcd").steps) == ("TCDScheduler", 0.3, 0.0, 4)
    assert (p("lcm").scheduler, p("lcm:model").guidance) == ("LCMScheduler", 8.0)


def _cases():
    for recipe in recipes.RECIPES.values():
        for v in recipe.variants:
            for n in v.steps[:8]:  # lcm / tcd support 1 to 50: their first eight suffice
                yield pytest.param(f"{recipe.name}:{v.name}", n, id=f"{recipe.name}:{v.name}-{n}")


@pytest.mark.parametrize("spec,steps", list(_cases()))
def test_apply_sets_the_scheduler_and_returns_the_call_arguments(spec, steps):
    name, variant = recipes.split(spec)
    v = recipes.get(name).variant(variant)
    pipe = Pipe()
    before = pipe.scheduler
    if not _available(v.scheduler):  # a sampler this fewstep lacks: refused, and nothing changes
        with pytest.raises(ValueError, match=f"needs fewstep.{v.scheduler}"):
            recipes.apply(pipe, spec, steps=steps)
        assert pipe.scheduler is before
        return
    args = recipes.apply(pipe, spec, steps=steps)
    assert type(pipe.scheduler).__name__ == v.scheduler and pipe.scheduler is not before
    for key, value in v.overrides:
        assert pipe.scheduler.config[key] == value, key
    for key in ("beta_schedule", "beta_start", "beta_end"):  # the rest comes from the pipeline's config
        assert pipe.scheduler.config[key] == SD_CONFIG[key]
    want = {"num_inference_steps": steps, "guidance_scale": v.guidance}
    if v.timesteps_for(steps) is not None:
        want["timesteps"] = v.timesteps_for(steps)
    if v.eta is not None:
        want["eta"] = v.eta
    assert args == want
    # the scheduler takes the arguments as the pipeline passes them
    if "timesteps" in args:
        pipe.scheduler.set_timesteps(timesteps=args["timesteps"])
        assert list(pipe.scheduler.timesteps) == args["timesteps"]
    else:
        pipe.scheduler.set_timesteps(args["num_inference_steps"])
        assert len(pipe.scheduler.timesteps) == steps


@pytest.mark.parametrize("spec,steps,message", [
    ("dmd2", 3, "dmd2 supports 1 or 4 steps; got 3."),
    ("dmd2", 0, "dmd2 supports 1 or 4 steps; got 0."),
    ("lightning", 3, "lightning supports 1, 2, 4 or 8 steps; got 3."),
    ("hyper-sd", 6, "hyper-sd supports 1, 2, 4, 8 or 12 steps; got 6."),
    ("hyper-sd:cfg", 4, "hyper-sd:cfg supports 8 or 12 steps; got 4."),
    ("hyper-sd-unified", 9, "hyper-sd-unified supports 1 to 8 steps; got 9."),
    ("pcm", 3, "pcm supports 2, 4, 8 or 16 steps; got 3."),
    ("turbo", 5, "turbo supports 1 to 4 steps; got 5."),
    ("flash", 2, "flash supports 4 steps; got 2."),
    ("nitrofusion", 8, "nitrofusion supports 1 to 4 steps; got 8."),
    ("lcm", 51, "lcm supports 1 to 50 steps; got 51."),
    ("tcd", 60, "tcd supports 1 to 50 steps; got 60."),
    ("dmd2", 2.0, "steps must be an integer, got 2.0."),
    ("sdxl-lightning", 4, "Unknown recipe 'sdxl-lightning'; use one of lightning, hyper-sd, hyper-sd-unified, dmd2, "
                          "pcm, turbo, flash, nitrofusion, lcm, tcd"),
    ("nitrofusion:vivid", 1, "nitrofusion has the variants realism, vibrant; got 'vivid'."),
])
def test_a_refused_recipe_names_the_choices_and_changes_nothing(spec, steps, message):
    pipe = Pipe()
    before, config = pipe.scheduler, dict(pipe.scheduler.config)
    with pytest.raises(ValueError) as err:
        recipes.apply(pipe, spec, steps=steps)
    assert str(err.value).splitlines()[0].startswith(message)
    assert pipe.scheduler is before and dict(pipe.scheduler.config) == config


def test_a_second_recipe_starts_from_the_pipelines_config_not_the_first_recipes():
    pipe = Pipe()
    recipes.apply(pipe, "nitrofusion:vibrant", steps=2)
    assert pipe.scheduler.config["shifted_timestep"] == 500
    recipes.apply(pipe, "dmd2", steps=4)
    assert pipe.scheduler.config.get("shifted_timestep") is None
    assert pipe.scheduler.config["original_inference_steps"] == 50
    assert pipe.scheduler.config["set_alpha_to_one"] is False  # the pipeline's, kept


def _published_files():
    for recipe in recipes.RECIPES.values():
        for v in recipe.variants:
            for w in v.weights:
                if w.file:
                    yield pytest.param(recipe.name, v.name, w, id=w.file)


@pytest.mark.parametrize("recipe,variant,weights", list(_published_files()))
def test_every_published_file_name_picks_its_recipe(recipe, variant, weights):
    for pick in (recipes.recipe_for(weights.repo, weights.file),                      # hub id + weight name
                 recipes.recipe_for(f"/downloads/loras/{weights.file}"),              # a local path
                 recipes.recipe_for(f"/cache/models--{weights.repo.replace('/', '--')}/snapshots/0a1b", weights.file),
                 recipes.recipe_for("my-folder", weights.file.upper())):              # case does not matter
        assert pick is not None and (pick.recipe, pick.variant, pick.steps) == (recipe, variant, weights.steps)
    spec = recipes.recipe_for(weights.repo, weights.file).spec
    assert recipes.plan(spec, weights.steps).recipe == recipe  # the pick's spec and steps are a valid plan


@pytest.mark.parametrize("source,filename,spec,steps", [
    ("ByteDance/SDXL-Lightning", "sdxl_lightning_4step_lora.safetensors", "lightning", 4),
    ("ByteDance/SDXL-Lightning", "sdxl_lightning_1step_unet_x0.safetensors", "lightning:x0", 1),
    ("ByteDance/SDXL-Lightning", None, "lightning", None),
    ("ByteDance/Hyper-SD", "Hyper-SDXL-1step-Unet.safetensors", "hyper-sd:unet", 1),
    ("ByteDance/Hyper-SD", "Hyper-SD15-1step-lora.safetensors", "hyper-sd-unified", None),
    ("ByteDance/Hyper-SD", "Hyper-SDXL-12steps-CFG-lora.safetensors", "hyper-sd:cfg", 12),
    ("tianweiy/DMD2", "dmd2_sdxl_1step_unet_fp16.bin", "dmd2", 1),
    ("wangfuyun/PCM_Weights", "pcm_sdxl_normalcfg_8step_converted.safetensors", "pcm:normalcfg", 8),
    ("wangfuyun/PCM_Weights", "pcm_sd15_lcmlike_lora_converted.safetensors", "lcm", None),
    ("stabilityai/sd-turbo", None, "turbo", None),
    ("stabilityai/sdxl-turbo", None, "turbo", None),
    ("jasperai/flash-sdxl", "pytorch_lora_weights.safetensors", "flash", None),
    ("jasperai/flash-sd", None, "flash", None),
    ("ChenDY/NitroFusion", "nitrosd-vibrant_unet.safetensors", "nitrofusion:vibrant", None),
    ("latent-consistency/lcm-lora-sdv1-5", None, "lcm", None),
    ("latent-consistency/lcm-lora-sdxl", "pytorch_lora_weights.safetensors", "lcm", None),
    ("latent-consistency/lcm-sdxl", None, "lcm:model", None),
    ("SimianLuo/LCM_Dreamshaper_v7", None, "lcm:model", None),
    ("h1t/TCD-SD15-LoRA", None, "tcd", None),
    ("h1t/TCD-SDXL-LoRA", None, "tcd", None),
    ("/root/.cache/huggingface/hub/models--stabilityai--sdxl-turbo/snapshots/71153311", None, "turbo", None),
])
def test_hub_ids_and_file_names_pick_the_recipe(source, filename, spec, steps):
    pick = recipes.recipe_for(source, filename)
    assert pick is not None and (pick.spec, pick.steps) == (spec, steps)


@pytest.mark.parametrize("source,filename", [
    ("ByteDance/Hyper-SD", None),                                   # several methods' files: the name must say
    ("ByteDance/SDXL-Lightning", "some_other_file.safetensors"),    # a file no recipe knows
    ("stabilityai/stable-diffusion-xl-base-1.0", None),
    ("/data/loras/my_style.safetensors", None),
    ("./sdxl_lightning_4step_lora", None),                          # not a file name of the table
])
def test_unknown_names_pick_no_recipe(source, filename):
    assert recipes.recipe_for(source, filename) is None


def test_importing_the_recipes_imports_no_framework():
    code = "import sys, fewstep.recipes as r; r.describe(); r.recipe_for('tianweiy/DMD2'); " \
           "print(sorted(m for m in ('torch', 'mindspore', 'diffusers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_describe_lists_every_recipe_as_json_ready_data():
    import json

    table = json.loads(json.dumps(recipes.describe()))
    assert [r["name"] for r in table] == list(recipes.NAMES)
    dmd2 = next(r for r in table if r["name"] == "dmd2")
    assert dmd2["steps"] == [1, 4] and dmd2["variants"][0]["timesteps"] == {"4": [999, 749, 499, 249], "1": [399]}
    assert {"repo": "tianweiy/DMD2", "file": "dmd2_sdxl_4step_lora_fp16.safetensors", "subfolder": None, "kind": "lora",
            "family": "sdxl", "steps": 4} in dmd2["variants"][0]["weights"]
