"""Jobs of a trace in the Standard Workload Format (SWF).

SWF is the format of the Parallel Workloads Archive
(https://www.cs.huji.ac.il/labs/parallel/workload/): one job per line, 18
whitespace-separated fields, ``;`` starting a header comment.  A replay
needs four of them: the submit time (field 2), the run time (4), the
processors (8, requested; else 5, allocated) and the requested time (9;
else the run time).
"""

import math
from typing import Iterable, Iterator, NamedTuple, TextIO, Union


class SWFJob(NamedTuple):
    """One job of an SWF trace (times in seconds)."""

    #: The job's number in the trace.
    number: int
    #: Submit time, relative to the trace's start.
    submit: float
    #: How long it ran.
    runtime: float
    #: How many processors it asked for.
    processors: int
    #: Its time limit.
    requested_time: float


def read_swf(source: Union[str, TextIO, Iterable[str]], limit: int = 0) -> Iterator[SWFJob]:
    """The jobs of an SWF trace (a path, an open file or lines), skipping
    jobs that never ran (run time or processors unknown or zero); at most
    *limit* jobs when *limit* > 0.  ValueError names the line of a line
    that is not SWF."""
    if limit < 0:
        raise ValueError(f"limit must be 0 (all) or more (got {limit})")
    if isinstance(source, str):
        with open(source, encoding="utf-8", errors="surrogateescape") as f:  # comments may hold anything
            yield from read_swf(f, limit)
        return
    count = 0
    for lineno, line in enumerate(source, 1):
        text = line.split(";", 1)[0].strip()
        if not text:
            continue
        fields = text.split()
        if len(fields) < 9:
            raise ValueError(f"line {lineno}: {len(fields)} fields, an SWF job line has 18")
        try:
            number, submit, runtime = int(fields[0]), float(fields[1]), float(fields[3])
            processors = int(fields[7]) if int(fields[7]) > 0 else int(fields[4])
            requested = float(fields[8]) if float(fields[8]) > 0 else runtime
        except ValueError as exc:
            raise ValueError(f"line {lineno}: {exc}") from None
        if not all(math.isfinite(x) for x in (submit, runtime, requested)):
            raise ValueError(f"line {lineno}: times must be finite numbers")
        if submit < 0:
            raise ValueError(f"line {lineno}: submit time {submit:g} is before the trace's start (0)")
        if runtime <= 0 or processors <= 0:
            continue
        yield SWFJob(number, submit, runtime, processors, max(requested, runtime))
        count += 1
        if limit and count >= limit:
            return
