"""Timers on both brokers: the fidelity ledger's timer rows (docs/fidelity.md).

In memory time is virtual, so the in-memory half can be exact; on a real
instance it is the wall clock, so every assertion both halves share is one
that holds however late a real reactor is: a timer never fires before it
is due, fires in due order, and a count is bounded by the time that passed
as the module's own reactor clock (``reactor_now``, the clock libev decides
by) measures it.  Waiting for something is ``settle`` (a deadline of 30 s),
never an assertion that it happened within some time.

``tests/test_timers.py`` covers ``reset()`` (flux-core's and the
library's) on both brokers; it is not repeated here.
"""

import pytest

#: A fire may be seen this much before its due time: the module rounds
#: times to the millisecond.  Nothing bounds how late it is.
EARLY = 0.002

# A raw mod_main of flux-core timer watchers.  Each argument is a timer,
# LABEL:AFTER:REPEAT:HOW, made and started in mod_main, where HOW is
#   plain     start()
#   restart   start(), stop(), start() at once
#   callback  start(); its callback calls stop() then start()
#   context   `with timer: pass` (started, then the block's end stops it)
# Each fire is recorded as [label, seconds since mod_main began] by the
# reactor's clock.  rawtimers.fired gives them and the clock now;
# rawtimers.start {"labels": [...]} starts those timers again.
RAW_TIMERS = '''
from flux.constants import FLUX_MSGTYPE_REQUEST


def mod_main(h, *plan):
    reactor = h.get_reactor()

    def now():
        return round(h.reactor_now(reactor) - t0, 3)

    t0 = h.reactor_now(reactor)
    fired, timers, how_of = [], {}, {}

    def ring(h, watcher, revents, label):
        fired.append([label, now()])
        if how_of[label] == "callback":
            watcher.stop()
            watcher.start()

    for item in plan:
        label, after, repeat, how = item.split(":")
        timer = h.timer_watcher_create(float(after), ring, repeat=float(repeat), args=label)
        how_of[label] = how
        if how == "context":
            with timer:
                pass
        else:
            timer.start()
            if how == "restart":
                timer.stop()
                timer.start()
        timers[label] = timer

    def report(h, watcher, msg, arg):
        h.respond(msg, {"fired": fired, "now": now()})

    def start(h, watcher, msg, arg):
        for label in msg.payload["labels"]:
            timers[label].start()
        h.respond(msg, {"now": now()})

    watchers = [
        h.msg_watcher_create(report, FLUX_MSGTYPE_REQUEST, "rawtimers.fired"),
        h.msg_watcher_create(start, FLUX_MSGTYPE_REQUEST, "rawtimers.start"),
    ]
    for watcher in watchers:
        watcher.start()
    h.reactor_run()
'''


@pytest.fixture
def rawtimers(flux_broker, write_module):
    """``rawtimers(*plan)`` loads RAW_TIMERS with those timers; returns the broker."""
    path = write_module("rawtimers.py", RAW_TIMERS)

    def load(*plan):
        flux_broker.load(path, *plan)
        return flux_broker

    return load


def snapshot(broker):
    """(fires as (label, when) tuples, the module's clock now)."""
    answer = broker.rpc("rawtimers.fired").get()
    return [tuple(fire) for fire in answer["fired"]], answer["now"]


def fires_of(broker, label):
    return [when for which, when in snapshot(broker)[0] if which == label]


def settle_fires(broker, label, count):
    broker.settle(lambda: len(fires_of(broker, label)) >= count, f"{count} fires of timer {label}")
    return fires_of(broker, label)


# timer-5


def test_a_one_shot_timer_fires_once_after_its_delay_and_never_before(flux_broker, rawtimers):
    broker = rawtimers("t:1.5:0:plain")
    seen = [snapshot(broker)]
    broker.settle(lambda: seen.append(snapshot(broker)) or seen[-1][0], "the timer to fire")
    broker.wait(1.0)
    seen.append(snapshot(broker))
    for fires, now in seen:
        # never before 1.5 s: no fire in a snapshot taken earlier, none due earlier
        assert fires == ([] if now < 1.5 else fires), seen
        assert all(when >= 1.5 - EARLY for _, when in fires), seen
    fires, now = seen[-1]
    assert [label for label, _ in fires] == ["t"] and now >= fires[0][1] + 1.0 - EARLY, seen  # once
    if not flux_broker.real:
        assert seen[0] == ([], 0.0) and fires == [("t", 1.5)]


# timer-7


