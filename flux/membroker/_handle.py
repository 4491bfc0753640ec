"""The handle a module (or a test) gets from the in-memory broker.

:class:`Handle` offers the part of ``flux.Flux`` that broker modules use,
with the same names, arguments and results.  Anything else raises
NotImplementedError naming the method, so a module that needs more fails
loudly instead of misbehaving.
"""

import errno
import fnmatch
import math
import os
import re
import select
import traceback
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Tuple

from flux._json import loads
from flux.membroker._surface import libflux_function, missing, register_stand_in
from flux.membroker._message import (
    FLUX_MATCHTAG_NONE,
    FLUX_POLLIN,
    FLUX_POLLOUT,
    FLUX_MSGTYPE_ANY,
    FLUX_MSGTYPE_EVENT,
    FLUX_MSGTYPE_REQUEST,
    FLUX_MSGTYPE_RESPONSE,
    FLUX_NODEID_ANY,
    FLUX_ROLE_OWNER,
    FLUX_RPC_NORESPONSE,
    FLUX_RPC_STREAMING,
    Message,
    encode_payload,
    from_flux_core,
)
from flux.membroker._matchtags import MatchtagPool


if TYPE_CHECKING:  # pragma: no cover
    from flux.membroker._broker import BrokerLink, LoadedModule


class Future:
    """The result of :meth:`Handle.rpc`, like flux-core's ``flux.rpc.RPC``.

    :meth:`get` waits for the response and returns its payload decoded as
    JSON (None when it has none), or raises OSError for an error response.
    A streaming request gets several responses: :meth:`reset` moves on to
    the next one.  :meth:`then` calls ``callback(future, *args)`` in the
    caller's reactor when a response is there.
    """


    def __getattr__(self, name: str) -> Any:
        raise missing('RPC', self, name)
    def __init__(self, handle: "Handle", topic: str) -> None:
        self._handle = handle
        self._topic = topic
        self._responses: Deque[Message] = deque()
        self._callback: Optional[Callable[..., Any]] = None
        self._callback_args: tuple = ()
        self._scheduled = False
        self._matchtag = FLUX_MATCHTAG_NONE
        # libflux installs the response handler at first use (then, get,
        # wait_for); a response a module's reactor gets before that is lost.
        self._initialized = False
        self._lost = False

    def _init(self) -> None:
        if not self._initialized:
            self._initialized = True
            if self._lost:
                self._handle._link.response_lost(self._handle, self._topic)

    def _brokermod_arm(self) -> None:
        """Install the response handler now (see flux._libflux.arm_rpcs)."""
        self._init()

    def __del__(self) -> None:
        # flux_future_destroy(): an answered RPC gives its matchtag back.
        tag = self.__dict__.get("_matchtag")
        if tag:
            self._handle._matchtags.release(tag)

    @property
    def pimpl(self) -> "_RPCInner":
        """What flux-core's ``RPC.pimpl`` offers here: ``get_matchtag()``."""
        return _RPCInner(self)

    def is_ready(self) -> bool:
        """True when a response is there to get."""
        return bool(self._responses)

    def wait_for(self, timeout: float = -1.0) -> "Future":
        """Wait until a response is there (timeout in virtual seconds, -1: none)."""
        self._init()
        self._handle._sync_wait(self.is_ready, self._topic, timeout)
        return self

    def get_str(self) -> Optional[str]:
        """Wait for the response; return its payload text (None if none)."""
        if not self._responses:  # wait_for(), minus a frame per request
            self._init()
            self._handle._sync_wait(self.is_ready, self._topic)
        msg = self._responses[0]
        if msg._errnum:
            raise OSError(msg._errnum, os.strerror(msg._errnum) if msg._errstr is None else msg._errstr)
        return msg.payload_str

    def get(self) -> Any:
        """Wait for the response; return its payload decoded as JSON."""
        text = self.get_str()
        return None if text is None else loads(text)

    def reset(self) -> None:
        """Forget the current response, to wait for the next one (streaming)."""
        if self._responses:
            self._responses.popleft()
        if self._responses and self._callback is not None:
            self._schedule_callback()

    def then(self, callback: Callable[..., Any], *args: Any, timeout: float = -1.0) -> "Future":
        """Call ``callback(future, *args)`` when a response is there."""
        if callback is None:
            raise ValueError("Callback cannot be None")
        self._init()
        self._callback = callback
        self._callback_args = args
        if self._responses:
            self._schedule_callback()
        return self

    def _fulfill(self, msg: Message) -> None:
        self._responses.append(msg)
        if len(self._responses) == 1 and self._callback is not None:
            self._schedule_callback()

    def _schedule_callback(self) -> None:
        if self._scheduled:
            return
        self._scheduled = True

        def run() -> None:
            self._scheduled = False
            if self._responses and self._callback is not None:
                self._handle._run_callback(self._callback, self, *self._callback_args)

        self._handle._post(run)


