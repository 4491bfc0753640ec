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

Handing control to another thread costs tens of microseconds, so the
common case takes a short cut: a module idle in its reactor offers a
*turn* (its reactor's one round: run a work item, then its check and
prepare watchers), and the test's own thread runs that turn itself,
with the module's stderr, logging and asyncio loop, while the module's
thread stays parked.  Only when the reactor must go on past the turn
(it was stopped, or something escaped it) is the module's thread woken.

Hand-offs, and the invariant each keeps
---------------------------------------
Control passes by releasing a strand's *wake* lock; the thread that
releases it may go on running for a moment (the GIL changes hands at any
bytecode), so each hand-off is written so that nothing either side reads
after the release can still change:

1. ``_switch_to`` (A wakes B's own thread, then waits): A writes all that
   B reads on waking (``item``, ``resumer``, states, ``current``) *before*
   it releases B's lock.  After the release A reads only its own ``wake``,
   which nobody swaps while A is DRIVING (only an IDLE strand with a
   ``turn`` has its lock lent, rule 4).
2. ``_give_back`` (B hands control back to its resumer, then parks): B
   reads its own lock *before* it releases the resumer's.  Once released,
   the resumer may at once take B's turn, which lends ``B.wake`` to the
   turn's thread; had B read ``B.wake`` after the release, it would park
   on the resumer's lock, and the resumer's own wake-up would be lost
   (every thread waiting, none to wake another: issue 25).
3. A strand's thread ends (``spawn``): ``DONE`` is written, and its
   ``resumer`` read, before it releases the resumer; it touches nothing
   shared afterwards.
4. ``_take_turn`` (no thread changes hands): while another thread runs
   ctx's turn, ``ctx.wake`` is that thread's lock, so whoever hands
   control "back to ctx" wakes the thread really running it.  The parked
   lock is put back, on the same thread, before anything wakes ctx's own
   thread.
5. A new strand's thread parks on its own lock before its first turn:
   no turn can be lent before its reactor first goes idle.

Every wait for a hand-off is bounded: a thread blocked longer than
``HANDOFF_CHECK`` real seconds records what it waits for, and the test's
thread, if it finds every strand's thread blocked on a lock nobody holds
for it through two checks in a row, raises :class:`HandoffLost` naming
each strand, its state and what it waits for, instead of hanging.

The protocol relies on the GIL only to keep the moment after a release
(rules 1-3) short and free of shared writes; Python 3.13's free-threaded
build runs those moments truly in parallel with code that reads the same
structures (the work queue, ``sys.stderr``, the logging outputs), and
nothing here has been verified there, so :class:`Strands` refuses to
start on it unless the GIL is enabled (``PYTHON_GIL=1``).
"""

import _signal  # signal's own functions, without the enum conversions of signal.py
import itertools
import logging
import sys
import threading
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, TextIO, Tuple

NEW = "new"
RUNNABLE = "runnable"
ACTIVE = "active"
IDLE = "idle"
DRIVING = "driving"
DONE = "done"

#: Real seconds a thread waits for a hand-off before it records what it
#: waits for and (on the test's thread) checks whether every strand waits.
HANDOFF_CHECK = 1.0


class HandoffLost(RuntimeError):
    """Every strand's thread waits for another to hand it control, and
    none ever will: the in-memory broker lost a hand-off (a bug in it).
    ``str()`` names each strand, its state and what it waits for.  The
    broker is unusable afterwards; every later call raises this again."""


class Strand:
    """One thread of control, taking turns: the test's thread, or a module's."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = NEW
        # Held until someone hands this strand control: a lock, released by
        # another thread, is the cheapest one-shot wake-up Python has.
        self.wake = threading.Lock()
        self.wake.acquire()
        #: The strand's own lock; ``wake`` is another's while a turn is lent (rule 4).
        self.own_wake = self.wake
        self.resumer: Optional["Strand"] = None
        self.item: Optional[Callable[[], None]] = None
        self.thread: Optional[threading.Thread] = None
        #: The thread running this strand's code now: its own, or the
        #: test's while the test's thread takes one of its turns.
        self.runner: Optional[threading.Thread] = None
        #: While idle in a reactor: ``turn(item)``, which runs *item* and
        #: the reactor's round after it on any thread, and returns False
        #: if the reactor must then go on on the strand's own thread.
        self.turn: Optional[Callable[[Callable[[], None]], bool]] = None
        #: asyncio's running loop in the strand's thread when it went idle.
        self.running_loop: Any = None
        #: Where ``sys.stderr`` points while this strand runs (None: leave
        #: it as it is).  A module's stderr is its broker's, as on a real
        #: instance.
        self.output: Optional[TextIO] = None

    def __repr__(self) -> str:
        return f"<Strand {self.name} {self.state}>"


class _Raise:
    """A work item raising *exc*: what escaped a turn, raised in the strand."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __call__(self) -> None:
        raise self.exc


def _turn_taken() -> None:
    """The item that wakes a strand whose turn another thread took."""


class _InterruptsAfterTurns:
    """Ctrl-C during a module's turn on the main thread reaches the test
    when the turn ends, instead of the module's handler.

    Python raises KeyboardInterrupt wherever the main thread is.  In a
    turn that is a module's handler, whose failure the library answers
    and logs, so the test would go on.  While a broker is open, SIGINT
    goes through :meth:`handle`: outside turns it calls the handler that
    was there before, at once; during a turn, once the turn is over.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.users = 0
        self.previous: Any = None
        self.pending: Optional[tuple] = None
        self.handler = self.handle  # one bound method, to recognise it

    def install(self) -> bool:
        """Route SIGINT here (main thread only); False if it cannot be."""
        if threading.current_thread() is not threading.main_thread():
            return False
        current = _signal.getsignal(_signal.SIGINT)
        if current is not self.handler:
            if not callable(current):  # ignored, or the OS default: nothing raises
                return False
            self.previous = current
            _signal.signal(_signal.SIGINT, self.handler)
        self.users += 1
        return True

    def uninstall(self) -> None:
        """Give SIGINT back to the previous handler once no broker uses this."""
        self.users -= 1
        if self.users == 0 and _signal.getsignal(_signal.SIGINT) is self.handler:
            _signal.signal(_signal.SIGINT, self.previous)

    def handle(self, signum: int, frame: Any) -> None:
        """The SIGINT handler."""
        if self.depth:
            self.pending = (signum, frame)
        else:
            self.previous(signum, frame)

    def turn_ended(self) -> None:
        """Deliver a SIGINT that came during the turn."""
        if self.pending is not None and not self.depth:
            (signum, frame), self.pending = self.pending, None
            self.previous(signum, frame)


_INTERRUPTS = _InterruptsAfterTurns()


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
        #: Where records go, by the ident of the thread running a strand.
        self.outputs: Dict[int, TextIO] = {}

    def emit(self, record: logging.LogRecord) -> None:
        output = self.outputs.get(threading.get_ident())
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
        if not getattr(sys, "_is_gil_enabled", lambda: True)():
            raise RuntimeError(
                "the in-memory broker needs the GIL, and this free-threaded Python runs without one: "
                "run it with PYTHON_GIL=1 (or python -X gil=1)"
            )
        self.driver = Strand("driver")
        self.driver.state = ACTIVE
        self.driver.thread = self.driver.runner = threading.current_thread()
        self.current = self.driver
        self._runnable: Deque[Strand] = deque()
        self._interrupts = _INTERRUPTS if _INTERRUPTS.install() else None
        # Work items in arrival order: (target context or None, callable).
        # None means "run in whichever context is driving" (client handles).
        self.queue: Deque[tuple] = deque()
        #: Why the strands are stuck for good, once a hand-off was lost.
        self.lost: Optional[str] = None
        self._strands: List[Strand] = [self.driver]
        # Threads blocked past HANDOFF_CHECK, by ident: (strand, what, lock).
        # ``_blocks`` changes whenever a thread starts or stops such a wait,
        # so that a check sees whether anyone woke since the one before
        # (next() on a count is atomic: two threads may do it at once).
        self._blocked: Dict[int, Tuple[Strand, str, Any]] = {}
        self._block_count = itertools.count()
        self._blocks = next(self._block_count)

    def close(self) -> None:
        """Stop routing Ctrl-C (see _InterruptsAfterTurns); idempotent."""
        interrupts, self._interrupts = self._interrupts, None
        if interrupts is not None:
            interrupts.uninstall()

    def check_thread(self) -> None:
        """Refuse calls from a thread that is not the active context's,
        and every call once a hand-off was lost."""
        if self.lost is not None:
            raise HandoffLost(self.lost)
        if threading.current_thread() is not self.current.runner:
            raise RuntimeError(
                "the in-memory broker is single-threaded: call it from the "
                "thread that created it (or from a module's handlers)"
            )

    def spawn(self, ctx: Strand, target: Callable[[], None]) -> None:
        """Prepare *ctx* to run *target* on its own thread when first resumed."""

        def main() -> None:
            ident = threading.get_ident()
            if ctx.output is not None:
                _MODULE_LOGGING.outputs[ident] = ctx.output
            self._wait(ctx, ctx.own_wake, "its first turn")  # rule 5
            try:
                target()
            finally:
                _MODULE_LOGGING.outputs.pop(ident, None)
                ctx.state = DONE  # rule 3
                resumer = ctx.resumer
                assert resumer is not None
                resumer.wake.release()

        ctx.thread = ctx.runner = threading.Thread(target=main, name=f"membroker:{ctx.name}", daemon=True)
        if ctx.output is not None:
            root = logging.getLogger()
            if _MODULE_LOGGING not in root.handlers:
                root.addHandler(_MODULE_LOGGING)
        self._strands = [strand for strand in self._strands if strand.state != DONE]
        self._strands.append(ctx)
        ctx.thread.start()
        self.make_runnable(ctx)

    def make_runnable(self, ctx: Strand) -> None:
        """Mark *ctx* as having code to continue, to be resumed in turn."""
        ctx.state = RUNNABLE
        self._runnable.append(ctx)

    def resume(self, ctx: Strand, item: Optional[Callable[[], None]] = None) -> None:
        """Run *ctx* (with a work *item* if it is idle) until it gives control back."""
        if self.lost is not None:
            raise HandoffLost(self.lost)
        if ctx is self.current:  # waiting in wait_in_turn: take the item there
            ctx.item = item
            return
        if ctx.turn is not None and item is not None and self.current is self.driver:
            self._take_turn(ctx, item)
        else:
            self._switch_to(ctx, item)

    def _switch_to(self, ctx: Strand, item: Optional[Callable[[], None]]) -> None:
        """Wake *ctx*'s own thread (with *item*) and wait until it gives control back."""
        me = self.current
        my_state = me.state
        # Rule 1: everything ctx reads on waking is written before the release.
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
            self._wait(me, me.wake, f"{ctx.name} to hand control back")
        finally:
            sys.stderr = saved
        self.current = me
        me.state = my_state

    def _take_turn(self, ctx: Strand, item: Callable[[], None]) -> None:
        """Run idle *ctx*'s turn with *item* on this thread; then, if its
        reactor must go on (``_turn_taken``) or something escaped the turn
        (raised there), wake ctx's own thread for that."""
        me = self.current
        thread = me.runner
        ident = threading.get_ident()
        parked = ctx.wake
        # While the turn runs here, whoever hands control back to ctx
        # must wake this thread, not ctx's parked one.
        ctx.wake, ctx.runner, ctx.resumer = me.wake, thread, me
        ctx.state, me.state, self.current = ACTIVE, DRIVING, ctx
        saved_stderr = sys.stderr
        outputs = _MODULE_LOGGING.outputs
        saved_output = outputs.get(ident)
        if ctx.output is not None:
            sys.stderr = outputs[ident] = ctx.output
        events = sys.modules.get("asyncio.events")
        saved_loop = None
        if events is not None:
            saved_loop = events._get_running_loop()
            events._set_running_loop(ctx.running_loop)
        rest: Optional[Callable[[], None]] = None
        interrupts = self._interrupts
        if interrupts is not None:
            interrupts.depth += 1
        try:
            if not ctx.turn(item):  # type: ignore[misc]
                rest = _turn_taken
        except BaseException as exc:  # noqa: BLE001 - raised again in ctx's thread
            rest = _Raise(exc)
        finally:
            if interrupts is not None:
                interrupts.depth -= 1
            if events is not None:
                events._set_running_loop(saved_loop)
            sys.stderr = saved_stderr
            if saved_output is None:
                outputs.pop(ident, None)
            else:
                outputs[ident] = saved_output
            ctx.wake, ctx.runner = parked, ctx.thread
            self.current, me.state = me, ACTIVE
            ctx.state = IDLE
        if self.lost is not None:
            raise HandoffLost(self.lost)
        if rest is not None:
            self._switch_to(ctx, rest)
        if interrupts is not None:
            interrupts.turn_ended()

    def in_turn(self, ctx: Strand) -> bool:
        """True while another thread runs *ctx*'s turn."""
        return ctx.runner is not ctx.thread

    def wait_for_work(
        self, ctx: Strand, turn: Optional[Callable[[Callable[[], None]], bool]] = None
    ) -> Optional[Callable[[], None]]:
        """Called by *ctx* in its reactor: go idle until handed a work item.

        *turn* (see :attr:`Strand.turn`) lets another thread run the work
        instead, while this one stays parked; then this returns None once
        the reactor must go on past such a turn.
        """
        ctx.state = IDLE
        ctx.turn = turn
        events = sys.modules.get("asyncio.events")
        ctx.running_loop = None if events is None else events._get_running_loop()
        self._give_back(ctx, "work in its reactor")
        ctx.turn = None
        item = ctx.item
        ctx.item = None
        assert item is not None
        return None if item is _turn_taken else item

    def wait_in_turn(self, ctx: Strand, run_until: Callable[[Callable[[], bool]], None]) -> Callable[[], None]:
        """For a reactor run within *ctx*'s turn, on the thread taking it:
        *ctx* counts as idle while ``run_until(done)`` runs the broker, and
        :meth:`step` hands it its next item here, in the usual order."""
        ctx.state = IDLE
        try:
            run_until(lambda: ctx.item is not None)
        finally:
            ctx.state = ACTIVE
        item, ctx.item = ctx.item, None
        assert item is not None
        return item

    def pause(self, ctx: Strand) -> None:
        """Called by *ctx*: give control back now, continue later in turn."""
        assert not self.in_turn(ctx), "a strand pauses only on its own thread"
        self.make_runnable(ctx)
        self._give_back(ctx, "its turn to go on")

    def _give_back(self, ctx: Strand, what: str) -> None:
        """Hand control back to *ctx*'s resumer and park until handed *what*."""
        resumer = ctx.resumer
        assert resumer is not None
        wake = ctx.wake  # rule 2: read before the release lets anyone lend it
        resumer.wake.release()
        self._wait(ctx, wake, what)

    def _wait(self, me: Strand, lock: Any, what: str) -> None:
        """Block until *lock* is released, as strand *me*, waiting for *what*.

        Past HANDOFF_CHECK seconds the wait is recorded.  The test's thread
        then checks every such period for a lost hand-off (HandoffLost); a
        module's thread waits on (idle, a module may wait for work forever),
        since only the test's thread can report to the test.
        """
        if lock.acquire(timeout=HANDOFF_CHECK):
            return
        ident = threading.get_ident()
        self._blocked[ident] = (me, what, lock)
        self._blocks = next(self._block_count)
        seen = -1
        try:
            if threading.current_thread() is not self.driver.thread:
                lock.acquire()
                return
            while not lock.acquire(timeout=HANDOFF_CHECK):
                if not self._all_blocked():
                    seen = -1
                elif seen == self._blocks:  # nobody woke through a whole period
                    self.lost = self._describe_blocked()
                    raise HandoffLost(self.lost)
                else:
                    seen = self._blocks
        finally:
            del self._blocked[ident]
            self._blocks = next(self._block_count)

    def _all_blocked(self) -> bool:
        """True if every live strand's thread waits on a lock still held."""
        blocked = self._blocked
        threads = {ctx.thread.ident for ctx in self._strands
                   if ctx.thread is not None and ctx.state != DONE and ctx.thread.is_alive()}
        return all(ident in blocked and blocked[ident][2].locked() for ident in threads)

    def _describe_blocked(self) -> str:
        """One line: each strand, its state, and what its thread waits for."""
        owners = {id(ctx.own_wake): ctx.name for ctx in self._strands}
        parts = []
        for strand, what, lock in list(self._blocked.values()):
            owner = owners.get(id(lock), "an unknown strand")
            parts.append(f"{strand.name} ({strand.state}) waits on {owner}'s wake-up for {what}")
        return (
            "the in-memory broker lost a hand-off between its strands: every thread waits for "
            f"another and none will ever wake one ({'; '.join(parts)}); this is a bug in "
            "flux-brokermod: please report it with this line"
        )

    def step(self) -> bool:
        """Do one unit of work; return False if nothing could be done."""
        if self.lost is not None:
            raise HandoffLost(self.lost)
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
