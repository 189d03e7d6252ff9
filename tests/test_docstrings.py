"""Every public pipeline `__call__` / `from_pretrained` / `from_pipe`, every AutoPipeline and model
loader, and every `fewstep.utils` function documents each of its arguments in diffusers' style:

    Args:
        num_inference_steps (`int`, *optional*, defaults to 4):
            The number of denoising steps...

A pipeline's `__call__` is checked for the arguments its extensions and layout own too (they reach it
through `**extension_arguments`), with the defaults they really have. Signatures and docstrings are
read only: no framework is imported.
"""

from __future__ import annotations

import ast
import inspect
import re

import pytest

import fewstep
import fewstep.utils
from fewstep import pipelines
from fewstep.pipelines import DiffusionPipeline
from fewstep.pipelines.parts import owned_arguments

_ENTRY = re.compile(r"(?P<name>\*{0,2}\w+) \((?P<head>.*)\):")
_DEFAULT = re.compile(r"defaults to (?P<value>.+)$")
_METHODS = ("__call__", "from_pretrained", "from_pipe")


def args_section(doc: str) -> dict:
    """{name: (header inside the parentheses, description)} of the docstring's `Args:` entries."""
    lines = inspect.cleandoc(doc or "").splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "Args:"]
    assert len(starts) == 1, f"expected one 'Args:' section, found {len(starts)}"
    indent = len(lines[starts[0]]) - len(lines[starts[0]].lstrip())
    entries, name = {}, None
    for line in lines[starts[0] + 1:]:
        depth = len(line) - len(line.lstrip())
        if line.strip() and depth <= indent:
            break  # the next section (Returns:)
        if line.strip() and depth == indent + 4:
            match = _ENTRY.fullmatch(line.strip())
            assert match, f"not an 'name (type, ...):' entry: {line.strip()!r}"
            name = match["name"].lstrip("*")
            entries[name] = (match["head"], "")
        elif line.strip():
            assert name is not None, f"text before the first entry: {line.strip()!r}"
            entries[name] = (entries[name][0], (entries[name][1] + " " + line.strip()).strip())
    return entries


def _public_classes():
    names = set(pipelines.__all__) | {n for n in dir(fewstep) if hasattr(pipelines, n)}
    return sorted((getattr(pipelines, n) for n in names if isinstance(getattr(pipelines, n), type)),
                  key=lambda c: c.__name__)


def _defined(cls, method: str) -> bool:
    """`method` is the class's own or inherited from a fewstep class (not from object or type)."""
    return any(method in klass.__dict__ for klass in cls.__mro__ if klass is not object)


# The schedulers' public methods (constructor arguments are documented on __init__, as help() shows them);
# those that return nothing need no Returns section.
_SCHEDULER_METHODS = ("__init__", "set_timesteps", "step", "set_begin_index", "index_for_timestep",
                      "scale_model_input", "previous_timestep", "add_noise", "get_velocity", "from_config",
                      "from_pretrained", "save_config")
_RETURNS_NOTHING = ("__init__", "set_timesteps", "set_begin_index")


def _cases():
    schedulers = (fewstep.TCDScheduler, fewstep.LCMScheduler, fewstep.DDIMScheduler, fewstep.EulerDiscreteScheduler,
                  fewstep.EulerAncestralDiscreteScheduler)
    cases = [pytest.param(cls, m, id=f"{cls.__name__}.{m}") for cls in schedulers for m in _SCHEDULER_METHODS]
    cases += [pytest.param(cls, m, id=f"{cls.__name__}.{m}") for cls in _public_classes() for m in _METHODS
             if _defined(cls, m)]
    cases += [pytest.param(None, name, id=f"fewstep.utils.{name}") for name, f in vars(fewstep.utils).items()
              if inspect.isfunction(f) and f.__module__ == "fewstep.utils" and not name.startswith("_")]
    return cases


def _expected(cls, method: str):
    """(function, {argument: default or inspect.Parameter.empty}, name of its **kwargs or None)."""
    function = getattr(cls, method) if cls is not None else getattr(fewstep.utils, method)
    arguments, var_keyword = {}, None
    for name, p in inspect.signature(function).parameters.items():
        if p.kind is p.VAR_KEYWORD:
            var_keyword = name
        elif name not in ("self", "cls"):
            arguments[name] = p.default
    if method == "__call__" and issubclass(cls, DiffusionPipeline):
        # what the extensions and the layout own arrives through **extension_arguments
        arguments.update(owned_arguments((*cls._extensions, cls._layout)))
        # None in the signature stands for the class's own default, which the docstring states
        arguments.update(guidance_scale=cls._default_guidance, strength=cls._default_strength)
        var_keyword = None
    return function, arguments, var_keyword


