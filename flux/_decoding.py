"""Decoding a request's payload, and telling the caller what was wrong with it.

A payload that is not UTF-8, not JSON, or JSON nested deeper than Python
decodes, is the sender's error.  The message classes this library makes
(:class:`flux._rawmsg.RawMessage`, the in-memory broker's ``Message``)
decode through :func:`text_of` and :func:`json_of`, which raise the very
exceptions flux-core's ``Message`` raises (UnicodeDecodeError,
JSONDecodeError, RecursionError), so handlers that catch them keep working, and attach a
one-line reason that :func:`undecodable` reads back: the dispatcher then
answers EPROTO with that line and logs a refusal, not a traceback.
"""

import json
from typing import Any, Optional

from flux import _json

_REASON = "_brokermod_undecodable"


def text_of(raw: bytes) -> str:
    """*raw* decoded as UTF-8 (UnicodeDecodeError, with its reason)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        setattr(exc, _REASON, f"payload is not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})")
        raise


def json_of(text: Optional[str]) -> Any:
    """*text* decoded as JSON, as ``json.loads`` does: the same value or the
    same exception (JSONDecodeError, RecursionError for nesting deeper than
    Python decodes...), with its reason."""
    try:
        return _json.loads(text)
    except RecursionError as exc:
        setattr(exc, _REASON, "payload is nested too deeply to decode")
        raise
    except json.JSONDecodeError as exc:
        setattr(exc, _REASON, f"payload is not JSON ({exc})")
        raise
    except ValueError as exc:  # Python 3.11+: an integer of more digits than int() takes
        setattr(exc, _REASON, "payload holds an integer with more digits than can be decoded")
        raise


def undecodable(exc: BaseException) -> Optional[str]:
    """Why a payload could not be decoded, if that is what *exc* reports."""
    return getattr(exc, _REASON, None)