def test_timers_fire_in_the_order_they_fall_due(flux_broker, rawtimers):
    broker = rawtimers("late:1.5:0:plain", "early:0.5:0:plain", "mid:1.0:0:plain")
    broker.settle(lambda: len(snapshot(broker)[0]) == 3, "three timers to fire")
    fires, _ = snapshot(broker)
    assert [label for label, _ in fires] == ["early", "mid", "late"], fires
    assert all(when >= due - EARLY for (_, when), due in zip(fires, (0.5, 1.0, 1.5))), fires
    if not flux_broker.real:
        assert fires == [("early", 0.5), ("mid", 1.0), ("late", 1.5)]


# timer-8


def test_a_repeating_timer_fires_every_period_never_early(flux_broker, rawtimers):
    broker = rawtimers("r:0.2:0.2:plain")
    settle_fires(broker, "r", 5)
    fires, now = snapshot(broker)
    times = [when for _, when in fires]
    # the k-th fire comes k periods after the start or later: so at most
    # now / 0.2 fires by now, whatever the reactor's lateness
    assert all(when >= 0.2 * k - EARLY for k, when in enumerate(times, 1)), times
    assert 5 <= len(times) <= now / 0.2 + EARLY, (times, now)
    if not flux_broker.real:
        assert times[:5] == [0.2, 0.4, 0.6, 0.8, 1.0]


# timer-9


def test_a_timer_stopped_and_started_again_at_once_fires_once(flux_broker, rawtimers):
    broker = rawtimers("t:0.3:0:restart")
    (when,) = settle_fires(broker, "t", 1)
    assert when >= 0.3 - EARLY  # stop() kept the time left: still due at 0.3 s
    broker.wait(1.0)
    fires, now = snapshot(broker)
    assert fires == [("t", when)] and now >= when + 1.0 - EARLY, (fires, now)
    if not flux_broker.real:
        assert when == 0.3


# timer-10


def test_a_repeating_timer_restarted_in_its_callback_fires_once_per_period(flux_broker, rawtimers):
    broker = rawtimers("r:0.3:0.3:callback")
    settle_fires(broker, "r", 3)
    broker.wait(0.5)
    fires, now = snapshot(broker)
    times = [when for _, when in fires]
    # once per period: the k-th fire at k periods or later, so no more than now / 0.3 of them
    assert all(when >= 0.3 * k - EARLY for k, when in enumerate(times, 1)), times
    assert 3 <= len(times) <= now / 0.3 + EARLY, (times, now)
    if not flux_broker.real:
        assert times[:3] == [0.3, 0.6, 0.9]


# timer-19


def test_a_timer_used_as_a_context_manager_is_stopped_at_the_blocks_end(flux_broker, rawtimers):
    """Due before the live timer, it has not fired when the live one has;
    it was stopped (flux-core's Watcher.__exit__), so it can start again."""
    broker = rawtimers("ctx:0.2:0:context", "live:0.4:0:plain")
    settle_fires(broker, "live", 1)
    broker.wait(0.5)
    fires, now = snapshot(broker)
    assert [label for label, _ in fires] == ["live"], fires
    started = broker.rpc("rawtimers.start", {"labels": ["ctx"]}).get()["now"]
    (when,) = settle_fires(broker, "ctx", 1)
    assert when >= started + 0.2 - EARLY, (when, started)
    if not flux_broker.real:
        assert fires == [("live", 0.4)]


# timer-17: @timer_handler on an async def; a tick still running makes the
# next one skip: it neither runs beside it (overlap) nor after it (queued).

GATED_TICKS = '''
import asyncio
from flux.brokermod import BrokerModule, request_handler, timer_handler


class Gatedticks(BrokerModule):
    """An async tick every 0.1 s that waits until a request opens its gate;
    a plain tick every 0.1 s shows the reactor's timers are firing."""

    def setup(self):
        self.started = self.finished = self.running = self.most = self.plain = 0
        self.gate = None  # made in the module's loop: Python 3.9 binds an Event where it is made

    @timer_handler(0.1, repeat=0.1)
    async def tick(self):
        self.started += 1
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            if self.gate is None:
                self.gate = asyncio.Event()
            await self.gate.wait()
            self.gate = asyncio.Event()  # open for one tick only
            self.finished += 1
        finally:
            self.running -= 1

    @timer_handler(0.1, repeat=0.1)
    def plain_tick(self):
        self.plain += 1

    @request_handler("count")
    def count(self, msg):
        return {"started": self.started, "finished": self.finished, "most": self.most, "plain": self.plain}

    @request_handler("stop-and-open")
    def stop_and_open(self, msg):
        """Stop the async tick's timer, then let the running tick finish."""
        self.timer("tick").stop()
        if self.gate is not None:
            self.gate.set()
        return {}
'''


