"""Strands: each module's code runs in turn, one at a time, in a fixed order.

A module's ``mod_main`` blocks in ``reactor_run()`` for as long as the
module lives, and a handler may block in a synchronous ``future.get()``.
To host several such modules in one process without an event loop of
their own, each module runs on its own thread, but the threads never run
at the same time: control passes explicitly, like coroutines.  Exactly one
strand is active; it hands control to another with :meth:`Strands.resume`
and gets it back when that context goes idle, becomes runnable again, or
ends.  Which context runs next depends only on the order of events, never
on the operating system's thread scheduling, so runs are deterministic.
"""

import logging
import sys
import threading
import weakref
from collections import deque
from typing import Callable, Deque, List, Optional, TextIO

NEW = "new"
RUNNABLE = "runnable"
ACTIVE = "active"
IDLE = "idle"
DRIVING = "driving"
DONE = "done"


class Strand:
    """One thread of control, taking turns: the test's thread, or a module's."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = NEW
        self.wake = threading.Semaphore(0)
        self.resumer: Optional["Strand"] = None
        self.item: Optional[Callable[[], None]] = None
        self.thread: Optional[threading.Thread] = None
        #: Where ``sys.stderr`` points while this strand runs (None: leave
        #: it as it is).  A module's stderr is its broker's, as on a real
        #: instance.
        self.output: Optional[TextIO] = None

    def __repr__(self) -> str:
        return f"<Strand {self.name} {self.state}>"


class _ModuleLogging(logging.Handler):
    """Standard ``logging`` from a module strand, written to its stderr.

    A real module runs in a process of its own whose root logger has no
    handler: a warning goes to stderr through logging's last resort
    (the message alone).  Here the root logger is the test process's, so
    this handler does the same for records made in a module's strand.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(logging.Formatter("%(message)s"))
        self.outputs: "weakref.WeakKeyDictionary[threading.Thread, TextIO]" = weakref.WeakKeyDictionary()

    def emit(self, record: logging.LogRecord) -> None:
        output = self.outputs.get(threading.current_thread())
        if output is not None:
            output.write(self.format(record) + "\n")
        elif not _other_handlers(record.name, self) and logging.lastResort is not None:
            # This handler must not silence the test's own unconfigured
            # logging: do what Python would have done without it.
            logging.lastResort.handle(record)


def _other_handlers(name: str, this: logging.Handler) -> bool:
    """True if a record of logger *name* meets a handler besides *this*."""
    logger: Optional[logging.Logger] = logging.getLogger(name)
    while logger is not None:
        if any(handler is not this for handler in logger.handlers):
            return True
        if not logger.propagate:
            return False
        logger = logger.parent
    return False


_MODULE_LOGGING = _ModuleLogging()


class Strands:
    """Pass control between strands, and queue work for them."""

    def __init__(self) -> None:
        self.driver = Strand("driver")
        self.driver.state = ACTIVE
        self.driver.thread = threading.current_thread()
        self.current = self.driver
        self._runnable: Deque[Strand] = deque()
        # Work items in arrival order: (target context or None, callable).
        # None means "run in whichever context is driving" (client handles).
        self.queue: Deque[tuple] = deque()

    def check_thread(self) -> None:
        """Refuse calls from a thread that is not the active context's."""
        if threading.current_thread() is not self.current.thread:
            raise RuntimeError(
                "the in-memory broker is single-threaded: call it from the "
                "thread that created it (or from a module's handlers)"
            )

    def spawn(self, ctx: Strand, target: Callable[[], None]) -> None:
        """Prepare *ctx* to run *target* on its own thread when first resumed."""

        def main() -> None:
            ctx.wake.acquire()
            try:
                target()
            finally:
                ctx.state = DONE
                resumer = ctx.resumer
                assert resumer is not None
                resumer.wake.release()

        ctx.thread = threading.Thread(target=main, name=f"membroker:{ctx.name}", daemon=True)
        if ctx.output is not None:
            _MODULE_LOGGING.outputs[ctx.thread] = ctx.output
            root = logging.getLogger()
            if _MODULE_LOGGING not in root.handlers:
                root.addHandler(_MODULE_LOGGING)
        ctx.thread.start()
        self.make_runnable(ctx)

    def make_runnable(self, ctx: Strand) -> None:
        """Mark *ctx* as having code to continue, to be resumed in turn."""
        ctx.state = RUNNABLE
        self._runnable.append(ctx)

    def resume(self, ctx: Strand, item: Optional[Callable[[], None]] = None) -> None:
        """Run *ctx* (with a work *item* if it is idle) until it gives control back."""
        me = self.current
        ctx.item = item
        ctx.resumer = me
        ctx.state = ACTIVE
        me.state = DRIVING
        self.current = ctx
        saved = sys.stderr
        if ctx.output is not None:
            sys.stderr = ctx.output
        try:
            ctx.wake.release()
            me.wake.acquire()
        finally:
            sys.stderr = saved
        self.current = me
        me.state = ACTIVE

    def wait_for_work(self, ctx: Strand) -> Callable[[], None]:
        """Called by *ctx* in its reactor: go idle until handed a work item."""
        ctx.state = IDLE
        self._give_back(ctx)
        item = ctx.item
        ctx.item = None
        assert item is not None
        return item

    def pause(self, ctx: Strand) -> None:
        """Called by *ctx*: give control back now, continue later in turn."""
        self.make_runnable(ctx)
        self._give_back(ctx)

    def _give_back(self, ctx: Strand) -> None:
        resumer = ctx.resumer
        assert resumer is not None
        resumer.wake.release()
        ctx.wake.acquire()

    def step(self) -> bool:
        """Do one unit of work; return False if nothing could be done."""
        while self._runnable:
            ctx = self._runnable.popleft()
            if ctx.state == RUNNABLE:
                self.resume(ctx)
                return True
        for index, (target, item) in enumerate(self.queue):
            if target is None:
                del self.queue[index]
                item()
                return True
            if target.state == IDLE:
                del self.queue[index]
                self.resume(target, item)
                return True
        return False

    def drop(self, ctx: Strand) -> List[Callable[[], None]]:
        """Remove and return the work still queued for *ctx*."""
        kept: Deque[tuple] = deque()
        dropped = []
        for target, item in self.queue:
            (dropped if target is ctx else kept).append((target, item))
        self.queue = kept
        return [item for _, item in dropped]
