"""Messages as the in-memory broker carries them (RFC 3, minus the wire)."""

import errno
import os
from typing import Any, Optional

from flux._decoding import json_of, text_of
from flux._json import make_encoder
from flux._libflux import RequestFacts

from flux._constants import (  # noqa: F401 - re-exported
    FLUX_MSGTYPE_REQUEST,
    FLUX_MSGTYPE_RESPONSE,
    FLUX_MSGTYPE_EVENT,
    FLUX_MSGTYPE_CONTROL,
    FLUX_MSGTYPE_ANY,
    FLUX_ROLE_NONE,
    FLUX_ROLE_OWNER,
    FLUX_ROLE_USER,
    FLUX_ROLE_LOCAL,
    FLUX_ROLE_ALL,
    FLUX_RPC_NORESPONSE,
    FLUX_RPC_STREAMING,
    FLUX_NODEID_ANY,
    FLUX_NODEID_UPSTREAM,
    FLUX_MATCHTAG_NONE,
    FLUX_POLLIN,
    FLUX_POLLOUT,
    FLUX_POLLERR,
)

_TYPE_NAMES = {
    FLUX_MSGTYPE_REQUEST: "request",
    FLUX_MSGTYPE_RESPONSE: "response",
    FLUX_MSGTYPE_EVENT: "event",
    FLUX_MSGTYPE_CONTROL: "control",
}


#: json.dumps(ensure_ascii=False), without its set-up at each call.
_dumps = make_encoder(ensure_ascii=False)


def encode_payload(payload: Any) -> Optional[bytes]:
    """Encode a payload the way ``flux.Flux.respond`` and ``rpc`` do.

    None stays absent, a str is sent as its UTF-8 text (not JSON-quoted),
    bytes are sent as they are, anything else as JSON.
    """
    if payload is None:
        return None
    if isinstance(payload, str):
        return payload.encode("utf-8", errors="surrogateescape")
    if isinstance(payload, (bytes, bytearray)):
        return bytes(payload)
    return _dumps(payload).encode("utf-8", "surrogateescape")


def msg_typestr(msg_type: int) -> str:
    """The name of message type *msg_type*, as flux-core's ``flux.message.msg_typestr``."""
    return _TYPE_NAMES.get(msg_type, "unknown")


class Message:
    """A message, offering what ``flux.message.Message`` offers and no more.

    ``topic``, ``payload`` (the payload decoded as JSON; TypeError when
    there is none), ``payload_str`` (None when there is none), ``type``,
    ``type_str``, ``userid``, ``rolemask``, ``decode()`` and ``handle``.
    Like flux-core's, it takes attributes a module sets on it.  What
    libflux knows of a message beyond that (matchtag, flags, sender) is
    private here, as it is behind ``handle`` there: see
    :func:`flux.brokermod.request_facts`.
    """

    __slots__ = (
        "type",
        "topic",
        "_payload",
        "userid",
        "rolemask",
        "_flags",
        "_matchtag",
        "_nodeid",
        "_errnum",
        "_errstr",
        "_seq",
        "_sender",
        "_answered",
        "__weakref__",
        "__dict__",  # a module may set attributes of its own, as on flux-core's
    )

    def __init__(
        self,
        type_id: int = FLUX_MSGTYPE_REQUEST,
        topic: str = "",
        payload: Optional[bytes] = None,
        userid: int = 0,
        rolemask: int = FLUX_ROLE_NONE,
        flags: int = 0,
        matchtag: int = FLUX_MATCHTAG_NONE,
        nodeid: int = FLUX_NODEID_ANY,
    ) -> None:
        self.type = type_id
        self.topic = topic
        self._payload = payload
        self.userid = userid
        self.rolemask = rolemask
        self._flags = flags
        self._matchtag = matchtag
        self._nodeid = nodeid
        self._errnum = 0
        self._errstr: Optional[str] = None
        self._seq = 0
        self._sender: Any = None
        self._answered = False  # a request whose final response was sent

    @classmethod
    def from_event_encode(cls, topic: str, payload: Any = None) -> "Message":
        """An event message, as flux-core's ``Message.from_event_encode`` makes."""
        return cls(FLUX_MSGTYPE_EVENT, topic, encode_payload(payload))

    @property
    def handle(self) -> Any:
        """What flux-core's is the raw ``flux_msg_t *``: here, the message
        itself; or, for a request a module received where flux-core is
        installed, a ``flux_msg_t *`` copy that libflux's ``flux_respond*()``
        answer (see :mod:`flux.membroker._libflux_bridge`)."""
        if "_libflux_receiver" in self.__dict__:
            from flux.membroker._libflux_bridge import c_request

            return c_request(self)
        return self

    @property
    def payload_str(self) -> Optional[str]:
        """The payload as text, or None when there is none."""
        if self._payload is None:
            return None
        # libflux hands out the payload as a C string: it ends at a NUL.
        return text_of(self._payload.split(b"\0", 1)[0])

    @payload_str.setter
    def payload_str(self, value: Optional[str]) -> None:
        self._payload = None if value is None else value.encode("utf-8")

    @property
    def payload(self) -> Any:
        """The payload decoded as JSON (TypeError when there is none)."""
        return json_of(self.payload_str)

    @payload.setter
    def payload(self, value: Any) -> None:
        self._payload = encode_payload(value)

    @property
    def type_str(self) -> str:
        """The message type as a word: request, response, event, control."""
        return msg_typestr(self.type)

    @property
    def _streaming(self) -> bool:
        return bool(self._flags & FLUX_RPC_STREAMING)

    @property
    def _noresponse(self) -> bool:
        return bool(self._flags & FLUX_RPC_NORESPONSE)

    def _brokermod_facts(self) -> RequestFacts:
        """What libflux would tell of this request (see flux._libflux)."""
        return RequestFacts(self._streaming, self._matchtag, route_of(self._sender), self.userid)

    def _brokermod_streaming(self) -> bool:
        """flux_msg_is_streaming() of this request (see flux._libflux)."""
        return bool(self._flags & FLUX_RPC_STREAMING)

    def _brokermod_noresponse(self) -> bool:
        """flux_msg_is_noresponse() of this request (see flux._libflux)."""
        return bool(self._flags & FLUX_RPC_NORESPONSE)

    def decode(self) -> Any:
        """Return ``(type, topic, payload_str)``; OSError for an error response."""
        if self.type == FLUX_MSGTYPE_RESPONSE and self._errnum:
            # flux_response_decode() fails; flux-core's wrapper raises with
            # the errno's name and text, not the response's error text
            # (measured on 0.88: "ENOSPC: No space left on device").
            raise libflux_error(self._errnum)
        return self.type, self.topic, self.payload_str

    def __getattr__(self, name: str) -> Any:
        from flux.membroker._surface import missing

        raise missing("Message", self, name)

    def __repr__(self) -> str:
        return (
            f"<Message {self.type_str} {self.topic!r} userid={self.userid} "
            f"rolemask={self.rolemask:#x}>"
        )


