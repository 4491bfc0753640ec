"""Sets of ranks written as RFC 22 idsets (``"0-3,7"``), without flux-core.

flux-core's ``flux.idset`` needs its compiled bindings; the tree services
(:mod:`flux._tree`) exchange idsets on both brokers, so they use these two
functions.  Encoding is always ranged and sorted, as ``idset_encode(...,
IDSET_FLAG_RANGE)`` writes it; an empty set is ``""``.
"""

from __future__ import annotations

from typing import Iterable, Optional, Set

from flux._logtext import excerpt

__all__ = ["decode", "encode"]


def encode(ranks: Iterable[int]) -> str:
    """*ranks* as a ranged idset string: ``{0, 1, 2, 7}`` gives ``"0-2,7"``."""
    parts = []
    first = last = -2
    for rank in sorted(set(ranks)):
        if rank == last + 1:
            last = rank
            continue
        if first >= 0:
            parts.append(str(first) if first == last else f"{first}-{last}")
        first = last = rank
    if first >= 0:
        parts.append(str(first) if first == last else f"{first}-{last}")
    return ",".join(parts)


def decode(text: str, limit: Optional[int] = None) -> Set[int]:
    """The ranks of idset *text* (``"0-2,7"``, or the bracketed ``"[0-2,7]"``).

    With *limit* (an instance's size), a rank at or above it is refused
    before any range is expanded: ``"0-4294967294"`` costs nothing.

    :raises ValueError: naming the part that is not a rank or a range, or
        the rank that is not below *limit*.
    """
    if not isinstance(text, str):
        raise ValueError(f"an idset is a string such as '0-3,7', not {type(text).__name__}")
    body = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    ranks: Set[int] = set()
    for part in body.split(","):
        if not part:
            if body:
                raise ValueError(f"idset {text!r}: empty part")
            continue
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()) or (_ and not high):
            raise ValueError(f"idset {text!r}: {part!r} is not a rank or a range of ranks")
        start, end = int(low), int(high or low)
        if end < start:
            raise ValueError(f"idset {text!r}: range {part!r} runs backwards")
        if limit is not None and end >= limit:
            raise ValueError(f"idset {excerpt(text)!r}: rank {end} is not below the instance's size {limit}")
        ranks.update(range(start, end + 1))
    return ranks
