"""How a module that fails to start is reported, the same under every loader.

A broker passes ``flux module load`` only the errno of a module that
failed to start, and on a system instance nobody reads the broker's
stderr: the reason belongs in the module's own log (``flux dmesg``).
This library's loader logs it there; flux-core's loader does not, so
:class:`~flux.brokermod.BrokerModule` logs what fails while it starts
(options, handlers, ``setup``) itself, and the loader then does not log
it again.
"""

from __future__ import annotations

import errno
import syslog
import traceback
from typing import Any, Tuple

from flux._logtext import log_verbatim

_REPORTED = "_brokermod_reported"


def start_failure(base: str, exc: BaseException) -> Tuple[str, int]:
    """The report of module file *base* failing to start with *exc*, and the
    errno its load fails with: one line for a ValueError (EINVAL), an
    OSError (its errno, else ECONNRESET) or a SystemExit (EINVAL); a
    traceback without the flux package's frames for anything else (ECONNRESET)."""
    if isinstance(exc, ValueError):
        return f"{base}: {exc}", errno.EINVAL
    if isinstance(exc, OSError):
        return f"{base}: {exc.strerror or exc}", exc.errno or errno.ECONNRESET
    if isinstance(exc, SystemExit):
        from flux._dispatch import exit_text

        return f"{base}: exited ({exit_text(exc)})", errno.EINVAL
    from flux._dispatch import user_frames

    lines = traceback.format_exception(type(exc), exc, user_frames(exc.__traceback__))
    return f"{base}: module failed:\n{''.join(lines).rstrip()}", errno.ECONNRESET


def report(h: Any, base: str, exc: BaseException) -> None:
    """Log *exc*'s :func:`start_failure` text in the module's log at LOG_ERR,
    once: the exception remembers it was reported."""
    if reported(exc) or (isinstance(exc, SystemExit) and exc.code in (None, 0)):
        return
    log(h, start_failure(base, exc)[0])
    try:
        setattr(exc, _REPORTED, True)
    except AttributeError:  # an exception type with __slots__: logged twice at worst
        pass


def reported(exc: BaseException) -> bool:
    """True if :func:`report` already logged *exc*."""
    return bool(getattr(exc, _REPORTED, False))


def log(h: Any, text: str) -> None:
    """Log *text* at LOG_ERR on handle *h*, which may be unusable by now."""
    try:
        log_verbatim(h, syslog.LOG_ERR, text)
    except Exception:  # noqa: BLE001 - the report on stderr stands
        pass
