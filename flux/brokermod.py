"""Write Flux broker modules in Python.

A broker module is a ``.py`` file holding a :class:`BrokerModule` subclass
(or a ``mod_main(h, *args)`` function).  Decorate methods with
:func:`request_handler` and :func:`event_handler`; the base class registers
them on the broker handle, runs the reactor, and keeps a failing handler
from taking the module down.

This module is a drop-in replacement for flux-core's own
``flux.brokermod`` (0.84 and later): the public names and their documented
behaviour are the same.  It imports nothing from flux-core at import time,
so it also works on the in-memory broker (:mod:`flux.membroker`) on a
machine without flux-core.
"""

import asyncio
import errno
import inspect
import json
import os
import sys
import syslog
import traceback
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar, Union

from flux import _aio
from flux._payloads import PayloadError, PayloadSchema, schema_of
from flux._requests import RequestFacts, is_streaming, request_facts

__all__ = [
    "AnswerError",
    "BrokerLogger",
    "BrokerModule",
    "PayloadError",
    "RequestError",
    "RequestFacts",
    "event_handler",
    "request_handler",
    "request_facts",
    "resolve_entry_point",
    "timer_handler",
]

# Values of flux-core's FLUX_MSGTYPE_* and FLUX_ROLE_* (RFC 3), so that this
# module does not need flux-core's compiled bindings to be imported.
_MSGTYPE_REQUEST = 0x01
_MSGTYPE_EVENT = 0x04
_TIMER = 0  # not a message type: marks a timer_handler
_ROLE_OWNER = 0x1
_ROLE_USER = 0x2

_F = TypeVar("_F", bound=Callable[..., Any])


class BrokerLogger:
    """Send a module's log messages to the broker's log (``flux dmesg``).

    Call a method named after a syslog severity (``debug``, ``info``,
    ``notice``, ``warning``, ``error``, ``critical``, ``alert``, ``emerg``),
    or call the logger itself as ``log(level, msg)`` with a syslog number.

    ``level`` is a threshold: a message less urgent than it (a numerically
    higher syslog priority) is dropped here.  It defaults to ``LOG_DEBUG``,
    so every message reaches the broker and the broker's own log level does
    the filtering, as it does for modules written in C.  Assign it a syslog
    number or a name such as ``"info"``; reading it gives the number.
    """

    #: Level names accepted by :attr:`level`, mapped to syslog numbers.
    LEVEL_NAMES: Dict[str, int] = {
        "emerg": syslog.LOG_EMERG,
        "alert": syslog.LOG_ALERT,
        "crit": syslog.LOG_CRIT,
        "err": syslog.LOG_ERR,
        "warning": syslog.LOG_WARNING,
        "notice": syslog.LOG_NOTICE,
        "info": syslog.LOG_INFO,
        "debug": syslog.LOG_DEBUG,
    }
    _LEVEL_NUMBERS = {number: name for name, number in LEVEL_NAMES.items()}

    def __init__(self, h: Any) -> None:
        self._h = h
        self._level = syslog.LOG_DEBUG

    @property
    def level(self) -> int:
        """The threshold, as a syslog number (``syslog.LOG_*``)."""
        return self._level

    @level.setter
    def level(self, value: Union[int, str]) -> None:
        if isinstance(value, str):
            number = self.LEVEL_NAMES.get(value.lower())
            if number is None:
                raise ValueError(
                    f"invalid log level {value!r}: "
                    f"expected one of {', '.join(self.LEVEL_NAMES)}"
                )
            self._level = number
            return
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(
                f"invalid log level {value!r}: expected a syslog number or "
                f"one of {', '.join(self.LEVEL_NAMES)}"
            )
        if not syslog.LOG_EMERG <= value <= syslog.LOG_DEBUG:
            raise ValueError(
                f"invalid log level {value!r}: syslog numbers run from "
                f"{syslog.LOG_EMERG} (emerg) to {syslog.LOG_DEBUG} (debug)"
            )
        self._level = value

    @property
    def level_name(self) -> str:
        """The threshold as a name, such as ``"info"``."""
        return self._LEVEL_NUMBERS[self._level]

    def __call__(self, level: int, msg: str) -> None:
        """Log *msg* at syslog priority *level* unless it is below the threshold.

        The text is logged exactly as given: a ``%`` in it is not a format
        directive (see :func:`_log_verbatim`).
        """
        if level <= self._level:
            _log_verbatim(self._h, level, msg)

    def debug(self, msg: str) -> None:
        """Log *msg* at ``LOG_DEBUG``."""
        self(syslog.LOG_DEBUG, msg)

    def info(self, msg: str) -> None:
        """Log *msg* at ``LOG_INFO``."""
        self(syslog.LOG_INFO, msg)

    def notice(self, msg: str) -> None:
        """Log *msg* at ``LOG_NOTICE``."""
        self(syslog.LOG_NOTICE, msg)

    def warning(self, msg: str) -> None:
        """Log *msg* at ``LOG_WARNING``."""
        self(syslog.LOG_WARNING, msg)

    def error(self, msg: str) -> None:
        """Log *msg* at ``LOG_ERR``."""
        self(syslog.LOG_ERR, msg)

    def critical(self, msg: str) -> None:
        """Log *msg* at ``LOG_CRIT``."""
        self(syslog.LOG_CRIT, msg)

    def alert(self, msg: str) -> None:
        """Log *msg* at ``LOG_ALERT``."""
        self(syslog.LOG_ALERT, msg)

    def emerg(self, msg: str) -> None:
        """Log *msg* at ``LOG_EMERG``."""
        self(syslog.LOG_EMERG, msg)


