"""libflux's own calls on an in-memory module's handle, where flux-core is installed.

flux-core's Python modules reach past ``flux.Flux``'s methods into libflux
itself: ``flux.kvs.commit_async(h, ...)``, ``flux.job.job_raise_async(h,
...)`` and friends pass ``h.handle``, a ``flux_t *``, to C.  (flux-core's
schedulers commit every allocation's R that way.)  So that such a module
runs unchanged in memory, its handle's ``handle`` is a genuine ``flux_t *``
made with ``flux_handle_create()``, whose connector is written here in
Python: what libflux sends through it enters the in-memory broker as a
request of this module, and the responses come back through it.  No C of
our own: the connector's operations are ``ffi.callback`` functions of
flux-core's own compiled ``_flux._core``.

The connector's contract with libflux, and how it is kept
----------------------------------------------------------
- ``send`` gets a message the caller still owns: it is read at once, and
  routed as an in-memory :class:`~flux.membroker.Message` sent by this
  bridge (its own route and matchtags, so that libflux's matchtags never
  meet the in-memory handle's).
- ``recv`` hands over an owned ``flux_msg_t *``, or fails with EAGAIN.
  Responses are built with the responder's credentials: libflux drops a
  response whose rolemask is FLUX_ROLE_NONE.
- ``pollfd``/``pollevents``: libflux asks ``pollevents`` before it would
  wait on the descriptor; the bridge answers POLLIN whenever a message is
  queued, and never lets a reactor wait with nothing queued (see below),
  so the descriptor, one for all bridges, is never written.

Stepping libflux's reactor, on the module's strand
--------------------------------------------------
libflux runs what a response sets off (a future's ``then`` callback) in
its own reactor, which nothing here runs on its own.  The bridge runs it
without waiting (``FLUX_REACTOR_NOWAIT``), on the module's strand, at the
end of every round of the module's in-memory reactor (a check watcher)
and when a response for it arrives, until it *settles*: no watcher left
(``flux_reactor_run`` returns 0), or two rounds in a row in which nothing
was received or sent and nothing waits in the queue.  Two, because
libflux dispatches a response in one round and calls the fulfilled
future's ``then`` callback in the next (its check watcher is started
from within the round that fulfils it; measured on 0.84 to master, see
``tests/test_libflux_bridge.py``).  A round is a few microseconds.

A synchronous ``future.get()`` of a C future (``flux.kvs.get(h, key)``)
runs a reactor of libflux's own until the response is there; when that
reactor asks ``pollevents`` and nothing is queued, the bridge runs the
in-memory broker (as the in-memory ``get()`` does) until a response
arrives, bounded as every in-memory wait is: when nothing is left that
could answer, the requests waiting fail with EDEADLK (and the broker
reports the hang, as for an in-memory ``get()``), so the ``get()``
raises instead of waiting forever.

A request a module with a bridge received answers ``msg.handle`` with a
``flux_msg_t *`` copy (made on first use) carrying a route of its own:
``lib.flux_respond_error(h.handle, msg.handle, ...)`` then sends libflux's
response through the connector, which answers the in-memory request as
the module (flux-core's ``Scheduler`` answers some errors so).

What stays on the real clock: libev's timers.  A C future given a
timeout (``then(cb, timeout=T)`` on a future libflux made) times out in
real seconds.  Futures from the in-memory handle's own ``rpc()`` and its
timers keep to the virtual clock.
"""

import errno
import os
import sys
import weakref
from collections import deque
from typing import Any, Deque, Optional

from flux.membroker._handle import Handle
from flux.membroker._message import (
    FLUX_MSGTYPE_EVENT,
    FLUX_MSGTYPE_REQUEST,
    FLUX_MSGTYPE_RESPONSE,
    FLUX_ROLE_OWNER,
    FLUX_RPC_NORESPONSE,
    FLUX_RPC_STREAMING,
    Message,
    from_libflux,
)

#: Rounds of libflux's reactor one settling may take before it is an error
#: (a then-callback that starts another future, over and over).
SETTLE_LIMIT = 10_000


