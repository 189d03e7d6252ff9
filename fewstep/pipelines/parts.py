"""The one protocol of the denoising loop's parts, and the per-call state they share.

A pipeline class is a list of parts (`pipelines/table.py` says which): a guidance rule, the LoRA scale,
a model family (SD / SDXL: the prompt encoding), a task (text-to-image, img2img, inpainting,
video-to-video: the timesteps and the first latents), a layout (image / video: the latents' shape and
the decoding) and its adapters (ControlNet, T2I-Adapter, IP-Adapter, motion modules). Every part is a
small stateless object that declares

- `components`: the pipeline components it needs, checked when the pipeline is built
  (`check_components`; `attach` may then adapt them, e.g. the motion UNet);
- `arguments`: the call arguments it owns beyond the loop's signature, with their defaults, and
  `argument_docs`, what each means in diffusers' words (the generated `__call__` docstring lists
  them); `rewords`: how it words the loop's own arguments (what `image` or `strength` mean to a task);
  `uses`: the loop's optional inputs (`image`, `mask_image`) it reads, so one given to a class none of
  whose parts reads it is refused;
- `mixins`: the user-facing methods it brings to the pipeline class (`load_lora_weights`,
  `load_ip_adapter`); `attributes`: pipeline settings with their defaults (SDXL's
  `force_zeros_for_empty_prompt`);

and implements any of the hooks below (each has a do-nothing default). They exchange data through
one `CallState` per call, never through attributes of the pipeline:

- `check_arguments(pipe, args, call)`: refuse bad arguments before any work, and settle what the call
  will do (the guidance rule sets `call.do_cfg` here);
- `default_size(pipe, args)`: the output (height, width) when the call gives none;
- `prepare(pipe, call, args)`: once-per-call work before the loop, in part order (the family fills
  `call.cond`, the task `call.timesteps` and `call.latents`, the layout `call.unet_hidden`); the
  returned value is the part's own state for the steps;
- `unet_inputs(pipe, call, state, step)`: what it adds to each UNet call (names in `UNET_INPUTS`;
  contributions of several parts are summed or merged);
- `model_input(pipe, call, state, step)`: the UNet's sample after the adapters have seen it
  (inpainting's extra mask channels);
- `combine(pipe, call, state, step, noise_pred)`: the UNet's prediction as the scheduler takes it
  (the guidance rule combines the two halves of classifier-free guidance here, and rescales them);
- `after_step(pipe, call, state, step, latents)`: the latents after the scheduler's step
  (inpainting's blend);
- `finish(pipe, call, state, images)`: the output images once decoded (inpainting's `padding_mask_crop`
  pastes the repainted box back into the original picture).

The loop (`base.py`) only runs these hooks in order; it holds no task, family or adapter code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Mapping, Optional, Sequence, Tuple

from fewstep.pipelines.docstrings import Arg

# The UNet keyword arguments parts may add, and how two contributions to one of them combine.
# Residual lists and tensors add up elementwise in part order (as diffusers' MultiControlNet sums its
# nets' residuals); dict-valued inputs merge key by key; a single input may come from one part only.
_SUMMED_LISTS = ("down_block_additional_residuals", "down_intrablock_additional_residuals")
_SUMMED_TENSORS = ("mid_block_additional_residual",)
_MERGED_DICTS = ("added_cond", "cross_attention_kwargs")
_SINGLE = ("timestep_cond",)
UNET_INPUTS = _SUMMED_LISTS + _SUMMED_TENSORS + _MERGED_DICTS + _SINGLE


@dataclass
class Conditioning:
    """The prompt as the UNet takes it, from the model family's part."""

    hidden: Any            # encoder_hidden_states for the whole UNet batch (negatives first under CFG)
    added: Optional[dict]  # SDXL's text_embeds and time_ids, else None
    batch: int             # images made (prompts x num_images_per_prompt)
    dtype: str             # dtype of the latents and everything fed to the UNet


@dataclass
class CallState:
    """Everything one pipeline call knows, written by the loop and its parts in order."""

    ops: Any                        # the pipeline's TensorOps
    args: Dict[str, Any]            # every call argument by name: the loop's and the parts' (given or default)
    claimed: FrozenSet[str]         # the loop's optional inputs some part reads (`Part.uses`, `arguments`)
    prompt_batch: Optional[int]     # prompts given (None: not known before encoding)
    num_images_per_prompt: int
    guidance_scale: float
    strength: float
    eta: float
    height: int = 0
    width: int = 0
    batch: int = 0                  # images made: prompts x num_images_per_prompt
    generator: Any = None           # what `randn_like` draws from (one, or one per image)
    seeds: Optional[list] = None    # the seeds reported in the output
    do_cfg: bool = False            # classifier-free guidance: the UNet batch is [negatives, positives]
    cond: Optional[Conditioning] = None   # the family's encoded prompt
    timesteps: Sequence[int] = ()   # the schedule the loop runs (after strength), as Python ints
    latents: Any = None             # the first latents, from the task
    unet_hidden: Any = None         # encoder_hidden_states as the UNet takes them (per frame for video)
    decode_kwargs: Dict[str, Any] = field(default_factory=dict)  # the family's VAE decode options


