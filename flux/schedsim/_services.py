"""The services a Flux scheduler talks to, standing in for flux-core's own.

A scheduler (a ``flux.scheduler.Scheduler`` subclass, or any module that
speaks RFC 27) needs three services of the instance.  These modules answer
as flux-core's do, on the in-memory broker's virtual clock:

- ``resource``: ``resource.acquire``, a stream whose first answer is the
  instance's R with every rank up (as flux-core's ``resource`` module
  answers once all ranks have joined).
- ``kvs``: ``kvs.commit`` and ``kvs.lookup`` of plain values, enough for
  the R a scheduler stores for each job.
- ``job-manager``: the RFC 27 side of flux-core's job manager.  It answers
  ``sched-hello`` (no running jobs) and ``sched-ready``; then sends one
  ``sched.alloc`` per pending job (no more than the scheduler's limit in
  limited mode), without a matchtag, taking the answers by topic as
  flux-core's does; starts a job when it is allocated, ends it after its
  run time with ``sched.free``, and sends ``sched.cancel`` and
  ``sched.prioritize``.  Jobs reach it from :class:`~flux.schedsim.Simulation`
  through ``job-manager.sim-*`` requests, which are this stand-in's own.
"""

import errno
import heapq
import json
from typing import Any, Callable, Dict, List, Optional, Set

from flux import _idset
from flux.brokermod import BrokerModule, RequestError, request_handler
from flux.membroker import Message
from flux.membroker._message import FLUX_MSGTYPE_REQUEST, FLUX_MSGTYPE_RESPONSE, FLUX_RPC_NORESPONSE

# RFC 27 alloc response types
ALLOC_SUCCESS, ALLOC_ANNOTATE, ALLOC_DENY, ALLOC_CANCEL = 0, 1, 2, 3


class Resource(BrokerModule):
    """``resource.acquire``: R, all up; then, as ranks are drained, fail or
    come back, ``{"down": idset}`` and ``{"up": idset}`` answers on the same
    stream, as flux-core's ``resource`` module sends them (RFC 28)."""

    def __init__(self, h: Any, *args: str) -> None:
        super().__init__(h, *args)
        self.R = json.loads(args[0])
        self.ranks: Set[int] = set()
        for entry in self.R["execution"]["R_lite"]:
            self.ranks.update(_idset.decode(entry["rank"]))
        self.down: Set[int] = set()
        self._acquire: Any = None  # the scheduler's open resource.acquire request
        self._timers: List[Any] = []  # updates waiting for their virtual time

    @request_handler("acquire")
    def acquire(self, msg: Any) -> None:
        self._acquire = msg
        up = _idset.encode(sorted(self.ranks - self.down))
        self.handle.respond(msg, {"resources": self.R, "up": up})  # the stream stays open, as flux-core's does

    @request_handler("sim-update")
    def sim_update(self, msg: Any) -> Dict[str, Any]:
        """Mark ``ranks`` ``up``, ``down`` (drained) or ``failed`` (down, and
        the jobs there end) (``"state"``), now or ``after`` seconds from now."""
        p = msg.payload
        ranks = set(_idset.decode(p["ranks"]))
        if not ranks or not ranks <= self.ranks:
            raise RequestError(errno.EINVAL, f"ranks {p['ranks']!r}: the instance has ranks "
                                             f"{_idset.encode(sorted(self.ranks))}")
        if p.get("state") not in ("up", "down", "failed"):
            raise RequestError(errno.EPROTO, f"state {p.get('state')!r}: up, down or failed")
        after = float(p.get("after", 0.0))
        if after > 0:
            timer = self.handle.timer_watcher_create(after, lambda h, w, revents, args: self._update(*args),
                                                     args=(ranks, p["state"]))
            timer.start()
            self._timers.append(timer)
        else:
            self._update(ranks, p["state"])
        return {}

    def _update(self, ranks: Set[int], state: str) -> None:
        failed = state == "failed"
        state = "down" if failed else state
        changed = ranks - self.down if state == "down" else ranks & self.down
        if state == "down":
            self.down |= changed
        else:
            self.down -= changed
        if changed and self._acquire is not None:
            self.handle.respond(self._acquire, {state: _idset.encode(sorted(changed))})
        if failed:
            # then the jobs there end, as job-exec ends a job that lost a shell
            self.handle.rpc("job-manager.sim-fail", {"ranks": _idset.encode(sorted(ranks))},
                            flags=FLUX_RPC_NORESPONSE)


