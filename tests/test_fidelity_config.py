"""Module options and the instance configuration, on both brokers (the
fidelity ledger's config rows).

Each module is written to a file and loaded on the in-memory broker and on
a real instance (the ``flux_broker`` fixture); the configuration changes
with ``flux config load`` there and ``Broker.load_config()`` in memory.
Times are the module's reactor clock, real seconds on a real instance:
they are checked with a margin, and never before they are due.
"""

import errno
import textwrap

import pytest

SLACK = 0.5  # how late a real reactor may fire a timer here (2 cores, shared)


@pytest.fixture
def module_file(tmp_path):
    """``module_file("name", source) -> path`` of ``NAME.py``."""

    def write(name, source):
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        return str(path)

    return write


# cfg-12: a timer whose period names an option -----------------------------------

PERIODIC = '''
from flux.brokermod import BrokerModule, Option, request_handler, timer_handler


class Periodic(BrokerModule):
    interval = Option(float, default=0.2)

    def setup(self):
        self.fired = []
        self.reloaded = []

    def now(self):
        return self.handle.reactor_now(self.handle.get_reactor())

    @timer_handler("interval", repeat="interval")
    def poll(self):
        self.fired.append(self.now())

    def options_changed(self, changed):
        self.reloaded.append(self.now())

    @request_handler("times")
    def times(self, msg):
        return {"fired": self.fired, "reloaded": self.reloaded, "interval": self.interval}
'''


def test_a_reload_that_lengthens_a_timers_period_re_arms_it_from_then(flux_broker, module_file):
    """0.2 s polls; a reload to 1 s: the next poll is 1 s after the reload
    (never before), then every second."""
    flux_broker.load(module_file("periodic", PERIODIC))
    flux_broker.settle(lambda: len(flux_broker.rpc("periodic.times").get()["fired"]) >= 3, "three 0.2 s polls")
    assert flux_broker.load_config({"periodic": {"interval": 1.0}}) is None
    flux_broker.wait(2.5)
    times = flux_broker.rpc("periodic.times").get()
    assert times["interval"] == 1.0 and len(times["reloaded"]) == 1, times
    reload = times["reloaded"][0]
    before = [t for t in times["fired"] if t <= reload]
    after = [round(t - reload, 3) for t in times["fired"] if t > reload]
    gaps = [b - a for a, b in zip(before, before[1:])]
    assert len(before) >= 3 and all(0.2 - 0.01 <= gap <= 0.2 + SLACK for gap in gaps), before
    # Due 1 s and 2 s after the reload; the client read them 2.5 s or more after it.
    assert len(after) == 2, after
    assert 1.0 - 0.01 <= after[0] <= 1.0 + SLACK, after
    assert 1.0 - 0.01 <= after[1] - after[0] <= 1.0 + SLACK, after


# cfg-14: conf_get() is cached per handle -----------------------------------------

READER = '''
from flux.brokermod import BrokerModule, request_handler


class Reader(BrokerModule):
    """No options: only what the handle's conf_get() gives."""

    @request_handler("read")
    def read(self, msg, *, update: bool = False):
        return {"name": self.handle.conf_get("site.name", default="unset", update=update)}
'''


def test_conf_get_is_fetched_once_per_handle_and_again_with_update(flux_broker, module_file):
    assert flux_broker.load_config({"site": {"name": "a"}}) is None
    flux_broker.load(module_file("reader", READER))
    assert flux_broker.rpc("reader.read").get() == {"name": "a"}  # fetched now, and kept
    assert flux_broker.load_config({"site": {"name": "b"}}) is None
    assert flux_broker.rpc("reader.read").get() == {"name": "a"}  # still the handle's copy
    assert flux_broker.rpc("reader.read", {"update": True}).get() == {"name": "b"}
    assert flux_broker.rpc("reader.read").get() == {"name": "b"}  # the new copy is kept


# cfg-21: options are inherited ----------------------------------------------------

INHERITED = '''
from flux.brokermod import BrokerModule, Option, request_handler


class Base(BrokerModule):
    interval = Option(float, default=1.0)
    label = Option(str, default="a")
    mode = Option(str, default="fast")


class Child(Base):
    interval = Option(int, default=5)  # overridden: an int now
    mode = None  # no longer an option

    @request_handler("get")
    def get(self, msg):
        return {"interval": self.interval, "type": type(self.interval).__name__, "label": self.label,
                "options": sorted(type(self)._flux_options)}


def mod_main(h, *args):
    Child(h, *args).run()
'''


def test_options_are_inherited_and_a_subclass_may_override_or_drop_them(flux_broker, module_file):
    path = module_file("child", INHERITED)
    flux_broker.load(path)
    assert flux_broker.rpc("child.get").get() == {"interval": 5, "type": "int", "label": "a",
                                                  "options": ["interval", "label"]}
    flux_broker.remove("child")
    flux_broker.load(path, "interval=7", "label=b")
    assert flux_broker.rpc("child.get").get()["interval"] == 7
    assert flux_broker.rpc("child.get").get()["label"] == "b"
    assert flux_broker.load_config({"child": {"interval": 3}}) is None
    assert flux_broker.rpc("child.get").get()["interval"] == 7  # the argument still wins
    flux_broker.remove("child")
    errnum, text = flux_broker.load_error(path, "interval=2.5")
    assert errnum == errno.EINVAL and "'2.5' is not a valid int" in text, text
    errnum, text = flux_broker.load_error(path, "mode=slow")
    assert errnum == errno.EINVAL and "unknown option 'mode=slow'" in text, text
