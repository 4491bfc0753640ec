"""One suite, two brokers: every claim of docs/real-flux.md, checked on
the in-memory broker always and on a real instance when flux-core is here.

The same test body runs against both through a small common interface
(load, rpc, event, dmesg...), so the in-memory broker cannot drift from
what a real broker does.
"""

import errno

import pytest
from _helpers import error_of
from flux.membroker._surface import current
from _targets import GUEST, MemTarget, RealTarget


@pytest.fixture(params=["membroker", "real"])
def target(request):
    if request.param == "membroker":
        t = MemTarget(attrs={"broker.module-nopanic": "1"})
    else:
        t = RealTarget(request.getfixturevalue("real_instance"))
    yield t
    t.close()


PROBE = """
import errno, json
from flux.brokermod import BrokerModule, event_handler, request_handler


class Probe(BrokerModule):
    seen = []

    @request_handler("creds", allow_guest=True)
    def creds(self, msg):
        self.handle.respond(msg, {"userid": msg.userid, "rolemask": msg.rolemask})

    @request_handler("owner")
    def owner(self, msg):
        self.seen.append("owner-handler-ran")
        self.handle.respond(msg, {})

    @request_handler("dict")
    def as_dict(self, msg):
        self.handle.respond(msg, {"a": 1})

    @request_handler("str")
    def as_str(self, msg):
        self.handle.respond(msg, "hello")

    @request_handler("error")
    def as_error(self, msg):
        self.handle.respond_error(msg, errno.EEXIST, "custom text")

    @request_handler("stream")
    def stream(self, msg):
        for i in range(3):
            self.handle.respond(msg, {"i": i})
        self.handle.respond_error(msg, errno.ENODATA)

    @request_handler("error-zero")
    def error_zero(self, msg):
        self.handle.respond_error(msg, 0, "zero errnum")

    @request_handler("error-empty")
    def error_empty(self, msg):
        self.handle.respond_error(msg, errno.EPERM, "")

    @request_handler("attrs")
    def attrs(self, msg):
        out = {}
        for name in ["local-uri", "hostlist", "version", "log-level", "broker.pid", "rundir", "parent-uri"]:
            try:
                out[name] = self.handle.attr_get(name)
            except OSError as exc:
                out[name] = exc.errno
        return out

    @request_handler("register-dotted")
    def register_dotted(self, msg):
        try:
            self.handle.service_register("a.b").get()
        except OSError as exc:
            return [exc.errno, exc.strerror]

    @request_handler("stash")
    def stash(self, msg):
        msg.note = "kept"  # a module may keep its own data on a message
        self.handle.respond(msg, {"note": msg.note})

    @request_handler("nopayload")
    def nopayload(self, msg):
        try:
            msg.payload
            raised = None
        except TypeError:
            raised = "TypeError"
        self.handle.respond(msg, {"raised": raised, "payload_str": msg.payload_str})

    @request_handler("answered")
    def answered(self, msg):
        self.handle.respond(msg, {"ok": True})
        raise RuntimeError("after the answer")

    @request_handler("midstream")
    def midstream(self, msg):
        self.handle.respond(msg, {"i": 0})
        self.handle.respond(msg, {"i": 1})
        raise ValueError("mid-stream")

    held = []

    @request_handler("hold")
    def hold(self, msg):
        self.held.append(msg)

    @request_handler("held")
    def get_held(self, msg):
        self.handle.respond(msg, len(self.held))

    @request_handler("release")
    def release(self, msg):
        for held in self.held:
            self.handle.respond(held, {"late": True})
        del self.held[:]
        self.handle.respond(msg, None)

    @request_handler("seen")
    def get_seen(self, msg):
        self.handle.respond(msg, self.seen)

    @event_handler("ev")
    def ev(self, msg):
        self.seen.append("ev:" + msg.topic)

    @event_handler("bad")
    def bad_ev(self, msg):
        self.seen.append("bad")
        raise RuntimeError("event handler failed on purpose")

    @event_handler("open", allow_guest=True)
    def open_ev(self, msg):
        self.seen.append("open:%d" % msg.userid)

    @request_handler("log")
    def log_(self, msg):
        self.log.warning("level warning")
        self.log.error("level err")
        self.log.critical("level crit")
        self.handle.respond(msg, None)
"""