def _log_verbatim(h: Any, level: int, text: Any) -> None:
    """Send *text* to the broker log through ``h.log()`` so that it appears as written.

    flux-core's ``Flux.log()`` hands its text to ``flux_log()`` as a printf
    format: a ``%s`` in it reads a missing argument and can crash the
    module, and ``50% off`` comes out garbled.  Doubling every ``%`` makes
    the format print the text itself.  A NUL would end the C string early,
    so it is written as ``\\0``.
    """
    if not isinstance(text, str):
        text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    if "\0" in text:
        text = text.replace("\0", "\\0")
    h.log(level, text.replace("%", "%%"))


def _check_topic(topic: Any, decorator: str) -> None:
    if not isinstance(topic, str) or not topic:
        raise TypeError(f"@{decorator}: topic must be a non-empty string, not {topic!r}")


def _mark(func: Any, spec: Dict[str, Any], decorator: str) -> None:
    if not inspect.isfunction(func):
        raise TypeError(
            f"@{decorator}({spec['topic']!r}) must decorate a plain method, "
            f"not {type(func).__name__} {func!r}"
        )
    func._flux_handler = spec


def request_handler(
    topic: str, prefix: bool = True, allow_guest: bool = False
) -> Callable[[_F], _F]:
    """Mark a method as the handler of requests to *topic*.

    The method is called as ``method(self, msg)`` for each request whose
    topic is ``<module name>.<topic>``, or *topic* itself when *prefix* is
    False.  Only the instance owner's requests reach it unless
    *allow_guest* is True, which also admits guests (``FLUX_ROLE_USER``);
    a guest refused here gets EPERM and the method never runs.
    """
    _check_topic(topic, "request_handler")
    spec = {
        "msgtype": _MSGTYPE_REQUEST,
        "topic": topic,
        "prefix": prefix,
        "allow_guest": allow_guest,
    }

    def decorator(func: _F) -> _F:
        _mark(func, spec, "request_handler")
        return func

    return decorator


def event_handler(
    topic: str, prefix: bool = True, allow_guest: bool = False
) -> Callable[[_F], _F]:
    """Mark a method as the handler of events named *topic*.

    The module subscribes to the event, and the method is called as
    ``method(self, msg)`` for each event whose topic is
    ``<module name>.<topic>``, or *topic* itself when *prefix* is False.
    Events published by guests are dropped unless *allow_guest* is True.
    """
    _check_topic(topic, "event_handler")
    spec = {
        "msgtype": _MSGTYPE_EVENT,
        "topic": topic,
        "prefix": prefix,
        "allow_guest": allow_guest,
    }

    def decorator(func: _F) -> _F:
        _mark(func, spec, "event_handler")
        return func

    return decorator


