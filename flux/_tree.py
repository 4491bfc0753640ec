"""Services that span the instance: the tree of brokers, seen from a module.

A Flux instance is a tree of brokers (the TBON).  A module loaded on every
rank builds a service over the whole instance the way flux-core's C
services do: each broker handles messages from its own children only, so
no broker handles O(size) messages.  Three things here, each used by
:class:`flux.brokermod.BrokerModule`:

* :class:`TreePlace`: a rank's children (from ``overlay.topology``, which
  gives the subtree of this broker and its direct children) and parent
  (``attr.get rank`` sent upstream), asked once, when first needed;
* :class:`Reducer`, behind ``@reduce_handler``: a request sent to a rank
  goes down to its children as ``TOPIC-subtree``, carrying the caller's
  credentials (so each rank's method sees who asked), each rank adds its
  own value, and the values are combined on the way up; a
  subtree that does not answer in time, or has no such module, is
  reported by rank (:class:`Reduction`);
* :class:`RankSets`: named sets of ranks, each rank adding or removing
  itself; changes are batched for a moment and sent upstream as
  flux-core's ``groups`` does, so rank 0 holds the instance's view and can
  stream each change.  A client's disconnect, or a subtree lost from the
  tree (``overlay.monitor``), removes what it stood for.
"""

from __future__ import annotations

import errno
import math
import os
import syslog
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Set, Tuple

from flux import _idset
from flux._brief import BriefHelp
from flux._constants import FLUX_NODEID_UPSTREAM, FLUX_RPC_NORESPONSE, FLUX_RPC_STREAMING
from flux._dispatch import COROUTINE, PLAIN, RequestError, encoded, exception_text, kind_of
from flux._libflux import request_facts, rpc_on_behalf
from flux._logtext import excerpt, log_verbatim
from flux._payloads import PayloadError

__all__ = ["RankSets", "Reducer", "Reduction", "TreePlace", "forward_topic", "resync_topic", "update_topic"]


def forward_topic(topic: str) -> str:
    """The topic a reduction of *topic* travels down the tree on."""
    return f"{topic}-subtree"


def update_topic(module: str, attr: str) -> str:
    """The topic batched :class:`RankSets` changes travel up the tree on."""
    return f"{module}.{attr}-update"


def resync_topic(module: str, attr: str) -> str:
    """The topic a rank whose module just started asks its children on to
    send it all they hold (:class:`RankSets`)."""
    return f"{module}.{attr}-resync"


class TreePlace:
    """Where one broker sits in the tree, asked of the broker on first use."""

    def __init__(self, h: Any, rank: int) -> None:
        self._h = h
        self.rank = rank
        self._topology: Optional[Dict[str, Any]] = None
        self._subtrees: Dict[int, Set[int]] = {}
        self._parent: Any = self  # not asked yet
        self._instance_size: Optional[int] = None

    @property
    def topology(self) -> Dict[str, Any]:
        """``overlay.topology``'s answer for this rank: ``{"rank", "size", "children"}``."""
        if self._topology is None:
            self._topology = self._h.rpc("overlay.topology", {"rank": self.rank}).get()
            for child in self._topology["children"]:
                self._subtrees[child["rank"]] = _ranks_of(child)
        return self._topology

    @property
    def children(self) -> Tuple[int, ...]:
        """The ranks of this broker's children, lowest first."""
        return tuple(child["rank"] for child in self.topology["children"])

    def subtree(self, child: int) -> Set[int]:
        """The ranks of the subtree rooted at child *child*."""
        self.topology  # noqa: B018 - fills the subtrees
        return self._subtrees[child]

    @property
    def size(self) -> int:
        """How many ranks this broker's subtree holds (itself included)."""
        return int(self.topology["size"])

    @property
    def instance_size(self) -> int:
        """How many ranks the instance has (its ``size`` attribute)."""
        if self._instance_size is None:
            self._instance_size = int(self._h.attr_get("size"))
        return self._instance_size

    @property
    def parent(self) -> Optional[int]:
        """The parent's rank (None on rank 0): its ``rank`` attribute, asked upstream."""
        if self._parent is self:
            self._parent = None if self.rank == 0 else int(
                self._h.rpc("attr.get", {"name": "rank"}, nodeid=FLUX_NODEID_UPSTREAM).get()["value"])
        return self._parent  # type: ignore[no-any-return]