@pytest.fixture
def probe(target, write):
    target.load(write("probe.py", PROBE))
    yield target
    if "probe" in target.modules():
        target.remove("probe")


# Loading


def test_name_is_basename_up_to_first_dot(target, write):
    path = write("dotted.name.py", PROBE)
    target.load(path)
    assert "dotted" in target.modules()
    assert target.rpc("dotted.dict").get() == {"a": 1}
    target.remove("dotted")


def test_name_option_wins(target, write):
    target.load(write("probe.py", PROBE), name="other")
    assert target.rpc("other.dict").get() == {"a": 1}
    target.remove("other")


def test_arguments_are_split_on_whitespace(target, write):
    path = write(
        "args.py",
        """
        from flux.brokermod import BrokerModule, request_handler

        class Args(BrokerModule):
            @request_handler("args")
            def args_(self, msg):
                self.handle.respond(msg, list(self.args))
        """,
    )
    target.load(path, "a  b", "c")
    assert target.rpc("args.args").get() == ["a", "b", "c"]
    target.remove("args")


def test_module_file_is_imported_under_its_basename_in_sys_modules(target, write):
    """flux-core's importer would name happy.py "ha" and leave it out of
    sys.modules (breaking @dataclass with postponed annotations)."""
    path = write(
        "happy.py",
        """
        from __future__ import annotations

        import sys
        from dataclasses import dataclass

        from flux.brokermod import BrokerModule, request_handler


        @dataclass
        class Point:
            x: int


        class Happy(BrokerModule):
            @request_handler("who")
            def who(self, msg):
                self.handle.respond(msg, {"name": __name__, "registered": sys.modules.get(__name__) is not None,
                                          "point": Point(3).x})
        """,
    )
    target.load(path)
    assert target.rpc("happy.who").get() == {"name": "happy", "registered": True, "point": 3}
    target.remove("happy")


def test_valueerror_at_start_is_einval_without_traceback(target, write):
    path = write("valerr.py", "def mod_main(h, *args):\n    raise ValueError('bad option')\n")
    code, text = target.load_error(path)
    assert code == errno.EINVAL
    assert "valerr.py: bad option" in text and "Traceback" not in text
    assert "broker.err[0]: valerr: Invalid argument" in target.dmesg()


def test_oserror_at_start_gives_its_errno(target, write):
    path = write("exists.py", "import errno\ndef mod_main(h, *args):\n    raise OSError(errno.EEXIST, 'taken')\n")
    code, _ = target.load_error(path)
    assert code == errno.EEXIST


def test_syntax_error_and_missing_entry_point_fail_the_load(target, write):
    _, text = target.load_error(write("syntax.py", "def f(:\n"))
    assert "syntax.py:1: SyntaxError" in text
    _, text = target.load_error(write("empty.py", "x = 1\n"))
    assert "empty.py: no mod_main() and no BrokerModule subclass" in text


def test_missing_file_fails_before_any_loader(target, tmp_path):
    _, text = target.load_error(str(tmp_path / "absent.py"))
    assert "could not canonicalize module path" in text


# Requests


def test_unknown_method_is_enosys(probe):
    assert error_of(probe.rpc("probe.nosuch")) == (errno.ENOSYS, "Unknown service method 'probe.nosuch'")


def test_guest_gets_eperm_and_handler_never_runs(probe):
    assert error_of(probe.rpc("probe.owner", guest=True)) == (errno.EPERM, "Request requires owner credentials")
    assert probe.rpc("probe.seen").get() == []


def test_credentials_of_owner_and_guest(probe):
    assert probe.rpc("probe.creds").get() == {"userid": probe.owner(), "rolemask": 0x5}
    assert probe.rpc("probe.creds", guest=True).get() == {"userid": GUEST, "rolemask": 0x2}


def test_respond_encodings_and_errors(probe):
    assert probe.rpc("probe.dict").get_str() == '{"a": 1}'
    assert probe.rpc("probe.str").get_str() == "hello"
    assert error_of(probe.rpc("probe.error")) == (errno.EEXIST, "custom text")


def test_streaming_ends_with_enodata(probe):
    result = probe.rpc("probe.stream", streaming=True)
    assert result.stream() == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert result.answers[-1]["errno"] == errno.ENODATA


def test_a_module_may_set_attributes_on_a_message(probe):
    assert probe.rpc("probe.stash").get() == {"note": "kept"}


