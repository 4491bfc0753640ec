"""Hand-offs between the in-memory broker's strands (issue 25).

The broker's threads take turns by releasing each other's locks; a
hand-off read in the wrong order loses a wake-up, and then every thread
waits forever.  These tests force the interleavings that the GIL makes
rare, check that the broker never hangs silently, and stress every kind
of hand-off under a one-microsecond switch interval.
"""

import sys
import threading
import time

import pytest

from flux.membroker import FLUX_RPC_STREAMING, Broker, HandoffLost
from flux.membroker import _strands
from flux.membroker._strands import Strands

# A sync handler runs in a turn that the test's thread takes; it lets the
# module's own thread, held just after it handed control back, go on
# while the turn still runs, as a switch of the GIL at that bytecode would.
WORKER = """
import threading, time
from flux.brokermod import BrokerModule, request_handler

IN_TURN = threading.Event()

class Worker(BrokerModule):
    @request_handler("quick")
    def quick(self, msg):
        IN_TURN.set()
        time.sleep(0.05)
        return {"quick": True}
"""


class _HeldRelease:
    """A strand's wake lock whose first release by a module's thread holds
    that thread, just after the release, until *go* is set: the moment
    between handing control back and parking, made as long as needed."""

    def __init__(self, lock, go):
        self._lock = lock
        self._go = go
        self.armed = True

    def acquire(self, blocking=True, timeout=-1):
        return self._lock.acquire(blocking, timeout)

    def release(self):
        self._lock.release()
        if self.armed and threading.current_thread() is not threading.main_thread():
            self.armed = False
            self._go.wait(5)

    def locked(self):
        return self._lock.locked()


def _hold_first_give_back(broker, module_file):
    """Arrange for the driver to take the module's turn while the module's
    thread is between handing control back and parking."""
    go = threading.Event()
    driver = broker._strands.driver
    driver.wake = driver.own_wake = _HeldRelease(driver.wake, go)
    record = broker.load(module_file)
    go_when_in_turn = sys.modules[record.instance.__class__.__module__].IN_TURN
    # The worker's thread is held until the handler runs in a turn.
    threading.Thread(target=lambda: go.set() if go_when_in_turn.wait(5) else None, daemon=True).start()
    return record


@pytest.fixture
def quick_checks(monkeypatch):
    """Check for a lost hand-off every 50 ms instead of every second."""
    monkeypatch.setattr(_strands, "HANDOFF_CHECK", 0.05)


def test_a_strand_parks_on_its_own_lock_when_its_turn_is_taken_at_once(write, quick_checks):
    """The race of issue 25, made certain: the driver takes a module's turn
    (lending the module its own lock) before the module's thread, which
    just handed control back, has parked.  The module's thread must park on
    its own lock; before the fix it parked on the driver's, and the next
    hand-off to the driver hung forever."""
    path = write("worker.py", WORKER)
    with Broker() as broker:
        _hold_first_give_back(broker, path)
        assert broker.rpc("worker.quick", {}).get() == {"quick": True}
        broker.remove("worker")
        assert broker.modules == {}


def _give_back_in_the_old_order(self, ctx, what):
    """Strands._give_back as it was before the fix: the strand's lock is
    read after the release, when the driver may have lent it away."""
    resumer = ctx.resumer
    resumer.wake.release()
    self._wait(ctx, ctx.wake, what)


def test_a_lost_handoff_fails_in_one_line_naming_each_strand(write, quick_checks, monkeypatch):
    """A test tool never hangs silently: with a hand-off lost on purpose,
    the test's call fails within a few checks, with one line that names
    each strand, its state and what it waits for, and every later call
    to the broker fails the same way at once."""
    monkeypatch.setattr(Strands, "_give_back", _give_back_in_the_old_order)
    path = write("worker.py", WORKER)
    broker = Broker()
    _hold_first_give_back(broker, path)
    assert broker.rpc("worker.quick", {}).get() == {"quick": True}
    started = time.monotonic()
    with pytest.raises(HandoffLost) as lost:
        broker.remove("worker")
    assert time.monotonic() - started < 30
    text = str(lost.value)
    assert "\n" not in text
    assert text.startswith("the in-memory broker lost a hand-off between its strands")
    # The driver waits for the worker; the worker waits on the driver's lock.
    assert "driver (driving) waits on driver's wake-up for worker to hand control back" in text
    assert "worker (active) waits on driver's wake-up for work in its reactor" in text
    with pytest.raises(HandoffLost, match="lost a hand-off"):
        broker.rpc("worker.quick", {}).get()
    with pytest.raises(HandoffLost, match="lost a hand-off"):
        broker.load(path, name="again")
    broker.close()  # returns: nothing more can run


