"""Run a Flux scheduler in the in-memory broker, on virtual time.

flux-core's own schedulers (``sched-simple``, ``sched-fifo``,
``sched-backfill``: ``flux.scheduler.Scheduler`` subclasses since 0.88),
or a site's own, load unchanged into :class:`flux.membroker.Broker` beside
stand-ins for the services a scheduler talks to (``resource``, ``kvs``,
and the RFC 27 side of ``job-manager``; see :mod:`flux.schedsim._services`).
Jobs are submitted, allocated, run for their run time and freed on the
broker's virtual clock, so a day of jobs takes seconds and every run gives
the same allocations::

    from flux.schedsim import Simulation

    with Simulation("sched-fifo", nodes=4, cores=8) as sim:
        first = sim.submit(nnodes=2, runtime=600)
        second = sim.submit(nnodes=4, runtime=60)
        sim.run()
        assert sim.jobs[second].t_alloc == sim.jobs[first].t_end

Needs flux-core's Python bindings (its ``flux.scheduler``, resource pools
and libflux), not a running instance: the scheduler's libflux calls go
through a real ``flux_t *`` whose connector is the in-memory broker (see
``docs/scheduler-simulation.rst`` for the design).
"""

import contextlib
import itertools
import json
import os
from typing import Any, Dict, Iterable, Iterator, List, Optional

from flux._layout import prefer_this_package

prefer_this_package()  # the stand-in services are this library's BrokerModules

from flux import _idset  # noqa: E402
from flux.membroker import Broker  # noqa: E402
from flux.schedsim._services import KVS, Job, JobManager, Resource  # noqa: E402
from flux.schedsim._swf import SWFJob, read_swf  # noqa: E402
from flux.schedsim._wallclock import WallClock  # noqa: E402

__all__ = ["EPOCH", "Simulation", "Job", "SWFJob", "read_swf", "scheduler_path", "jobspec"]

#: The simulation's wall clock at virtual time 0 (2023-11-14T22:13:20Z):
#: fixed, so that every run stamps the same times.
EPOCH = 1_700_000_000.0


def scheduler_path(scheduler: str) -> str:
    """The file of *scheduler*: a path, or the name of one of flux-core's
    Python modules (``sched-fifo``), looked up in the installed flux-core."""
    if os.sep in scheduler or scheduler.endswith(".py"):
        if not os.path.isfile(scheduler):
            raise FileNotFoundError(f"{scheduler}: no such scheduler file")
        return scheduler
    import flux

    init = getattr(flux, "__file__", None) or ""
    # flux-core installs its package at PREFIX/lib/flux/pythonX.Y/flux and its modules at PREFIX/lib/flux/modules.
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(init))), "modules", f"{scheduler}.py")
    if not init or not os.path.isfile(path):
        raise FileNotFoundError(f"{scheduler}: not one of the installed flux-core's Python modules (looked for {path})")
    return path


def jobspec(nnodes: int = 0, ncores: int = 1, ngpus: int = 0, duration: float = 0.0,
            ntasks: int = 1) -> Dict[str, Any]:
    """A version 1 jobspec: *ntasks* task slots of *ncores* cores (and
    *ngpus* GPUs) each, or that on each of *nnodes* nodes when *nnodes* > 0,
    with time limit *duration* seconds (0: none)."""
    core: List[Dict[str, Any]] = [{"type": "core", "count": ncores}]
    if ngpus:
        core.append({"type": "gpu", "count": ngpus})
    if nnodes > 0:
        resources = [{"type": "node", "count": nnodes,
                      "with": [{"type": "slot", "count": ntasks, "label": "task", "with": core}]}]
    else:
        resources = [{"type": "slot", "count": ntasks, "label": "task", "with": core}]
    return {
        "version": 1,
        "resources": resources,
        "tasks": [{"command": ["true"], "slot": "task", "count": {"per_slot": 1}}],
        "attributes": {"system": {"duration": float(duration)}},
    }


def _rv1(nodes: int, cores: int, gpus: int) -> Dict[str, Any]:
    children = {"core": f"0-{cores - 1}" if cores > 1 else "0"}
    if gpus:
        children["gpu"] = f"0-{gpus - 1}" if gpus > 1 else "0"
    ranks = f"0-{nodes - 1}" if nodes > 1 else "0"
    return {
        "version": 1,
        "execution": {
            "R_lite": [{"rank": ranks, "children": children}],
            "starttime": 0.0,
            "expiration": 0.0,
            "nodelist": [f"sim[{ranks}]" if nodes > 1 else "sim0"],
        },
    }