def _ranks_of(tree: Dict[str, Any]) -> Set[int]:
    ranks, todo = set(), [tree]
    while todo:
        node = todo.pop()
        ranks.add(node["rank"])
        todo.extend(node["children"])
    return ranks


class Reduction(metaclass=BriefHelp):
    """The answer to a reduction: the combined *value* and who is in it.

    ``ranks`` and ``missing`` are idset strings (``"0-5,7"``): the ranks whose
    values were combined, and those that are not in it; ``errors`` says why,
    by rank: the rank whose own value failed, or the root of a subtree that
    did not answer in time or has no such module (then all of that
    subtree's ranks are missing).
    """

    __slots__ = ("value", "ranks", "missing", "errors")

    def __init__(self, value: Any, ranks: str, missing: str, errors: Dict[int, str]) -> None:
        self.value = value
        self.ranks = ranks
        self.missing = missing
        self.errors = errors

    @classmethod
    def from_answer(cls, answer: Dict[str, Any]) -> "Reduction":
        """The reduction a ``@reduce_handler`` topic answered with."""
        return cls(answer["value"], answer["ranks"], answer["missing"],
                   {int(rank): text for rank, text in answer["errors"].items()})

    @property
    def complete(self) -> bool:
        """True when every rank's value is in it."""
        return not self.missing

    def __repr__(self) -> str:  # noqa: D105
        return (f"Reduction(value={self.value!r}, ranks={self.ranks!r}, missing={self.missing!r}, "
                f"errors={self.errors!r})")


class Reducer:
    """One ``@reduce_handler``: its request callbacks, for the topic a client
    sends (:attr:`entry`) and the one its parent forwards (:attr:`forwarded`).

    *method* gives this rank's value; *combine(a, b)* folds two values into
    one.  The entry rank waits *timeout* seconds for its children; a rank
    at tree level L below it waits ``timeout * (H + 1 - L) / (H + 1)``
    (H: the deepest level), which leaves each hop back up its share of the
    time.  *failed(what, exc)* logs a failure of the module's own code.
    """

    def __init__(self, h: Any, place: TreePlace, topic: str, method: Callable[..., Any],
                 combine: Callable[[Any, Any], Any], timeout: float,
                 failed: Callable[[str, BaseException], None]) -> None:
        self._h = h
        self._place = place
        self._forward = forward_topic(topic)
        self._method = method
        self._combine = combine
        self._timeout = timeout
        self._failed = failed
        self._forward_timeout: Optional[float] = None
        #: Reductions still waiting for an answer from below, by id: held
        #: here so that they, and their timers, live until those answers come.
        self.waiting: Dict[int, "_Gather"] = {}
        if kind_of(method) == COROUTINE:
            self.kind = COROUTINE
            self.entry: Callable[..., Any] = self._entry_async
            self.forwarded: Callable[..., Any] = self._forwarded_async
        else:
            self.kind = PLAIN
            self.entry = self._entry
            self.forwarded = self._forwarded

    @property
    def timeout(self) -> float:
        """Seconds the entry rank waits (a reduction already under way keeps its own)."""
        return self._timeout

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        self._timeout = seconds
        self._forward_timeout = None

    def _budget(self, forwarded: bool) -> float:
        if not forwarded:
            return self._timeout
        if self._forward_timeout is None:
            h = self._h
            level, deepest = int(h.attr_get("tbon.level")), int(h.attr_get("tbon.maxlevel"))
            self._forward_timeout = self._timeout * (deepest + 1 - level) / (deepest + 1)
        return self._forward_timeout

    def _entry(self, msg: Any, **fields: Any) -> Any:
        return self._serve(msg, fields, forwarded=False)

    def _forwarded(self, msg: Any, **fields: Any) -> Any:
        return self._serve(msg, fields, forwarded=True)

    async def _entry_async(self, msg: Any, **fields: Any) -> Any:
        return await self._serve_async(msg, fields, forwarded=False)

    async def _forwarded_async(self, msg: Any, **fields: Any) -> Any:
        return await self._serve_async(msg, fields, forwarded=True)

    def _serve(self, msg: Any, fields: Dict[str, Any], forwarded: bool) -> Any:
        gather = _Gather(self, msg, self._budget(forwarded), forwarded)
        try:
            gather.own_value(self._method(msg, **fields))
        except Exception as exc:  # noqa: BLE001 - this rank's part fails, not the reduction
            gather.own_failed(exc)
        return gather.answer_now()

    async def _serve_async(self, msg: Any, fields: Dict[str, Any], forwarded: bool) -> Any:
        import asyncio

        budget = self._budget(forwarded)
        gather = _Gather(self, msg, budget, forwarded)
        try:
            gather.own_value(await asyncio.wait_for(self._method(msg, **fields), budget))
        except asyncio.TimeoutError:
            gather.own_failed(RequestError(errno.ETIMEDOUT, f"no value within {budget:g}s"))
        except Exception as exc:  # noqa: BLE001 - this rank's part fails, not the reduction
            gather.own_failed(exc)
        return gather.answer_now()


