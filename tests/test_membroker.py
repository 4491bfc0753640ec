"""The in-memory broker (flux.membroker) behaves like a real Flux instance.

Every expectation here comes from docs/real-flux.md (measured on
flux-core 0.88.0) or from the issue that specifies the broker.
"""

import errno
import json
import os
import sys
import syslog

import pytest
from _helpers import raised_by

from flux.brokermod import BrokerModule, event_handler, request_handler
from flux.membroker import (
    FLUX_MSGTYPE_EVENT,
    FLUX_MSGTYPE_REQUEST,
    FLUX_ROLE_LOCAL,
    FLUX_ROLE_OWNER,
    FLUX_ROLE_USER,
    FLUX_RPC_STREAMING,
    Broker,
    BrokerPanic,
    Message,
    ModuleError,
    ModuleHang,
    StrayResponse,
)

GUEST = 1234
OWNER_ROLEMASK = FLUX_ROLE_OWNER | FLUX_ROLE_LOCAL  # 0x5, as measured


def guest(broker):
    """A client handle with a guest's credentials."""
    return broker.connect(userid=GUEST, rolemask=FLUX_ROLE_USER)




def crit_texts(broker):
    return [e.text for e in broker.log if e.level == syslog.LOG_CRIT]


# Modules used by several tests -------------------------------------------


class Echo(BrokerModule):
    """Tells the caller what it received and who sent it."""

    @request_handler("inspect", allow_guest=True)
    def inspect(self, msg):
        try:
            payload, error = msg.payload, None
        except (TypeError, ValueError) as exc:
            payload, error = None, type(exc).__name__
        self.handle.respond(
            msg,
            {
                "topic": msg.topic,
                "payload": payload,
                "payload_str": msg.payload_str,
                "error": error,
                "type": msg.type,
                "type_str": msg.type_str,
                "userid": msg.userid,
                "rolemask": msg.rolemask,
            },
        )

    @request_handler("owner-only")
    def owner_only(self, msg):
        self.log.info("owner-only handler ran")
        self.handle.respond(msg, {"ran": True})


class Responder(BrokerModule):
    """Answers with each kind of payload."""

    @request_handler("dict")
    def as_dict(self, msg):
        self.handle.respond(msg, {"a": [1, "x"], "b": None})

    @request_handler("str")
    def as_str(self, msg):
        self.handle.respond(msg, "hello")

    @request_handler("json-str")
    def as_json_str(self, msg):
        self.handle.respond(msg, '{"k": 1}')

    @request_handler("bytes")
    def as_bytes(self, msg):
        self.handle.respond(msg, b"raw \x01 bytes")

    @request_handler("empty")
    def empty(self, msg):
        self.handle.respond(msg)

    @request_handler("busy")
    def busy(self, msg):
        self.handle.respond_error(msg, errno.EBUSY, "try again later")

    @request_handler("count")
    def count(self, msg):
        for i in range(msg.payload["n"]):
            self.handle.respond(msg, {"i": i})
        self.handle.respond_error(msg, errno.ENODATA)


class Hoarder(BrokerModule):
    """Accepts requests and never answers them."""

    @request_handler("hold")
    def hold(self, msg):
        self.held = msg


class Stopper(BrokerModule):
    @request_handler("stop")
    def stop_request(self, msg):
        self.handle.respond(msg, {})
        self.stop()

    @request_handler("fail")
    def fail_request(self, msg):
        self.stop_error()  # the request is never answered

    @request_handler("answer-then-fail")
    def answer_then_fail(self, msg):
        self.handle.respond(msg, {"answered": True})
        self.stop_error()

    @event_handler("fail")
    def fail_event(self, msg):
        self.stop_error()


class Doubler(BrokerModule):
    @request_handler("double")
    def double(self, msg):
        self.handle.respond(msg, {"x": msg.payload["x"] * 2})


class SyncCaller(BrokerModule):
    @request_handler("quad")
    def quad(self, msg):
        x = self.handle.rpc("doubler.double", {"x": msg.payload["x"]}).get()["x"]
        y = self.handle.rpc("doubler.double", {"x": x}).get()["x"]
        self.handle.respond(msg, {"x": y})


class AsyncCaller(BrokerModule):
    @request_handler("quad")
    def quad(self, msg):
        def doubled(future, request):
            self.handle.respond(request, {"x": future.get()["x"] * 2})

        self.handle.rpc("doubler.double", msg.payload).then(doubled, msg)


class Clock(BrokerModule):
    """Answers ``clock.wait {"seconds": N}`` after N virtual seconds."""

    @request_handler("wait")
    def wait(self, msg):
        def ring(h, watcher, revents, request):
            h.respond(request, {"waited": request.payload["seconds"]})

        timer = self.handle.timer_watcher_create(msg.payload["seconds"], ring, args=msg)
        timer.start()
        self._timers = getattr(self, "_timers", []) + [timer]


# Request routing -------------------------------------------------------------


def test_request_is_routed_by_exact_topic(broker):
    broker.load(Echo, name="echo")
    assert broker.rpc("echo.inspect", {"x": 1}).get()["topic"] == "echo.inspect"


def test_request_is_routed_to_a_glob_watcher(broker):
    def mod_main(h):
        def cb(h, watcher, msg, arg):
            h.respond(msg, {"topic": msg.topic})

        h.msg_watcher_create(cb, FLUX_MSGTYPE_REQUEST, "globmod.glob.*").start()
        h.reactor_run()

    broker.load(mod_main, name="globmod")
    assert broker.rpc("globmod.glob.a").get() == {"topic": "globmod.glob.a"}
    assert broker.rpc("globmod.glob.b").get() == {"topic": "globmod.glob.b"}
    assert raised_by(broker.rpc("globmod.other")).errno == errno.ENOSYS


def test_most_recently_registered_handler_for_a_topic_wins(broker):
    def mod_main(h):
        def first(h, watcher, msg, arg):
            h.respond(msg, {"handler": "first"})

        def second(h, watcher, msg, arg):
            h.respond(msg, {"handler": "second"})

        h.msg_watcher_create(first, FLUX_MSGTYPE_REQUEST, "twice.x").start()
        h.msg_watcher_create(second, FLUX_MSGTYPE_REQUEST, "twice.x").start()
        h.reactor_run()

    broker.load(mod_main, name="twice")
    assert broker.rpc("twice.x").get() == {"handler": "second"}


def test_module_handler_overrides_standard_stats_get(broker):
    class OwnStats(BrokerModule):
        @request_handler("stats-get")
        def stats(self, msg):
            self.handle.respond(msg, {"custom": True})

    broker.load(OwnStats, name="ownstats")
    assert broker.rpc("ownstats.stats-get").get() == {"custom": True}


def test_unknown_method_of_loaded_module_is_enosys(broker, example):
    broker.load(example("mymod.py"))
    err = raised_by(broker.rpc("mymod.nosuch"))
    assert err.errno == errno.ENOSYS
    assert err.strerror == "Unknown service method 'mymod.nosuch'"


def test_unknown_service_is_enosys(broker):
    err = raised_by(broker.rpc("x.y"))
    assert err.errno == errno.ENOSYS
    assert err.strerror == "No service matching x.y is registered"