def test_the_broker_refuses_a_free_threaded_python_without_the_gil(monkeypatch):
    """On 3.13t without the GIL the broker refuses to start, in one line,
    rather than race (the hand-offs have been verified only with a GIL)."""
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    with pytest.raises(RuntimeError) as refused:
        Broker()
    assert str(refused.value) == (
        "the in-memory broker needs the GIL, and this free-threaded Python runs without one: "
        "run it with PYTHON_GIL=1 (or python -X gil=1)"
    )


# Every kind of hand-off: an async handler and a stream (the asyncio loop
# in turns), a timer, run_in_executor (a real thread writing to the
# module's descriptor), a synchronous get() to another module (a switch
# from a module's thread), two ranks, load and remove (threads starting
# and ending).
STRESSED = """
import asyncio, time
from flux.brokermod import BrokerModule, request_handler

class Busy(BrokerModule):
    def __init__(self, h, *args):
        super().__init__(h, *args)
        self.ticks = 0
        self.timer = h.timer_watcher_create(0.5, self.tick, repeat=0.5)
        self.timer.start()

    def tick(self, handle, watcher, revents, args):
        self.ticks += 1

    @request_handler("quick")
    async def quick(self, msg):
        await asyncio.sleep(0)
        return {"quick": True, "rank": self.rank}

    @request_handler("offload")
    async def offload(self, msg):
        value = await asyncio.get_running_loop().run_in_executor(None, sum, range(10))
        return {"value": value}

    @request_handler("count")
    async def count(self, msg):
        for i in range(3):
            self.handle.respond(msg, {"i": i})
            await asyncio.sleep(0)
        self.handle.respond_error(msg, 61, None)

    @request_handler("ask")
    def ask(self, msg):
        return self.handle.rpc("plain.echo", {"x": 1}).get()

    @request_handler("ticks")
    def get_ticks(self, msg):
        return {"ticks": self.ticks}
"""

PLAIN = """
from flux.brokermod import BrokerModule, request_handler

class Plain(BrokerModule):
    @request_handler("echo")
    def echo(self, msg):
        return msg.payload
"""


def _round(busy, plain):
    """Load both modules on two ranks, use every hand-off, remove them."""
    with Broker(size=2) as broker:
        broker.load(plain, rank="all")
        broker.load(busy, rank="all")
        for rank in (0, 1):
            assert broker.rpc("busy.quick", {}, nodeid=rank).get() == {"quick": True, "rank": rank}
        assert broker.rpc("busy.offload", {}).get() == {"value": 45}
        stream = broker.rpc("busy.count", {}, flags=FLUX_RPC_STREAMING)
        items = []
        for _ in range(3):
            items.append(stream.get()["i"])
            stream.reset()
        assert items == [0, 1, 2]
        with pytest.raises(OSError, match="No data available"):
            stream.get()
        assert broker.rpc("busy.ask", {}, nodeid=1).get() == {"x": 1}
        before = broker.rpc("busy.ticks", {}).get()["ticks"]
        broker.advance(1.0)
        assert broker.rpc("busy.ticks", {}).get()["ticks"] == before + 2
        broker.remove("busy", rank="all")
        broker.remove("plain", rank="all")


@pytest.fixture
def switch_often():
    """Let the GIL change hands every microsecond, as on a loaded machine."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def test_every_handoff_holds_when_the_gil_changes_hands_every_microsecond(write, switch_often):
    """Bounded (HandoffLost, not a hang, if a hand-off is lost): rounds of
    load, async handlers, a stream, a timer, run_in_executor, a synchronous
    get() across ranks and remove, for about three seconds."""
    busy = write("busy.py", STRESSED)
    plain = write("plain.py", PLAIN)
    rounds = 0
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline or rounds < 20:
        _round(busy, plain)
        rounds += 1
    assert rounds >= 20