def test_payload_of_request_without_payload(probe):
    assert probe.rpc("probe.nopayload").get() == {"raised": "TypeError", "payload_str": None}


def test_failing_handler_answers_and_module_survives(target, write):
    path = write(
        "fails.py",
        """
        from flux.brokermod import BrokerModule, request_handler

        class Fails(BrokerModule):
            @request_handler("x")
            def x(self, msg):
                raise RuntimeError("broken")
        """,
    )
    target.load(path)
    assert error_of(target.rpc("fails.x")) == (errno.EIO, "RuntimeError: broken")
    assert "fails" in target.modules()
    assert any(line.startswith("fails.err[0]: request fails.x handler failed") for line in target.dmesg())
    target.remove("fails")


def _responses_sent(target):
    return target.rpc("probe.stats-get").get()["tx"]["response"]


def test_a_handler_that_answered_then_raised_sends_nothing_more(probe):
    before = _responses_sent(probe)
    assert probe.rpc("probe.answered").get() == {"ok": True}
    # the stats-get answer before, plus exactly one answer to "answered"
    assert _responses_sent(probe) - before == 2


def test_stream_failing_midway_gets_its_responses_then_one_error(probe):
    before = _responses_sent(probe)
    result = probe.rpc("probe.midstream", streaming=True)
    assert result.stream() == [{"i": 0}, {"i": 1}]
    assert result.answers[-1] == {"errno": errno.EPROTO, "error": "ValueError: mid-stream"}
    assert _responses_sent(probe) - before == 4  # stats-get, two responses, one error


def test_deferred_answer_and_disconnect_when_the_module_stops(probe):
    later = probe.start_rpc("probe.hold")
    probe.settle(lambda: probe.rpc("probe.held").get() == 1, "the request to be held")
    probe.rpc("probe.release").get()
    assert later.wait().get() == {"late": True}
    never = probe.start_rpc("probe.hold")
    probe.settle(lambda: probe.rpc("probe.held").get() == 1, "the request to be held")
    probe.remove("probe")
    assert error_of(never.wait()) == (errno.EHOSTUNREACH, "module disconnect")


# Events


def test_event_subscription_is_prefix_but_handler_matches_exactly(probe):
    probe.event("probe.ev.more")
    probe.event("probe.ev")
    probe.settle(lambda: "ev:probe.ev" in probe.rpc("probe.seen").get(), "probe.ev to arrive")
    assert probe.rpc("probe.seen").get() == ["ev:probe.ev"]


def test_guest_event_never_reaches_owner_only_handler(probe):
    probe.event("probe.ev", guest=True)
    probe.event("probe.ev")  # a marker: events arrive in order
    probe.settle(lambda: probe.rpc("probe.seen").get() != [], "the owner's event")
    assert probe.rpc("probe.seen").get() == ["ev:probe.ev"]


def test_guest_event_reaches_allow_guest_event_handler(probe):
    probe.event("probe.open", guest=True)
    probe.settle(lambda: probe.rpc("probe.seen").get() != [], "the guest's event")
    assert probe.rpc("probe.seen").get() == [f"open:{GUEST}"]


def test_failing_event_handler_is_logged_and_module_survives(probe):
    probe.event("probe.bad")
    probe.settle(lambda: probe.rpc("probe.seen").get() == ["bad"], "the event")
    lines = probe.dmesg()
    assert "probe.err[0]: event probe.bad handler failed: Traceback (most recent call last):" in lines
    assert "probe.err[0]: RuntimeError: event handler failed on purpose" in lines
    assert probe.rpc("probe.dict").get() == {"a": 1}


# Standard module methods


def test_ping_echoes_and_adds_route_and_credentials(probe):
    answer = probe.rpc("probe.ping", {"seq": 7}).get()
    assert answer["seq"] == 7
    assert (answer["userid"], answer["rolemask"], answer["rank"]) == (probe.owner(), 5, 0)
    assert "!" in answer["route"]
    assert probe.rpc("probe.ping", {}, guest=True).get()["userid"] == GUEST


