"""No import cycles: statically (every ``import`` of a module of the package, at any level,
except ``if TYPE_CHECKING:`` blocks, which never run) and at run time (each module imported
first, with no other module of the package loaded)."""

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import fedlease

SRC = Path(fedlease.__file__).parent.parent


def module_names() -> dict[str, Path]:
    names = {}
    for path in sorted((SRC / "fedlease").rglob("*.py")):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        names[name.removesuffix(".__init__")] = path
    return names


def is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING"))


def imported(tree: ast.AST, package: str):
    """The module names a module's code imports, wherever the import statement is."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    edges = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for target in imported(ast.parse(path.read_text()), package):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
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
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    tree = ast.parse("if TYPE_CHECKING:\n    import x\nelse:\n    import y\nimport z\n")
    assert sorted(imported(tree, "p")) == ["y", "z"]


def test_the_package_has_no_import_cycles():
    assert cycles(import_graph()) == []


def test_every_module_imports_first_in_a_fresh_interpreter():
    # one interpreter; before each module every fedlease module is unloaded, so each is the
    # first of the package to load (third-party packages stay loaded: only speed)
    names = [n for n in module_names()
             if importlib.util.find_spec("flwr") or ".flower" not in n]
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'fedlease']:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as err:\n"
        "        print(f'{name}: {type(err).__name__}: {err}')\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout == ""


def test_the_config_package_imports_nothing_above_it():
    """``fedlease.config`` only reads and type-checks; what needs the registries (algorithms,
    tasks, data sources) is ``fedlease.configure``'s, at any level of the code."""
    above = ("fedlease.algorithms", "fedlease.tasks", "fedlease.data", "fedlease.federation",
             "fedlease.transports", "fedlease.experiments", "fedlease.reporting",
             "fedlease.configure")
    found = {name: sorted(t for t in targets if t.startswith(above))
             for name, targets in import_graph().items() if name.startswith("fedlease.config.")
             or name == "fedlease.config"}
    assert {name: targets for name, targets in found.items() if targets} == {}


# the package's layers, bottom up (docs/architecture.md): a top-level package or module imports
# only those of the layers below its own
LAYERS = [
    {"errors"}, {"config", "registry"}, {"model", "data"}, {"training", "privacy"},
    {"algorithms", "attacks"}, {"tasks"}, {"plugins"}, {"configure"}, {"reporting"},
    {"saved_models"}, {"federation"}, {"transports"}, {"experiments", "inference", "export"},
    {"newcomers"}, {"cli"}, {"__main__"},
]


def test_no_package_imports_a_package_above_it():
    layer = {unit: level for level, units in enumerate(LAYERS) for unit in units}
    units = {name.split(".")[1] for name in module_names() if name.count(".") >= 1}
    assert units == set(layer), "every top-level module and package has a layer"
    upward = sorted(f"{name} -> {target}" for name, targets in import_graph().items()
                    if name.count(".") >= 1 for target in targets if target.count(".") >= 1
                    and layer[target.split(".")[1]] >= layer[name.split(".")[1]]
                    and target.split(".")[1] != name.split(".")[1])
    assert upward == []


def test_the_cli_starts_without_torch():
    """``fedlease --help`` answers at once: the CLI module imports the heavy parts (the
    registries via ``fedlease.configure``, torch) only when a command runs."""
    code = ("import sys, fedlease.cli; "
            "print(sorted(m for m in ('torch', 'fedlease.configure') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(SRC)}, check=True)
    assert out.stdout.strip() == "[]"