class KVS(BrokerModule):
    """``kvs.commit`` and ``kvs.lookup`` of values (no directories, no namespaces)."""

    def __init__(self, h: Any, *args: str) -> None:
        super().__init__(h, *args)
        self.store: Dict[str, Any] = {}
        self.commits = 0

    @request_handler("commit")
    def commit(self, msg: Any) -> Dict[str, Any]:
        for op in msg.payload["ops"]:
            dirent = op["dirent"]
            if dirent.get("type") == "val":
                self.store[op["key"]] = dirent
            else:
                self.store.pop(op["key"], None)
        self.commits += 1
        return {"rootref": f"sim-{self.commits}", "rootseq": self.commits}

    @request_handler("lookup")
    def lookup(self, msg: Any) -> Dict[str, Any]:
        key = msg.payload["key"]
        if key not in self.store:
            raise RequestError(errno.ENOENT, f"{key}: no such key in the simulation's KVS")
        return {"key": key, "val": self.store[key]}


class Job:
    """One job of a simulation, as the stand-in job manager saw it."""

    __slots__ = ("id", "jobspec", "runtime", "duration", "priority", "userid", "t_submit", "t_alloc", "t_end",
                 "R", "annotations", "state", "note", "_alloc_sent", "_end_timer", "_recalling", "_canceling")

    def __init__(self, jobid: int, jobspec: Dict[str, Any], runtime: float, priority: int,
                 userid: int, t_submit: float) -> None:
        #: The job's ID.
        self.id = jobid
        #: The jobspec the scheduler was given.
        self.jobspec = jobspec
        #: How long the job runs once started (virtual seconds).
        self.runtime = runtime
        #: Its time limit (``attributes.system.duration``; 0: none): it ends then, as a real instance ends it.
        self.duration = _duration_of(jobspec)
        #: Its priority (RFC 27: higher first).
        self.priority = priority
        #: The submitting user.
        self.userid = userid
        #: Submission time (the simulation's wall clock).
        self.t_submit = t_submit
        #: When the scheduler allocated it (None until then).
        self.t_alloc: Optional[float] = None
        #: When it ended (None while pending or running).
        self.t_end: Optional[float] = None
        #: The R the scheduler allocated.
        self.R: Optional[Dict[str, Any]] = None
        #: The annotations the scheduler set, merged as flux-core merges them.
        self.annotations: Dict[str, Any] = {}
        #: ``pending``, ``running``, ``complete``, ``timeout`` (ended at its
        #: time limit), ``failed`` (a node of its allocation failed),
        #: ``denied`` or ``canceled``.
        self.state = "pending"
        #: Why it was denied or failed, if it was.
        self.note: Optional[str] = None
        self._alloc_sent = False
        self._end_timer: Any = None
        self._recalling = False  # its alloc request is being cancelled to send it again later
        self._canceling = False  # the user cancelled it while its alloc request was out

    @property
    def wait(self) -> Optional[float]:
        """Seconds from submission to allocation (None if never allocated)."""
        return None if self.t_alloc is None else self.t_alloc - self.t_submit

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.state} t_submit={self.t_submit} t_alloc={self.t_alloc}>"


def _duration_of(jobspec: Any) -> float:
    try:
        value = float(jobspec["attributes"]["system"]["duration"])
    except (KeyError, TypeError, ValueError):
        return 0.0
    return value if value > 0 and value != float("inf") else 0.0


def _merge(into: Dict[str, Any], update: Dict[str, Any]) -> None:
    """Merge annotations as flux-core does: a null value deletes the key."""
    for key, value in update.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, dict):
            _merge(into.setdefault(key, {}), value)
            if not into[key]:
                del into[key]
        else:
            into[key] = value


