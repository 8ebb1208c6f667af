"""Modules our dependencies import but this process never calls, loaded at first use instead.

redis-py 5.3 imports PyJWT, and with it much of cryptography, when redis is imported: for a
token (Entra ID) authentication this project does not use. That costs a process about 12 MiB of
memory and 45 ms of start (bench/REPORT.md, "Startup"). The command line (`python -m worker
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


def _load(stand_in: _StandIn) -> types.ModuleType:
    name = stand_in.__name__
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
        stand_in.__spec__ = spec  # what the import system reads of a module it finds here
        sys.modules[name] = stand_in
