"""A site's own scheduler: shortest job first.

Pending jobs start in the order of the run time they asked for (``flux
submit -t 10m``), shortest first; a job that asked for none comes last;
ties keep flux-core's order (priority, then submission).  The first job in
that order that does not fit blocks the ones after it, so a wide short job
is not overtaken forever by narrow ones.  Cancelling a pending job, freeing,
draining and the rest are flux-core's :class:`flux.scheduler.Scheduler`'s.

It needs flux-core 0.88 or later (``flux.scheduler``).  Try it in memory,
on virtual time, with ``flux.schedsim`` (``flux-brokermod simulate --swf
TRACE --cores 32 examples/sched-shortest.py sched-fifo`` compares it with
FIFO).  Make it an instance's scheduler, in place of ``sched-simple``, with::

    flux-brokermod modprobe --dir DIR --provides sched --provides feasibility examples/sched-shortest.py

and start the instance with ``FLUX_MODPROBE_PATH_APPEND=DIR`` (DIR is
``/etc/flux/modprobe`` for the system instance).
"""

import heapq
import math
import time

from flux.resource import InfeasibleRequest, InsufficientResources
from flux.scheduler import Scheduler


class ShortestFirst(Scheduler):
    """Start the pending job with the shortest requested run time first."""

    @staticmethod
    def _order(job):
        duration = job.resource_request.duration
        return (duration if duration > 0 else math.inf, job)

    def schedule(self):
        while self._queue:
            job = min(self._queue, key=self._order)
            try:
                alloc = self.resources.alloc(job.jobid, job.resource_request)
            except InsufficientResources:
                return  # the first job in our order waits for resources
            except InfeasibleRequest as exc:
                job.request.deny(str(exc) or "unsatisfiable request")
            else:
                now = time.time()
                alloc.set_starttime(now)
                if job.resource_request.duration > 0:
                    alloc.set_expiration(now + job.resource_request.duration)
                job.request.success(alloc)
            self._queue.remove(job)
            heapq.heapify(self._queue)
            yield  # let the reactor serve other requests between jobs
