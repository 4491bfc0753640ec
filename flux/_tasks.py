"""Handlers that run as asyncio tasks on the module's reactor.

Coroutine handlers, streams (generators and async generators), and
coroutine event and timer handlers run as tasks of one
:class:`flux._aio.ReactorLoop` per module.  ``TOPIC-cancel`` ends the
sender's own stream, and ``NAME.disconnect`` drops a departed client's
requests.  :class:`~flux._dispatch.Dispatcher` makes the one
:class:`TaskRunner` of a module when the first such handler is
registered, so a module without any never imports asyncio.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import json
import time
from typing import Any, Callable, Dict, Optional

from flux._aio import ReactorLoop
from flux._dispatch import COROUTINE, RequestError, encoded
from flux._libflux import is_noresponse, is_streaming, request_facts
from flux._payloads import PayloadSchema

__all__ = ["TaskRunner"]

_clock = time.perf_counter


class TaskRunner:
    """Run one module's task handlers.

    *dispatcher* is the module's :class:`~flux._dispatch.Dispatcher`; the
    runner uses its ``answer_with``, ``request_failed`` and ``failed``, so
    answers and failures follow the same rules as plain handlers'.
    """

    def __init__(self, dispatcher: Any, h: Any) -> None:
        self._dispatcher = dispatcher
        self._h = h
        self._loop = ReactorLoop(h)
        # Requests being served, by sender, then by matchtag (0: sent
        # without one): every one a disconnect must end, with or without
        # a matchtag, and the ones a cancel names.
        # (An insertion-ordered dict is the set: one removal is O(1).)
        self._pending: Dict[str, Dict[int, Dict[_PendingRequest, None]]] = {}

    def run_reactor(self) -> int:
        """Run the reactor with the loop running; then end the tasks still open
        (their ``finally`` runs) and close the loop."""
        loop = self._loop
        asyncio.events._set_running_loop(loop)
        try:
            return int(self._h.reactor_run())
        finally:
            asyncio.events._set_running_loop(None)
            loop.finish([task for task in asyncio.all_tasks(loop) if not task.done()])
            loop.close()

    def starter(self) -> Callable[[Any, str], Any]:
        """For event and timer coroutines: ``start(coro, what)`` runs *coro*
        as a task, logging its failure as *what*'s."""
        loop = self._loop
        failed = self._dispatcher.failed

        async def guarded(coro: Any, what: str) -> None:
            try:
                await coro
            except asyncio.CancelledError:
                pass
            except BaseException as exc:  # noqa: BLE001 - logged, module survives
                failed(what, exc)

        def start(coro: Any, what: str) -> Any:
            return loop.start_task(guarded(coro, what))

        return start

    def request_callback(
        self, method: Callable[..., Any], schema: Optional[PayloadSchema], kind: str, stats: Any, answered: Any
    ) -> Callable[..., None]:
        """The callback of a request handler that is a coroutine (*kind*
        ``"coroutine"``) or a stream (a generator of either kind)."""
        loop = self._loop
        pending = self._pending
        stream = kind != COROUTINE
        request_failed = self._dispatcher.request_failed

        def callback(h: Any, watcher: Any, msg: Any, arg: Any) -> None:
            started = _clock()
            try:
                if stream and not is_streaming(msg):
                    raise _stream_error(msg)
                if stream and is_noresponse(msg):
                    raise _unread_stream_error(msg)
                body = method(msg) if schema is None else method(msg, **schema.fields_of(msg))
            except BaseException as exc:  # noqa: BLE001 - reported to the caller
                stats.count(_clock() - started, True)
                request_failed(msg, exc, answered)
                return
            if stream:
                request: Optional[_PendingRequest] = _PendingRequest(msg, started)
                task = loop.start_task(self._serve_stream(body, request, answered, stats))
            else:
                request = None
                task = loop.start_task(self._serve(body, msg, answered, stats, started))
            if task.done():  # it never waited (and counted itself)
                return
            # It waits: until it is done, a cancel or disconnect may end it.
            facts = request_facts(msg)
            if request is None:
                request = _PendingRequest(msg, started)
            request.task = task
            request.sender, request.userid, request.matchtag = facts.sender, facts.userid, facts.matchtag
            pending.setdefault(facts.sender, {}).setdefault(facts.matchtag, {})[request] = None
            task.add_done_callback(lambda task: _forget(pending, request))

        return callback

    async def _serve(self, coro: Any, msg: Any, answered: Any, stats: Any, started: float) -> None:
        failed = False
        try:
            result = await coro
            if result is not None:
                self._dispatcher.answer_with(msg, result, answered)
        except asyncio.CancelledError:
            pass  # the caller went away: nothing to answer
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            failed = True
            self._dispatcher.request_failed(msg, exc, answered)
        stats.count(_clock() - started, failed)

    async def _serve_stream(self, body: Any, request: "_PendingRequest", answered: Any, stats: Any) -> None:
        msg = request.msg
        respond = self._h.respond
        try:
            if inspect.isasyncgen(body):
                async for value in body:
                    respond(msg, encoded(value))
            else:
                for value in body:
                    respond(msg, encoded(value))
            self._h.respond_error(msg, errno.ENODATA)
        except asyncio.CancelledError:
            if request.cancelled:  # TOPIC-cancel ends the stream with ENODATA
                self._h.respond_error(msg, errno.ENODATA)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            request.failed = True
            self._dispatcher.request_failed(msg, exc, answered)
        finally:
            if inspect.isasyncgen(body):
                await body.aclose()
            else:
                body.close()
            stats.count(_clock() - request.started, request.failed)

    def cancel_callback(self, topic: str) -> Callable[..., None]:
        """``TOPIC-cancel`` with ``{"matchtag": N}``: end the sender's own
        streams N (every one, if the sender reused the matchtag)."""
        pending = self._pending

        def callback(h: Any, watcher: Any, msg: Any, arg: Any) -> None:
            try:
                matchtag = json.loads(msg.payload_str or "null")["matchtag"]
                facts = request_facts(msg)
            except Exception:  # noqa: BLE001 - anything from anyone (RecursionError too)
                return  # a cancel gets no response, even a malformed one
            if isinstance(matchtag, bool) or not isinstance(matchtag, int) or not matchtag:
                return
            for request in list(pending.get(facts.sender, {}).get(matchtag, ())):
                if request.userid == facts.userid and request.msg.topic == topic:
                    request.cancelled = True
                    request.task.cancel()

        return callback

    def disconnect_callback(self) -> Callable[..., None]:
        """``NAME.disconnect``: the sender closed its handle; end all of its
        requests, with a matchtag or without."""
        pending = self._pending

        def callback(h: Any, watcher: Any, msg: Any, arg: Any) -> None:
            facts = request_facts(msg)
            for requests in list(pending.get(facts.sender, {}).values()):
                for request in list(requests):
                    if request.userid == facts.userid:
                        request.task.cancel()

        return callback


