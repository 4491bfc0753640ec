"""flux._json gives what the json module gives: the same text, values and errors."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flux import _json

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text() | st.integers() | st.booleans() | st.none(), inner, max_size=4),
    max_leaves=12,
)


def outcome(function, *args):
    """What *function* returns, or the type and text of what it raises."""
    try:
        return ("value", function(*args))
    except Exception as exc:  # noqa: BLE001 - compared, not handled
        return (type(exc), str(exc))


@pytest.mark.parametrize("ensure_ascii", [True, False])
@pytest.mark.parametrize("allow_nan", [True, False])
@given(value=values)
@settings(max_examples=150, deadline=None)
def test_encoding_matches_json(value, ensure_ascii, allow_nan):
    reference = json.JSONEncoder(ensure_ascii=ensure_ascii, allow_nan=allow_nan).encode
    assert outcome(_json.make_encoder(ensure_ascii=ensure_ascii, allow_nan=allow_nan), value) == outcome(
        reference, value
    )


@pytest.mark.parametrize("bad", [object(), {"key": {1, 2}}, {(1, 2): "tuple key"}, [b"bytes"]])
def test_values_json_cannot_encode_fail_as_in_json(bad):
    assert outcome(_json.make_encoder(), bad) == outcome(json.dumps, bad)
    assert outcome(_json.make_encoder(), bad)[0] is TypeError


def test_a_circular_value_fails_as_in_json():
    circular = {"list": []}
    circular["list"].append(circular)
    assert outcome(_json.make_encoder(ensure_ascii=False), circular) == (ValueError, "Circular reference detected")


@given(value=values)
@settings(max_examples=150, deadline=None)
def test_decoding_what_json_wrote_gives_the_same_value(value):
    text = json.dumps(value)
    assert repr(_json.loads(text)) == repr(json.loads(text))


@given(text=st.text(max_size=30) | st.sampled_from([" {}", "{} ", "\ufeff{}", "1 2", "[1,", "NaN", "-Infinity", ""]))
@settings(max_examples=300, deadline=None)
def test_decoding_any_text_matches_json(text):
    assert repr(outcome(_json.loads, text)) == repr(outcome(json.loads, text))


@pytest.mark.parametrize("text", [None, b'{"a": 1}', bytearray(b"[1]"), 5])
def test_decoding_other_types_matches_json(text):
    assert repr(outcome(_json.loads, text)) == repr(outcome(json.loads, text))


def test_without_the_c_encoder_it_is_jsons_own(monkeypatch):
    monkeypatch.setattr(json.encoder, "c_make_encoder", None)
    encode = _json.make_encoder(ensure_ascii=False)
    assert type(getattr(encode, "__self__", None)) is json.JSONEncoder  # json's encode itself
    assert encode({"é": [1.5, None]}) == json.dumps({"é": [1.5, None]}, ensure_ascii=False)
