"""What a handler's message offers, on both brokers.

On a real instance the library takes messages from libflux directly
(flux._rawmsg); each fact flux-core's ``Message`` offers must read the
same, setters included, and a held message must stay valid.
"""

import json

import pytest

FACTS = r'''
from flux.brokermod import BrokerModule, event_handler, request_handler


def facts(msg):
    return {
        "topic": msg.topic, "payload_str": msg.payload_str, "userid": msg.userid,
        "rolemask": msg.rolemask, "type": msg.type, "type_str": msg.type_str,
        "decode": list(msg.decode()), "is_flux_message": type(msg).__module__ != "flux.membroker._message",
    }


class Facts(BrokerModule):
    last_event = None

    @request_handler("read", allow_guest=True)
    def read(self, msg):
        first = facts(msg)
        assert facts(msg) == first  # read twice: the same
        return first

    @request_handler("payload")
    def payload(self, msg):
        return {"payload": msg.payload}

    @request_handler("rewrite")
    def rewrite(self, msg):
        msg.payload_str = '{"rewritten": true}'
        msg.topic = "facts.elsewhere"
        return {"payload": msg.payload, "topic": msg.topic}

    @request_handler("respond-by-pointer")
    def by_pointer(self, msg):
        self.handle.respond(msg.handle, {"by": "pointer"})

    @event_handler("tick")
    def tick(self, msg):
        self.last_event = facts(msg)

    @request_handler("last-event")
    def last(self, msg):
        return self.last_event
'''


@pytest.fixture
def facts(target, write_module):
    target.load(write_module("facts.py", FACTS))
    yield target
    target.remove("facts")


def _answer(result):
    return json.loads(result.answers[0]["payload"])


def test_a_request_reads_as_flux_cores_message_does(facts):
    got = _answer(facts.rpc("facts.read", {"a": 1}))
    assert got["topic"] == "facts.read"
    assert json.loads(got["payload_str"]) == {"a": 1}
    assert got["type"] == 1 and got["type_str"] == "request"
    assert got["rolemask"] & 1  # the owner
    assert got["decode"][0] == 1 and got["decode"][1] == "facts.read"
    assert json.loads(got["decode"][2]) == {"a": 1}
    if facts.real:
        assert got["is_flux_message"]


def test_no_payload_reads_as_none_and_payload_fails_cleanly(facts):
    assert _answer(facts.rpc("facts.read"))["payload_str"] is None
    answer = facts.rpc("facts.payload").answers[0]
    assert answer["errno"] == 71 and "no payload" in answer["error"]


def test_a_guest_request_carries_the_guests_identity(facts):
    got = _answer(facts.rpc("facts.read", {}, guest=True))
    assert got["userid"] == 1234
    assert got["rolemask"] == 2


def test_setters_change_what_the_handler_reads_next(facts):
    assert _answer(facts.rpc("facts.rewrite", {"original": True})) == {
        "payload": {"rewritten": True}, "topic": "facts.elsewhere",
    }


def test_responding_to_the_message_pointer_works(facts):
    assert _answer(facts.rpc("facts.respond-by-pointer", {})) == {"by": "pointer"}


def test_an_event_reads_as_a_request_does(facts):
    facts.event("facts.tick", {"n": 3})
    got = None
    for _ in range(200):
        got = _answer(facts.rpc("facts.last-event"))
        if got:
            break
    assert got is not None
    assert got["topic"] == "facts.tick" and json.loads(got["payload_str"]) == {"n": 3}
    assert got["type_str"] == "event"


REFUSED = r'''
import flux._rawmsg as rawmsg
from flux.brokermod import BrokerModule, request_handler


class _NoCallbacks:
    """flux-core's ffi, on a system that refuses write+execute memory."""

    def __init__(self, ffi):
        self._ffi = ffi

    def callback(self, *args):
        raise MemoryError("Cannot allocate write+execute memory for ffi.callback()")

    def __getattr__(self, name):
        return getattr(self._ffi, name)


rawmsg.ffi = _NoCallbacks(rawmsg.ffi)


class Refused(BrokerModule):
    @request_handler("echo")
    def echo(self, msg):
        return {"payload": msg.payload, "class": type(msg).__name__}
'''


def test_without_c_callbacks_the_module_uses_flux_cores_watchers(real_instance, write_module):
    real_instance.load(write_module("refused.py", REFUSED))
    try:
        assert real_instance.rpc("refused.echo", {"a": 1}).get() == {"payload": {"a": 1}, "class": "Message"}
        assert real_instance.rpc("refused.echo", {"a": 2}).get()["payload"] == {"a": 2}
    finally:
        real_instance.remove("refused")