_UNSET: Any = object()


class _Gather:
    """One reduction at one rank: its children's answers and its own value."""

    __slots__ = ("_reducer", "_msg", "_budget", "_forwarded", "_own", "_own_error", "_answers", "_futures",
                 "_timer", "_expired", "_answered", "_deferred")

    def __init__(self, reducer: Reducer, msg: Any, budget: float, forwarded: bool) -> None:
        self._reducer = reducer
        self._msg = msg
        self._budget = budget
        self._forwarded = forwarded
        self._own: Any = _UNSET
        self._own_error = ""
        self._answers: Dict[int, Any] = {}  # child: its answer (a dict) or an error text
        self._futures: Dict[int, Any] = {}  # child: its RPC, until answered
        self._timer: Any = None
        self._expired = False
        self._answered = False
        self._deferred = False  # the handler returned: answer from a callback
        children = reducer._place.children
        if not children:
            return
        h = reducer._h
        payload = msg.payload_str
        userid, rolemask = int(msg.userid), int(msg.rolemask)
        for child in children:
            # As the caller, not as the module: every rank sees who asked.
            future = rpc_on_behalf(h, reducer._forward, payload, child, userid, rolemask)
            self._futures[child] = future
            future.then(self._child_answered, child)
        reducer.waiting[id(self)] = self
        self._timer = h.timer_watcher_create(budget, self._expire)
        self._timer.start()

    def own_value(self, value: Any) -> None:
        try:
            encoded(value)  # NaN, a set...: this rank's part fails here, saying what the method gave
        except RecursionError:
            raise ValueError("the handler gave a value nested too deep to be sent as JSON") from None
        self._own = value

    def own_failed(self, exc: BaseException) -> None:
        if isinstance(exc, RequestError):
            self._own_error = exc.strerror or str(exc)
        else:
            self._reducer._failed(f"request {self._msg.topic}", exc)
            self._own_error = exception_text(exc)

    def answer_now(self) -> Any:
        """The answer if every child has answered (or the time is up); else
        None, and the last child's answer (or the timer) sends it."""
        if self._futures and not self._expired:
            self._deferred = True
            return None
        try:
            return self._finish()
        except Exception as exc:  # noqa: BLE001 - the module's combine failed
            return self._combine_failed(exc)

    def _child_answered(self, future: Any, child: int) -> None:
        reducer = self._reducer
        del self._futures[child]
        try:
            answer = future.get()
        except OSError as exc:
            answer = exc.strerror or os.strerror(exc.errno or errno.EIO)
        except Exception:  # noqa: BLE001 - an answer too deep to decode here
            answer = "malformed answer"
        if not self._expired:
            self._answers[child] = answer
        if not self._futures:
            reducer.waiting.pop(id(self), None)
            if self._timer is not None:
                self._timer.stop()
            if self._deferred and not self._answered:
                self._send()

    def _expire(self, *args: Any) -> None:
        self._expired = True
        self._timer.stop()
        if self._deferred and not self._answered:
            self._send()

    def _send(self) -> None:
        h, msg = self._reducer._h, self._msg
        try:
            answer = self._finish()
        except Exception as exc:  # noqa: BLE001 - the module's combine failed
            try:
                answer = self._combine_failed(exc)
            except RequestError as error:
                h.respond_error(msg, error.errno, error.strerror)
                return
        try:
            text = encoded(answer)
        except RecursionError:  # a value just under the limit, nested two more levels here
            h.respond_error(msg, errno.EIO, f"{msg.topic}: the combined answer is nested too deep to be sent "
                                            f"as JSON")
            return
        h.respond(msg, text)

    def _combine_failed(self, exc: BaseException) -> Dict[str, Any]:
        """A combine failed here or below: the whole reduction fails with EIO
        at the rank asked, whatever the tree's shape.  A rank below says so
        in its answer (``failed``), and its parent passes that on."""
        if isinstance(exc, _FailedBelow):
            text = str(exc)
        else:
            reducer = self._reducer
            reducer._failed(f"request {self._msg.topic}", exc)
            topic = self._msg.topic[:-len("-subtree")] if self._forwarded else self._msg.topic
            text = f"{topic}: combine failed on rank {reducer._place.rank}: {exception_text(exc)}"
        if self._forwarded:
            return {"value": None, "ranks": "", "missing": "", "errors": {}, "failed": text}
        raise RequestError(errno.EIO, text)

    def _finish(self) -> Dict[str, Any]:
        self._answered = True
        reducer, place = self._reducer, self._reducer._place
        ranks: Set[int] = set()
        missing: Set[int] = set()
        errors: Dict[str, str] = {}
        value, have, combined = None, False, False
        if self._own_error:
            missing.add(place.rank)
            errors[str(place.rank)] = self._own_error
        else:
            value, have = self._own, True
            ranks.add(place.rank)
        for child in place.children:
            answer = self._answers.get(child)
            if not _is_answer(answer):
                missing |= place.subtree(child)
                errors[str(child)] = answer if isinstance(answer, str) and answer else (
                    f"no answer within {self._budget:g}s" if answer is None else "malformed answer")
                continue
            if isinstance(answer.get("failed"), str):  # a combine failed below
                raise _FailedBelow(answer["failed"])
            if answer["ranks"]:  # some rank below has a value
                if have:
                    value, combined = reducer._combine(value, answer["value"]), True
                else:
                    value, have = answer["value"], True
                ranks |= _idset.decode(answer["ranks"])
            missing |= _idset.decode(answer["missing"])
            errors.update(answer["errors"])
        if combined:  # this rank's own value and the children's are JSON already
            try:
                encoded(value)
            except Exception:  # noqa: BLE001 - not JSON: NaN, a set...
                raise ValueError(f"combine gave {type(value).__name__} {excerpt(repr(value))}, "
                                 f"which is not JSON") from None
        return {"value": value, "ranks": _idset.encode(ranks), "missing": _idset.encode(missing),
                "errors": errors}


