"""The in-memory broker's virtual clock and the timers waiting on it.

Time moves only when the broker says so (:meth:`VirtualClock.jump`), so
runs are deterministic; trio's ``MockClock`` is the model.  Timers are
kept in a heap ordered by due time, then by the order they were armed.
"""

import heapq
from typing import Any, List, Optional, Tuple


class VirtualClock:
    """Virtual seconds, and the timers armed on them."""

    def __init__(self) -> None:
        #: The current virtual time, in seconds.
        self.now = 0.0
        self._heap: List[Tuple[float, int, Any]] = []
        self._seq = 0
        # The arming each timer currently has (its latest sequence number and
        # due time); heap entries of earlier armings are stale and skipped.
        self._armed: "dict[int, Tuple[int, float]]" = {}

    def arm(self, timer: Any, after: float) -> None:
        """Arm *timer* to fall due *after* seconds from now (re-arming it)."""
        self._seq += 1
        when = self.now + after
        self._armed[id(timer)] = (self._seq, when)
        heapq.heappush(self._heap, (when, self._seq, timer))

    def disarm(self, timer: Any) -> None:
        """Disarm *timer*; a disarmed timer never falls due."""
        self._armed.pop(id(timer), None)

    def left(self, timer: Any) -> Optional[float]:
        """How long until armed *timer* falls due (None if it is not armed)."""
        armed = self._armed.get(id(timer))
        return None if armed is None else armed[1] - self.now

    def is_armed(self, timer: Any) -> bool:
        """True if *timer* is armed and has not fallen due yet."""
        return id(timer) in self._armed

    def next_due(self) -> Optional[float]:
        """When the next armed timer falls due, or None."""
        heap = self._heap
        while heap and self._armed.get(id(heap[0][2]), (None,))[0] != heap[0][1]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self) -> List[Any]:
        """The timers due now or earlier, in order; each is disarmed."""
        due = []
        while True:
            when = self.next_due()
            if when is None or when > self.now:
                return due
            _, _, timer = heapq.heappop(self._heap)
            del self._armed[id(timer)]
            due.append(timer)

    def jump(self, to: float) -> None:
        """Move the clock forward to *to* (never backwards)."""
        self.now = max(self.now, to)
