"""What a handler may need to know about a request beyond flux-core's Message.

flux-core's ``Message`` (0.88) has no ``matchtag``, ``streaming`` or sender:
those facts exist only through libflux calls on ``msg.handle``.
:func:`request_facts` reads them on both brokers: through libflux for a
flux-core message, and through the in-memory broker's own record of the
message (its ``_brokermod_facts`` and ``_brokermod_streaming`` hooks) for
an in-memory one.
"""

from typing import Any, NamedTuple

__all__ = ["RequestFacts", "request_facts"]


class RequestFacts(NamedTuple):
    """Facts of one request, the same on a real and an in-memory broker."""

    #: True for a request sent with FLUX_RPC_STREAMING.
    streaming: bool
    #: The matchtag the sender chose (0 for a request that wants no answer).
    matchtag: int
    #: The sending client's identity (its route), usable as a dict key.
    sender: str
    #: The sender's userid.
    userid: int


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


def request_facts(msg: Any) -> RequestFacts:
    """The :class:`RequestFacts` of request *msg*."""
    facts = getattr(type(msg), "_brokermod_facts", None)
    if facts is not None:
        return facts(msg)  # type: ignore[no-any-return]
    lib = _libflux()
    ptr = msg.handle
    tag = _FFI.new("uint32_t *")
    if lib.flux_msg_get_matchtag(ptr, tag) < 0:
        raise OSError("flux_msg_get_matchtag failed")
    route = lib.flux_msg_route_first(ptr)
    sender = _FFI.string(route).decode() if route != _FFI.NULL else ""
    return RequestFacts(bool(lib.flux_msg_is_streaming(ptr)), int(tag[0]), sender, int(msg.userid))