def _stream_error(msg: Any) -> OSError:
    return RequestError(errno.EPROTO, f"{msg.topic} is a stream: send the request with FLUX_RPC_STREAMING")


def _unread_stream_error(msg: Any) -> OSError:
    # No response reaches the sender (libflux sends none), so the stream
    # would run with nobody to read or cancel it: it is not started.
    return RequestError(errno.EPROTO, f"{msg.topic} is a stream, and FLUX_RPC_NORESPONSE would leave nobody "
                                      f"to read it: send it without FLUX_RPC_NORESPONSE")


class _PendingRequest:
    """A request whose handler runs as a task and waits (or streams).

    ``sender`` and ``userid`` are filled in once the task waits (only then
    can a cancel or a disconnect reach it).
    """

    __slots__ = ("msg", "sender", "userid", "matchtag", "task", "cancelled", "failed", "started")

    def __init__(self, msg: Any, started: float) -> None:
        self.msg = msg
        self.sender = ""
        self.userid = -1
        self.matchtag = 0
        self.task: Any = None
        self.cancelled = False
        self.failed = False
        self.started = started


_GONE = object()


def _forget(pending: Dict[str, Dict[int, Dict[_PendingRequest, None]]], request: _PendingRequest) -> None:
    by_matchtag = pending.get(request.sender)
    requests = None if by_matchtag is None else by_matchtag.get(request.matchtag)
    if requests is None or requests.pop(request, _GONE) is _GONE:
        return
    if not requests:
        del by_matchtag[request.matchtag]
        if not by_matchtag:
            del pending[request.sender]
