"""``flux-brokermod simulate``: replay jobs through schedulers on virtual time."""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from flux.schedsim._plot import PLOT_FORMATS
from flux.schedsim._results import FORMATS

#: Set in the environment of the re-run under flux-core's Python: where it
#: leaves the outcomes, for this process to plot.
OUTCOMES_ENV = "FLUX_BROKERMOD_SIMULATE_OUTCOMES"

_COLUMNS = (f"{'jobs':>6} {'started':>7} {'mean wait':>10} {'max wait':>10} {'mean bsld':>8} {'makespan':>10} "
            f"{'util':>6}")


def add_parser(sub: Any) -> None:
    """Add the ``simulate`` subcommand to the ``flux-brokermod`` parser."""
    simulate = sub.add_parser(
        "simulate",
        help="run schedulers on a trace in the in-memory broker, on virtual time",
        description=(
            "Replay the jobs of an SWF trace (the Parallel Workloads Archive's Standard Workload "
            "Format) through each SCHEDULER (a file, or the name of one of flux-core's: sched-fifo, "
            "sched-simple, sched-backfill), unchanged, in the in-memory broker on virtual time, on "
            "NODES nodes of CORES cores; print each one's wait times (seconds) and utilisation. "
            "Needs flux-core 0.88+ (its Python bindings, not an instance): with `flux` on PATH, it runs "
            "under `flux env` or `flux python` when this Python lacks them. Exit status: 0 when every "
            "scheduler ran every job, 1 when one could not, 2 for a bad command line."
        ),
    )
    simulate.add_argument("--swf", required=True, metavar="TRACE", help="the SWF trace to replay")
    simulate.add_argument("--nodes", type=_at_least(1), default=1, help="nodes in the instance (default 1)")
    simulate.add_argument("--cores", type=_at_least(1), required=True, help="cores per node")
    simulate.add_argument("--jobs", type=_at_least(0), default=0, metavar="N",
                          help="replay the first N jobs only (default 0: all)")
    simulate.add_argument("--sched-arg", action="append", default=[], metavar="ARG",
                          help="a module argument for every scheduler (repeatable), e.g. queue-depth=8; "
                               "one scheduler's own go after its name: sched-fifo:queue-depth=8,ARG2")
    simulate.add_argument("--drain", action="append", default=[], type=_rank_event, metavar="RANKS@START[-END]",
                          help="drain RANKS (an idset, 0-3) START seconds into the trace, and undrain them at "
                               "END if given (repeatable): jobs running there go on")
    simulate.add_argument("--fail", action="append", default=[], type=_rank_event, metavar="RANKS@START[-END]",
                          help="RANKS fail at START (jobs running there end, state failed) and come back at "
                               "END if given (repeatable)")
    simulate.add_argument("--output", metavar="FILE", type=_ending(*FORMATS),
                          help="write one row per job and scheduler to FILE (.csv, or .json/.jsonl: JSON lines)")
    simulate.add_argument("--plot", metavar="FILE", type=_ending(*PLOT_FORMATS),
                          help="draw each scheduler's utilisation over time and wait distribution to FILE "
                               "(.png, .svg or .pdf; needs matplotlib: pip install 'flux-brokermod[plot]')")
    simulate.add_argument("schedulers", nargs="+", metavar="SCHEDULER[:ARG,...]")


def _ending(*extensions: str) -> Any:
    def parse(path: str) -> str:
        if not path.lower().endswith(extensions):
            raise argparse.ArgumentTypeError(f"{path!r}: name a {', '.join(extensions)} file")
        return os.path.abspath(path)

    return parse


class RankEvent(NamedTuple):
    """``--drain``/``--fail``: *ranks* go down at *start* seconds into the trace, up at *end* (if not None)."""

    ranks: str
    start: float
    end: Optional[float]
    text: str


