"""SDXL's micro-conditioning (diffusers' `add_time_ids`), as each diffusers class builds it.

The UNet's added embedding reads six numbers per image, original size + crop top-left + target size, or, for
a UNet trained with an aesthetic score (the SDXL refiner, some inpainting models; `requires_aesthetics_score`
in model_index.json), five: original size + crop top-left + the score. diffusers' classes differ in which
arguments they take and how the negative (unconditional) row is made; a `Rule` names one class's way:

- `SIZES` (text-to-image, its ControlNet and T2I-Adapter classes): `negative_original_size`,
  `negative_crops_coords_top_left`, `negative_target_size`; the negative row is built from them only when
  both sizes are given, else it is the positive row.
- `AESTHETIC` (img2img, inpainting, ControlNet img2img): the same negatives, defaulting to the positive
  sizes, plus `aesthetic_score` / `negative_aesthetic_score`. Without the score the negative row keeps the
  positive crop (diffusers' own quirk, kept so the image is diffusers').
- `AESTHETIC_SAME_SIZES` (ControlNet inpainting): the scores only; the negative row has the positive sizes.

The layout is checked against the UNet before any work (`check`), with diffusers' messages where the one
fix is to switch `requires_aesthetics_score` (each raised where its fix applies; diffusers swaps them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Tuple

import numpy as np

from fewstep.core import checks
from fewstep.pipelines.docstrings import Arg

#: diffusers' defaults for the refiner's score conditioning
AESTHETIC_DEFAULTS = {"aesthetic_score": 6.0, "negative_aesthetic_score": 2.5}
_NEGATIVE_SIZES = {"negative_original_size": None, "negative_crops_coords_top_left": (0, 0),
                   "negative_target_size": None}

_DOCS = {
    "negative_original_size": Arg("`Tuple[int]`", "SDXL only: the original size of the negative conditioning "
                                  "(diffusers' micro-conditioning of the unconditional half); None: as for the prompt."),
    "negative_crops_coords_top_left": Arg("`Tuple[int]`", "SDXL only: the crop coordinates of the negative "
                                          "conditioning."),
    "negative_target_size": Arg("`Tuple[int]`", "SDXL only: the target size of the negative conditioning; None: "
                                "as for the prompt."),
    "aesthetic_score": Arg("`float`", "SDXL with `requires_aesthetics_score` (the refiner): the aesthetic score "
                           "the image is conditioned on (the LAION score; higher looks better). A pipeline whose "
                           "UNet takes no score refuses any other value."),
    "negative_aesthetic_score": Arg("`float`", "SDXL with `requires_aesthetics_score`: the aesthetic score of the "
                                    "negative conditioning; lower steers away from poor images."),
}

REQUIRES_AESTHETICS = "requires_aesthetics_score"


@dataclass(frozen=True)
class Rule:
    """One diffusers class's way of building the time ids (see the module docstring)."""

    aesthetic: bool        # takes the scores and reads `requires_aesthetics_score`
    negative_sizes: bool   # takes negative_original_size / _crops_coords_top_left / _target_size
    negative_default: str  # "positive": missing negative sizes are the positive ones; "both": built only if both

    @property
    def arguments(self) -> Dict[str, Any]:
        return {**(_NEGATIVE_SIZES if self.negative_sizes else {}), **(AESTHETIC_DEFAULTS if self.aesthetic else {})}

    @property
    def argument_docs(self) -> Dict[str, Arg]:
        return {name: _DOCS[name] for name in self.arguments}

    @property
    def attributes(self) -> Dict[str, Any]:
        return {REQUIRES_AESTHETICS: False} if self.aesthetic else {}


SIZES = Rule(aesthetic=False, negative_sizes=True, negative_default="both")
AESTHETIC = Rule(aesthetic=True, negative_sizes=True, negative_default="positive")
AESTHETIC_SAME_SIZES = Rule(aesthetic=True, negative_sizes=False, negative_default="positive")


def uses_score(rule: Rule, pipe) -> bool:
    return rule.aesthetic and bool(getattr(pipe, REQUIRES_AESTHETICS, False))


