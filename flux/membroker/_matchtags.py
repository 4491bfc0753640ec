"""Matchtags, handed out and taken back as libflux does for one handle.

A real handle gives each RPC the lowest free matchtag and takes it back
when the RPC's future is destroyed after its final response.  So a
client's RPCs, made one after another, reuse the same tag, and a response
sent after a request's final answer reaches whichever RPC holds the tag
by then.  :class:`MatchtagPool` keeps that state, so that the in-memory
broker can tell such a stray response from a legitimate one.  (libflux
also lets a future destroyed before its final response leak its tag
until that response comes; here the pool holds such a future until then,
which frees the tag at the same moment.)
"""

import heapq
from typing import Any, Dict, List, Optional, Set


class MatchtagPool:
    """The matchtags of one handle and the RPCs holding them."""

    __slots__ = ("_free", "_next", "_open", "_answered")

    def __init__(self) -> None:
        self._free: List[int] = []
        self._next = 1  # 0 is FLUX_MATCHTAG_NONE
        self._open: Dict[int, Any] = {}  # RPC future waiting for its final response
        self._answered: Set[int] = set()  # final response in; the future lives on

    def alloc(self, future: Any) -> int:
        """A matchtag for *future*'s RPC: the lowest free one."""
        if self._free:
            tag = heapq.heappop(self._free)
        else:
            tag = self._next
            self._next += 1
        self._open[tag] = future
        return tag

    def take(self, tag: int, final: bool) -> Optional[Any]:
        """The future waiting for a response with *tag* (its RPC is over if
        the response is *final*), or None: no RPC waits for it."""
        future = self._open.get(tag)
        if future is not None and final:
            del self._open[tag]
            self._answered.add(tag)
        return future

    def peek(self, tag: int) -> Optional[Any]:
        """The future waiting for a response with *tag*, left waiting."""
        return self._open.get(tag)

    def reclaim(self, tag: int) -> None:
        """Free *tag* now, as libflux does for a response no handler took."""
        self._open.pop(tag, None)
        self._answered.discard(tag)
        heapq.heappush(self._free, tag)

    def release(self, tag: int) -> None:
        """The future of *tag*'s answered RPC is destroyed: free the tag."""
        if tag in self._answered:
            self._answered.discard(tag)
            heapq.heappush(self._free, tag)
