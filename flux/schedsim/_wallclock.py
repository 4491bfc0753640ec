"""The simulation's wall clock, as flux-core's scheduler code reads it.

flux-core's scheduling code reads the time three ways: ``time.time()``
(job end times in ``flux.resource``, forecasts), ``time.monotonic()`` (the
``Scheduler`` base class's burst-coalescing delay) and
``lib.flux_reactor_now()`` (the start time a scheduler stamps on R).  All
three are the real clock, which a simulation on virtual time must not
read.  Nothing of flux-core's is changed: like freezegun, this rebinds
the names a module holds (its ``time`` module, functions imported from
it, ``_flux._core``'s ``lib``) to stand-ins that read the in-memory
broker's virtual clock, for the modules it is given, and restores them on
:meth:`WallClock.restore`.  The library's own code (and the in-memory
broker's hang detection) keeps the real clock.
"""

import sys
import time as _real_time
import types
from typing import Any, Callable, Dict, List, Tuple


class _LibWithVirtualNow:
    """flux-core's ``lib``, but ``flux_reactor_now()`` reads the virtual clock."""

    def __init__(self, lib: Any, now: Callable[[], float]) -> None:
        self._lib = lib
        self.flux_reactor_now = lambda reactor: now()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._lib, name)
        setattr(self, name, value)  # look each name up once
        return value


class WallClock:
    """The virtual wall clock: *epoch* plus the broker's virtual seconds."""

    def __init__(self, now: Callable[[], float], epoch: float) -> None:
        self._now = now
        self.epoch = epoch
        self._undo: List[Tuple[Dict[str, Any], str, Any]] = []
        self.time_module = types.ModuleType("time", _real_time.__doc__)
        vars(self.time_module).update({k: v for k, v in vars(_real_time).items() if not k.startswith("__")})
        overrides = {
            "time": self.time,
            "monotonic": self.monotonic,
            "perf_counter": self.monotonic,
            "time_ns": lambda: int(self.time() * 1e9),
            "monotonic_ns": lambda: int(self.monotonic() * 1e9),
            "perf_counter_ns": lambda: int(self.monotonic() * 1e9),
        }
        vars(self.time_module).update(overrides)
        self._functions = {id(getattr(_real_time, name)): value for name, value in overrides.items()}
        self._lib: Any = None

    def time(self) -> float:
        """Seconds since the epoch, on the virtual clock."""
        return self.epoch + self._now()

    def monotonic(self) -> float:
        """The virtual clock's seconds."""
        return self._now()

    def patch(self, namespace: Dict[str, Any]) -> None:
        """Rebind, in module globals *namespace*, every name that holds the
        real clock (the ``time`` module, a function of it, or libflux's
        ``lib``) to its virtual stand-in."""
        try:
            from _flux._core import lib
        except ImportError:
            lib = None  # no flux-core: no libflux to stand in for
        if self._lib is None and lib is not None:
            self._lib = _LibWithVirtualNow(lib, self.time)
        for name, value in list(namespace.items()):
            if value is _real_time:
                new: Any = self.time_module
            elif lib is not None and value is lib:
                new = self._lib
            elif callable(value) and id(value) in self._functions and value is getattr(_real_time, value.__name__, None):
                new = self._functions[id(value)]
            else:
                continue
            self._undo.append((namespace, name, value))
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
        """Put every rebound name back."""
        while self._undo:
            namespace, name, value = self._undo.pop()
            namespace[name] = value


def _is_ours(module: Any) -> bool:
    """True for this project's modules (which keep the real clock)."""
    import os

    ours = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.abspath(getattr(module, "__file__", "") or "").startswith(ours + os.sep)
