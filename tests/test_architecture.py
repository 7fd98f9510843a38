"""The package's shape, read statically with `ast` (no module of diffguide is imported here).

Every module under src/diffguide belongs to one layer of `LAYERS` and imports only from its own layer or
lower ones; no two modules import each other, directly or around a loop; functions fit on a screen.
Imports are read wherever they are written (module level and inside functions alike: a function-level
import does not hide a dependency). The checker is tested on small fake packages at the end, so a green
run here means the rules hold, not that the checker is blind.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "diffguide"

# Layer -> module patterns, relative to the package. "x.*" is the package x and everything under it;
# "x" is that module alone; "__init__" is the top diffguide/__init__.py. The longest matching pattern
# wins, and every module must match one: a new module is placed here when it is added.
LAYERS: dict[int, tuple[str, ...]] = {
    0: ("errors", "io"),
    # the maths
    1: ("denoiser", "processes", "grids", "noise", "mixtures", "losses", "conditioning", "optim"),
    # `models` (the package __init__, a docstring) sits with its nets so importing them stays cheap
    2: (
        "samplers.*",
        "guidance.combinators",
        "guidance.methods",
        "guidance.frequency",
        "guidance.cfgpp",
        "guidance.perturbed",
        "guidance",
        "models",
        "models.nets.*",
    ),
    3: ("config.*", "data.*", "models.build", "models.runs", "classifiers.*", "train.*"),
    4: ("guidance.spec", "guidance.pairing", "metrics.*", "plots.*", "adapters.*"),
    5: ("study.*",),
    6: ("cli.*", "dashboard.*", "__main__", "__init__"),
}

MAX_FUNCTION_LINES = 80


# ---------------------------------------------------------------------------------------------------
# the checker


def find_modules(src: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package __init__) for every .py file under src/package."""
    modules = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        is_init = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_init else parts)] = (path, is_init)
    return modules