def test_owner_on_owner_only_handler_runs_it(broker):
    broker.load(Echo, name="echo")
    assert broker.rpc("echo.owner-only").get() == {"ran": True}
    assert "echo.info[0]: owner-only handler ran" in broker.dmesg()


def test_owner_request_has_rolemask_0x5_and_owner_userid(broker):
    broker.load(Echo, name="echo")
    reply = broker.rpc("echo.inspect").get()
    assert reply["rolemask"] == 0x5 == OWNER_ROLEMASK
    assert reply["userid"] == broker.owner == os.getuid()


def test_guest_request_has_guest_userid_and_rolemask(broker):
    broker.load(Echo, name="echo")
    reply = guest(broker).rpc("echo.inspect").get()
    assert (reply["userid"], reply["rolemask"]) == (GUEST, FLUX_ROLE_USER)


def test_connect_with_other_userid_defaults_to_guest_rolemask(broker):
    broker.load(Echo, name="echo")
    reply = broker.connect(userid=GUEST).rpc("echo.inspect").get()
    assert (reply["userid"], reply["rolemask"]) == (GUEST, FLUX_ROLE_USER)


# Events ------------------------------------------------------------------------


def subscriber_main(h):
    """Subscribes to the prefix "foo", handles exactly "foo.bar"."""
    h.event_subscribe("foo")

    def on_bar(h, watcher, msg, arg):
        h.log(syslog.LOG_INFO, f"handled {msg.topic} ({msg.type_str})")

    h.msg_watcher_create(on_bar, FLUX_MSGTYPE_EVENT, "foo.bar").start()
    h.reactor_run()


def test_event_subscription_is_a_prefix_but_handler_matches_exactly(broker):
    broker.load(subscriber_main, name="sub")
    for topic in ["foo.bar", "foo.baz", "foobar", "other.bar"]:
        broker.event_send(topic)
    assert broker.dmesg("sub") == ["sub.info[0]: handled foo.bar (event)"]
    # foo.bar, foo.baz and foobar were delivered; other.bar was not.
    assert broker.rpc("sub.stats-get").get()["rx"]["event"] == 3


def test_unsubscribed_module_gets_no_events(broker):
    def mod_main(h):
        h.event_subscribe("foo")
        h.event_subscribe("bar")
        h.event_unsubscribe("foo")
        h.reactor_run()

    broker.load(mod_main, name="unsub")
    broker.event_send("foo.x")
    broker.event_send("bar.x")
    assert broker.rpc("unsub.stats-get").get()["rx"]["event"] == 1


def test_event_handler_decorator_receives_events_with_its_topic(broker):
    class Listener(BrokerModule):
        @event_handler("ping-all")
        def on_ping(self, msg):
            self.log.info(f"event {msg.topic} payload {msg.payload}")

    broker.load(Listener, name="listener")
    broker.event_send("listener.ping-all", {"n": 1})
    assert broker.dmesg("listener") == [
        "listener.info[0]: event listener.ping-all payload {'n': 1}"
    ]


def test_guest_event_never_reaches_owner_only_event_handler(broker):
    broker.load(subscriber_main, name="sub")
    guest(broker).event_send("foo.bar")
    broker.run_until_idle()
    assert broker.dmesg("sub") == []
    broker.event_send("foo.bar")
    assert broker.dmesg("sub") == ["sub.info[0]: handled foo.bar (event)"]


def test_module_event_reaches_another_module(broker):
    def publisher(h):
        def publish(h, watcher, msg, arg):
            h.event_send("foo.bar", {"from": "pub"})
            h.respond(msg, None)

        h.msg_watcher_create(publish, FLUX_MSGTYPE_REQUEST, "pub.go").start()
        h.reactor_run()

    broker.load(subscriber_main, name="sub")
    broker.load(publisher, name="pub")
    assert broker.rpc("pub.go").get() is None
    broker.run_until_idle()
    assert broker.dmesg("sub") == ["sub.info[0]: handled foo.bar (event)"]


# Responses -----------------------------------------------------------------------


def test_respond_dict_is_sent_as_json(broker):
    broker.load(Responder, name="resp")
    text = broker.rpc("resp.dict").get_str()
    assert json.loads(text) == {"a": [1, "x"], "b": None}


def test_respond_str_is_sent_raw_not_json_quoted(broker):
    broker.load(Responder, name="resp")
    assert broker.rpc("resp.str").get_str() == "hello"


def test_respond_str_holding_json_decodes_with_get(broker):
    broker.load(Responder, name="resp")
    assert broker.rpc("resp.json-str").get() == {"k": 1}


def test_respond_bytes_is_sent_as_is(broker):
    broker.load(Responder, name="resp")
    assert broker.rpc("resp.bytes").get_str() == "raw \x01 bytes"


def test_respond_without_payload_gives_none(broker):
    broker.load(Responder, name="resp")
    future = broker.rpc("resp.empty")
    assert future.get_str() is None
    assert future.get() is None


def test_respond_error_gives_caller_oserror_with_errno_and_text(broker):
    broker.load(Responder, name="resp")
    err = raised_by(broker.rpc("resp.busy"))
    assert err.errno == errno.EBUSY
    assert err.strerror == "try again later"


def test_streaming_request_gets_several_responses_ended_by_enodata(broker):
    broker.load(Responder, name="resp")
    future = broker.rpc("resp.count", {"n": 3}, flags=FLUX_RPC_STREAMING)
    got = []
    for _ in range(10):
        try:
            got.append(future.get()["i"])
        except OSError as exc:
            assert exc.errno == errno.ENODATA
            break
        future.reset()
    else:
        pytest.fail("the stream never ended")
    assert got == [0, 1, 2]


def test_streaming_responses_reach_then_callback_each_time(broker):
    broker.load(Responder, name="resp")
    seen = []

    def on_response(future):
        try:
            seen.append(future.get()["i"])
        except OSError as exc:
            seen.append(errno.errorcode[exc.errno])
        future.reset()

    broker.rpc("resp.count", {"n": 2}, flags=FLUX_RPC_STREAMING).then(on_response)
    broker.run_until_idle()
    assert seen == [0, 1, "ENODATA"]


# Messages ---------------------------------------------------------------------------


def test_msg_payload_without_payload_raises_typeerror_and_payload_str_is_none(broker):
    broker.load(Echo, name="echo")
    reply = broker.rpc("echo.inspect").get()
    assert reply["error"] == "TypeError"
    assert reply["payload_str"] is None


def test_message_attributes_of_a_request(broker):
    broker.load(Echo, name="echo")
    reply = broker.rpc("echo.inspect", {"x": [1, 2]}).get()
    assert reply["topic"] == "echo.inspect"
    assert reply["payload"] == {"x": [1, 2]}
    assert json.loads(reply["payload_str"]) == {"x": [1, 2]}
    assert reply["type"] == FLUX_MSGTYPE_REQUEST
    assert reply["type_str"] == "request"
    assert reply["error"] is None


def test_request_str_payload_arrives_raw(broker):
    broker.load(Echo, name="echo")
    reply = broker.rpc("echo.inspect", "plain text").get()
    assert reply["payload_str"] == "plain text"
    assert reply["error"] == "JSONDecodeError"


# Standard module methods ------------------------------------------------------------