class _RPCInner:
    """flux-core's ``RPC.pimpl`` (its libflux wrapper), as far as the in-memory
    broker implements it: ``get_matchtag()``, which flux-core's own clients
    (``flux.abc.JournalConsumer``) use to cancel a stream."""

    __slots__ = ("_future",)

    def __init__(self, future: Future) -> None:
        self._future = future

    def get_matchtag(self) -> int:
        """flux_rpc_get_matchtag(): the matchtag of this RPC (0 if none)."""
        return self._future._matchtag

    def __getattr__(self, name: str) -> Any:
        raise NotImplementedError(
            f"RPC.pimpl.{name} of flux-core is not available on the in-memory broker "
            f"(flux.membroker), which offers get_matchtag() only"
        )


class MessageWatcher:
    """Calls ``callback(handle, watcher, msg, args)`` for matching messages."""


    def __getattr__(self, name: str) -> Any:
        raise missing('MessageWatcher', self, name)
    def __init__(
        self,
        flux_handle: "Handle",
        type_mask: int,
        callback: Callable[..., Any],
        topic_glob: Optional[str] = "*",
        match_tag: int = FLUX_MATCHTAG_NONE,
        rolemask: Optional[int] = None,
        args: Any = None,
    ) -> None:
        if topic_glob is not None and not isinstance(topic_glob, (str, bytes)):
            raise TypeError(errno.EINVAL, f"Topic must be a string, not {type(topic_glob)}")
        if isinstance(topic_glob, bytes):
            topic_glob = topic_glob.decode()
        handle = self.flux_handle = flux_handle
        self.callback = callback
        self._type_mask = type_mask
        self._topic_glob = topic_glob or "*"
        self.args = args
        self._rolemask = FLUX_ROLE_OWNER | (rolemask or 0)
        self._running = False
        self._exact = _GLOB_CHARS.search(self._topic_glob) is None
        self._exceptions_ignored = False  # see Handle._brokermod_watch
        handle._add_watcher(self)

    def _matches(self, msg: Message) -> bool:
        """True if *msg* has a type and topic this watcher takes."""
        if not msg.type & self._type_mask:
            return False
        if self._exact:
            return msg.topic == self._topic_glob
        return fnmatch.fnmatchcase(msg.topic, self._topic_glob)

    def start(self) -> "MessageWatcher":
        """Start taking messages."""
        self._running = True
        return self

    def stop(self) -> "MessageWatcher":
        """Stop taking messages."""
        self._running = False
        return self

    def destroy(self) -> None:
        """Stop and forget this watcher."""
        self._running = False
        self.flux_handle._remove_watcher(self)

    def ref(self) -> "MessageWatcher":
        """Let this watcher keep the reactor running (the default)."""
        return self

    def unref(self) -> "MessageWatcher":
        """Do not let this watcher alone keep the reactor running."""
        return self

    def __enter__(self) -> "MessageWatcher":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.destroy()


class TimerWatcher:
    """Calls ``callback(handle, watcher, revents, args)`` on the broker's clock.

    It keeps libev's rules, as flux-core's timer watcher does on a real
    broker (measured on flux-core 0.88, ``tests/test_timers.py``):
    ``start()`` resumes the time left, and ``reset()`` re-arms only a timer
    that is not running.
    """

    def __getattr__(self, name: str) -> Any:
        raise missing('TimerWatcher', self, name)

    def __init__(
        self,
        handle: "Handle",
        after: float,
        callback: Callable[..., Any],
        repeat: float,
        args: Any,
    ) -> None:
        if after < 0 or repeat < 0:
            raise OSError(errno.EINVAL, "timer after/repeat must not be negative")
        _refuse_what_libev_aborts_on(after, repeat)
        self.flux_handle = handle
        self.callback = callback
        # As flux-core's: the values given at creation, which reset() falls
        # back on (reset() does not change them).
        self.after = float(after)
        self.repeat = float(repeat)
        self.args = args
        # libev's own fields: the time a stopped timer has left (start()
        # resumes it) and the period.
        self._left = self.after
        self._period = self.repeat
        # Set by reset() on a running timer: libev's ev_timer_set() wrote a
        # relative time where a running timer keeps its absolute due time.
        # The due time armed stays; once it fires, a repeating timer falls
        # due again at once (that time is long past), then every period.
        self._clobbered = False

    def start(self) -> "TimerWatcher":
        """Arm the timer for the time it has left, as libev does (measured on
        flux-core 0.88): *after* seconds for a new or reset timer, what was
        left when it was stopped, and none (it fires at once) for a one-shot
        timer that already fired.  Starting an armed timer changes nothing.
        """
        clock = self.flux_handle._link.clock
        if not clock.is_armed(self):
            clock.arm(self, max(0.0, self._left))
        return self

    def stop(self) -> "TimerWatcher":
        """Disarm the timer, keeping the time it has left."""
        clock = self.flux_handle._link.clock
        left = clock.left(self)
        if left is not None:
            # A clobbered due time is long past: started again, the timer
            # fires at once, and is still clobbered (measured).
            self._left = 0.0 if self._clobbered else left
            clock.disarm(self)
        return self

    def reset(self, after: Optional[float] = None, repeat: Optional[float] = None) -> None:
        """Set the timer to *after* seconds, then every *repeat* (each
        defaulting to the value given at creation), and start it, as
        flux-core's does.  As there, this re-arms a stopped timer only: a
        running one keeps the time it was due at (libev ignores a new
        setting of an active timer), and its next period comes at once.
        ``stop()`` first to re-arm a running timer from now."""
        after = self.after if after is None else float(after)
        repeat = self.repeat if repeat is None else float(repeat)
        _refuse_what_libev_aborts_on(after, repeat)
        self._period = repeat
        if self.flux_handle._link.clock.is_armed(self):
            self._clobbered = True
            return
        self._left, self._clobbered = after, False
        self.start()

    def destroy(self) -> None:
        """Disarm and forget the timer."""
        self.stop()

    def ref(self) -> "TimerWatcher":
        """Let this timer keep the reactor running (the default)."""
        return self

    def unref(self) -> "TimerWatcher":
        """Do not let this timer alone keep the reactor running."""
        return self

    def _fire(self) -> None:
        clock = self.flux_handle._link.clock
        self._left = 0.0  # a one-shot timer started again fires at once
        if self._period > 0 and not clock.is_armed(self):
            clock.arm(self, 0.0 if self._clobbered else self._period)
        self._clobbered = False
        self.flux_handle._run_callback(self.callback, self.flux_handle, self, 0, self.args)

    def __enter__(self) -> "TimerWatcher":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.destroy()