def test_every_public_entry_point_is_checked():
    ids = {case.id for case in _cases()}
    for name in ("StableDiffusionXLControlNetPipeline.__call__", "AnimateDiffPipeline.__call__",
                 "DiffusionPipeline.from_pretrained", "DiffusionPipeline.from_pipe",
                 "AutoPipelineForInpainting.from_pretrained", "AutoPipelineForText2Image.from_pipe",
                 "ControlNetModel.from_pretrained", "MotionAdapter.from_pretrained",
                 "fewstep.utils.load_image", "fewstep.utils.make_image_grid", "fewstep.utils.export_to_gif",
                 "fewstep.utils.export_to_video"):
        assert name in ids
    classes = [c for c in _public_classes() if issubclass(c, DiffusionPipeline)]
    assert len(classes) == 1 + len(pipelines.factory.CLASSES)  # DiffusionPipeline and every row of the table


def problems(qualname: str, doc, arguments: dict, var_keyword, returns: bool = True) -> list:
    """What is wrong with `doc` for a function taking `arguments` ({name: default}) and `**var_keyword`."""
    if not doc:
        return [f"{qualname} has no docstring"]
    found = []
    if returns and not re.search(r"^\s*Returns:\s*$", doc, re.M):
        found.append(f"{qualname}: no 'Returns:' section")
    entries = args_section(doc)
    missing = [name for name in arguments if name not in entries]
    if missing:
        found.append(f"{qualname}: arguments not in the Args section: {missing}")
    unknown = sorted(set(entries) - set(arguments) - {var_keyword})
    if unknown:
        found.append(f"{qualname}: the Args section documents arguments it does not take: {unknown}")
    for name, default in arguments.items():
        if name not in entries:
            continue
        head, text = entries[name]
        where = f"{qualname}({name})"
        optional = default is not inspect.Parameter.empty
        stated = _DEFAULT.search(head)
        if not text:
            found.append(f"{where}: no description")
        if ("*optional*" in head) != optional:
            found.append(f"{where}: '*optional*' must mark exactly the arguments with a default")
        if stated is not None and (default is None or not optional):
            found.append(f"{where}: the docstring states a default the signature does not have")
        elif stated is None and optional and default is not None:
            found.append(f"{where}: the default {default!r} is not stated ('defaults to ...')")
        elif stated is not None and ast.literal_eval(stated["value"]) != default:
            found.append(f"{where}: the docstring says defaults to {stated['value']}, the code {default!r}")
    return found


@pytest.mark.parametrize("cls, method", _cases())
def test_docstring_lists_every_argument(cls, method):
    function, arguments, var_keyword = _expected(cls, method)
    assert problems(function.__qualname__, function.__doc__, arguments, var_keyword,
                    returns=method not in _RETURNS_NOTHING) == []


def _without_entry(doc: str, name: str) -> str:
    """`doc` with the Args entry of `name` (its header and the deeper-indented lines under it) deleted."""
    lines, out, depth = doc.splitlines(), [], None
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if depth is not None and (not line.strip() or indent > depth):
            continue
        depth = indent if line.strip().startswith(f"{name} (") else None
        if depth is None:
            out.append(line)
    return "\n".join(out)


@pytest.mark.parametrize("cls, method, name", [
    (pipelines.StableDiffusionXLControlNetPipeline, "__call__", "controlnet_conditioning_scale"),  # an extension's
    (pipelines.AnimateDiffPipeline, "__call__", "num_frames"),  # the layout's
    (pipelines.StableDiffusionPipeline, "__call__", "num_inference_steps"),  # the loop's
    (pipelines.ControlNetModel, "from_pretrained", "subfolder"),
    (None, "export_to_gif", "fps"),
    (fewstep.TCDScheduler, "step", "eta"),
    (fewstep.LCMScheduler, "__init__", "timestep_scaling"),
])
def test_the_check_fails_when_an_argument_is_not_documented(cls, method, name):
    function, arguments, var_keyword = _expected(cls, method)
    cut = _without_entry(function.__doc__, name)
    assert cut != function.__doc__ and name not in args_section(cut)
    assert problems(function.__qualname__, cut, arguments, var_keyword, returns=method not in _RETURNS_NOTHING) == [
        f"{function.__qualname__}: arguments not in the Args section: {[name]}"]


def test_the_check_fails_on_a_wrong_default():
    function, arguments, var_keyword = _expected(pipelines.StableDiffusionXLPipeline, "__call__")
    wrong = function.__doc__.replace("defaults to 5.0", "defaults to 7.5")
    assert problems(function.__qualname__, wrong, arguments, var_keyword) == [
        f"{function.__qualname__}(guidance_scale): the docstring says defaults to 7.5, the code 5.0"]


def test_each_pipeline_class_has_its_own_call_with_the_same_code():
    """Per-class docstrings come from copies of the one `__call__`: the code run is the base's."""
    base = DiffusionPipeline.__call__
    for cls in _public_classes():
        if issubclass(cls, DiffusionPipeline) and cls is not DiffusionPipeline:
            assert cls.__call__ is not base and cls.__call__.__code__ is base.__code__
            assert cls.__call__.__defaults__ == base.__defaults__
            assert inspect.signature(cls.__call__) == inspect.signature(base)
