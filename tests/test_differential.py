"""Differential test: random sequences of operations on both brokers must look the same.

Hypothesis generates sequences of operations (load with arguments,
requests as owner or guest, streaming requests, events, client sessions
that cancel a stream or just go away, removes) against a fixed set of
modules.  Each sequence runs on the in-memory broker and on a real
instance, and every observable result is compared: each answer (payload
or errno and text), the modules loaded at the end, and the modules' own
log lines.  A difference is a bug of the in-memory broker: fix it there
and add a regression test.

Needs flux-core (skipped, with the reason, without it).
"""

import json
import textwrap

import pytest
from _targets import MemTarget, RealTarget
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flux.brokermod_testing import skip_reason

pytestmark = [
    pytest.mark.real_flux,
    pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason())),
]

DIFFA = r'''
import errno
from flux.brokermod import BrokerModule, Option, RequestError, event_handler, request_handler


class DiffA(BrokerModule):
    mode = Option(str, default="plain")
    seen = []

    @request_handler("echo", allow_guest=True)
    def echo(self, msg):
        return {"payload": msg.payload_str, "userid_is_guest": msg.userid != 0 and msg.rolemask == 2}

    @request_handler("owner")
    def owner(self, msg):
        return {"mode": self.mode}

    @request_handler("fail", allow_guest=True)
    def fail(self, msg):
        raise ValueError("bad %s value: " + str(msg.payload_str)[:10])

    @request_handler("refuse", allow_guest=True)
    def refuse(self, msg, *, key: str):
        raise RequestError(errno.ENOENT, f"no such key: {key}")

    @request_handler("count", allow_guest=True)
    async def count(self, msg, *, n: int):
        for i in range(n):
            yield i

    watching = 0

    @request_handler("watch", allow_guest=True)
    async def watch(self, msg):
        import asyncio
        type(self).watching += 1
        try:
            yield {"watching": type(self).watching}
            await asyncio.Event().wait()
        finally:
            type(self).watching -= 1

    @request_handler("watching", allow_guest=True)
    def get_watching(self, msg):
        return type(self).watching

    @request_handler("raw", allow_guest=True)
    def raw(self, msg):
        answers = {"text": b"\xff\xfe", "{}": b'{"x": NaN}', '{"n": 2}': b'{"a": 1}\0tail', "5": b"Infinity"}
        return answers.get(msg.payload_str, b"[1, 2]")

    @request_handler("log")
    def log_(self, msg):
        self.log.info("logged %d%% " + str(msg.payload_str)[:10])
        return {}

    @event_handler("ev", allow_guest=True)
    def ev(self, msg):
        self.seen.append([msg.topic, msg.payload_str])

    @request_handler("seen")
    def get_seen(self, msg):
        return self.seen
'''

DIFFB = r'''
import sys


def mod_main(h, *args):
    if args and args[0] == "exit":
        sys.exit(3)
    if args and args[0] == "value":
        raise ValueError("diffb refuses: " + " ".join(args))
    def answer(h, watcher, msg, arg):
        h.respond(msg, {"args": list(args)})
    w = h.msg_watcher_create(answer, 1, "diffb.args")
    w.start()
    h.reactor_run()
'''

_payload = st.sampled_from([None, {}, {"key": "a"}, {"n": 2}, {"x": "%s %n"}, [1], "text", '{"x": NaN}'])
_topic = st.sampled_from(["diffa.echo", "diffa.owner", "diffa.fail", "diffa.refuse", "diffa.log", "diffa.ping",
                          "diffa.config-reload", "diffa.nosuch", "diffb.args", "diffb.nosuch", "nosuch.x"])
_op = st.one_of(
    st.tuples(st.just("load"), st.sampled_from(["diffa", "diffb"]),
              st.lists(st.sampled_from(["mode=fast", "mode=x", "bogus=1", "exit", "value", "a"]), max_size=2)),
    st.tuples(st.just("rpc"), _topic, _payload, st.booleans()),
    st.tuples(st.just("stream"), st.just("diffa.count"), st.fixed_dictionaries({"n": st.integers(0, 3)}),
              st.booleans()),
    st.tuples(st.just("event"), st.sampled_from(["diffa.ev", "diffa.ev.sub", "other"]), _payload, st.booleans()),
    st.tuples(st.just("remove"), st.sampled_from(["diffa", "diffb"])),
    st.tuples(st.just("session"), st.sampled_from(["cancel", "leave", "guest-cancel"])),
)

# A client that opens a watch stream, then cancels it, or just goes away
# (the broker sends diffa.disconnect), or lets a guest try to cancel it.
_SESSIONS = {
    "cancel": """
f = h.rpc("diffa.watch", None, flags=STREAMING)
emit(f.get()); f.reset()
h.rpc("diffa.watch-cancel", {"matchtag": f.pimpl.get_matchtag()}, flags=1)
try:
    f.get()
except OSError as exc:
    emit(exc.errno)
""",
    "leave": """
f = h.rpc("diffa.watch", None, flags=STREAMING)
emit(f.get())
""",
    "guest-cancel": """
f = h.rpc("diffa.watch", None, flags=STREAMING)
emit(f.get()); f.reset()
guest("h.rpc('diffa.watch-cancel', {'matchtag': %d}, flags=1)\\nemit(h.rpc('diffa.watching').get())" % f.pimpl.get_matchtag())
""",
}

# The modules' log lines compared: this project's modules only, and no
# broker lines (the real broker logs its own start-up and pids).
_OURS = ("diffa.", "diffb.")