def _refuse_what_libev_aborts_on(after: float, repeat: float) -> None:
    """A NaN timeout, or a negative repeat given to reset() (which libflux
    does not check), makes libev's ev_timer_start() abort the module process."""
    if math.isnan(after) or math.isnan(repeat) or repeat < 0:
        raise ValueError(
            f"timer after={after!r} repeat={repeat!r}: libev aborts the module process on a NaN "
            f"timeout or a negative repeat (a real module dies here)"
        )


_LOOP_KINDS = {"prepare": "PrepareWatcher", "check": "CheckWatcher", "idle": "IdleWatcher", "fd": "FDWatcher",
               "signal": "IdleWatcher"}


class LoopWatcher:
    """A prepare, check or idle watcher: ``callback(handle, watcher, revents, args)``.

    The in-memory reactor calls the prepare and check callbacks of started
    watchers once per iteration, before and after it waits for work; while
    an idle watcher is started, it does not wait.
    """


    def __getattr__(self, name: str) -> Any:
        raise missing(_LOOP_KINDS[self.__dict__.get("_kind", "idle")], self, name)
    def __init__(self, handle: "Handle", kind: str, callback: Optional[Callable[..., Any]], args: Any) -> None:
        self.flux_handle = handle
        self._kind = kind
        self.callback = callback
        self.args = args
        self._running = False

    def start(self) -> "LoopWatcher":
        """Start the watcher."""
        if not self._running:
            self._running = True
            self.flux_handle._loop_watchers.append(self)
        return self

    def stop(self) -> "LoopWatcher":
        """Stop the watcher."""
        if self._running:
            self._running = False
            self.flux_handle._loop_watchers.remove(self)
        return self

    def ref(self) -> "LoopWatcher":
        """Let this watcher keep the reactor running (the default)."""
        return self

    def unref(self) -> "LoopWatcher":
        """Do not let this watcher alone keep the reactor running."""
        return self

    def destroy(self) -> None:
        """Stop and forget the watcher."""
        self.stop()

    def __enter__(self) -> "LoopWatcher":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.destroy()


class FDWatcher(LoopWatcher):
    """Calls ``callback(handle, watcher, fd, revents, args)`` when *fd* is ready.

    The in-memory reactor polls the descriptor (without waiting) once per
    iteration: it never waits for real I/O, so that time stays virtual.
    """

    def __init__(self, handle: "Handle", fd: int, events: int, callback: Callable[..., Any], args: Any) -> None:
        super().__init__(handle, "fd", callback, args)
        self.fd_int = fd
        self.events = events


class HandleInbox:
    """What the broker calls on a :class:`Handle`: the one interface from the
    broker to handles (kept off the handle itself, whose public names are
    flux-core's)."""

    def __init__(self, handle: "Handle") -> None:
        self._handle = handle

    @property
    def rank(self) -> int:
        """The rank of the broker the handle is connected to."""
        return self._handle._rank

    @property
    def record(self) -> Optional["LoadedModule"]:
        """The module the handle belongs to (None for a client)."""
        return self._handle._record

    @property
    def subscriptions(self) -> List[str]:
        """The event topic prefixes the handle subscribed to."""
        return self._handle._subscriptions

    def deliver(self, msg: Message) -> None:
        """Hand request or event *msg* to the handle's watchers."""
        self._handle._dispatch(msg)

    def receive_response(self, msg: Message) -> None:
        """Fulfil the future waiting for response *msg*."""
        self._handle._receive_response(msg)

    def watched_fds(self) -> List[Tuple[int, int]]:
        """``(fd, FLUX_POLL* events)`` of the handle's started fd watchers."""
        return [(w.fd_int, w.events) for w in self._handle._loop_watchers if w._kind == "fd" and w._running]

    def wake(self) -> None:
        """Make the handle's reactor go round once (it polls its fds then)."""
        self._handle._post(_nothing)