def test_ping_echoes_payload_with_route_userid_rolemask_rank(broker):
    broker.load(Echo, name="echo")
    reply = broker.rpc("echo.ping", {"seq": 7, "pad": "xyz"}).get()
    assert reply["seq"] == 7 and reply["pad"] == "xyz"
    assert reply["userid"] == broker.owner
    assert reply["rolemask"] == OWNER_ROLEMASK
    assert reply["rank"] == 0
    assert isinstance(reply["route"], str) and reply["route"]


def test_ping_is_allowed_for_guests(broker):
    broker.load(Echo, name="echo")
    reply = guest(broker).rpc("echo.ping", {"seq": 1}).get()
    assert (reply["seq"], reply["userid"], reply["rolemask"]) == (1, GUEST, FLUX_ROLE_USER)


@pytest.mark.parametrize("payload, code", [([1, 2], errno.ENOMEM), (5, errno.EPROTO), ("not json", errno.EPROTO),
                                           (None, errno.EPROTO), ('{"x": NaN}', errno.EPROTO)])
def test_ping_with_non_object_payload_fails_as_measured(broker, payload, code):
    broker.load(Echo, name="echo")
    assert raised_by(broker.rpc("echo.ping", payload)).errno == code


def test_stats_get_has_tx_rx_counts_of_each_message_kind(broker):
    broker.load(lambda h, *args: h.reactor_run(), name="raw")  # the broker's own stats-get
    stats = broker.rpc("raw.stats-get").get()
    kinds = {"request", "response", "event", "control"}
    assert set(stats) == {"tx", "rx"}
    assert set(stats["tx"]) == kinds and set(stats["rx"]) == kinds
    broker.load(Echo, name="echo")  # a BrokerModule's adds its handlers
    assert set(broker.rpc("echo.stats-get").get()) == {"tx", "rx", "handlers"}


def test_stats_get_counts_change_as_messages_flow(broker):
    broker.load(Doubler, name="doubler")
    broker.load(SyncCaller, name="sync")
    before = broker.rpc("sync.stats-get").get()
    broker.rpc("sync.quad", {"x": 1}).get()
    broker.event_send("unrelated.topic")  # not subscribed: not counted
    after = broker.rpc("sync.stats-get").get()
    # quad + this stats-get arrived; two doubler requests went out;
    # the first stats-get's and quad's responses went out.
    assert after["rx"]["request"] - before["rx"]["request"] == 2
    assert after["tx"]["request"] - before["tx"]["request"] == 2
    assert after["rx"]["response"] - before["rx"]["response"] == 2
    assert after["tx"]["response"] - before["tx"]["response"] == 2
    assert after["rx"]["event"] == before["rx"]["event"]


def test_stats_get_counts_received_events(broker):
    broker.load(subscriber_main, name="sub")
    broker.event_send("foo.bar")
    broker.event_send("foo.bar")
    stats = broker.rpc("sub.stats-get").get()
    assert stats["rx"]["event"] == 2


def test_stats_clear_request_zeroes_counters(broker):
    broker.load(Echo, name="echo")
    for _ in range(3):
        broker.rpc("echo.inspect").get()
    assert broker.rpc("echo.stats-clear").get() is None
    stats = broker.rpc("echo.stats-get").get()
    assert stats["rx"]["request"] == 1  # this stats-get
    assert stats["tx"]["response"] == 1  # the stats-clear response


COUNTED = """
from flux.brokermod import BrokerModule, request_handler

class Counted(BrokerModule):
    @request_handler("work")
    def work(self, msg):
        return {}
"""


def test_stats_clear_event_zeroes_every_counter(target, write):
    """The standard counters and the library's per-handler ones: the
    broker's own stats-clear clears only the first."""
    target.load(write("counted.py", COUNTED))
    try:
        for _ in range(3):
            target.rpc("counted.work").get()
        before = target.rpc("counted.stats-get").get()
        assert before["handlers"]["counted.work"]["requests"] == 3
        target.event("counted.stats-clear")
        target.settle(lambda: target.rpc("counted.stats-get").get()["handlers"]["counted.work"]["requests"] == 0,
                      "the per-handler counters cleared")
        stats = target.rpc("counted.stats-get").get()
        assert stats["handlers"]["counted.work"] == {"requests": 0, "errors": 0, "mean_ms": 0.0, "max_ms": 0.0}
        assert stats["tx"]["response"] < before["tx"]["response"]
    finally:
        target.remove("counted")


def test_stats_clear_is_owner_only(broker):
    broker.load(Echo, name="echo")
    assert raised_by(guest(broker).rpc("echo.stats-clear")).errno == errno.EPERM


def test_debug_setbit_clrbit_set_clr(broker):
    broker.load(Echo, name="echo")

    def debug(op, flags=0):
        return broker.rpc("echo.debug", {"op": op, "flags": flags}).get()

    assert debug("setbit", 4) == {"flags": 4}
    assert debug("setbit", 1) == {"flags": 5}
    assert debug("clrbit", 4) == {"flags": 1}
    assert debug("set", 8) == {"flags": 8}
    assert debug("clr") == {"flags": 0}


@pytest.mark.parametrize(
    "payload", [{"op": "toggle", "flags": 1}, {"op": "setbit"}, {"flags": 1}, None]
)
def test_debug_bad_request_is_eproto(broker, payload):
    broker.load(Echo, name="echo")
    assert raised_by(broker.rpc("echo.debug", payload)).errno == errno.EPROTO


def test_debug_bits_are_seen_by_debug_test(broker):
    class Debuggable(BrokerModule):
        @request_handler("check")
        def check(self, msg):
            self.handle.respond(msg, {"bit": self.debug_test(4, clear=True)})

    broker.load(Debuggable, name="dbg")
    assert broker.rpc("dbg.check").get() == {"bit": False}
    broker.rpc("dbg.debug", {"op": "setbit", "flags": 4}).get()
    assert broker.rpc("dbg.check").get() == {"bit": True}
    assert broker.rpc("dbg.check").get() == {"bit": False}  # cleared


def test_rusage_reports_resource_usage(broker):
    broker.load(Echo, name="echo")
    usage = broker.rpc("echo.rusage").get()
    for field in ("utime", "stime", "maxrss", "minflt", "nvcsw"):
        assert isinstance(usage[field], (int, float)), field
    assert usage["maxrss"] > 0


def shutdown_logger_main(h):
    rc = h.reactor_run()
    h.log(syslog.LOG_INFO, f"reactor_run returned {rc}")


def test_remove_sends_shutdown_and_module_exits(broker):
    broker.load(shutdown_logger_main, name="sd")
    broker.remove("sd")
    assert "sd" not in broker.modules
    assert broker.dmesg("sd") == ["sd.info[0]: reactor_run returned 0"]
    err = raised_by(broker.rpc("sd.ping", {}))
    assert err.strerror == "No service matching sd.ping is registered"


def test_remove_is_a_shutdown_request(broker):
    class Watching(BrokerModule):
        @request_handler("shutdown")
        def shutdown(self, msg):
            self.log.info(f"got {msg.topic}")
            self.stop()

    broker.load(Watching, name="watching")
    broker.remove("watching")
    assert broker.dmesg("watching") == ["watching.info[0]: got watching.shutdown"]


