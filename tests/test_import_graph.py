"""The package's import graph has no cycles, function-level imports included.

Every ``import`` and ``from ... import`` statement anywhere in a module (top level, inside a
function, under ``TYPE_CHECKING``) is an edge from that module to the module it names; a
``from package import name`` where ``name`` is a submodule is an edge to the submodule. An import
of ``minibnn.a.b`` is also an edge to the package ``minibnn.a`` (its ``__init__`` runs first),
except the root package's, whose ``minibnn.load`` imports the engine lazily on purpose. A cycle
means two modules need each other, which a function-level import only hides. A second test
imports every module first, in a fresh interpreter state, as a user's script would.
"""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "minibnn"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """module -> the minibnn modules it imports (anywhere in its source)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            for t in targets:
                while t and t not in modules:          # a name inside a module: the module
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
                # importing minibnn.a.b first runs the package minibnn.a (its __init__); the
                # root package's __init__ (minibnn.load, lazy by design) is left out
                parent = t.rpartition(".")[0]
                while parent and parent != "minibnn":
                    if parent != name and not name.startswith(parent + "."):  # not our own
                        graph[name].add(parent)
                    parent = parent.rpartition(".")[0]
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_graph_reads_function_level_imports() -> None:
    graph = import_graph()
    assert "minibnn.kernels.registry" in graph["minibnn.kernels.cpu"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_module_imports_first() -> None:
    """Each module as the first minibnn import of a process (a partially initialised module
    shows up here as an ImportError, whatever the static graph says)."""
    import subprocess
    import sys

    names = sorted(m for m in _modules() if not m.endswith("__main__"))   # those run commands
    if importlib.util.find_spec("torch") is None:    # minibnn.torch needs it (tested alone)
        names = [m for m in names if not m.startswith("minibnn.torch")]
    script = (
        "import importlib, sys\n"
        f"names = {names!r}\n"
        "failed = []\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m == 'minibnn' or m.startswith('minibnn.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(failed))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=PACKAGE.parent, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", out.stdout