class Handle:
    """A connection to the in-memory broker, offering ``flux.Flux`` methods.

    Modules get one as ``h``; tests get one from
    :meth:`~flux.membroker.Broker.connect`, with the credentials they ask
    for (for example a guest's).
    """

    def __init__(
        self,
        link: "BrokerLink",
        userid: int,
        rolemask: int,
        record: Optional["LoadedModule"] = None,
        rank: Optional[int] = None,
    ) -> None:
        self._link = link
        self._userid = userid
        self._rolemask = rolemask
        self._record = record
        # The rank of the broker this handle is connected to.
        self._rank = record.rank if record is not None else (link.default_rank if rank is None else rank)
        #: What the broker calls on this handle (see HandleInbox).
        self._inbox = HandleInbox(self)
        # The identity a real broker's route (a uuid) gives the connection.
        self._route = f"{id(self) & 0xFFFFFFFF:08x}"
        self._conf_cache: Optional[Dict[str, Any]] = None  # conf_get()'s, as flux-core's handle keeps it
        self._matchtags = MatchtagPool()
        self._sync_waits = 0  # synchronous get()s in progress on this handle
        self._requeued: List[Message] = []  # responses a synchronous get() put back
        self._methods: Dict[str, List[MessageWatcher]] = {}
        self._handlers: List[MessageWatcher] = []
        self._subscriptions: List[str] = []
        self._stop: Optional[int] = None
        self._exception: Optional[BaseException] = None
        self._loop_watchers: List[LoopWatcher] = []
        self._services_used: List[str] = []
        self._closed = False
        self._counters = {
            "tx": {"request": 0, "response": 0, "event": 0, "control": 0},
            "rx": {"request": 0, "response": 0, "event": 0, "control": 0},
        }
        self._tx = self._counters["tx"]
        self._rx = self._counters["rx"]

    # Messages out

    def rpc(
        self,
        topic: str,
        payload: Any = None,
        nodeid: int = FLUX_NODEID_ANY,
        flags: int = 0,
    ) -> Future:
        """Send a request; return a :class:`Future` for its response(s)."""
        if type(topic) is not str:  # per request: skip the call for the usual str
            topic = _topic(topic)
        return self._request(topic, encode_payload(payload), nodeid, flags, self._userid, self._rolemask)

    def _brokermod_rpc_on_behalf(
        self, topic: str, payload: Optional[str], nodeid: int, userid: int, rolemask: int
    ) -> Future:
        """See flux._libflux.rpc_on_behalf: the broker keeps an owner's
        credentials on a request as set, and stamps a guest's with its own."""
        if not self._rolemask & FLUX_ROLE_OWNER:
            userid, rolemask = self._userid, self._rolemask
        data = None if payload is None else payload.encode("utf-8", "surrogateescape")
        return self._request(topic, data, nodeid, 0, userid, rolemask)

    def _request(self, topic: str, payload: Optional[bytes], nodeid: int, flags: int,
                 userid: int, rolemask: int) -> Future:
        msg = Message(FLUX_MSGTYPE_REQUEST, topic, payload, userid, rolemask, flags, FLUX_MATCHTAG_NONE, nodeid)
        future = Future(self, topic)
        if self._record is None:
            service = topic.split(".", 1)[0]
            if service not in self._services_used:
                self._services_used.append(service)
        if not flags & FLUX_RPC_NORESPONSE:
            msg._matchtag = future._matchtag = self._matchtags.alloc(future)  # flux_rpc_get_matchtag()
        msg._sender = self
        self._tx["request"] += 1
        self._link.send_request(msg)
        return future

    def respond(self, message: Message, payload: Any = None) -> None:
        """Answer request *message* with *payload* (dict as JSON, str raw, bytes as is)."""
        self._respond(message, encode_payload(payload), 0, None)

    @libflux_function
    def respond_error(self, message: Message, errnum: int, errstr: Any) -> None:
        """Answer request *message* with error *errnum* and optional text."""
        if not errnum:
            errnum = errno.EINVAL  # as libflux: the caller gets EINVAL with the text
        if isinstance(errstr, bytes):
            errstr = errstr.decode("utf-8", errors="replace")
        self._respond(message, None, int(errnum), errstr)

    def _respond(self, request: Message, payload: Optional[bytes], errnum: int, errstr: Optional[str]) -> None:
        if not isinstance(request, Message) or request.type != FLUX_MSGTYPE_REQUEST:
            raise OSError(errno.EINVAL, f"cannot respond to {request!r}: not a request")
        if request._flags & FLUX_RPC_NORESPONSE:
            return
        response = Message(
            FLUX_MSGTYPE_RESPONSE, request.topic, payload, self._userid, self._rolemask, request._flags,
            request._matchtag,
        )
        response._errnum = errnum
        response._errstr = errstr
        self._tx["response"] += 1
        self._link.send_response(self._record, request, response)

    def send(self, message: Message, flags: int = 0) -> None:
        """Send a message you built yourself (any type), as ``flux.Flux.send``.

        The broker stamps it with this handle's credentials, as a real
        broker does for a guest's messages.  A request is routed by topic
        with the matchtag it carries (none unless set: its responses then
        reach a response watcher of its topic, as RFC 27's ``sched.alloc``
        answers do; use :meth:`rpc` for a future), an event is published, a
        response or control message is dropped by the broker.  flux-core's
        own ``flux.message.Message`` is taken too.
        """
        if not isinstance(message, Message):
            message = from_flux_core(message)
        message.userid = self._userid
        message.rolemask = self._rolemask
        kind = message.type_str if message.type_str in self._tx else "control"
        self._tx[kind] += 1
        if message.type == FLUX_MSGTYPE_REQUEST:
            message._sender = self
            self._link.send_request(message)
        elif message.type == FLUX_MSGTYPE_EVENT:
            self._link.publish(message)

    def event_send(self, topic: str, payload: Any = None) -> None:
        """Publish an event to every subscriber."""
        msg = Message(
            FLUX_MSGTYPE_EVENT,
            _topic(topic),
            encode_payload(payload),
            userid=self._userid,
            rolemask=self._rolemask,
        )
        self._tx["event"] += 1
        self._link.publish(msg)

    def event_subscribe(self, topic: str) -> None:
        """Receive events whose topic starts with *topic*."""
        self._subscriptions.append(_topic(topic))

    @libflux_function
    def event_unsubscribe(self, topic: str) -> None:
        """Undo one :meth:`event_subscribe` of *topic*."""
        topic = _topic(topic)
        if topic not in self._subscriptions:
            raise OSError(errno.ENOENT, f"not subscribed to {topic!r}")
        self._subscriptions.remove(topic)

    def log(self, level: int, fstring: Any) -> None:
        """Send *fstring* to the broker log at syslog *level*.

        As with flux-core's ``Flux.log()``, the text is a printf format
        given no arguments: ``%%`` prints ``%``, and the text ends at a
        NUL.  Any other ``%`` makes a real module read an argument that is
        not there (garbled log text, or a crash), so it raises ValueError
        here.  ``BrokerModule.log`` sends any text as it is written.
        """
        if isinstance(fstring, bytes):
            fstring = fstring.decode("utf-8", errors="replace")
        elif not isinstance(fstring, str):
            raise TypeError(f"log() text must be str or bytes, not {type(fstring).__name__}")
        else:
            fstring.encode("utf-8")  # as flux-core's: UnicodeEncodeError for a lone surrogate
        name = self._record.name if self._record is not None else "client"
        self._link.log(name, level, _printf_without_arguments(fstring.split("\0", 1)[0]), self._rank)

    # Watchers and the reactor

    def msg_watcher_create(
        self,
        callback: Callable[..., Any],
        type_mask: int = FLUX_MSGTYPE_ANY,
        topic_glob: Optional[str] = "*",
        args: Any = None,
        match_tag: int = FLUX_MATCHTAG_NONE,
        rolemask: Optional[int] = None,
    ) -> MessageWatcher:
        """Create a (stopped) watcher calling ``callback(h, w, msg, args)``."""
        return MessageWatcher(self, type_mask, callback, topic_glob, match_tag, rolemask, args)

    def timer_watcher_create(
        self, after: float, callback: Callable[..., Any], repeat: float = 0.0, args: Any = None
    ) -> TimerWatcher:
        """Create a (stopped) timer calling ``callback(h, w, revents, args)``."""
        return TimerWatcher(self, after, callback, repeat, args)

    def prepare_watcher_create(self, callback: Callable[..., Any], args: Any = None) -> LoopWatcher:
        """Create a (stopped) watcher called before the reactor waits."""
        return LoopWatcher(self, "prepare", callback, args)

    def check_watcher_create(self, callback: Callable[..., Any], args: Any = None) -> LoopWatcher:
        """Create a (stopped) watcher called after the reactor waited."""
        return LoopWatcher(self, "check", callback, args)

    def idle_watcher_create(self, callback: Optional[Callable[..., Any]] = None, args: Any = None) -> LoopWatcher:
        """Create a (stopped) watcher that keeps the reactor from waiting."""
        return LoopWatcher(self, "idle", callback, args)

    def fd_watcher_create(
        self, fd_int: int, callback: Callable[..., Any], events: Optional[int] = None, args: Any = None
    ) -> FDWatcher:
        """Create a (stopped) watcher of file descriptor *fd_int* (polled, see FDWatcher)."""
        return FDWatcher(self, fd_int, FLUX_POLLIN | FLUX_POLLOUT if events is None else events, callback, args)

    def _brokermod_watch(
        self, callback: Callable[..., Any], msgtype: int, topic: str, rolemask: Optional[int]
    ) -> MessageWatcher:
        """The library's message watchers (see flux._libflux.watch).  On a real
        broker they are libflux handlers of their own, whose Python exception
        cffi prints and drops: the module goes on, and so it does here."""
        watcher = self.msg_watcher_create(callback, msgtype, topic, rolemask=rolemask)
        watcher._exceptions_ignored = True
        return watcher

    def _brokermod_msgcounters(self) -> Dict[str, Dict[str, int]]:
        """flux_get_msgcounters() of this handle (see flux._libflux)."""
        return {direction: dict(kinds) for direction, kinds in self._counters.items()}

    def _brokermod_clear_msgcounters(self) -> None:
        """flux_clr_msgcounters() of this handle (see flux._libflux)."""
        for kinds in self._counters.values():
            for kind in kinds:
                kinds[kind] = 0

    @libflux_function
    def module_set_running(self) -> int:
        """flux_module_set_running(): tell the broker the module is running."""
        record = self._require_module("module_set_running")
        self._link.module_running(record, pause=True)
        return 0

    @libflux_function
    def module_debug_test(self, flag: int, clear: bool) -> bool:
        """flux_module_debug_test(): is debug bit *flag* set (clear it if *clear*)?"""
        record = self._require_module("module_debug_test")
        if not record.debug_flags & flag:
            return False
        if clear:
            record.debug_flags &= ~flag
        return True

    def _brokermod_module_created(self, instance: Any) -> None:
        """The BrokerModule running on this handle (see flux._observe)."""
        if self._record is not None:
            self._record.instance = instance

    def _brokermod_handler_failed(self, what: str, exc: BaseException) -> None:
        """A handler raised (see flux._observe): keep it for the test."""
        self._link.handler_failed(self._record, what, exc)

    def _brokermod_module_name(self) -> str:
        """The module's name, which libflux keeps in the handle (see flux._libflux)."""
        return self._require_module("module name").name

    def event_create(self, topic: str, payload: Any = None) -> Message:
        """A new event message (send it with :meth:`send`)."""
        return Message.from_event_encode(_topic(topic), payload)

    def conf_get(self, key: Optional[str] = None, default: Any = None, update: bool = False) -> Any:
        """The instance's configuration, or the value at dotted *key* in it
        (*default* when absent), as flux-core's does: fetched from this
        rank's ``config`` service on first use (or with *update*) and kept."""
        if update or self._conf_cache is None:
            self._conf_cache = self.rpc("config.get").get()
        config = self._conf_cache
        if key is None:
            return config
        value: Any = config
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                return default
            value = value[part]
        return value

    def signal_watcher_create(self, signum: int, callback: Callable[..., Any], args: Any = None) -> "LoopWatcher":
        """A watcher of signal *signum*.  The in-memory broker delivers no
        signals, so it never fires; starting and stopping it work."""
        return LoopWatcher(self, "signal", callback, args)

    @libflux_function
    def get_reactor(self) -> "Handle":
        """The reactor of this handle (an opaque value to pass back)."""
        return self

    @libflux_function
    def reactor_now(self, reactor: Any) -> float:
        """The reactor's clock: the broker's virtual clock, in seconds."""
        return self._link.clock.now

    def close(self) -> None:
        """Close this client handle: like a real broker's local connector,
        send ``NAME.disconnect`` to each service it sent requests to.

        A client handle that is dropped (garbage collected) disconnects so
        too, as flux-core's does; flux-core's ``close()`` refuses to be
        called, so a test body meant for both brokers drops the handle."""
        if self._closed or self._record is not None:
            return
        self._closed = True
        send_disconnects(self._link, self, self._services_used, self._userid, self._rolemask)

    def reactor_run(self, reactor: Any = None, flags: int = 0) -> int:
        """Handle messages and timers until stopped; return 0, or -1 on error.

        A Python exception raised by a watcher callback stops the reactor
        and is raised from here, as with flux-core.
        """
        link = self._link
        self._stop = None
        record = self._record
        if record is None:  # a client: run the broker until it is stopped
            link.wait_until(lambda: self._stop is not None, "client reactor_run, which a real reactor would never end")
            rc, self._stop = self._stop, None
            return int(rc or 0)
        link.module_running(record, pause=False)
        if self._loop_watchers:
            self._run_loop_watchers("prepare")
        turn = self._turn
        while self._stop is None:
            item = link.next_item(record.ctx, turn)
            if item is not None:
                turn(item)
        rc, self._stop = self._stop, None
        if self._exception is not None:
            exc, self._exception = self._exception, None
            raise exc
        return rc

    def _turn(self, item: Callable[[], None]) -> bool:
        """One round of a module's reactor: *item*, then its check watchers
        and, unless stopped, its prepare watchers.  True if it goes on."""
        item()
        if self._loop_watchers:
            self._run_loop_watchers("check")
            if self._stop is None:
                self._run_loop_watchers("prepare")
        return self._stop is None

    def _run_loop_watchers(self, kind: str) -> None:
        for watcher in list(self._loop_watchers):
            if not watcher._running:
                continue
            if watcher._kind == kind:
                self._run_callback(watcher.callback, self, watcher, 0, watcher.args)
            elif kind == "prepare" and watcher._kind == "fd":
                self._poll(watcher)
        if kind == "prepare" and any(w._kind == "idle" for w in self._loop_watchers):
            self._post(_nothing)  # do not wait: come back at once

    def _poll(self, watcher: FDWatcher) -> None:
        revents = _ready_events(watcher.fd_int, watcher.events)
        if revents:
            self._run_callback(watcher.callback, self, watcher, watcher.fd_int, revents, watcher.args)

    def reactor_stop(self, reactor: Any = None) -> None:
        """Make :meth:`reactor_run` return 0 after the current callback."""
        self._stop = 0

    def reactor_stop_error(self, reactor: Any = None) -> None:
        """Make :meth:`reactor_run` return -1 after the current callback."""
        self._stop = -1

    # Broker information

    def get_rank(self) -> int:
        """The rank of the broker this handle is connected to."""
        return self._rank

    def attr_get(self, attr_name: str) -> str:
        """The value of broker attribute *attr_name* (OSError ENOENT if unset)."""
        try:
            return self._link.attr(attr_name, self._rank)
        except KeyError:
            raise OSError(errno.ENOENT, f"No such attribute: {attr_name}") from None

    def service_register(self, name: str) -> Future:
        """Route requests for service *name* to this module."""
        record = self._require_module("service_register")
        return self._link.service_change(self, True, name, record)

    def service_unregister(self, name: str) -> Future:
        """Stop routing requests for service *name* to this module."""
        record = self._require_module("service_unregister")
        return self._link.service_change(self, False, name, record)

    def __getattr__(self, name: str) -> Any:
        raise missing("Flux", self, name)

    # Messages in (called by the broker, in this handle's context)

    def _add_watcher(self, watcher: MessageWatcher) -> None:
        if watcher._exact and watcher._type_mask == FLUX_MSGTYPE_REQUEST:
            self._methods.setdefault(watcher._topic_glob, []).insert(0, watcher)
        else:
            self._handlers.insert(0, watcher)

    def _remove_watcher(self, watcher: MessageWatcher) -> None:
        stack = self._methods.get(watcher._topic_glob, [])
        if watcher in stack:
            stack.remove(watcher)
        if watcher in self._handlers:
            self._handlers.remove(watcher)

    def _post(self, item: Callable[[], None]) -> None:
        ctx = self._record.ctx if self._record is not None else None
        self._link.post(ctx, item)

    def _dispatch(self, msg: Message) -> None:
        """Hand *msg* to the matching watchers, as libflux's dispatcher does."""
        if msg.type == FLUX_MSGTYPE_REQUEST:
            self._rx["request"] += 1
            for watcher in self._methods.get(msg.topic, ()):
                if watcher._running:
                    self._call(watcher, msg)
                    return
            for watcher in self._handlers:
                if watcher._running and watcher._matches(msg):
                    self._call(watcher, msg)
                    return
            if not msg._noresponse:
                self.respond_error(msg, errno.ENOSYS, f"Unknown service method '{msg.topic}'")
        elif msg.type == FLUX_MSGTYPE_EVENT:
            self._rx["event"] += 1
            for watcher in list(self._handlers):
                if watcher._running and watcher._matches(msg):
                    self._call(watcher, msg)

    def _call(self, watcher: MessageWatcher, msg: Message) -> None:
        if not msg.rolemask & watcher._rolemask:
            if msg.type == FLUX_MSGTYPE_REQUEST and not msg._noresponse:
                if watcher._rolemask == FLUX_ROLE_OWNER:
                    text = "Request requires owner credentials"
                else:
                    text = "Request rejected due to insufficient privilege"
                self.respond_error(msg, errno.EPERM, text)
            return
        self._run_callback(watcher.callback, self, watcher, msg, watcher.args)

    def _run_callback(self, callback: Callable[..., Any], *args: Any) -> None:
        if self._record is None:  # a client: let the test see the error
            callback(*args)
            return
        try:
            callback(*args)
        except Exception as exc:  # noqa: BLE001 - flux-core stops the reactor
            if len(args) > 1 and getattr(args[1], "_exceptions_ignored", False):
                self._ignored_by_cffi(callback)
                return
            self._exception = exc
            self._stop = -1
        except BaseException:  # noqa: BLE001 - cffi prints it and goes on
            # flux-core's callback wrappers pass on Exception only; cffi
            # prints anything else (SystemExit...) and the reactor goes on.
            self._ignored_by_cffi(callback)

    def _ignored_by_cffi(self, callback: Callable[..., Any]) -> None:
        """What cffi does with an exception a C callback raised: print it, go on."""
        assert self._record is not None
        print(f"Exception ignored from cffi callback {callback!r}:", file=self._record.stderr)
        traceback.print_exc(file=self._record.stderr)

    def _receive_response(self, msg: Message) -> None:
        """As libflux's dispatcher: a response with a matchtag goes to its RPC;
        any other to the first started watcher of its type and topic.  One
        with a matchtag that no RPC waits for and no watcher takes is a
        stray: on a real handle the RPC holding that tag next would take it."""
        if self._closed or (self._record is not None and self._record.exited):
            return  # the connection is gone
        self._rx["response"] += 1
        tag = msg._matchtag
        if tag != FLUX_MATCHTAG_NONE:
            future = self._matchtags.peek(tag)
            if future is not None and not future._initialized and self._record is not None:
                self._early_response(future, msg)
                return
            future = self._matchtags.take(tag, _ends_rpc(msg))
            if future is not None:
                future._fulfill(msg)
                return
        for watcher in self._handlers:
            if watcher._running and watcher._matches(msg):
                self._post(lambda: self._call(watcher, msg))
                return
        if tag != FLUX_MATCHTAG_NONE:
            self._link.stray_response(self, msg)

    def _early_response(self, future: Future, msg: Message) -> None:
        """A response for an RPC whose future has no handler yet (not used
        since rpc()), as libflux treats it.  While the module waits in a
        synchronous get(), its handle clone requeues it for later.  Otherwise
        the reactor dispatches it after the continuations already due (libev
        runs the newest check watchers first): if its future has a handler by
        then, it takes it; if not, it is dropped as a late response and its
        matchtag reused, and the future never completes."""
        if self._sync_waits:
            if not self._requeued:
                self._post(self._dispatch_requeued)
            self._requeued.append(msg)
            return
        self._post(lambda: self._dispatch_late(msg))

    def _dispatch_late(self, msg: Message) -> None:
        tag = msg._matchtag
        future = self._matchtags.peek(tag)
        if future is None:
            return
        if future._initialized:
            self._matchtags.take(tag, _ends_rpc(msg))
            future._fulfill(msg)
            return
        if _ends_rpc(msg):
            self._matchtags.reclaim(tag)
            future._matchtag = FLUX_MATCHTAG_NONE
        future._lost = True

    def _dispatch_requeued(self) -> None:
        """The main reactor takes the responses a synchronous get() requeued."""
        requeued, self._requeued = self._requeued, []
        for msg in requeued:
            self._dispatch_late(msg)

    def _take_requeued(self) -> None:
        """A synchronous get() reads the requeued responses its future now takes."""
        for msg in list(self._requeued):
            future = self._matchtags.peek(msg._matchtag)
            if future is not None and future._initialized:
                self._requeued.remove(msg)
                self._dispatch_late(msg)

    def _sync_wait(self, done: Callable[[], bool], what: str, timeout: float = -1.0) -> None:
        if self._requeued:
            self._take_requeued()
        self._sync_waits += 1
        try:
            self._link.wait_until(done, what, timeout)
        finally:
            self._sync_waits -= 1

    def _require_module(self, method: str) -> "LoadedModule":
        if self._record is None:
            raise NotImplementedError(
                f"{method}() is for module handles; this is a client handle"
            )
        return self._record

    def __repr__(self) -> str:
        who = self._record.name if self._record is not None else "client"
        return f"<flux.membroker.Handle {who} userid={self._userid} rolemask={self._rolemask:#x}>"