def _rank_event(text: str) -> RankEvent:
    from flux import _idset

    ranks, at, times = text.partition("@")
    start, _, end = times.partition("-")
    try:
        ranks = _idset.encode(_idset.decode(ranks))
        first, last = float(start), (float(end) if end else None)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r}: expected RANKS@START[-END], e.g. 0-3@3600-7200") from None
    if not at or not math.isfinite(first) or first < 0 or (last is not None and not (math.isfinite(last)
                                                                                    and last > first)):
        raise argparse.ArgumentTypeError(f"{text!r}: expected RANKS@START[-END] with 0 <= START < END seconds")
    return RankEvent(ranks, first, last, text)


def scheduler_and_args(spec: str, common: Sequence[str]) -> Tuple[str, List[str]]:
    """``sched-fifo:queue-depth=8,x`` -> ``("sched-fifo", [*common, "queue-depth=8", "x"])``."""
    name, _, own = spec.partition(":")
    return name, [*common, *filter(None, own.split(","))]


def _at_least(least: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} is below {least}")
        return value

    return parse


def simulate(options: argparse.Namespace, out: Any = None, err: Any = None) -> int:
    """Run ``flux-brokermod simulate``; return the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        import flux.scheduler  # noqa: F401
    except ImportError:
        return _again_with_flux_core(options, err)
    from flux.schedsim import Simulation, read_swf

    try:
        trace = list(read_swf(options.swf, options.jobs))
    except (OSError, ValueError) as exc:
        print(f"flux-brokermod: simulate: {options.swf}: {exc}", file=err)
        return 1
    print(f"{len(trace)} jobs of {options.swf} on {options.nodes} nodes x {options.cores} cores", file=out)
    width = max([len("scheduler")] + [len(name) for name in options.schedulers])
    print(f"{'scheduler':<{width}} {_COLUMNS}", file=out)
    status = 0
    outcomes: Dict[str, Any] = {}
    for spec in options.schedulers:
        scheduler, args = scheduler_and_args(spec, options.sched_arg)
        progress = _Progress(spec, len(trace), err) if err.isatty() else None
        try:
            with Simulation(scheduler, *args, nodes=options.nodes, cores=options.cores) as sim:
                for event in options.drain + options.fail:
                    down = sim.drain if event in options.drain else sim.fail
                    down(event.ranks, at=sim.now + event.start)
                    if event.end is not None:
                        sim.undrain(event.ranks, at=sim.now + event.end)
                sim.replay(trace, progress=progress)
                outcome = outcomes[spec] = sim.outcome()
        except Exception as exc:  # noqa: BLE001 - one scheduler's failure must not hide the others
            print(f"flux-brokermod: simulate: {spec}: {exc}", file=err)
            status = 1
            continue
        finally:
            if progress is not None:
                progress.done()
        s = outcome.metrics()
        denied = [r for r in outcome.results if r.state == "denied"]
        print(f"{spec:<{width}} {s['jobs']:>6} {s['started']:>7} {s['mean_wait']:>10.1f} {s['max_wait']:>10.1f} "
              f"{s['mean_bounded_slowdown']:>8.2f} {s['makespan']:>10.1f} {s['utilisation']:>6.3f}", file=out)
        if denied:
            note = sim.jobs[denied[0].id].note
            print(f"flux-brokermod: simulate: {spec}: {len(denied)} jobs denied, the first ({denied[0].id}): "
                  f"{note}", file=err)
            status = 1
    return max(status, _write(options, outcomes, err))


def _write(options: argparse.Namespace, outcomes: Dict[str, Any], err: Any) -> int:
    """Write ``--output`` and ``--plot``; 1 if one could not be written (said on *err*), else 0."""
    status = 0
    if options.output and outcomes:
        try:
            with open(options.output, "w", encoding="utf-8", newline="") as f:
                from flux.schedsim._results import format_of

                fmt = format_of(options.output)
                for spec, outcome in outcomes.items():
                    outcome.write(f, fmt, scheduler=spec)
        except (OSError, ValueError) as exc:
            print(f"flux-brokermod: simulate: --output: {exc}", file=err)
            status = 1
    handback = os.environ.get(OUTCOMES_ENV)
    if handback:
        with open(handback, "w", encoding="utf-8") as f:
            json.dump({spec: o._asdict() for spec, o in outcomes.items()}, f)
    elif options.plot and outcomes:
        status = max(status, _plot(options, outcomes, err))
    return status


def _plot(options: argparse.Namespace, outcomes: Dict[str, Any], err: Any) -> int:
    from flux.schedsim._plot import plot

    try:
        plot(outcomes, options.plot, title=f"{os.path.basename(options.swf)} on {options.nodes} nodes x "
                                            f"{options.cores} cores")
    except (OSError, ValueError, ImportError) as exc:
        print(f"flux-brokermod: simulate: --plot: {exc}", file=err)
        return 1
    return 0


def _load_outcomes(path: str) -> Dict[str, Any]:
    from flux.schedsim._results import JobResult, Outcome

    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return {spec: Outcome(tuple(JobResult(*r) for r in o["results"]), o["total_cores"], o["elapsed"])
            for spec, o in data.items()}


class _Progress:
    """A progress bar on a terminal, redrawn at most every :data:`INTERVAL` seconds."""

    #: Seconds between redraws.
    INTERVAL = 0.2
    WIDTH = 30

    def __init__(self, label: str, total: int, err: Any) -> None:
        self.label, self.total, self.err = label, total, err
        self.last = 0.0

    def __call__(self, submitted: int, ended: int) -> None:
        now = time.monotonic()
        if now - self.last < self.INTERVAL:
            return
        self.last = now
        filled = self.WIDTH * ended // self.total if self.total else self.WIDTH
        self.err.write(f"\r{self.label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] "
                       f"{ended}/{self.total} jobs ended, {submitted} submitted")
        self.err.flush()

    def done(self) -> None:
        """Clear the bar's line."""
        if self.last:
            self.err.write("\r\033[K")
            self.err.flush()