def module_handle_class() -> type:
    """The class of a module's in-memory handle: one whose ``handle`` is a
    ``flux_t *`` when flux-core's bindings are importable, else :class:`Handle`."""
    global _CLASS
    if _CLASS is None:
        try:
            from _flux._core import ffi, lib  # noqa: F401
            from flux.wrapper import WrapperBase
        except ImportError:
            _CLASS = Handle
        else:
            _CLASS = type("Handle", (Handle, WrapperBase), {
                "__doc__": Handle.__doc__,
                "__module__": Handle.__module__,
                "handle": property(_flux_t, doc="The ``flux_t *`` libflux's calls take (see _libflux_bridge)."),
                "aux_txn": None,  # flux.kvs keeps its implicit transaction here, as on flux.Flux
                "_dispatch": _dispatch_marking_requests,
            })
    return _CLASS


_CLASS: Optional[type] = None


def _bridge_of(handle: Handle) -> "LibfluxBridge":
    bridge = handle.__dict__.get("_libflux_bridge")
    if bridge is None:
        bridge = handle.__dict__["_libflux_bridge"] = LibfluxBridge(handle)
    return bridge


def _flux_t(handle: Handle) -> Any:
    return _bridge_of(handle).ptr


def _dispatch_marking_requests(handle: Handle, msg: Message) -> None:
    """Dispatch as the in-memory handle does, first noting on a request which
    handle received it: its ``handle`` is then a ``flux_msg_t *`` that
    libflux's ``flux_respond*()`` take (see :func:`c_request`)."""
    if msg.type == FLUX_MSGTYPE_REQUEST:
        msg.__dict__["_libflux_receiver"] = handle
    Handle._dispatch(handle, msg)


def c_request(msg: Message) -> Any:
    """``msg.handle`` of an in-memory message: a ``flux_msg_t *`` standing for
    a request a module with a libflux bridge received (libflux's responses
    to it are routed back as the module's), else the message itself."""
    receiver = msg.__dict__.get("_libflux_receiver")
    if receiver is None:
        return msg
    return _bridge_of(receiver).c_request(msg)


class _BridgeInbox:
    """What the broker calls on the sender of a request: its rank, and where
    responses go (the bridge sends requests only, so nothing else)."""

    def __init__(self, bridge: "LibfluxBridge") -> None:
        self._bridge = bridge
        self.rank = bridge._module._rank

    def receive_response(self, msg: Message) -> None:
        """Queue *msg* for libflux and have the module's strand dispatch it."""
        self._bridge._queue_response(msg)