def libflux_error(errnum: int) -> OSError:
    """The OSError flux-core's bindings raise when a libflux call fails
    with *errnum*: ``OSError(errnum, "ENOENT: No such file or directory")``."""
    return OSError(errnum, f"{errno.errorcode.get(errnum, f'Errno{errnum}')}: {os.strerror(errnum)}")


def from_flux_core(message: Any) -> Message:
    """An in-memory copy of flux-core's ``flux.message.Message`` *message*:
    what ``flux_send()`` reads of it (see :func:`from_libflux`).  Anything
    else is a TypeError."""
    if type(message).__module__ != "flux.message" or not hasattr(message, "pimpl"):
        raise TypeError(
            f"send() takes a flux.membroker.Message or flux-core's flux.message.Message, "
            f"not {type(message).__name__}"
        )
    return from_libflux(message.handle)


def from_libflux(ptr: Any) -> Message:
    """An in-memory copy of libflux message *ptr* (a ``flux_msg_t *``): its
    type, topic, payload (up to a NUL), matchtag, flags and nodeid."""
    from _flux._core import ffi, lib

    kind = ffi.new("int *")
    lib.flux_msg_get_type(ptr, kind)
    topic = ffi.new("char **")
    text = ffi.string(topic[0]).decode("utf-8", "surrogateescape") if lib.flux_msg_get_topic(ptr, topic) == 0 else ""
    number = ffi.new("uint32_t *")
    matchtag = int(number[0]) if lib.flux_msg_get_matchtag(ptr, number) == 0 else FLUX_MATCHTAG_NONE
    nodeid = int(number[0]) if lib.flux_msg_get_nodeid(ptr, number) == 0 else FLUX_NODEID_ANY
    flags = (FLUX_RPC_STREAMING if lib.flux_msg_is_streaming(ptr) else 0) | (
        FLUX_RPC_NORESPONSE if lib.flux_msg_is_noresponse(ptr) else 0
    )
    data = ffi.new("void **")
    size = ffi.new("size_t *")
    payload = None
    if lib.flux_msg_get_payload(ptr, data, size) == 0 and size[0]:
        payload = bytes(ffi.buffer(data[0], size[0])).split(b"\0", 1)[0]
    return Message(kind[0], text, payload, flags=flags, matchtag=matchtag, nodeid=nodeid)


def _register() -> None:
    from flux.membroker._surface import register_stand_in

    register_stand_in("Message", Message)


_register()


def route_of(sender: Any) -> str:
    """The route identity of a sending handle, as a real broker's uuid stands for it."""
    return sender._route if sender is not None else ""