def test_an_async_tick_still_running_makes_the_next_one_skip(flux_broker, write_module):
    flux_broker.load(write_module("gatedticks.py", GATED_TICKS))

    def count():
        return flux_broker.rpc("gatedticks.count").get()

    # While the first tick waits at its gate the timer fires again and
    # again (the plain tick beside it does): every one of those skips.
    flux_broker.settle(lambda: count()["plain"] >= 5, "five fires of the plain timer")
    assert {k: v for k, v in count().items() if k != "plain"} == {"started": 1, "finished": 0, "most": 1}
    # The skipped fires are not queued: once the timer is stopped and the
    # running tick ends, no other tick starts.
    flux_broker.rpc("gatedticks.stop-and-open").get()
    flux_broker.settle(lambda: count()["finished"] == 1, "the first tick to finish")
    plain = count()["plain"]
    flux_broker.settle(lambda: count()["plain"] >= plain + 5, "five more fires of the plain timer")
    assert {k: v for k, v in count().items() if k != "plain"} == {"started": 1, "finished": 1, "most": 1}


# timer-12 and timer-13: failing timers, on brokers that survive a module's
# runtime failure (broker.module-nopanic=1: conftest.py's nopanic fixture)


FAILING_TIMER = '''
from flux.brokermod import BrokerModule, request_handler, timer_handler


class Failingtimer(BrokerModule):
    stop_on_error = True

    @timer_handler(0.5)
    def tick(self):
        raise RuntimeError("tick failed")

    @request_handler("ping")
    def ping(self, msg):
        return {}
'''


def test_with_stop_on_error_a_failing_timer_stops_the_module(nopanic, write_module):
    nopanic.load(write_module("failingtimer.py", FAILING_TIMER))
    assert nopanic.rpc("failingtimer.ping").get() == {}  # it runs until the tick
    nopanic.settle(lambda: "failingtimer" not in nopanic.modules(), "the module to stop")
    lines = nopanic.dmesg()
    assert "failingtimer.err[0]: timer tick handler failed: Traceback (most recent call last):" in lines, lines
    assert "failingtimer.err[0]: RuntimeError: tick failed" in lines, lines
    assert "broker.crit[0]: failingtimer module runtime failure" in lines, lines


# A raw timer whose callback raises: flux-core's rule stops the reactor and
# run() raises OSError.  RAW_RAISES lets run() raise (a runtime failure);
# RAW_CAUGHT catches it in mod_main and logs what run() raised.
RAW_RAISES = '''
from flux.brokermod import BrokerModule, request_handler


class Rawraises(BrokerModule):
    @request_handler("arm")
    def arm(self, msg):
        def ring(h, watcher, revents, arg):
            raise RuntimeError("raw timer failed")
        self.raw = self.handle.timer_watcher_create(0.2, ring)
        self.raw.start()
        return {}
'''

RAW_CAUGHT = RAW_RAISES.replace("Rawraises", "Rawcaught") + '''

def mod_main(h, *args):
    try:
        Rawcaught(h, *args).run()
    except OSError as exc:
        h.log(5, "run raised OSError: " + exc.strerror)
    except BaseException as exc:
        h.log(5, "run raised " + type(exc).__name__)
    else:
        h.log(5, "run returned")
'''


def test_a_raw_timer_that_raises_stops_the_reactor_and_the_module(nopanic, write_module):
    nopanic.load(write_module("rawraises.py", RAW_RAISES))
    assert nopanic.rpc("rawraises.arm").get() == {}
    nopanic.settle(lambda: "rawraises" not in nopanic.modules(), "the module to stop")
    lines = nopanic.dmesg()
    assert "rawraises.err[0]: reactor callback handler failed: Traceback (most recent call last):" in lines, lines
    assert "rawraises.err[0]: RuntimeError: raw timer failed" in lines, lines
    assert "broker.crit[0]: rawraises module runtime failure" in lines, lines


def test_a_raw_timer_that_raises_makes_run_raise_oserror(nopanic, write_module):
    nopanic.load(write_module("rawcaught.py", RAW_CAUGHT))
    assert nopanic.rpc("rawcaught.arm").get() == {}
    nopanic.settle(lambda: "rawcaught" not in nopanic.modules(), "the module to exit")
    lines = [line for line in nopanic.dmesg() if line.startswith("rawcaught.")]
    assert "rawcaught.err[0]: RuntimeError: raw timer failed" in lines, lines
    assert lines[-1] == "rawcaught.notice[0]: run raised OSError: reactor exited with error: " \
                        "RuntimeError: raw timer failed", lines
    # mod_main returned: no runtime failure
    assert "broker.crit[0]: rawcaught module runtime failure" not in nopanic.dmesg()
