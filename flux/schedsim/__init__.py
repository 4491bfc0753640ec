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
        first = sim.submit(nnodes=2, ncores=8, runtime=600)
        second = sim.submit(nnodes=4, ncores=8, runtime=60)
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
import math
import os
import weakref
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence

from flux._layout import prefer_this_package

prefer_this_package()  # the stand-in services are this library's BrokerModules

from flux import _idset  # noqa: E402
from flux.membroker import Broker  # noqa: E402
from flux.schedsim._plot import plot  # noqa: E402
from flux.schedsim._results import BSLD_THRESHOLD, JobResult, Outcome, job_result, metrics  # noqa: E402
from flux.schedsim._services import KVS, Job, JobManager, Resource  # noqa: E402
from flux.schedsim._swf import SWFJob, read_swf  # noqa: E402
from flux.schedsim._wallclock import WallClock  # noqa: E402

__all__ = ["EPOCH", "PRIORITY_MAX", "Simulation", "Job", "SWFJob", "read_swf", "scheduler_path", "jobspec",
           "Outcome", "JobResult", "BSLD_THRESHOLD", "metrics", "plot"]

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


def _count(name: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be a whole number, {least} or more (got {value!r})")
    return value


def _seconds(name: str, value: Any, least: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < least:
        raise ValueError(f"{name} must be a finite number of seconds, {least:g} or more (got {value!r})")
    return float(value)


#: The highest priority RFC 27 allows (priority 0 holds a job).
PRIORITY_MAX = 4294967295


class Simulation:
    """A scheduler, its services and its jobs, in one in-memory broker.

    *scheduler* is a module file or the name of flux-core's (``sched-fifo``,
    ``sched-simple``, ``sched-backfill``), loaded with *args* as ``flux
    module load`` would.  The instance has *nodes* nodes (ranks) of *cores*
    cores and *gpus* GPUs each.  Use it as a context manager, or call
    :meth:`close`.  Several may be open at once; flux-core's code reads the
    clock of the one last used.
    """

    def __init__(self, scheduler: str, *args: str, nodes: int = 1, cores: int = 1, gpus: int = 0,
                 epoch: float = EPOCH) -> None:
        nodes, cores, gpus = _count("nodes", nodes, 1), _count("cores", cores, 1), _count("gpus", gpus, 0)
        epoch = _seconds("epoch", epoch)
        self._path = scheduler_path(scheduler)
        self._bursting = False
        self._closed = False
        broker = self._broker = Broker()
        #: The virtual wall clock flux-core's code reads.
        self.clock = WallClock(lambda: broker.now, epoch)
        self._restore = weakref.finalize(self, self.clock.restore)  # also when dropped unclosed
        self.nodes, self.cores, self.gpus = nodes, cores, gpus
        self.scheduler: Any = None
        try:
            try:
                import flux.scheduler  # noqa: F401 - imported now, so that its clock is patched too
            except ImportError:
                pass  # flux-core before 0.88, or none: only a scheduler of one's own can run
            self.clock.patch_flux_core()
            broker.load(KVS, name="kvs")
            broker.load(Resource, json.dumps(_rv1(nodes, cores, gpus), separators=(",", ":")), name="resource")
            broker.load(JobManager, repr(epoch), name="job-manager")
            self._jm: JobManager = broker.modules["job-manager"].instance
            self._jm.settle = lambda item: broker.call_when_settled("job-manager", item)
            self._client = broker.connect()
            self._load_scheduler(args)
        except BaseException:
            self.close()
            raise

    def _load_scheduler(self, args: Sequence[str]) -> None:
        record = self._broker.load(self._path, *args)
        for namespace in _namespaces(record.instance):
            self.clock.patch(namespace)
        self.clock.patch_flux_core()  # what the scheduler's file imported
        #: The scheduler's module (a :class:`~flux.membroker.LoadedModule`).
        self.scheduler = record
        self._broker.run_until(lambda: self._jm.ready, "the scheduler's sched-ready")

    @property
    def broker(self) -> Broker:
        """The in-memory broker the simulation runs in (using it makes this
        simulation's clock the one flux-core's code reads)."""
        self._use()
        return self._broker

    def _use(self) -> None:
        if self._closed:
            raise RuntimeError("this simulation is closed")
        self.clock.activate()

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
        (default: *runtime*; 0: none; see :func:`jobspec`), unless *spec*
        gives the jobspec.  Once allocated it runs *runtime* virtual
        seconds, or until its time limit, as a real instance ends it.
        *priority* 0 holds the job (as ``flux job urgency ID hold``).  *at*
        (seconds since the epoch, not before :attr:`now`) first lets
        virtual time pass until then.  The scheduler has handled the job
        (allocated it, if it can) when this returns, without the clock
        moving, unless in a :meth:`burst`.
        """
        self._use()
        runtime = _seconds("runtime", runtime)
        priority = _count("priority", priority, 0)
        if priority > PRIORITY_MAX:
            raise ValueError(f"priority must be at most {PRIORITY_MAX} (got {priority})")
        if spec is None:
            nnodes, ncores, ngpus, ntasks = (_count("nnodes", nnodes, 0), _count("ncores", ncores, 1),
                                             _count("ngpus", ngpus, 0), _count("ntasks", ntasks, 1))
            duration = runtime if duration is None else _seconds("duration", duration)
            spec = jobspec(nnodes, ncores, ngpus, duration, ntasks)
        if at is not None:
            at = _seconds("at", at)
            if at < self.now:
                raise ValueError(f"at={at} is before the simulation's clock ({self.now})")
            self._broker.advance(at - self.now)
        reply = self._client.rpc("job-manager.sim-submit", {
            "jobspec": spec, "runtime": runtime, "priority": priority,
            "userid": self._broker.owner if userid is None else userid,
        }).get()
        if not self._bursting:
            # The scheduler acts on it before the next submission, at the same
            # virtual instant, as on an instance where submissions are ms apart.
            self._broker.run_until_idle()
        return int(reply["id"])

    @contextlib.contextmanager
    def burst(self) -> Iterator[None]:
        """Jobs submitted in this block reach the scheduler together, at
        the block's end (one scheduling pass for all), as when ``flux queue
        start`` releases a stopped queue (a replay does not: jobs of one
        submit time come one at a time, as on an instance).  Use it for thousands of jobs at one instant: one
        pass each costs what flux-core's forecast of the whole queue costs."""
        if self._bursting:
            raise RuntimeError("burst() blocks do not nest")
        self._bursting = True
        try:
            yield
        finally:
            self._bursting = False
            self._use()
            self._broker.run_until_idle()

    def reload_scheduler(self, *args: str) -> None:
        """Remove the scheduler and load it again (with *args*), as ``flux
        module reload`` does: the new one takes the running jobs back
        through RFC 27's hello (looking their R up in the KVS) and is sent
        the pending jobs again."""
        self._use()
        if self.scheduler is not None and not self.scheduler.exited:
            self._broker.remove(self.scheduler.name)
        self.scheduler = None
        self._client.rpc("job-manager.sim-sched-gone").get()
        self._load_scheduler(args)

    def cancel(self, jobid: int) -> None:
        """Cancel a job: a pending one leaves the scheduler's queue, a running one ends now."""
        self._use()
        self._client.rpc("job-manager.sim-cancel", {"id": jobid}).get()
        self._broker.run_until_idle()

    def prioritize(self, jobid: int, priority: int) -> None:
        """Change a pending job's priority, as ``flux job urgency`` does: the
        scheduler gets ``sched.prioritize``; 0 holds the job."""
        self._use()
        priority = _count("priority", priority, 0)
        if priority > PRIORITY_MAX:
            raise ValueError(f"priority must be at most {PRIORITY_MAX} (got {priority})")
        self._client.rpc("job-manager.sim-priority", {"id": jobid, "priority": priority}).get()
        self._broker.run_until_idle()

    def drain(self, ranks: str, at: Optional[float] = None) -> None:
        """Drain *ranks* (an idset, ``"2-3"``) as ``flux resource drain``
        does, now or at wall clock *at*: the scheduler is told they are down
        and allocates nothing there; jobs running there go on."""
        self._resource_update(ranks, "down", at)

    def undrain(self, ranks: str, at: Optional[float] = None) -> None:
        """Bring drained or failed *ranks* back up (as ``flux resource
        undrain``, or a node rejoining), now or at wall clock *at*."""
        self._resource_update(ranks, "up", at)

    def fail(self, ranks: str, at: Optional[float] = None) -> None:
        """*ranks* fail, now or at wall clock *at*: the scheduler is told
        they are down, then each job running there ends (state ``failed``)
        and its R is freed, as flux-core ends a job that lost a node."""
        self._resource_update(ranks, "failed", at)

    def _resource_update(self, ranks: str, state: str, at: Optional[float]) -> None:
        self._use()
        try:
            decoded = _idset.decode(ranks)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"ranks {ranks!r}: not an idset ({exc})") from None
        after = 0.0
        if at is not None:
            at = _seconds("at", at)
            if at < self.now:
                raise ValueError(f"at={at} is before the simulation's clock ({self.now})")
            after = at - self.now
        self._client.rpc("resource.sim-update", {"ranks": _idset.encode(decoded), "state": state,
                                                 "after": after}).get()
        self._broker.run_until_idle()

    def run(self, until: Optional[float] = None) -> None:
        """Let virtual time pass until every job has ended (or until wall
        clock *until*).  OSError EDEADLK, naming the jobs left, if nothing
        will ever start or end them (a job that fits no free resources that
        will ever be freed, a held job, a scheduler that stopped)."""
        self._use()
        if until is not None:
            until = _seconds("until", until)
            self._broker.advance(max(0.0, until - self.now))
            return
        self._run_until_all_ended(self._all_ended)

    def _run_until_all_ended(self, ended: Callable[[], bool]) -> None:
        try:
            self._broker.run_until(ended, "every job to end")
            self._broker.run_until_idle()  # the scheduler takes the last free, as an instance's would
        except OSError as exc:
            left = [job.id for job in self._jm.jobs.values() if job.t_end is None]
            raise OSError(exc.errno, f"{exc.strerror}: jobs {_idset.encode(left)} never ended"
                          + _last_error(self._broker)) from None

    def _all_ended(self) -> bool:
        return self._jm.ended == len(self._jm.jobs)

    def replay(self, trace: Iterable[SWFJob], progress: Optional[Callable[[int, int], None]] = None) -> None:
        """Submit each job of an SWF trace at its submit time (relative to
        the simulation's start) and run them all.  *progress*, if given, is
        called now and then with the jobs submitted and ended so far."""
        start = self.now
        submitted = 0
        for submit, jobs in itertools.groupby(sorted(trace, key=lambda j: (j.submit, j.number)),
                                              key=lambda j: j.submit):
            self.run(until=start + submit)
            for job in jobs:
                # One single-core task per processor, as a trace's processors are
                # counted; jobs of one submit time reach the scheduler one at a
                # time, as on an instance where they come milliseconds apart.
                self.submit(ntasks=job.processors, runtime=job.runtime, duration=job.requested_time)
                submitted += 1
            if progress is not None:
                progress(submitted, self._jm.ended)
        if progress is None:
            self.run()
            return
        self._use()
        self._run_until_all_ended(lambda: progress(submitted, self._jm.ended) or self._all_ended())

    def outcome(self) -> Outcome:
        """The jobs' results so far (one :class:`JobResult` each, times in
        seconds since the simulation began), kept after :meth:`close`: to
        summarise (``.metrics()``), write (``.write("jobs.csv")``) or
        :func:`plot`."""
        epoch = self.clock.epoch
        return Outcome(tuple(job_result(job, epoch) for job in self._jm.jobs.values()),
                       self.nodes * self.cores, self._broker.now)

    def summary(self) -> Dict[str, Any]:
        """The metrics of the jobs so far (see :func:`metrics`): ``jobs``,
        ``started``, ``mean_wait``, ``max_wait``, ``mean_bounded_slowdown``,
        ``max_bounded_slowdown``, ``makespan`` (first submission to the last
        end, or to now while jobs run), ``utilisation`` (core-seconds used
        over core-seconds there were in the makespan) and ``per_user``."""
        return self.outcome().metrics()

    def close(self) -> None:
        """Remove the modules and put flux-core's clock back."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._broker.panicked is None:
                self._broker.close()
        finally:
            self._restore()

    def __enter__(self) -> "Simulation":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _last_error(broker: Broker) -> str:
    """The broker log's last error line, as '; the log's last error: ...' (or '')."""
    errors = [line for line in broker.dmesg() if ".err[" in line or ".crit[" in line]
    return f"; the log's last error: {errors[-1]}" if errors else ""


def _namespaces(instance: Any) -> List[Dict[str, Any]]:
    """The module globals of the classes a module instance is made of."""
    seen: Dict[int, Dict[str, Any]] = {}
    for cls in type(instance).__mro__:
        for value in vars(cls).values():
            globals_ = getattr(getattr(value, "__func__", value), "__globals__", None)
            if isinstance(globals_, dict):
                seen.setdefault(id(globals_), globals_)
    return list(seen.values())