def _again_with_flux_core(options: argparse.Namespace, err: Any) -> int:
    """Run the command again with a Python that imports flux-core's bindings:
    this one under ``flux env``, else ``flux python`` (the one flux-core was
    built for), with this package on its path."""
    from flux._flux_command import find_flux

    flux = find_flux()
    if flux is None or os.environ.get("FLUX_BROKERMOD_SIMULATE_REEXEC"):
        print("flux-brokermod: simulate: needs flux-core 0.88+'s Python bindings (flux.scheduler): "
              + ("they do not import here" if flux else "no flux on PATH (nor $FLUX_BROKERMOD_FLUX)"), file=err)
        return 1
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, FLUX_BROKERMOD_SIMULATE_REEXEC="1",
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    argv: List[str] = ["simulate", "--swf", options.swf, "--nodes", str(options.nodes),
                       "--cores", str(options.cores), "--jobs", str(options.jobs)]
    for arg in options.sched_arg:
        argv += ["--sched-arg", arg]
    for flag, events in (("--drain", options.drain), ("--fail", options.fail)):
        for event in events:
            argv += [flag, event.text]
    if options.output:
        argv += ["--output", options.output]
    argv += ["--", *options.schedulers]
    why = ""
    for python in ([flux, "env", sys.executable], [flux, "python"]):
        probe = subprocess.run([*python, "-c", "import flux.scheduler"], env=env, capture_output=True, text=True)
        if probe.returncode == 0:
            if not options.plot:
                return subprocess.call([*python, "-m", "flux._brokermod_cli", *argv], env=env)
            # The plot is drawn here, where `pip install 'flux-brokermod[plot]'` put
            # matplotlib, from the outcomes the other Python hands back.
            with tempfile.TemporaryDirectory(prefix="flux-brokermod-simulate-") as tmp:
                env[OUTCOMES_ENV] = handback = os.path.join(tmp, "outcomes.json")
                status = subprocess.call([*python, "-m", "flux._brokermod_cli", *argv], env=env)
                try:
                    outcomes = _load_outcomes(handback)
                except FileNotFoundError:
                    return status
            return max(status, _plot(options, outcomes, err))
        why = why or (probe.stderr.strip().splitlines() or ["?"])[-1]
    print(f"flux-brokermod: simulate: needs flux-core 0.88+'s Python bindings (flux.scheduler), which import "
          f"neither here nor in `flux python`: {why}", file=err)
    return 1
