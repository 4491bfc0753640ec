"""No request can take a module down: failing handlers, bad input, access
control, registration rules, and a fuzzed dispatch path (in-memory broker)."""

import errno
import json

import pytest
from _helpers import error_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flux.brokermod import BrokerModule, event_handler, request_handler
from flux.brokermod import timer_handler
from flux.membroker import (
    FLUX_MSGTYPE_CONTROL,
    FLUX_MSGTYPE_EVENT,
    FLUX_MSGTYPE_REQUEST,
    FLUX_MSGTYPE_RESPONSE,
    FLUX_ROLE_OWNER,
    FLUX_ROLE_USER,
    FLUX_RPC_STREAMING,
    Broker,
    Message,
)
from flux.membroker._message import encode_payload

FAILING = """
import errno
from flux.brokermod import BrokerModule, event_handler, request_handler


class Failing(BrokerModule):
    deferred = []
    events = []

    @request_handler("oserror")
    def oserror(self, msg):
        raise OSError(errno.EEXIST, "already there")

    @request_handler("key")
    def key(self, msg):
        self.handle.respond(msg, {"x": msg.payload["x"]})

    @request_handler("runtime")
    def runtime(self, msg):
        raise RuntimeError("something broke\\nsecond line")

    @request_handler("answered")
    def answered(self, msg):
        self.handle.respond(msg, {"ok": True})
        raise RuntimeError("after the answer")

    @request_handler("stream")
    def stream(self, msg):
        self.handle.respond(msg, {"i": 0})
        self.handle.respond(msg, {"i": 1})
        raise ValueError("mid-stream")

    @request_handler("defer")
    def defer(self, msg):
        self.deferred.append(msg)

    @request_handler("release")
    def release(self, msg):
        for held in self.deferred:
            self.handle.respond(held, {"late": True})
        self.deferred.clear()
        self.handle.respond(msg, None)

    @event_handler("bad")
    def bad_event(self, msg):
        self.events.append(msg.payload["n"])
        raise RuntimeError("event failed")

    @request_handler("events")
    def get_events(self, msg):
        self.handle.respond(msg, self.events)
"""


@pytest.fixture
def failing(broker, write_module):
    broker.load(write_module("failing.py", FAILING))
    return broker


def test_oserror_becomes_its_errno_and_module_keeps_serving(failing):
    assert error_of(failing.rpc("failing.oserror")) == (errno.EEXIST, "already there")
    assert failing.rpc("failing.key", {"x": 1}).get() == {"x": 1}
    assert failing.modules["failing"].state == "running"


def test_traceback_goes_to_the_log_at_err_not_to_the_caller(failing):
    code, text = error_of(failing.rpc("failing.runtime"))
    assert (code, text) == (errno.EIO, "RuntimeError: something broke")
    entries = [e for e in failing.log if e.name == "failing"]
    assert {e.level_name for e in entries} == {"err"}
    assert entries[0].text == "request failing.runtime handler failed: Traceback (most recent call last):"
    text = "\n".join(e.text for e in entries)
    assert 'raise RuntimeError("something broke\\nsecond line")' in text
    assert [e.text for e in entries[-2:]] == ["RuntimeError: something broke", "second line"]
    assert "brokermod.py" not in text


@pytest.mark.parametrize(
    "payload, expected",
    [
        (None, "TypeError: request has no payload"),
        ("not json", "payload is not JSON (Expecting value: line 1 column 1 (char 0))"),
        ({"y": 1}, "KeyError: missing key 'x'"),
        ([1, 2], "TypeError: payload is not a JSON object (got a JSON array)"),
        ("42", "TypeError: payload is not a JSON object (got a JSON number)"),
    ],
)
def test_bad_payloads_get_eproto_saying_what_was_wrong(failing, payload, expected):
    assert error_of(failing.rpc("failing.key", payload)) == (errno.EPROTO, expected)
    assert failing.rpc("failing.key", {"x": 2}).get() == {"x": 2}


def _responses_sent(broker, name):
    """What module *name* sent so far (its stats-get answer not counted)."""
    return broker.rpc(f"{name}.stats-get").get()["tx"]["response"]


def test_a_handler_that_answered_then_raised_sends_nothing_more(failing):
    before = _responses_sent(failing, "failing")
    assert failing.rpc("failing.answered").get() == {"ok": True}
    # the first stats-get's answer and the handler's: no error after it
    assert _responses_sent(failing, "failing") - before == 2


