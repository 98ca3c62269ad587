"""The code's layering, checked from its source.

- The trace analyser (:mod:`traceattr`, and ``voxline trace`` on top of it) is pure Python:
  importing it pulls in neither the OpenTelemetry SDK nor its exporters, grpc, protobuf or
  torch. Of :mod:`telemetry` it uses only the pure modules shared with the emitting side,
  :mod:`telemetry.names` and the OTLP/JSON reader :mod:`telemetry.otlp_json`.
- :mod:`telemetry` keeps its public names, but imports them on first use, so importing one
  of its pure modules runs no SDK code.
- No import cycles among the hand-written modules, counting imports inside functions and
  under ``TYPE_CHECKING`` too (a cycle is a cycle in the design even where it does not break
  at import time).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: Top-level directories holding hand-written code; those that are packages are walked.
TOP_LEVEL = ("services", "telemetry", "traceattr", "bench", "training", "deploy")
#: Modules whose import means the process loaded the telemetry *emitting* stack or a runtime.
HEAVY = ("opentelemetry.sdk", "opentelemetry.exporter", "grpc", "google.protobuf", "torch")
#: The only telemetry modules the analyser may import (both pure, stdlib only).
SHARED_WITH_TRACEATTR = frozenset({"telemetry.names", "telemetry.otlp_json"})


def _loaded_after(code: str) -> list[str]:
    """Names in ``sys.modules`` of a fresh interpreter after it ran ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


def _heavy(loaded: list[str]) -> list[str]:
    return [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY)]


def test_the_trace_analyser_imports_no_sdk_grpc_or_torch() -> None:
    code = (
        "import importlib, pkgutil, traceattr\n"
        "for info in pkgutil.walk_packages(traceattr.__path__, 'traceattr.'):\n"
        "    importlib.import_module(info.name)\n"
        "import services.cli.trace\n"
    )
    loaded = _loaded_after(code)
    assert "traceattr.parse" in loaded and "services.cli.trace" in loaded
    assert _heavy(loaded) == []


def test_the_shared_telemetry_modules_import_no_sdk() -> None:
    loaded = _loaded_after("import telemetry.names, telemetry.otlp_json")
    assert _heavy(loaded) == []
    assert "telemetry.sdk" not in loaded


def test_telemetry_keeps_its_public_names() -> None:
    code = (
        "import telemetry\n"
        "missing = [n for n in telemetry.__all__ if getattr(telemetry, n, None) is None]\n"
        "assert not missing, missing\n"
        "from telemetry import init_telemetry\n"
        "from telemetry.sdk import init_telemetry as direct\n"
        "assert init_telemetry is direct\n"
    )
    assert "telemetry.sdk" in _loaded_after(code)


# ---------------------------------------------------------------------------------------------
# The import graph
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Module:
    name: str
    path: Path
    is_package: bool


def _modules() -> dict[str, _Module]:
    """Every module of the hand-written packages (a ``.py`` file each of whose directories,
    from the top level down, has an ``__init__.py``)."""
    found: dict[str, _Module] = {}
    for top in TOP_LEVEL:
        if not (REPO / top / "__init__.py").exists():
            continue  # scripts, not a package (deploy/)
        for path in sorted((REPO / top).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if not all(
                (REPO.joinpath(*parts[:i]) / "__init__.py").exists() for i in range(1, len(parts))
            ):
                continue
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            found[name] = _Module(name, path, is_package)
    return found


def _imported_names(module: _Module) -> Iterator[str]:
    """Absolute dotted names ``module`` imports anywhere (top level, functions, TYPE_CHECKING):
    ``from a import b`` gives ``a.b`` (a submodule or a name in ``a``)."""
    tree = ast.parse(module.path.read_text(encoding="utf-8"), str(module.path))
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _import_graph() -> dict[str, set[str]]:
    """In-repo module -> the in-repo modules it imports (each name resolved to its longest
    in-repo prefix: ``from telemetry import names`` is ``telemetry.names``, ``from telemetry
    import init_telemetry`` is ``telemetry``)."""
    modules = _modules()

    def resolve(dotted: str) -> str | None:
        parts = dotted.split(".")
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in modules:
                return candidate
        return None

    graph: dict[str, set[str]] = {}
    for name, module in modules.items():
        targets = {resolve(n) for n in _imported_names(module)}
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component of more than one module
    (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first)."""
    start = min(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child not in came_from:
                    came_from[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle in component {sorted(component)}")  # pragma: no cover


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_sees_lazy_and_type_checking_imports() -> None:
    graph = _import_graph()
    assert "telemetry.grpc" in graph["telemetry.sdk"]  # imported inside a method
    assert "telemetry.sdk" in graph["telemetry"]  # under TYPE_CHECKING (lazy at run time)
    assert "traceattr" in graph["services.cli.trace"]


def test_no_import_cycles() -> None:
    cycles = _cycles(_import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    ("package", "allowed"),
    [
        # The analyser builds on the emitting side's pure modules only.
        ("traceattr", SHARED_WITH_TRACEATTR),
        # The emission library is the lowest layer: it imports no other in-repo package.
        ("telemetry", frozenset()),
    ],
)
def test_layering(package: str, allowed: frozenset[str]) -> None:
    graph = _import_graph()
    outside = {
        f"{name} -> {target}"
        for name, targets in graph.items()
        if name == package or name.startswith(package + ".")
        for target in targets
        if target.split(".")[0] != package and target not in allowed
    }
    assert not outside, sorted(outside)
