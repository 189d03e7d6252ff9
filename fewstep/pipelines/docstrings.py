"""diffusers-style documentation of the pipelines' call arguments, assembled per class.

All pipelines share one `__call__` (base.py), but what a class takes depends on its parts: the
loop's own arguments, what its task makes of `image` / `mask_image` / `strength`, and the arguments
its other parts own (`controlnet_conditioning_scale`, `num_frames`...). Each part documents the
arguments it owns where it declares them, as `Arg`s: the loop's in `call_arguments.CALL_ARGUMENTS`, a
part's rewording of those in its `rewords`, its own in its `argument_docs`. `call_arguments.py` joins
them per class, and the base class gives each class a `__call__` of its own that
differs only in its docstring, so `help(StableDiffusionXLControlNetPipeline.__call__)` lists every
argument that class takes with the default it really has. tests/test_docstrings.py fails when an
argument has no entry.
"""

from __future__ import annotations

import inspect
import textwrap
import types
from typing import Any, Iterable, NamedTuple, Tuple

_WIDTH = 100


class Arg(NamedTuple):
    """One argument's entry: its type as diffusers writes it ("`str` or `List[str]`") and one paragraph."""

    type: str
    text: str


def _wrap(text: str, indent: int) -> list:
    return textwrap.wrap(text, _WIDTH, initial_indent=" " * indent, subsequent_indent=" " * indent,
                         break_on_hyphens=False)


def _show(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def args_section(entries: Iterable[Tuple[str, Arg, Any]]) -> str:
    """An `Args:` section from (name, entry, default): `name (type, *optional*, defaults to X):` then the
    text, as diffusers lays it out. A default of `inspect.Parameter.empty` marks a required argument."""
    lines = ["Args:"]
    for name, arg, default in entries:
        head = arg.type
        if default is not inspect.Parameter.empty:
            head += ", *optional*" + ("" if default is None else f", defaults to {_show(default)}")
        lines.append(f"    {name} ({head}):")
        lines += _wrap(arg.text, 8)
    return "\n".join(lines)


def section(title: str, text: str) -> str:
    """A `Returns:` (or other) section: the title, then `text` wrapped and indented under it."""
    first, _, rest = text.partition("\n")
    lines = [f"{title}:", f"    {first}"]
    lines += _wrap(rest, 8)
    return "\n".join(lines)


def with_doc(function: types.FunctionType, doc: str, qualname: str) -> types.FunctionType:
    """A copy of `function` -- the same code, globals, defaults and closure, so it runs exactly the same --
    that carries its own docstring and qualified name."""
    copy = types.FunctionType(function.__code__, function.__globals__, function.__name__, function.__defaults__,
                              function.__closure__)
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__annotations__ = dict(function.__annotations__)
    copy.__module__ = function.__module__
    copy.__qualname__ = qualname
    copy.__doc__ = doc
    return copy
