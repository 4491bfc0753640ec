"""Messages taken from libflux directly: the real broker's dispatch fast lane.

flux-core's ``msg_watcher_create`` wraps every message in a
``flux.message.Message`` whose every property finds its libflux function
by name at each call: a few microseconds per request, more than the
broker's own work.  :class:`RawMessageWatcher` registers a libflux message
handler itself and hands the callback a :class:`RawMessage`: a ``Message``
subclass (so ``isinstance`` checks and flux-core's ``respond`` take it)
that asks libflux for a fact only when the handler reads it, and once.
Both need flux-core's compiled bindings; the in-memory broker's handle
keeps its own ``msg_watcher_create`` (see :func:`flux._libflux.watch`).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

from flux import _json
from flux._decoding import json_of, text_of
from flux.message import Message
from flux.util import encode_payload

from _flux._core import ffi, lib

__all__ = ["RawMessage", "RawMessageWatcher"]

_UNREAD: Any = object()


_dumps = _json.make_encoder(ensure_ascii=False)


def _encode_payload(payload: Any) -> Any:
    """``flux.util.encode_payload``, with the JSON encoder built once for
    the common case: a JSON object or array."""
    if isinstance(payload, (dict, list)):
        return _dumps(payload).encode("UTF-8", errors="surrogateescape")
    return encode_payload(payload)


def _oserror(what: str) -> OSError:
    errnum = ffi.errno
    return OSError(errnum, f"{what}: {os.strerror(errnum)}")


def _read_topic(ptr: Any) -> str:
    out = ffi.new("char *[1]")
    if lib.flux_msg_get_topic(ptr, out) < 0:
        raise _oserror("flux_msg_get_topic")
    return ffi.string(out[0]).decode("utf-8")  # type: ignore[no-any-return]


def _read_payload_str(ptr: Any) -> Optional[str]:
    if not lib.flux_msg_has_payload(ptr):
        return None
    out = ffi.new("char *[1]")
    if lib.flux_msg_get_string(ptr, out) < 0:
        raise _oserror("flux_msg_get_string")
    return text_of(ffi.string(out[0]))


def _number_reader(getter: Callable[[Any, Any], int], ctype: str, what: str) -> Callable[[Any], int]:
    def read(ptr: Any) -> int:
        out = ffi.new(ctype)
        if getter(ptr, out) < 0:
            raise _oserror(what)
        return int(out[0])

    return read


def _fact(name: str, read: Callable[[Any], Any], doc: str) -> property:
    """Property *name*: *read* from the message once; setting it goes through
    flux-core's ``Message`` setter and drops every fact read."""
    key = f"_{name}"
    inherited = getattr(Message, name)

    def get(self: "RawMessage") -> Any:
        facts = self.__dict__
        value = facts.get(key, _UNREAD)
        if value is _UNREAD:
            value = facts[key] = read(self._ptr)
        return value

    def set_(self: "RawMessage", value: Any) -> None:
        inherited.fset(self, value)
        self._forget()

    return property(get, set_, doc=doc)


_FACTS = ("_topic", "_payload_str", "_userid", "_rolemask", "_type")


