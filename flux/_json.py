"""JSON exactly as the ``json`` module writes and reads it, minus its per-call set-up.

``json.dumps`` builds a new encoder on each call unless every option is
the default, and ``JSONEncoder.encode`` builds its C encoder anew each
time; ``json.loads`` goes through two regular expressions around the C
scanner.  On a message path that is most of the JSON cost of a small
payload.  These functions give the same text, values and errors, building
the C parts once.  Without the C accelerator they are ``json``'s own.
"""

from __future__ import annotations

import json
from json import decoder as _decoder
from json import encoder as _encoder
from typing import Any, Callable

__all__ = ["make_encoder", "loads"]


def make_encoder(*, ensure_ascii: bool = True, allow_nan: bool = True) -> Callable[[Any], str]:
    """A function equal to ``json.JSONEncoder(ensure_ascii=..., allow_nan=...).encode``."""
    slow = json.JSONEncoder(ensure_ascii=ensure_ascii, allow_nan=allow_nan)
    make_c = _encoder.c_make_encoder
    if make_c is None:
        return slow.encode
    quote = _encoder.encode_basestring_ascii if ensure_ascii else _encoder.encode_basestring
    # No circularity markers: the C encoder then hits the recursion limit on
    # a circular value, and json's own encoder reports it as json would.
    fast = make_c(None, slow.default, quote, None, ": ", ", ", False, False, allow_nan)
    join = "".join

    def encode(value: Any) -> str:
        if isinstance(value, str):
            return quote(value)  # type: ignore[no-any-return]
        try:
            return join(fast(value, 0))
        except RecursionError:
            return slow.encode(value)

    return encode


_scan = _decoder.JSONDecoder().scan_once


def loads(text: Any) -> Any:
    """``json.loads(text)``: the same value, or the same error."""
    if type(text) is str:
        try:
            value, end = _scan(text, 0)
        except StopIteration:  # leading space, a BOM, or no value: json says which
            return json.loads(text)
        if end == len(text):
            return value
    return json.loads(text)
