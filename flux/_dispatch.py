"""The dispatch path: from a message (or a timer) to a handler and its answer.

:class:`Dispatcher` turns a module's handler methods into reactor
callbacks.  Each plain callback is one closure: a call and a try block
between the broker's message and the handler.  The try block takes
BaseException: flux-core's callback wrappers pass only Exception on, so a
SystemExit (argparse) or KeyboardInterrupt left to escape would be dropped
by cffi and the request never answered.  Coroutines and generators run as
asyncio tasks on the module's reactor (:mod:`flux._tasks`, imported for
the first such handler).  Every request gets one final answer, and an
RPC nothing after it (:class:`AnswerTracker`).
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import sys
import syslog
import time
import traceback
import weakref
from typing import Any, Callable, Dict, Optional, Set

from flux import _json
from flux._constants import FLUX_MSGTYPE_REQUEST, FLUX_ROLE_OWNER
from flux._brief import BriefHelp
from flux._decoding import undecodable
from flux._logtext import excerpt, log_verbatim
from flux._observe import handler_failed
from flux._payloads import PayloadError, PayloadSchema
from flux._libflux import clear_msgcounters, is_streaming, matchtag_of, msgcounters, raw_message_class


class Dispatcher:
    """Make the reactor callbacks of one module's handlers.

    *h* is the module's handle, *log* its :class:`~flux.brokermod.BrokerLogger`
    (refusals go to its debug level), and *on_failure* is called after a
    handler's failure is logged (``stop_on_error`` stops the module there).
    """

    def __init__(self, h: Any, log: Any, on_failure: Callable[[], None]) -> None:
        self._h = h
        self._log = log
        self._on_failure = on_failure
        # The asyncio half (flux._tasks), made for the first task handler.
        self._tasks: Any = None
        #: Per-handler counters, by request topic.
        self.stats: Dict[str, HandlerStats] = {}

    @property
    def has_tasks(self) -> bool:
        """True if some handler runs as an asyncio task (disconnects matter)."""
        return self._tasks is not None

    def _task_runner(self) -> Any:
        if self._tasks is None:
            from flux._tasks import TaskRunner

            self._tasks = TaskRunner(self, self._h)
        return self._tasks

    def run_reactor(self) -> int:
        """Run the module's reactor; end the tasks still open when it stops."""
        tasks = self._tasks
        if tasks is None:
            return int(self._h.reactor_run())
        try:
            return tasks.run_reactor()  # type: ignore[no-any-return]
        finally:
            self._tasks = None  # its loop is closed

    def request_callback(
        self, topic: str, method: Callable[..., Any], schema: Optional[PayloadSchema], kind: str
    ) -> Callable[..., None]:
        """The callback of request handler *method* (*kind*: see :func:`kind_of`)."""
        stats = self.stats[topic] = HandlerStats()
        answered = AnswerTracker.install(self._h)
        if kind != PLAIN:
            return self._task_runner().request_callback(method, schema, kind, stats, answered)  # type: ignore[no-any-return]
        answer = self.answer_with
        failed = self.request_failed
        if schema is None:
            call = method
        else:
            fields_of = schema.fields_of

            def call(msg: Any) -> Any:
                return method(msg, **fields_of(msg))

        def callback(h: Any, watcher: Any, msg: Any, arg: Any) -> None:
            start = _clock()
            try:
                result = call(msg)
                if result is not None:
                    answer(msg, result, answered)
            except BaseException as exc:  # noqa: BLE001 - reported to the caller
                stats.errors += 1
                failed(msg, exc, answered)
            elapsed = _clock() - start
            stats.requests += 1
            stats.seconds += elapsed
            if elapsed > stats.longest:
                stats.longest = elapsed

        return callback

    def answer_with(self, msg: Any, result: Any, answered: "AnswerTracker") -> None:
        """Answer *msg* with what its handler returned (a streaming request: then ENODATA)."""
        try:
            answered.respond(msg, encoded(result))
        except AnswerError:
            raise AnswerError(
                msg, f"the handler answered and also returned {type(result).__name__} {result!r:.40}"
            ) from None
        if not answered.is_final(msg):  # a streaming request: end its stream
            answered.respond_error(msg, errno.ENODATA)

    def event_callback(self, method: Callable[[Any], Any], kind: str) -> Callable[..., None]:
        """The callback of event handler *method*: failures are logged, never raised."""
        if kind != PLAIN:
            start = self._task_runner().starter()

            def task_callback(h: Any, watcher: Any, msg: Any, arg: Any) -> None:
                start(method(msg), f"event {msg.topic}")

            return task_callback

        def callback(h: Any, watcher: Any, msg: Any, arg: Any) -> None:
            try:
                method(msg)
            except BaseException as exc:  # noqa: BLE001 - logged, module survives
                self.failed(f"event {msg.topic}", exc)

        return callback

    def timer_callback(self, attr: str, method: Callable[[], Any], kind: str) -> Callable[..., None]:
        """The callback of ``@timer_handler`` method *attr*: failures are logged;
        a coroutine tick still running makes the next one skip."""
        if kind != PLAIN:
            start = self._task_runner().starter()
            running: list = [None]

            def task_callback(h: Any, watcher: Any, revents: int, arg: Any) -> None:
                if running[0] is not None and not running[0].done():
                    return  # the previous tick is still running: skip, never overlap
                running[0] = start(method(), f"timer {attr}")

            return task_callback

        def callback(h: Any, watcher: Any, revents: int, arg: Any) -> None:
            try:
                method()
            except BaseException as exc:  # noqa: BLE001 - logged, module survives
                self.failed(f"timer {attr}", exc)

        return callback

    def cancel_callback(self, topic: str) -> Callable[..., None]:
        """``TOPIC-cancel``: end the sender's own stream (see flux._tasks)."""
        return self._task_runner().cancel_callback(topic)  # type: ignore[no-any-return]

    def disconnect_callback(self) -> Callable[..., None]:
        """``NAME.disconnect``: drop the departed sender's requests (see flux._tasks)."""
        return self._task_runner().disconnect_callback()  # type: ignore[no-any-return]

    def request_failed(self, msg: Any, exc: BaseException, answered: "AnswerTracker") -> None:
        """Log request *msg*'s failure *exc* and answer it with the error, unless it was answered."""
        if isinstance(exc, (RequestError, PayloadError)) or undecodable(exc):
            self._log.debug(f"request {msg.topic} refused: {exception_text(exc)}")
        else:
            self.failed(f"request {msg.topic}", exc)
        if not answered.is_final(msg):
            try:
                self._h.respond_error(msg, _exception_errno(exc), _request_error_text(msg, exc))
            except OSError as respond_exc:
                log_verbatim(self._h, syslog.LOG_ERR, f"could not answer {msg.topic}: {respond_exc}")

    def stats_get_callback(self, extra: Callable[[], Dict[str, Any]],
                           guest_topics: Set[str]) -> Callable[..., None]:
        """``NAME.stats-get``: the standard counters, each handler's, and *extra*'s.

        Open to everyone, as libflux's (which answers with the message
        counters alone).  A guest gets no more than ``NAME.handlers`` shows
        a guest: the counters, and those of the handlers in *guest_topics*;
        *extra* (``module_stats``) and the owner-only handlers' counters go
        to the owner only.
        """

        def callback(h: Any, watcher: Any, msg: Any, arg: Any) -> None:
            answer: Dict[str, Any] = {}
            owner = msg.rolemask & FLUX_ROLE_OWNER
            if owner:
                try:
                    answer.update(extra())
                except BaseException as exc:  # noqa: BLE001 - the standard part still answers
                    self.failed("module_stats", exc, stop=False)
            answer.update(msgcounters(h))
            answer["handlers"] = {topic: stats.as_dict() for topic, stats in self.stats.items()
                                  if owner or topic in guest_topics}
            h.respond(msg, answer)

        return callback

    def stats_clear_callback(self) -> Callable[..., None]:
        """``NAME.stats-clear`` (request or event): zero every counter."""

        def callback(h: Any, watcher: Any, msg: Any, arg: Any) -> None:
            clear_msgcounters(h)
            for stats in self.stats.values():
                stats.clear()
            if msg.type == FLUX_MSGTYPE_REQUEST:  # the event gets no answer
                h.respond(msg, None)

        return callback

    def failed(self, what: str, exc: BaseException, stop: bool = True) -> None:
        """Log *what*'s failure with its traceback (the module's own frames) at
        LOG_ERR; then, if *stop*, call the module's on_failure."""
        lines = traceback.format_exception(type(exc), exc, user_frames(exc.__traceback__))
        # Frames are the module's code; the rest (exception messages) may
        # repeat what a caller sent.
        text = "".join(line if line.startswith("  File ") else excerpt(line) for line in lines)
        log_verbatim(self._h, syslog.LOG_ERR, f"{excerpt(what)} handler failed: {text.rstrip()}")
        handler_failed(self._h, what, exc)
        if stop:
            self._on_failure()