def check(rule: Rule, pipe, args: Mapping[str, Any], unet_config: Mapping[str, Any], projection_dim: int) -> None:
    """Refuse, before any work, a time-id layout the UNet does not take and scores given to a UNet without them."""
    if rule.aesthetic:
        for name, default in AESTHETIC_DEFAULTS.items():
            checks.number(args[name], name, f"diffusers' default is {default}.")
    score = uses_score(rule, pipe)
    count = 5 if score else 6
    dim = int(unet_config["addition_time_embed_dim"])
    passed = dim * count + projection_dim
    expected = unet_config.get("projection_class_embeddings_input_dim")
    if expected is not None and expected != passed:
        # diffusers' two messages, each where its fix is the right one (diffusers raises the "enable" one when
        # the score is already on and the UNet wants the target size, and the reverse)
        if rule.aesthetic and not score and passed - expected == dim:
            raise ValueError(
                f"Model expects an added time embedding vector of length {expected}, but a vector of {passed} was "
                f"created. Please make sure to enable `requires_aesthetics_score` with "
                f"`pipe.register_to_config(requires_aesthetics_score=True)` to make sure `aesthetic_score` "
                f"{args['aesthetic_score']} and `negative_aesthetic_score` {args['negative_aesthetic_score']} is "
                f"correctly used by the model.")
        if rule.aesthetic and score and expected - passed == dim:
            raise ValueError(
                f"Model expects an added time embedding vector of length {expected}, but a vector of {passed} was "
                f"created. Please make sure to disable `requires_aesthetics_score` with "
                f"`pipe.register_to_config(requires_aesthetics_score=False)` to make sure `target_size` "
                f"{args['target_size']} is correctly used by the model.")
        hint = (" (an aesthetic-score UNet, the SDXL refiner's, runs in StableDiffusionXLImg2ImgPipeline or "
                "StableDiffusionXLInpaintPipeline with requires_aesthetics_score=True)") \
            if not rule.aesthetic and passed - expected == dim else ""
        raise ValueError(
            f"The UNet expects an added time embedding of {expected} values but {passed} were built "
            f"(addition_time_embed_dim x {count} + text encoder projection {projection_dim}): the "
            f"UNet and text_encoder_2 configs do not belong together{hint}.")
    if rule.aesthetic and not score:
        given = [f"{n}={args[n]}" for n, default in AESTHETIC_DEFAULTS.items() if float(args[n]) != default]
        if given:
            raise ValueError(
                f"{' and '.join(given)} given, but this pipeline's UNet is not conditioned on an aesthetic score "
                f"(requires_aesthetics_score is False): leave it out, or for an SDXL refiner set "
                f"pipe.register_to_config(requires_aesthetics_score=True).")


def build(rule: Rule, pipe, args: Mapping[str, Any], size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """(positive, negative) time ids, each of shape (1, 5 or 6), float32, as the rule's diffusers class makes them;
    `size` is the output (height, width), the default of the sizes not given."""
    original = tuple(args["original_size"] or size)
    crops = tuple(args["crops_coords_top_left"])
    target = tuple(args["target_size"] or size)
    negative_original, negative_target = (args.get("negative_original_size"), args.get("negative_target_size"))
    negative_crops = tuple(args.get("negative_crops_coords_top_left", crops))
    if uses_score(rule, pipe):
        positive = original + crops + (float(args["aesthetic_score"]),)
        negative = (tuple(negative_original or original) + (negative_crops if rule.negative_sizes else crops)
                    + (float(args["negative_aesthetic_score"]),))
    elif rule.negative_default == "positive":
        positive = original + crops + target
        # diffusers' img2img / inpainting keep the positive crop here, not negative_crops_coords_top_left
        negative = tuple(negative_original or original) + crops + tuple(negative_target or target)
    else:
        positive = original + crops + target
        negative = (tuple(negative_original) + negative_crops + tuple(negative_target)
                    if negative_original is not None and negative_target is not None else positive)
    return np.asarray([positive], np.float32), np.asarray([negative], np.float32)