class LibfluxBridge:
    """A ``flux_t *`` whose connector is one module's in-memory link."""

    def __init__(self, module: Handle) -> None:
        from _flux._core import ffi, lib

        self._ffi, self._lib = ffi, lib
        self._module = module
        self._route = f"{module._route}-libflux"
        self._userid = module._userid
        self._rolemask = module._rolemask
        self._inbox = _BridgeInbox(self)
        self._queue: Deque[Any] = deque()  # owned flux_msg_t *, for recv
        # Requests libflux sent that wait for an answer: matchtag -> topic.
        self._waiting: "dict[int, str]" = {}
        self._activity = 0  # messages sent or received: tells a round that did something
        # In-memory requests that libflux holds a copy of, by the route pushed on the copy.
        self._requests: "weakref.WeakValueDictionary[str, Message]" = weakref.WeakValueDictionary()
        self._request_seq = 0
        self._stepping = False  # True while the bridge itself runs libflux's reactor
        self._ops = ffi.new("struct flux_handle_ops *")
        # The callbacks must outlive the handle: kept on self.
        self._callbacks = (
            ffi.callback("int(void *)", self._op_pollfd),
            ffi.callback("int(void *)", self._op_pollevents),
            ffi.callback("int(void *, const flux_msg_t *, int)", self._op_send),
            ffi.callback("flux_msg_t *(void *, int)", self._op_recv),
        )
        self._ops.pollfd, self._ops.pollevents, self._ops.send, self._ops.recv = self._callbacks
        self.ptr = lib.flux_handle_create(ffi.NULL, self._ops, 0)
        if self.ptr == ffi.NULL:
            raise OSError(ffi.errno, "flux_handle_create() failed for the in-memory bridge")
        self._reactor = lib.flux_get_reactor(self.ptr)
        # Settle at the end of each round of the module's reactor: whatever
        # the round's code did with libflux (a then() on a fulfilled future)
        # runs in the same round, as on a real broker.
        module.check_watcher_create(lambda *_: self.settle()).start()

    # The connector's operations (called by libflux, on the module's strand)

    def _op_pollfd(self, impl: Any) -> int:
        return _never_ready_fd()

    def _op_pollevents(self, impl: Any) -> int:
        if not self._queue and sys._getframe(1).f_code is not _SETTLE_CODE:
            # Not the bridge's own round, so a reactor of libflux's own is
            # about to wait (a synchronous get(), maybe from a continuation
            # the round runs): run the in-memory broker until a response comes.
            try:
                self._module._sync_wait(lambda: bool(self._queue), "a response to a libflux request")
            except Exception as exc:  # noqa: BLE001 - no exception may cross into C
                # Nothing will answer (the broker recorded why): fail the
                # requests that wait, so that the get() raises instead of spinning.
                self._fail_waiting(exc)
        return self._lib.FLUX_POLLOUT | (self._lib.FLUX_POLLIN if self._queue else 0)

    def _fail_waiting(self, exc: Exception) -> None:
        for matchtag, topic in list(self._waiting.items()):
            failure = Message(FLUX_MSGTYPE_RESPONSE, topic, None, matchtag=matchtag)
            failure._errnum = errno.EDEADLK
            failure._errstr = f"{topic}: no answer ({exc})"
            self._queue.append(self._to_c(failure))
        self._waiting.clear()

    def _op_send(self, impl: Any, cmsg: Any, flags: int) -> int:
        try:
            msg = from_libflux(cmsg)
            msg.userid, msg.rolemask = self._userid, self._rolemask  # the broker stamps the sender's
        except Exception:  # noqa: BLE001 - no exception may cross into C
            self._ffi.errno = errno.EPROTO
            return -1
        self._activity += 1
        if msg.type == FLUX_MSGTYPE_REQUEST:
            msg._sender = self
            if msg._matchtag and not msg._flags & FLUX_RPC_NORESPONSE:
                self._waiting[msg._matchtag] = msg.topic
            self._module._link.send_request(msg)
        elif msg.type == FLUX_MSGTYPE_EVENT:
            self._module._link.publish(msg)
        elif msg.type == FLUX_MSGTYPE_RESPONSE:
            return self._respond_from_c(cmsg, msg)
        return 0

    def _respond_from_c(self, cmsg: Any, msg: Message) -> int:
        """libflux answered a request :meth:`c_request` copied: answer the
        in-memory request, as the module (one final answer, counted)."""
        ffi, lib = self._ffi, self._lib
        route = lib.flux_msg_route_last(cmsg)
        request = self._requests.get(ffi.string(route).decode()) if route != ffi.NULL else None
        if request is None:
            ffi.errno = errno.EHOSTUNREACH
            return -1
        errnum = ffi.new("int *")
        lib.flux_msg_get_errnum(cmsg, errnum)
        if errnum[0]:
            text = None if msg._payload is None else msg._payload.decode("utf-8", "surrogateescape")
            self._module._respond(request, None, errnum[0], text)
        else:
            self._module._respond(request, msg._payload, 0, None)
        return 0

    def c_request(self, msg: Message) -> Any:
        """A ``flux_msg_t *`` copy of in-memory request *msg* (made once)."""
        cmsg = msg.__dict__.get("_libflux_copy")
        if cmsg is not None:
            return cmsg
        ffi, lib = self._ffi, self._lib
        cmsg = ffi.gc(lib.flux_msg_create(FLUX_MSGTYPE_REQUEST), lib.flux_msg_destroy)
        lib.flux_msg_route_enable(cmsg)
        self._request_seq += 1
        route = f"membroker-request-{self._request_seq}"
        lib.flux_msg_route_push(cmsg, route.encode())
        self._requests[route] = msg
        lib.flux_msg_set_topic(cmsg, msg.topic.encode("utf-8", "surrogateescape"))
        lib.flux_msg_set_matchtag(cmsg, msg._matchtag)
        lib.flux_msg_set_nodeid(cmsg, msg._nodeid)
        lib.flux_msg_set_userid(cmsg, msg.userid)
        lib.flux_msg_set_rolemask(cmsg, msg.rolemask)
        if msg._flags & FLUX_RPC_STREAMING:
            lib.flux_msg_set_streaming(cmsg)
        if msg._flags & FLUX_RPC_NORESPONSE:
            lib.flux_msg_set_noresponse(cmsg)
        if msg._payload is not None:
            lib.flux_msg_set_string(cmsg, msg._payload.split(b"\0", 1)[0])
        msg.__dict__["_libflux_copy"] = cmsg
        return cmsg

    def _op_recv(self, impl: Any, flags: int) -> Any:
        if not self._queue:
            self._ffi.errno = errno.EAGAIN
            return self._ffi.NULL
        self._activity += 1
        return self._queue.popleft()

    # Messages between libflux and the in-memory broker

    def _to_c(self, msg: Message) -> Any:
        ffi, lib = self._ffi, self._lib
        cmsg = lib.flux_msg_create(FLUX_MSGTYPE_RESPONSE)
        lib.flux_msg_route_enable(cmsg)  # as flux_response_derive() leaves it: libflux drops it otherwise
        lib.flux_msg_set_topic(cmsg, msg.topic.encode("utf-8", "surrogateescape"))
        lib.flux_msg_set_matchtag(cmsg, msg._matchtag)
        lib.flux_msg_set_userid(cmsg, self._userid)
        lib.flux_msg_set_rolemask(cmsg, FLUX_ROLE_OWNER)
        if msg._flags & FLUX_RPC_STREAMING:
            lib.flux_msg_set_streaming(cmsg)
        if msg._errnum:
            lib.flux_msg_set_errnum(cmsg, msg._errnum)
            if msg._errstr is not None:
                lib.flux_msg_set_string(cmsg, msg._errstr.encode("utf-8", "surrogateescape"))
        elif msg._payload is not None:
            lib.flux_msg_set_string(cmsg, msg._payload.split(b"\0", 1)[0])
        return cmsg

    def _queue_response(self, msg: Message) -> None:
        if msg._errnum or not msg._flags & FLUX_RPC_STREAMING:
            self._waiting.pop(msg._matchtag, None)  # its final answer
        self._queue.append(self._to_c(msg))
        self._module._post(self.settle)

    # Running libflux's reactor

    def settle(self) -> None:
        """Run libflux's reactor, without waiting, until nothing is left to do
        (see the module's docstring for the rule, and why two quiet rounds)."""
        if self._stepping:
            return  # already running it, further up this strand's stack
        lib = self._lib
        self._stepping = True
        try:
            quiet = 0
            for _ in range(SETTLE_LIMIT):
                before = self._activity
                if lib.flux_reactor_run(self._reactor, lib.FLUX_REACTOR_NOWAIT) == 0 and not self._queue:
                    return  # no watcher left: nothing can happen until libflux is called again
                quiet = 0 if self._queue or self._activity != before else quiet + 1
                if quiet == 2:
                    return
            raise RuntimeError(
                f"libflux's reactor of module {self._module._record.name!r} did not settle in "
                f"{SETTLE_LIMIT} rounds: a continuation keeps starting another"
            )
        finally:
            self._stepping = False


_SETTLE_CODE = LibfluxBridge.settle.__code__
_NEVER_READY: list = []


def _never_ready_fd() -> int:
    """One descriptor for every bridge's ``pollfd``, never readable: libflux
    only waits on it when ``pollevents`` said nothing was ready, which the
    bridge never says to a reactor that would wait (it runs the broker
    first), so no bridge needs a descriptor, or a write, of its own."""
    if not _NEVER_READY:
        read_end, write_end = os.pipe()
        _NEVER_READY.extend([read_end, write_end])  # the write end stays open and unused
    return _NEVER_READY[0]