class RawMessage(Message):
    """A received message, read through libflux on demand.

    Everything flux-core's ``Message`` offers works, setters included (a
    setter goes through flux-core's wrapper and drops what was read).
    """

    # What was read is kept in the instance dict (which Message has anyway):
    # a new message starts with nothing to reset.
    __slots__ = ("_ptr", "_h", "_answered")

    def __init__(self, ptr: Any, h: Any) -> None:  # pylint: disable=super-init-not-called
        # No Message.__init__: its wrapper objects are what this avoids.
        self._ptr = lib.flux_msg_incref(ptr)
        self._h = h  # the flux.Flux it came from, kept alive (and open) by this reference
        self._answered = False  # got its final answer (AnswerTracker's record)

    def __del__(self) -> None:
        ptr, self._ptr = self._ptr, None
        if ptr is not None:
            lib.flux_msg_decref(ptr)

    def _forget(self) -> None:
        for key in _FACTS:
            self.__dict__.pop(key, None)

    topic = _fact("topic", _read_topic, "The message topic.")
    payload_str = _fact("payload_str", _read_payload_str, "The payload as a string, None without one.")
    userid = _fact("userid", _number_reader(lib.flux_msg_get_userid, "uint32_t *", "flux_msg_get_userid"),
                   "The sender's userid.")
    rolemask = _fact("rolemask", _number_reader(lib.flux_msg_get_rolemask, "uint32_t *", "flux_msg_get_rolemask"),
                     "The sender's rolemask.")
    type = _fact("type", _number_reader(lib.flux_msg_get_type, "int *", "flux_msg_get_type"),
                 "The message type (FLUX_MSGTYPE_REQUEST, ...).")

    @property
    def payload(self) -> Any:
        """The payload decoded as JSON (as flux-core's: TypeError without one)."""
        return json_of(self.payload_str)

    @payload.setter
    def payload(self, value: Any) -> None:
        Message.payload.fset(self, value)  # type: ignore[attr-defined]

    @property
    def pimpl(self) -> Any:  # type: ignore[override]
        """flux-core's wrapper of this message, made on first use (setters)."""
        pimpl = self.__dict__.get("pimpl")
        if pimpl is None:
            pimpl = self.__dict__["pimpl"] = Message.InnerWrapper(handle=self._ptr)
        return pimpl

    @pimpl.setter
    def pimpl(self, value: Any) -> None:
        self.__dict__["pimpl"] = value

    @property
    def handle(self) -> Any:  # type: ignore[override]
        """The ``flux_msg_t *``."""
        return self._ptr

    @handle.setter
    def handle(self, value: Any) -> None:
        lib.flux_msg_incref(value)
        old, self._ptr = self._ptr, value
        self.pimpl = None
        self._forget()
        lib.flux_msg_decref(old)

    def _streaming(self) -> bool:
        return bool(lib.flux_msg_is_streaming(self._ptr))

    def _respond(self, payload: Any) -> None:
        """flux-core's ``Flux.respond``, on the handle the message came from."""
        if lib.flux_respond(self._h.handle, self._ptr, _encode_payload(payload)) < 0:
            raise _oserror("flux_respond")

    def _respond_error(self, errnum: int, errstr: Any) -> None:
        """flux-core's ``Flux.respond_error``, on the handle the message came from."""
        text = errstr.encode("utf-8", errors="surrogateescape") if isinstance(errstr, str) else errstr
        if text is None:
            text = ffi.NULL
        if lib.flux_respond_error(self._h.handle, self._ptr, errnum, text) < 0:
            raise _oserror("flux_respond_error")


_CALLBACK_TYPE = "void(flux_t *, flux_msg_handler_t *, const flux_msg_t *, void *)"


class RawMessageWatcher:
    """A libflux message handler calling ``callback(h, watcher, msg, None)``
    with a :class:`RawMessage`; ``start``/``stop``/``destroy`` as flux-core's."""

    def __init__(self, h: Any, callback: Callable[..., None], msgtype: int, topic: str,
                 rolemask: Optional[int] = None) -> None:
        self.callback = callback
        hptr = h.handle

        def on_message(_hptr: Any, _mh: Any, ptr: Any, _arg: Any) -> None:
            callback(h, self, RawMessage(ptr, h), None)

        self._c_callback = ffi.callback(_CALLBACK_TYPE, on_message)
        glob = ffi.new("char[]", topic.encode())  # alive until libflux copied it
        match = ffi.new("struct flux_match *", {"typemask": msgtype, "matchtag": 0, "topic_glob": glob})
        self.handle = lib.flux_msg_handler_create(hptr, match[0], self._c_callback, ffi.NULL)
        if self.handle == ffi.NULL:
            raise _oserror(f"flux_msg_handler_create {topic}")
        if rolemask:
            lib.flux_msg_handler_allow_rolemask(self.handle, rolemask)

    def start(self) -> None:
        """Start handling messages."""
        lib.flux_msg_handler_start(self.handle)

    def stop(self) -> None:
        """Stop handling messages."""
        lib.flux_msg_handler_stop(self.handle)

    def destroy(self) -> None:
        """Destroy the handler (idempotent)."""
        handle, self.handle = self.handle, None
        if handle is not None:
            lib.flux_msg_handler_destroy(handle)
        self._c_callback = None

    def __del__(self) -> None:
        self.destroy()

