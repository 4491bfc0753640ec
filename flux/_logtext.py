"""How a module's text reaches the broker log unchanged."""

from typing import Any


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