def test_shutdown_request_from_owner_stops_module(broker):
    broker.load(shutdown_logger_main, name="sd")
    broker.rpc("sd.shutdown")
    broker.run_until_idle()
    assert "sd" not in broker.modules


def test_shutdown_request_from_guest_is_eperm(broker):
    broker.load(shutdown_logger_main, name="sd")
    assert raised_by(guest(broker).rpc("sd.shutdown")).errno == errno.EPERM
    assert "sd" in broker.modules


def test_remove_unknown_module_is_enoent(broker):
    with pytest.raises(ModuleError) as info:
        broker.remove("nosuch")
    assert info.value.errno == errno.ENOENT


# Logging -------------------------------------------------------------------------


def test_log_records_read_like_flux_dmesg(broker, example):
    broker.load(example("logging_levels.py"), name="logmod")
    broker.rpc("logmod.emit").get()
    lines = broker.dmesg("logmod")
    assert "logmod.warning[0]: level warning" in lines
    assert "logmod.err[0]: level error" in lines
    assert "logmod.crit[0]: level critical" in lines
    assert "logmod.debug[0]: level debug" in lines
    assert len(lines) == 8


def test_handle_log_uses_module_name_and_level(broker):
    def mod_main(h):
        h.log(syslog.LOG_NOTICE, "starting up")
        h.reactor_run()

    broker.load(mod_main, name="noisy")
    assert broker.dmesg("noisy") == ["noisy.notice[0]: starting up"]


def test_log_records_show_the_broker_rank():
    with Broker(rank=2, size=4) as broker:
        broker.load(Echo, name="echo")
        broker.rpc("echo.owner-only").get()
        assert broker.dmesg("echo") == ["echo.info[2]: owner-only handler ran"]


# stop, stop_error and runtime failures -----------------------------------------------


def test_stop_ends_module_cleanly(broker):
    broker.load(Stopper, name="stopper")
    assert broker.rpc("stopper.stop").get() == {}
    broker.run_until_idle()
    assert "stopper" not in broker.modules
    assert broker.panicked is None
    assert crit_texts(broker) == []
    assert raised_by(broker.rpc("stopper.stop")).errno == errno.ENOSYS


def test_stop_error_with_nopanic_is_reported_as_runtime_failure():
    broker = Broker(attrs={"broker.module-nopanic": "1"})
    broker.load(Stopper, name="stopper")
    err = raised_by(broker.rpc("stopper.fail"))
    assert (err.errno, err.strerror) == (errno.EHOSTUNREACH, "module disconnect")
    assert "stopper module runtime failure" in crit_texts(broker)
    assert "stopper: Connection reset by peer" in [e.text for e in broker.log]
    assert broker.panicked is None
    assert "stopper" not in broker.modules
    broker.load(Echo, name="echo")  # the broker is still up
    assert broker.rpc("echo.ping", {}).get()["rank"] == 0
    broker.close()


def test_stop_error_without_nopanic_panics_the_broker(broker):
    broker.load(Echo, name="echo")
    broker.load(Stopper, name="stopper")
    broker.event_send("stopper.fail")
    assert broker.panicked is not None
    assert "stopper module runtime failure" in broker.panicked
    assert any("stopper module runtime failure" in text for text in crit_texts(broker))
    with pytest.raises(BrokerPanic):
        broker.rpc("echo.ping", {})
    with pytest.raises(BrokerPanic):
        broker.load(Doubler, name="doubler")
    with pytest.raises(BrokerPanic):
        broker.event_send("anything")


# set_running ------------------------------------------------------------------------


def slow_start_main(h, *args):
    """Does 10 virtual seconds of synchronous start-up work."""
    module = Echo(h, *args)
    if "early" in args:
        module.set_running()
    h.rpc("clock.wait", {"seconds": 10}).get()
    module.run()


def test_load_returns_when_reactor_runs_without_set_running(broker):
    broker.load(Clock, name="clock")
    broker.load(slow_start_main, name="echo")
    assert broker.now == 10
    assert broker.modules["echo"].state == "running"


def test_load_returns_at_set_running_before_startup_work(broker):
    broker.load(Clock, name="clock")
    broker.load(slow_start_main, "early", name="echo")
    assert broker.now == 0
    assert broker.modules["echo"].state == "running"
    assert broker.rpc("echo.owner-only").get() == {"ran": True}
    assert broker.now == 10


def test_module_exiting_before_running_fails_load(broker):
    def mod_main(h):
        raise OSError(errno.EEXIST, "already there")

    with pytest.raises(ModuleError) as info:
        broker.load(mod_main, name="early_exit")
    assert info.value.errno == errno.EEXIST
    assert "early_exit" not in broker.modules


# Arguments and names ---------------------------------------------------------------

ARGS_MODULE = """
from flux.brokermod import BrokerModule, request_handler

class ArgsModule(BrokerModule):
    @request_handler("info")
    def info(self, msg):
        self.handle.respond(msg, {"name": self.name, "args": list(self.args)})
"""


def test_module_arguments_reach_the_module(broker, write_module):
    path = write_module("argsmod.py", ARGS_MODULE)
    broker.load(path, "--verbose", "count=4")
    assert broker.rpc("argsmod.info").get() == {"name": "argsmod", "args": ["--verbose", "count=4"]}


def test_name_renames_module_and_its_topics(broker, write_module):
    path = write_module("argsmod.py", ARGS_MODULE)
    broker.load(path, "x", name="renamed")
    assert broker.rpc("renamed.info").get() == {"name": "renamed", "args": ["x"]}
    assert raised_by(broker.rpc("argsmod.info")).errno == errno.ENOSYS


def test_default_name_is_basename_up_to_first_dot(broker, write_module):
    path = write_module("happy.v2.py", ARGS_MODULE)
    broker.load(path)
    assert broker.rpc("happy.info").get()["name"] == "happy"


def test_loading_class_without_name_is_refused(broker):
    with pytest.raises(ValueError):
        broker.load(Echo)


def test_module_calling_sys_exit_fails_load_and_is_not_left_loaded(write_module):
    path = write_module(
        "argp_exit_mod.py",
        """
        import argparse

        def mod_main(h, *args):
            parser = argparse.ArgumentParser(prog="argp_exit_mod")
            parser.add_argument("--count", type=int)
            parser.parse_args(args)
            h.reactor_run()
        """,
    )
    broker = Broker()
    try:
        with pytest.raises(ModuleError) as info:
            broker.load(path, "--bogus")
        assert info.value.errno != 0
        assert "argp_exit_mod" not in broker.modules
        broker.close()
    finally:
        sys.modules.pop("argp_exit_mod", None)


# Several modules -------------------------------------------------------------------


def test_module_calls_another_synchronously_inside_handler(broker):
    broker.load(Doubler, name="doubler")
    broker.load(SyncCaller, name="sync")
    assert broker.rpc("sync.quad", {"x": 3}).get() == {"x": 12}


def test_module_calls_another_with_then_callback(broker):
    broker.load(Doubler, name="doubler")
    broker.load(AsyncCaller, name="async")
    assert broker.rpc("async.quad", {"x": 5}).get() == {"x": 20}


def test_several_requests_in_flight_through_modules(broker):
    broker.load(Doubler, name="doubler")
    broker.load(AsyncCaller, name="async")
    futures = [broker.rpc("async.quad", {"x": x}) for x in range(4)]
    assert [f.get()["x"] for f in futures] == [0, 4, 8, 12]


