"""LoRA on every pipeline, with diffusers' method names: load, combine, fuse, unfuse, unload.

fewstep applies a LoRA only by fusing it into the weights, so a denoising step costs the same with
or without LoRAs. What diffusers keeps as live PEFT layers is kept here as state, and the fused
weights are recomputed from it whenever it changes:

- the loaded adapters (their factors, on the device of the weights they change, unrounded: see
  `fewstep.core.lora.fusion`) and which of them are active, with their weights (`set_adapters`);
- the lora_scale (`fuse_lora(lora_scale=...)`, or a call's `cross_attention_kwargs={"scale": s}`)
  and which components carry the LoRA (`fuse_lora(components=...)` / `unfuse_lora(components=...)`);
- kept base weights. The first time a module is fused, its original weight is kept where
  `fuse_lora(keep_base=...)` says (`fewstep.pipelines.lora_bases`: "file", the default, keeps only a
  reference into the safetensors file the component was loaded from, verified byte for byte, else a
  host copy; "host" a NumPy copy, pinned for a CUDA weight; "device" the original tensor itself). With
  "file" and "host" the weight is then fused in its own memory (a half-precision one through one float32
  copy); with "device" the fused weight is a new tensor. Every later fusion of that module is computed
  from the kept base, in the fused weight's memory ("file" reads the base from the page cache straight
  into it where the backend has a host view of it: torch on the CPU), and `unfuse_lora` /
  `unload_lora_weights` put it back. So a fused weight never depends on what was fused before
  (switching adapters 20 times ends bit for bit where one fusion does), and unfusing restores the
  base bit for bit. With "device" the cost is one extra copy of every touched weight on the device
  (an LCM/TCD-LoRA touches nearly every UNet weight: SD 1.5: 1.7 GB in float16, 3.4 GB in float32;
  SDXL: 5.1 GB / 10.2 GB); with "host" the same in host memory; with "file" none. Nothing is kept
  for modules no LoRA touches, and unfusing or unloading frees it. No mode allocates a new weight when
  re-fusing (set_adapters, a new scale), so the process does not grow with switching, and "file" does
  not at the first fusion either (the host memory that fusing an SD 1.5 UNet adds at its peak:
  benchmarks/bench_lora_memory.py).

`pipe.to(device, dtype)` with LoRAs loaded (`_LoraState.move`): the factors and "device" bases move and
cast with the weights, "host" and "file" bases record the cast, and every fused weight of a moved
component is fused again from its base in the new place, so the weights are what moving the base
pipeline and then loading and fusing the same LoRAs gives, bit for bit (float16 fused in float16, not a
float32 fusion rounded), and unfusing restores the moved base exactly. Nothing is read from disk but
"file" bases, as at any fusion.

Differences from diffusers, all following from "always fused": loading an adapter applies it at
once (diffusers: applied unfused); after `unfuse_lora()` the pipeline runs the base model until
`fuse_lora()`, `set_adapters()` or a new load applies LoRAs again; components left out of
`fuse_lora(components=...)` carry no LoRA; and `cross_attention_kwargs={"scale": s}` applies the
LoRA at scale s for that call by fusing at s (diffusers ignores the scale once fused), the next call
without a scale going back to the fuse_lora scale.

Every input is checked before any weight changes: a bad file, a key matching no module, a shape
that does not fit, an unknown adapter name, a factor holding NaN or inf, a NaN or infinite adapter weight
or lora_scale, and a combination that would change a weight element by more than `fusion.MAX_CHANGE`
(adapter weights like -1e30) all raise `LoraError` with the weights untouched. The methods that change
weights hold the pipeline against other threads (`fewstep.pipelines.busy`).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple, Union

import numpy as np

from fewstep.backends import get_backend
from fewstep.core.lora import (DEFAULT_WEIGHT_NAME, LoraError, LoraSource, find_weight_file, fused_weight,
                               normalise, read_lora)
from fewstep.core import checks
from fewstep.core.lora.fusion import HALF, MAX_CHANGE, factor_dtype, work_buffer
from fewstep.core.lora.plan import plan_refresh, wanted_terms
from fewstep.pipelines import busy, lora_bases
from fewstep.pipelines.parts import Part

__all__ = ["LoraError", "LoraMixin"]

LORA_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
# huggingface_hub options load_lora_weights takes (as diffusers does); `subfolder` also applies to a local folder
_HUB_KWARGS = ("revision", "subfolder", "cache_dir", "local_files_only", "token", "force_download", "proxies")


class _Factors(NamedTuple):
    up: Any       # (out, rank) on the weight's device, in fusion.factor_dtype (rounded as each fusion reads it)
    down: Any     # (rank, in * kh * kw)
    alpha: float
    rank: int
    rslora: bool
    peak: float   # a bound on |up @ down| at any element (LoraLayer.peak), for the refresh's check against MAX_CHANGE


@dataclass
class _Adapter:
    token: int                                  # unique per load: a reused name is a new adapter
    layers: Dict[str, Dict[str, _Factors]]      # component -> module path -> factors on the device


@dataclass
class _LoraState:
    adapters: Dict[str, _Adapter] = field(default_factory=dict)   # in load order
    active: List[str] = field(default_factory=list)
    weights: Dict[str, Dict[str, float]] = field(default_factory=dict)  # adapter -> component -> weight
    lora_scale: float = 1.0                  # the scale fuse_lora asked for
    fused_scale: Optional[float] = None      # the scale the fused weights carry now
    applied: Set[str] = field(default_factory=set)  # components whose weights carry the active LoRAs
    saved: Dict[Tuple[str, str], Any] = field(default_factory=dict)       # (component, path) -> kept base
    keep_base: str = "file"                  # where new bases are kept: lora_bases.MODES
    signature: Dict[Tuple[str, str], tuple] = field(default_factory=dict)  # what each fused weight holds
    loads: int = 0

    def move(self, ops, components: Mapping[str, Any]) -> None:
        """Follow the weights of `components` (name -> component wrapper), just moved by `pipe.to`: the
        factors go to each weight's device in the dtype kept for its new dtype (no file is read: they are
        the loaded values, exactly), kept bases move or record the cast (`lora_bases.moved`), and the
        fused weights of these components are marked stale, so the next refresh fuses them again from
        their bases in the new place."""
        for adapter in self.adapters.values():
            for name, layers in adapter.layers.items():
                if name not in components:
                    continue
                for path, f in layers.items():
                    weight = components[name].named_weight(path)
                    keep = factor_dtype(ops.dtype_name(weight), ops.dtype_name(f.up))
                    layers[path] = f._replace(up=components[name].place(f.up, weight, keep),
                                              down=components[name].place(f.down, weight, keep))
        for key, saved in list(self.saved.items()):
            if key[0] in components:
                component = components[key[0]]
                self.saved[key] = lora_bases.moved(ops, saved, component, component.named_weight(key[1]))
                self.signature.pop(key, None)  # moved or cast fused values are not what fusing there gives


def _names(value, what: str = "adapter_names") -> List[str]:
    names = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(n, str) for n in names):
        raise LoraError(f"{what} must be a name or a list of names; got {value!r}.")
    if len(set(names)) != len(names):
        raise LoraError(f"{what} lists an adapter twice: {names}.")
    return names


class LoraMixin:
    """`load_lora_weights`, `set_adapters`, `fuse_lora`, `unfuse_lora`, `unload_lora_weights`,
    `delete_adapters`, `get_active_adapters`, `get_list_adapters` for a pipeline whose unet and text
    encoders are fewstep component adapters (see the module docstring for how LoRAs are applied)."""

    # ------------------------------------------------------------------ state
    def _lora_state(self) -> _LoraState:
        state = self.__dict__.get("_lora")
        if state is None:
            state = self._lora = _LoraState()
        return state

    def _lora_components(self) -> Dict[str, Any]:
        return {name: getattr(self, name) for name in LORA_COMPONENTS if getattr(self, name, None) is not None}

    def _check_known(self, names: Sequence[str]) -> None:
        known = list(self._lora_state().adapters)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise LoraError(f"Unknown adapter name(s) {unknown}; loaded adapters: {known or 'none'}.")

    # ------------------------------------------------------------------ loading
    @busy.exclusive  # these change the weights: not while another thread runs a call (busy.py)
    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, weight_name: Optional[str] = None,
                          adapter_name: Optional[str] = None, **hub_kwargs):
        """Load a LoRA and apply it, fused, as the only active adapter (weight 1.0), as diffusers does.

        The source is a .safetensors file, a folder (with `weight_name`, else the diffusers default name
        or its only .safetensors file), a hub id (fetched with huggingface_hub; `hub_kwargs` such as
        `revision`, `subfolder`, `cache_dir`, `local_files_only` go to it), or a state dict of NumPy,
        torch or MindSpore tensors. Formats: diffusers/PEFT, older diffusers, kohya/A1111 with diffusers
        or SGM module names, each with UNet and text-encoder keys and alphas. Raises LoraError, with no
        weight changed, when the LoRA cannot be read or does not fit."""
        state = self._lora_state()
        if adapter_name is None:
            index = len(state.adapters)
            while f"default_{index}" in state.adapters:
                index += 1
            adapter_name = f"default_{index}"
        elif adapter_name in state.adapters:
            raise LoraError(f"Adapter name {adapter_name!r} is already in use; choose another adapter_name, or "
                            f"delete_adapters({adapter_name!r}) first.")
        source = self._read_lora_source(pretrained_model_name_or_path_or_dict, weight_name, hub_kwargs)
        components = self._lora_components()
        targets = {name: comp.lora_targets() for name, comp in components.items()}
        unet_config = getattr(components.get("unet"), "config", None)
        layers = normalise(source.tensors, targets, unet_config=unet_config, metadata=source.metadata,
                           origin=source.origin)
        factors: Dict[str, Dict[str, _Factors]] = {}
        with self.ops.no_grad():
            for name, paths in layers.items():
                comp = components[name]
                factors[name] = {}
                for path, layer in paths.items():
                    weight = comp.named_weight(path)
                    up, down = layer.device_factors(self.ops, weight, self.ops.dtype_name(weight))
                    factors[name][path] = _Factors(up, down, layer.alpha, layer.rank, layer.rslora, layer.peak())
        with self._lora_state_kept_on_error():
            state.loads += 1
            state.adapters[adapter_name] = _Adapter(token=state.loads, layers=factors)
            state.weights[adapter_name] = {name: 1.0 for name in components}
            state.active = [adapter_name]
            if not state.applied:
                state.applied = set(components)
            self._lora_refresh()

    def _read_lora_source(self, source, weight_name, hub_kwargs) -> LoraSource:
        if isinstance(source, Mapping):
            arrays = {}
            for key, value in source.items():
                if isinstance(value, np.ndarray):
                    arrays[key] = value
                    continue
                try:
                    arrays[key] = get_backend(value).to_numpy(value)
                except (ValueError, TypeError) as err:
                    raise LoraError(f"State dict entry {key!r} is a {type(value).__name__}, not a tensor.") from err
            return read_lora(arrays)
        unknown = sorted(set(hub_kwargs) - set(_HUB_KWARGS))
        if unknown:
            raise TypeError(f"load_lora_weights() got unexpected keyword arguments {unknown}; it takes weight_name, "
                            f"adapter_name and the hub options {list(_HUB_KWARGS)}.")
        if isinstance(source, (str, os.PathLike)) and not os.path.exists(os.fspath(source)):
            return read_lora(_from_hub(os.fspath(source), weight_name, hub_kwargs))
        if hub_kwargs.get("subfolder") and isinstance(source, (str, os.PathLike)):
            source = os.path.join(os.fspath(source), hub_kwargs["subfolder"])
        return read_lora(source, weight_name)

    # ------------------------------------------------------------------ combining
    @busy.exclusive
    def set_adapters(self, adapter_names: Union[str, Sequence[str]], adapter_weights=None):
        """Make these adapters the active ones, with these weights (a number each, or a dict of
        component -> number; None means 1.0), and fuse the combination: base + sum of weighted deltas,
        computed from the saved base weights."""
        names = _names(adapter_names)
        self._check_known(names)
        components = list(self._lora_components())
        if not isinstance(adapter_weights, (list, tuple)):
            adapter_weights = [adapter_weights] * len(names)
        if len(adapter_weights) != len(names):
            raise LoraError(f"{len(names)} adapters but {len(adapter_weights)} adapter_weights.")
        weights = {}
        for name, weight in zip(names, adapter_weights):
            if weight is None or isinstance(weight, (int, float, np.number)):
                weights[name] = {c: 1.0 if weight is None else _finite(weight, f"adapter_weights for {name!r}")
                                 for c in components}
            elif isinstance(weight, Mapping):
                extra = [k for k in weight if k not in components]
                if extra or not all(isinstance(v, (int, float, np.number)) for v in weight.values()):
                    raise LoraError(f"adapter_weights for {name!r}: a dict maps components ({components}) to numbers; "
                                    f"got {weight!r}. Per-block weights are not supported.")
                weights[name] = {c: _finite(weight.get(c, 1.0), f"adapter_weights for {name!r}[{c!r}]")
                                 for c in components}
            else:
                raise LoraError(f"adapter_weights for {name!r} must be a number, a dict or None; got {weight!r}.")
        state = self._lora_state()
        with self._lora_state_kept_on_error():
            state.weights.update(weights)
            state.active = names
            if not state.applied:
                state.applied = set(components)
            self._lora_refresh()

    def get_active_adapters(self) -> List[str]:
        return list(self._lora_state().active)

    def get_list_adapters(self) -> Dict[str, List[str]]:
        """component -> names of the loaded adapters that change it."""
        listing: Dict[str, List[str]] = {}
        for name, adapter in self._lora_state().adapters.items():
            for component in adapter.layers:
                listing.setdefault(component, []).append(name)
        return listing

    @busy.exclusive
    def delete_adapters(self, adapter_names: Union[str, Sequence[str]]):
        """Remove adapters; their deltas leave the fused weights. When no active adapter remains but
        others are loaded, the first loaded one becomes active (PEFT's rule)."""
        names = _names(adapter_names)
        self._check_known(names)
        state = self._lora_state()
        for name in names:
            del state.adapters[name]
            state.weights.pop(name, None)
        state.active = [n for n in state.active if n not in names]
        if not state.active and state.adapters:
            state.active = [next(iter(state.adapters))]
        self._lora_refresh()  # (removing terms only: never past MAX_CHANGE; a newly active first adapter was loaded so)

    # ------------------------------------------------------------------ fusing
    def _components_arg(self, components) -> List[str]:
        available = list(self._lora_components())
        if components is None:
            return available
        names = _names(components, "components")
        unknown = [c for c in names if c not in available]
        if unknown:
            raise LoraError(f"Unknown LoRA component(s) {unknown}; this pipeline has {available}.")
        return names

    @busy.exclusive
    def fuse_lora(self, components: Optional[Sequence[str]] = None, lora_scale: float = 1.0,
                  safe_fusing: bool = False, adapter_names: Optional[Sequence[str]] = None,
                  keep_base: Optional[str] = None):
        """Fuse the active adapters (or `adapter_names`) at `lora_scale` into `components` (default: all
        of unet / text encoders); the other components get their base weights back. `safe_fusing`
        checks every fused weight for NaN/inf before any is written.

        `keep_base` says where the unfused value of each fused weight is kept, for exact unfusing and
        switching ("file": read back from the safetensors file the component was loaded from, a host
        copy where the file cannot give it back exactly; "host": a copy in host memory; "device": a copy
        beside the weight). It stays the pipeline's setting for later fusions (set_adapters, loads);
        bases already kept move to the new place. Default: the pipeline's setting, initially "file"."""
        if isinstance(components, (int, float)) and not isinstance(components, bool):
            raise LoraError("fuse_lora's first argument is `components` (as in diffusers); pass lora_scale=... by name.")
        names = self._components_arg(components)
        state = self._lora_state()
        if keep_base is not None and lora_bases.check_mode(keep_base) != state.keep_base:
            self._move_bases(keep_base)
        active = state.active
        if adapter_names is not None:
            active = _names(adapter_names)
            self._check_known(active)
        lora_scale = _finite(lora_scale, "lora_scale")
        before = (state.active, state.lora_scale, state.applied)
        state.active, state.lora_scale, state.applied = active, lora_scale, set(names)
        try:
            self._lora_refresh(check_finite=safe_fusing)
        except LoraError:  # safe fusing found NaN/inf, or a change past MAX_CHANGE, and wrote nothing: the state
            # stays as the weights are
            state.active, state.lora_scale, state.applied = before
            raise

    @busy.exclusive
    def unfuse_lora(self, components: Optional[Sequence[str]] = None):
        """Put the saved base weights of `components` (default: all) back, bit for bit. The adapters stay
        loaded; `fuse_lora()` or `set_adapters()` applies them again."""
        names = self._components_arg(components)
        state = self._lora_state()
        state.applied -= set(names)
        self._lora_refresh()

    @busy.exclusive
    def unload_lora_weights(self):
        """Put every saved base weight back (bit for bit) and forget all adapters."""
        state = self._lora_state()
        state.applied = set()
        self._lora_refresh()
        self._lora = _LoraState(keep_base=state.keep_base)

    def _move_bases(self, mode: str) -> None:
        """Make `mode` the place bases are kept, and move the bases kept now there (exactly)."""
        state = self._lora_state()
        components = self._lora_components()
        ops = self.ops
        lora_bases.check(ops, [(key, saved, components[key[0]].named_weight(key[1]))
                               for key, saved in state.saved.items()])
        with ops.no_grad():
            for key, saved in list(state.saved.items()):
                if lora_bases.kind(saved) != mode:
                    component, path = key
                    like = components[component].named_weight(path)
                    base = lora_bases.materialize(ops, saved, like)
                    state.saved[key] = lora_bases.keep(ops, mode, components[component], path, base)
        state.keep_base = mode

    def _move_models(self, changes, device, dtype) -> None:
        """`pipe.to`'s move (fewstep.pipelines.pipeline_object), with the LoRA state following the LoRA
        components among `changes`. A "file" base whose file changed fails first, with nothing moved
        (after the move, re-fusing from it would fail with the models moved and the weights stale)."""
        state = self.__dict__.get("_lora")
        components = {name: comp for name, comp in self._lora_components().items()
                      if any(comp is model for _, model in changes)}
        if state is None or not components or not (state.adapters or state.saved):
            super()._move_models(changes, device, dtype)
            return
        lora_bases.check(self.ops, [(key, saved, components[key[0]].named_weight(key[1]))
                                    for key, saved in state.saved.items() if key[0] in components])
        super()._move_models(changes, device, dtype)
        with self.ops.no_grad():
            state.move(self.ops, components)
        # at the scale the weights carried (a call's cross_attention_kwargs scale stays until the next call)
        self._lora_refresh(scale=state.fused_scale)

    def _apply_lora_scale(self, cross_attention_kwargs: Optional[Mapping]) -> Optional[dict]:
        """Called by `__call__` before encoding the prompt: takes "scale" out of cross_attention_kwargs
        and, when LoRAs are fused, re-fuses them at that scale (or back at the fuse_lora scale when the
        call gives none). The rest is returned for the UNet, which must not see "scale": the LoRA
        lives in its weights, not in PEFT layers."""
        kwargs = dict(cross_attention_kwargs or {})
        scale = kwargs.pop("scale", None)
        state = self.__dict__.get("_lora")
        if state is not None and state.adapters and state.applied:
            wanted = state.lora_scale if scale is None else float(scale)
            if wanted != state.fused_scale:
                self._lora_refresh(scale=wanted)
        return kwargs or None

    def _lora_refresh(self, scale: Optional[float] = None, check_finite: bool = False) -> None:
        """Bring every LoRA-able weight to what the state asks for: base + sum of the active adapters'
        weighted deltas in applied components, the saved base elsewhere. Only weights whose content
        changes are recomputed (`fewstep.core.lora.plan` says which); each is computed from its saved
        base, so the result is the same whatever was fused before."""
        state = self._lora_state()
        scale = state.lora_scale if scale is None else float(scale)
        components = self._lora_components()
        wanted = wanted_terms(state.active, state.adapters, state.weights, state.applied, scale)
        plan = plan_refresh(wanted, state.signature, state.saved)
        _check_changes(state, plan.fuse)  # before anything is written
        ops = self.ops
        # a base kept as a file reference is read back only if the file still gives it exactly: checked
        # for all of them before anything is written
        lora_bases.check(ops, [(key, state.saved[key], components[key[0]].named_weight(key[1]))
                               for key in [k for k, _, _ in plan.fuse] + list(plan.restore)
                               if isinstance(state.saved.get(key), lora_bases.FileBase)])
        with ops.no_grad():
            updates = []
            work = self._work_buffers(components, [key for key, _, _ in plan.fuse])
            for key, terms, signature in plan.fuse:
                component, path = key
                saved = state.saved.get(key)
                weight = components[component].named_weight(path)
                if saved is None and not check_finite and state.keep_base != "device":
                    # the first fusion of this weight, its base kept apart from it: fused in place
                    saved = state.saved[key] = lora_bases.keep(ops, state.keep_base, components[component], path,
                                                               weight)
                    current = base = weight
                elif saved is None:  # "device" keeps this very tensor as the base, so the fused weight is new
                    current, base = None, weight
                elif check_finite:  # safe fusing writes nothing until every weight is checked
                    current, base = None, lora_bases.materialize(ops, saved, weight)
                else:  # a weight fused before is ours: re-fused in its own memory, the base read into it if it can
                    # forgotten first: a re-fusion interrupted part-way (Ctrl-C, out of memory) leaves a weight
                    # no signature vouches for, so the next refresh fuses it again from its base
                    state.signature.pop(key, None)
                    current = weight
                    base = lora_bases.materialize(ops, saved, weight, into=weight)
                fused = fused_weight(ops, base, [(t.factors.up, t.factors.down, t.scale) for t in terms], out=current,
                                     work=work.get(component))
                if check_finite and not ops.all_finite(fused):  # checked on the device: one bool comes back
                    raise LoraError(f"Fusing gives NaN or inf in {component} module {path!r}; no weight was changed. "
                                    f"The adapter is broken, or lora_scale/adapter_weights are too large.")
                if not check_finite:  # safe fusing writes nothing until every weight is checked
                    self._write_fused(state, components, key, base, fused, signature)
                else:
                    updates.append((key, base, fused, signature))
            for key, base, fused, signature in updates:
                self._write_fused(state, components, key, base, fused, signature)
            for key in plan.restore:
                component, path = key
                like = components[component].named_weight(path)
                # the base is dropped only once it is back: a restore interrupted part-way is done again
                state.signature.pop(key, None)
                components[component].set_weight(path, lora_bases.materialize(ops, state.saved[key], like, into=like))
                del state.saved[key]
        state.fused_scale = scale

    @contextmanager
    def _lora_state_kept_on_error(self):
        """Undo the block's changes to the adapters, weights, active list, scale and applied components when a
        refresh raises LoraError: it raises only before writing (a change past MAX_CHANGE, a changed file base),
        so the state goes back to what the weights hold."""
        state = self._lora_state()
        before = (dict(state.adapters), {k: dict(v) for k, v in state.weights.items()}, list(state.active),
                  state.lora_scale, set(state.applied))
        try:
            yield
        except LoraError:
            state.adapters, state.weights, state.active, state.lora_scale, state.applied = before
            raise

    def _work_buffers(self, components, keys) -> Dict[str, Any]:
        """component -> one float32 buffer for the float32 copies of its half-precision weights among `keys`
        (`fused_weight(work=)`), as large as the largest; one per component, as components may sit on
        different devices."""
        ops = self.ops
        largest: Dict[str, Tuple[int, Any]] = {}
        for component, path in keys:
            weight = components[component].named_weight(path)
            if ops.dtype_name(weight) in HALF:
                elements = int(np.prod(ops.shape(weight)))
                if elements > largest.get(component, (0, None))[0]:
                    largest[component] = (elements, weight)
        return {component: work_buffer(ops, like, elements) for component, (elements, like) in largest.items()}

    def _write_fused(self, state, components, key, base, fused, signature) -> None:
        if key not in state.saved:  # the first fusion of this weight: `base` is the original tensor
            state.saved[key] = lora_bases.keep(self.ops, state.keep_base, components[key[0]], key[1], base)
        components[key[0]].set_weight(key[1], fused)
        state.signature[key] = signature


def _finite(value, what: str) -> float:
    """A LoRA weight or scale as a float, refused by name when NaN or infinite: `addmm(alpha=nan)` fuses a NaN
    weight as if it were 1.0 on a CPU, and inf makes every fused weight inf."""
    try:
        return checks.number(value, what, "Use a finite number, e.g. 1.0.")
    except ValueError as err:
        raise LoraError(str(err)) from None


def _check_changes(state: _LoraState, fuse) -> None:
    """Refuse a refresh that would change any weight element by more than MAX_CHANGE (fusion.py says why),
    naming the adapter with the largest term; a NaN bound (never from checked numbers) is refused too."""
    names = {adapter.token: name for name, adapter in state.adapters.items()}
    for (component, path), terms, _ in fuse:
        sizes = [abs(t.scale) * t.factors.peak for t in terms]
        change = sum(sizes)
        if not change <= MAX_CHANGE:
            worst = names.get(terms[sizes.index(max(sizes))].token) if sizes else None
            raise LoraError(f"Adapter {worst!r} at its adapter weight and lora_scale would change {component} module "
                            f"{path!r} by up to {change:.3g} (at most {MAX_CHANGE:g}; a LoRA changes weights by less "
                            f"than 1): use a smaller adapter weight, lora_scale or cross_attention_kwargs['scale']. "
                            f"No weight was changed.")


def _from_hub(repo_id: str, weight_name: Optional[str], hub_kwargs: dict) -> str:
    """A local path for a LoRA on the hub (huggingface_hub's cache; works offline once cached): `weight_name`,
    else the default name, else the repository's only .safetensors file. Only that file is fetched, and a hub
    that does not answer fails within FEWSTEP_HUB_TIMEOUT seconds (fewstep.pipelines.hub)."""
    try:
        from fewstep.pipelines import hub
    except ImportError as err:  # pragma: no cover
        raise LoraError(f"{repo_id!r} is not a local path, and huggingface_hub is not installed to fetch it.") from err
    hub_kwargs = dict(hub_kwargs)
    subfolder = (hub_kwargs.pop("subfolder", None) or "").strip("/")
    inside = f"{subfolder}/" if subfolder else ""

    def choose(names, read):
        if weight_name:
            wanted = [inside + weight_name]
        elif inside + DEFAULT_WEIGHT_NAME in names:
            wanted = [inside + DEFAULT_WEIGHT_NAME]
        else:  # no file of the default name: the repository's only .safetensors file (find_weight_file says if several)
            wanted = [n for n in names if n.startswith(inside) and "/" not in n[len(inside):]
                      and n.endswith(".safetensors")]
        if len(wanted) > 1:  # fetch none of them: the caller must choose
            raise LoraError(f"{repo_id!r} holds several .safetensors files ({', '.join(sorted(wanted)[:5])}); pass "
                            f"weight_name= naming the LoRA.")
        missing = [n for n in wanted if n not in names]
        if missing or not wanted:
            raise LoraError(f"{repo_id!r} has no LoRA file {missing[0] if missing else inside + '*.safetensors'!r}; "
                            f"pass weight_name= naming one of its .safetensors files.")
        return wanted

    try:
        folder = os.path.join(hub.fetch(repo_id, choose, hub_kwargs), subfolder)
        return os.path.join(folder, weight_name) if weight_name else find_weight_file(folder)
    except (LoraError, hub.HubError):
        raise  # already one line (a timeout names the variable that sets it)
    except Exception as err:
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        raise LoraError(f"{repo_id!r} is neither a local file or folder nor a hub repository whose LoRA could be "
                        f"fetched ({type(err).__name__}: {reason}).") from err


class LoraScale(Part):
    """The LoRA scale of one call, as a part of the loop (first, so the text encoders run at it too):
    `cross_attention_kwargs`' "scale" re-fuses the loaded LoRAs at that scale for this call (see
    `LoraMixin._apply_lora_scale`); the rest of `cross_attention_kwargs` goes to every UNet call."""

    name = "lora"
    mixins = (LoraMixin,)

    def prepare(self, pipe, call, args):
        return pipe._apply_lora_scale(args["cross_attention_kwargs"])

    def unet_inputs(self, pipe, call, state, step):
        return None if state is None else {"cross_attention_kwargs": state}
