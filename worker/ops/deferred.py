"""Modules our dependencies import but this process never calls, loaded at first use instead.

redis-py 5.3 imports PyJWT, and with it much of cryptography, when redis is imported: for a
token (Entra ID) authentication this project does not use. That costs a process about 12 MiB of
memory and 40 ms of start (bench/REPORT.md, "Startup"). The command line (`python -m worker
...`) puts a stand-in for such a module in `sys.modules` before anything imports redis. The
stand-in loads the real module at the first attribute anyone reads from it (a job module of
your own that uses PyJWT gets the real one) and then becomes it.

Only the processes the command line starts do this: an application that imports the producer
keeps its `sys.modules` as it is.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from typing import Any

__all__ = ["DEFERRED", "defer"]

# Imported by redis-py at import time, used only by its token authentication.
DEFERRED = ("jwt",)


class _StandIn(types.ModuleType):
    """In `sys.modules` until first used; then the real module, with its attributes copied in."""

    def __getattr__(self, name: str) -> Any:  # only for attributes the stand-in lacks
        real = _load(self)
        return getattr(real, name)


_loading = threading.Lock()  # sync jobs run in threads: one of them loads the real module


def _load(stand_in: _StandIn) -> types.ModuleType:
    name = stand_in.__name__
    with _loading:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
        real = importlib.import_module(name)
        stand_in.__dict__.update(real.__dict__)  # holders of the stand-in now read the real names
    return real


def defer(names: tuple[str, ...] = DEFERRED) -> None:
    """Put stand-ins in `sys.modules`; nothing for a module imported already or not installed."""
    for name in names:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None:
            continue
        stand_in = _StandIn(name)
        # What the import system and tools read of a module without using it: a first
        # `import jwt.exceptions` finds the package's path here and loads only that submodule,
        # once, where the real package will find it too.
        stand_in.__spec__ = spec
        stand_in.__loader__ = spec.loader
        stand_in.__package__ = name
        stand_in.__file__ = spec.origin
        if spec.submodule_search_locations is not None:
            stand_in.__path__ = list(spec.submodule_search_locations)
        sys.modules[name] = stand_in
