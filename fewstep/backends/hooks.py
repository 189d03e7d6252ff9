"""Forward hooks on a framework's models, one spelling for torch modules and MindSpore Cells.

Both frameworks call `hook(module, args, kwargs, output)` after a submodule's forward when it is
registered with `register_forward_hook(hook, with_kwargs=True)` (MindSpore in PyNative mode, the mode
fewstep runs it in); they differ in how submodules are listed and how parameters are reached. Used by
`fewstep.parity` to record model calls and to localise a difference to one submodule. Nothing here
imports a framework: it calls the methods of the objects it is given.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, List, Tuple

from fewstep.core.registry import framework_of


def _framework(module) -> str:
    name = framework_of(module)
    if name not in ("torch", "mindspore"):
        raise ValueError(f"Expected a torch module or a MindSpore Cell, got a {type(module).__name__}.")
    return name


def named_submodules(module) -> Iterator[Tuple[str, Any]]:
    """(path, submodule) for the module and everything below it; the paths diffusers and mindone share."""
    if _framework(module) == "torch":
        return iter(module.named_modules())
    return iter(module.cells_and_names())


def add_forward_hook(module, hook: Callable[[Any, tuple, dict, Any], Any]):
    """Call `hook(module, args, kwargs, output)` after every forward of `module`; returns a handle with
    `.remove()`. The hook's return value is ignored (it must not replace outputs)."""
    _framework(module)

    def observe(mod, args, kwargs, output):
        hook(mod, args, kwargs, output)

    return module.register_forward_hook(observe, with_kwargs=True)


def first_parameter(module):
    """A parameter of the module (a tensor on its device, in its weight dtype), or None."""
    if _framework(module) == "torch":
        return next(module.parameters(), None)
    return next(iter(module.get_parameters()), None)


def remove_all(handles: List[Any]) -> None:
    while handles:
        handles.pop().remove()