def _run(target, files, ops):
    out = []
    for op in ops:
        kind = op[0]
        if kind == "load":
            name, args = op[1], op[2]
            out.append(["load", name, target.try_load(files[name], *args)])
        elif kind == "rpc":
            _, topic, payload, guest = op
            out.append(["rpc", topic, [_comparable(a) for a in target.rpc(topic, payload, guest=guest).answers]])
        elif kind == "stream":
            _, topic, payload, guest = op
            out.append(["stream", topic, target.rpc(topic, payload, streaming=True, guest=guest).answers])
        elif kind == "event":
            _, topic, payload, guest = op
            if "diffa" not in target.modules():
                continue
            target.event(topic, payload, guest=guest)
            # a marker event from the owner: events arrive in order
            target.event("diffa.ev", "marker")
            target.settle(lambda: ["diffa.ev", "marker"] in target.rpc("diffa.seen").get(), "the marker event", 5.0)
            out.append(["seen", target.rpc("diffa.seen").answers])
        elif kind == "session":
            if "diffa" not in target.modules():
                continue
            out.append(["session", op[1], target.client(_SESSIONS[op[1]])])
            target.settle(lambda: target.rpc("diffa.watching").get() == 0, "the session's stream to end", 5.0)
            out.append(["watching", target.rpc("diffa.watching").get()])
        elif kind == "remove":
            name = op[1]
            if name in target.modules():
                target.remove(name)
                out.append(["remove", name, "ok"])
    out.append(["modules", sorted(m for m in target.modules() if m in ("diffa", "diffb"))])
    out.append(["log", [line for line in target.dmesg() if line.startswith(_OURS)]])
    return out


def _comparable(answer):
    """An answer as both brokers can agree on it: a ping's route names the
    hops a message took, which differ by design."""
    text = answer.get("payload")
    if text and text.startswith("{") and '"route"' in text:
        payload = json.loads(text)
        payload.pop("route", None)
        return {"payload": payload}
    return answer


def _reset(target):
    for name in ("diffa", "diffb"):
        if name in target.modules():
            target.remove(name)
    target.clear_log()


@pytest.fixture(scope="module")
def module_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("differential")
    files = {}
    for name, source in (("diffa", DIFFA), ("diffb", DIFFB)):
        path = directory / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        files[name] = str(path)
    return files


_first = st.tuples(st.just("load"), st.just("diffa"), st.lists(st.sampled_from(["mode=fast", "mode=x"]), max_size=1))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
@given(ops=st.tuples(_first, st.lists(_op, min_size=1, max_size=7)).map(lambda t: [t[0], *t[1]]))
def _compare_one_sequence(real_instance, module_files, compared, ops):
    real = RealTarget(real_instance)
    _reset(real)
    memory = MemTarget(attrs={"broker.module-nopanic": "1"})
    try:
        expected = _run(real, module_files, ops)
        got = _run(memory, module_files, ops)
    finally:
        memory.close()
        _reset(real)
    compared.append(ops)
    assert got == expected


def test_both_brokers_answer_every_sequence_alike(real_instance, module_files):
    compared = []
    _compare_one_sequence(real_instance, module_files, compared)
    print(f"\ndifferential: {len(compared)} generated sequences compared on both brokers")
    assert len(compared) >= 30  # hypothesis ran the comparison, not just the set-up


_TOPICS = ["diffa.echo", "diffa.owner", "diffa.fail", "diffa.refuse", "diffa.log", "diffa.ping",
           "diffa.config-reload", "diffa.raw", "diffa.nosuch", "diffb.args", "diffb.nosuch", "nosuch.x"]
_PAYLOADS = [None, {}, {"key": "a"}, {"n": 2}, {"x": "%s %n"}, [1], 5, "text", '{"x": NaN}', '{"x": 1}\u0000tail',
             b'{"key": "\xff"}']

# Every topic with every payload, as owner and as guest, from one client
# (a guest's requests from a second one).
_MATRIX = """
import json
for topic in TOPICS:
    for payload in PAYLOADS:
        future = h.rpc(topic, payload)
        try:
            answer = {"payload": future.get_str()}
            answer["json"] = repr(future.get())  # as a client decodes it (NaN, Infinity...)
        except OSError as exc:
            answer = {"errno": exc.errno, "error": exc.strerror}
        except Exception as exc:  # noqa: BLE001 - undecodable answers are compared too
            answer = {"exception": type(exc).__name__}
        emit([topic, repr(payload), answer])
"""


def test_every_request_of_the_matrix_is_answered_alike(real_instance, module_files):
    script = f"TOPICS = {_TOPICS!r}\nPAYLOADS = {_PAYLOADS!r}\n" + _MATRIX
    results = {}
    for name, target in (("real", RealTarget(real_instance)), ("memory", MemTarget(attrs={"broker.module-nopanic": "1"}))):
        _reset(target)
        target.load(module_files["diffa"])
        target.load(module_files["diffb"], "a", "b")
        owner = target.client(script)
        guest = target.client(f"guest({script!r})")
        results[name] = [[t, p, _comparable(a)] for t, p, a in owner + guest]  # p: the payload's repr
        _reset(target)
        target.close()
    differences = [(r, m) for r, m in zip(results["real"], results["memory"]) if r != m]
    assert len(results["real"]) == 2 * len(_TOPICS) * len(_PAYLOADS)
    assert differences == []
