"""Jobs of your own, from modules named in JOB_MODULES (or the CLI's `--jobs`): no edit of
`jobs/__init__.py` needed.

An extra module binds its jobs at module level, as `jobs/__init__.py` does:

    send_report = define(send_report_job, timeout=120, queue="bulk")
    REPORT_JOBS = [define(a), define(b)]          # a list or tuple of definitions works too

Every `JobDefinition` so bound joins the registry, in the module's order. A module that cannot
be imported, binds no job, or names a job already registered is a `JobModuleError` that names
the setting, the module and the fix.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from core.errors import JobModuleError
from core.registry import JobDefinition

__all__ = ["definitions_in", "load_job_modules"]

SOURCE = "JOB_MODULES"


def definitions_in(module: ModuleType) -> list[JobDefinition[Any, Any]]:
    """The job definitions a module binds at module level (alone, or in a list or tuple)."""
    found: list[JobDefinition[Any, Any]] = []
    for value in vars(module).values():
        items = value if isinstance(value, list | tuple) else [value]
        found += [item for item in items if isinstance(item, JobDefinition) and item not in found]
    return found


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise JobModuleError(
                f"{SOURCE}: no module named {name!r}; check the spelling, and run from the folder that "
                "holds it or add that folder to PYTHONPATH (or install its package)"
            ) from exc
        raise JobModuleError(
            f"{SOURCE}: module {name!r} could not be imported: {exc}; install what it needs, or remove "
            f"it from {SOURCE}"
        ) from exc
    except Exception as exc:  # its own code failed at import: a SyntaxError, a bad define(...)
        raise JobModuleError(
            f"{SOURCE}: module {name!r} failed while importing: {type(exc).__name__}: {exc}; fix the "
            f"module, or remove it from {SOURCE}"
        ) from exc


def load_job_modules(names: tuple[str, ...]) -> list[JobDefinition[Any, Any]]:
    """Import each module and return the definitions they bind; raises `JobModuleError`."""
    found: list[JobDefinition[Any, Any]] = []
    for name in names:
        definitions = definitions_in(_import(name))
        if not definitions:
            raise JobModuleError(
                f"{SOURCE}: module {name!r} defines no jobs; bind each at module level "
                f"(my_job = define(my_job_func)), or remove it from {SOURCE}"
            )
        found += definitions
    return found
