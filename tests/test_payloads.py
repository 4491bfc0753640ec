"""Declared payloads: which annotations are checked, and how (in-memory broker)."""

import errno
import json

import pytest
from _helpers import error_of
from hypothesis import given, settings
from hypothesis import strategies as st

from flux._payloads import PayloadError, schema_of
from flux.membroker import Message, ModuleError

#: Also loaded on both brokers by test_fidelity_requests.py.
TYPED = '''
from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

from flux.brokermod import BrokerModule, request_handler


class Typed(BrokerModule):
    @request_handler("opt")
    def opt(self, msg, *, n: Optional[int] = None, tag: Union[int, str] = 0):
        return {"n": n, "tag": tag}

    @request_handler("maps")
    def maps(self, msg, *, counts: Dict[str, int], anything: Any = None, plain: dict = {}):
        return {"counts": counts, "anything": anything, "plain": plain}

    @request_handler("extra")
    def extra(self, msg, *, name: str, **rest):
        return {"name": name, "rest": rest}

    @request_handler("later")
    def later(self, msg, *, point: Point):
        return point

    @request_handler("flags")
    def flags(self, msg, *, on: bool, count: int = 1, names: List[str] = []):
        return {"on": on, "count": count, "names": names}

    @request_handler("types")
    def types(self, msg, *, ttl: float, n: int):
        return {"ttl": [type(ttl).__name__, ttl], "n": [type(n).__name__, n]}


Point = Dict[str, float]
'''


@pytest.fixture
def typed(broker, write_module):
    broker.load(write_module("typed.py", TYPED))
    return broker


def test_optional_union_and_defaults(typed):
    assert typed.rpc("typed.opt", {}).get() == {"n": None, "tag": 0}
    assert typed.rpc("typed.opt", {"n": None, "tag": "x"}).get() == {"n": None, "tag": "x"}
    assert typed.rpc("typed.opt", {"n": 3, "tag": 4}).get() == {"n": 3, "tag": 4}
    assert error_of(typed.rpc("typed.opt", {"n": 1.5})) == (
        errno.EPROTO, "field 'n': expected an integer or null, got a number")
    assert error_of(typed.rpc("typed.opt", {"tag": [1]})) == (
        errno.EPROTO, "field 'tag': expected an integer or a string, got an array")


def test_dicts_any_and_forward_references(typed):
    assert typed.rpc("typed.maps", {"counts": {"a": 1}, "anything": [None]}).get() == {
        "counts": {"a": 1}, "anything": [None], "plain": {}}
    assert error_of(typed.rpc("typed.maps", {"counts": {"a": "1"}})) == (
        errno.EPROTO, "field 'counts.a': expected an integer, got a string")
    assert typed.rpc("typed.later", {"point": {"x": 1}}).get() == {"x": 1.0}
    assert error_of(typed.rpc("typed.later", {"point": {"x": None}}))[1] == (
        "field 'point.x': expected a number, got null")


def test_extra_fields_go_to_var_keyword(typed):
    assert typed.rpc("typed.extra", {"name": "a", "x": 1}).get() == {"name": "a", "rest": {"x": 1}}


def test_bool_is_not_an_int_and_an_int_is_not_a_bool(typed):
    assert error_of(typed.rpc("typed.flags", {"on": 1}))[1] == "field 'on': expected a boolean, got an integer"
    assert error_of(typed.rpc("typed.flags", {"on": True, "count": False}))[1] == (
        "field 'count': expected an integer, got a boolean")
    assert error_of(typed.rpc("typed.flags", {"on": True, "names": ["a", 2]}))[1] == (
        "field 'names[1]': expected a string, got an integer")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinities_are_not_numbers(typed, literal):
    code, text = error_of(typed.rpc("typed.later", f'{{"point": {{"x": {literal}}}}}'))
    assert code == errno.EPROTO
    assert text.startswith("field 'point.x': expected a number, got ") and "not a finite number" in text


def test_payload_that_is_not_json_is_refused(typed):
    assert error_of(typed.rpc("typed.opt", "{nope"))[1].startswith("payload is not JSON")


def test_an_annotation_that_cannot_be_checked_fails_the_load_in_one_line(broker, write_module):
    path = write_module(
        "badtype.py",
        """
        from typing import Dict, Set
        from flux.brokermod import BrokerModule, request_handler

        class BadType(BrokerModule):
            @request_handler("x")
            def x(self, msg, *, items: Set[int]):
                return None
        """,
    )
    with pytest.raises(ModuleError) as info:
        broker.load(path)
    assert info.value.errno == errno.EINVAL
    assert info.value.strerror.startswith("badtype.py: BadType.x: field 'items': cannot check the annotation")


def test_plain_handlers_have_no_schema():
    def plain(self, msg):
        pass

    def star_args(self, msg, *args):
        pass

    assert schema_of(plain, "plain") is None
    assert schema_of(star_args, "star_args") is None


def test_dict_keys_must_be_strings():
    from typing import Dict

    def handler(self, msg, *, m: Dict[int, int]):
        pass

    with pytest.raises(TypeError, match="JSON object keys are strings"):
        schema_of(handler, "handler")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(payload=st.one_of(_json, st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), _json, max_size=4)))
def test_any_json_payload_is_accepted_or_refused_with_payload_error(payload):
    from typing import Dict, List, Optional

    def handler(self, msg, *, a: int, b: Optional[List[float]] = None, c: Dict[str, str] = {}):
        pass

    schema = schema_of(handler, "handler")
    msg = Message(1, "x.y", json.dumps(payload).encode())
    try:
        fields = schema.fields_of(msg)
    except PayloadError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(fields["a"], int) and not isinstance(fields["a"], bool)
    assert set(fields) <= {"a", "b", "c"}


_finite = st.floats(allow_nan=False, allow_infinity=False)
_valid = st.fixed_dictionaries(
    {"a": st.integers()},
    optional={
        "b": st.none() | st.lists(st.integers(-2**53, 2**53) | _finite, max_size=4),
        "c": st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=3),
    },
)


@settings(max_examples=200, deadline=None)
@given(payload=_valid)
def test_every_valid_payload_is_accepted_with_its_values(payload):
    """A declared float takes a JSON integer and hands the handler a float:
    1 arrives as 1.0, so ``type(x) is float`` always holds."""
    from typing import Dict, List, Optional

    def handler(self, msg, *, a: int, b: Optional[List[float]] = None, c: Dict[str, str] = {}):
        pass

    fields = schema_of(handler, "handler").fields_of(Message(1, "x.y", json.dumps(payload).encode()))
    assert fields == payload  # 1 == 1.0: the types are checked below
    assert type(fields["a"]) is int
    if fields.get("b") is not None:
        assert all(type(x) is float for x in fields["b"])
    assert all(type(k) is str and type(v) is str for k, v in fields.get("c", {}).items())


def test_a_declared_float_field_given_an_integer_gets_a_float():
    def handler(self, msg, *, ttl: float, n: int):
        pass

    fields = schema_of(handler, "handler").fields_of(Message(1, "x.y", b'{"ttl": 1, "n": 1}'))
    assert (type(fields["ttl"]), type(fields["n"])) == (float, int)
    with pytest.raises(PayloadError, match="field 'n': expected an integer, got a boolean"):
        schema_of(handler, "handler").fields_of(Message(1, "x.y", b'{"ttl": 1, "n": true}'))


def test_no_payload_is_fine_when_every_field_is_optional(typed):
    assert typed.rpc("typed.opt").get() == {"n": None, "tag": 0}
    assert error_of(typed.rpc("typed.flags"))[1].startswith("request has no payload; expected a JSON object with on")