class _FailedBelow(Exception):
    """A combine failed on a rank below (its text says where and how)."""


def _is_answer(answer: Any) -> bool:
    """True for a child's answer as :meth:`_Gather._finish` makes it."""
    return (isinstance(answer, dict) and "value" in answer and isinstance(answer.get("ranks"), str)
            and isinstance(answer.get("missing"), str) and isinstance(answer.get("errors"), dict))


class RankSets(metaclass=BriefHelp):
    """Named sets of ranks that span the instance, as flux-core's ``groups``.

    Declare one on a :class:`~flux.brokermod.BrokerModule` subclass
    (``members = RankSets()``) and load the module on every rank.  On each
    rank, ``self.members.add(name)`` puts this rank in set *name* and
    ``discard(name)`` takes it out.  Changes are batched for *batch*
    seconds, then applied here and sent upstream, so each rank knows the
    members within its subtree and rank 0 knows them all:
    ``members(name)`` reads them (an idset string such as ``"0-3,7"``) and
    ``async for ranks in self.members.watch(name)`` follows each change.

    ``add(name, msg)`` ties the membership to the client that sent *msg*:
    when that client disconnects, this rank leaves *name*.  When a subtree
    of brokers is lost or goes offline, its ranks leave every set.
    """

    __slots__ = ("batch", "attr")

    def __init__(self, batch: float = 0.1) -> None:
        if isinstance(batch, bool) or not isinstance(batch, (int, float)) or not math.isfinite(batch) \
                or batch < 0:
            raise ValueError(f"RankSets(batch={batch!r}): a finite number of seconds >= 0")
        self.batch = float(batch)
        self.attr = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = name

    def bind(self, h: Any, module: str, place: TreePlace,
             failed: Callable[[str, BaseException], None]) -> "BoundRankSets":
        """The sets of one module instance (the library calls this)."""
        return BoundRankSets(h, module, self.attr, self.batch, place, failed)


