"""Return values, declared payloads and clean refusals, on both brokers.

Each test runs on the in-memory broker and, when flux-core is present, on
a real instance running this library's loader.
"""

import errno
import os

import pytest
from _helpers import error_of


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")

RETURNS = r'''
import errno
from flux.brokermod import BrokerModule, request_handler


class Returns(BrokerModule):
    held = []

    @request_handler("dict")
    def as_dict(self, msg):
        return {"a": [1, 2.5, None, True]}

    @request_handler("list")
    def as_list(self, msg):
        return [1, "two"]

    @request_handler("zero")
    def zero(self, msg):
        return 0

    @request_handler("false")
    def false(self, msg):
        return False

    @request_handler("str")
    def as_str(self, msg):
        return "hello"

    @request_handler("bytes")
    def as_bytes(self, msg):
        return b"raw bytes"

    @request_handler("set")
    def as_set(self, msg):
        return {1, 2}

    @request_handler("nan")
    def nan(self, msg):
        return {"x": float("nan")}

    @request_handler("both")
    def both(self, msg):
        self.handle.respond(msg, {"first": True})
        return {"second": True}

    @request_handler("flux-core-style")
    def flux_core_style(self, msg):
        return self.handle.respond(msg, {"ok": True})

    @request_handler("stream")
    def stream(self, msg):
        self.handle.respond(msg, {"i": 0})
        return {"i": 1}

    @request_handler("hold")
    def hold(self, msg):
        self.held.append(msg)

    @request_handler("held")
    def count_held(self, msg):
        return len(self.held)

    @request_handler("release")
    def release(self, msg):
        for held in self.held:
            self.handle.respond(held, {"late": True})
        del self.held[:]
        return {"released": True}
'''



@pytest.fixture
def returns(target, write_module):
    path = write_module("returns.py", RETURNS)
    target.clear_log()
    target.load(path)
    yield target
    target.remove("returns")


@pytest.fixture
def calc(target):
    target.clear_log()
    target.load(os.path.join(EXAMPLES, "calculator.py"))
    yield target
    target.remove("calculator")


def _errors_logged(target, name):
    return [line for line in target.dmesg() if line.startswith(f"{name}.err[")]


# Return values


def test_returned_json_values_are_the_answer(returns):
    assert returns.rpc("returns.dict").get() == {"a": [1, 2.5, None, True]}
    assert returns.rpc("returns.list").get() == [1, "two"]
    assert returns.rpc("returns.zero").get_str() == "0"
    assert returns.rpc("returns.false").get_str() == "false"


def test_returned_str_and_bytes_are_sent_as_respond_sends_them(returns):
    assert returns.rpc("returns.str").get_str() == "hello"
    assert returns.rpc("returns.bytes").get_str() == "raw bytes"


def test_a_value_that_is_not_json_answers_eio(returns):
    code, text = error_of(returns.rpc("returns.set"))
    assert code == errno.EIO
    assert text.startswith("the handler gave set, which is not JSON: ")
    code, text = error_of(returns.rpc("returns.nan"))
    assert code == errno.EIO and "not JSON" in text


def test_answering_and_returning_answers_once_and_logs_the_error(returns):
    results = returns.rpcs_from_one_client("returns.both", [None, None])
    assert [r.get() for r in results] == [{"first": True}, {"first": True}]
    assert any(
        "returns.both: request already answered; the handler answered and also returned dict" in line
        for line in _errors_logged(returns, "returns")
    )


def test_returning_what_respond_returns_is_fine(returns):
    """flux-core style ``return self.handle.respond(...)``: respond returns None."""
    assert returns.rpc("returns.flux-core-style").get() == {"ok": True}
    assert _errors_logged(returns, "returns") == []


def test_a_value_returned_to_a_streaming_request_ends_the_stream(returns):
    result = returns.rpc("returns.stream", streaming=True)
    assert result.stream() == [{"i": 0}, {"i": 1}]
    assert result.answers[-1]["errno"] == errno.ENODATA


def test_returning_none_leaves_the_request_for_later(returns):
    later = returns.start_rpc("returns.hold")
    returns.settle(lambda: returns.rpc("returns.held").get() == 1, "the request to be held")
    assert returns.rpc("returns.release").get() == {"released": True}
    assert later.wait().get() == {"late": True}


# Declared payloads and clean refusals (examples/calculator.py)


def test_declared_fields_reach_the_handler(calc):
    assert calc.rpc("calculator.add", {"a": 1, "b": 2.5}).get() == {"result": 3.5}
    assert calc.rpc("calculator.div", {"a": 1}).get() == {"result": 1.0}
    assert calc.rpc("calculator.sum", {"values": [1, 2, 3.5]}).get() == {"result": 6.5}
    assert calc.rpc("calculator.add", {"a": 1, "b": 2}, guest=True).get() == {"result": 3.0}


@pytest.mark.parametrize(
    "topic, payload, text",
    [
        ("add", None, "request has no payload; expected a JSON object with a (a number), b (a number)"),
        ("add", [1, 2], "payload is not a JSON object (got an array)"),
        ("add", {"a": 1}, "missing field 'b' (a number)"),
        ("add", {"a": "1", "b": 2}, "field 'a': expected a number, got a string"),
        ("add", {"a": True, "b": 2}, "field 'a': expected a number, got a boolean"),
        ("add", {"a": 1, "b": 2, "c": 3}, "unexpected field 'c'; the fields are a (a number), b (a number)"),
        ("div", {"a": 1, "b": None}, "field 'b': expected a number, got null"),
        ("sum", {"values": [1, "x"]}, "field 'values[1]': expected a number, got a string"),
        ("sum", {"values": {"a": 1}}, "field 'values': expected an array of numbers, got an object"),
    ],
)
def test_a_payload_that_does_not_match_is_refused_with_eproto_naming_the_field(calc, topic, payload, text):
    assert error_of(calc.rpc(f"calculator.{topic}", payload)) == (errno.EPROTO, text)
    assert f"calculator.debug[0]: request calculator.{topic} refused: {text}" in calc.dmesg()
    assert _errors_logged(calc, "calculator") == []


def test_request_error_refuses_with_its_errno_and_no_traceback(calc):
    assert error_of(calc.rpc("calculator.div", {"a": 1, "b": 0})) == (errno.EDOM, "division by zero")
    assert "calculator.debug[0]: request calculator.div refused: division by zero" in calc.dmesg()
    assert not any("Traceback" in line for line in calc.dmesg())