_PERCENT = re.compile("%%?")
_GLOB_CHARS = re.compile(r"[*?[]")


def _printf_without_arguments(fmt: str) -> str:
    """What printf prints for *fmt* with no arguments, if that is safe."""
    if "%" not in fmt:
        return fmt

    def percent(match: "re.Match[str]") -> str:
        if match.group() == "%%":
            return "%"
        directive = fmt[match.start():match.start() + 2]
        raise ValueError(
            f"log text {fmt!r} has the printf directive {directive!r}: flux-core's "
            f"Flux.log() passes its text to flux_log() as a format, so a real module "
            f"would log garbage or crash; log through self.log (BrokerModule), which "
            f"sends text as it is written, or write %% for a %"
        )

    return _PERCENT.sub(percent, fmt)


def _ends_rpc(msg: Message) -> bool:
    """True for a response that is its RPC's last: an error, or any response
    to a request that is not streaming."""
    return bool(msg._errnum or not msg._flags & FLUX_RPC_STREAMING)


def _ready_events(fd: int, events: int) -> int:
    """The FLUX_POLLIN/FLUX_POLLOUT events of *events* that *fd* has ready now.

    poll(), not select(): select() refuses descriptors past FD_SETSIZE
    (1024), which a process hosting hundreds of modules soon reaches.
    """
    poller = select.poll()
    poller.register(fd, (select.POLLIN if events & FLUX_POLLIN else 0)
                    | (select.POLLOUT if events & FLUX_POLLOUT else 0))
    ready = poller.poll(0)
    revents = ready[0][1] if ready else 0
    if revents & select.POLLNVAL:
        raise OSError(errno.EBADF, f"fd watcher: descriptor {fd} is not open")
    return ((FLUX_POLLIN if revents & (select.POLLIN | select.POLLHUP | select.POLLERR) and events & FLUX_POLLIN else 0)
            | (FLUX_POLLOUT if revents & (select.POLLOUT | select.POLLERR) and events & FLUX_POLLOUT else 0))