def test_stats_get_counts_and_stats_clear_resets(probe):
    # How many times libflux counts one message is its own business (a real
    # module counts each request twice); the contract is the shape, growth
    # and reset.
    first = probe.rpc("probe.stats-get").get()
    assert {"tx", "rx"} <= set(first)  # this library adds "handlers"
    assert set(first["rx"]) == {"request", "response", "event", "control"}
    for _ in range(5):
        probe.rpc("probe.dict").get()
    grown = probe.rpc("probe.stats-get").get()
    assert grown["rx"]["request"] >= first["rx"]["request"] + 5
    assert grown["tx"]["response"] >= first["tx"]["response"] + 5
    assert probe.rpc("probe.stats-clear").get_str() is None
    cleared = probe.rpc("probe.stats-get").get()
    assert 1 <= cleared["rx"]["request"] <= 2
    assert cleared["tx"]["response"] <= 1


def test_debug_bits(probe):
    assert probe.rpc("probe.debug", {"op": "setbit", "flags": 0x4}).get() == {"flags": 4}
    assert probe.rpc("probe.debug", {"op": "setbit", "flags": 0x1}).get() == {"flags": 5}
    assert probe.rpc("probe.debug", {"op": "clrbit", "flags": 0x4}).get() == {"flags": 1}
    assert probe.rpc("probe.debug", {"op": "clr", "flags": 0}).get() == {"flags": 0}
    assert error_of(probe.rpc("probe.debug", {"op": "bogus", "flags": 0}))[0] == errno.EPROTO


def test_config_reload_and_rusage(probe):
    assert probe.rpc("probe.config-reload", {}).get_str() is None
    usage = probe.rpc("probe.rusage").get()
    assert {"utime", "stime", "maxrss"} <= set(usage)


def test_shutdown_is_what_remove_sends(probe):
    assert error_of(probe.rpc("probe.shutdown", guest=True))[0] == errno.EPERM
    probe.remove("probe")
    assert "probe" not in probe.modules()


# Logging


def test_log_lines_look_like_flux_dmesg(probe):
    probe.rpc("probe.log").get()
    lines = probe.dmesg()
    for expected in ["probe.warning[0]: level warning", "probe.err[0]: level err", "probe.crit[0]: level crit"]:
        assert expected in lines


# Measured corner cases


def test_respond_error_with_errnum_zero_and_with_empty_text(probe):
    assert error_of(probe.rpc("probe.error-zero")) == (errno.EINVAL, "zero errnum")
    assert error_of(probe.rpc("probe.error-empty")) == (errno.EPERM, "")


def test_config_reload_needs_an_object(probe):
    assert error_of(probe.rpc("probe.config-reload")) == (errno.EPROTO, "Failed to parse probe.config-reload request")
    assert probe.rpc("probe.config-reload", {}).get_str() is None


@pytest.mark.parametrize("payload, code", [([1], errno.ENOMEM), (None, errno.EPROTO), ("text", errno.EPROTO),
                                           ('{"x": NaN}', errno.EPROTO), ('{"x": Infinity}', errno.EPROTO)])
def test_ping_refuses_what_jansson_refuses(probe, payload, code):
    assert error_of(probe.rpc("probe.ping", payload))[0] == code


def test_a_payload_ends_at_a_nul(probe):
    assert probe.rpc("probe.ping", '{"x": 1}\u0000tail').get()["x"] == 1


def test_broker_attributes_a_module_reads(probe):
    attrs = probe.rpc("probe.attrs").get()
    assert attrs["local-uri"].startswith("local://") and attrs["version"] == current().version
    assert attrs["log-level"] == "7" and attrs["hostlist"] and int(attrs["broker.pid"]) > 0 and attrs["rundir"]
    assert attrs["parent-uri"] == errno.ENOENT


def test_a_service_name_with_a_dot_is_refused(probe):
    assert probe.rpc("probe.register-dotted").get() == [
        errno.EINVAL, "could not register service a.b for module probe: Invalid argument"]


def test_a_module_name_with_a_dot_is_refused(target, write):
    code, _ = target.load_error(write("probe.py", PROBE), name="my.alias")
    assert code == errno.EINVAL


def test_upstream_of_rank_0_is_unreachable(probe):
    out = probe.client(
        """
        try:
            h.rpc("probe.ping", {}, nodeid=0xFFFFFFFE).get()
        except OSError as exc:
            emit([exc.errno, exc.strerror])
        """
    )
    assert out == [[errno.EHOSTUNREACH, "No route to host"]]


