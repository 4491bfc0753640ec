"""Per-job results of a simulation, the metrics a scheduling study reports,
and writers for them.

Nothing here needs flux-core: a result is built from a
:class:`~flux.schedsim.Job` (or anything with its fields), so results can
be written, summarised and plotted (:mod:`flux.schedsim._plot`) anywhere.

Times are seconds since the simulation began (its epoch), as a trace's are.
"""

import csv
import io
import json
import math
import os
from typing import IO, Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

from flux import _idset

#: The bounded slowdown's threshold (seconds): a job shorter than this
#: counts as this long, so that very short jobs do not dominate the mean
#: (the usual value in the literature, after Feitelson).
BSLD_THRESHOLD = 10.0

#: The output formats :func:`write_results` knows, by file extension.
FORMATS = {".csv": "csv", ".json": "jsonl", ".jsonl": "jsonl"}


class JobResult(NamedTuple):
    """One job's outcome (times in seconds since the simulation began;
    ``start``, ``end``, ``wait``, ``run`` and ``bounded_slowdown`` are None
    for a job that never got that far)."""

    #: The job's ID.
    id: int
    #: The submitting user.
    userid: int
    #: ``complete``, ``timeout``, ``failed``, ``canceled``, ``denied``, ``running`` or ``pending``.
    state: str
    #: When it was submitted.
    submit: float
    #: When it was allocated.
    start: Optional[float]
    #: When it ended.
    end: Optional[float]
    #: Seconds from submission to allocation.
    wait: Optional[float]
    #: Seconds it ran (allocation to end).
    run: Optional[float]
    #: Nodes (ranks) of its allocation (0 if none).
    nodes: int
    #: Cores of its allocation (0 if none).
    cores: int
    #: ``max(1, (wait + run) / max(run, BSLD_THRESHOLD))`` for a job that ran.
    bounded_slowdown: Optional[float]


FIELDS = JobResult._fields


def _allocation(R: Optional[Dict[str, Any]]) -> Tuple[int, int]:
    """(nodes, cores) of an R."""
    if not R:
        return 0, 0
    ranks, cores = set(), 0
    for entry in R["execution"]["R_lite"]:
        these = _idset.decode(entry["rank"])
        ranks.update(these)
        cores += len(these) * len(_idset.decode(entry["children"].get("core", "")))
    return len(ranks), cores


def bounded_slowdown(wait: float, run: float, threshold: float = BSLD_THRESHOLD) -> float:
    """A job's bounded slowdown: its time in the system over its run time,
    the run time taken as at least *threshold*, and never below 1."""
    return max(1.0, (wait + run) / max(run, threshold))


def job_result(job: Any, epoch: float) -> JobResult:
    """The result of one :class:`~flux.schedsim.Job` of a simulation whose clock began at *epoch*."""
    nodes, cores = _allocation(job.R)
    start = None if job.t_alloc is None else job.t_alloc - epoch
    end = None if job.t_end is None else job.t_end - epoch
    wait = None if start is None else start - (job.t_submit - epoch)
    run = None if start is None or end is None else end - start
    return JobResult(job.id, job.userid, job.state, job.t_submit - epoch, start, end, wait, run, nodes, cores,
                     None if wait is None or run is None else bounded_slowdown(wait, run))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def usage_over_time(results: Iterable[JobResult], now: float) -> List[Tuple[float, int]]:
    """Cores in use as a step function: ``(time, cores)`` pairs, each the
    count from that time on, from the first submission to the last end (or
    *now*, for a job still running)."""
    changes: Dict[float, int] = {}
    first: Optional[float] = None
    for r in results:
        first = r.submit if first is None else min(first, r.submit)
        if r.start is None or not r.cores:
            continue
        changes[r.start] = changes.get(r.start, 0) + r.cores
        end = now if r.end is None else r.end
        changes[end] = changes.get(end, 0) - r.cores
    steps: List[Tuple[float, int]] = [] if first is None or first in changes else [(first, 0)]
    in_use = 0
    for t in sorted(changes):
        in_use += changes[t]
        steps.append((t, in_use))
    return steps


