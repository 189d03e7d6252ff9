"""What each LoRA-able weight should hold after a change of adapters, weights or scale: the bookkeeping
of a refresh, apart from the device writes (fewstep.pipelines.lora does those).

A fused weight is its saved base plus one term per active adapter that changes the module, in a
component that carries LoRAs, scaled as PEFT scales it (`fusion.scaling`) by the adapter's weight for
that component and the lora_scale. An adapter whose weight for the component is 0 adds no term at
all, so the weight stays the base bit for bit. A term's signature, the adapter's load and its scale,
says what a fused weight holds: a weight whose signature is unchanged is not recomputed, and a
module no term wants any more gets its saved base back.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Tuple

from fewstep.core.lora.fusion import scaling

Key = Tuple[str, str]  # (component, module path)


class Term(NamedTuple):
    token: int     # the load the adapter came from: a name loaded again is a new adapter
    factors: Any   # the adapter's factors for the module (on the device; not looked at here)
    scale: float   # the factor of up @ down


class RefreshPlan(NamedTuple):
    fuse: List[Tuple[Key, List[Term], tuple]]  # (key, terms, signature) of each weight to recompute, in order
    restore: List[Key]                         # weights that go back to their saved base, in saving order


def wanted_terms(active: Iterable[str], adapters: Mapping[str, Any], weights: Mapping[str, Mapping[str, float]],
                 applied: Iterable[str], lora_scale: float) -> Dict[Key, List[Term]]:
    """(component, path) -> the terms its fused weight holds, in the order of `active`.

    `adapters`: name -> an adapter with `token` and `layers` (component -> module path -> factors with
    `alpha`, `rank`, `rslora`); `weights`: name -> component -> weight (1.0 where a component is not
    named); `applied`: the components that carry LoRAs."""
    wanted: Dict[Key, List[Term]] = {}
    for name in active:
        adapter = adapters[name]
        for component in sorted(applied):
            weight = weights[name].get(component, 1.0)
            if weight == 0.0:  # no term at all: the weight stays the base, bit for bit
                continue
            for path, f in adapter.layers.get(component, {}).items():
                scale = scaling(f.alpha, f.rank, f.rslora, weight, lora_scale)
                wanted.setdefault((component, path), []).append(Term(adapter.token, f, scale))
    return wanted


def signature(terms: Iterable[Term]) -> tuple:
    """What a weight fused from `terms` holds: equal signatures, equal weights."""
    return tuple((term.token, term.scale) for term in terms)


def plan_refresh(wanted: Mapping[Key, List[Term]], fused: Mapping[Key, tuple], saved: Iterable[Key]) -> RefreshPlan:
    """The weights to recompute (those whose wanted signature differs from `fused`, the signature each
    fused weight holds now) and the saved ones (`saved`: keys with a saved base) to restore."""
    fuse = []
    for key, terms in wanted.items():
        sig = signature(terms)
        if fused.get(key) != sig:
            fuse.append((key, terms, sig))
    return RefreshPlan(fuse=fuse, restore=[key for key in saved if key not in wanted])
