"""Requests, on both brokers: routing, answers, payload checking, failing
handlers, matchtags and modules calling modules.

Each test loads its module from a file and runs once on the in-memory
broker and once on a real flux-core instance (the ``flux_broker``
fixture), with the same calls; these are the ledger's request rows
(docs/fidelity.md) that used to be checked in memory only.
"""

import errno
import json
import textwrap

import pytest
from _helpers import error_of
from test_payloads import TYPED



@pytest.fixture
def module_file(tmp_path):
    """Write a module file: ``module_file("name", source) -> path``."""

    def write(name, source):
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        return str(path)

    return write


# A client script sees h (a handle of the instance owner's), json and
# emit(value); what it emitted comes back as a list.
_REAL_CLIENT = r"""
import json, sys
import flux
h = flux.Flux()
def emit(value):
    print(json.dumps(value), flush=True)
exec(compile(sys.argv[1], "<client>", "exec"))
"""


def run_client(broker, script):
    """Run a client *script* against *broker*: in this process on the
    in-memory broker, as a ``flux python`` process on a real instance."""
    script = textwrap.dedent(script)
    if broker.real:
        result = broker.instance.flux("python", "-c", _REAL_CLIENT, script)
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    out = []
    h = broker.broker.connect()
    exec(compile(script, "<client>", "exec"), {"h": h, "json": json, "emit": out.append})  # noqa: S102
    h.close()  # as the client process exits
    broker.broker.run_until_idle()
    return out


# Routing -------------------------------------------------------------------

ROUTE = """
from flux.constants import FLUX_MSGTYPE_REQUEST


def mod_main(h, *args):
    def exact(h, watcher, msg, arg):
        h.respond(msg, {"topic": msg.topic, "by": "exact"})

    def glob(h, watcher, msg, arg):
        h.respond(msg, {"topic": msg.topic, "by": "glob"})

    h.msg_watcher_create(exact, FLUX_MSGTYPE_REQUEST, "route.exact").start()
    h.msg_watcher_create(glob, FLUX_MSGTYPE_REQUEST, "route.glob.*").start()
    h.reactor_run()
"""


def test_a_request_goes_to_its_exact_topic_or_a_glob_watcher(flux_broker, module_file):
    flux_broker.load(module_file("route", ROUTE))
    assert flux_broker.rpc("route.exact").get() == {"topic": "route.exact", "by": "exact"}
    assert flux_broker.rpc("route.glob.a").get() == {"topic": "route.glob.a", "by": "glob"}
    assert flux_broker.rpc("route.glob.b").get() == {"topic": "route.glob.b", "by": "glob"}
    assert error_of(flux_broker.rpc("route.exactly"))[0] == errno.ENOSYS
    assert error_of(flux_broker.rpc("route.other"))[0] == errno.ENOSYS


TWICE = """
from flux.constants import FLUX_MSGTYPE_REQUEST


def mod_main(h, *args):
    def first(h, watcher, msg, arg):
        h.respond(msg, {"handler": "first"})

    def second(h, watcher, msg, arg):
        h.respond(msg, {"handler": "second"})

    h.msg_watcher_create(first, FLUX_MSGTYPE_REQUEST, "twice.x").start()
    h.msg_watcher_create(second, FLUX_MSGTYPE_REQUEST, "twice.x").start()
    h.reactor_run()
"""


def test_of_two_watchers_for_one_topic_the_last_registered_answers(flux_broker, module_file):
    flux_broker.load(module_file("twice", TWICE))
    assert flux_broker.rpc("twice.x").get() == {"handler": "second"}
    assert flux_broker.rpc("twice.x").get() == {"handler": "second"}


OWNSTATS = """
from flux.brokermod import BrokerModule, request_handler


class OwnStats(BrokerModule):
    @request_handler("stats-get")
    def stats(self, msg):
        self.handle.respond(msg, {"custom": True})
"""


