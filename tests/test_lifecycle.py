"""Module life cycle and operation, on both brokers: options, setup and
teardown, timers from options, stats, introspection, rank and size."""

import errno
import os
import textwrap

import pytest
from _helpers import error_of
from _targets import RealTarget

from flux.brokermod_testing import start_instance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PULSE = os.path.join(ROOT, "examples", "pulse.py")

# setup() asks another module for its configuration (an async setup
# awaiting an RPC); teardown() appends a line to a file, so a test can
# count how often it ran, whatever stopped the module.
LIFE = r'''
import errno
from flux.brokermod import BrokerModule, Option, request_handler


class Life(BrokerModule):
    record = Option(str, help="file that teardown appends to")
    fail = Option(str, default="", help="make setup fail: oserror or valueerror")

    async def setup(self):
        if self.fail == "oserror":
            raise OSError(errno.EEXIST, "already configured")
        if self.fail == "valueerror":
            raise ValueError("bad configuration")
        self.config = await self.handle.rpc("kvstore.get", {"key": "config"})

    async def teardown(self):
        with open(self.record, "a") as f:
            f.write("teardown\n")

    @request_handler("config")
    def get_config(self, msg):
        return self.config

    @request_handler("stop")
    def stop_(self, msg):
        self.stop()
        return {}
'''



@pytest.fixture
def life(target, tmp_path):
    target.load(os.path.join(ROOT, "examples", "kvstore.py"))
    target.rpc("kvstore.put", {"key": "config", "value": {"answer": 42}}).get()
    path = tmp_path / "life.py"
    path.write_text(textwrap.dedent(LIFE))
    target.life_path = str(path)
    target.record = str(tmp_path / "record")
    yield target
    if "life" in target.modules():
        target.remove("life")
    target.remove("kvstore")


def _teardowns(target):
    try:
        with open(target.record) as f:
            return f.read().count("teardown")
    except FileNotFoundError:
        return 0


# Options


def test_options_in_both_forms_and_flags(target):
    target.load(PULSE, "interval=30", "--topic=p.beat", "--verbose")
    assert target.rpc("pulse.handlers").get()["name"] == "pulse"
    assert "pulse.info[0]: beating every 30s on rank 0 of 1" in target.dmesg()
    target.remove("pulse")


@pytest.mark.parametrize(
    "args, text",
    [
        (["intervl=1"], "unknown option 'intervl=1'; options: interval (float, default 1.0), "
                        "topic (str, default 'pulse.beat'), verbose (flag, default False)"),
        (["interval=soon"], "option 'interval': 'soon' is not a valid float"),
        (["--verbose=maybe"], "option 'verbose': 'maybe' is not a boolean (true/false)"),
        (["fast"], "argument 'fast' is not an option: write name=value or --name"),
    ],
)
def test_a_bad_option_fails_the_load_with_one_line_in_the_log(target, args, text):
    code, stderr = target.load_error(PULSE, *args)
    assert code == errno.EINVAL
    assert text in stderr
    assert any(line.startswith("pulse.err[0]: pulse.py: ") and text in line for line in target.dmesg())


def test_a_missing_required_option_fails_the_load(life):
    code, stderr = life.load_error(life.life_path)
    assert code == errno.EINVAL and "missing required option 'record'" in stderr


# setup and teardown


def test_setup_runs_before_the_load_returns_and_may_await_an_rpc(life):
    life.load(life.life_path, f"record={life.record}")
    assert life.rpc("life.config").get() == {"value": {"answer": 42}}


@pytest.mark.parametrize("fail, code, text", [
    ("oserror", errno.EEXIST, "life.py: already configured"),
    ("valueerror", errno.EINVAL, "life.py: bad configuration"),
])
def test_a_failing_setup_fails_the_load_and_teardown_does_not_run(life, fail, code, text):
    found, stderr = life.load_error(life.life_path, f"record={life.record}", f"fail={fail}")
    assert found == code and text in stderr
    assert f"life.err[0]: {text}" in life.dmesg()
    assert _teardowns(life) == 0


def test_teardown_runs_once_on_remove(life):
    life.load(life.life_path, f"record={life.record}")
    life.remove("life")
    assert _teardowns(life) == 1


def test_teardown_runs_once_when_the_module_stops_itself(life):
    life.load(life.life_path, f"record={life.record}")
    assert life.rpc("life.stop").get() == {}
    life.settle(lambda: "life" not in life.modules(), "the module to exit")
    assert _teardowns(life) == 1


