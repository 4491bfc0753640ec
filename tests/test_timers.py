"""Timers on both brokers: libev's rules for flux-core's own timer watcher,
and the library's timers, which re-arm from now even while they run.

Measured on flux-core 0.88.0: ``TimerWatcher.reset()`` on a running timer
changes its settings but not the time it is due (libev ignores
``ev_timer_set()`` on an active watcher); once it fires, a repeating timer
falls due again at once and then every new period.  The in-memory broker
follows the same rules on virtual time, so a test there fails where a real
broker would.  Each test runs on both brokers (``flux_broker``).
"""

import pytest

# Times are the module's reactor clock, from when the request arrived;
# only fires within WINDOW seconds are compared (a real client reads
# them later than that).
WINDOW = 1.5
SLACK = 0.15  # a real reactor's lateness, per fire

TICKS = '''
from flux.brokermod import BrokerModule, Option, request_handler, timer_handler


class Ticks(BrokerModule):
    """Records when its timers fire, by the reactor's clock."""

    interval = Option(float, default=30.0)

    def setup(self):
        self.fired = {}
        self.start = {"tick": self.now()}
        self.raw = []

    def now(self):
        return self.handle.reactor_now(self.handle.get_reactor())

    def record(self, label):
        self.fired.setdefault(label, []).append(round(self.now() - self.start[label], 3))

    @timer_handler("interval", repeat="interval")
    def tick(self):
        self.record("tick")

    @request_handler("reset")
    def reset(self, msg):
        """self.timer("tick").reset(**payload), from now."""
        self.start["tick"] = self.now()
        self.fired.pop("tick", None)
        self.timer("tick").reset(**msg.payload)
        self.handle.respond(msg, {})

    @request_handler("watch")
    def watch(self, msg):
        """From now on, record ticks under "tick" (for a reload)."""
        self.start["tick"] = self.now()
        self.fired.pop("tick", None)
        self.handle.respond(msg, {})

    @request_handler("raw")
    def raw_timer(self, msg):
        """A flux-core timer watcher: {"label", "after", "repeat", "then":
        [["reset", after, repeat] | ["reset"] | ["stop"] | ["start"], ...]},
        the calls made at once, on the running timer."""
        p = msg.payload
        label = p["label"]
        self.start[label] = self.now()
        timer = self.handle.timer_watcher_create(
            p["after"], lambda h, w, revents, arg: self.record(label), repeat=p.get("repeat", 0.0))
        timer.start()
        for call, *args in p.get("then", []):
            getattr(timer, call)(*args)
        self.raw.append(timer)
        self.handle.respond(msg, {})

    @request_handler("fired")
    def report(self, msg):
        self.handle.respond(msg, self.fired)
'''


@pytest.fixture
def ticks(flux_broker, tmp_path):
    path = tmp_path / "ticks.py"
    path.write_text(TICKS)
    flux_broker.load(str(path))
    return flux_broker


def fired(broker, label):
    """When *label* fired within WINDOW s of its request (after letting the time pass)."""
    broker.wait(WINDOW + 0.5)
    return [t for t in broker.rpc("ticks.fired").get().get(label, []) if t <= WINDOW]


def assert_times(got, expected):
    assert len(got) == len(expected), f"fired at {got}, expected {expected}"
    for when, due in zip(got, expected):
        assert due - 0.01 <= when <= due + SLACK, f"fired at {got}, expected {expected}"


def test_the_librarys_timer_reset_re_arms_a_running_timer_from_now(ticks):
    """The 30 s timer runs; reset(after=0.2, repeat=0.2) makes it fire every 0.2 s from now."""
    ticks.rpc("ticks.reset", {"after": 0.2, "repeat": 0.2}).get()
    assert_times(fired(ticks, "tick"), [0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4])


def test_the_librarys_timer_reset_keeps_values_it_was_given(ticks):
    """reset(after=0.5) keeps the period, and reset() the values it has now."""
    ticks.rpc("ticks.reset", {"after": 0.2, "repeat": 0.6}).get()
    ticks.rpc("ticks.reset", {"after": 0.5}).get()
    assert_times(fired(ticks, "tick"), [0.5, 1.1])
    ticks.rpc("ticks.reset", {}).get()
    assert_times(fired(ticks, "tick"), [0.5, 1.1])


def test_a_reload_that_changes_the_period_re_arms_the_running_timer(ticks):
    """The 30 s timer runs; a reload to 0.3 s makes it tick every 0.3 s at once."""
    ticks.rpc("ticks.watch").get()
    assert ticks.load_config({"ticks": {"interval": 0.3}}) is None
    got = fired(ticks, "tick")
    # The reload reaches a real module some time after "watch" (the command).
    start = got[0] - 0.3 if ticks.real else 0.0
    assert 0 <= start < 1.0, got
    assert_times([t - start for t in got], [0.3, 0.6, 0.9, 1.2, 1.5][:len(got)])
    assert len(got) >= (2 if ticks.real else 5), got


def test_flux_cores_reset_of_a_running_timer_keeps_the_time_it_was_due(ticks):
    """libev: the running 30 s timer stays due at 30 s; nothing fires."""
    ticks.rpc("ticks.raw", {"label": "t", "after": 30.0, "then": [["reset", 0.2, 0.2]]}).get()
    assert fired(ticks, "t") == []


def test_after_the_old_due_time_a_clobbered_timer_fires_at_once_then_every_period(ticks):
    ticks.rpc("ticks.raw", {"label": "t", "after": 1.0, "then": [["reset", 0.2, 0.2]]}).get()
    assert_times(fired(ticks, "t"), [1.0, 1.0, 1.2, 1.4])


def test_a_reset_to_no_period_stops_a_running_timer_after_its_next_fire(ticks):
    ticks.rpc("ticks.raw", {"label": "t", "after": 0.5, "repeat": 0.5, "then": [["reset", 0.3, 0.0]]}).get()
    assert_times(fired(ticks, "t"), [0.5])


def test_a_clobbered_timer_stopped_and_started_fires_at_once(ticks):
    ticks.rpc("ticks.raw", {"label": "t", "after": 1.0,
                            "then": [["reset", 0.4, 0.4], ["stop"], ["start"]]}).get()
    assert_times(fired(ticks, "t"), [0.0, 0.0, 0.4, 0.8, 1.2])


def test_stop_then_reset_re_arms_from_now_and_defaults_are_the_creation_values(ticks):
    """The library's way (stop, set, start) works on flux-core's watcher;
    reset() without values takes those given at creation, not the last ones."""
    ticks.rpc("ticks.raw", {"label": "a", "after": 30.0, "then": [["stop"], ["reset", 0.3, 0.0]]}).get()
    ticks.rpc("ticks.raw", {"label": "b", "after": 0.7,
                            "then": [["stop"], ["reset", 5.0, 0.0], ["stop"], ["reset"]]}).get()
    assert_times(fired(ticks, "a"), [0.3])
    assert_times(fired(ticks, "b"), [0.7])
