"""What the library needs from libflux beyond flux-core's Python API, on both brokers.

flux-core's ``Message`` (0.88) has no ``matchtag``, ``streaming`` or sender,
and its handle no message counters: those exist only through libflux
calls.  The functions here make them on a flux-core object, and ask the
in-memory broker's own record (its ``_brokermod_*`` hooks) for an
in-memory one.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, NamedTuple, Optional

from flux._brief import BriefHelp

__all__ = [
    "RequestFacts", "arm_rpcs", "clear_msgcounters", "is_noresponse", "is_streaming", "matchtag_of", "module_name", "msgcounters",
    "raw_message_class", "reactor_clock", "request_facts", "rpc_on_behalf", "watch",
]


class _RequestFacts(NamedTuple):
    #: True for a request sent with FLUX_RPC_STREAMING.
    streaming: bool
    #: The matchtag the sender chose; 0 (FLUX_MATCHTAG_NONE) for a request
    #: sent without one: FLUX_RPC_NORESPONSE, or ``flux_send()`` by a sender
    #: that takes its responses by topic (RFC 27's ``sched.alloc``).
    matchtag: int
    #: The sending client's identity (its route), usable as a dict key.
    sender: str
    #: The sender's userid.
    userid: int


class RequestFacts(_RequestFacts, metaclass=BriefHelp):
    """Facts of one request, the same on a real and an in-memory broker: a
    named tuple (``streaming``, ``matchtag``, ``sender``, ``userid``)."""

    __slots__ = ()


_LIB: Any = None
_FFI: Any = None


def _libflux() -> Any:
    """flux-core's compiled ``lib`` and ``ffi``, imported once, on first use."""
    global _LIB, _FFI
    if _LIB is None:
        from _flux._core import ffi, lib

        _LIB, _FFI = lib, ffi
    return _LIB


def is_streaming(msg: Any) -> bool:
    """True if request *msg* was sent with FLUX_RPC_STREAMING.

    On the path of every response: one look-up on the class, one call.
    """
    streaming = getattr(type(msg), "_brokermod_streaming", None)
    if streaming is not None:
        return bool(streaming(msg))
    return bool(_libflux().flux_msg_is_streaming(msg.handle))


def is_noresponse(msg: Any) -> bool:
    """True if request *msg* was sent with FLUX_RPC_NORESPONSE: no response reaches anyone."""
    noresponse = getattr(type(msg), "_brokermod_noresponse", None)
    if noresponse is not None:
        return bool(noresponse(msg))
    return bool(_libflux().flux_msg_is_noresponse(msg.handle))


def matchtag_of(msg: Any) -> int:
    """The matchtag of request *msg*: 0 (FLUX_MATCHTAG_NONE) when its sender
    waits for no particular answer (``flux_send()``, FLUX_RPC_NORESPONSE)."""
    facts = getattr(type(msg), "_brokermod_facts", None)
    if facts is not None:
        return facts(msg).matchtag  # type: ignore[no-any-return]
    lib = _libflux()
    tag = _FFI.new("uint32_t *")
    if lib.flux_msg_get_matchtag(msg.handle, tag) < 0:
        raise OSError("flux_msg_get_matchtag failed")
    return int(tag[0])


def request_facts(msg: Any) -> RequestFacts:
    """The :class:`RequestFacts` of request *msg*."""
    facts = getattr(type(msg), "_brokermod_facts", None)
    if facts is not None:
        return facts(msg)  # type: ignore[no-any-return]
    lib = _libflux()
    ptr = msg.handle
    route = lib.flux_msg_route_first(ptr)
    sender = _FFI.string(route).decode() if route != _FFI.NULL else ""
    return RequestFacts(bool(lib.flux_msg_is_streaming(ptr)), matchtag_of(msg), sender, int(msg.userid))


_KINDS = ("request", "response", "event", "control")


def msgcounters(h: Any) -> Dict[str, Dict[str, int]]:
    """Handle *h*'s message counters, as the standard ``stats-get`` reports them."""
    hook = getattr(type(h), "_brokermod_msgcounters", None)
    if hook is not None:
        return hook(h)  # type: ignore[no-any-return]
    lib = _libflux()
    counters = _FFI.new("flux_msgcounters_t *")
    lib.flux_get_msgcounters(h.handle, counters)
    return {
        direction: {kind: int(getattr(counters, f"{kind}_{direction}")) for kind in _KINDS}
        for direction in ("tx", "rx")
    }


def clear_msgcounters(h: Any) -> None:
    """Zero handle *h*'s message counters, as the standard ``stats-clear`` does."""
    hook = getattr(type(h), "_brokermod_clear_msgcounters", None)
    if hook is not None:
        hook(h)
        return
    _libflux().flux_clr_msgcounters(h.handle)


def module_name(h: Any) -> str:
    """The name the broker gave the module whose handle is *h*."""
    hook = getattr(type(h), "_brokermod_module_name", None)
    if hook is not None:
        return hook(h)  # type: ignore[no-any-return]
    lib = _libflux()
    name = _FFI.cast("char *", lib.flux_aux_get(h.handle, b"flux::name"))
    return _FFI.string(name).decode() if name != _FFI.NULL else "unknown"