class Simulation:
    """A scheduler, its services and its jobs, in one in-memory broker.

    *scheduler* is a module file or the name of flux-core's (``sched-fifo``,
    ``sched-simple``, ``sched-backfill``), loaded with *args* as ``flux
    module load`` would.  The instance has *nodes* nodes (ranks) of *cores*
    cores and *gpus* GPUs each.  Use it as a context manager, or call
    :meth:`close`.
    """

    def __init__(self, scheduler: str, *args: str, nodes: int = 1, cores: int = 1, gpus: int = 0,
                 epoch: float = EPOCH) -> None:
        if nodes < 1 or cores < 1 or gpus < 0:
            raise ValueError(f"nodes and cores must be 1 or more, gpus 0 or more (got {nodes}, {cores}, {gpus})")
        path = scheduler_path(scheduler)
        self._bursting = False
        #: The in-memory broker the simulation runs in.
        self.broker = Broker()
        #: The virtual wall clock flux-core's code reads.
        self.clock = WallClock(lambda: self.broker.now, epoch)
        self.nodes, self.cores, self.gpus = nodes, cores, gpus
        try:
            try:
                import flux.scheduler  # noqa: F401 - imported now, so that its clock is patched too
            except ImportError:
                pass  # flux-core before 0.88, or none: only a scheduler of one's own can run
            self.clock.patch_flux_core()
            self.broker.load(KVS, name="kvs")
            self.broker.load(Resource, json.dumps(_rv1(nodes, cores, gpus), separators=(",", ":")), name="resource")
            self.broker.load(JobManager, repr(epoch), name="job-manager")
            record = self.broker.load(path, *args)
            for namespace in _namespaces(record.instance):
                self.clock.patch(namespace)
            self.clock.patch_flux_core()  # what the scheduler's file imported
            self._jm: JobManager = self.broker.modules["job-manager"].instance
            self._client = self.broker.connect()
            self.broker.run_until(lambda: self._jm.ready, "the scheduler's sched-ready")
        except BaseException:
            self.close()
            raise
        #: The scheduler's module (a :class:`~flux.membroker.LoadedModule`).
        self.scheduler = record

    @property
    def jobs(self) -> Dict[int, Job]:
        """Every job submitted, by ID."""
        return self._jm.jobs

    @property
    def allocations(self) -> List[int]:
        """Job IDs in the order the scheduler allocated them."""
        return list(self._jm.allocations)

    @property
    def now(self) -> float:
        """The simulation's wall clock (seconds since the epoch)."""
        return self.clock.time()

    def submit(self, nnodes: int = 0, ncores: int = 1, ngpus: int = 0, runtime: float = 0.0, ntasks: int = 1,
               duration: Optional[float] = None, priority: int = 16, at: Optional[float] = None,
               spec: Optional[Dict[str, Any]] = None, userid: Optional[int] = None) -> int:
        """Submit a job; return its ID.

        It asks for *ntasks* slots of *ncores* cores (and *ngpus* GPUs), on
        each of *nnodes* nodes if given, with time limit *duration*
        (default: *runtime*; see :func:`jobspec`),
        unless *spec* gives the jobspec.  Once allocated it runs *runtime*
        virtual seconds.  *at* (seconds since the epoch, not before
        :attr:`now`) first lets virtual time pass until then.  The
        scheduler has handled the job (allocated it, if it can) when this
        returns, without the clock moving.
        """
        if at is not None:
            if at < self.now:
                raise ValueError(f"at={at} is before the simulation's clock ({self.now})")
            self.broker.advance(at - self.now)
        if spec is None:
            spec = jobspec(nnodes, ncores, ngpus, runtime if duration is None else duration, ntasks)
        reply = self._client.rpc("job-manager.sim-submit", {
            "jobspec": spec, "runtime": runtime, "priority": priority,
            "userid": self.broker.owner if userid is None else userid,
        }).get()
        if not self._bursting:
            # The scheduler acts on it before the next submission, at the same
            # virtual instant, as on an instance where submissions are ms apart.
            self.broker.run_until_idle()
        return int(reply["id"])

    @contextlib.contextmanager
    def burst(self) -> Iterator[None]:
        """Jobs submitted in this block reach the scheduler together, at
        the block's end (one scheduling pass for all), as when ``flux queue
        start`` releases a stopped queue; a replay submits jobs of the same
        submit time so.  Use it for thousands of jobs at one instant: one
        pass each costs what flux-core's forecast of the whole queue costs."""
        if self._bursting:
            raise RuntimeError("burst() blocks do not nest")
        self._bursting = True
        try:
            yield
        finally:
            self._bursting = False
            self.broker.run_until_idle()

    def reload_scheduler(self, *args: str) -> None:
        """Remove the scheduler and load it again (with *args*), as ``flux
        module reload`` does: the new one takes the running jobs back
        through RFC 27's hello (looking their R up in the KVS) and is sent
        the pending jobs again."""
        name = self.scheduler.name
        path = self.scheduler.path
        self.broker.remove(name)
        self._client.rpc("job-manager.sim-sched-gone").get()
        record = self.broker.load(path, *args)
        for namespace in _namespaces(record.instance):
            self.clock.patch(namespace)
        self.scheduler = record
        self.broker.run_until(lambda: self._jm.ready, "the reloaded scheduler's sched-ready")

    def cancel(self, jobid: int) -> None:
        """Cancel a job: a pending one leaves the scheduler's queue, a running one ends now."""
        self._client.rpc("job-manager.sim-cancel", {"id": jobid}).get()

    def prioritize(self, jobid: int, priority: int) -> None:
        """Change a pending job's priority (the scheduler gets ``sched.prioritize``)."""
        self._client.rpc("job-manager.sim-priority", {"id": jobid, "priority": priority}).get()

    def run(self, until: Optional[float] = None) -> None:
        """Let virtual time pass until every job has ended (or until wall
        clock *until*).  OSError EDEADLK if jobs are left that nothing will
        ever start (a job no free resources will fit and none will free)."""
        if until is not None:
            self.broker.advance(max(0.0, until - self.now))
            return
        self.broker.run_until(self._all_ended, "every job to end")

    def _all_ended(self) -> bool:
        return self._jm.ended == len(self._jm.jobs)

    def replay(self, trace: Iterable[SWFJob]) -> None:
        """Submit each job of an SWF trace at its submit time (relative to
        the simulation's start) and run them all."""
        start = self.now
        for submit, jobs in itertools.groupby(sorted(trace, key=lambda j: (j.submit, j.number)),
                                              key=lambda j: j.submit):
            self.run(until=start + submit)
            with self.burst():
                for job in jobs:
                    # one single-core task per processor, as a trace's processors are counted
                    self.submit(ntasks=job.processors, runtime=job.runtime, duration=job.requested_time)
        self.run()

    def summary(self) -> Dict[str, Any]:
        """Wait times and utilisation of the jobs so far: ``jobs``, ``started``,
        ``mean_wait``, ``max_wait``, ``makespan`` (first submission to last
        end) and ``utilisation`` (core-seconds used over core-seconds there
        were in the makespan)."""
        jobs = list(self._jm.jobs.values())
        started = [j for j in jobs if j.t_alloc is not None]
        waits = [j.wait for j in started]
        if not jobs:
            return {"jobs": 0, "started": 0, "mean_wait": 0.0, "max_wait": 0.0, "makespan": 0.0, "utilisation": 0.0}
        first = min(j.t_submit for j in jobs)
        last = max((j.t_end for j in jobs if j.t_end is not None), default=first)
        makespan = last - first
        used = sum(_cores(j.R) * ((j.t_end if j.t_end is not None else self.now) - j.t_alloc) for j in started)
        total = self.nodes * self.cores * makespan
        return {
            "jobs": len(jobs),
            "started": len(started),
            "mean_wait": sum(waits) / len(waits) if waits else 0.0,
            "max_wait": max(waits, default=0.0),
            "makespan": makespan,
            "utilisation": used / total if total else 0.0,
        }

    def close(self) -> None:
        """Remove the modules and put flux-core's clock back."""
        try:
            if self.broker.panicked is None:
                self.broker.close()
        finally:
            self.clock.restore()

    def __enter__(self) -> "Simulation":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _cores(R: Optional[Dict[str, Any]]) -> int:
    if not R:
        return 0
    count = 0
    for entry in R["execution"]["R_lite"]:
        count += len(_idset.decode(entry["rank"])) * len(_idset.decode(entry["children"].get("core", "")))
    return count


def _namespaces(instance: Any) -> List[Dict[str, Any]]:
    """The module globals of the classes a module instance is made of."""
    seen: Dict[int, Dict[str, Any]] = {}
    for cls in type(instance).__mro__:
        for value in vars(cls).values():
            globals_ = getattr(getattr(value, "__func__", value), "__globals__", None)
            if isinstance(globals_, dict):
                seen.setdefault(id(globals_), globals_)
    return list(seen.values())
