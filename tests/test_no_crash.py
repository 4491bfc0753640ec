"""No request, event or timer takes a module down, on any broker.

Three holes that once let a single request crash a module, and with it a
real instance: text logged as a printf format, SystemExit and
KeyboardInterrupt escaping a handler unanswered, and a second answer to
one request reaching another.  Each test runs on three brokers:

* the in-memory broker, without ``broker.module-nopanic``;
* a real instance running this library's loader;
* a real instance running flux-core's own loader with this library's
  ``flux.brokermod`` (the drop-in path).

The real instances run WITHOUT ``broker.module-nopanic``: a module that
crashed would panic the broker, and every later request of the test
would fail.  Each test ends by checking that the module still answers.
"""

import errno
import json
import os
import subprocess

import pytest
from _helpers import error_of
from _targets import MemTarget, RealTarget

from flux.brokermod_testing import skip_reason, start_instance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HOLES = r'''
import errno
import sys
import syslog

from flux.brokermod import AnswerError, BrokerModule, event_handler, request_handler, timer_handler


class Holes(BrokerModule):
    seen = []
    held = []

    @request_handler("seen")
    def get_seen(self, msg):
        self.handle.respond(msg, self.seen)

    @request_handler("whose")
    def whose(self, msg):
        import flux.brokermod
        self.handle.respond(msg, {"brokermod": flux.brokermod.__file__, "loader": sys.argv[0]})

    # 1. Text with % in it

    @request_handler("percent-error")
    def percent_error(self, msg):
        raise ValueError("bad value %s for field %d at 100%")

    @request_handler("percent-source")
    def percent_source(self, msg):
        return "name=%s, %n" % msg.payload["name"]

    @request_handler("percent-log")
    def percent_log(self, msg):
        self.log.info("50% off, 100%% done, %s %d %n %x")
        self.log(syslog.LOG_NOTICE, "trailing %")
        self.log.warning(b"bytes 10%")
        self.log.error("nul\0inside")
        self.handle.respond(msg, {})

    @request_handler("raw-log")
    def raw_log(self, msg):
        # flux-core's Flux.log(): the text is a printf format.
        self.handle.log(syslog.LOG_INFO, "raw 100%% done")
        self.handle.log(syslog.LOG_INFO, "raw cut\0here")
        self.log.info("first\n\n  second\r\nthird\n")
        self.handle.respond(msg, {})

    # 2. BaseException other than Exception

    @request_handler("exit")
    def exit_code(self, msg):
        sys.exit(2)

    @request_handler("exit-text")
    def exit_text(self, msg):
        sys.exit("usage: holes.exit-text NAME")

    @request_handler("interrupt")
    def interrupt(self, msg):
        raise KeyboardInterrupt

    @request_handler("generator-exit")
    def generator_exit(self, msg):
        raise GeneratorExit("closed")

    @event_handler("exit")
    def exit_event(self, msg):
        self.seen.append("event")
        sys.exit(3)

    @timer_handler(0.01)
    def exit_timer(self):
        self.seen.append("timer")
        raise KeyboardInterrupt

    # 3. A second answer

    @request_handler("twice")
    def twice(self, msg):
        k = msg.payload["k"]
        self.handle.respond(msg, {"n": k})
        self.handle.respond(msg, {"n": k, "second": True})

    @request_handler("answer-then-error")
    def answer_then_error(self, msg):
        self.handle.respond(msg, {"first": True})
        self.handle.respond_error(msg, errno.EPERM, "too late")

    @request_handler("error-twice")
    def error_twice(self, msg):
        self.handle.respond_error(msg, errno.ENOENT, "no such thing")
        self.handle.respond_error(msg, errno.EPERM, "too late")

    @request_handler("hold")
    def hold(self, msg):
        self.held.append(msg)

    @request_handler("held")
    def count_held(self, msg):
        self.handle.respond(msg, len(self.held))

    @request_handler("release")
    def release(self, msg):
        refused = []
        for held in self.held:
            self.handle.respond(held, {"late": 1})
            try:
                self.handle.respond(held, {"late": 2})
            except AnswerError as exc:
                refused.append(str(exc))
        del self.held[:]
        self.handle.respond(msg, refused)

    @request_handler("stream")
    def stream(self, msg):
        for i in range(2):
            self.handle.respond(msg, {"i": i})
        self.handle.respond_error(msg, errno.ENODATA)
        self.handle.respond(msg, {"i": "after the end"})
'''