@dataclass
class StepState:
    """What a part may read at one step of the loop."""

    index: int        # step number, 0-based
    timestep: int
    model_input: Any  # the UNet's sample for this step (CFG-doubled; before the task's extra channels)
    latents: Any      # the latents before the step (not doubled)


@dataclass
class UNetInputs:
    """Extra UNet keyword arguments gathered from the parts for one call."""

    values: Dict[str, Any] = field(default_factory=dict)

    def merge(self, extra: Optional[Mapping[str, Any]]) -> None:
        for key, value in (extra or {}).items():
            if value is None:
                continue
            if key not in UNET_INPUTS:
                raise ValueError(f"A pipeline part returned the UNet input {key!r}; known inputs: {', '.join(UNET_INPUTS)}.")
            have = self.values.get(key)
            if have is None:
                self.values[key] = list(value) if key in _SUMMED_LISTS else (dict(value) if key in _MERGED_DICTS else value)
            elif key in _SUMMED_LISTS:
                self.values[key] = [a + b for a, b in zip(have, value)]
            elif key in _SUMMED_TENSORS:
                self.values[key] = have + value
            elif key in _MERGED_DICTS:
                have.update(value)
            else:
                raise ValueError(f"Two pipeline parts set the UNet input {key!r}; only one may.")


class Part:
    """Base class of the loop's parts; every hook has a do-nothing default (see the module docstring)."""

    #: pipeline components this part needs (attribute names on the pipeline)
    components: Tuple[str, ...] = ()
    #: those of `components` the pipeline may be built without (set to None), as diffusers'
    #: `_optional_components` (the SDXL refiner has no first text encoder)
    optional_components: Tuple[str, ...] = ()
    #: call arguments this part owns beyond the loop's signature, with their defaults
    arguments: Mapping[str, Any] = {}
    #: the documentation of each owned argument (its type and what it does; the default is added)
    argument_docs: Mapping[str, Arg] = {}
    #: how this part words the loop's own arguments (call_arguments.CALL_ARGUMENTS)
    rewords: Mapping[str, Arg] = {}
    #: the loop's optional inputs (image, mask_image) this part reads
    uses: Tuple[str, ...] = ()
    #: classes whose methods the pipeline class gets (e.g. LoraMixin)
    mixins: Tuple[type, ...] = ()
    #: pipeline attributes this part reads, with their defaults (settings model_index.json may carry)
    attributes: Mapping[str, Any] = {}

    def check_components(self, pipe) -> None:
        """Raise ValueError when the components do not fit the pipeline's UNet (at construction)."""

    def attach(self, pipe) -> None:
        """Adapt the components once they are checked (at construction)."""

    def check_arguments(self, pipe, args: Mapping[str, Any], call: CallState) -> None:
        """Raise ValueError on bad call arguments, before any work is done."""

    def default_size(self, pipe, args: Mapping[str, Any]) -> Optional[Tuple[int, int]]:
        """The output (height, width) when the call gives none, or None to leave it to the next part."""
        return None

    def prepare(self, pipe, call: CallState, args: Mapping[str, Any]) -> Any:
        """Once-per-call work before the loop; the returned state is passed to the step hooks."""
        return None

    def unet_inputs(self, pipe, call: CallState, state: Any, step: StepState) -> Optional[Mapping[str, Any]]:
        """Extra UNet keyword arguments for this step (names from `UNET_INPUTS`), or None."""
        return None

    def model_input(self, pipe, call: CallState, state: Any, step: StepState):
        """The UNet's sample for this step, from `step.model_input`."""
        return step.model_input

    def combine(self, pipe, call: CallState, state: Any, step: StepState, noise_pred):
        """The UNet's prediction for the scheduler's step, from the UNet's output (CFG-doubled under
        classifier-free guidance: the guidance rule turns it into one prediction per image)."""
        return noise_pred

    def after_step(self, pipe, call: CallState, state: Any, step: StepState, latents):
        """The latents after the scheduler's step."""
        return latents

    def finish(self, pipe, call: CallState, state: Any, images):
        """The output images (as `output_type` made them, not latents) once decoded."""
        return images


def overrides(part: Part, hook: str) -> bool:
    """Whether `part` implements `hook` (the loop calls only those at every step)."""
    return getattr(type(part), hook) is not getattr(Part, hook)


def owned_arguments(parts: Sequence[Part]) -> Dict[str, Any]:
    """Every call argument the parts own, with its default; two owning one name is a bug."""
    owned: Dict[str, Any] = {}
    for part in parts:
        for name, default in part.arguments.items():
            if name in owned:
                raise TypeError(f"Two pipeline parts claim the call argument {name!r}.")
            owned[name] = default
    return owned