# How a handler's exception is turned into an error response: exceptions
# that typically mean the request itself was malformed get EPROTO.
_BAD_REQUEST_ERRORS = (KeyError, TypeError, ValueError, UnicodeError)
_FAILED_HANDLER_ERRNO = errno.EIO


def _exception_errno(exc: BaseException) -> int:
    if isinstance(exc, OSError) and exc.errno:
        return int(exc.errno)
    if isinstance(exc, _BAD_REQUEST_ERRORS) or undecodable(exc):
        return errno.EPROTO
    if isinstance(exc, SystemExit):  # argparse on bad input, sys.exit("usage")
        return errno.EINVAL
    return _FAILED_HANDLER_ERRNO


def exit_text(exc: SystemExit) -> str:
    """What ``sys.exit(code)`` was given, in one line: ``sys.exit(2)`` or its message."""
    if isinstance(exc.code, int) or exc.code is None:
        return f"sys.exit({exc.code})"
    text = str(exc.code).strip()
    return text.splitlines()[0] if text else "sys.exit()"


def exception_text(exc: BaseException) -> str:
    """One line for the caller: the OSError's message, or ``Type: text``;
    at most TEXT_LIMIT characters (:func:`flux._logtext.excerpt`), since it
    may repeat what the caller sent."""
    return excerpt(_exception_line(exc))