# Makes flux.brokermod mean this project's file in every Python process of
# the instance, flux-core's module loader included: the drop-in path.
DROP_IN_SITECUSTOMIZE = """
import os
import flux
ours = os.path.join(%r, "flux")
if ours not in flux.__path__:  # flux-core 0.84 and 0.85 do not extend their package
    flux.__path__.append(ours)
from flux import _layout
_layout.prefer_this_package()
""" % ROOT


@pytest.fixture(scope="module")
def real_broker():
    instance = start_instance()
    yield from _checked(instance)


@pytest.fixture(scope="module")
def drop_in_broker(tmp_path_factory):
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    site = tmp_path_factory.mktemp("drop-in")
    (site / "sitecustomize.py").write_text(DROP_IN_SITECUSTOMIZE)
    pythonpath = os.pathsep.join(p for p in [str(site), ROOT, os.environ.get("PYTHONPATH")] if p)
    instance = start_instance(setup=False, env={"PYTHONPATH": pythonpath})
    yield from _checked(instance)


def _checked(instance):
    try:
        yield instance
    finally:
        status = instance.stop()
    # A broker that panicked, or a module that died, makes flux start fail.
    assert status == 0, f"flux start exited {status}: {instance.stderr()[-3000:]}"


@pytest.fixture(params=["membroker", "real", "drop-in"])
def target(request):
    if request.param == "membroker":
        return MemTarget()
    fixture = "real_broker" if request.param == "real" else "drop_in_broker"
    return RealTarget(request.getfixturevalue(fixture))


@pytest.fixture
def holes(target, write_module):
    target.load(write_module("holes.py", HOLES))
    yield target
    # The module survived whatever the test sent it.
    assert target.rpc("holes.ping", {}).get()["userid"] == target.owner()
    target.remove("holes")
    if not target.real:
        assert target.broker.panicked is None
    target.close()


def test_each_broker_runs_this_librarys_brokermod_on_the_intended_loader(holes, request):
    whose = holes.rpc("holes.whose").get()
    assert whose["brokermod"] == os.path.join(ROOT, "flux", "brokermod.py")
    kind = request.node.callspec.params["target"]
    if kind == "real":
        assert whose["loader"] == os.path.join(ROOT, "flux", "_libexec", "flux-module-python-exec.py")
    elif kind == "drop-in":
        assert whose["loader"].endswith("flux-module-python-exec.py")
        assert not whose["loader"].startswith(ROOT)


def _module_lines(target):
    return [line.split(": ", 1)[1] for line in target.dmesg() if line.startswith("holes.")]


# 1. Text with % in it


def test_percent_in_an_exception_reaches_caller_and_log_verbatim(holes):
    assert error_of(holes.rpc("holes.percent-error")) == (
        errno.EPROTO,
        "ValueError: bad value %s for field %d at 100%",
    )
    lines = _module_lines(holes)
    assert "ValueError: bad value %s for field %d at 100%" in lines
    assert '    raise ValueError("bad value %s for field %d at 100%")' in lines


def test_percent_in_a_failing_source_line_reaches_the_log_verbatim(holes):
    assert error_of(holes.rpc("holes.percent-source", {})) == (errno.EPROTO, "KeyError: missing key 'name'")
    assert '    return "name=%s, %n" % msg.payload["name"]' in _module_lines(holes)


def test_log_methods_send_text_as_data(holes):
    holes.rpc("holes.percent-log").get()
    lines = [line for line in holes.dmesg() if line.startswith("holes.")]
    assert "holes.info[0]: 50% off, 100%% done, %s %d %n %x" in lines
    assert "holes.notice[0]: trailing %" in lines
    assert "holes.warning[0]: bytes 10%" in lines
    assert "holes.err[0]: nul\\0inside" in lines