def test_unanswered_requests_get_ehostunreach_when_module_exits(broker):
    broker.load(Hoarder, name="hoarder")
    futures = [broker.rpc("hoarder.hold") for _ in range(2)]
    broker.run_until_idle()
    broker.remove("hoarder")
    for future in futures:
        err = raised_by(future)
        assert (err.errno, err.strerror) == (errno.EHOSTUNREACH, "module disconnect")


def test_get_on_request_nobody_answers_is_edeadlk_not_a_hang(broker):
    broker.load(Hoarder, name="hoarder")
    with pytest.raises(OSError) as info:
        broker.rpc("hoarder.hold").get()
    assert info.value.errno == errno.EDEADLK


# The handle ------------------------------------------------------------------------


def test_unsupported_flux_method_raises_notimplemented_naming_it(broker):
    h = broker.connect()
    with pytest.raises(NotImplementedError, match="event_recv"):
        h.event_recv()


def test_unsupported_flux_method_in_module_raises_notimplemented(broker):
    class Prober(BrokerModule):
        @request_handler("probe")
        def probe(self, msg):
            try:
                self.handle.attr_set("a", "b")
            except NotImplementedError as exc:
                self.handle.respond(msg, {"error": str(exc)})

    broker.load(Prober, name="prober")
    assert "Flux.attr_set of flux-core is not available" in broker.rpc("prober.probe").get()["error"]


def test_attr_get_rank_size_and_get_rank():
    def mod_main(h):
        def info(h, watcher, msg, arg):
            h.respond(
                msg,
                {"rank": h.attr_get("rank"), "size": h.attr_get("size"), "get_rank": h.get_rank()},
            )

        h.msg_watcher_create(info, FLUX_MSGTYPE_REQUEST, "attrs.info").start()
        h.reactor_run()

    with Broker(rank=1, size=4) as broker:
        broker.load(mod_main, name="attrs")
        assert broker.rpc("attrs.info").get() == {"rank": "1", "size": "4", "get_rank": 1}


def test_attr_get_unknown_attribute_is_enoent(broker):
    with pytest.raises(OSError) as info:
        broker.connect().attr_get("no-such-attribute")
    assert info.value.errno == errno.ENOENT


def test_reactor_stop_error_makes_reactor_run_return_minus_one(broker):
    def mod_main(h):
        def quit_(h, watcher, msg, arg):
            h.respond(msg, None)
            h.reactor_stop_error()

        h.msg_watcher_create(quit_, FLUX_MSGTYPE_REQUEST, "rs.quit").start()
        rc = h.reactor_run()
        h.log(syslog.LOG_INFO, f"reactor_run returned {rc}")

    broker.load(mod_main, name="rs")
    broker.rpc("rs.quit").get()
    broker.run_until_idle()
    assert broker.dmesg("rs") == ["rs.info[0]: reactor_run returned -1"]
    assert "rs" not in broker.modules


def test_stopped_msg_watcher_takes_no_requests(broker):
    def mod_main(h):
        def cb(h, watcher, msg, arg):
            h.respond(msg, {"ok": True})
            watcher.stop()

        h.msg_watcher_create(cb, FLUX_MSGTYPE_REQUEST, "once.x").start()
        h.reactor_run()

    broker.load(mod_main, name="once")
    assert broker.rpc("once.x").get() == {"ok": True}
    assert raised_by(broker.rpc("once.x")).errno == errno.ENOSYS


# Timers and the virtual clock ---------------------------------------------------------


def timer_module(broker, fired, *timers):
    """A mod_main arming timers (label, after, repeat); firing records (label, now)."""

    def mod_main(h):
        def ring(h, watcher, revents, label):
            fired.append((label, broker.now))

        for label, after, repeat in timers:
            h.timer_watcher_create(after, ring, repeat=repeat, args=label).start()
        h.reactor_run()

    return mod_main


def test_timer_fires_only_when_clock_advances_past_it(broker):
    fired = []
    broker.load(timer_module(broker, fired, ("t", 5.0, 0.0)), name="timers")
    broker.advance(4.9)
    assert fired == []
    broker.advance(0.1)
    assert fired == [("t", 5.0)]
    broker.advance(100)
    assert fired == [("t", 5.0)]


def test_nothing_fires_without_advance(broker):
    fired = []
    broker.load(timer_module(broker, fired, ("t", 0.5, 0.0)), name="timers")
    broker.rpc("timers.ping", {}).get()
    broker.run_until_idle()
    assert fired == []
    assert broker.now == 0


def test_timers_fire_in_due_order(broker):
    fired = []
    timers = [("late", 3.0, 0.0), ("early", 1.0, 0.0), ("mid", 2.0, 0.0)]
    broker.load(timer_module(broker, fired, *timers), name="timers")
    broker.advance(10)
    assert fired == [("early", 1.0), ("mid", 2.0), ("late", 3.0)]
    assert broker.now == 10


def test_repeating_timer_fires_every_repeat_seconds(broker):
    fired = []
    broker.load(timer_module(broker, fired, ("r", 1.0, 2.0)), name="timers")
    broker.advance(6)
    assert fired == [("r", 1.0), ("r", 3.0), ("r", 5.0)]


def test_timer_stopped_and_restarted_at_once_fires_once(broker):
    fired = []

    def mod_main(h):
        timer = h.timer_watcher_create(1.0, lambda h, w, revents, arg: fired.append(broker.now))
        timer.start()
        timer.stop()
        timer.start()
        h.reactor_run()

    broker.load(mod_main, name="restart")
    broker.advance(5)
    assert fired == [1.0]


EARLY_RESPONSES = """
def echo(h):
    def later(h, w, msg, arg):  # answers after a second, keeping the timer alive until then
        timers.append(h.timer_watcher_create(1.0, lambda *a: h.respond(msg, {"n": msg.payload["n"]})).start())

    timers = []
    h.msg_watcher_create(lambda h, w, msg, arg: h.respond(msg, {"n": msg.payload["n"]}), 1, "echo.x").start()
    h.msg_watcher_create(later, 1, "echo.later").start()
    h.reactor_run()


def two_gets(h):
    def go(h, w, msg, arg):  # the second answer comes while the first get() waits
        first, second = h.rpc("echo.later", {"n": 1}), h.rpc("echo.x", {"n": 2})
        h.respond(msg, [first.get()["n"], second.get()["n"]])

    h.msg_watcher_create(go, 1, "two.go").start()
    h.reactor_run()


def late_then(h):
    def go(h, w, msg, arg):
        first, second = h.rpc("echo.x", {"n": 1}), h.rpc("echo.x", {"n": 2})

        def answered(f):
            second.then(lambda f2: h.respond(msg, [f.get()["n"], f2.get()["n"]]))

        first.then(answered)

    h.msg_watcher_create(go, 1, "late.go").start()
    h.reactor_run()


def kept(h):
    futures = []

    def send(h, w, msg, arg):  # the future is kept, not used: its answer comes with no handler
        futures.append(h.rpc("echo.x", {"n": 3}))
        h.respond(msg, {})

    def read(h, w, msg, arg):
        futures[0].then(lambda f: h.respond(msg, f.get()))

    h.msg_watcher_create(send, 1, "kept.send").start()
    h.msg_watcher_create(read, 1, "kept.read").start()
    h.reactor_run()
"""


