"""The extension point of the denoising loop: everything that conditions the UNet beyond the prompt.

An extension (ControlNet, T2I-Adapter, later IP-Adapter and motion modules) is a small stateless
object a pipeline class lists in `_extensions`. It says

- which pipeline components it needs (`components`: e.g. "controlnet"), checked when the pipeline is
  built (`check_components`), so a part that does not fit the UNet fails before the first call;
- which call arguments it owns (`arguments`, with their defaults, and `argument_docs`, what each
  means, in diffusers' words: they are added to the `__call__` docstring of every class that lists the
  extension); the loop hands them over and never reads them itself;
- what it does once per call before the loop (`prepare`: a T2I-Adapter's features, the control
  images), returning its per-call state;
- what it adds to each UNet call (`unet_inputs`: a ControlNet's residuals, within its guidance window).

The loop only merges what the extensions return (`UNetInputs.merge`) and passes it to the UNet
wrapper, which hands it to the framework's model unchanged. So the loop holds no adapter-specific code,
and a new adapter is one file beside this one plus its loading in the backends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from fewstep.pipelines.docstrings import Arg

# The UNet keyword arguments extensions may add, and how two contributions to one of them combine.
# Residual lists and tensors add up elementwise in extension order (as diffusers' MultiControlNet
# sums its nets' residuals); dict-valued inputs merge key by key.
_SUMMED_LISTS = ("down_block_additional_residuals", "down_intrablock_additional_residuals")
_SUMMED_TENSORS = ("mid_block_additional_residual",)
_MERGED_DICTS = ("added_cond", "cross_attention_kwargs")
UNET_INPUTS = _SUMMED_LISTS + _SUMMED_TENSORS + _MERGED_DICTS


@dataclass
class RunContext:
    """What an extension may read of one pipeline call, once the prompt is encoded."""

    ops: Any                    # the pipeline's TensorOps
    cond: Any                   # the Conditioning (hidden states, SDXL's added cond, batch, dtype)
    batch: int                  # images made: prompts x num_images_per_prompt
    num_images_per_prompt: int
    do_cfg: bool                # the UNet batch is [negatives, positives]
    height: int
    width: int
    timesteps: Sequence[int]    # the schedule the loop runs (after strength)


@dataclass
class StepContext:
    """What an extension may read at one step of the loop."""

    index: int        # step number, 0-based
    timestep: int
    model_input: Any  # the UNet's sample for this step (CFG-doubled, task channels added)
    latents: Any      # the latents before the step (not doubled)


@dataclass
class UNetInputs:
    """Extra UNet keyword arguments gathered from the extensions for one call."""

    values: Dict[str, Any] = field(default_factory=dict)

    def merge(self, extra: Optional[Mapping[str, Any]]) -> None:
        for key, value in (extra or {}).items():
            if value is None:
                continue
            if key not in UNET_INPUTS:
                raise ValueError(f"An extension returned the UNet input {key!r}; known inputs: {', '.join(UNET_INPUTS)}.")
            have = self.values.get(key)
            if have is None:
                self.values[key] = list(value) if key in _SUMMED_LISTS else (dict(value) if key in _MERGED_DICTS else value)
            elif key in _SUMMED_LISTS:
                self.values[key] = [a + b for a, b in zip(have, value)]
            elif key in _SUMMED_TENSORS:
                self.values[key] = have + value
            else:
                have.update(value)


class Extension:
    """Base class of the loop's extensions; every hook has a do-nothing default."""

    #: pipeline components this extension needs (attribute names on the pipeline)
    components: Tuple[str, ...] = ()
    #: call arguments this extension owns, with their defaults
    arguments: Mapping[str, Any] = {}
    #: the documentation of each owned argument (its type and what it does; the default is added)
    argument_docs: Mapping[str, Arg] = {}

    def check_components(self, pipe) -> None:
        """Raise ValueError when the components do not fit the pipeline's UNet (at construction)."""

    def default_size(self, pipe, args: Mapping[str, Any]) -> Optional[Tuple[int, int]]:
        """The output (height, width) when the call gives none, or None to leave it to the task."""
        return None

    def check_arguments(self, pipe, args: Mapping[str, Any], prompt_batch: Optional[int]) -> None:
        """Raise ValueError on bad call arguments, before any work is done."""

    def prepare(self, pipe, run: RunContext, args: Mapping[str, Any]) -> Any:
        """Once-per-call work before the loop; the returned state is passed to `unet_inputs`."""
        return None

    def unet_inputs(self, pipe, run: RunContext, state: Any, step: StepContext) -> Optional[Mapping[str, Any]]:
        """Extra UNet keyword arguments for this step (names from `UNET_INPUTS`), or None."""
        return None


def owned_arguments(extensions: Sequence[Extension]) -> Dict[str, Any]:
    """Every call argument the extensions own, with its default; two owning one name is a bug."""
    owned: Dict[str, Any] = {}
    for ext in extensions:
        for name, default in ext.arguments.items():
            if name in owned:
                raise TypeError(f"Two extensions claim the call argument {name!r}.")
            owned[name] = default
    return owned


def split_arguments(extensions: Sequence[Extension], given: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The call arguments of each extension (given or default), in extension order."""
    return [{name: given.get(name, default) for name, default in ext.arguments.items()} for ext in extensions]