def test_raw_handle_log_is_a_printf_format_on_both_brokers(holes):
    """flux-core's Flux.log() formats its text: %% is one %, a NUL ends it,
    and a message of several lines loses its blank lines."""
    holes.rpc("holes.raw-log").get()
    lines = _module_lines(holes)
    assert "raw 100% done" in lines
    assert "raw cut" in lines
    start = lines.index("first")
    assert lines[start:start + 3] == ["first", "  second", "third"]


# 2. BaseException other than Exception


def test_system_exit_in_a_handler_answers_einval(holes):
    assert error_of(holes.rpc("holes.exit")) == (errno.EINVAL, "SystemExit: sys.exit(2)")
    assert error_of(holes.rpc("holes.exit-text")) == (errno.EINVAL, "SystemExit: usage: holes.exit-text NAME")
    lines = _module_lines(holes)
    assert "request holes.exit handler failed: Traceback (most recent call last):" in lines
    assert "SystemExit: 2" in lines


def test_keyboard_interrupt_and_generator_exit_answer_eio(holes):
    assert error_of(holes.rpc("holes.interrupt")) == (errno.EIO, "KeyboardInterrupt")
    assert error_of(holes.rpc("holes.generator-exit")) == (errno.EIO, "GeneratorExit: closed")
    assert "KeyboardInterrupt" in _module_lines(holes)


def test_system_exit_in_event_and_keyboard_interrupt_in_timer_are_logged(holes):
    holes.event("holes.exit")
    holes.settle(lambda: sorted(holes.rpc("holes.seen").get()) == ["event", "timer"], "event and timer")
    lines = _module_lines(holes)
    assert "event holes.exit handler failed: Traceback (most recent call last):" in lines
    assert "SystemExit: 3" in lines
    assert "timer exit_timer handler failed: Traceback (most recent call last):" in lines


# 3. A second answer


def test_second_answer_never_reaches_the_clients_next_request(holes):
    """On a real broker, each request reuses the matchtag the one before it
    freed: a second response sent would answer the next request."""
    results = holes.rpcs_from_one_client("holes.twice", [{"k": k} for k in range(8)])
    assert [result.get() for result in results] == [{"n": k} for k in range(8)]
    refusals = [line for line in _module_lines(holes) if line.startswith("flux.brokermod.AnswerError")]
    assert len(refusals) == 8
    assert refusals[0] == (
        "flux.brokermod.AnswerError: holes.twice: request already answered; a second "
        "response would reach another request of the same client, so it was not sent"
    )


def test_error_after_an_answer_and_a_second_error_are_refused(holes):
    results = holes.rpcs_from_one_client("holes.answer-then-error", [None, None])
    assert [result.get() for result in results] == [{"first": True}, {"first": True}]
    results = holes.rpcs_from_one_client("holes.error-twice", [None, None])
    assert [error_of(result) for result in results] == [(errno.ENOENT, "no such thing")] * 2


def test_second_deferred_answer_is_refused(holes):
    later = holes.start_rpc("holes.hold")
    holes.settle(lambda: holes.rpc("holes.held").get() == 1, "the request to be held")
    refused = holes.rpc("holes.release").get()
    assert later.wait().get() == {"late": 1}
    assert len(refused) == 1 and "holes.hold: request already answered" in refused[0]


def test_stream_takes_no_response_after_its_end(holes):
    before = holes.rpc("holes.stats-get").get()["tx"]["response"]
    result = holes.rpc("holes.stream", streaming=True)
    assert result.stream() == [{"i": 0}, {"i": 1}]
    assert result.answers[-1]["errno"] == errno.ENODATA
    # stats-get's own answer, two responses and ENODATA: nothing after the end
    assert holes.rpc("holes.stats-get").get()["tx"]["response"] - before == 4
    assert any(line.startswith("flux.brokermod.AnswerError: holes.stream") for line in _module_lines(holes))