def test_a_response_before_its_future_is_used_is_lost_as_libflux_loses_it(broker, write_module):
    """libflux installs an RPC's response handler at the future's first use;
    a response the module's reactor dispatches before that is dropped (a
    sync get()'s handle clone requeues it instead, and a continuation due
    runs before the next dispatch).  Real counterpart:
    test_real_flux.py::test_a_response_before_its_future_is_used_is_lost."""
    scope = {}
    exec(EARLY_RESPONSES, scope)  # noqa: S102 - the test's own modules
    broker.load(scope["echo"], name="echo")
    broker.load(scope["two_gets"], name="two")
    assert broker.rpc("two.go").get() == [1, 2]
    broker.load(scope["late_then"], name="late")
    assert broker.rpc("late.go").get() == [1, 2]  # a continuation runs before the next dispatch
    broker.load(scope["kept"], name="kept")
    assert broker.rpc("kept.send").get() == {}
    broker.run_until_idle()  # its answer reaches the module's reactor
    with pytest.raises(ModuleHang, match="libflux drops a response whose future has no handler yet"):
        broker.rpc("kept.read").get()
    broker.hung = None  # the test goes on to close the broker


def test_timer_start_resumes_the_time_left_as_libev_does(broker):
    """Measured on flux-core 0.88 (tests/test_tree_real.py runs it there):
    a one-shot timer started again after it fired fires at once; one stopped
    at 0.6 s of 1.0 and started again fires at 1.0, not 1.6; reset() of a
    running timer leaves it due when it was (tests/test_timers.py runs that
    on both brokers)."""
    fired = []

    def mod_main(h):
        def once(h, watcher, revents, arg):
            fired.append(("once", broker.now))
            if len(fired) == 1:
                watcher.start()

        h.timer_watcher_create(0.5, once).start()
        paused = h.timer_watcher_create(1.0, lambda *args: fired.append(("paused", broker.now)))
        paused.start()
        h.timer_watcher_create(0.6, lambda *args: (paused.stop(), paused.start())).start()
        again = h.timer_watcher_create(1.0, lambda *args: fired.append(("reset", broker.now)))
        again.start()
        h.timer_watcher_create(0.8, lambda *args: again.reset()).start()
        h.reactor_run()

    broker.load(mod_main, name="resume")
    broker.advance(5)
    assert fired[:2] == [("once", 0.5), ("once", 0.5)]
    assert sorted(fired[2:]) == [("paused", 1.0), ("reset", 1.0)]


def test_repeating_timer_restarted_in_its_callback_fires_once_per_period(broker):
    fired = []

    def mod_main(h):
        def ring(h, watcher, revents, arg):
            fired.append(broker.now)
            watcher.stop()
            watcher.start()

        h.timer_watcher_create(1.0, ring, repeat=1.0).start()
        h.reactor_run()

    broker.load(mod_main, name="restart")
    broker.advance(3)
    assert fired == [1.0, 2.0, 3.0]


def test_get_lets_virtual_time_pass_to_next_timer(broker):
    broker.load(Clock, name="clock")
    assert broker.rpc("clock.wait", {"seconds": 30}).get() == {"waited": 30}
    assert broker.now == 30


def test_advance_backwards_is_refused(broker):
    with pytest.raises(ValueError):
        broker.advance(-1)


# Determinism -------------------------------------------------------------------------


def run_scenario():
    order = []
    broker = Broker()

    def make(name):
        def mod_main(h):
            def ring(h, watcher, revents, arg):
                order.append(f"{name} timer")
                h.log(syslog.LOG_INFO, f"timer at {broker.now}")
                h.event_send("tick", {"from": name})

            def on_tick(h, watcher, msg, arg):
                order.append(f"{name} got tick from {msg.payload['from']}")

            h.event_subscribe("tick")
            h.msg_watcher_create(on_tick, FLUX_MSGTYPE_EVENT, "tick").start()
            h.timer_watcher_create(1.0, ring, repeat=1.0).start()
            h.reactor_run()

        return mod_main

    broker.load(make("a"), name="a")
    broker.load(make("b"), name="b")
    broker.load(Doubler, name="doubler")
    broker.load(AsyncCaller, name="async")
    futures = [broker.rpc("async.quad", {"x": x}) for x in range(3)]
    broker.advance(2.5)
    order.extend(f.get()["x"] for f in futures)
    broker.close()
    return order, broker.dmesg()


def test_same_scenario_twice_gives_identical_logs_and_order():
    first = run_scenario()
    second = run_scenario()
    assert first == second
    order, _ = first
    # Work runs in arrival order: both timers (due at 1.0), then the
    # deliveries of a's event, then those of b's.
    assert order[:6] == [
        "a timer",
        "b timer",
        "a got tick from a",
        "b got tick from a",
        "a got tick from b",
        "b got tick from b",
    ]
    assert order[-3:] == [0, 4, 8]


# Load errors -------------------------------------------------------------------------


def test_loading_a_name_already_loaded_is_eexist(broker, example):
    broker.load(example("mymod.py"))
    with pytest.raises(ModuleError) as info:
        broker.load(Echo, name="mymod")
    assert info.value.errno == errno.EEXIST
    assert broker.rpc("mymod.info").get() == {"name": "mymod"}


def test_loading_the_same_file_twice_is_eexist(broker, example):
    broker.load(example("mymod.py"))
    with pytest.raises(ModuleError) as info:
        broker.load(example("mymod.py"))
    assert info.value.errno == errno.EEXIST


def test_an_answer_sent_before_a_panic_still_reaches_the_caller(broker):
    """A real broker delivers the response before the module's exit takes
    the instance down; only what comes after fails."""
    broker.load(Stopper, name="stopper")
    assert broker.rpc("stopper.answer-then-fail").get() == {"answered": True}
    with pytest.raises(BrokerPanic, match="stopper module runtime failure"):
        broker.rpc("stopper.stop")


class SelfCaller(BrokerModule):
    @request_handler("outer")
    def outer(self, msg):
        return self.handle.rpc("selfcall.inner").get()  # a real module hangs here

    @request_handler("inner")
    def inner(self, msg):
        return {"inner": True}


def test_a_module_calling_itself_synchronously_stops_the_broker_loudly(broker):
    """A real module would hang forever; the in-memory broker raises
    ModuleHang, saying so, instead of letting the module answer an error."""
    from flux.membroker import ModuleHang

    broker.load(SelfCaller, name="selfcall")
    with pytest.raises(ModuleHang, match="module selfcall waited for selfcall.inner .* would hang here forever"):
        broker.rpc("selfcall.outer").get()
    with pytest.raises(ModuleHang):
        broker.rpc("selfcall.inner").get()