def watch(h: Any, callback: Callable[..., None], msgtype: int, topic: str, rolemask: Optional[int]) -> Any:
    """A (stopped) watcher calling ``callback(h, watcher, msg, None)`` for each
    *msgtype* message matching *topic* that *rolemask* (None: the owner) may send.

    On a flux-core handle it is a libflux message handler of its own
    (:mod:`flux._rawmsg`, the fast lane), unless the system refuses the
    C callback it needs (no write+execute memory): then, like everywhere
    else, the handle's ``msg_watcher_create``.
    """
    hook = getattr(type(h), "_brokermod_watch", None)
    if hook is not None:
        return hook(h, callback, msgtype, topic, rolemask)
    from flux._rawmsg import RawMessageWatcher

    try:
        return RawMessageWatcher(h, callback, msgtype, topic, rolemask)
    except MemoryError:  # cffi could not make the callback
        return h.msg_watcher_create(callback, msgtype, topic, rolemask=rolemask)


def arm_rpcs(h: Any) -> None:
    """Make every future ``h.rpc()`` returns take its response from the start.

    libflux installs an RPC's response handler only when its future is
    first used (``then()``, ``get()``, ``await``); a response that reaches
    the reactor before then is taken for a late one: dropped, and its
    matchtag reused, so the future never completes.  Sending several RPCs
    and awaiting them one by one hits exactly that.  An armed future has
    its handler from the start (a continuation that does nothing, which
    ``then()`` replaces), so a response waits in it to be read.
    """
    rpc = h.rpc
    if getattr(rpc, "_brokermod_armed", False):
        return

    def armed_rpc(*args: Any, **kwargs: Any) -> Any:
        future = rpc(*args, **kwargs)
        _arm(future)
        return future

    armed_rpc.__doc__ = rpc.__doc__
    armed_rpc._brokermod_armed = True  # type: ignore[attr-defined]
    h.rpc = armed_rpc


def rpc_on_behalf(h: Any, topic: str, payload: Optional[str], nodeid: int, userid: int, rolemask: int) -> Any:
    """``h.rpc(topic, payload, nodeid)``, the request carrying *userid* and
    *rolemask* instead of the handle's: a future for its answer.

    A broker keeps the credentials an instance owner's connection (a
    module's) sets on a request, so that owner components can route
    requests on behalf of others (flux-core's ``librouter/auth.c``); a
    guest's are always overwritten with the guest's own.  A reduction
    forwards a caller's request down the tree this way, so that every rank
    sees who asked.
    """
    hook = getattr(type(h), "_brokermod_rpc_on_behalf", None)
    if hook is not None:
        return hook(h, topic, payload, nodeid, userid, rolemask)
    from flux.rpc import RPC

    lib = _libflux()
    text = _FFI.NULL if payload is None else payload.encode("utf-8", "surrogateescape")
    msg = lib.flux_request_encode(topic.encode("utf-8"), text)
    if msg == _FFI.NULL:
        raise OSError(_FFI.errno, f"flux_request_encode {topic}")
    try:
        if lib.flux_msg_set_userid(msg, userid) < 0 or lib.flux_msg_set_rolemask(msg, rolemask) < 0:
            raise OSError(_FFI.errno, f"setting the credentials of {topic}")
        handle = lib.flux_rpc_message(h.handle, msg, nodeid, 0)
        if handle == _FFI.NULL:
            raise OSError(_FFI.errno, f"flux_rpc_message {topic}")
    finally:
        lib.flux_msg_decref(msg)
    future = RPC.__new__(RPC)
    future.flux_handle = h  # kept alive as long as the future, as RPC() keeps it
    super(RPC, future).__init__(handle, prefixes=["flux_rpc_", "flux_future_"], pimpl_t=RPC.RPCInnerWrapper)
    return future


_NOTHING: Any = None


def _arm(future: Any) -> None:
    hook = getattr(type(future), "_brokermod_arm", None)
    if hook is not None:
        hook(future)
        return
    global _NOTHING
    lib = _libflux()
    if _NOTHING is None:
        _NOTHING = _FFI.callback("void(flux_future_t *, void *)", _do_nothing)
    if lib.flux_future_then(future.pimpl.handle, -1.0, _NOTHING, _FFI.NULL) < 0:
        raise OSError(_FFI.errno, "flux_future_then failed")


def _do_nothing(f: Any, arg: Any) -> None:
    pass


def raw_message_class(h: Any) -> Optional[type]:
    """:class:`flux._rawmsg.RawMessage` if :func:`watch` hands those out on
    handle *h* (they are answered through libflux directly), else None."""
    if _in_memory(h):
        return None
    from flux._rawmsg import RawMessage

    return RawMessage


def reactor_clock(h: Any) -> Callable[[], float]:
    """A function returning the time of handle *h*'s reactor, as
    ``h.reactor_now(reactor)`` does (libflux's own on a flux-core handle: asyncio
    reads the clock at every step, and flux-core's wrapper costs microseconds)."""
    reactor = h.get_reactor()
    if _in_memory(h):
        return lambda: float(h.reactor_now(reactor))
    return functools.partial(_libflux().flux_reactor_now, reactor)


def _in_memory(h: Any) -> bool:
    """True for the in-memory broker's handle, which makes the library's
    message watchers itself (its ``_brokermod_watch`` hook)."""
    return getattr(type(h), "_brokermod_watch", None) is not None
