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

import os
from typing import Any, Callable, Optional

from flux.message import Message
from flux.util import encode_payload

from _flux._core import ffi, lib

__all__ = ["RawMessage", "RawMessageWatcher"]

_UNREAD: Any = object()


def _oserror(what: str) -> OSError:
    errnum = ffi.errno
    return OSError(errnum, f"{what}: {os.strerror(errnum)}")


class RawMessage(Message):
    """A received message, read through libflux on demand.

    Everything flux-core's ``Message`` offers works, setters included (a
    setter goes through flux-core's wrapper and drops what was read).
    """

    __slots__ = ("_ptr", "_hptr", "_topic", "_payload_str", "_userid", "_rolemask", "_answered")

    def __init__(self, ptr: Any, hptr: Any) -> None:  # pylint: disable=super-init-not-called
        # No Message.__init__: its wrapper objects are what this avoids.
        self._ptr = lib.flux_msg_incref(ptr)
        self._hptr = hptr
        self._topic: Optional[str] = None
        self._payload_str: Any = _UNREAD
        self._userid: Optional[int] = None
        self._rolemask: Optional[int] = None
        self._answered = False  # got its final answer (AnswerTracker's record)

    def __del__(self) -> None:
        ptr, self._ptr = self._ptr, None
        if ptr is not None:
            lib.flux_msg_decref(ptr)

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

    def _forget(self) -> None:
        self._topic = self._userid = self._rolemask = None
        self._payload_str = _UNREAD

    @property
    def topic(self) -> str:  # type: ignore[override]
        """The message topic."""
        topic = self._topic
        if topic is None:
            out = ffi.new("char *[1]")
            if lib.flux_msg_get_topic(self._ptr, out) < 0:
                raise _oserror("flux_msg_get_topic")
            topic = self._topic = ffi.string(out[0]).decode("utf-8")
        return topic

    @topic.setter
    def topic(self, value: str) -> None:
        Message.topic.fset(self, value)  # type: ignore[attr-defined]
        self._forget()

    @property
    def payload_str(self) -> Optional[str]:  # type: ignore[override]
        """The payload as a string, None without one."""
        text = self._payload_str
        if text is _UNREAD:
            text = None
            if lib.flux_msg_has_payload(self._ptr):
                out = ffi.new("char *[1]")
                if lib.flux_msg_get_string(self._ptr, out) < 0:
                    raise _oserror("flux_msg_get_string")
                text = ffi.string(out[0]).decode("utf-8")
            self._payload_str = text
        return text  # type: ignore[no-any-return]

    @payload_str.setter
    def payload_str(self, value: Any) -> None:
        Message.payload_str.fset(self, value)  # type: ignore[attr-defined]
        self._forget()

    @property
    def userid(self) -> int:  # type: ignore[override]
        """The sender's userid."""
        userid = self._userid
        if userid is None:
            userid = self._userid = self._u32(lib.flux_msg_get_userid, "flux_msg_get_userid")
        return userid

    @userid.setter
    def userid(self, value: int) -> None:
        Message.userid.fset(self, value)  # type: ignore[attr-defined]
        self._forget()

    @property
    def rolemask(self) -> int:  # type: ignore[override]
        """The sender's rolemask."""
        rolemask = self._rolemask
        if rolemask is None:
            rolemask = self._rolemask = self._u32(lib.flux_msg_get_rolemask, "flux_msg_get_rolemask")
        return rolemask

    @rolemask.setter
    def rolemask(self, value: int) -> None:
        Message.rolemask.fset(self, value)  # type: ignore[attr-defined]
        self._forget()

    def _u32(self, getter: Callable[[Any, Any], int], what: str) -> int:
        out = ffi.new("uint32_t *")
        if getter(self._ptr, out) < 0:
            raise _oserror(what)
        return int(out[0])

    def _streaming(self) -> bool:
        return bool(lib.flux_msg_is_streaming(self._ptr))

    def _respond(self, payload: Any) -> None:
        """flux-core's ``Flux.respond``, on the handle the message came from."""
        if lib.flux_respond(self._hptr, self._ptr, encode_payload(payload)) < 0:
            raise _oserror("flux_respond")

    def _respond_error(self, errnum: int, errstr: Any) -> None:
        """flux-core's ``Flux.respond_error``, on the handle the message came from."""
        text = errstr.encode("utf-8", errors="surrogateescape") if isinstance(errstr, str) else errstr
        if text is None:
            text = ffi.NULL
        if lib.flux_respond_error(self._hptr, self._ptr, errnum, text) < 0:
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
            callback(h, self, RawMessage(ptr, hptr), None)

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