def test_conf_get_event_create_and_signal_watchers(write_module):
    broker = Broker(config={"pulse": {"interval": 2.5}, "tbon": {"topo": "kary:2"}})
    path = write_module(
        "confmod.py",
        """
        from flux.brokermod import BrokerModule, request_handler

        class ConfMod(BrokerModule):
            @request_handler("conf")
            def conf(self, msg):
                watcher = self.handle.signal_watcher_create(15, lambda *a: None)
                watcher.start()
                watcher.stop()
                self.handle.send(self.handle.event_create("confmod.made", {"ok": 1}))
                return [self.handle.conf_get("pulse.interval"), self.handle.conf_get("no.such", 7),
                        sorted(self.handle.conf_get())]
        """,
    )
    broker.load(path)
    events = broker.collect_events("confmod.")
    assert broker.rpc("confmod.conf").get() == [2.5, 7, ["pulse", "tbon"]]
    broker.run_until_idle()
    assert events.events == [("confmod.made", {"ok": 1})]
    broker.close()


# A module's turns on the test's thread (see flux/membroker/_strands.py)


class Contextual(BrokerModule):
    """Tells what a handler sees of its module's context."""

    loop_id = None

    @request_handler("async-loop")
    async def async_loop(self, msg):
        import asyncio

        Contextual.loop_id = id(asyncio.get_running_loop())
        return {}

    @request_handler("context")
    def context(self, msg):
        import asyncio
        import logging

        print("printed to stderr", file=sys.stderr)
        logging.getLogger("contextual").warning("a logging warning")
        return {"loop": id(asyncio.get_running_loop())}


def test_a_handler_sees_its_modules_stderr_logging_and_asyncio_loop(broker, capsys):
    import asyncio

    broker.load(Contextual, name="contextual")
    broker.rpc("contextual.async-loop").get()

    async def test_code():
        outer = asyncio.get_running_loop()
        answer = broker.rpc("contextual.context").get()
        return answer, asyncio.get_running_loop() is outer

    answer, test_loop_kept = asyncio.run(test_code())
    assert answer == {"loop": Contextual.loop_id}
    assert test_loop_kept
    assert "printed to stderr" in broker.stderr
    assert "a logging warning" in broker.stderr
    captured = capsys.readouterr()
    assert "printed to stderr" not in captured.err
    assert "a logging warning" not in captured.err


class Nesting(BrokerModule):
    """A handler that runs the reactor itself, until a timer or a request stops it."""

    @request_handler("wait")
    def wait(self, msg):
        stop_after = msg.payload.get("timer")
        if stop_after is not None:
            self.handle.timer_watcher_create(stop_after, lambda h, *args: h.reactor_stop()).start()
        self.handle.reactor_run()
        return {"waited": True}

    @request_handler("release")
    def release(self, msg):
        self.handle.reactor_stop()
        return {"released": True}

    @request_handler("ping")
    def ping(self, msg):
        return {"pong": True}


def test_a_reactor_run_nested_in_a_handler_serves_messages_and_timers(broker):
    broker.load(Nesting, name="nest")
    waiting = broker.rpc("nest.wait", {"timer": 2.0})
    inner = broker.rpc("nest.wait", {})  # served by the nested reactor, nesting again
    released = broker.rpc("nest.release")  # ends the inner one
    assert waiting.get() == {"waited": True}
    assert inner.get() == {"waited": True}
    assert released.get() == {"released": True}
    assert broker.rpc("nest.ping").get() == {"pong": True}  # the outer reactor goes on
    assert broker.now == 2.0


def test_a_nested_reactor_only_the_test_could_end_stops_the_broker_loudly(broker):
    """On a real instance the test would go on and send nest.release; here the
    test's thread runs the callback, so the broker says why it cannot."""
    from flux.membroker import ModuleHang

    broker.load(Nesting, name="nest")
    waiting = broker.rpc("nest.wait", {})
    with pytest.raises(ModuleHang, match="module nest runs reactor_run[(][)] inside a callback, "
                                         "and nothing left to run would end it"):
        waiting.get()


def test_what_escapes_a_reactor_round_is_raised_in_the_modules_own_thread(broker):
    """A watched descriptor closed under the reactor fails its next poll:
    the error comes out of reactor_run() in the module's thread."""
    import threading

    def mod_main(h):
        read_end, write_end = os.pipe()
        h.fd_watcher_create(read_end, lambda *args: None).start()

        def close(h, watcher, msg, arg):
            h.respond(msg, {})
            os.close(read_end)

        h.msg_watcher_create(close, FLUX_MSGTYPE_REQUEST, "closer.close").start()
        try:
            h.reactor_run()
        except (OSError, ValueError) as exc:
            where = threading.current_thread().name
            h.log(syslog.LOG_ERR, f"reactor_run raised {type(exc).__name__} in {where}")
        os.close(write_end)

    broker.load(mod_main, name="closer")
    assert broker.rpc("closer.close").get() == {}
    broker.run_until_idle()
    assert [line for line in broker.dmesg("closer") if "reactor_run raised" in line] == [
        "closer.err[0]: reactor_run raised OSError in membroker:closer"
    ]


class Interrupted(BrokerModule):
    """A handler during which Ctrl-C (SIGINT) arrives."""

    @request_handler("work")
    def work(self, msg):
        import signal

        os.kill(os.getpid(), signal.SIGINT)
        total = sum(range(1000))  # Python checks for signals between bytecodes
        self.log.info(f"finished after the signal: {total}")
        return {}


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt, as in an interactive session, even
    where the suite was started with it ignored (a shell's background job)."""
    import signal

    before = signal.getsignal(signal.SIGINT)
    if callable(before):
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_during_a_handler_stops_the_test_not_the_handler(ctrl_c_raises):
    """The test's thread runs the handler; Ctrl-C there must still reach the
    test (as KeyboardInterrupt), not fail the module's request."""
    import signal

    before = signal.getsignal(signal.SIGINT)
    with Broker() as broker:
        broker.load(Interrupted, name="interrupted")
        answer = broker.rpc("interrupted.work")
        with pytest.raises(KeyboardInterrupt):
            answer.get()
        assert answer.get() == {}
        assert broker.handler_errors == []
        assert "interrupted.info[0]: finished after the signal: 499500" in broker.dmesg()
        assert "route" in broker.rpc("interrupted.ping", {}).get()  # the module goes on
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_outside_handlers_interrupts_at_once(ctrl_c_raises):
    import signal

    with Broker() as broker:
        broker.load(Interrupted, name="interrupted")
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(1000))  # the signal is raised here, in the test's code
        assert "route" in broker.rpc("interrupted.ping", {}).get()


def test_a_broker_leaves_an_ignored_sigint_and_other_threads_alone():
    import signal
    import threading

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with Broker():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    seen = []

    def elsewhere():
        with Broker() as broker:
            broker.load(Interrupted, name="interrupted")
            seen.append(signal.getsignal(signal.SIGINT))
            seen.append("route" in broker.rpc("interrupted.ping", {}).get())

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert seen == [previous, True]


# Matchtags and stray responses ----------------------------------------------------
#
# A real handle gives each RPC the lowest free matchtag and takes it back when
# the answered RPC's future is destroyed; a response sent after a request's
# final answer reaches the next RPC holding the tag.  The in-memory broker
# stops at such a response instead (StrayResponse), so no test passes in
# memory what would misroute answers on a real broker.


PLAIN_ANSWERS = """
from flux.constants import FLUX_MSGTYPE_REQUEST


def mod_main(h, *args):
    def answer(h, watcher, msg, arg):
        for n in range(msg.payload["times"]):
            h.respond(msg, {"n": n})

    watcher = h.msg_watcher_create(answer, FLUX_MSGTYPE_REQUEST, "plain.answer")
    watcher.start()
    h.reactor_run()
"""