# 4. A request without a matchtag takes many answers (RFC 27)
#
# flux-core's job manager sends each sched.alloc with flux_send(), without a
# matchtag, and takes the scheduler's answers by topic in a response watcher:
# annotations first, then the final alloc, deny or cancel.  No RPC waits on
# such a request, so no answer can reach the wrong one.

SCHED27 = r'''
import errno

from flux.brokermod import BrokerModule, request_handler


class Sched27(BrokerModule):
    held = []

    @request_handler("alloc")
    def alloc(self, msg):
        job, how = msg.payload["id"], msg.payload["how"]
        self.handle.respond(msg, {"id": job, "type": 1, "note": "first"})
        if how == "hold":
            self.held.append(msg)
            return None
        self.handle.respond(msg, {"id": job, "type": 1, "note": "second"})
        if how == "return":
            return {"id": job, "type": 0}
        if how == "error":
            self.handle.respond_error(msg, errno.ENOSPC, "denied")
            self.handle.respond(msg, {"id": job, "type": 1, "note": "after the error"})
            return None
        if how == "raise":
            self.handle.respond(msg, {"id": job, "type": 0})
            raise RuntimeError("after the final answer")
        self.handle.respond(msg, {"id": job, "type": 0})
        return None

    @request_handler("release")
    def release(self, msg):
        for held in self.held:
            self.handle.respond(held, {"id": held.payload["id"], "type": 1, "note": "later"})
            self.handle.respond(held, {"id": held.payload["id"], "type": 2})
        del self.held[:]
        return {}
'''

# The job manager's side: requests sent with flux_send(), answers taken by topic.
JOBMGR27 = r'''
from flux.brokermod import BrokerModule, request_handler
from flux.constants import FLUX_MSGTYPE_RESPONSE
from flux.message import Message


class Jobmgr27(BrokerModule):
    got = []

    def setup(self):
        self.answers = self.handle.msg_watcher_create(self.on_answer, FLUX_MSGTYPE_RESPONSE, "sched27.alloc")
        self.answers.start()

    def on_answer(self, h, watcher, msg, arg):
        try:
            self.got.append(msg.decode()[2])
        except OSError as exc:
            self.got.append({"errno": exc.errno})

    @request_handler("submit")
    def submit(self, msg):
        request = Message()
        request.topic = "sched27.alloc"
        request.payload = msg.payload
        self.handle.send(request)
        return {}

    @request_handler("got")
    def get_got(self, msg):
        return self.got
'''


@pytest.fixture
def rfc27(target, write_module):
    target.clear_log()
    target.load(write_module("sched27.py", SCHED27))
    target.load(write_module("jobmgr27.py", JOBMGR27))
    yield target
    for name in ("jobmgr27", "sched27"):
        assert target.rpc(f"{name}.ping", {}).get()["userid"] == target.owner()
        target.remove(name)
    if not target.real:
        assert target.broker.panicked is None
    target.close()


def _answers_to_jobmgr(target, count):
    got = []

    def arrived():
        got[:] = [json.loads(text) if isinstance(text, str) else text
                  for text in target.rpc("jobmgr27.got").get()]
        return len(got) >= count

    target.settle(arrived, f"{count} answers to jobmgr27")
    return got


def _rfc27_lines(target):
    return [line for line in target.dmesg() if line.startswith(("sched27.", "jobmgr27."))]


def _sent_by(target, name):
    return target.rpc(f"{name}.stats-get").get()["tx"]["response"]


def test_a_request_without_matchtag_gets_annotations_then_its_final_answer(rfc27):
    before = _sent_by(rfc27, "sched27")
    rfc27.rpc("jobmgr27.submit", {"id": 1, "how": "respond"}).get()
    rfc27.rpc("jobmgr27.submit", {"id": 2, "how": "return"}).get()
    assert _answers_to_jobmgr(rfc27, 6) == [
        {"id": 1, "type": 1, "note": "first"}, {"id": 1, "type": 1, "note": "second"}, {"id": 1, "type": 0},
        {"id": 2, "type": 1, "note": "first"}, {"id": 2, "type": 1, "note": "second"}, {"id": 2, "type": 0},
    ]
    # sched27's stats-get answer counts itself: six answers and that one
    assert _sent_by(rfc27, "sched27") - before == 7
    assert not [line for line in _rfc27_lines(rfc27) if "AnswerError" in line or "failed" in line]