def test_streaming_request_gets_its_responses_then_one_error(failing):
    before = _responses_sent(failing, "failing")
    future = failing.rpc("failing.stream", flags=FLUX_RPC_STREAMING)
    got = []
    for _ in range(2):
        got.append(future.get())
        future.reset()
    assert got == [{"i": 0}, {"i": 1}]
    assert error_of(future) == (errno.EPROTO, "ValueError: mid-stream")
    # stats-get's answer, two responses, one error: nothing after it
    sent = _responses_sent(failing, "failing")
    assert sent - before == 4


def test_deferred_responses_keep_working(failing):
    held = failing.rpc("failing.defer")
    failing.run_until_idle()
    assert not held.is_ready()
    failing.rpc("failing.release").get()
    assert held.get() == {"late": True}


def test_failing_event_handler_is_logged_and_module_survives(failing):
    failing.event_send("failing.bad", {"n": 1})
    failing.event_send("failing.bad", {"n": 2})
    assert failing.rpc("failing.events").get() == [1, 2]
    errors = [e.text for e in failing.log if e.name == "failing" and e.level_name == "err"]
    starts = [t for t in errors if t.startswith("event failing.bad handler failed: Traceback")]
    assert len(starts) == 2
    assert errors.count("RuntimeError: event failed") == 2


def test_unanswered_requests_fail_when_the_module_stops(failing):
    held = failing.rpc("failing.defer")
    failing.run_until_idle()
    failing.remove("failing")
    assert error_of(held) == (errno.EHOSTUNREACH, "module disconnect")


def test_stop_on_error_restores_flux_cores_behaviour(write_module):
    broker = Broker(attrs={"broker.module-nopanic": "1"})
    path = write_module(
        "strict.py",
        """
        from flux.brokermod import BrokerModule, request_handler

        class Strict(BrokerModule):
            stop_on_error = True

            @request_handler("fail")
            def fail(self, msg):
                raise RuntimeError("no")
        """,
    )
    broker.load(path)
    assert error_of(broker.rpc("strict.fail")) == (errno.EIO, "RuntimeError: no")
    broker.run_until_idle()
    assert "strict" not in broker.modules
    assert "broker.crit[0]: strict module runtime failure" in broker.dmesg()


# Access control, for every kind of handler

ACCESS = """
from flux.brokermod import BrokerModule, event_handler, request_handler


class Access(BrokerModule):
    calls = []

    @request_handler("owner")
    def owner(self, msg):
        self.calls.append(("owner", msg.rolemask))
        self.handle.respond(msg, {})

    @request_handler("guest", allow_guest=True)
    def guest(self, msg):
        self.calls.append(("guest", msg.rolemask))
        self.handle.respond(msg, {"userid": msg.userid})

    @event_handler("owner-ev")
    def owner_ev(self, msg):
        self.calls.append(("owner-ev", msg.rolemask))

    @event_handler("guest-ev", allow_guest=True)
    def guest_ev(self, msg):
        self.calls.append(("guest-ev", msg.rolemask))

    @request_handler("calls")
    def get_calls(self, msg):
        self.handle.respond(msg, self.calls)
"""


@pytest.fixture
def access(broker, write_module):
    broker.load(write_module("access.py", ACCESS))
    return broker


def test_guest_events_reach_only_allow_guest_event_handlers(access):
    guest = access.connect(userid=1234, rolemask=FLUX_ROLE_USER)
    guest.event_send("access.owner-ev")
    guest.event_send("access.guest-ev")
    access.event_send("access.owner-ev")
    assert access.rpc("access.calls").get() == [["guest-ev", FLUX_ROLE_USER], ["owner-ev", 5]]


# Registration you can trust


def test_override_without_decorator_keeps_one_registration(broker):
    class Base(BrokerModule):
        @event_handler("tick")
        def tick(self, msg):
            self.seen.append("base")

    class Child(Base):
        seen = []

        def tick(self, msg):
            self.seen.append("child")

    broker.load(Child, name="child")
    broker.event_send("child.tick")
    assert Child.seen == ["child"]


def test_override_decorated_again_keeps_one_registration(broker):
    class Base(BrokerModule):
        @event_handler("tick")
        def tick(self, msg):
            self.seen.append("base")

    class Child(Base):
        seen = []

        @event_handler("tick")
        def tick(self, msg):
            self.seen.append("child")

    broker.load(Child, name="child")
    broker.event_send("child.tick")
    assert Child.seen == ["child"]