def test_rpcs_reuse_the_lowest_free_matchtag_as_libflux_does(broker):
    broker.load(Echo, name="echo")
    client = broker.connect()
    first = client.rpc("echo.ping", {})
    second = client.rpc("echo.ping", {})
    assert (first.pimpl.get_matchtag(), second.pimpl.get_matchtag()) == (1, 2)
    first.get(), second.get()
    del first  # destroyed after its answer: tag 1 is free again
    third = client.rpc("echo.ping", {})
    assert third.pimpl.get_matchtag() == 1
    pending = client.rpc("echo.ping", {})  # second still holds 2
    assert pending.pimpl.get_matchtag() == 3
    del pending  # destroyed before its answer: 3 stays taken until it comes
    assert client.rpc("echo.ping", {}).pimpl.get_matchtag() == 4
    broker.run_until_idle()
    assert client.rpc("echo.ping", {}).pimpl.get_matchtag() == 3


def test_an_answer_after_the_final_one_stops_the_broker_with_stray_response(broker, write):
    broker.load(write("plain.py", PLAIN_ANSWERS))
    client = broker.connect()
    assert client.rpc("plain.answer", {"times": 1}).get() == {"n": 0}
    with pytest.raises(StrayResponse) as info:
        client.rpc("plain.answer", {"times": 2}).get()
    assert str(info.value).startswith(
        "a response to plain.answer (matchtag 1) was sent after its final answer: on a real broker "
        "<flux.membroker.Handle client userid="
    )
    assert str(info.value).endswith("would take it as the answer to its next request that reuses matchtag 1")
    with pytest.raises(StrayResponse):  # and every later wait says so
        broker.run_until_idle()
    broker.stray = None  # let the fixture remove the module


def test_a_response_to_a_matchtag_no_rpc_holds_stops_the_broker(broker):
    broker.load(Echo, name="echo")
    client = broker.connect()
    request = Message(FLUX_MSGTYPE_REQUEST, "echo.ping", b"{}", matchtag=7)
    client.send(request)
    with pytest.raises(StrayResponse, match=r"reached it, and no RPC of it waits for that matchtag"):
        broker.run_until_idle()
    broker.stray = None


def test_answers_to_a_request_without_matchtag_are_no_strays(broker, write):
    broker.load(write("plain.py", PLAIN_ANSWERS))
    client = broker.connect()
    client.send(Message(FLUX_MSGTYPE_REQUEST, "plain.answer", b'{"times": 3}'))
    broker.run_until_idle()  # no watcher takes them: dropped, as libflux does
    assert client._rx["response"] == 3 and broker.stray is None




def test_what_a_stray_response_does_on_each_broker(target, write):
    """A module without BrokerModule answers a request twice.  A real broker
    hands the extra answer to the client's next RPC, which reuses the
    matchtag: that RPC returns an answer meant for the first.  The
    in-memory broker stops there with StrayResponse."""
    target.load(write("plain.py", PLAIN_ANSWERS))
    try:
        if target.real:
            results = target.rpcs_from_one_client("plain.answer", [{"times": 2}, {"times": 1}])
            assert [result.get() for result in results] == [{"n": 0}, {"n": 1}]  # the second got the stray
        else:
            with pytest.raises(StrayResponse, match=r"a response to plain.answer \(matchtag 1\) was sent after"):
                target.rpcs_from_one_client("plain.answer", [{"times": 2}, {"times": 1}])
            target.broker.stray = None
    finally:
        target.remove("plain")


def test_what_the_broker_runs_itself_but_memory_does_not_simulate_says_so(broker):
    """Not ENOSYS: a test must not take it for a missing service."""
    for topic in ("broker.conf-builtin", "log.dmesg", "attr.list", "state-machine.get"):
        err = raised_by(broker.rpc(topic, {}))
        assert err.errno == errno.EOPNOTSUPP, topic
        assert "the in-memory broker does not simulate" in err.strerror and "real Flux instance" in err.strerror


def test_load_and_remove_take_an_idset_and_remove_carries_on_where_a_rank_lacks_it(write_module):
    """Trial 2, D10: load(rank="0-3") was refused, and remove(rank="all")
    stopped at the first rank without the module, as flux exec does not."""
    path = write_module("idle.py", """
        from flux.brokermod import BrokerModule

        class Idle(BrokerModule):
            pass
    """)
    with Broker(size=4) as broker:
        assert [record.rank for record in broker.load(path, rank="1-3")] == [1, 2, 3]
        broker.remove("idle", rank=2)
        with pytest.raises(ModuleError) as info:
            broker.remove("idle", rank="all")
        assert (info.value.errno, str(info.value)) == (errno.ENOENT, "[Errno 2] idle: No such file or directory "
                                                                     "(rank 0,2)")
        assert [sorted(broker.modules_on(rank)) for rank in range(4)] == [[]] * 4
        with pytest.raises(ValueError, match=r"rank '0-9': give a rank, 'all' or an idset of ranks below 4"):
            broker.load(path, rank="0-9")


def test_a_dropped_client_handle_disconnects_as_a_real_one_does(write_module):
    """Trial 2, D9: in memory a client handle dropped without close() never
    disconnected; a real one disconnects when the Flux object is destroyed
    (flux-core's close() even refuses to be called)."""
    import gc

    path = write_module("tied.py", """
        from flux.brokermod import BrokerModule, RankSets, request_handler

        class Tied(BrokerModule):
            sets = RankSets(batch=0)

            @request_handler("add")
            def add(self, msg, *, name: str):
                self.sets.add(name, msg)
                return {}

            @request_handler("joined")
            def joined(self, msg):
                return sorted(name for name in ("a", "b") if self.sets.joined(name))
    """)
    with Broker(size=2) as broker:
        broker.load(path, rank="all")
        client = broker.connect(rank=1)
        client.rpc("tied.add", {"name": "a"}, nodeid=1).get()
        other = broker.connect(rank=1)
        other.rpc("tied.add", {"name": "b"}, nodeid=1).get()
        del client
        gc.collect()
        broker.run_until_idle()
        assert broker.connect().rpc("tied.joined", nodeid=1).get() == ["b"]
        assert other.rpc("tied.joined", nodeid=1).get() == ["b"]


def test_a_closed_client_disconnects_once_and_dropping_it_later_sends_nothing_more(broker, write):
    import gc

    path = write("counted.py", """
        from flux.brokermod import BrokerModule, request_handler

        class counted(BrokerModule):
            @request_handler("hello")
            def hello(self, msg):
                return {}
    """)
    broker.load(path)
    client = broker.connect()
    client.rpc("counted.hello").get()
    before = broker.rpc("counted.stats-get").get()["rx"]["request"]
    client.close()
    broker.run_until_idle()
    after_close = broker.rpc("counted.stats-get").get()["rx"]["request"]
    del client
    gc.collect()
    broker.run_until_idle()
    after_drop = broker.rpc("counted.stats-get").get()["rx"]["request"]
    assert (after_close - before, after_drop - after_close) == (2, 1)  # disconnect + stats-get; then stats-get only