# Timers from options, controlled at run time


def test_timer_period_from_an_option_pause_and_resume(target):
    target.load(PULSE, "interval=0.05")
    target.settle(lambda: target.rpc("pulse.status").get()["beats"] >= 3, "three beats")
    assert target.rpc("pulse.pause").get() == {"paused": True}
    paused_at = target.rpc("pulse.status").get()["beats"]
    target.wait(0.3)  # six periods
    assert target.rpc("pulse.status").get() == {"beats": paused_at, "paused": True, "rank": 0, "size": 1}
    assert target.rpc("pulse.resume", {"interval": 0.02}).get() == {"interval": 0.02}
    target.settle(lambda: target.rpc("pulse.status").get()["beats"] >= paused_at + 3, "beats again")
    target.remove("pulse")
    assert any(line.startswith("pulse.info[0]: stopped after ") for line in target.dmesg())


# Stats and introspection


def test_stats_add_up_and_clear(target):
    target.load(PULSE, "interval=3600")
    for _ in range(3):
        target.rpc("pulse.status").get()
    assert error_of(target.rpc("pulse.resume", [1]))[0] == errno.EPROTO
    stats = target.rpc("pulse.stats-get").get()
    assert stats["beats"] == 0
    assert stats["handlers"]["pulse.status"]["requests"] == 3
    assert stats["handlers"]["pulse.status"]["errors"] == 0
    assert stats["handlers"]["pulse.resume"] == {**stats["handlers"]["pulse.resume"], "requests": 1, "errors": 1}
    assert stats["tx"]["response"] >= 4 and set(stats["rx"]) == {"request", "response", "event", "control"}
    assert target.rpc("pulse.stats-clear").get_str() is None
    cleared = target.rpc("pulse.stats-get").get()
    assert cleared["handlers"]["pulse.status"] == {"requests": 0, "errors": 0, "mean_ms": 0.0, "max_ms": 0.0}
    target.remove("pulse")


def test_handlers_lists_what_the_caller_may_call(target):
    target.load(PULSE)
    owner = target.rpc("pulse.handlers").get()
    topics = {h["topic"]: h for h in owner["handlers"]}
    assert set(topics) == {"beat", "pulse.pause", "pulse.resume", "pulse.status"}
    assert topics["pulse.resume"] == {
        "topic": "pulse.resume", "kind": "request", "access": "owner",
        "fields": [{"name": "interval", "type": "a number or null", "required": False}],
        "doc": "Beat again, at a new interval if one is given.",
    }
    assert topics["beat"]["kind"] == "timer"
    assert [o["name"] for o in owner["options"]] == ["interval", "topic", "verbose"]
    guest = target.rpc("pulse.handlers", guest=True).get()
    assert [h["topic"] for h in guest["handlers"]] == ["pulse.status"] and guest["options"] == []
    target.remove("pulse")


def test_teardown_runs_once_when_the_instance_shuts_down(tmp_path):
    """SIGTERM from a broker shutting down stops the reactor; teardown runs."""
    instance = start_instance()
    try:
        target = RealTarget(instance)
        target.load(os.path.join(ROOT, "examples", "kvstore.py"))
        target.rpc("kvstore.put", {"key": "config", "value": 1}).get()
        path = tmp_path / "life.py"
        path.write_text(textwrap.dedent(LIFE))
        target.load(str(path), f"record={tmp_path / 'record'}")
    finally:
        status = instance.stop()
    assert status == 0, instance.stderr()[-2000:]
    assert (tmp_path / "record").read_text() == "teardown\n"


# Only on the in-memory broker: stop_error panics a real broker without
# broker.module-nopanic, and the clock is virtual.

STOPPERS = r'''
import asyncio
from flux.brokermod import BrokerModule, request_handler, timer_handler


class Stoppers(BrokerModule):
    log_ = []

    def teardown(self):
        self.log_.append("teardown")
        raise RuntimeError("teardown failed")

    @request_handler("fail")
    def fail(self, msg):
        self.stop_error()
        return {}

    @timer_handler(1, repeat=1)
    async def slow(self):
        self.log_.append("tick")
        await asyncio.sleep(2.5)
'''


