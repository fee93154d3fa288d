"""The package's folders are its layers: a module imports only its own layer and the layers
below it, at module level and inside functions, and no import cycle exists. Also the size
rules: modules under 500 lines, functions under 80."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "search"
# Lowest first. `search._version` sits below everything; `search` (the public API) on top.
LAYERS = ("_version", "config", "models", "budget", "data", "train", "study", "engine", "outputs", "cli", "")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """The layer index of ``search.X...``: X's position in LAYERS (``search`` itself is the top)."""
    first = module.split(".")[1] if "." in module else ""
    return LAYERS.index(first)


def imports_of(path: Path) -> set[str]:
    """Every ``search...`` module ``path`` imports, anywhere in the file (functions included)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
    return {name for name in found if name == "search" or name.startswith("search.")}


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str) -> str:
    """The module an import names: ``search.config.spec`` or, for a name inside one, its module."""
    while name not in MODULES and "." in name:
        name = name.rpartition(".")[0]
    return name


def test_every_folder_is_a_known_layer() -> None:
    unknown = {m for m in MODULES if m != "search" and m.split(".")[1] not in LAYERS}
    assert not unknown, f"modules outside the layers {LAYERS}: {sorted(unknown)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_its_layer_and_those_below(module: str) -> None:
    upward = sorted(
        target
        for target in map(resolve, imports_of(MODULES[module]))
        if target != module and layer_of(target) > layer_of(module)
    )
    assert not upward, f"{module} imports higher layers: {upward}"


def test_there_is_no_import_cycle() -> None:
    edges = {m: {resolve(t) for t in imports_of(p)} - {m} for m, p in MODULES.items()}
    # A package's __init__ may re-export its own submodules; that is not a cycle of meaning.
    edges = {m: {t for t in targets if not t.startswith(m + ".")} for m, targets in edges.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target] if target in path else [node, target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_and_functions_stay_small(module: str) -> None:
    text = MODULES[module].read_text()
    assert len(text.splitlines()) < 500, f"{module} has {len(text.splitlines())} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80
    ]
    assert not long, f"{module}: functions over 80 lines: {long}"


MAX_PARAMETERS = 7  # more travel together: a frozen options object (RunOptions, TrainOptions, SeedOptions, EvalSetup)


def public_parameter_counts(module: str, tree: ast.AST) -> dict[str, int]:
    """Each public function's and method's parameters (``self``/``cls`` not counted), by
    qualified name; functions inside private classes or other functions are not public."""
    counts: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef) and not child.name.startswith("_"):
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if child.name.startswith("_") and child.name != "__init__":
                    continue
                args = child.args
                names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
                names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
                counts[f"{prefix}{child.name}"] = len([n for n in names if n not in ("self", "cls")])

    visit(tree, f"{module}.")
    return counts


def test_public_functions_take_few_parameters() -> None:
    counts = {
        name: count
        for module, path in MODULES.items()
        for name, count in public_parameter_counts(module, ast.parse(path.read_text())).items()
    }
    wide = {name: count for name, count in counts.items() if count > MAX_PARAMETERS}
    assert not wide, f"public functions over {MAX_PARAMETERS} parameters (group them in an options object): {wide}"


def test_the_parameter_count_sees_a_wide_function() -> None:
    """The rule can fail: a public function of eight parameters is counted, a method's ``self`` is not."""
    tree = ast.parse("def f(a, b, *, c, d, e, f, g, h): ...\nclass C:\n    def m(self, a, *rest, **more): ...\n")
    assert public_parameter_counts("m", tree) == {"m.f": 8, "m.C.m": 3}


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule can fail: a config module importing the engine is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from search.engine.run import run_search\n")
    targets = {resolve(t) for t in imports_of(bad)}
    assert targets == {"search.engine.run"} and layer_of("search.engine.run") > layer_of("search.config")


def test_the_lazy_api_is_what_type_checkers_see() -> None:
    """``search``'s names load on first use; its ``TYPE_CHECKING`` imports show IDEs the same
    names from the same modules, and every name resolves."""
    import search

    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    guarded = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    seen = {
        alias.name: node.module for node in guarded.body if isinstance(node, ast.ImportFrom) for alias in node.names
    }
    assert seen == search._API
    for name in search._API:
        assert getattr(search, name) is not None
