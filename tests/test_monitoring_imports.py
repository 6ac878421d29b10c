"""The monitoring packages' import graph: no cycle anywhere, rendering reads only result types,
and every module imports on its own in a fresh interpreter state (no hidden import order)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "monitoring"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path) -> set[str]:
    """Monitoring modules `path` imports anywhere (module level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from monitoring.drift import report` imports the module monitoring.drift.report
            names = [
                f"{node.module}.{alias.name}"
                if f"{node.module}.{alias.name}" in MODULES
                else node.module
                for alias in node.names
            ]
        else:
            continue
        found.update(name for name in names if name in MODULES)
    return found


GRAPH = {name: imports_of(path) - {name} for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle as a list of modules, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_the_packages() -> None:
    assert {"monitoring.drift.detection", "monitoring.closed_loop.cycle"} <= set(MODULES)
    assert "monitoring.drift.results" in GRAPH["monitoring.drift.report"]
    assert "monitoring.drift.detection" in GRAPH["monitoring.closed_loop.cycle"]


def test_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_monitoring() -> None:
    assert find_cycle(GRAPH) is None


@pytest.mark.parametrize("module", ["monitoring.drift.report", "monitoring.drift.push"])
def test_rendering_and_pushing_import_only_result_types(module: str) -> None:
    assert GRAPH[module] <= {
        "monitoring.drift.results",
        "monitoring.quality.results",
        "monitoring.performance.results",
    }


@pytest.mark.parametrize("module", ["monitoring.rollout.report", "monitoring.rollout.push"])
def test_rollout_rendering_and_pushing_import_only_its_result_types(module: str) -> None:
    assert GRAPH[module] <= {"monitoring.rollout.results"}


def test_the_old_report_path_is_only_a_pointer() -> None:
    assert GRAPH["monitoring.report"] == {"monitoring.drift.report"}


def test_result_types_depend_on_nothing_but_result_types() -> None:
    results = {name for name in MODULES if name.endswith(".results")}
    for name in results:
        assert GRAPH[name] <= results, name


def test_only_entry_points_import_a_cli() -> None:
    clis = {name for name in MODULES if name.endswith(".cli")}
    entry_points = {"monitoring.drift_detector", "monitoring.closed_loop"}
    for name, targets in GRAPH.items():
        if targets & clis:
            assert name.endswith("__main__") or name in entry_points, name


def test_every_module_imports_first_in_a_fresh_state() -> None:
    """Each module imported before any other monitoring module, as an entry point would."""
    names = sorted(n for n in MODULES if not n.endswith("__main__"))
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'monitoring']:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
        "print('ok', len(" + repr(names) + "))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")


@pytest.mark.parametrize(
    "module", ["monitoring.drift_detector", "monitoring.drift", "monitoring.closed_loop"]
)
def test_entry_points_run_with_python_dash_m(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "exit codes:" in done.stdout
