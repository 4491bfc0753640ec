"""An asyncio event loop that runs on a module's flux reactor.

The flux reactor stays the module's main loop (``BrokerModule.run()``
runs it, and everything that stops it keeps working: ``stop()``,
``flux module remove``, SIGTERM).  :class:`ReactorLoop` is an asyncio
loop stepped from inside it, following the prepare/idle pattern that
flux-core's watchers document: before the reactor would block, a prepare
watcher runs one asyncio iteration, keeps an idle watcher started while
asyncio has callbacks ready (so the reactor polls instead of blocking),
and arms a timer for asyncio's next scheduled callback.  The prepare
watcher itself runs only while asyncio has work (``call_soon``,
``call_at`` and fd events start it), so an idle loop costs the reactor
nothing.  File descriptors asyncio watches become flux fd watchers.
:meth:`ReactorLoop.start_task` runs a new task's first step at once.  So
``asyncio.sleep``, queues,
events, ``gather`` and asyncio libraries work in a module, and while one
handler awaits, the reactor goes on serving others.

The loop's clock is the reactor's (``flux_reactor_now``): on the
in-memory broker that is the virtual clock, so awaits stay deterministic.

Stepping one iteration uses ``BaseEventLoop._run_once`` and reads
``_ready`` and ``_scheduled``, private to asyncio but unchanged from
Python 3.9 to 3.13; the tests exercise them on every supported version.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from flux._awaitable import make_flux_futures_awaitable
from flux._libflux import reactor_clock

# FLUX_POLLIN / FLUX_POLLOUT (libflux), so no flux-core import is needed.
_POLLIN = 1
_POLLOUT = 2


class _ReactorSelector(selectors.BaseSelector):
    """A selector whose waiting is done by the flux reactor's fd watchers.

    ``select()`` never blocks: it hands over the events the watchers
    recorded since the last call.
    """

    def __init__(self, h: Any, on_event: Callable[[], None]) -> None:
        self._h = h
        self._on_event = on_event
        self._keys: Dict[int, selectors.SelectorKey] = {}
        self._watchers: Dict[int, Any] = {}
        self._ready: Dict[int, int] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = _fileno(fileobj)
        if fd in self._keys:
            raise KeyError(f"{fileobj!r} is already registered")
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fd] = key
        flux_events = (_POLLIN if events & selectors.EVENT_READ else 0) | (
            _POLLOUT if events & selectors.EVENT_WRITE else 0
        )
        watcher = self._h.fd_watcher_create(fd, self._on_fd, events=flux_events)
        watcher.start()
        self._watchers[fd] = watcher
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = _fileno(fileobj)
        key = self._keys.pop(fd)
        watcher = self._watchers.pop(fd)
        watcher.stop()
        watcher.destroy()
        self._ready.pop(fd, None)
        return key

    def _on_fd(self, h: Any, watcher: Any, fd: int, revents: int, arg: Any) -> None:
        key = self._keys.get(fd)
        if key is None:
            return
        events = (selectors.EVENT_READ if revents & _POLLIN else 0) | (
            selectors.EVENT_WRITE if revents & _POLLOUT else 0
        )
        self._ready[fd] = self._ready.get(fd, 0) | (events & key.events)
        self._on_event()

    def select(self, timeout: Optional[float] = None) -> List[Tuple[selectors.SelectorKey, int]]:
        ready = [(self._keys[fd], events) for fd, events in self._ready.items() if fd in self._keys]
        self._ready.clear()
        return ready

    def has_events(self) -> bool:
        """True if an fd watcher fired since the last :meth:`select`."""
        return bool(self._ready)

    def get_map(self) -> Any:
        return dict(self._keys)

    def close(self) -> None:
        for fd in list(self._keys):
            self.unregister(fd)


def _fileno(fileobj: Any) -> int:
    return fileobj if isinstance(fileobj, int) else int(fileobj.fileno())


class ReactorLoop(asyncio.SelectorEventLoop):  # type: ignore[misc,valid-type]
    """An asyncio loop stepped by handle *h*'s reactor (see the module doc)."""

    def __init__(self, h: Any) -> None:
        make_flux_futures_awaitable()
        self._h = h
        self._now = reactor_clock(h)
        self._reactor_selector = _ReactorSelector(h, self._wake)
        # The prepare watcher runs only while asyncio has work: started
        # by call_soon/call_at and fd events, stopped when all is done.
        self._prepare_started = False
        self._first_step: Optional[List[Tuple[Any, Any, Any]]] = None
        self._live_tasks: Set["asyncio.Task[Any]"] = set()
        try:
            super().__init__(self._reactor_selector)
        except OSError:  # EMFILE making asyncio's self-pipe: nothing to close later
            self._closed = True
            raise
        self._prepare = h.prepare_watcher_create(self._before_block)
        self._idle = h.idle_watcher_create()
        self._idle_started = False
        self._wakeup = h.timer_watcher_create(0.0, _nothing)
        self._wakeup_at: Optional[float] = None
        for watcher in (self._prepare, self._idle, self._wakeup):
            watcher.unref()  # asyncio alone does not keep the reactor running
        self._wake()

    def _wake(self) -> None:
        if not self._prepare_started:
            self._prepare_started = True
            self._prepare.start()

    def call_soon(self, callback: Any, *args: Any, context: Any = None) -> Any:
        """asyncio's ``call_soon``; the reactor steps the loop before it next blocks."""
        first_step = self._first_step
        if first_step is not None and not first_step:  # a Task's own, in start_task()
            first_step.append((callback, args, context))
            return None
        self._wake()
        return super().call_soon(callback, *args, context=context)

    def call_at(self, when: float, callback: Any, *args: Any, context: Any = None) -> Any:
        """asyncio's ``call_at``; the reactor steps the loop until it is due."""
        self._wake()
        return super().call_at(when, callback, *args, context=context)

    def time(self) -> float:
        """The reactor's clock (the virtual clock on the in-memory broker)."""
        return self._now()

    def _before_block(self, h: Any, watcher: Any, revents: int, arg: Any) -> None:
        if self._ready or self._reactor_selector.has_events() or self._due():
            self.step()
        spinning = bool(self._ready)
        if spinning != self._idle_started:  # a watcher call costs: only on change
            self._idle_started = spinning
            if spinning:
                self._idle.start()
            else:
                self._idle.stop()
        self._arm_wakeup()
        if not spinning and not self._scheduled and not self._reactor_selector.has_events():
            self._prepare_started = False  # nothing to do until call_soon or an fd event
            self._prepare.stop()

    def _due(self) -> bool:
        scheduled = self._scheduled
        return bool(scheduled) and scheduled[0].when() <= self.time()

    def _arm_wakeup(self) -> None:
        scheduled = self._scheduled
        when = scheduled[0].when() if scheduled else None
        if when == self._wakeup_at:
            return
        self._wakeup.stop()
        self._wakeup_at = when
        if when is not None:
            self._wakeup.reset(after=max(0.0, when - self.time()), repeat=0.0)
            self._wakeup.start()

    def start_task(self, coro: Any) -> "asyncio.Task[Any]":
        """A task for *coro*, run at once up to its first ``await`` (as Python
        3.12's eager tasks are): a handler that never waits is done before
        its message callback returns, without a trip through the reactor.

        The task's first step is asyncio's own (``current_task()`` is the
        task); it is left to the next iteration, as ``create_task`` leaves
        it, while another task is running (a nested reactor callback).
        """
        if asyncio.current_task(self) is not None:  # a task's step cannot nest
            return self._keep(self.create_task(coro))
        # The Task asks call_soon() for its first step: take it, run it now.
        first_step: List[Tuple[Any, Any, Any]] = []
        self._first_step = first_step
        try:
            task = asyncio.Task(coro, loop=self)
        finally:
            self._first_step = None
        callback, args, context = first_step[0]
        previous = asyncio.events._get_running_loop()
        if previous is self:  # within the module's reactor_run()
            context.run(callback, *args)
            return self._keep(task)
        asyncio.events._set_running_loop(self)
        try:
            context.run(callback, *args)
        finally:
            asyncio.events._set_running_loop(previous)
        return self._keep(task)

    def _keep(self, task: "asyncio.Task[Any]") -> "asyncio.Task[Any]":
        """Hold *task* until it is done: asyncio keeps only weak references,
        and a task awaiting something nothing else holds (an Event, a
        future) would be collected part-way, its ``finally`` run at random."""
        if not task.done():
            self._live_tasks.add(task)
            task.add_done_callback(self._live_tasks.discard)
        return task

    def step(self) -> None:
        """Run one asyncio iteration: due timers, fd events, ready callbacks."""
        previous = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(self)
        try:
            self._run_once()
        finally:
            asyncio.events._set_running_loop(previous)

    def finish(self, tasks: List["asyncio.Task[Any]"], rounds: int = 100) -> None:
        """Cancel *tasks* and step until they are done (their ``finally`` runs)."""
        for task in tasks:
            task.cancel()
        for _ in range(rounds):
            if all(task.done() for task in tasks):
                break
            self.step()

    def close(self) -> None:
        """Stop the watchers and close the loop."""
        for watcher in (self._prepare, self._idle, self._wakeup):
            watcher.stop()
        super().close()


def _nothing(*args: Any) -> None:
    pass