def _exception_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and str(exc.strerror or "").strip():
        return str(exc.strerror).strip().splitlines()[0]
    if isinstance(exc, SystemExit):
        return f"SystemExit: {exit_text(exc)}"
    if isinstance(exc, (PayloadError, _ReturnValueError)):  # our own, already one line
        return str(exc)
    reason = undecodable(exc)
    if reason is not None:  # the request's payload: the caller's error
        return reason
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = f"missing key {exc.args[0]!r}"
    elif isinstance(exc, json.JSONDecodeError):
        text = f"payload is not JSON ({exc})"
    elif isinstance(exc, TypeError) and "JSON object must be" in str(exc):
        text = "request has no payload"
    else:
        text = str(exc).strip()
    first_line = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__


def _request_error_text(msg: Any, exc: BaseException) -> str:
    """The caller's error text; names a payload that is not a JSON object."""
    if isinstance(exc, (TypeError, KeyError, AttributeError)) and not isinstance(exc, OSError):
        try:
            payload = json.loads(msg.payload_str)
        except Exception:  # noqa: BLE001 - no payload, not JSON, too deep: say nothing of it
            payload = {}
        if not isinstance(payload, dict):
            kind = {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
                type(payload), "number"
            )
            return f"{type(exc).__name__}: payload is not a JSON object (got a JSON {kind})"
    return exception_text(exc)


class AnswerTracker:
    """Keep a request that an RPC waits for from being answered after its end.

    Wraps ``respond``/``respond_error`` on the module's handle once: the
    handle is made by whichever loader runs the module (this library's,
    flux-core's, or the in-memory broker), and this is the one place all
    three share.  A response to a streaming request is not final; an error
    response, or any response to another request, is.

    Only a request with a matchtag has an RPC waiting for it, and only
    there can an answer after the final one do harm: the client frees the
    matchtag at the final answer, and the extra response would reach its
    next RPC that reuses it.  Such an answer raises :class:`AnswerError`
    in the caller and sends nothing.  A request without a matchtag
    (``flux_send()``; RFC 27's ``sched.alloc`` is answered with
    annotations before its final answer) takes any number of answers, as
    with libflux; for one sent with FLUX_RPC_NORESPONSE, libflux sends none
    of them and reports success, and so does this.  Both methods return None.
    """

    def __init__(self, h: Any) -> None:
        self._respond = h.respond
        self._respond_error = h.respond_error
        # Messages of this class carry their own record and are answered
        # through libflux directly (flux._rawmsg); others are recorded here,
        # gone with them.
        self._raw = raw_message_class(h)
        self._final: "weakref.WeakSet[Any]" = weakref.WeakSet()

    @classmethod
    def install(cls, h: Any) -> "AnswerTracker":
        tracker = instance_attr(h, "_brokermod_answers")
        if tracker is None:
            tracker = cls(h)
            h._brokermod_answers = tracker
            h.respond = tracker.respond
            h.respond_error = tracker.respond_error
        return tracker

    def respond(self, message: Any, payload: Any = None) -> None:
        """Send a response, as ``flux.Flux.respond`` does."""
        if type(message) is self._raw:
            if message._answered and matchtag_of(message):
                raise AnswerError(message)
            message._respond(payload)
            message._answered = not message._streaming()
            return
        if message in self._final and matchtag_of(message):
            raise AnswerError(message)
        self._respond(message, payload)
        if not is_streaming(message):
            self._mark_final(message)

    def respond_error(self, message: Any, errnum: int, errstr: Any = None) -> None:
        """Send an error response, as ``flux.Flux.respond_error`` does."""
        if type(message) is self._raw:
            if message._answered and matchtag_of(message):
                raise AnswerError(message)
            message._respond_error(errnum, errstr)
            message._answered = True
            return
        if message in self._final and matchtag_of(message):
            raise AnswerError(message)
        self._respond_error(message, errnum, errstr)
        self._mark_final(message)

    def is_final(self, message: Any) -> bool:
        """Return True if *message* got a response that would end an RPC
        (an error, or any response to a request that is not streaming)."""
        if type(message) is self._raw:
            return message._answered  # type: ignore[no-any-return]
        return message in self._final

    def _mark_final(self, message: Any) -> None:
        try:
            self._final.add(message)
        except TypeError:  # a raw message pointer: nothing to mark
            pass


