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


# ---------------------------------------------------------------------------------------------
# No import cycle anywhere in the package, deferred imports (inside functions) included


def module_name(path: pathlib.Path, root: pathlib.Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: pathlib.Path = PACKAGE):
    """{module: {fewstep modules it imports}}: an import names the most specific module that exists
    (`from fewstep.pipelines import busy` is fewstep.pipelines.busy; `from fewstep.pipelines import CLASSES`
    is the package)."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = set()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join(base + ([module] if module else []))
                targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module
                           for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph) -> list:
    """Every strongly connected group of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_in_the_package():
    assert cycles(import_graph()) == []


def test_the_cycle_check_sees_a_deferred_cycle(tmp_path):
    package = tmp_path / "fewstep"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from fewstep import b\n")
    (package / "b.py").write_text("def f():\n    from fewstep.a import g\n")
    assert cycles(import_graph(package)) == [["fewstep.a", "fewstep.b"]]
