"""How a module's text reaches the broker log unchanged, and how much of a
caller's text it repeats."""

from typing import Any

#: The most characters of caller-supplied text (an exception's message, a
#: field name, a payload excerpt) that the library repeats in one log line
#: or error text: the first 300 and the last 100, with how many were cut.
#: Without a bound, one request naming a 20 MiB field put 20 MiB in the
#: broker's log ring (and a real broker keeps 1,024 such entries).
TEXT_LIMIT = 400
_HEAD = 300


#: The most characters of an error text flux-core's ``flux_error_t`` holds
#: (a 160-byte buffer): its broker cuts a longer one to this many, the last
#: one a ``+`` (measured on 0.88: a refused ``flux config reload`` shows 159).
FLUX_ERROR_TEXT = 159


def flux_error_text(text: str) -> str:
    """*text* as a ``flux_error_t`` holds it (errprintf): cut to
    :data:`FLUX_ERROR_TEXT` characters, ending in ``+``, when longer."""
    return text if len(text) <= FLUX_ERROR_TEXT else text[:FLUX_ERROR_TEXT - 1] + "+"


def fit(text: str, limit: int) -> str:
    """*text* if it has at most *limit* characters; else its start, ending
    in ``...``, in *limit* characters."""
    return text if len(text) <= limit else text[:max(limit - 3, 0)] + "..."


def excerpt(text: str, limit: int = TEXT_LIMIT) -> str:
    """*text* if it has at most *limit* characters; else its start and end
    with ``[... N characters cut ...]`` between them."""
    if len(text) <= limit:
        return text
    head = limit * _HEAD // TEXT_LIMIT
    tail = limit - head
    return f"{text[:head]}[... {len(text) - limit} characters cut ...]{text[len(text) - tail:]}"


def log_verbatim(h: Any, level: int, text: Any) -> None:
    """Send *text* to the broker log through ``h.log()`` so that it appears as written.

    flux-core's ``Flux.log()`` hands its text to ``flux_log()`` as a printf
    format: a ``%s`` in it reads a missing argument and can crash the
    module, and ``50% off`` comes out garbled.  Doubling every ``%`` makes
    the format print the text itself.  A NUL would end the C string early,
    so it is written as ``\\0``; what UTF-8 cannot carry (a lone surrogate,
    which a JSON payload may hold) as its ``\\ud800`` escape.
    """
    if not isinstance(text, str):
        text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    if "\0" in text:
        text = text.replace("\0", "\\0")
    text = text.replace("%", "%%")
    if not text.isascii():
        # flux-core's Flux.log() encodes str strictly: a lone surrogate
        # (valid JSON "\ud800") would raise there.  Bytes pass as they are.
        h.log(level, text.encode("utf-8", "backslashreplace"))
        return
    h.log(level, text)