def test_subclass_handler_for_a_base_topic_replaces_it(broker):
    class Base(BrokerModule):
        @request_handler("info")
        def base_info(self, msg):
            self.handle.respond(msg, "base")

    class Child(Base):
        @request_handler("info")
        def child_info(self, msg):
            self.handle.respond(msg, "child")

    broker.load(Child, name="child")
    assert broker.rpc("child.info").get_str() == "child"


def test_two_handlers_for_one_topic_fail_at_class_definition():
    with pytest.raises(TypeError) as info:

        class Twice(BrokerModule):
            @request_handler("info")
            def first(self, msg):
                pass

            @request_handler("info")
            def second(self, msg):
                pass

    assert str(info.value) == (
        "test_two_handlers_for_one_topic_fail_at_class_definition.<locals>.Twice: "
        "methods 'first' and 'second' both handle request '<name>.info'"
    )


@pytest.mark.parametrize("wrapper", [staticmethod, classmethod, property])
def test_decorated_non_method_fails_at_class_definition(wrapper):
    with pytest.raises(TypeError, match=f"must be a plain method, not a {wrapper.__name__}"):

        class Odd(BrokerModule):
            handler = wrapper(request_handler("x")(lambda *a: None))


def test_decorator_on_a_non_function_fails_at_once():
    with pytest.raises(TypeError, match=r"@request_handler\('x'\) must decorate a plain method"):
        request_handler("x")(42)


def test_topic_must_be_a_nonempty_string():
    with pytest.raises(TypeError, match="topic must be a non-empty string"):
        event_handler("")


# Fuzzing the dispatch path

FUZZ = """
import errno
from flux.brokermod import BrokerModule, event_handler, request_handler


class Fuzz(BrokerModule):
    owner_calls = []

    @request_handler("echo", allow_guest=True)
    def echo(self, msg):
        self.handle.respond(msg, {"got": msg.payload})

    @request_handler("secret")
    def secret(self, msg):
        self.owner_calls.append(msg.rolemask)
        self.handle.respond(msg, {"n": len(msg.payload)})

    @request_handler("boom", allow_guest=True)
    def boom(self, msg):
        raise OSError(errno.EIO, str(msg.payload_str)[:20])

    @request_handler("glob.*", allow_guest=True)
    def glob(self, msg):
        self.handle.respond(msg, msg.topic)

    @event_handler("ev")
    def ev(self, msg):
        self.owner_calls.append(msg.rolemask)
        msg.payload["key"]

    @request_handler("raise", allow_guest=True)
    def raise_(self, msg):
        kinds = {"exit": SystemExit, "interrupt": KeyboardInterrupt, "genexit": GeneratorExit}
        raise kinds.get(str(msg.payload_str), RuntimeError)(msg.payload_str)

    @request_handler("twice", allow_guest=True)
    def twice(self, msg):
        self.log.info(str(msg.payload_str))
        self.handle.respond(msg, msg.payload_str)
        self.handle.respond(msg, "second")
"""

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
_payload = st.one_of(
    _json,
    st.text(max_size=12),
    st.binary(max_size=12).map(lambda b: b.replace(b"\0", b"")),
    st.sampled_from(["exit", "interrupt", "genexit", "%s%n%d", "100%", "50% off"]),
)
_topic = st.one_of(
    st.sampled_from(
        ["fuzz.echo", "fuzz.secret", "fuzz.boom", "fuzz.glob.x", "fuzz.nosuch", "fuzz.ping", "other.x",
         "fuzz.raise", "fuzz.twice"]
    ),
    st.text(alphabet="abcfuz.-*?", min_size=1, max_size=12),
)
_message = st.tuples(
    st.sampled_from(["request", "event", "raw-request", "raw-event", "response", "control"]),
    _topic,
    _payload,
    st.sampled_from([FLUX_ROLE_OWNER | 4, FLUX_ROLE_USER, 0, FLUX_ROLE_OWNER, 0xFFFF]),
    st.integers(min_value=0, max_value=2**32 - 1),
)


@pytest.fixture(scope="module")
def fuzz_broker(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "fuzz.py"
    path.write_text(FUZZ)
    b = Broker(attrs={"broker.module-nopanic": "1"})
    b.load(str(path))
    yield b
    b.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(_message, min_size=1, max_size=6))