class JobManager(BrokerModule):
    """The RFC 27 side of flux-core's job manager, on virtual time."""

    def __init__(self, h: Any, *args: str) -> None:
        super().__init__(h, *args)
        #: Every job, by ID, in submission order.
        self.jobs: Dict[int, Job] = {}
        self.epoch = float(args[0]) if args else 0.0
        self.limit: Optional[int] = None  # None: unlimited
        self.ready = False
        self.sent: Set[int] = set()  # jobs whose alloc request is out (not yet answered finally)
        # Jobs waiting for an alloc request: a heap of (-priority, id), the
        # order flux-core's job manager sends them in (highest priority, then oldest).
        self.pending: List[Any] = []
        #: How many jobs have ended (complete, denied or canceled).
        self.ended = 0
        self.allocations: List[int] = []  # job IDs in the order they were allocated
        #: Runs an item once the virtual instant has settled (the simulation
        #: sets it to its broker's call_when_settled); by default, now.
        self.settle: Callable[[Callable[[], None]], None] = lambda item: item()
        self.handle.msg_watcher_create(self._alloc_response, FLUX_MSGTYPE_RESPONSE, "sched.alloc").start()

    @property
    def outstanding(self) -> int:
        """How many alloc requests are out."""
        return len(self.sent)

    def now(self) -> float:
        """The simulation's wall clock: the epoch plus the virtual clock."""
        return self.epoch + self.handle.reactor_now(self.handle.get_reactor())

    # The RFC 27 protocol

    @request_handler("sched-hello")
    def sched_hello(self, msg: Any) -> None:
        for job in self.jobs.values():
            if job.state == "running":  # a restarted scheduler takes them back
                self.handle.respond(msg, {"id": job.id, "priority": job.priority, "userid": job.userid,
                                          "t_submit": job.t_submit})
        self.handle.respond_error(msg, errno.ENODATA, None)

    @request_handler("sched-ready")
    def sched_ready(self, msg: Any) -> Dict[str, Any]:
        mode = msg.payload.get("mode")
        if mode == "limited":
            self.limit = int(msg.payload["limit"])
        elif mode != "unlimited":
            raise RequestError(errno.EPROTO, f"sched-ready: unknown mode {mode!r}")
        self.ready = True
        self._send_allocs()
        return {"count": len(self.pending)}

    def _send_allocs(self) -> None:
        if not self.ready:
            return
        while self.pending and (self.limit is None or self.outstanding < self.limit):
            job = self.jobs[heapq.heappop(self.pending)[1]]
            payload = {"id": job.id, "priority": job.priority, "userid": job.userid,
                       "t_submit": job.t_submit, "jobspec": job.jobspec}
            job._alloc_sent = True
            self.sent.add(job.id)
            self.handle.send(Message(FLUX_MSGTYPE_REQUEST, "sched.alloc", json.dumps(payload).encode()))
        self._recalc()

    def _recalc(self) -> None:
        """In limited mode, as flux-core's alloc_queue_recalc_pending(): while
        the best job waiting beats the worst one whose alloc request is out,
        cancel that request (the job waits again once it is answered)."""
        if self.limit is None or not self.pending or not self.sent:
            return
        out = sorted(((-self.jobs[i].priority, i) for i in self.sent  # at most the limit: few
                      if not self.jobs[i]._recalling and not self.jobs[i]._canceling), reverse=True)
        if not out or self.pending[0] >= out[0]:
            return  # the usual case: the best job waiting comes after every request out
        for head, tail in zip(heapq.nsmallest(len(out), self.pending), out):
            if head >= tail:
                break
            self._recall(self.jobs[tail[1]])

    def _recall(self, job: Job) -> None:
        job._recalling = True
        self._noresponse("sched.cancel", {"id": job.id})

    def _queue(self, job: Job) -> None:
        """Wait for an alloc request (a held job, priority 0, waits to be released)."""
        job._alloc_sent = False
        if job.priority > 0:
            heapq.heappush(self.pending, (-job.priority, job.id))

    def _alloc_response(self, h: Any, watcher: Any, msg: Any, args: Any) -> None:
        p = msg.payload
        job = self.jobs[p["id"]]
        kind = p["type"]
        if not job._alloc_sent or job.state != "pending":
            return  # an answer from a scheduler that has gone
        if "annotations" in p:
            _merge(job.annotations, p["annotations"])
        if kind == ALLOC_ANNOTATE:
            return
        self.sent.discard(job.id)
        recalled, job._recalling = job._recalling and not job._canceling, False
        if kind == ALLOC_SUCCESS:
            job.state, job.R, job.t_alloc = "running", p["R"], self.now()
            self.allocations.append(job.id)
            limited = 0 < job.duration < job.runtime
            job._end_timer = self.handle.timer_watcher_create(job.duration if limited else job.runtime,
                                                              self._job_ends, args=job)
            job._end_timer.start()
        elif kind == ALLOC_DENY:
            job.state, job.note = "denied", p.get("note")
            self._end(job)
        elif kind == ALLOC_CANCEL and recalled:
            self._queue(job)
        elif kind == ALLOC_CANCEL:
            job.state = "canceled"
            self._end(job)
        self._send_allocs()

    def _end(self, job: Job) -> None:
        job.t_end = self.now()
        self.ended += 1

    def _job_ends(self, h: Any, watcher: Any, revents: int, job: Job) -> None:
        # Jobs ending at one virtual instant end one at a time, each free
        # followed by the scheduler's pass, as on an instance where they
        # end milliseconds apart; in the order their timers fall due.
        job._end_timer = None
        self.settle(lambda: self._ended(job))

    def _ended(self, job: Job) -> None:
        if job.state == "running":  # not cancelled or failed while it waited its turn
            self._release(job, "timeout" if 0 < job.duration < job.runtime else "complete")

    def _release(self, job: Job, state: str) -> None:
        """The running *job* has ended in *state*: free its R."""
        job.state = state
        self._end(job)
        job._end_timer = None
        self._noresponse("sched.free", {"id": job.id, "R": job.R, "final": True})

    def _noresponse(self, topic: str, payload: Dict[str, Any]) -> None:
        self.handle.rpc(topic, payload, flags=FLUX_RPC_NORESPONSE)

    def _job(self, jobid: Any) -> Job:
        job = self.jobs.get(jobid)
        if job is None:
            raise RequestError(errno.ENOENT, f"no job {jobid!r}")
        return job

    # The simulation's requests (this stand-in's own)

    @request_handler("sim-sched-gone")
    def sim_sched_gone(self, msg: Any) -> Dict[str, Any]:
        """The scheduler was removed: its alloc requests are lost, so the jobs
        go back to waiting for the next scheduler's sched-ready (as
        flux-core's job manager does when the scheduler goes)."""
        self.ready = False
        self.limit = None
        self.sent.clear()
        for job in self.jobs.values():
            if job.state == "pending" and job._alloc_sent:
                job._recalling = False
                if job._canceling:
                    job.state = "canceled"
                    self._end(job)
                else:
                    self._queue(job)
        return {}

    @request_handler("sim-fail")
    def sim_fail(self, msg: Any) -> None:
        """Ranks failed: each running job on one of them ends now, as
        flux-core's job-exec ends a job that lost contact with a shell (a
        fatal ``node-failure`` exception), and its R is freed."""
        lost = set(_idset.decode(msg.payload["ranks"]))
        for job in self.jobs.values():
            if job.state != "running":
                continue
            ranks = {r for entry in job.R["execution"]["R_lite"] for r in _idset.decode(entry["rank"])}
            if ranks & lost:
                if job._end_timer is not None:
                    job._end_timer.stop()
                job.note = f"node-failure: lost contact with job shell on rank {_idset.encode(sorted(ranks & lost))}"
                self._release(job, "failed")

    @request_handler("sim-submit")
    def sim_submit(self, msg: Any) -> Dict[str, Any]:
        p = msg.payload
        jobid = len(self.jobs) + 1
        job = self.jobs[jobid] = Job(jobid, p["jobspec"], float(p["runtime"]), int(p["priority"]),
                                     int(p["userid"]), self.now())
        self._queue(job)
        self._send_allocs()
        return {"id": jobid}

    @request_handler("sim-cancel")
    def sim_cancel(self, msg: Any) -> Dict[str, Any]:
        job = self._job(msg.payload["id"])
        if job.state == "running":
            if job._end_timer is not None:
                job._end_timer.stop()
            self._release(job, "canceled")
        elif job.state == "pending":
            if job._alloc_sent:
                if not job._canceling and not job._recalling:
                    self._noresponse("sched.cancel", {"id": job.id})  # the alloc is answered with type 3
                job._canceling = True
            else:
                if job.priority > 0:
                    self.pending.remove((-job.priority, job.id))
                    heapq.heapify(self.pending)
                job.state = "canceled"
                self._end(job)
        return {}

    @request_handler("sim-priority")
    def sim_priority(self, msg: Any) -> Dict[str, Any]:
        job = self._job(msg.payload["id"])
        priority = int(msg.payload["priority"])
        if job.state != "pending":
            raise RequestError(errno.EINVAL, f"job {job.id} is {job.state}, not pending")
        if job._alloc_sent:
            job.priority = priority
            if priority == 0:
                if not job._recalling and not job._canceling:
                    self._recall(job)  # a held job gives its alloc request back
            else:
                self._noresponse("sched.prioritize", {"jobs": [[job.id, job.priority]]})
        else:
            if job.priority > 0:
                self.pending.remove((-job.priority, job.id))
                heapq.heapify(self.pending)
            job.priority = priority
            self._queue(job)
        self._send_allocs()
        return {}
