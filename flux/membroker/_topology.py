"""The tree of brokers (TBON) a real instance of a given size would build.

A real instance arranges its brokers by the ``tbon.topo`` attribute
(flux-core's overlay ``topology.c``): ``kary:K`` (the default is
``kary:32``; ``kary:0`` is flat: every rank a child of rank 0),
``binomial``, or ``mincrit[:K]``.  :class:`Topology` builds the same
parents, so the in-memory broker routes upstream requests, answers
``overlay.topology`` and sets ``tbon.level``/``tbon.maxlevel``/
``tbon.descendants`` exactly as that instance would.  ``custom``
topologies (a TOML host list) are not simulated.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

__all__ = ["DEFAULT_TOPO", "Topology"]

#: ``tbon.topo`` when none is given (flux-core's default).
DEFAULT_TOPO = "kary:32"


def _k(spec: str, text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"tbon.topo {spec!r}: k must be an integer >= 0")
    return int(text)


def _parents(spec: str, size: int) -> List[int]:
    """Each rank's parent (-1 for rank 0) under topology *spec*."""
    parents = [-1] + [0] * (size - 1)  # flat: every rank below rank 0
    scheme, _, arg = spec.partition(":")
    if scheme == "kary":
        k = _k(spec, arg)
        if k > 0:
            parents[1:] = [(rank - 1) // k for rank in range(1, size)]
    elif scheme == "mincrit":
        k = _k(spec, arg) if arg else _mincrit_k(size, 1024)
        if k > 0:
            for rank in range(k + 1, size):
                parents[rank] = (rank - k - 1) % k + 1
    elif scheme == "binomial":
        if arg:
            raise ValueError(f"unknown binomial topology directive: '{arg}'")
        height = max(0, (size - 1).bit_length())
        _binomial(parents, 0, height)
    else:
        raise ValueError(
            f"tbon.topo {spec!r}: the in-memory broker builds kary:K, binomial and mincrit[:K] trees"
        )
    return parents


def _mincrit_k(size: int, max_fanout: int) -> int:
    def fanout(k: int) -> int:
        leaves = size - 1 - k
        return leaves // k + (1 if leaves % k else 0)

    if size <= max_fanout + 1:
        return 0
    k = 2
    while fanout(k) > max_fanout:
        k += 1
    return k


def _binomial(parents: List[int], root: int, k: int) -> None:
    for j in range(k):
        child = root + (1 << j)
        if child < len(parents):
            parents[child] = root
            _binomial(parents, child, j)


class Topology:
    """The tree of an instance of *size* brokers arranged by ``tbon.topo`` *spec*."""

    def __init__(self, size: int, spec: str = DEFAULT_TOPO) -> None:
        self.size = size
        self.spec = spec
        self._parents = _parents(spec, size)
        self._children: List[List[int]] = [[] for _ in range(size)]
        for rank in range(1, size):
            self._children[self._parents[rank]].append(rank)
        self._levels = [0] * size
        for rank in range(1, size):  # a parent's rank is always lower than its child's
            self._levels[rank] = self._levels[self._parents[rank]] + 1
        self._descendants = [0] * size
        for rank in range(size - 1, 0, -1):
            self._descendants[self._parents[rank]] += self._descendants[rank] + 1
        self._json: Dict[int, Dict[str, Any]] = {}

    def parent(self, rank: int) -> Optional[int]:
        """The parent of *rank* (None for rank 0)."""
        parent = self._parents[rank]
        return None if parent < 0 else parent

    def children(self, rank: int) -> Tuple[int, ...]:
        """The children of *rank*, lowest rank first."""
        return tuple(self._children[rank])

    def level(self, rank: int) -> int:
        """The depth of *rank*: 0 for rank 0, 1 for its children..."""
        return self._levels[rank]

    @property
    def maxlevel(self) -> int:
        """The depth of the deepest rank."""
        return max(self._levels)

    def descendants(self, rank: int) -> int:
        """How many ranks lie below *rank*."""
        return self._descendants[rank]

    def path_to_root(self, rank: int) -> Tuple[int, ...]:
        """*rank*, its parent, and so on up to rank 0."""
        path = [rank]
        while path[-1] != 0:
            path.append(self._parents[path[-1]])
        return tuple(path)

    def subtree(self, rank: int) -> List[int]:
        """*rank* and every rank below it."""
        ranks, todo = [], [rank]
        while todo:
            here = todo.pop()
            ranks.append(here)
            todo.extend(self._children[here])
        return sorted(ranks)

    def as_json(self, rank: int) -> Dict[str, Any]:
        """The subtree at *rank* as ``overlay.topology`` answers it."""
        if not self._json:  # built once, bottom up: a child's rank is above its parent's
            for here in range(self.size - 1, -1, -1):
                self._json[here] = {
                    "rank": here,
                    "size": self._descendants[here] + 1,
                    "children": [self._json[child] for child in self._children[here]],
                }
        return self._json[rank]