def test_fuzzed_messages_never_crash_and_every_request_gets_one_answer(fuzz_broker, messages):
    futures = []
    for kind, topic, payload, rolemask, userid in messages:
        client = fuzz_broker.connect(userid=userid, rolemask=rolemask)
        if kind == "event":
            client.event_send(topic, payload)
        elif kind == "request":
            futures.append(client.rpc(topic, payload))
        else:
            msgtype = {
                "raw-request": FLUX_MSGTYPE_REQUEST,
                "raw-event": FLUX_MSGTYPE_EVENT,
                "response": FLUX_MSGTYPE_RESPONSE,
                "control": FLUX_MSGTYPE_CONTROL,
            }[kind]
            client.send(Message(msgtype, topic, encode_payload(payload), userid=0, rolemask=FLUX_ROLE_OWNER))
    for future in futures:
        try:
            future.get_str()
        except OSError as exc:
            assert exc.errno not in (errno.EDEADLK, errno.ETIMEDOUT), exc
    # A second answer to any of them would reach its client after the final
    # one: the broker raises StrayResponse for it here.
    fuzz_broker.run_until_idle()
    assert "fuzz" in fuzz_broker.modules
    assert fuzz_broker.rpc("fuzz.ping", {}).get()["rank"] == 0
    calls = fuzz_broker.rpc("fuzz.ping", {}).get()  # module still answers
    assert calls["userid"] == fuzz_broker.owner
    owner_calls = json.loads(json.dumps(_owner_calls(fuzz_broker)))
    assert all(rolemask & FLUX_ROLE_OWNER for rolemask in owner_calls)


def _owner_calls(broker):
    import sys

    module = next(m for name, m in sys.modules.items() if name.endswith("fuzz") and hasattr(m, "Fuzz"))
    return module.Fuzz.owner_calls


# Timers declared with @timer_handler


def test_failing_timer_is_logged_and_module_keeps_running(broker):
    class Ticker(BrokerModule):
        ticks = []

        @timer_handler(1.0, repeat=1.0)
        def tick(self):
            self.ticks.append(self.handle.reactor_now(self.handle.get_reactor()))
            raise RuntimeError("tick failed")

        @request_handler("alive")
        def alive(self, msg):
            self.handle.respond(msg, {"alive": True})

    broker.load(Ticker, name="ticker")
    broker.advance(3)
    assert Ticker.ticks == [1.0, 2.0, 3.0]
    assert broker.rpc("ticker.alive").get() == {"alive": True}
    starts = [line for line in broker.dmesg("ticker") if "timer tick handler failed: Traceback" in line]
    assert len(starts) == 3
    assert broker.dmesg("ticker")[-1] == "ticker.err[0]: RuntimeError: tick failed"


def test_failing_timer_with_stop_on_error_stops_the_module(write_module):
    broker = Broker(attrs={"broker.module-nopanic": "1"})

    class Strict(BrokerModule):
        stop_on_error = True

        @timer_handler(0.5)
        def once(self):
            raise RuntimeError("no")

    broker.load(Strict, name="strict")
    broker.advance(1)
    assert "strict" not in broker.modules
    assert "broker.crit[0]: strict module runtime failure" in broker.dmesg()


def test_timer_handler_rejects_bad_times():
    with pytest.raises(TypeError, match="after must be a finite number of seconds >= 0 .*, not -1$"):
        timer_handler(-1)
    with pytest.raises(TypeError, match="repeat must be a finite number of seconds >= 0 .*, not \\[5\\]$"):
        timer_handler(1, repeat=[5])
    for value in (float("nan"), float("inf")):
        with pytest.raises(TypeError, match=f"after must be a finite number of seconds >= 0 .*, not {value}$"):
            timer_handler(value)
    with pytest.raises(TypeError, match="repeat must name an option or attribute, not '5 s'"):
        timer_handler(1, repeat="5 s")


def test_raw_timer_keeps_flux_cores_rule_run_raises_oserror(broker):
    class Raw(BrokerModule):
        def __init__(self, h, *args):
            super().__init__(h, *args)
            self.timer = h.timer_watcher_create(1.0, self.ring)
            self.timer.start()

        def ring(self, h, watcher, revents, arg):
            raise RuntimeError("raw timer")

    broker_attrs = Broker(attrs={"broker.module-nopanic": "1"})
    broker_attrs.load(Raw, name="raw")
    broker_attrs.advance(1)
    assert "raw" not in broker_attrs.modules
    assert "broker.err[0]: raw: Connection reset by peer" in broker_attrs.dmesg()


