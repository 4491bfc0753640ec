"""Write Flux broker modules in Python.

A broker module is a ``.py`` file holding a :class:`BrokerModule` subclass
(or a ``mod_main(h, *args)`` function).  Decorate methods with
:func:`request_handler`, :func:`event_handler` and :func:`timer_handler`;
the base class registers them on the broker handle, runs the reactor, and
keeps a failing handler from taking the module down.  A request handler
may return its answer, declare its payload as keyword-only parameters, be
an ``async def`` coroutine, or be a (possibly async) generator answering a
streaming request; :class:`RequestError` refuses a request cleanly.

This module is a drop-in replacement for flux-core's own
``flux.brokermod`` (0.84 and later): the public names and their documented
behaviour are the same.  It imports nothing from flux-core at import time,
so it also works on the in-memory broker (:mod:`flux.membroker`) on a
machine without flux-core.
"""

from __future__ import annotations

import errno
import functools
import inspect
import json
import math
import os
import sys
import syslog
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, TypeVar, Union

from flux._constants import (
    FLUX_MSGTYPE_EVENT,
    FLUX_MSGTYPE_REQUEST,
    FLUX_ROLE_OWNER,
    FLUX_ROLE_USER,
    FLUX_RPC_NORESPONSE,
)
from flux._dispatch import (
    PLAIN,
    AnswerError,
    Dispatcher,
    RequestError,
    exception_text,
    is_stream,
    kind_of,
)
from flux import _startfail
from flux._awaitable import run_to_completion
from flux._logtext import FLUX_ERROR_TEXT, excerpt, fit, log_verbatim
from flux._observe import module_created
from flux._options import Option, OptionError, option_table, options_of, parse_options
from flux._payloads import PayloadError, schema_of
from flux._libflux import RequestFacts, arm_rpcs, module_name, request_facts, watch
from flux._tree import RankSets, Reducer, Reduction, TreePlace, forward_topic, resync_topic, update_topic

# Defined next to the code that uses them; public here, under this name.
for _public in (AnswerError, RequestError, PayloadError, RequestFacts, Option, OptionError, RankSets, Reduction):
    _public.__module__ = __name__

__all__ = [
    "AnswerError",
    "BrokerLogger",
    "BrokerModule",
    "Option",
    "OptionError",
    "PayloadError",
    "RankSets",
    "Reduction",
    "RequestError",
    "RequestFacts",
    "event_handler",
    "reduce_handler",
    "request_handler",
    "describe",
    "cancel_stream",
    "request_facts",
    "resolve_entry_point",
    "timer_handler",
]