def test_a_modules_own_stats_get_replaces_the_standard_one(flux_broker, module_file):
    flux_broker.load(module_file("ownstats", OWNSTATS))
    assert flux_broker.rpc("ownstats.stats-get").get() == {"custom": True}
    assert set(flux_broker.rpc("ownstats.rusage").get()) >= {"utime", "stime"}  # the others stay


# Answers and request payloads ----------------------------------------------

RESPONDER = """
from flux.brokermod import BrokerModule, request_handler


class Responder(BrokerModule):
    @request_handler("bytes")
    def as_bytes(self, msg):
        self.handle.respond(msg, b"raw \\x01 bytes")

    @request_handler("empty")
    def empty(self, msg):
        self.handle.respond(msg)

    @request_handler("inspect")
    def inspect(self, msg):
        try:
            payload, error = msg.payload, None
        except (TypeError, ValueError) as exc:
            payload, error = None, type(exc).__name__
        self.handle.respond(msg, {"payload": payload, "payload_str": msg.payload_str, "error": error})
"""


def test_respond_bytes_is_sent_as_is_and_respond_without_payload_gives_none(flux_broker, module_file):
    flux_broker.load(module_file("resp", RESPONDER))
    assert flux_broker.rpc("resp.bytes").get_str() == "raw \x01 bytes"
    empty = flux_broker.rpc("resp.empty")
    assert empty.get_str() is None
    assert empty.get() is None


def test_a_text_payload_arrives_raw(flux_broker, module_file):
    flux_broker.load(module_file("resp", RESPONDER))
    assert flux_broker.rpc("resp.inspect", "plain text").get() == {
        "payload": None, "payload_str": "plain text", "error": "JSONDecodeError"}
    assert flux_broker.rpc("resp.inspect", {"a": 1}).get() == {
        "payload": {"a": 1}, "payload_str": '{"a": 1}', "error": None}


# Declared payloads: the module checks them; the broker only carries them ---
# (test_payloads.py's TYPED module, loaded from a file)


@pytest.fixture
def typed(flux_broker, module_file):
    flux_broker.load(module_file("typed", TYPED))
    return flux_broker


def test_optional_union_defaults_dicts_any_and_forward_references(typed):
    assert typed.rpc("typed.opt", {}).get() == {"n": None, "tag": 0}
    assert typed.rpc("typed.opt", {"n": None, "tag": "x"}).get() == {"n": None, "tag": "x"}
    assert typed.rpc("typed.opt", {"n": 3, "tag": 4}).get() == {"n": 3, "tag": 4}
    assert error_of(typed.rpc("typed.opt", {"n": 1.5})) == (
        errno.EPROTO, "field 'n': expected an integer or null, got a number")
    assert error_of(typed.rpc("typed.opt", {"tag": [1]})) == (
        errno.EPROTO, "field 'tag': expected an integer or a string, got an array")
    assert typed.rpc("typed.maps", {"counts": {"a": 1}, "anything": [None]}).get() == {
        "counts": {"a": 1}, "anything": [None], "plain": {}}
    assert error_of(typed.rpc("typed.maps", {"counts": {"a": "1"}})) == (
        errno.EPROTO, "field 'counts.a': expected an integer, got a string")
    assert typed.rpc("typed.later", {"point": {"x": 1}}).get_str() == '{"x": 1.0}'
    assert error_of(typed.rpc("typed.later", {"point": {"x": None}})) == (
        errno.EPROTO, "field 'point.x': expected a number, got null")


def test_an_int_is_not_a_bool_a_float_takes_an_int_and_nan_is_not_a_number(typed):
    assert error_of(typed.rpc("typed.flags", {"on": 1}))[1] == "field 'on': expected a boolean, got an integer"
    assert error_of(typed.rpc("typed.flags", {"on": True, "count": False}))[1] == (
        "field 'count': expected an integer, got a boolean")
    assert error_of(typed.rpc("typed.flags", {"on": True, "names": ["a", 2]}))[1] == (
        "field 'names[1]': expected a string, got an integer")
    assert typed.rpc("typed.types", {"ttl": 1, "n": 2}).get() == {"ttl": ["float", 1.0], "n": ["int", 2]}
    assert error_of(typed.rpc("typed.types", {"ttl": 1, "n": True}))[1] == (
        "field 'n': expected an integer, got a boolean")
    for literal in ("NaN", "Infinity", "-Infinity"):
        code, text = error_of(typed.rpc("typed.later", f'{{"point": {{"x": {literal}}}}}'))
        assert code == errno.EPROTO, literal
        assert text.startswith("field 'point.x': expected a number, got ") and "not a finite number" in text