def test_send_stamps_the_senders_credentials(broker):
    class Who(BrokerModule):
        seen = []

        @event_handler("who", allow_guest=True)
        def who(self, msg):
            self.seen.append((msg.userid, msg.rolemask))

    broker.load(Who, name="who")
    guest = broker.connect(userid=1234, rolemask=FLUX_ROLE_USER)
    guest.send(Message(FLUX_MSGTYPE_EVENT, "who.who", None, userid=0, rolemask=FLUX_ROLE_OWNER))
    broker.run_until_idle()
    assert Who.seen == [(1234, FLUX_ROLE_USER)]
    with pytest.raises(TypeError, match="send\\(\\) takes a flux.membroker.Message or flux-core's flux.message.Message, not str"):
        guest.send("who.who")


# What only the in-memory broker can show: where a real module would crash
# or hang, it fails loudly instead.


def test_handle_log_refuses_a_printf_directive_and_points_to_self_log(broker):
    client = broker.connect()
    with pytest.raises(ValueError) as info:
        client.log(6, "50% off")
    assert "printf directive '% '" in str(info.value) and "self.log" in str(info.value)
    with pytest.raises(ValueError):
        client.log(6, "ends in %")
    with pytest.raises(TypeError):
        client.log(6, 42)
    client.log(6, "100%% done\0 and gone")
    assert broker.dmesg()[-1] == "client.info[0]: 100% done"


class RawExit(BrokerModule):
    """A raw watcher, outside the library's protection, raising SystemExit."""

    def __init__(self, h, *args):
        super().__init__(h, *args)
        watcher = h.msg_watcher_create(self.exit_, FLUX_MSGTYPE_REQUEST, "rawexit.exit")
        watcher.start()
        self._watchers.append(watcher)

    def exit_(self, h, watcher, msg, arg):
        raise SystemExit(2)

    @request_handler("alive")
    def alive(self, msg):
        self.handle.respond(msg, True)


def test_raw_watcher_raising_system_exit_is_printed_and_dropped_as_cffi_does(broker):
    """Measured on flux-core 0.88: cffi prints 'Exception ignored from cffi
    callback' and the request is never answered; the module goes on."""
    broker.load(RawExit, name="rawexit")
    future = broker.rpc("rawexit.exit")
    with pytest.raises(OSError) as info:
        future.get()
    assert info.value.errno == errno.EDEADLK  # nobody will ever answer it
    assert broker.rpc("rawexit.alive").get() is True
    broker.remove("rawexit")
    text = "\n".join(broker.stderr)
    assert "Exception ignored from cffi callback" in text and "SystemExit: 2" in text


def test_keyboard_interrupt_escaping_mod_main_is_a_runtime_failure(write_module):
    broker = Broker(attrs={"broker.module-nopanic": "1"})
    path = write_module(
        "ctrlc.py",
        """
        def mod_main(h, *args):
            raise KeyboardInterrupt
        """,
    )
    with pytest.raises(OSError) as info:
        broker.load(path)
    assert info.value.errno == errno.ECONNRESET
    assert "ctrlc.py: module failed:" in broker.stderr
    assert "KeyboardInterrupt" in broker.stderr


def test_stop_on_error_stops_on_system_exit_too(write_module):
    broker = Broker(attrs={"broker.module-nopanic": "1"})
    path = write_module(
        "strictexit.py",
        """
        import sys
        from flux.brokermod import BrokerModule, request_handler

        class StrictExit(BrokerModule):
            stop_on_error = True

            @request_handler("exit")
            def exit_(self, msg):
                sys.exit("bye")
        """,
    )
    broker.load(path)
    assert error_of(broker.rpc("strictexit.exit")) == (errno.EINVAL, "SystemExit: bye")
    broker.run_until_idle()
    assert "strictexit" not in broker.modules


def test_logger_sends_any_object_as_text(broker, write_module):
    path = write_module(
        "anylog.py",
        """
        from flux.brokermod import BrokerModule, request_handler

        class AnyLog(BrokerModule):
            @request_handler("log")
            def log_(self, msg):
                self.log.info(42)
                self.log.info(ValueError("%d apples"))
                self.log.info(b"\\xff 5%")
                self.handle.respond(msg, None)
        """,
    )
    broker.load(path)
    broker.rpc("anylog.log").get()
    assert broker.dmesg("anylog")[-3:] == [
        "anylog.info[0]: 42",
        "anylog.info[0]: %d apples",
        "anylog.info[0]: \ufffd 5%",
    ]


def test_a_handler_named_like_a_brokermodule_method_fails_at_class_definition():
    with pytest.raises(TypeError, match=r"Bad.run: a handler method named 'run' hides BrokerModule.run"):

        class Bad(BrokerModule):
            @request_handler("run")
            def run(self, msg):
                pass