class _Table(dict):  # type: ignore[type-arg]
    """A dict that gives back the memory of the keys deleted from it.

    A Python dict never shrinks its table as keys go, so one that once held
    100,000 names keeps their table after they all left.  This one rebuilds
    itself once as many keys went as it holds (amortised O(1) a deletion).
    """

    __slots__ = ("_gone",)

    def __init__(self) -> None:
        super().__init__()
        self._gone = 0

    def _went(self) -> None:
        self._gone += 1
        if self._gone > len(self) + 64:
            items = list(self.items())
            self.clear()  # frees the table
            self.update(items)
            self._gone = 0

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self._went()

    def pop(self, key: Any, *default: Any) -> Any:
        """As dict.pop."""
        had = key in self
        value = super().pop(key, *default)
        if had:
            self._went()
        return value


class BoundRankSets:
    """A module instance's :class:`RankSets` (see there)."""

    def __init__(self, h: Any, module: str, attr: str, batch: float, place: TreePlace,
                 failed: Callable[[str, BaseException], None]) -> None:
        self._h = h
        self._place = place
        self._failed = failed
        self._topic = update_topic(module, attr)
        self._resync = resync_topic(module, attr)
        self._upstream_lost = False  # the parent refused the last update (logged once)
        self._self = _idset.encode([place.rank])
        self._sets: Dict[str, Set[int]] = _Table()
        self._joined: Dict[str, Optional[Tuple[str, int]]] = _Table()  # name: the client it stands for
        self._batch: Dict[str, List[Dict[str, Any]]] = {}
        self._watchers: Dict[str, List[Any]] = {}
        self._timer = h.timer_watcher_create(batch, self._flush_timer)
        self._monitor: Any = None  # overlay.monitor's stream, kept while the module runs
        self._parent: Optional[int] = None
        self._below: Optional[Set[int]] = None  # the ranks of the children's subtrees

    # what a module calls

    def add(self, name: str, msg: Any = None) -> None:
        """Put this rank in set *name*; with *msg*, until its sender disconnects.

        A rank is in a set once, on behalf of one client (or of itself), as
        with flux-core's ``groups``: a second ``add`` of a name this rank is
        already in is refused, so a second client never believes it holds
        a membership that the first one's disconnect would end.  Check
        :meth:`joined` first to add only when needed.

        :raises RequestError: EEXIST (in a handler, the caller gets it) if
            this rank is already in set *name*.
        :raises PayloadError: (a ValueError; in a handler, the caller gets
            EPROTO) if *name* is not a string UTF-8 can carry.
        """
        _check_name(name)
        if name in self._joined:
            raise RequestError(errno.EEXIST, f"rank {self._place.rank} is already in set {excerpt(name)!r}")
        self._joined[name] = None if msg is None else _client_of(msg)
        self._append(name, {"ranks": self._self, "set": True})

    def discard(self, name: str) -> None:
        """Take this rank out of set *name* (nothing if it is not in it)."""
        if self._joined.pop(name, _UNSET) is not _UNSET:
            self._append(name, {"ranks": self._self, "set": False})

    def joined(self, name: str) -> bool:
        """True if this rank put itself in set *name*."""
        return name in self._joined

    def members(self, name: str) -> str:
        """The members of *name* within this rank's subtree (on rank 0: all), as an idset.

        Like :meth:`names`, it shows changes once their batch is applied
        (``batch`` seconds after the first, or at :meth:`flush`), on this
        rank too; :meth:`joined` tells at once whether this rank added itself.
        """
        return _idset.encode(self._sets.get(name, ()))

    def names(self) -> List[str]:
        """The names of the sets with members here."""
        return sorted(self._sets)

    async def watch(self, name: str) -> AsyncIterator[str]:
        """The members of *name* now, then after each batch of changes to it.

        Watching a name holds nothing past the watch: what a name no rank
        is in costs ends with its last watcher (a guest asking about any
        number of names leaves nothing behind).
        """
        import asyncio

        queue: "asyncio.Queue[str]" = asyncio.Queue()
        watchers = self._watchers.setdefault(name, [])
        watchers.append(queue)
        try:
            yield self.members(name)
            while True:
                yield await queue.get()
        finally:
            watchers.remove(queue)
            if not watchers and self._watchers.get(name) is watchers:
                del self._watchers[name]

    # what the library calls

    def start(self) -> None:
        """Find the parent, and follow the children's subtrees (``overlay.monitor``)
        to drop lost ones.

        What the parent holds for this subtree came from this module's
        previous run, if any (it may have ended without saying so): the
        parent drops it (``clear``), and the children send again all they
        hold (``resync``), which goes up as any change does.
        """
        self._parent = self._place.parent
        if self._parent is not None:
            mine = _idset.encode(self._subtree_below() | {self._place.rank})
            self._send_upstream({"update": {}, "clear": mine})
        if self._place.children:
            self._monitor = self._h.rpc("overlay.monitor", None, flags=FLUX_RPC_STREAMING)
            self._monitor.then(self._subtree_status)
            # Children whose module ran before this one's sent their changes
            # to a rank without it (logged there, lost): ask them again.
            for child in self._place.children:
                self._h.rpc(self._resync, None, nodeid=child, flags=FLUX_RPC_NORESPONSE)

    def stop(self) -> None:
        """The module is stopping: its own memberships end with it, so the
        parent hears that this rank left them (what the children's subtrees
        hold stays: their modules still run)."""
        for name in list(self._joined):
            self.discard(name)
        self.flush(final=True)

    def resync(self, msg: Any) -> Dict[str, Any]:
        """The parent's module started: send it everything this subtree holds."""
        for name, members in self._sets.items():
            self._batch.setdefault(name, []).append({"ranks": _idset.encode(members), "set": True})
        self.flush()
        return {}

    def update(self, msg: Any) -> Dict[str, Any]:
        """A child's batch of changes (the ``update_topic`` request); answered
        with ``{}`` so the child learns whether they arrived.  ``clear`` (an
        idset) first takes those ranks out of every set: a child's module
        starting again says so for its whole subtree.

        :raises RequestError: EPROTO, one line, and nothing changes, when
            the update is malformed or names a rank outside the children's
            subtrees.
        """
        try:
            payload = msg.payload
        except Exception:  # noqa: BLE001 - no payload, or not JSON: refused below
            payload = None
        update = payload.get("update") if isinstance(payload, dict) else None
        clear = payload.get("clear", "") if isinstance(payload, dict) else None
        if not isinstance(update, dict) or not isinstance(clear, str) or not all(
                isinstance(changes, list) and all(_is_change(c) for c in changes) for changes in update.values()):
            raise RequestError(errno.EPROTO, f"{self._topic}: expected {{\"update\": {{NAME: [CHANGE...]}}, "
                                             f"\"clear\": IDSET}}")
        for text in [clear] + [change["ranks"] for changes in update.values() for change in changes]:
            self._check_below(text)
        if clear:
            for name in set(self._sets) | set(self._batch):
                self._append(name, {"ranks": clear, "set": False})
        for name, changes in update.items():
            self._append(name, *changes)
        return {}

    def _subtree_below(self) -> Set[int]:
        if self._below is None:
            below: Set[int] = set()
            for child in self._place.children:
                below |= self._place.subtree(child)
            self._below = below
        return self._below

    def _check_below(self, text: str) -> None:
        """Refuse an idset naming a rank outside the children's subtrees."""
        try:
            ranks = _idset.decode(text, limit=self._place.instance_size)
        except ValueError as exc:
            raise RequestError(errno.EPROTO, f"{self._topic}: {exc}") from None
        outside = ranks - self._subtree_below()
        if outside:
            raise RequestError(errno.EPROTO, f"{self._topic}: rank {min(outside)} is not below rank "
                                             f"{self._place.rank}")

    def disconnected(self, msg: Any) -> None:
        """A client disconnected: leave the sets it joined here."""
        self.flush()  # its joins first, as groups does
        gone = _client_of(msg)
        for name, client in list(self._joined.items()):
            if client == gone:
                self.discard(name)

    def flush(self, final: bool = False) -> None:
        """Apply the batch here and send it upstream (*final*: the module is
        stopping, and will not read the parent's answer)."""
        batch = self._batch
        if not batch:
            return
        for name, changes in batch.items():
            batch[name] = _merged(changes)
        self._batch = {}
        self._timer.stop()
        if self._parent is not None:
            self._send_upstream({"update": batch}, final)
        for name, changes in batch.items():
            members = self._sets.setdefault(name, set())
            for change in changes:
                ranks = _idset.decode(change["ranks"])
                if change["set"]:
                    members |= ranks
                else:
                    members -= ranks
            if not members:
                del self._sets[name]  # an empty set is no set: nothing kept for it
            watchers = self._watchers.get(name)
            if watchers:
                now = _idset.encode(members)
                for queue in watchers:
                    queue.put_nowait(now)

    def _send_upstream(self, payload: Dict[str, Any], final: bool = False) -> None:
        # To the parent by its rank, not FLUX_NODEID_UPSTREAM: a real broker
        # bounces an upstream request forever if its module is not loaded there.
        try:
            if final:
                self._h.rpc(self._topic, payload, nodeid=self._parent, flags=FLUX_RPC_NORESPONSE)
            else:
                self._h.rpc(self._topic, payload, nodeid=self._parent).then(self._update_answered)
        except Exception as exc:  # noqa: BLE001 - logged; this rank's view still changes
            self._failed("rank sets update", exc)

    def _update_answered(self, future: Any) -> None:
        """The parent took an update, or refused it (no such module there):
        say so once, in the log, and again when it takes one; the parent
        asks for everything when its module starts (:meth:`resync`)."""
        try:
            future.get()
        except OSError as exc:
            if not self._upstream_lost:
                self._upstream_lost = True
                log_verbatim(self._h, syslog.LOG_ERR,
                             f"{self._topic}: rank {self._parent} did not take this subtree's changes "
                             f"({exc.strerror}); they reach it once its module starts there")
            return
        if self._upstream_lost:
            self._upstream_lost = False
            log_verbatim(self._h, syslog.LOG_INFO, f"{self._topic}: rank {self._parent} takes this subtree's "
                                                   f"changes again")

    def _flush_timer(self, *args: Any) -> None:
        try:
            self.flush()
        except Exception as exc:  # noqa: BLE001 - logged, module survives
            self._failed("rank sets flush", exc)

    def _append(self, name: str, *changes: Dict[str, Any]) -> None:
        was_empty = not self._batch
        self._batch.setdefault(name, []).extend(changes)
        if was_empty:
            self._timer.reset()  # not start(): a one-shot timer that fired would fire at once

    def _subtree_status(self, future: Any) -> None:
        try:
            self.flush()
            status = future.get()
            if status["status"] in ("lost", "offline"):
                lost = self._place.subtree(status["rank"])
                for name, members in self._sets.items():
                    gone = members & lost
                    if gone:
                        self._append(name, {"ranks": _idset.encode(gone), "set": False})
        except Exception as exc:  # noqa: BLE001 - logged, module survives
            self._failed("overlay.monitor", exc)
        finally:
            future.reset()


def _check_name(name: Any) -> None:
    if not isinstance(name, str):
        raise TypeError(f"a rank set's name is a string, not {type(name).__name__}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise PayloadError(f"set name {name!r} is not text UTF-8 can carry") from None


def _client_of(msg: Any) -> Tuple[str, int]:
    facts = request_facts(msg)
    return facts.sender, facts.userid


def _is_change(change: Any) -> bool:
    return (isinstance(change, dict) and isinstance(change.get("ranks"), str)
            and isinstance(change.get("set"), bool))


def _merged(changes: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """*changes* as one, when they all add or all remove (as groups reduces a batch)."""
    if len(changes) < 2 or any(change["set"] != changes[0]["set"] for change in changes):
        return changes
    ranks: Set[int] = set()
    for change in changes:
        ranks |= _idset.decode(change["ranks"])
    return [{"ranks": _idset.encode(ranks), "set": changes[0]["set"]}]