def test_extra_fields_go_to_var_keyword_and_no_payload_is_fine_when_all_are_optional(typed):
    assert typed.rpc("typed.extra", {"name": "a", "x": 1}).get() == {"name": "a", "rest": {"x": 1}}
    assert typed.rpc("typed.opt").get() == {"n": None, "tag": 0}
    code, text = error_of(typed.rpc("typed.flags"))
    assert code == errno.EPROTO
    assert text.startswith("request has no payload; expected a JSON object with on")


# Failing handlers ------------------------------------------------------------

FAILING = '''
import errno
from flux.brokermod import BrokerModule, request_handler


class Failing(BrokerModule):
    @request_handler("oserror")
    def oserror(self, msg):
        raise OSError(errno.EEXIST, "already there")

    @request_handler("key")
    def key(self, msg):
        self.handle.respond(msg, {"x": msg.payload["x"]})

    @request_handler("runtime")
    def runtime(self, msg):
        raise RuntimeError("something broke\\nsecond line")

    @request_handler("raise")
    def raise_named(self, msg):
        kind = msg.payload["kind"]
        if kind == "UnicodeError":
            b"\\xff".decode("utf-8")
        raise {"ValueError": ValueError, "TypeError": TypeError, "KeyError": KeyError}[kind]("bad " + kind)
'''


@pytest.fixture
def failing(flux_broker, module_file):
    flux_broker.load(module_file("failing", FAILING))
    return flux_broker


def _module_lines(broker, name):
    """*name*'s lines in the broker's log, as ``flux dmesg`` shows them."""
    return [line for line in broker.dmesg() if line.startswith(f"{name}.")]


@pytest.mark.flux_handler_errors
def test_an_oserror_answers_its_errno_and_text_and_the_module_keeps_serving(failing):
    assert error_of(failing.rpc("failing.oserror")) == (errno.EEXIST, "already there")
    assert failing.rpc("failing.key", {"x": 1}).get() == {"x": 1}
    assert "failing" in failing.modules()


@pytest.mark.flux_handler_errors
def test_a_traceback_goes_to_the_log_at_err_not_to_the_caller(failing):
    assert error_of(failing.rpc("failing.runtime")) == (errno.EIO, "RuntimeError: something broke")
    failing.settle(lambda: "second line" in "\n".join(_module_lines(failing, "failing")), "the traceback logged")
    lines = _module_lines(failing, "failing")
    assert {line.split("[", 1)[0] for line in lines} == {"failing.err"}
    texts = [line.split(": ", 1)[1] for line in lines]
    assert texts[0] == "request failing.runtime handler failed: Traceback (most recent call last):"
    assert any('raise RuntimeError("something broke\\nsecond line")' in text for text in texts)
    assert texts[-2:] == ["RuntimeError: something broke", "second line"]
    assert not any("brokermod.py" in text for text in texts)


@pytest.mark.flux_handler_errors
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
def test_a_bad_payload_gets_eproto_saying_what_was_wrong(failing, payload, expected):
    assert error_of(failing.rpc("failing.key", payload)) == (errno.EPROTO, expected)
    assert failing.rpc("failing.key", {"x": 2}).get() == {"x": 2}


