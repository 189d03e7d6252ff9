"""Per-layer localisation: rerun one model call on both sides with the same inputs and every submodule
hooked, and compare what each submodule produced, matched by module path (diffusers and mindone name
their modules alike).

Both sides get side A's recorded inputs (cast to each side's weight dtype), so a difference that
appears inside the model is introduced there: the first submodule to finish with an output out of
bounds is reported with the difference of its own inputs. A module whose inputs already differ only
carries an upstream difference; the one that introduces it has inputs in bounds.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np

from fewstep.backends import framework_of, get_backend
from fewstep.backends.hooks import add_forward_hook, first_parameter, named_submodules, remove_all
from fewstep.parity.metrics import difference, within
from fewstep.parity.recording import ModelCall, host_tensors
from fewstep.parity.report import ModuleDiff

_FLOATS = ("float16", "float32", "float64", "bfloat16")


def _to_side(value: Any, ops, like) -> Any:
    """A recorded (host) value as the side's tensors: floats in the side's weight dtype on its device,
    integers and booleans keeping their dtype."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            return ops.from_numpy(value, like=like)
        return ops.from_numpy(value, like=like, dtype=str(value.dtype))
    if isinstance(value, dict):
        return {k: _to_side(v, ops, like) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        converted = [_to_side(v, ops, like) for v in value]
        return converted if isinstance(value, list) else tuple(converted)
    return value


def _flat(arrays: List[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays]) if arrays else np.zeros(0)


def _run_hooked(module, call: ModelCall) -> List[Tuple[str, int, np.ndarray, np.ndarray]]:
    """Run `module` on the recorded inputs; (path, call index, inputs, output) per submodule forward,
    in the order the forwards finished."""
    ops = get_backend(framework_of(module))
    like = first_parameter(module)
    args, kwargs = _to_side(call.args, ops, like), _to_side(call.kwargs, ops, like)
    fired: List[Tuple[str, int, np.ndarray, np.ndarray]] = []
    counts: Dict[str, int] = {}
    handles = []

    def hook_for(path):
        def hook(mod, a, k, output):
            index = counts.get(path, 0)
            counts[path] = index + 1
            fired.append((path, index, _flat(host_tensors((a, k))), _flat(host_tensors(output))))
        return hook

    try:
        for path, sub in named_submodules(module):
            if path:  # the root is the stage itself
                handles.append(add_forward_hook(sub, hook_for(path)))
        with ops.no_grad():
            module(*args, **kwargs)
    finally:
        remove_all(handles)
    return fired


def localise(call_a: ModelCall, call_b: ModelCall, rtol: float, atol: float) -> List[ModuleDiff]:
    """Every submodule of the call compared, in side A's execution order (see the module docstring).

    Side A's recorded inputs are fed to both models; `call_b` supplies side B's model."""
    fired_a = _run_hooked(call_a.module, call_a)
    fired_b = {(path, index): (inputs, output) for path, index, inputs, output in
               _run_hooked(call_b.module, ModelCall(call_b.module, call_a.args, call_a.kwargs))}
    modules = []
    for path, index, inputs_a, output_a in fired_a:
        if (path, index) not in fired_b:
            continue  # a module only one library has (e.g. a fused op): nothing to match it with
        inputs_b, output_b = fired_b[(path, index)]
        if output_a.shape != output_b.shape:
            continue
        max_abs, _, rel = difference(output_a, output_b)
        in_rel = difference(inputs_a, inputs_b)[2] if inputs_a.shape == inputs_b.shape else float("nan")
        modules.append(ModuleDiff(path, index, rel, max_abs, in_rel, rtol, within(max_abs, rel, rtol, atol)))
    return modules