def test_broker_log_lines_on_load_and_remove(target, write):
    target.clear_log()
    target.load(write("probe.py", PROBE))
    target.remove("probe")
    lines = [line for line in target.dmesg() if line.startswith("broker.debug[0]: ") and "probe" in line]
    if current().older_than("0.86"):  # measured on 0.84: the loader's pid with insmod, as -1
        assert lines[0] == "broker.debug[0]: insmod probe exec pid=-1"
        assert not [line for line in lines if "module-python-exec" in line]
    else:
        assert lines[0] == "broker.debug[0]: insmod probe"
        assert lines[1].startswith("broker.debug[0]: module-python-exec probe pid=")
    assert lines[-2:] == ["broker.debug[0]: rmmod probe", "broker.debug[0]: module probe exited"]


def test_a_module_importing_flux_constants_loads(target, write):
    path = write(
        "consts.py",
        """
        from flux.constants import FLUX_MSGTYPE_REQUEST, FLUX_ROLE_USER, FLUX_RPC_STREAMING
        from flux.brokermod import BrokerModule, request_handler

        class Consts(BrokerModule):
            @request_handler("values")
            def values(self, msg):
                return [FLUX_MSGTYPE_REQUEST, FLUX_ROLE_USER, FLUX_RPC_STREAMING]
        """,
    )
    target.load(path)
    assert target.rpc("consts.values").get() == [1, 2, 2]
    target.remove("consts")


def test_a_modules_stderr_and_logging_reach_the_brokers_stderr(target, write):
    path = write(
        "talker.py",
        """
        import logging
        import sys
        from flux.brokermod import BrokerModule, request_handler

        class Talker(BrokerModule):
            @request_handler("talk")
            def talk(self, msg):
                print("talker says hello on stderr", file=sys.stderr, flush=True)
                logging.getLogger("talker").warning("talker warns through logging")
                return {}
        """,
    )
    target.load(path)
    target.rpc("talker.talk").get()
    target.settle(lambda: "talker warns through logging" in target.stderr_text(), "the module's stderr")
    assert "talker says hello on stderr" in target.stderr_text()
    target.remove("talker")


# The standard methods' answers, byte for byte: libflux's C handlers encode
# with jansson, compact where they ask for it, real numbers to 17 digits.

PLAIN = """
def mod_main(h, *args):
    h.reactor_run()
"""


def test_standard_methods_answer_with_jansson_text(target, write):
    target.load(write("plain.py", PLAIN))
    try:
        assert target.rpc("plain.debug", {"op": "setbit", "flags": 4}).get_str() == '{"flags":4}'
        stats = target.rpc("plain.stats-get").get_str()
        assert stats.startswith('{"tx":{"request":') and ", " not in stats and ": " not in stats
        rusage = target.rpc("plain.rusage").get_str()
        assert rusage.startswith('{"utime":') and ", " not in rusage
        ping = target.rpc("plain.ping", {"a": 1, "f": 0.1}).get_str()
        assert ping.startswith('{"a": 1, "f": 0.10000000000000001, "route": "')
        assert ping.endswith(f', "userid": {target.owner()}, "rolemask": 5, "rank": 0}}')
    finally:
        target.remove("plain")


# The broker's own services.


def test_the_broker_answers_its_own_methods(target):
    ping = target.rpc("broker.ping", {"n": 1}).get()
    assert (ping["n"], ping["userid"], ping["rolemask"], ping["rank"]) == (1, target.owner(), 5, 0)
    assert set(target.rpc("broker.stats-get").get()) == {"tx", "rx"}
    assert target.rpc("broker.getenv", {"names": ["NO_SUCH_VARIABLE_X"]}).get_str() == '{"env":{}}'
    assert target.rpc("broker.setenv", {"env": {"NO_SUCH_VARIABLE_X": "1"}}).get() is None
    assert target.rpc("broker.getenv", {"names": ["NO_SUCH_VARIABLE_X"]}).get() == {"env": {"NO_SUCH_VARIABLE_X": "1"}}
    assert error_of(target.rpc("broker.getenv", {})) == (errno.EPROTO, "Protocol error")
    assert error_of(target.rpc("broker.ping", [1]))[0] == errno.ENOMEM
    assert error_of(target.rpc("broker.nosuch")) == (errno.ENOSYS, "Unknown service method 'broker.nosuch'")


def test_a_module_cannot_take_a_service_the_broker_runs(target, write):
    errnum, _ = target.load_error(write("probe.py", PROBE), name="log")
    assert errnum == errno.EEXIST