@pytest.mark.flux_handler_errors
@pytest.mark.parametrize(
    "kind, expected",
    [
        ("KeyError", "KeyError: missing key 'bad KeyError'"),
        ("TypeError", "TypeError: bad TypeError"),
        ("ValueError", "ValueError: bad ValueError"),
        ("UnicodeError", "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
    ],
)
def test_key_type_value_and_unicode_errors_answer_eproto_type_and_text(failing, kind, expected):
    assert error_of(failing.rpc("failing.raise", {"kind": kind})) == (errno.EPROTO, expected)
    assert failing.rpc("failing.key", {"x": 3}).get() == {"x": 3}


# Matchtags -------------------------------------------------------------------

ECHO = """
from flux.brokermod import BrokerModule, request_handler


class Echo(BrokerModule):
    @request_handler("echo")
    def echo(self, msg):
        return msg.payload
"""


_TAG = """
def tag(f):
    return f.pimpl.get_matchtag()
"""


def test_rpcs_reuse_the_lowest_free_matchtag_as_libflux_does(flux_broker, module_file):
    """libflux frees an RPC's matchtag when its future is destroyed after
    its answer; a future destroyed before its answer keeps its tag taken."""
    flux_broker.load(module_file("echo", ECHO))
    tags = run_client(flux_broker, _TAG + """
first = h.rpc("echo.echo", {})
second = h.rpc("echo.echo", {})
emit([tag(first), tag(second)])
first.get(), second.get()
del first  # destroyed after its answer: tag 1 is free again
third = h.rpc("echo.echo", {})
emit(tag(third))
third.get()
pending = h.rpc("echo.echo", {})  # second and third hold 2 and 1
emit(tag(pending))
del pending  # destroyed before its answer: 3 stays taken
fourth = h.rpc("echo.echo", {})
emit(tag(fourth))
del fourth  # still unanswered: 4 stays taken too
del second, third
emit(tag(h.rpc("echo.echo", {})))
""")
    assert tags == [[1, 2], 1, 3, 4, 1]


@pytest.mark.parametrize("flux_broker", [
    pytest.param("memory", marks=pytest.mark.xfail(strict=True, reason=(
        "membroker disagrees: a client's synchronous get() frees at once the tag of an answer it reads "
        "for a future already destroyed; libflux's get() requeues that answer, and the tag stays "
        "taken until the handle's own reactor dispatches it"))),
    "real",
], indirect=True)
def test_a_leaked_matchtag_comes_back_when_the_handles_reactor_takes_its_answer(flux_broker, module_file):
    """flux-core 0.88: the answer to an RPC whose future was destroyed
    first frees its tag when the handle's main dispatcher reads it
    (msg_handler.c, handle_late_response()); a synchronous get() of
    another RPC reads it on a clone of the handle, which requeues it."""
    flux_broker.load(module_file("echo", ECHO))
    tags = run_client(flux_broker, _TAG + """
pending = h.rpc("echo.echo", {})
del pending  # destroyed before its answer: 1 stays taken
waited = h.rpc("echo.echo", {})
emit(tag(waited))
waited.get()  # reads the answer to 1 first, and puts it back
del waited  # answered: 2 is free again
later = h.rpc("echo.echo", {})
emit(tag(later))  # 1 is still taken
later.then(lambda f: h.reactor_stop())
h.reactor_run()  # the handle's dispatcher takes the answer to 1: 1 is free
emit(tag(h.rpc("echo.echo", {})))
""")
    assert tags == [2, 2, 1]


@pytest.mark.parametrize("flux_broker", [
    pytest.param("memory", marks=pytest.mark.xfail(strict=True, reason=(
        "membroker disagrees: the answer to a client's RPC that nothing waits on yet (no get(), no then()) "
        "stays for its future when the handle's reactor reads it; libflux drops it and frees the tag, "
        "which the next RPC takes, and the first future then gets that RPC's answer"))),
    "real",
], indirect=True)
def test_an_answer_the_reactor_reads_before_its_future_waits_frees_its_matchtag(flux_broker, module_file):
    """flux-core 0.88: an RPC's future takes its answers only once it is
    waited on (get(), then()); an answer the handle's reactor reads before
    that is a late response: dropped, its tag freed while the future lives."""
    flux_broker.load(module_file("echo", ECHO))
    out = run_client(flux_broker, _TAG + """
unwaited = h.rpc("echo.echo", {"n": 1})
other = h.rpc("echo.echo", {"n": 2})
other.then(lambda f: h.reactor_stop())
h.reactor_run()  # reads the answer to 1 first: no handler takes it
after = h.rpc("echo.echo", {"n": 3})
emit([tag(unwaited), tag(other), tag(after)])
emit(unwaited.get())  # the answer to the RPC now holding tag 1
try:
    after.wait_for(1.0)
    emit(after.get())
except OSError as exc:
    emit(exc.errno)
""")
    assert out == [[1, 2, 1], {"n": 3}, errno.ETIMEDOUT]


# Modules calling modules -----------------------------------------------------

CALLERS = {
    "doubler": """
        from flux.brokermod import BrokerModule, request_handler


        class Doubler(BrokerModule):
            @request_handler("double")
            def double(self, msg):
                self.handle.respond(msg, {"x": msg.payload["x"] * 2})
    """,
    "sync": """
        from flux.brokermod import BrokerModule, request_handler


        class SyncCaller(BrokerModule):
            @request_handler("quad")
            def quad(self, msg):
                x = self.handle.rpc("doubler.double", {"x": msg.payload["x"]}).get()["x"]
                y = self.handle.rpc("doubler.double", {"x": x}).get()["x"]
                self.handle.respond(msg, {"x": y})
    """,
    "async": """
        from flux.brokermod import BrokerModule, request_handler


        class AsyncCaller(BrokerModule):
            @request_handler("quad")
            def quad(self, msg):
                def doubled(future, request):
                    self.handle.respond(request, {"x": future.get()["x"] * 2})

                self.handle.rpc("doubler.double", msg.payload).then(doubled, msg)
    """,
}


@pytest.fixture
def callers(flux_broker, module_file):
    for name, source in CALLERS.items():
        flux_broker.load(module_file(name, source))
    return flux_broker


def test_a_module_calls_another_synchronously_inside_a_handler(callers):
    assert callers.rpc("sync.quad", {"x": 3}).get() == {"x": 12}


def test_a_module_calls_another_with_a_then_callback(callers):
    assert callers.rpc("async.quad", {"x": 5}).get() == {"x": 20}


def test_several_requests_in_flight_through_modules(callers):
    out = run_client(callers, """
futures = [h.rpc("async.quad", {"x": x}) for x in range(4)]
futures += [h.rpc("sync.quad", {"x": x}) for x in range(4)]
emit([f.get()["x"] for f in futures])
""")
    assert out == [[0, 4, 8, 12, 0, 4, 8, 12]]


# A runtime failure -----------------------------------------------------------

STOPPER = """
from flux.brokermod import BrokerModule, request_handler


class Stopper(BrokerModule):
    @request_handler("answer-then-fail")
    def answer_then_fail(self, msg):
        self.handle.respond(msg, {"answered": True})
        self.stop_error()
"""


@pytest.fixture(params=["memory", "real"])
def panicking(request):
    """A broker WITHOUT broker.module-nopanic, of this test's own: a module's
    runtime failure takes it down (on a real instance, a private one)."""
    from flux.brokermod_testing import MemoryBroker, RealBroker, start_instance

    if request.param == "memory":
        broker = MemoryBroker()
        yield broker
        broker.close()
    else:
        instance = start_instance()
        try:
            yield RealBroker(instance)
        finally:
            instance.stop()


def _down(broker):
    """Whether *broker* went down (panicked)."""
    if broker.real:
        return broker.instance.flux("getattr", "rank", timeout=10).returncode != 0
    return broker.broker.panicked is not None


@pytest.mark.flux_handler_errors
def test_an_answer_sent_just_before_a_runtime_failure_reaches_its_caller(panicking, module_file):
    panicking.load(module_file("stopper", STOPPER))
    assert not _down(panicking)
    assert panicking.rpc("stopper.answer-then-fail").get() == {"answered": True}
    panicking.settle(lambda: _down(panicking), "the broker goes down (stopper module runtime failure)")
    if panicking.real:
        assert "stopper module runtime failure" in panicking.stderr_text()
    else:
        assert panicking.broker.panicked == "stopper module runtime failure"