_MSGTYPE_REQUEST = FLUX_MSGTYPE_REQUEST
_MSGTYPE_EVENT = FLUX_MSGTYPE_EVENT
_TIMER = 0  # not a message type: marks a timer_handler
_ROLE_OWNER = FLUX_ROLE_OWNER
_ROLE_USER = FLUX_ROLE_USER
_RPC_NORESPONSE = FLUX_RPC_NORESPONSE

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

    @classmethod
    def level_names(cls) -> Dict[int, str]:
        """Syslog numbers mapped to the names ``flux dmesg`` shows (``err``...)."""
        return dict(cls._LEVEL_NUMBERS)

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
        directive (see :func:`flux._logtext.log_verbatim`).
        """
        if level <= self._level:
            log_verbatim(self._h, level, msg)

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

    How it answers:

    * ``self.handle.respond(msg, payload)``, as with flux-core; or return
      the answer (a dict, list, str...; None means "answered already, or
      not yet");
    * ``raise RequestError(errno, text)`` refuses cleanly; any other
      exception is answered too (see :class:`BrokerModule`);
    * keyword-only parameters declare the payload's fields, checked before
      the call (``def add(self, msg, *, a: float, b: float = 0.0)``): a
      payload that does not match gets EPROTO naming the field;
    * an ``async def`` method may await (asyncio, flux futures) while the
      module keeps serving;
    * a generator (or async generator) method is a stream: each yielded
      value is one response to a FLUX_RPC_STREAMING request, then ENODATA;
      a ``TOPIC-cancel`` or the client going away closes it.
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


def reduce_handler(
    topic: str,
    combine: Union[Callable[[Any, Any], Any], str],
    timeout: Union[float, str] = 10.0,
    prefix: bool = True,
    allow_guest: bool = False,
) -> Callable[[_F], _F]:
    """Mark a method as this rank's part of a reduction over the tree of brokers.

    Load the module on every rank.  A request to *topic* sent to a rank
    (rank 0 for the whole instance) travels down the tree: each rank asks
    its children, calls the method as ``method(self, msg)`` (declared
    fields, ``async def``: as for :func:`request_handler`) for its own
    value, and folds its children's results into it with ``combine(a, b)``
    (a function such as ``operator.add`` or ``max``, or the name of a
    method of the module).  Each broker handles messages from its own
    children only.  The answer is ``{"value", "ranks", "missing",
    "errors"}`` (see :class:`Reduction`): a subtree that does not answer
    within *timeout* seconds (a number, or the name of an option), or has
    no such module, is reported there by rank instead of failing the
    request; so is a rank whose method raised.  ``await self.reduce(topic)``
    runs one from a handler.

    Ranks below the one asked wait less, so that each level's answer gets
    back in time (see :class:`flux._tree.Reducer`).  The request goes down
    on ``TOPIC-subtree`` with the caller's credentials, so on every rank
    ``msg.userid`` and ``msg.rolemask`` are the caller's, never the
    module's: a guest's reduction never runs with the owner's rights.
    Only the owner's requests reach *topic* and ``TOPIC-subtree`` unless
    *allow_guest*; a guest sending ``TOPIC-subtree`` to rank R gets what
    *topic* sent to R gives it (R's subtree, as itself).
    """
    _check_topic(topic, "reduce_handler")
    if not callable(combine) and not (isinstance(combine, str) and combine.isidentifier()):
        raise TypeError(f"@reduce_handler({topic!r}): combine must be a function of two values or the "
                        f"name of a method, not {combine!r}")
    if isinstance(timeout, str):
        if not timeout.isidentifier():
            raise TypeError(f"@reduce_handler({topic!r}): timeout must name an option, not {timeout!r}")
    elif not _is_seconds(timeout) or timeout == 0:
        raise TypeError(f"@reduce_handler({topic!r}): timeout must be a finite number of seconds > 0 "
                        f"or the name of an option, not {timeout!r}")
    spec = {
        "msgtype": _MSGTYPE_REQUEST,
        "topic": topic,
        "prefix": prefix,
        "allow_guest": allow_guest,
        "reduce": {"combine": combine, "timeout": timeout},
    }

    def decorator(func: _F) -> _F:
        _mark(func, spec, "reduce_handler")
        return func

    return decorator


def timer_handler(after: Union[float, str], repeat: Union[float, str] = 0.0) -> Callable[[_F], _F]:
    """Mark a method to be called as ``method(self)`` on a timer.

    The timer starts when the module is created: the method runs *after*
    seconds once the reactor runs, then every *repeat* seconds if *repeat*
    is positive.  Either may be the name of an option or attribute of the
    module, read when the module starts (``@timer_handler("interval",
    repeat="interval")``).  :meth:`BrokerModule.timer` gives the timer, to
    stop, start or re-arm it.  A coroutine method whose previous run has
    not finished skips a tick rather than overlap it.  Like the message handlers, an exception it raises is
    logged with its traceback and the module keeps running (unless
    :attr:`BrokerModule.stop_on_error`).  Timers made directly with
    ``self.handle.timer_watcher_create()`` keep flux-core's rule instead:
    an exception stops the reactor and :meth:`BrokerModule.run` raises
    OSError.
    """
    for value, what in ((after, "after"), (repeat, "repeat")):
        if isinstance(value, str):
            if not value.isidentifier():
                raise TypeError(f"@timer_handler: {what} must name an option or attribute, not {value!r}")
        elif not _is_seconds(value):
            raise TypeError(
                f"@timer_handler: {what} must be a finite number of seconds >= 0 or the name of "
                f"an option, not {value!r}"
            )

    def decorator(func: _F) -> _F:
        spec = {
            "msgtype": _TIMER,
            "topic": getattr(func, "__name__", "?"),
            "prefix": False,
            "after": after if isinstance(after, str) else float(after),
            "repeat": repeat if isinstance(repeat, str) else float(repeat),
        }
        _mark(func, spec, "timer_handler")
        return func

    return decorator


def _is_seconds(value: Any) -> bool:
    """True for what a timer takes: a finite number >= 0 (libev aborts the
    process on a NaN period, and libflux refuses a negative one)."""
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and math.isfinite(value) and value >= 0)


#: What a look-up gives for a name only the running module can resolve
#: (modprobe's check, which has a class and no instance).
_UNKNOWN: Any = object()


def _seconds(owner: str, value: Union[float, str], what: str, lookup: Callable[[str], Any],
             positive: bool = False) -> Optional[float]:
    """A timer's *after* or *repeat*, or a reduction's *timeout* (*positive*:
    more than 0): a number, or what ``lookup(value)`` gives for the option or
    attribute it names (*owner* says whose, in errors); None when the look-up
    cannot tell (_UNKNOWN)."""
    if not isinstance(value, str):
        return value
    seconds = lookup(value)
    if seconds is _UNKNOWN:
        return None
    if not _is_seconds(seconds) or (positive and seconds == 0):
        raise ValueError(
            f"{owner}: {what}={value!r} must name an option or attribute holding "
            f"a finite number of seconds {'>' if positive else '>='} 0, not {seconds!r}"
        )
    return float(seconds)


def _timer_periods(attr: str, spec: Dict[str, Any], lookup: Callable[[str], Any]) -> Tuple[Optional[float], ...]:
    """(after, repeat) of timer method *attr*."""
    return tuple(_seconds(f"timer {attr}", spec[what], what, lookup) for what in ("after", "repeat"))


def _reduction_timeout(attr: str, spec: Dict[str, Any], lookup: Callable[[str], Any]) -> Optional[float]:
    # A literal 0 is refused where it is written; an option's here.
    return _seconds(f"reduction {attr}", spec["reduce"]["timeout"], "timeout", lookup, positive=True)


def _combine_function(cls: type, topic: str, attr: str, spec: Dict[str, Any],
                      lookup: Callable[[str], Any]) -> Optional[Callable[[Any, Any], Any]]:
    """The combine function of reduction method *attr* (None when the look-up cannot tell)."""
    combine = spec["reduce"]["combine"]
    if isinstance(combine, str):
        combine = lookup(combine)
        if combine is _UNKNOWN:
            return None
        if not callable(combine):
            raise ValueError(f"@reduce_handler({topic!r}) on {attr}: combine={spec['reduce']['combine']!r} "
                             f"names no method of {cls.__qualname__}")
    if kind_of(combine) != PLAIN:
        raise ValueError(f"@reduce_handler({topic!r}) on {attr}: combine must be a plain function of two "
                         f"values, not {kind_of(combine)} {getattr(combine, '__name__', combine)!r}")
    return combine


def _handler_settings(cls: type, name: str, attr: str, spec: Dict[str, Any], method: Callable[..., Any],
                      lookup: Callable[[str], Any]) -> Dict[str, Any]:
    """What the load of module *name* derives from handler *attr* before it
    registers it: a timer's ``periods``, a request handler's payload
    ``schema``, a reduction's ``combine`` and ``timeout``.  *method* is the
    handler (bound, on the load; the class's function, for modprobe's
    check); ``lookup(name)`` gives the option or attribute a period, timeout
    or combine names.  The one place these rules live: the load and
    :func:`check_load` both call it.

    :raises ValueError: one line naming the handler and what it cannot use.
    """
    if spec["msgtype"] == _TIMER:
        return {"periods": _timer_periods(attr, spec, lookup)}
    if spec["msgtype"] == _MSGTYPE_EVENT:
        return {}
    try:
        settings: Dict[str, Any] = {"schema": schema_of(method, f"{cls.__qualname__}.{attr}")}
    except TypeError as exc:
        raise ValueError(str(exc)) from None
    if "reduce" in spec:
        topic = f"{name}.{spec['topic']}" if spec["prefix"] else spec["topic"]
        settings["combine"] = _combine_function(cls, topic, attr, spec, lookup)
        settings["timeout"] = _reduction_timeout(attr, spec, lookup)
    return settings


class _Timer:
    """A ``@timer_handler`` method's timer: flux-core's timer watcher, with a
    ``reset()`` that re-arms it from now even while it runs (flux-core's
    leaves a running timer due when it was) and refuses, with one line
    naming the timer, what would abort the module process."""

    __slots__ = ("_watcher", "_name", "_after", "_repeat")

    def __init__(self, watcher: Any, name: str, after: float, repeat: float) -> None:
        self._watcher = watcher
        self._name = name
        self._after = after
        self._repeat = repeat

    def start(self) -> Any:
        """Start the timer again.  As libev does, it resumes the time it had
        left when stopped, and a one-shot timer that already fired fires at
        once: :meth:`reset` re-arms it from now."""
        return self._watcher.start()

    def stop(self) -> Any:
        """Disarm the timer."""
        return self._watcher.stop()

    def reset(self, after: Optional[float] = None, repeat: Optional[float] = None) -> None:
        """Re-arm the timer from now, running or not: *after* seconds, then
        every *repeat* (each defaults to the value it has).  ValueError for
        a value that is not a finite number of seconds >= 0."""
        for what, value in (("after", after), ("repeat", repeat)):
            if value is not None and not _is_seconds(value):
                raise ValueError(
                    f"timer {self._name}: reset({what}={value!r}): a timer needs a finite number of seconds >= 0"
                )
        if after is not None:
            self._after = after
        if repeat is not None:
            self._repeat = repeat
        # libev takes a new setting only while the timer is stopped.
        self._watcher.stop()
        self._watcher.reset(self._after, self._repeat)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._watcher, name)


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
            if attr in _BASE_NAMES:
                raise TypeError(
                    f"{klass.__qualname__}.{attr}: a handler method named {attr!r} hides "
                    f"BrokerModule.{attr}, which the module needs; give the method another name"
                )
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

    What else a module has:

    * ``self.log.info(text)`` (and ``debug``... ``emerg``): the module's
      lines in ``flux dmesg``, written as given (:class:`BrokerLogger`);
    * options: ``interval = Option(float, 1.0, "seconds")`` on the class is
      set from ``flux module load mod.py interval=2`` (:class:`Option`);
    * :meth:`setup` and :meth:`teardown` around the reactor, and
      :func:`timer_handler` methods (:meth:`timer` to re-arm them);
    * ``module_stats`` (a dict, or a method returning one), added to the
      answer of ``NAME.stats-get`` with each handler's counters;
    * ``NAME.handlers``, answering what the module offers (its handlers,
      their payload fields and docstrings, its options; see :func:`describe`).

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
        cls._flux_options = options_of(cls)
        cls._flux_rank_sets = {attr: value for klass in reversed(cls.__mro__)
                               for attr, value in vars(klass).items() if isinstance(value, RankSets)}

    _flux_options: Dict[str, Option] = {}
    _flux_rank_sets: Dict[str, RankSets] = {}

    def __init__(self, h: Any, *args: str) -> None:
        self._h = h
        self._args: Tuple[str, ...] = tuple(args)
        self._name = module_name(h)
        self._watchers: List[Any] = []
        self._flux_timers: Dict[str, Any] = {}
        self._flux_reducers: Dict[str, Reducer] = {}
        self._flux_timer_periods: Dict[str, Tuple[float, float]] = {}
        self._stopped_with_error = False
        self._flux_place = TreePlace(h, int(h.get_rank()))
        arm_rpcs(h)
        self.log = BrokerLogger(h)
        try:
            declared = type(self)._flux_options
            if declared:
                # The instance configuration's [NAME] table, then the arguments.
                table = h.conf_get(self._name)
                self.__dict__["_flux_options"] = parse_options(declared, self._args, table, self._name)
            self._flux_dispatch = Dispatcher(h, self.log, self._handler_failed)
            self._register_handlers()
        except BaseException as exc:
            _startfail.report(h, _source_name(type(self)), exc)
            raise
        module_created(h, self)

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

    @property
    def rank(self) -> int:
        """The rank of the broker this module runs on."""
        return int(self._h.get_rank())

    @property
    def size(self) -> int:
        """The number of brokers in the instance."""
        return int(self._h.attr_get("size"))

    @functools.cached_property
    def children(self) -> Tuple[int, ...]:
        """The ranks of this broker's children in the tree of brokers (TBON),
        lowest first; empty on a leaf.  Asked of the broker
        (``overlay.topology``) on first use."""
        return self._flux_place.children

    @functools.cached_property
    def parent(self) -> Optional[int]:
        """The rank of this broker's parent in the tree (None on rank 0).
        Asked of the parent (its ``rank`` attribute) on first use."""
        return self._flux_place.parent

    async def reduce(self, topic: str, payload: Any = None, rank: int = 0, prefix: bool = True) -> Reduction:
        """Run the reduction of :func:`reduce_handler` *topic* over the subtree
        of *rank* (0: the whole instance) and return its :class:`Reduction`.

        *topic* is prefixed with the module name unless *prefix* is False, as
        in the decorator.  Await it from an ``async def`` handler.
        """
        full = f"{self._name}.{topic}" if prefix else topic
        size = self._flux_place.instance_size
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < size:
            # FLUX_NODEID_UPSTREAM would bounce between two brokers forever
            raise ValueError(f"reduce({full!r}, rank={rank!r}): not a rank of this instance (0 to {size - 1})")
        return Reduction.from_answer(await self._h.rpc(full, payload, nodeid=rank))

    def timer(self, name: str) -> Any:
        """The timer of the ``@timer_handler`` method *name*.

        It offers flux-core's timer watcher methods: ``stop()``,
        ``start()`` and ``reset(after=None, repeat=None)``, which re-arms it
        from now, even while it runs (flux-core's own ``reset()`` does not
        re-arm a running timer).  Its callback stays protected like the
        handlers.
        """
        try:
            return self._flux_timers[name]
        except KeyError:
            raise KeyError(f"{type(self).__qualname__} has no @timer_handler method {name!r}") from None

    def setup(self) -> Any:
        """Prepare the module; override it (plain or ``async def``).

        Runs after the handlers are registered and before the module
        reports itself running, so ``flux module load`` returns only after
        it.  If it raises, the load fails (OSError: its errno, ValueError:
        EINVAL).  An ``async def`` setup may await flux futures (RPCs to
        other services); these complete before the reactor runs.
        """

    def teardown(self) -> Any:
        """Release what :meth:`setup` took; override it (plain or ``async def``).

        Runs exactly once when the module stops after a successful setup,
        whatever the cause: :meth:`stop`, :meth:`stop_error`, ``flux module
        remove``, instance shutdown, or the reactor failing.  Streams still
        open have been ended.  If it raises, the traceback is logged and
        the original outcome stands.
        """

    def set_running(self) -> None:
        """Tell the broker the module is running, so ``flux module load`` returns.

        Call it before slow synchronous start-up work; otherwise the broker
        considers the module running when the reactor starts.  See
        flux_module_set_running(3).
        """
        self._h.module_set_running()

    def debug_test(self, flag: int, clear: bool = False) -> bool:
        """Return True if debug bit *flag* is set; clear it too if *clear*.

        Bits are set from outside with
        ``flux module debug --setbit N <module name>``.
        """
        return bool(self._h.module_debug_test(flag, clear))

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
            run_to_completion(self._lifecycle("setup"))
        except BaseException as exc:
            _startfail.report(self._h, _source_name(type(self)), exc)
            raise
        try:
            rc = self._flux_dispatch.run_reactor()
        except OSError:
            raise
        except Exception as exc:
            self._flux_dispatch.failed("reactor callback", exc, stop=False)
            raise OSError(errno.ECONNRESET, f"reactor exited with error: {exception_text(exc)}") from exc
        finally:
            try:
                run_to_completion(self._lifecycle("teardown"))
            except BaseException as exc:  # noqa: BLE001 - logged; the outcome stands
                self._flux_dispatch.failed("teardown", exc, stop=False)
            for attr in type(self)._flux_rank_sets:
                try:
                    self.__dict__[attr].stop()
                except Exception as exc:  # noqa: BLE001 - logged; the module stops anyway
                    self._flux_dispatch.failed("rank sets stop", exc, stop=False)
        if rc < 0 or self._stopped_with_error:
            raise OSError(errno.ECONNRESET, "reactor exited with error")

    def _register_handlers(self) -> None:
        h = self._h
        dispatch = self._flux_dispatch
        streams: List[Tuple[str, Optional[int]]] = []
        # The library's standard methods come first: a handler of the
        # module for the same topic replaces them.
        name, everyone = self._name, _ROLE_OWNER | _ROLE_USER
        guest_topics: Set[str] = set()  # what stats-get shows a guest: filled below
        self._watch(_MSGTYPE_REQUEST, f"{name}.stats-get",
                    dispatch.stats_get_callback(self._module_stats, guest_topics), everyone)
        self._watch(_MSGTYPE_REQUEST, f"{name}.stats-clear", dispatch.stats_clear_callback(), None)
        self._watch(_MSGTYPE_EVENT, f"{name}.stats-clear", dispatch.stats_clear_callback(), None)
        self._watch(_MSGTYPE_REQUEST, f"{name}.handlers", self._handlers_callback, everyone)
        if type(self)._flux_options:  # else libflux's own config-reload, as flux-core has it
            for method in ("config-reload", "config-update"):
                self._watch(_MSGTYPE_REQUEST, f"{name}.{method}", self._config_reload_callback, None)
        rank_sets = self._bind_rank_sets()
        for attr, spec in type(self)._flux_handlers.items():
            method = getattr(self, attr)
            kind = kind_of(method)
            settings = _handler_settings(type(self), self._name, attr, spec, method, self._lookup)
            if spec["msgtype"] == _TIMER:
                after, repeat = self._flux_timer_periods[attr] = settings["periods"]
                timer = h.timer_watcher_create(after, dispatch.timer_callback(attr, method, kind), repeat=repeat)
                timer.start()
                self._watchers.append(timer)
                self._flux_timers[attr] = _Timer(timer, attr, after, repeat)
                continue
            topic = f"{self._name}.{spec['topic']}" if spec["prefix"] else spec["topic"]
            rolemask = _ROLE_OWNER | _ROLE_USER if spec.get("allow_guest") else None
            if rolemask is not None and spec["msgtype"] == _MSGTYPE_REQUEST:
                guest_topics.add(topic)
            if spec["msgtype"] == _MSGTYPE_EVENT:
                h.event_subscribe(topic)
                callback = dispatch.event_callback(method, kind)
            else:
                schema = settings["schema"]
                if "reduce" in spec:
                    reducer = self._flux_reducers[attr] = Reducer(
                        h, self._flux_place, topic, method, settings["combine"], settings["timeout"],
                        dispatch.failed)
                    forward = forward_topic(topic)
                    # Forwarded with the caller's credentials: it admits whom the topic admits.
                    self._watch(_MSGTYPE_REQUEST, forward,
                                dispatch.request_callback(forward, reducer.forwarded, schema, reducer.kind), rolemask)
                    method, kind = reducer.entry, reducer.kind
                callback = dispatch.request_callback(topic, method, schema, kind)
                if is_stream(kind):
                    streams.append((topic, rolemask))
            self._watch(spec["msgtype"], topic, callback, rolemask)
        for topic, rolemask in streams:
            self._watch(_MSGTYPE_REQUEST, f"{topic}-cancel", dispatch.cancel_callback(topic), rolemask)
        if dispatch.has_tasks or rank_sets:
            self._watch(_MSGTYPE_REQUEST, f"{self._name}.disconnect", self._disconnect_callback(rank_sets),
                        _ROLE_OWNER | _ROLE_USER)
        for sets in rank_sets:
            sets.start()

    def _bind_rank_sets(self) -> List[Any]:
        """Give this instance its own :class:`RankSets` and watch their updates."""
        bound = []
        for attr, declared in type(self)._flux_rank_sets.items():
            sets = self.__dict__[attr] = declared.bind(self._h, self._name, self._flux_place,
                                                       self._flux_dispatch.failed)
            for topic, method in ((update_topic(self._name, attr), sets.update),
                                  (resync_topic(self._name, attr), sets.resync)):
                self._watch(_MSGTYPE_REQUEST, topic,
                            self._flux_dispatch.request_callback(topic, method, None, PLAIN), None)
            bound.append(sets)
        return bound

    def _reduction_timeout(self, attr: str) -> float:
        """The timeout of reduction method *attr*, options read now."""
        return _reduction_timeout(attr, type(self)._flux_handlers[attr], self._lookup)  # type: ignore[return-value]

    def _lookup(self, name: str) -> Any:
        """The option or attribute a timer period, a reduction's timeout or its
        combine names (None if there is none)."""
        return getattr(self, name, None)

    def options_changed(self, changed: Dict[str, Tuple[Any, Any]]) -> None:
        """Called when ``flux config reload`` changed options of this module:
        *changed* maps each option's name to ``(old, new)``, and the options
        already hold the new values.  Raise (a :class:`RequestError`, or any
        exception) to refuse the change: every option gets its old value
        back, and the reload fails with the exception's text.  Timers whose
        period names a changed option are re-armed after this returns."""

    def _config_reload_callback(self, h: Any, watcher: Any, msg: Any, arg: Any) -> None:
        """``NAME.config-reload``: the instance configuration changed (its
        whole object is the payload).  All the options change, or none."""
        try:
            config = json.loads(msg.payload_str or "")
            if not isinstance(config, dict):
                raise ValueError
        except ValueError:
            h.respond_error(msg, errno.EPROTO, f"Failed to parse {msg.topic} request")
            return
        old = self.__dict__["_flux_options"]
        try:
            new = parse_options(type(self)._flux_options, self._args, config.get(self._name), self._name)
        except OptionError as exc:
            self._refuse_config(msg, errno.EINVAL, str(exc))
            return
        changed = {name: (old[name], value) for name, value in new.items() if value != old[name]}
        if changed:
            self.__dict__["_flux_options"] = new
            try:
                timers = {attr: self._timer_periods(attr) for attr in self._flux_timers}
                timeouts = {attr: self._reduction_timeout(attr) for attr in self._flux_reducers}
            except ValueError as exc:  # a period or timeout the new values make impossible
                self.__dict__["_flux_options"] = old
                self._refuse_config(msg, errno.EINVAL, str(exc))
                return
            try:
                self.options_changed(changed)
            except Exception as exc:  # noqa: BLE001 - the reload is refused with its text
                self.__dict__["_flux_options"] = old
                code = exc.errno if isinstance(exc, RequestError) and exc.errno else errno.EINVAL
                self._refuse_config(msg, code, f"{self._name}: {exception_text(exc)}")
                return
            for attr, periods in timers.items():
                if periods != self._flux_timer_periods.get(attr):
                    self._flux_timers[attr].reset(*periods)
            self._flux_timer_periods.update(timers)
            for attr, seconds in timeouts.items():
                self._flux_reducers[attr].timeout = seconds
            self.log.info(f"options changed by the configuration: "
                          + ", ".join(f"{name}={value!r}" for name, (_, value) in changed.items()))
        h.respond(msg)

    def _refuse_config(self, msg: Any, code: int, text: str) -> None:
        """Refuse a configuration: one line in this rank's log at LOG_ERR (a
        follower's refusal reaches no one else: flux-core's reload still
        succeeds), and an answer that fits what flux-core's config service
        passes on ("error updating NAME: TEXT" in a flux_error_t)."""
        self.log.error(f"configuration refused, keeping the old values: {excerpt(text)}")
        self._h.respond_error(msg, code, fit(text, FLUX_ERROR_TEXT - len(f"error updating {self._name}: ")))

    def _timer_periods(self, attr: str) -> Tuple[float, float]:
        """(after, repeat) of timer method *attr*, options read now."""
        return _timer_periods(attr, type(self)._flux_handlers[attr], self._lookup)  # type: ignore[return-value]

    def _disconnect_callback(self, rank_sets: List[Any]) -> Callable[..., None]:
        """``NAME.disconnect``: end the departed client's tasks, and leave the
        rank sets it stood for."""
        dispatch = self._flux_dispatch
        tasks = dispatch.disconnect_callback() if dispatch.has_tasks else None

        def callback(h: Any, watcher: Any, msg: Any, arg: Any) -> None:
            if tasks is not None:
                tasks(h, watcher, msg, arg)
            for sets in rank_sets:
                try:
                    sets.disconnected(msg)
                except Exception as exc:  # noqa: BLE001 - logged, module survives
                    dispatch.failed(f"request {msg.topic}", exc)

        return callback

    def _watch(self, msgtype: int, topic: str, callback: Callable[..., None], rolemask: Optional[int]) -> None:
        watcher = watch(self._h, callback, msgtype, topic, rolemask)
        watcher.start()
        self._watchers.append(watcher)

    def _module_stats(self) -> Dict[str, Any]:
        """What the module adds to ``stats-get``: its ``module_stats`` (a dict,
        or a method returning one)."""
        extra = getattr(self, "module_stats", None)
        if callable(extra):
            extra = extra()
        return dict(extra) if extra else {}

    def _handlers_callback(self, h: Any, watcher: Any, msg: Any, arg: Any) -> None:
        guest = not msg.rolemask & _ROLE_OWNER
        h.respond(msg, describe(type(self), self._name, guest=guest))

    def _lifecycle(self, hook: str) -> Any:
        """Call ``setup``/``teardown`` unless a module written for flux-core
        uses that name for a handler."""
        method = getattr(self, hook)
        if getattr(method, "_flux_handler", None) is not None:
            return None
        return method()

    def _handler_failed(self) -> None:
        if self.stop_on_error:
            self.stop_error()


# The names flux-core's BrokerModule already had, which the module needs;
# the names this library added (rank, size, timer, setup...) stay free for
# handlers written for flux-core, which may well use them.
_BASE_NAMES = frozenset(["run", "stop", "stop_error", "set_running", "debug_test", "handle", "name", "args"])


def describe(cls: type, name: str, guest: bool = False) -> Dict[str, Any]:
    """What a :class:`BrokerModule` subclass offers, as ``NAME.handlers`` answers.

    Each handler with its topic, kind (request, stream, event, timer), who
    may call it (owner or guest; None for a timer), its declared payload fields and the first
    line of its docstring; and the module's options.  With *guest*, only
    what a guest may call.
    """
    handlers = []
    for attr, spec in cls._flux_handlers.items():  # type: ignore[attr-defined]
        method = getattr(cls, attr)
        access = "guest" if spec.get("allow_guest") else "owner"
        if guest and (access != "guest" or spec["msgtype"] != _MSGTYPE_REQUEST):
            continue
        if spec["msgtype"] == _TIMER:
            kind, topic, fields, access = "timer", attr, None, None
        else:
            topic = f"{name}.{spec['topic']}" if spec["prefix"] else spec["topic"]
            if spec["msgtype"] == _MSGTYPE_EVENT:
                kind, fields = "event", None
            else:
                kind = "reduction" if "reduce" in spec else "stream" if is_stream(kind_of(method)) else "request"
                schema = schema_of(method, f"{cls.__qualname__}.{attr}")
                fields = None if schema is None else [
                    {"name": field, "type": expected, "required": required}
                    for field, expected, required in schema.fields
                ]
        doc = (inspect.getdoc(method) or "").strip().splitlines()
        handlers.append({"topic": topic, "kind": kind, "access": access, "fields": fields,
                         "doc": doc[0] if doc else ""})
    options = [] if guest else option_table(cls._flux_options)  # type: ignore[attr-defined]
    return {"name": name, "handlers": handlers, "options": options}


def check_load(cls: type, name: str, args: Sequence[str]) -> None:
    """Refuse what loading *cls* as module *name* with the arguments *args*
    would refuse before :meth:`BrokerModule.setup` runs, without a broker
    (``flux-brokermod modprobe`` calls it): the arguments, and each
    handler's timer periods, reduction timeout and combine function, and
    payload declaration, by the load's own rules.

    An option holds the value *args* give it, else its default: the
    instance configuration's table, which may set it at load, is not read.
    A name that only an instance can resolve (a property, or any
    non-option attribute of a class with its own ``__init__`` or
    ``__getattr__``) is left to the load.

    :raises OptionError: for an argument; ValueError: for a handler (one line each).
    """
    declared: Dict[str, Option] = cls._flux_options  # type: ignore[attr-defined]
    values = parse_options(declared, args) if declared else {}
    own = cls.__mro__[:cls.__mro__.index(BrokerModule)]
    dynamic = any(hook in vars(klass) for klass in own for hook in ("__init__", "__getattr__", "__getattribute__"))

    def lookup(attr: str) -> Any:
        if attr in declared:
            return values[attr]
        if dynamic:
            return _UNKNOWN
        try:
            found = inspect.getattr_static(cls, attr)
        except AttributeError:
            return None  # as the load's getattr(module, attr, None)
        if inspect.isfunction(found) or isinstance(found, (staticmethod, classmethod)):
            return getattr(cls, attr)
        if hasattr(type(found), "__get__"):  # a property...: computed on the instance
            return _UNKNOWN
        return found

    for attr, spec in cls._flux_handlers.items():  # type: ignore[attr-defined]
        _handler_settings(cls, name, attr, spec, getattr(cls, attr), lookup)


def cancel_stream(h: Any, future: Any, topic: str, nodeid: Optional[int] = None) -> None:
    """End the stream that *future* (``h.rpc(topic, ..., flags=FLUX_RPC_STREAMING)``)
    receives, as flux-core's own clients do: send ``TOPIC-cancel`` with
    ``{"matchtag": future.pimpl.get_matchtag()}`` and FLUX_RPC_NORESPONSE (no
    answer comes); the stream then ends with ENODATA.  Give the stream's
    *nodeid* if it was sent to a rank.  The same on both brokers; a client
    without this library writes that one ``h.rpc()`` call itself.
    """
    kwargs = {} if nodeid is None else {"nodeid": nodeid}
    h.rpc(f"{topic}-cancel", {"matchtag": future.pimpl.get_matchtag()}, flags=_RPC_NORESPONSE, **kwargs)


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
    subclasses = module_classes(mod)
    if len(subclasses) == 1:
        return entry_point_of(subclasses[0])
    if subclasses:
        names = ", ".join(cls.__name__ for cls in subclasses)
        raise ValueError(
            f"{_file_of(mod)}: several BrokerModule subclasses ({names}) "
            f"and no mod_main(); define mod_main() to choose one"
        )
    raise ValueError(f"{_file_of(mod)}: no mod_main() and no BrokerModule subclass")


def module_classes(mod: Any) -> List[type]:
    """The :class:`BrokerModule` subclasses defined in module file *mod* itself
    (subclasses merely imported into it do not count)."""
    own = getattr(mod, "__name__", None)
    return [
        value
        for value in vars(mod).values()
        if isinstance(value, type)
        and issubclass(value, BrokerModule)
        and value is not BrokerModule
        and value.__module__ == own
    ]


def entry_point_of(cls: type) -> Callable[..., Any]:
    """The ``mod_main(h, *args)`` of a :class:`BrokerModule` subclass: ``cls(h, *args).run()``."""

    def mod_main(h: Any, *args: str) -> None:
        cls(h, *args).run()

    mod_main.__qualname__ = f"{cls.__qualname__}.<entry point>"
    return mod_main


def _source_name(cls: type) -> str:
    """The basename of the file that defines *cls*, as the loaders name it
    when it fails to start (flux-core's loader keeps it out of sys.modules)."""
    for value in vars(cls).values():
        code = getattr(value, "__code__", None)
        if code is not None:
            return os.path.basename(code.co_filename)
    mod = sys.modules.get(cls.__module__)
    return os.path.basename(getattr(mod, "__file__", None) or f"{cls.__module__}.py")


def _file_of(mod: Any) -> str:
    return str(getattr(mod, "__file__", None) or getattr(mod, "__name__", "module"))
