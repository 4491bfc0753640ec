"""The simulation's wall clock, as flux-core's scheduler code reads it.

flux-core's scheduling code reads the time three ways: ``time.time()``
(job end times in ``flux.resource``, forecasts), ``time.monotonic()`` (the
``Scheduler`` base class's burst-coalescing delay) and
``lib.flux_reactor_now()`` (the start time a scheduler stamps on R).  All
three are the real clock, which a simulation on virtual time must not
read.  Nothing of flux-core's is changed: like freezegun, this rebinds
the names a module holds (its ``time`` module, functions imported from
it, ``_flux._core``'s ``lib``) to stand-ins, for the modules it is given.
The library's own code (and the in-memory broker's hang detection) keeps
the real clock.

flux-core's modules are shared by every simulation of the process, so
the stand-ins read the clock of the *active* simulation: the one that
last drove its broker (:meth:`WallClock.activate`; only one broker runs
at a time in a thread).  The names are rebound while any simulation is
open, and put back when the last one closes (:meth:`WallClock.restore`).
"""

import os
import sys
import time as _real_time
import types
from typing import Any, Callable, Dict, List, Optional, Tuple

_OPEN: List["WallClock"] = []
_ACTIVE: List[Optional["WallClock"]] = [None]
_UNDO: List[Tuple[Dict[str, Any], str, Any]] = []


def _now_time() -> float:
    clock = _ACTIVE[0]
    return clock.time() if clock is not None else _real_time.time()


def _now_monotonic() -> float:
    clock = _ACTIVE[0]
    return clock.monotonic() if clock is not None else _real_time.monotonic()


_OVERRIDES: Dict[str, Callable[[], Any]] = {
    "time": _now_time,
    "monotonic": _now_monotonic,
    "perf_counter": _now_monotonic,
    "time_ns": lambda: int(_now_time() * 1e9),
    "monotonic_ns": lambda: int(_now_monotonic() * 1e9),
    "perf_counter_ns": lambda: int(_now_monotonic() * 1e9),
}
_TIME_MODULE = types.ModuleType("time", _real_time.__doc__)
vars(_TIME_MODULE).update({k: v for k, v in vars(_real_time).items() if not k.startswith("__")})
vars(_TIME_MODULE).update(_OVERRIDES)
_FUNCTIONS = {id(getattr(_real_time, name)): value for name, value in _OVERRIDES.items()}


class _LibWithVirtualNow:
    """flux-core's ``lib``, but ``flux_reactor_now()`` reads the active simulation's clock."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib

    def flux_reactor_now(self, reactor: Any) -> float:
        clock = _ACTIVE[0]
        return clock.time() if clock is not None else self._lib.flux_reactor_now(reactor)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._lib, name)
        setattr(self, name, value)  # look each name up once
        return value


_LIB: List[Any] = []


def _lib_stand_in() -> Tuple[Any, Any]:
    """flux-core's ``lib`` and its stand-in (None, None without flux-core)."""
    if not _LIB:
        try:
            from _flux._core import lib
        except ImportError:
            _LIB.extend([None, None])
        else:
            _LIB.extend([lib, _LibWithVirtualNow(lib)])
    return _LIB[0], _LIB[1]


class WallClock:
    """One simulation's virtual wall clock: *epoch* plus its broker's virtual seconds."""

    def __init__(self, now: Callable[[], float], epoch: float) -> None:
        self._now = now
        self.epoch = epoch
        _OPEN.append(self)
        self.activate()

    def activate(self) -> None:
        """Make flux-core's code read this clock (call before driving the broker)."""
        _ACTIVE[0] = self

    def time(self) -> float:
        """Seconds since the epoch, on the virtual clock."""
        return self.epoch + self._now()

    def monotonic(self) -> float:
        """The virtual clock's seconds."""
        return self._now()

    def patch(self, namespace: Dict[str, Any]) -> None:
        """Rebind, in module globals *namespace*, every name that holds the
        real clock (the ``time`` module, a function of it, or libflux's
        ``lib``) to its stand-in."""
        lib, stand_in = _lib_stand_in()
        for name, value in list(namespace.items()):
            if value is _real_time:
                new: Any = _TIME_MODULE
            elif lib is not None and value is lib:
                new = stand_in
            elif callable(value) and id(value) in _FUNCTIONS and value is getattr(_real_time, value.__name__, None):
                new = _FUNCTIONS[id(value)]
            else:
                continue
            _UNDO.append((namespace, name, value))
            namespace[name] = new

    def patch_flux_core(self) -> None:
        """Patch flux-core's own Python modules (those imported so far
        from flux-core's ``flux`` package)."""
        import flux

        roots = tuple(getattr(flux, "__path__", ()))
        for name, module in list(sys.modules.items()):
            path = getattr(module, "__file__", None) or ""
            if (name == "flux" or name.startswith("flux.")) and path.startswith(roots) and not _is_ours(module):
                self.patch(vars(module))

    def restore(self) -> None:
        """This simulation is over: once none is left, put every rebound name back."""
        if self in _OPEN:
            _OPEN.remove(self)
        if _ACTIVE[0] is self:
            _ACTIVE[0] = _OPEN[-1] if _OPEN else None
        if not _OPEN:
            while _UNDO:
                namespace, name, value = _UNDO.pop()
                namespace[name] = value


def _is_ours(module: Any) -> bool:
    """True for this project's modules (which keep the real clock)."""
    ours = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.abspath(getattr(module, "__file__", "") or "").startswith(ours + os.sep)