def _nothing() -> None:
    pass


def _topic(topic: Any) -> str:
    if isinstance(topic, bytes):
        topic = topic.decode("utf-8")
    if not isinstance(topic, str):
        raise TypeError(errno.EINVAL, f"Topic must be a string, not {type(topic)}")
    return topic


for _kind, _cls in (("Flux", Handle), ("RPC", Future), ("MessageWatcher", MessageWatcher),
                    ("TimerWatcher", TimerWatcher), ("IdleWatcher", LoopWatcher), ("FDWatcher", FDWatcher)):
    register_stand_in(_kind, _cls)


def send_disconnects(link: "BrokerLink", sender: Any, services: List[str], userid: int, rolemask: int) -> None:
    """``NAME.disconnect`` from *sender* to each of *services* (then emptied)."""
    for service in services:
        msg = Message(
            FLUX_MSGTYPE_REQUEST, f"{service}.disconnect", None,
            userid=userid, rolemask=rolemask, flags=FLUX_RPC_NORESPONSE,
        )
        msg._sender = sender
        link.send_request(msg)
    services.clear()


class DepartedClient:
    """What stands for a client handle that was dropped, in the disconnects
    the broker sends for it: its route and the rank it was connected to."""

    __slots__ = ("_route", "_inbox")

    def __init__(self, route: str, rank: int) -> None:
        self._route = route
        self._inbox = _RankOnly(rank)


class _RankOnly:
    __slots__ = ("rank",)

    def __init__(self, rank: int) -> None:
        self.rank = rank
