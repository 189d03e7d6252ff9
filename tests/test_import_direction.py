"""The layers import downwards only: `fewstep/core` (NumPy and the standard library) imports nothing from
`fewstep.backends` or `fewstep.pipelines`, nor a framework or diffusers; `fewstep/backends` imports
nothing from `fewstep.pipelines`; `fewstep/info` imports no framework and nothing from `fewstep.backends`.
Read from the source, so an import inside a function counts too."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "fewstep"
FRAMEWORKS = ("torch", "mindspore", "diffusers", "mindone", "transformers", "peft", "accelerate")
RULES = {
    "core": ("fewstep.backends", "fewstep.pipelines", "fewstep.testing", "fewstep.cli", "fewstep.utils") + FRAMEWORKS,
    "backends": ("fewstep.pipelines", "fewstep.testing", "fewstep.cli"),
    # `fewstep info` reads headers and JSON only: no framework, not even through the backends
    "info": ("fewstep.backends", "fewstep.testing", "fewstep.cli") + FRAMEWORKS,
}


def imported_modules(path: pathlib.Path):
    """(line, module) for every import statement in a file, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            if module == "fewstep":  # `from fewstep import backends` imports a subpackage
                for alias in node.names:
                    yield node.lineno, f"fewstep.{alias.name}"
            else:
                yield node.lineno, module


def violations(layer: str):
    found = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for line, module in imported_modules(path):
            for banned in RULES[layer]:
                if module == banned or module.startswith(banned + "."):
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    return found


@pytest.mark.parametrize("layer", sorted(RULES))
def test_layers_import_downwards_only(layer):
    assert not violations(layer), "upward or framework imports:\n" + "\n".join(violations(layer))


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    # The rule must be able to fail: a core module importing the backends is reported.
    core = tmp_path / "fewstep" / "core"
    core.mkdir(parents=True)
    (core / "bad.py").write_text("import numpy\n\ndef f():\n    from ..backends import get_backend\n")
    monkeypatch.setitem(globals(), "PACKAGE", tmp_path / "fewstep")
    assert violations("core") == ["fewstep/core/bad.py:4 imports fewstep.backends"]
