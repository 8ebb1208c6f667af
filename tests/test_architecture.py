"""The layout's rules, checked on the source: imports go one way, one module talks to Redis, one
package writes the bookkeeping tables, and the runner's packages form no cycle."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNNER_AND_JOBS = ("core", "worker", "jobs")
BOOKKEEPING_TABLES = ("job_spool", "durable_jobs", "dead_letters", "inline_outcomes")


def _modules() -> dict[str, Path]:
    found = {"settings": ROOT / "settings.py"}
    for top in RUNNER_AND_JOBS:
        for path in (ROOT / top).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(module imported, line, inside a function?) for each import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    nested: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            nested.update(id(inner) for inner in ast.walk(node) if inner is not node)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno, id(node) in nested) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, node.lineno, id(node) in nested))
    return out


def _ours(module: str) -> bool:
    return module == "settings" or module.split(".")[0] in RUNNER_AND_JOBS


def test_only_the_backend_imports_redis() -> None:
    offenders = [
        f"{name}:{line} imports {imported}"
        for name, path in MODULES.items()
        for imported, line, _ in _imports(path)
        if imported.split(".")[0] in ("redis", "hiredis") and not name.startswith("worker.backend")
    ]
    assert offenders == []


def test_the_core_imports_nothing_of_ours_but_settings() -> None:
    offenders = [
        f"{name}:{line} imports {imported}"
        for name, path in MODULES.items()
        if name.split(".")[0] == "core"
        for imported, line, _ in _imports(path)
        if _ours(imported) and imported != "settings" and not imported.startswith("core")
    ]
    assert offenders == []


def test_job_families_import_only_the_core_settings_and_jobs() -> None:
    offenders = [
        f"{name}:{line} imports {imported}"
        for name, path in MODULES.items()
        if name.split(".")[0] == "jobs"
        for imported, line, _ in _imports(path)
        if _ours(imported) and imported.split(".")[0] not in ("core", "jobs", "settings")
    ]
    assert offenders == []


def test_the_runner_reaches_job_families_only_through_the_registry() -> None:
    offenders = [
        f"{name}:{line} imports {imported}"
        for name, path in MODULES.items()
        if name.split(".")[0] == "worker"
        for imported, line, _ in _imports(path)
        if imported.startswith("jobs.")
    ]
    assert offenders == []


# The command line reads its arguments first and imports the commands' module after (so `--help`
# answers at once), which imports a few commands' modules (the HTTP service, the doctor, the demo)
# and the worker's engine when that command runs: a worker or an enqueue does not carry what it
# does not use (issue 18). Entry points that only `worker.__main__` and each other import cannot
# be part of a cycle.
COMMAND_LINE = ("worker.ops.cli", "worker.ops.commands")
_LAZY_FOR_COMMANDS = ("worker.ops", "worker.engine")


def test_no_imports_hidden_in_functions() -> None:
    # Imports inside functions are how a cycle gets dodged; the layout has none to dodge.
    offenders = [
        f"{name}:{line} imports {imported} inside a function"
        for name, path in MODULES.items()
        for imported, line, nested in _imports(path)
        if nested
        and _ours(imported)
        and not (name in COMMAND_LINE and imported.startswith(_LAZY_FOR_COMMANDS))
    ]
    assert offenders == []
    for entry, only_importer in zip(COMMAND_LINE, ("worker.__main__", "worker.ops.cli"), strict=True):
        importers = [
            name for name, path in MODULES.items() if any(imp == entry for imp, _, _ in _imports(path))
        ]
        assert importers == [only_importer]


def test_only_the_ledger_writes_the_bookkeeping_tables() -> None:
    offenders = []
    for name, path in MODULES.items():
        if name.startswith("worker.ledger"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                sql = node.value.lower()
                offenders += [f"{name}:{node.lineno} mentions {t}" for t in BOOKKEEPING_TABLES if t in sql]
    assert offenders == []


def _package_of(module: str) -> str:
    """The runner's unit a module belongs to: `worker.backend`, `worker.runtime`, `core`, `jobs`..."""
    parts = module.split(".")
    if parts[0] == "worker" and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


def test_packages_import_one_way() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in MODULES.items():
        if name == "worker":  # the public facade re-exports; nothing imports it from inside
            continue
        for imported, _, _ in _imports(path):
            if _ours(imported) and _package_of(imported) != _package_of(name):
                edges[_package_of(name)].add(_package_of(imported))
    assert "worker" not in {target for targets in edges.values() for target in targets}
    # Depth-first search for a cycle among the packages.
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycle.extend([*path, node, target])
                return True
            if state.get(target) is None and visit(target, [*path, node]):
                return True
        state[node] = 2
        return False

    for node in sorted(edges):
        if state.get(node) is None and visit(node, []):
            break
    assert cycle == [], " -> ".join(cycle)
    # The data flow the README's layout describes.
    assert "worker.engine" not in edges["worker.producer"]
    assert (
        "worker.producer" not in edges["worker.backend"] | edges["worker.ledger"] | edges["worker.execution"]
    )
    assert {"worker.ops", "worker.engine", "worker.producer"}.isdisjoint(edges["core"] | edges["jobs"])
