"""Flux futures as awaitables, and coroutines run to the end without a loop.

No asyncio import here: a module without ``async`` handlers never pays
for it (about 9 ms of its load time).  :func:`await_flux_future` runs only
inside a running asyncio loop, when asyncio is already imported.
"""

from __future__ import annotations

import inspect
import sys
import threading
from typing import Any

__all__ = ["await_flux_future", "make_flux_futures_awaitable", "run_to_completion"]


def await_flux_future(future: Any) -> Any:
    """``__await__`` for flux futures: wait in the running loop, return ``get()``."""
    if _SYNC.active:
        return _ready(future.get())
    import asyncio

    loop = asyncio.get_running_loop()
    result: "asyncio.Future[Any]" = loop.create_future()

    def fulfilled(flux_future: Any, *args: Any) -> None:
        if result.done():
            return
        try:
            result.set_result(flux_future.get())
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            result.set_exception(exc)

    future.then(fulfilled)
    return result.__await__()


class _Sync(threading.local):
    """Whether this thread awaits flux futures synchronously (see run_to_completion)."""

    active = False


_SYNC = _Sync()


def run_to_completion(body: Any) -> Any:
    """Run *body* (a coroutine, or a plain value) to the end without the reactor.

    For a module's ``setup`` and ``teardown``: awaiting a flux future waits
    for it synchronously (``get()``), so start-up work finishes before the
    reactor runs and the broker sees the module running.  Awaiting
    anything that needs the reactor (``asyncio.sleep(1)``, an event set by
    a handler) raises RuntimeError saying so.
    """
    if not inspect.iscoroutine(body):
        return body
    make_flux_futures_awaitable()
    previous, _SYNC.active = _SYNC.active, True
    try:
        while True:
            try:
                waited = body.send(None)
            except StopIteration as stop:
                return stop.value
            if waited is not None:  # None: asyncio.sleep(0)
                body.close()
                raise RuntimeError(
                    f"{body.__qualname__} awaited {waited!r}, which needs the reactor running; "
                    f"before the module runs, await only flux futures (RPCs)"
                )
    finally:
        _SYNC.active = previous


def _ready(value: Any) -> Any:
    """An awaitable's iterator that is done at once with *value*."""
    return value
    yield  # pragma: no cover - makes this a generator


def make_flux_futures_awaitable() -> None:
    """Let coroutines ``await`` a flux future (flux-core's, or the in-memory one).

    flux-core's futures have no ``__await__``; one is added to the classes
    already imported (a flux-core release that adds its own keeps it).
    """
    for module_name, class_name in (("flux.future", "Future"), ("flux.membroker._handle", "Future")):
        cls = getattr(sys.modules.get(module_name), class_name, None)
        if cls is not None and "__await__" not in vars(cls):
            cls.__await__ = await_flux_future