def test_an_error_and_answers_after_it_all_reach_a_request_without_matchtag(rfc27):
    rfc27.rpc("jobmgr27.submit", {"id": 3, "how": "error"}).get()
    assert _answers_to_jobmgr(rfc27, 4) == [
        {"id": 3, "type": 1, "note": "first"}, {"id": 3, "type": 1, "note": "second"},
        {"errno": errno.ENOSPC}, {"id": 3, "type": 1, "note": "after the error"},
    ]


def test_a_held_request_without_matchtag_is_answered_later_many_times(rfc27):
    rfc27.rpc("jobmgr27.submit", {"id": 4, "how": "hold"}).get()
    assert _answers_to_jobmgr(rfc27, 1) == [{"id": 4, "type": 1, "note": "first"}]
    rfc27.rpc("sched27.release").get()
    assert _answers_to_jobmgr(rfc27, 3)[1:] == [{"id": 4, "type": 1, "note": "later"}, {"id": 4, "type": 2}]


def test_a_handler_raising_after_answering_a_request_without_matchtag_adds_no_error(rfc27):
    """The library cannot tell which answer of such a request was its last:
    it logs the failure and sends nothing of its own after an answer."""
    before = _sent_by(rfc27, "sched27")
    rfc27.rpc("jobmgr27.submit", {"id": 5, "how": "raise"}).get()
    assert _answers_to_jobmgr(rfc27, 3)[2] == {"id": 5, "type": 0}
    rfc27.settle(lambda: any("after the final answer" in line for line in _rfc27_lines(rfc27)), "the failure logged")
    assert _sent_by(rfc27, "sched27") - before == 4


def test_answers_to_a_noresponse_request_are_not_sent_and_not_refused(rfc27):
    """libflux's flux_respond() sends nothing for a FLUX_RPC_NORESPONSE
    request and reports success, however often it is called."""
    before = _sent_by(rfc27, "sched27")
    rfc27.client("""
        from flux.constants import FLUX_RPC_NORESPONSE
        h.rpc("sched27.alloc", {"id": 6, "how": "return"}, flags=FLUX_RPC_NORESPONSE)
        h.rpc("sched27.alloc", {"id": 7, "how": "error"}, flags=FLUX_RPC_NORESPONSE)
    """)
    asked = [0]

    def handled():
        asked[0] += 1
        return rfc27.rpc("sched27.stats-get").get()["handlers"]["sched27.alloc"]["requests"] == 2

    rfc27.settle(handled, "both requests handled")
    # stats-get's answers alone: the first one's, and one per look
    assert _sent_by(rfc27, "sched27") - before == 1 + asked[0]
    assert not [line for line in _rfc27_lines(rfc27) if "failed" in line]


def test_a_client_takes_answers_by_topic_to_a_request_it_sent_without_matchtag(rfc27):
    got = rfc27.client("""
        from flux.constants import FLUX_MSGTYPE_RESPONSE
        from flux.message import Message
        answers = []
        def on_answer(h, watcher, msg, arg):
            answers.append(json.loads(msg.decode()[2]))
            if len(answers) == 3:
                h.reactor_stop()
        watcher = h.msg_watcher_create(on_answer, FLUX_MSGTYPE_RESPONSE, "sched27.alloc")
        watcher.start()
        request = Message()
        request.topic = "sched27.alloc"
        request.payload = {"id": 8, "how": "respond"}
        h.send(request)
        h.reactor_run()
        emit(answers)
    """)
    assert got == [[{"id": 8, "type": 1, "note": "first"}, {"id": 8, "type": 1, "note": "second"},
                    {"id": 8, "type": 0}]]