class AnswerError(RuntimeError, metaclass=BriefHelp):
    """A request that already got its final answer was answered again.

    Raised by the module handle's ``respond``/``respond_error`` for a
    request that a client's RPC waits for (it has a matchtag) and that was
    answered before: a non-streaming request once, a streaming one after
    its error or ENODATA; also when a handler that answered such a request
    returns a value.  Nothing more is sent.  Requests without a matchtag
    take any number of answers (see :class:`AnswerTracker`).
    """

    def __init__(self, message: Any, what: str = "a second response") -> None:
        super().__init__(
            f"{message.topic}: request already answered; {what} would reach "
            f"another request of the same client, so it was not sent"
        )


class RequestError(OSError, metaclass=BriefHelp):
    """Refuse a request cleanly: ``raise RequestError(errno.ENOENT, "no such key: a")``.

    The caller gets that errno and text (the errno's standard text when
    *text* is omitted); the module's log gets one line at LOG_DEBUG and no
    traceback, since nothing went wrong in the module.
    """

    def __init__(self, errnum: int, text: Optional[str] = None) -> None:
        super().__init__(errnum, text if text else os.strerror(errnum))


class _ReturnValueError(Exception):
    """A handler returned a value that cannot be sent (answered EIO)."""


# json.dumps(value, allow_nan=False), without making an encoder per call
_encode = _json.make_encoder(allow_nan=False)


def encoded(value: Any) -> Any:
    """A handler's returned or yielded value, ready for ``respond``."""
    if isinstance(value, (str, bytes)):
        return value
    try:
        return _encode(value)
    except (TypeError, ValueError) as exc:
        raise _ReturnValueError(f"the handler gave {type(value).__name__}, which is not JSON: {exc}") from None


# What a handler method is, which decides how it is run.
PLAIN = "plain"
COROUTINE = "coroutine"
GENERATOR = "generator"
ASYNC_GENERATOR = "async generator"


def is_stream(kind: str) -> bool:
    """True for the kinds of handler that answer with a stream."""
    return kind in (GENERATOR, ASYNC_GENERATOR)


def kind_of(method: Any) -> str:
    """How handler *method* runs: PLAIN, COROUTINE, GENERATOR or ASYNC_GENERATOR."""
    if inspect.iscoroutinefunction(method):
        return COROUTINE
    if inspect.isasyncgenfunction(method):
        return ASYNC_GENERATOR
    if inspect.isgeneratorfunction(method):
        return GENERATOR
    return PLAIN


_clock = time.perf_counter


class HandlerStats:
    """Counters of one request handler: requests, errors, time spent."""

    __slots__ = ("requests", "errors", "seconds", "longest")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Zero the counters."""
        self.requests = 0
        self.errors = 0
        self.seconds = 0.0
        self.longest = 0.0

    def count(self, seconds: float, failed: bool) -> None:
        """Count one request that took *seconds*."""
        self.requests += 1
        self.errors += failed
        self.seconds += seconds
        self.longest = max(self.longest, seconds)

    def as_dict(self) -> Dict[str, Any]:
        """The counters as ``flux module stats`` shows them (times in ms)."""
        mean = self.seconds / self.requests if self.requests else 0.0
        return {"requests": self.requests, "errors": self.errors,
                "mean_ms": round(mean * 1e3, 3), "max_ms": round(self.longest * 1e3, 3)}


def user_frames(tb: Any) -> Any:
    """Skip the leading traceback frames that belong to the flux package
    (this dispatch code, the broker's reactor): start in the user's code."""
    flux_pkg = sys.modules.get("flux")
    roots = tuple(os.path.join(p, "") for p in getattr(flux_pkg, "__path__", ()))
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename.startswith(roots):
        tb = tb.tb_next
    return tb


def instance_attr(obj: Any, name: str) -> Any:
    """Read an attribute set on *obj* itself, or None.

    Plain getattr() will not do: flux-core's handle answers any unknown
    attribute with a stand-in object instead of raising AttributeError.
    """
    try:
        return vars(obj).get(name)
    except TypeError:  # no __dict__
        return None