def timer_handler(after: float, repeat: float = 0.0) -> Callable[[_F], _F]:
    """Mark a method to be called as ``method(self)`` on a timer.

    The timer starts when the module is created: the method runs *after*
    seconds once the reactor runs, then every *repeat* seconds if *repeat*
    is positive.  Like the message handlers, an exception it raises is
    logged with its traceback and the module keeps running (unless
    :attr:`BrokerModule.stop_on_error`).  Timers made directly with
    ``self.handle.timer_watcher_create()`` keep flux-core's rule instead:
    an exception stops the reactor and :meth:`BrokerModule.run` raises
    OSError.
    """
    for value, what in ((after, "after"), (repeat, "repeat")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise TypeError(f"@timer_handler: {what} must be a number of seconds >= 0, not {value!r}")

    def decorator(func: _F) -> _F:
        spec = {
            "msgtype": _TIMER,
            "topic": getattr(func, "__name__", "?"),
            "prefix": False,
            "after": float(after),
            "repeat": float(repeat),
        }
        _mark(func, spec, "timer_handler")
        return func

    return decorator


def _handler_spec(cls: type, attr: str, value: Any) -> Optional[Dict[str, Any]]:
    """Return the handler spec carried by a class attribute, if any.

    A decorated function wrapped again in staticmethod, classmethod or
    property cannot be called as ``method(msg)``: refuse it here, at class
    definition, rather than at the first message.
    """
    inner = value
    if isinstance(value, (staticmethod, classmethod)):
        inner = value.__func__
    elif isinstance(value, property):
        inner = value.fget
    spec = getattr(inner, "_flux_handler", None)
    if spec is not None and inner is not value:
        raise TypeError(
            f"{cls.__qualname__}.{attr}: a message handler must be a plain "
            f"method, not a {type(value).__name__}"
        )
    return spec


def _describe(spec: Dict[str, Any]) -> str:
    if spec["msgtype"] == _TIMER:
        return f"timer {spec['topic']!r}"
    kind = "request" if spec["msgtype"] == _MSGTYPE_REQUEST else "event"
    topic = spec["topic"] if not spec["prefix"] else f"<name>.{spec['topic']}"
    return f"{kind} {topic!r}"


def _collect_handlers(cls: type) -> Dict[str, Dict[str, Any]]:
    """Map method name to handler spec for *cls*, most derived class winning.

    A method overridden without a decorator keeps the inherited spec, so
    the override is what runs.  A subclass handler for a topic that a base
    class also handles replaces the base's registration.
    """
    handlers: Dict[str, Dict[str, Any]] = {}
    for klass in reversed(cls.__mro__):
        own: Dict[Tuple[int, str, bool], str] = {}
        for attr, value in vars(klass).items():
            spec = _handler_spec(klass, attr, value)
            if spec is None:
                continue
            key = (spec["msgtype"], spec["topic"], spec["prefix"])
            if key in own:
                raise TypeError(
                    f"{klass.__qualname__}: methods {own[key]!r} and {attr!r} "
                    f"both handle {_describe(spec)}"
                )
            own[key] = attr
            for other, other_spec in list(handlers.items()):
                other_key = (
                    other_spec["msgtype"],
                    other_spec["topic"],
                    other_spec["prefix"],
                )
                if other != attr and other_key == key:
                    del handlers[other]
            handlers[attr] = spec
    return handlers


# How a handler's exception is turned into an error response: exceptions
# that typically mean the request itself was malformed get EPROTO.
_BAD_REQUEST_ERRORS = (KeyError, TypeError, ValueError, UnicodeError)
_FAILED_HANDLER_ERRNO = errno.EIO


def _exception_errno(exc: BaseException) -> int:
    if isinstance(exc, OSError) and exc.errno:
        return int(exc.errno)
    if isinstance(exc, _BAD_REQUEST_ERRORS):
        return errno.EPROTO
    if isinstance(exc, SystemExit):  # argparse on bad input, sys.exit("usage")
        return errno.EINVAL
    return _FAILED_HANDLER_ERRNO


def _exit_text(exc: SystemExit) -> str:
    """What ``sys.exit(code)`` was given, in one line: ``sys.exit(2)`` or its message."""
    if isinstance(exc.code, int) or exc.code is None:
        return f"sys.exit({exc.code})"
    text = str(exc.code).strip()
    return text.splitlines()[0] if text else "sys.exit()"


def _exception_text(exc: BaseException) -> str:
    """One line for the caller: the OSError's message, or ``Type: text``."""
    if isinstance(exc, OSError) and str(exc.strerror or "").strip():
        return str(exc.strerror).strip().splitlines()[0]
    if isinstance(exc, SystemExit):
        return f"SystemExit: {_exit_text(exc)}"
    if isinstance(exc, (PayloadError, _ReturnValueError)):  # our own, already one line
        return str(exc)
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
        except (TypeError, ValueError):
            payload = {}
        if not isinstance(payload, dict):
            kind = {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
                type(payload), "number"
            )
            return f"{type(exc).__name__}: payload is not a JSON object (got a JSON {kind})"
    return _exception_text(exc)


class BrokerModule:
    """Base class for Python broker modules.

    Subclass it, decorate methods with :func:`request_handler` and
    :func:`event_handler`, and call :meth:`run` (the loader does that for
    you when the file holds a single subclass and no ``mod_main``).
    Handler topics are prefixed with the module name unless the decorator
    says ``prefix=False``.

    A handler that raises does not take the module down: the request gets
    an error response (the exception's errno for OSError, EPROTO for
    KeyError, TypeError, ValueError and UnicodeError, EIO otherwise), the
    traceback goes to the broker log at LOG_ERR, and the module keeps
    serving.  Set the class attribute :attr:`stop_on_error` to True to stop
    the module with an error instead.

    Example::

        from flux.brokermod import BrokerModule, event_handler, request_handler

        class MyModule(BrokerModule):

            @request_handler("info")
            def info(self, msg):
                self.handle.respond(msg, {"name": self.name})

            @event_handler("panic")
            def panic(self, msg):
                self.stop_error()
    """

    #: When True, an exception escaping a handler stops the module with an
    #: error (the behaviour of flux-core's first BrokerModule) after the
    #: request is answered.
    stop_on_error: bool = False

    _flux_handlers: Dict[str, Dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._flux_handlers = _collect_handlers(cls)

    def __init__(self, h: Any, *args: str) -> None:
        self._h = h
        self._args: Tuple[str, ...] = tuple(args)
        self._name = _broker_module_name(h)
        self._watchers: List[Any] = []
        self._stopped_with_error = False
        # Requests served by tasks (coroutines, streams), by (sender,
        # matchtag); None until the module has such a handler.
        self._pending: Optional[Dict[Tuple[str, int], _PendingRequest]] = None
        self._loop: Any = None
        self.log = BrokerLogger(h)
        self._register_handlers()

    @property
    def handle(self) -> Any:
        """The :class:`flux.Flux` handle connected to the broker."""
        return self._h

    @property
    def name(self) -> str:
        """The module name as the broker assigned it (``--name`` included)."""
        return self._name

    @property
    def args(self) -> Tuple[str, ...]:
        """The module arguments given at load time, as a tuple of strings."""
        return self._args

    def set_running(self) -> None:
        """Tell the broker the module is running, so ``flux module load`` returns.

        Call it before slow synchronous start-up work; otherwise the broker
        considers the module running when the reactor starts.  See
        flux_module_set_running(3).
        """
        host = _host_of(self._h)
        if host is not None:
            host.set_running()
            return
        from _flux._core import lib

        if lib.flux_module_set_running(self._h.handle) < 0:
            raise OSError("flux_module_set_running failed")

    def debug_test(self, flag: int, clear: bool = False) -> bool:
        """Return True if debug bit *flag* is set; clear it too if *clear*.

        Bits are set from outside with
        ``flux module debug --setbit N <module name>``.
        """
        host = _host_of(self._h)
        if host is not None:
            return bool(host.debug_test(flag, clear))
        from _flux._core import lib

        return bool(lib.flux_module_debug_test(self._h.handle, flag, clear))

    def stop(self) -> None:
        """Stop the reactor; :meth:`run` returns normally."""
        self._h.reactor_stop()

    def stop_error(self) -> None:
        """Stop the reactor; :meth:`run` raises OSError."""
        self._stopped_with_error = True
        self._h.reactor_stop_error()

    def run(self) -> None:
        """Run the reactor until the module is stopped.

        Raises OSError if the reactor stopped with an error (for example
        after :meth:`stop_error`) or a callback outside the handlers (a
        timer, a future's continuation) raised: an OSError is raised as it
        is, any other exception is logged with its traceback and raised as
        the ``__cause__`` of an OSError (ECONNRESET).
        """
        try:
            rc = self._run_reactor()
        except OSError:
            raise
        except Exception as exc:
            self._callback_failed("reactor callback", exc, stop=False)
            raise OSError(errno.ECONNRESET, f"reactor exited with error: {_exception_text(exc)}") from exc
        if rc < 0 or self._stopped_with_error:
            raise OSError(errno.ECONNRESET, "reactor exited with error")

    def _run_reactor(self) -> int:
        loop = self._loop
        if loop is None:
            return int(self._h.reactor_run())
        asyncio.events._set_running_loop(loop)
        try:
            return int(self._h.reactor_run())
        finally:
            asyncio.events._set_running_loop(None)
            # Streams and other tasks still open end now: their finally runs.
            loop.finish([task for task in asyncio.all_tasks(loop) if not task.done()])
            _aio.forget_loop(self._h)
            self._loop = None

    def _register_handlers(self) -> None:
        h = self._h
        streams: List[Tuple[str, Optional[int]]] = []
        for attr, spec in type(self)._flux_handlers.items():
            method = getattr(self, attr)
            kind = _kind_of(method)
            if spec["msgtype"] == _TIMER:
                timer = h.timer_watcher_create(
                    spec["after"], self._timer_callback(attr, method, kind), repeat=spec["repeat"]
                )
                timer.start()
                self._watchers.append(timer)
                continue
            topic = f"{self._name}.{spec['topic']}" if spec["prefix"] else spec["topic"]
            rolemask = _ROLE_OWNER | _ROLE_USER if spec.get("allow_guest") else None
            if spec["msgtype"] == _MSGTYPE_EVENT:
                h.event_subscribe(topic)
                callback = self._event_callback(method, kind)
            else:
                try:
                    schema = schema_of(method, f"{type(self).__qualname__}.{attr}")
                except TypeError as exc:
                    raise ValueError(str(exc)) from None
                if kind == _PLAIN:
                    callback = self._request_callback(method, schema)
                else:
                    callback = self._task_request_callback(method, schema, kind)
                    if kind in (_GENERATOR, _ASYNC_GENERATOR):
                        streams.append((topic, rolemask))
            self._watch(spec["msgtype"], topic, callback, rolemask)
        for topic, rolemask in streams:
            self._watch(_MSGTYPE_REQUEST, f"{topic}-cancel", self._cancel_callback(topic), rolemask)
        if self._pending is not None:
            self._watch(_MSGTYPE_REQUEST, f"{self._name}.disconnect", self._disconnect_callback(),
                        _ROLE_OWNER | _ROLE_USER)

    def _watch(self, msgtype: int, topic: str, callback: Callable[..., None], rolemask: Optional[int]) -> None:
        watcher = self._h.msg_watcher_create(callback, msgtype, topic, rolemask=rolemask)
        watcher.start()
        self._watchers.append(watcher)

    # The dispatch path: one closure per handler, nothing but a call and a
    # try block between the broker's message and the handler.  The try
    # block takes BaseException: flux-core's callback wrappers pass only
    # Exception on, so a SystemExit (argparse) or KeyboardInterrupt left to
    # escape would be dropped by cffi and the request never answered.

    def _request_callback(
        self, method: Callable[..., Any], schema: Optional[PayloadSchema]
    ) -> Callable[..., None]:
        answered = _AnswerTracker.install(self._h)
        answer = self._answer_with
        if schema is None:

            def callback(h: Any, watcher: Any, msg: Any, arg: Any) -> None:
                try:
                    result = method(msg)
                    if result is not None:
                        answer(msg, result, answered)
                except BaseException as exc:  # noqa: BLE001 - reported to the caller
                    self._request_failed(msg, exc, answered)

            return callback

        fields_of = schema.fields_of

        def checked_callback(h: Any, watcher: Any, msg: Any, arg: Any) -> None:
            try:
                result = method(msg, **fields_of(msg))
                if result is not None:
                    answer(msg, result, answered)
            except BaseException as exc:  # noqa: BLE001 - reported to the caller
                self._request_failed(msg, exc, answered)

        return checked_callback

    def _answer_with(self, msg: Any, result: Any, answered: "_AnswerTracker") -> None:
        """Answer *msg* with what its handler returned (a streaming request: then ENODATA)."""
        if answered.is_final(msg):
            raise AnswerError(msg, f"the handler answered and also returned {type(result).__name__} {result!r:.40}")
        self._h.respond(msg, _encoded(result))
        if is_streaming(msg):
            self._h.respond_error(msg, errno.ENODATA)

    def _event_callback(self, method: Callable[[Any], Any], kind: str) -> Callable[..., None]:
        if kind != _PLAIN:
            start = self._task_starter()

            def task_callback(h: Any, watcher: Any, msg: Any, arg: Any) -> None:
                start(method(msg), f"event {msg.topic}")

            return task_callback

        def callback(h: Any, watcher: Any, msg: Any, arg: Any) -> None:
            try:
                method(msg)
            except BaseException as exc:  # noqa: BLE001 - logged, module survives
                self._callback_failed(f"event {msg.topic}", exc)

        return callback

    def _timer_callback(self, attr: str, method: Callable[[], Any], kind: str) -> Callable[..., None]:
        if kind != _PLAIN:
            start = self._task_starter()

            def task_callback(h: Any, watcher: Any, revents: int, arg: Any) -> None:
                start(method(), f"timer {attr}")

            return task_callback

        def callback(h: Any, watcher: Any, revents: int, arg: Any) -> None:
            try:
                method()
            except BaseException as exc:  # noqa: BLE001 - logged, module survives
                self._callback_failed(f"timer {attr}", exc)

        return callback

    # Handlers that run as asyncio tasks: coroutines and streams.

    def _task_loop(self) -> Any:
        if self._loop is None:
            self._loop = _aio.loop_for(self._h)
            self._pending = {}
        return self._loop

    def _task_starter(self) -> Callable[[Any, str], None]:
        """For event and timer coroutines: run each as a task, log its failure."""
        loop = self._task_loop()

        async def guarded(coro: Any, what: str) -> None:
            try:
                await coro
            except asyncio.CancelledError:
                pass
            except BaseException as exc:  # noqa: BLE001 - logged, module survives
                self._callback_failed(what, exc)

        def start(coro: Any, what: str) -> None:
            loop.create_task(guarded(coro, what))

        return start

    def _task_request_callback(
        self, method: Callable[..., Any], schema: Optional[PayloadSchema], kind: str
    ) -> Callable[..., None]:
        """A request handler that is a coroutine or a generator (a stream)."""
        answered = _AnswerTracker.install(self._h)
        loop = self._task_loop()
        pending = self._pending
        assert pending is not None
        stream = kind in (_GENERATOR, _ASYNC_GENERATOR)

        def callback(h: Any, watcher: Any, msg: Any, arg: Any) -> None:
            try:
                facts = request_facts(msg)
                if stream and not facts.streaming:
                    raise RequestError(
                        errno.EPROTO, f"{msg.topic} is a stream: send the request with FLUX_RPC_STREAMING"
                    )
                kwargs = schema.fields_of(msg) if schema is not None else {}
                body = method(msg, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - reported to the caller
                self._request_failed(msg, exc, answered)
                return
            request = _PendingRequest(msg, facts)
            if kind == _COROUTINE:
                coro = self._serve(body, request, answered)
            else:
                coro = self._serve_stream(body, request, answered)
            request.task = loop.create_task(coro)
            if facts.matchtag:
                key = (facts.sender, facts.matchtag)
                pending[key] = request
                request.task.add_done_callback(lambda task: _forget(pending, key, request))

        return callback

    async def _serve(self, coro: Any, request: "_PendingRequest", answered: "_AnswerTracker") -> None:
        msg = request.msg
        try:
            result = await coro
            if result is not None:
                self._answer_with(msg, result, answered)
        except asyncio.CancelledError:
            pass  # the caller went away: nothing to answer
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            self._request_failed(msg, exc, answered)

    async def _serve_stream(self, body: Any, request: "_PendingRequest", answered: "_AnswerTracker") -> None:
        msg = request.msg
        respond = self._h.respond
        try:
            if inspect.isasyncgen(body):
                async for value in body:
                    respond(msg, _encoded(value))
            else:
                for value in body:
                    respond(msg, _encoded(value))
            self._h.respond_error(msg, errno.ENODATA)
        except asyncio.CancelledError:
            if request.cancelled:  # TOPIC-cancel ends the stream with ENODATA
                self._h.respond_error(msg, errno.ENODATA)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            self._request_failed(msg, exc, answered)
        finally:
            if inspect.isasyncgen(body):
                await body.aclose()
            else:
                body.close()

    def _cancel_callback(self, topic: str) -> Callable[..., None]:
        """``TOPIC-cancel`` with ``{"matchtag": N}``: end the sender's own stream N."""

        def callback(h: Any, watcher: Any, msg: Any, arg: Any) -> None:
            try:
                matchtag = json.loads(msg.payload_str or "null")["matchtag"]
                facts = request_facts(msg)
            except (TypeError, ValueError, KeyError):
                return  # a cancel gets no response, even a malformed one
            request = (self._pending or {}).get((facts.sender, matchtag))
            if request is not None and request.userid == facts.userid and request.topic == topic:
                request.cancelled = True
                request.task.cancel()

        return callback

    def _disconnect_callback(self) -> Callable[..., None]:
        """``NAME.disconnect``: the sender closed its handle; drop its requests."""

        def callback(h: Any, watcher: Any, msg: Any, arg: Any) -> None:
            facts = request_facts(msg)
            for request in list((self._pending or {}).values()):
                if request.sender == facts.sender and request.userid == facts.userid:
                    request.task.cancel()

        return callback

    def _request_failed(
        self, msg: Any, exc: BaseException, answered: "_AnswerTracker"
    ) -> None:
        if isinstance(exc, (RequestError, PayloadError)):
            self.log.debug(f"request {msg.topic} refused: {_exception_text(exc)}")
        else:
            self._callback_failed(f"request {msg.topic}", exc)
        if not answered.is_final(msg):
            try:
                self._h.respond_error(msg, _exception_errno(exc), _request_error_text(msg, exc))
            except OSError as respond_exc:
                _log_verbatim(self._h, syslog.LOG_ERR, f"could not answer {msg.topic}: {respond_exc}")

    def _callback_failed(self, what: str, exc: BaseException, stop: bool = True) -> None:
        lines = traceback.format_exception(type(exc), exc, _user_frames(exc.__traceback__))
        _log_verbatim(self._h, syslog.LOG_ERR, f"{what} handler failed: {''.join(lines).rstrip()}")
        if stop and self.stop_on_error:
            self.stop_error()


class _AnswerTracker:
    """Give each request at most one final answer.

    Wraps ``respond``/``respond_error`` on the module's handle once: the
    handle is made by whichever loader runs the module (this library's,
    flux-core's, or the in-memory broker), and this is the one place all
    three share.  A response to a streaming request is not final; an error
    response is.  Answering a request that already got its final answer
    raises :class:`AnswerError` in the caller and sends nothing: on a real
    broker the extra response would reach the same client's next request
    that reuses the matchtag.  Both methods return None.
    """

    def __init__(self, h: Any) -> None:
        self._respond = h.respond
        self._respond_error = h.respond_error
        # The message objects that got their final answer; gone with them.
        self._final: "weakref.WeakSet[Any]" = weakref.WeakSet()

    @classmethod
    def install(cls, h: Any) -> "_AnswerTracker":
        tracker = _instance_attr(h, "_brokermod_answers")
        if tracker is None:
            tracker = cls(h)
            h._brokermod_answers = tracker
            h.respond = tracker.respond
            h.respond_error = tracker.respond_error
        return tracker

    def respond(self, message: Any, payload: Any = None) -> None:
        """Send a response, as ``flux.Flux.respond`` does."""
        if message in self._final:
            raise AnswerError(message)
        self._respond(message, payload)
        if not is_streaming(message):
            self._mark_final(message)

    def respond_error(self, message: Any, errnum: int, errstr: Any = None) -> None:
        """Send an error response, as ``flux.Flux.respond_error`` does."""
        if message in self._final:
            raise AnswerError(message)
        self._respond_error(message, errnum, errstr)
        self._mark_final(message)

    def is_final(self, message: Any) -> bool:
        """Return True if *message* already got a final answer."""
        return message in self._final

    def _mark_final(self, message: Any) -> None:
        try:
            self._final.add(message)
        except TypeError:  # a raw message pointer: nothing to mark
            pass


class AnswerError(RuntimeError):
    """A request that already got its final answer was answered again.

    Raised by the module handle's ``respond``/``respond_error`` for a
    request answered before (a non-streaming request once, a streaming one
    after its error or ENODATA), and when a handler that answered also
    returns a value; nothing more is sent.
    """

    def __init__(self, message: Any, what: str = "a second response") -> None:
        super().__init__(
            f"{message.topic}: request already answered; {what} would reach "
            f"another request of the same client, so it was not sent"
        )


class RequestError(OSError):
    """Refuse a request cleanly: ``raise RequestError(errno.ENOENT, "no such key: a")``.

    The caller gets that errno and text (the errno's standard text when
    *text* is omitted); the module's log gets one line at LOG_DEBUG and no
    traceback, since nothing went wrong in the module.
    """

    def __init__(self, errnum: int, text: Optional[str] = None) -> None:
        super().__init__(errnum, text if text else os.strerror(errnum))


class _ReturnValueError(Exception):
    """A handler returned a value that cannot be sent (answered EIO)."""


def _encoded(value: Any) -> Any:
    """A handler's returned or yielded value, ready for ``respond``."""
    if isinstance(value, (str, bytes)):
        return value
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise _ReturnValueError(f"the handler gave {type(value).__name__}, which is not JSON: {exc}") from None


# What a handler method is, which decides how it is run.
_PLAIN = "plain"
_COROUTINE = "coroutine"
_GENERATOR = "generator"
_ASYNC_GENERATOR = "async generator"


def _kind_of(method: Any) -> str:
    if inspect.iscoroutinefunction(method):
        return _COROUTINE
    if inspect.isasyncgenfunction(method):
        return _ASYNC_GENERATOR
    if inspect.isgeneratorfunction(method):
        return _GENERATOR
    return _PLAIN


class _PendingRequest:
    """A request whose handler runs as a task, until it is done."""

    __slots__ = ("msg", "topic", "sender", "userid", "task", "cancelled")

    def __init__(self, msg: Any, facts: RequestFacts) -> None:
        self.msg = msg
        self.topic = msg.topic
        self.sender = facts.sender
        self.userid = facts.userid
        self.task: Any = None
        self.cancelled = False


def _forget(pending: Dict[Tuple[str, int], _PendingRequest], key: Tuple[str, int], request: _PendingRequest) -> None:
    if pending.get(key) is request:
        del pending[key]


def _instance_attr(obj: Any, name: str) -> Any:
    """Read an attribute set on *obj* itself, or None.

    Plain getattr() will not do: flux-core's handle answers any unknown
    attribute with a stand-in object instead of raising AttributeError.
    """
    try:
        return vars(obj).get(name)
    except TypeError:  # no __dict__
        return None


def _host_of(h: Any) -> Any:
    """The in-memory broker's module host behind *h*, or None on real Flux."""
    return _instance_attr(h, "_brokermod_host")


def _user_frames(tb: Any) -> Any:
    """Skip the leading traceback frames that belong to the flux package
    (this dispatch code, the broker's reactor): start in the user's code."""
    flux_pkg = sys.modules.get("flux")
    roots = tuple(os.path.join(p, "") for p in getattr(flux_pkg, "__path__", ()))
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename.startswith(roots):
        tb = tb.tb_next
    return tb


def _broker_module_name(h: Any) -> str:
    host = _host_of(h)
    if host is not None:
        return str(host.name)
    from _flux._core import ffi, lib

    name_p = ffi.cast("char *", lib.flux_aux_get(h.handle, b"flux::name"))
    return ffi.string(name_p).decode() if name_p != ffi.NULL else "unknown"


def resolve_entry_point(mod: Any) -> Callable[..., Any]:
    """Return the entry point of an imported broker module file.

    That is ``mod_main`` when the file defines it; otherwise a function
    ``(h, *args) -> cls(h, *args).run()`` for the one :class:`BrokerModule`
    subclass defined in the file itself (subclasses merely imported into it
    do not count).

    :raises ValueError: when there is no ``mod_main`` and zero or several
        subclasses are defined in the file; the message names the file and
        the classes.
    """
    mod_main = getattr(mod, "mod_main", None)
    if mod_main is not None:
        if not callable(mod_main):
            raise ValueError(f"{_file_of(mod)}: mod_main is not a function")
        return mod_main
    own = getattr(mod, "__name__", None)
    subclasses = [
        value
        for value in vars(mod).values()
        if isinstance(value, type)
        and issubclass(value, BrokerModule)
        and value is not BrokerModule
        and value.__module__ == own
    ]
    if len(subclasses) == 1:
        cls = subclasses[0]

        def mod_main(h: Any, *args: str) -> None:
            cls(h, *args).run()

        mod_main.__qualname__ = f"{cls.__qualname__}.<entry point>"
        return mod_main
    if subclasses:
        names = ", ".join(cls.__name__ for cls in subclasses)
        raise ValueError(
            f"{_file_of(mod)}: several BrokerModule subclasses ({names}) "
            f"and no mod_main(); define mod_main() to choose one"
        )
    raise ValueError(f"{_file_of(mod)}: no mod_main() and no BrokerModule subclass")


def _file_of(mod: Any) -> str:
    return str(getattr(mod, "__file__", None) or getattr(mod, "__name__", "module"))