def test_an_rpc_with_a_matchtag_still_gets_one_answer(rfc27):
    """The same handler called by an RPC: its first answer is final, the
    second is refused where it is made (and the handler fails)."""
    results = rfc27.rpcs_from_one_client("sched27.alloc", [{"id": 9, "how": "respond"}, {"id": 10, "how": "respond"}])
    assert [result.get() for result in results] == [{"id": 9, "type": 1, "note": "first"},
                                                    {"id": 10, "type": 1, "note": "first"}]
    refusals = [line for line in _rfc27_lines(rfc27) if "AnswerError: sched27.alloc: request already answered" in line]
    assert len(refusals) == 2


@pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))
def test_the_in_memory_broker_sends_flux_cores_own_message_without_matchtag(tmp_path):
    """With flux-core's bindings importable, a module or test on the
    in-memory broker builds its request with flux-core's Message."""
    from flux.brokermod_testing import find_flux

    (tmp_path / "sched27.py").write_text(SCHED27)
    script = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
import flux
if os.path.join(sys.argv[1], "flux") not in flux.__path__:  # flux-core 0.84, 0.85
    flux.__path__.append(os.path.join(sys.argv[1], "flux"))
from flux.membroker import Broker
from flux.constants import FLUX_MSGTYPE_RESPONSE
from flux.message import Message
assert Message.__module__ == "flux.message"  # flux-core's, not the stand-in
with Broker() as broker:
    broker.load(sys.argv[2])
    h = broker.connect()
    answers = []
    def on_answer(h, watcher, msg, arg):
        answers.append(json.loads(msg.decode()[2]))
        if len(answers) == 3:
            h.reactor_stop()
    h.msg_watcher_create(on_answer, FLUX_MSGTYPE_RESPONSE, "sched27.alloc").start()
    request = Message()
    request.topic = "sched27.alloc"
    request.payload = {"id": 11, "how": "respond"}
    h.send(request)
    h.reactor_run()
print(json.dumps(answers))
"""
    result = subprocess.run([find_flux(), "python", "-c", script, ROOT, str(tmp_path / "sched27.py")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"id": 11, "type": 1, "note": "first"},
                                         {"id": 11, "type": 1, "note": "second"}, {"id": 11, "type": 0}]


# 5. A module that fails to start says why in its own log, on every loader
#
# A broker hands `flux module load` only the errno; the reason must be in
# `flux dmesg`.  flux-core's loader prints a ValueError to the broker's
# stderr and logs nothing; BrokerModule logs it itself, once.

STARTS = r'''
import errno
from flux.brokermod import BrokerModule, Option, request_handler


class Starts(BrokerModule):
    interval = Option(float, 1.0, "seconds between sweeps")
    fail = Option(str, "", "how setup fails")

    def setup(self):
        if self.fail == "value":
            raise ValueError("setup: no such queue 'q1'")
        if self.fail == "oserror":
            raise OSError(errno.EEXIST, "setup: service taken")
        if self.fail == "bug":
            raise RuntimeError("setup: a bug")

    @request_handler("x")
    def x(self, msg):
        return {}
'''


@pytest.mark.parametrize("args, line, errnum", [
    (["nosuch=1"], "starts.py: unknown option 'nosuch=1'; options: interval (float, default 1.0), "
                   "fail (str, default '')", errno.EINVAL),
    (["interval=abc"], "starts.py: option 'interval': 'abc' is not a valid float "
                       "(could not convert string to float: 'abc')", errno.EINVAL),
    (["fail=value"], "starts.py: setup: no such queue 'q1'", errno.EINVAL),
    (["fail=oserror"], "starts.py: setup: service taken", errno.EEXIST),
    (["fail=bug"], "starts.py: module failed:", None),
])
def test_a_module_that_fails_to_start_logs_one_line_once_on_every_loader(target, write_module, args, line, errnum):
    target.clear_log()
    got, _ = target.load_error(write_module("starts.py", STARTS), *args)
    if errnum is not None:
        assert got == errnum
    logged = [entry.split(": ", 1)[1] for entry in target.dmesg() if entry.startswith("starts.err")]
    assert logged.count(line) == 1, logged
    if errnum is None:
        assert "RuntimeError: setup: a bug" in logged
    assert "starts" not in target.modules()
    target.close()