def metrics(results: Sequence[JobResult], total_cores: int, now: float) -> Dict[str, Any]:
    """What a study reports of *results* on *total_cores* cores, the clock at *now*:

    ``jobs``, ``started``; ``mean_wait``, ``max_wait``; ``mean_bounded_slowdown``
    and ``max_bounded_slowdown`` (jobs that ended); ``makespan`` (first
    submission to the last end, or to *now* while jobs run);
    ``utilisation`` (core-seconds used over those there were in the
    makespan); ``per_user``: for each user ID, its ``jobs``, ``mean_wait``
    and ``mean_bounded_slowdown``.
    """
    started = [r for r in results if r.start is not None]
    waits = [r.wait for r in started if r.wait is not None]
    slowdowns = [r.bounded_slowdown for r in results if r.bounded_slowdown is not None]
    if results:
        first = min(r.submit for r in results)
        ends = [r.end for r in results if r.end is not None] + [now for r in started if r.end is None]
        makespan = max(ends, default=first) - first
    else:
        makespan = 0.0
    used = sum(r.cores * ((now if r.end is None else r.end) - r.start) for r in started if r.start is not None)
    total = total_cores * makespan
    users: Dict[int, List[JobResult]] = {}
    for r in results:
        users.setdefault(r.userid, []).append(r)
    per_user = {
        userid: {
            "jobs": len(mine),
            "mean_wait": _mean([r.wait for r in mine if r.wait is not None]),
            "mean_bounded_slowdown": _mean([r.bounded_slowdown for r in mine if r.bounded_slowdown is not None]),
        }
        for userid, mine in sorted(users.items())
    }
    return {
        "jobs": len(results),
        "started": len(started),
        "mean_wait": _mean(waits),
        "max_wait": max(waits, default=0.0),
        "mean_bounded_slowdown": _mean(slowdowns),
        "max_bounded_slowdown": max(slowdowns, default=0.0),
        "makespan": makespan,
        "utilisation": used / total if total else 0.0,
        "per_user": per_user,
    }


class Outcome(NamedTuple):
    """A simulation's results at one moment (:meth:`Simulation.outcome()
    <flux.schedsim.Simulation.outcome>`): kept after the simulation closes,
    summarised, written and plotted without flux-core."""

    #: One result per job, in submission order.
    results: Tuple[JobResult, ...]
    #: The instance's cores.
    total_cores: int
    #: The simulation's clock (seconds since it began) when taken.
    elapsed: float

    def metrics(self) -> Dict[str, Any]:
        """:func:`metrics` of these results."""
        return metrics(self.results, self.total_cores, self.elapsed)

    def usage_over_time(self) -> List[Tuple[float, int]]:
        """:func:`usage_over_time` of these results."""
        return usage_over_time(self.results, self.elapsed)

    def write(self, out: Union[str, IO[str]], fmt: Optional[str] = None, **columns: Any) -> None:
        """:func:`write_results` of these results."""
        write_results(self.results, out, fmt, **columns)


def format_of(path: str) -> str:
    """``csv`` or ``jsonl``, from *path*'s extension; ValueError naming the path otherwise."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"{path}: unknown output format {ext or '(no extension)'!r}: "
                         f"name a {', '.join(sorted(FORMATS))} file")
    return FORMATS[ext]


def write_results(results: Iterable[JobResult], out: Union[str, IO[str]], fmt: Optional[str] = None,
                  **columns: Any) -> None:
    """Write one row per job to *out* (a path, or an open text file):
    ``csv`` with a header line, or ``jsonl`` (one JSON object per line).
    *fmt* defaults to the path's extension (``.csv``, ``.json``,
    ``.jsonl``).  *columns* are constant columns put first in every row
    (for instance ``scheduler="sched-fifo"``)."""
    if isinstance(out, str):
        fmt = fmt or format_of(out)
        with open(out, "w", encoding="utf-8", newline="") as f:
            write_results(results, f, fmt, **columns)
        return
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"unknown output format {fmt!r}: csv or jsonl")
    names = list(columns) + list(FIELDS)
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        if not _appending(out):
            writer.writerow(names)
        for r in results:
            writer.writerow(list(columns.values()) + ["" if v is None else _number(v) for v in r])
    else:
        for r in results:
            out.write(json.dumps(dict(columns, **r._asdict()), allow_nan=False) + "\n")


def _appending(out: IO[str]) -> bool:
    """True when *out* already holds rows (a second scheduler's results follow the first's)."""
    try:
        return out.tell() > 0
    except (OSError, io.UnsupportedOperation):
        return False


def _number(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return int(value)  # 600 rather than 600.0 in a CSV a spreadsheet reads
    return value