def test_teardown_after_stop_error_runs_once_and_its_failure_is_logged(tmp_path):
    from flux.membroker import Broker

    path = tmp_path / "stoppers.py"
    path.write_text(textwrap.dedent(STOPPERS))
    broker = Broker(attrs={"broker.module-nopanic": "1"})
    broker.load(str(path))
    broker.advance(6.5)
    module = __import__("sys").modules["stoppers"]
    # a tick every second, but each takes 2.5 s: ticks at 1, 4 (skipping 2, 3), then 7
    assert module.Stoppers.log_ == ["tick", "tick"]
    assert broker.rpc("stoppers.fail").get() == {}
    broker.run_until_idle()
    assert module.Stoppers.log_ == ["tick", "tick", "teardown"]
    lines = broker.dmesg("stoppers")
    assert "stoppers.err[0]: teardown handler failed: Traceback (most recent call last):" in lines
    assert "stoppers.err[0]: RuntimeError: teardown failed" in lines
    assert "broker.crit[0]: stoppers module runtime failure" in broker.dmesg()  # stop_error still counts


def test_every_load_failure_is_in_the_modules_log(target, tmp_path):
    syntax = tmp_path / "syntax.py"
    syntax.write_text("def f(:\n")
    target.load_error(str(syntax))
    assert any(line.startswith("syntax.err[0]: ") and "syntax.py:1: SyntaxError" in line for line in target.dmesg())
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    target.load_error(str(empty))
    assert any("empty.py: no mod_main() and no BrokerModule subclass" in line
               for line in target.dmesg() if line.startswith("empty.err[0]: "))


def test_flux_module_stats_command_shows_and_clears_them(tmp_path):
    instance = start_instance()
    try:
        instance.load(PULSE, "interval=3600")
        instance.rpc("pulse.status").get()
        shown = __import__("json").loads(instance.flux("module", "stats", "pulse").stdout)
        assert shown["beats"] == 0 and shown["handlers"]["pulse.status"]["requests"] == 1
        assert instance.flux("module", "stats", "--clear", "pulse").returncode == 0
        cleared = __import__("json").loads(instance.flux("module", "stats", "pulse").stdout)
        assert cleared["handlers"]["pulse.status"]["requests"] == 0
        instance.remove("pulse")
    finally:
        assert instance.stop() == 0


def test_options_are_inherited_and_may_be_overridden():
    from flux.brokermod import BrokerModule, Option

    class Base(BrokerModule):
        interval = Option(float, default=1.0)
        name_ = Option(str, default="a")

    class Child(Base):
        interval = Option(int, default=5)
        name_ = None  # no longer an option

    assert {n: o.kind for n, o in Child._flux_options.items()} == {"interval": "int"}
    assert {n: o.kind for n, o in Base._flux_options.items()} == {"interval": "float", "name_": "str"}


RAISES_IN_REACTOR = r'''
from flux.brokermod import BrokerModule


class Crashy(BrokerModule):
    torn = []

    def setup(self):
        def boom(h, watcher, revents, arg):
            raise RuntimeError("raw timer failed")
        self.raw = self.handle.timer_watcher_create(1.0, boom)
        self.raw.start()

    def teardown(self):
        self.torn.append("teardown")
'''


def test_teardown_runs_when_the_reactor_fails(tmp_path):
    from flux.membroker import Broker

    path = tmp_path / "crashy.py"
    path.write_text(textwrap.dedent(RAISES_IN_REACTOR))
    broker = Broker(attrs={"broker.module-nopanic": "1"})
    broker.load(str(path))
    module = __import__("sys").modules["crashy"]
    broker.advance(2)
    assert "crashy" not in broker.modules
    assert module.Crashy.torn == ["teardown"]


# Clients receive the events a module publishes


def test_a_client_receives_published_events_in_its_reactor(target):
    target.load(PULSE, "interval=0.05")
    out = target.client(
        """
        seen = []

        def received(h, watcher, msg, arg):
            seen.append(msg.payload["beat"])
            if len(seen) == 3:
                h.reactor_stop()

        h.event_subscribe("pulse.beat")
        watcher = h.msg_watcher_create(received, 4, "pulse.beat")  # FLUX_MSGTYPE_EVENT
        watcher.start()
        h.reactor_run()
        emit(seen)
        """
    )
    beats = out[0]
    assert len(beats) == 3 and beats == list(range(beats[0], beats[0] + 3))
    target.remove("pulse")


def test_collect_events_in_memory():
    from flux.membroker import Broker

    with Broker() as broker:
        broker.load(PULSE, "interval=1")
        beats = broker.collect_events("pulse.")
        broker.advance(3.5)
        assert beats.events == [("pulse.beat", {"beat": n, "rank": 0}) for n in (1, 2, 3)]
        beats.close()
        broker.advance(2)
        assert len(beats.events) == 3
