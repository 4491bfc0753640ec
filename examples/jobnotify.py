"""A job notifier: each user follows the events of their own jobs.

``jobnotify.follow {"id": JOBID}`` is a stream: the job's events so far
(``submit``, ``validate``, ..., ``clean``), then each new one as it
happens, ending after ``clean``.  A guest may follow only their own jobs;
the instance owner may follow any.  The module learns about jobs from
the job manager's event journal (``job-manager.events-journal``), read by
a task that runs for as long as the module does.

On a real instance::

    flux module load ./jobnotify.py
    flux submit hostname            # prints the job id, e.g. ƒAS4RzF
    flux python -c 'import flux, flux.job; from flux.constants import FLUX_RPC_STREAMING as S
    f = flux.Flux().rpc("jobnotify.follow", {"id": int(flux.job.JobID("ƒAS4RzF"))}, flags=S)
    ...'
"""

import asyncio
import errno
from typing import Dict, List

from flux.brokermod import BrokerModule, RequestError, request_handler, timer_handler

STREAMING = 2  # FLUX_RPC_STREAMING
OWNER = 1  # FLUX_ROLE_OWNER


class JobNotify(BrokerModule):
    """Follow your own jobs' events."""

    def setup(self) -> None:
        self.owners: Dict[int, int] = {}
        self.history: Dict[int, List[str]] = {}
        self.followers: Dict[int, List["asyncio.Queue[str]"]] = {}

    @timer_handler(0)
    async def read_journal(self) -> None:
        """Read the job manager's journal for as long as the module runs."""
        # full: first the events of every job so far, then each new one
        journal = self.handle.rpc("job-manager.events-journal", {"full": True}, flags=STREAMING)
        while True:
            response = await journal
            journal.reset()
            for entry in response.get("events", []):
                self.happened(response["id"], entry)

    def happened(self, job: int, entry: dict) -> None:
        """Note one event of *job* and tell its followers."""
        if entry["name"] == "submit":
            self.owners[job] = entry.get("context", {}).get("userid")
        self.history.setdefault(job, []).append(entry["name"])
        for queue in self.followers.get(job, []):
            queue.put_nowait(entry["name"])

    @request_handler("follow", allow_guest=True)
    async def follow(self, msg, *, id: int):
        """Stream a job's events: those so far, then each new one, until clean."""
        if id not in self.owners:
            raise RequestError(errno.ENOENT, f"unknown job {id}")
        if self.owners[id] != msg.userid and not msg.rolemask & OWNER:
            raise RequestError(errno.EPERM, f"job {id} belongs to another user")
        queue: "asyncio.Queue[str]" = asyncio.Queue()
        self.followers.setdefault(id, []).append(queue)
        try:
            for name in list(self.history[id]):
                yield {"id": id, "event": name}
            if "clean" in self.history[id]:
                return
            while True:
                name = await queue.get()
                yield {"id": id, "event": name}
                if name == "clean":
                    return
        finally:
            self.followers[id].remove(queue)