def _known(name: str, modules: dict) -> str | None:
    """The module `name` names, or the nearest enclosing one (`pkg.mod.attr` -> `pkg.mod`)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _targets(module: str, is_init: bool, node: ast.AST, modules: dict) -> list[str]:
    """The package modules an import statement (or `importlib.import_module("...")`) depends on."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".") if is_init else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            stem = ".".join(base + ([node.module] if node.module else []))
        else:
            stem = node.module or ""
        # `from pkg import sub` depends on the submodule; `from pkg import name` on pkg's __init__
        names = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem for a in node.names]
    elif (
        isinstance(node, ast.Call)
        and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        names = [node.args[0].value]
    else:
        return []
    return [t for t in (_known(n, modules) for n in names) if t and t != module]


def import_edges(src: Path, package: str) -> dict[str, dict[str, int]]:
    """Module -> {imported package module: line of the first such import}, read with `ast`."""
    modules = find_modules(src, package)
    edges: dict[str, dict[str, int]] = {}
    for module, (path, is_init) in modules.items():
        found: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for target in _targets(module, is_init, node, modules):
                found[target] = min(found.get(target, node.lineno), node.lineno)
        edges[module] = found
    return edges


def find_cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Groups of modules that import each other around a loop (Tarjan's strongly connected components).

    A package __init__ importing its own children is not a cycle (that is how a package re-exports).
    """
    graph = {
        module: [t for t in targets if t in edges and not t.startswith(module + ".")]
        for module, targets in edges.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def shortest_loop(edges: dict[str, dict[str, int]], component: list[str]) -> str:
    """One import loop inside a cycle, as 'a -> b (line 3) -> a (line 7)', found breadth first."""
    start, inside = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    for module in queue:
        for target in sorted(edges[module]):
            if target.startswith(module + "."):  # a package __init__ importing its children
                continue
            if target == start:
                loop = [*paths[module], start]
                return " -> ".join([loop[0]] + [f"{b} (line {edges[a][b]})" for a, b in zip(loop, loop[1:])])
            if target in inside and target not in paths:
                paths[target] = [*paths[module], target]
                queue.append(target)
    return " <-> ".join(component)


def layer_of(module: str, package: str, layers: dict[int, tuple[str, ...]]) -> tuple[int, str] | None:
    """(layer, pattern) of the longest pattern in `layers` that matches `module`, or None."""
    relative = "__init__" if module == package else module.removeprefix(package + ".")
    matches = [
        (len(pattern.removesuffix(".*")), layer, pattern)
        for layer, patterns in layers.items()
        for pattern in patterns
        if relative == pattern.removesuffix(".*")
        or (pattern.endswith(".*") and relative.startswith(pattern.removesuffix("*")))
    ]
    return max(matches)[1:] if matches else None


def unplaced_modules(src: Path, package: str, layers: dict[int, tuple[str, ...]]) -> list[str]:
    """Modules that no pattern of `layers` matches."""
    return [m for m in find_modules(src, package) if layer_of(m, package, layers) is None]


def layer_violations(src: Path, package: str, layers: dict[int, tuple[str, ...]]) -> list[str]:
    """One message per import of a module from a higher layer."""
    problems = []
    for module, targets in import_edges(src, package).items():
        own = layer_of(module, package, layers)
        for target, line in sorted(targets.items()):
            other = layer_of(target, package, layers)
            if own and other and other[0] > own[0]:
                problems.append(
                    f"{module} (layer {own[0]}, {own[1]}) imports {target} (layer {other[0]}, "
                    f"{other[1]}) at line {line}: a module imports only from its own layer or lower ones"
                )
    return problems


def long_functions(src: Path, package: str, limit: int) -> list[str]:
    """'module:function (N lines)' for each function longer than `limit` lines (docstring included)."""
    found = []
    for module, (path, _) in find_modules(src, package).items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{module}:{node.name} ({lines} lines)")
    return sorted(found)


# ---------------------------------------------------------------------------------------------------
# the rules, on diffguide


def test_layer_table_names_each_pattern_once():
    patterns = [p for group in LAYERS.values() for p in group]
    repeated = sorted({p for p in patterns if patterns.count(p) > 1})
    assert not repeated, f"patterns placed in more than one layer: {repeated}"


def test_every_module_has_a_layer():
    missing = unplaced_modules(SRC, PACKAGE, LAYERS)
    assert not missing, (
        f"modules in no layer: {missing}; place each in LAYERS in {Path(__file__).name} "
        "(the lowest layer whose modules it needs)"
    )


def test_no_import_cycles():
    edges = import_edges(SRC, PACKAGE)
    cycles = find_cycles(edges)
    assert not cycles, "modules that import each other around a loop (one loop of each group):\n" + "\n".join(
        f"{len(c)} modules: {shortest_loop(edges, c)}" for c in cycles
    )


def test_imports_respect_layers():
    problems = layer_violations(SRC, PACKAGE, LAYERS)
    assert not problems, "imports from a higher layer:\n" + "\n".join(problems)


def test_functions_fit_on_a_screen():
    found = long_functions(SRC, PACKAGE, MAX_FUNCTION_LINES)
    assert not found, f"functions longer than {MAX_FUNCTION_LINES} lines: {found}"


# ---------------------------------------------------------------------------------------------------
# the checker has teeth: fake packages that break each rule

FAKE_LAYERS = {0: ("base",), 1: ("mid.*",), 2: ("top",)}


def write_package(root: Path, files: dict[str, str]) -> Path:
    """Write `files` ({path under fake/: source}) into root/fake and return root (the src folder)."""
    for name, text in {"__init__.py": "", **files}.items():
        path = root / "fake" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_passes_a_clean_package(tmp_path):
    src = write_package(
        tmp_path,
        {
            "base.py": "X = 1\n",
            "mid/__init__.py": "from fake.mid.a import f\n",  # an __init__ re-exporting: no cycle
            "mid/a.py": "from fake.base import X\n\ndef f():\n    from .b import g\n    return g\n",
            "mid/b.py": "from ..base import X\n\ndef g():\n    return X\n",
            "top.py": "import fake.mid.a\n",
        },
    )
    layers = {**FAKE_LAYERS, 2: ("top", "__init__")}
    assert find_cycles(import_edges(src, "fake")) == []
    assert layer_violations(src, "fake", layers) == []
    assert unplaced_modules(src, "fake", layers) == []


def test_checker_reports_a_cycle_through_a_function_level_import(tmp_path):
    src = write_package(
        tmp_path,
        {
            "mid/__init__.py": "",
            "mid/a.py": "from fake.mid.b import g\n",
            "mid/b.py": "def g():\n    from . import c\n",
            "mid/c.py": "def h():\n    from fake.mid import a\n",
        },
    )
    edges = import_edges(src, "fake")
    assert find_cycles(edges) == [["fake.mid.a", "fake.mid.b", "fake.mid.c"]]
    assert shortest_loop(edges, ["fake.mid.a", "fake.mid.b", "fake.mid.c"]) == (
        "fake.mid.a -> fake.mid.b (line 1) -> fake.mid.c (line 2) -> fake.mid.a (line 2)"
    )


def test_checker_reports_a_layer_violation_naming_both_modules_and_layers(tmp_path):
    src = write_package(
        tmp_path,
        {
            "base.py": "def f():\n    from .mid.a import g\n",  # layer 0 reaching up to layer 1
            "mid/__init__.py": "",
            "mid/a.py": "def g():\n    pass\n",
            "top.py": "from fake import base\n",
        },
    )
    assert layer_violations(src, "fake", FAKE_LAYERS) == [
        "fake.base (layer 0, base) imports fake.mid.a (layer 1, mid.*) at line 2: "
        "a module imports only from its own layer or lower ones"
    ]


def test_checker_reports_a_module_in_no_layer(tmp_path):
    src = write_package(tmp_path, {"base.py": "", "stray.py": "", "mid/__init__.py": ""})
    assert unplaced_modules(src, "fake", FAKE_LAYERS) == ["fake", "fake.stray"]


def test_checker_measures_function_length(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(80))
    src = write_package(tmp_path, {"long.py": f"def long():\n{body}", "short.py": "def short():\n    pass\n"})
    assert long_functions(src, "fake", 80) == ["fake.long:long (81 lines)"]
