"""``flux-brokermod simulate``: replay jobs through schedulers on virtual time."""

import argparse
import os
import subprocess
import sys
from typing import Any, List, Optional

_COLUMNS = f"{'jobs':>6} {'started':>7} {'mean wait':>10} {'max wait':>10} {'makespan':>10} {'util':>6}"


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
                          help="a module argument for every scheduler (repeatable), e.g. queue-depth=unlimited")
    simulate.add_argument("schedulers", nargs="+", metavar="SCHEDULER")


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
    for scheduler in options.schedulers:
        try:
            with Simulation(scheduler, *options.sched_arg, nodes=options.nodes, cores=options.cores) as sim:
                sim.replay(trace)
                s = sim.summary()
                denied = [job for job in sim.jobs.values() if job.state == "denied"]
        except Exception as exc:  # noqa: BLE001 - one scheduler's failure must not hide the others
            print(f"flux-brokermod: simulate: {scheduler}: {exc}", file=err)
            status = 1
            continue
        print(f"{scheduler:<{width}} {s['jobs']:>6} {s['started']:>7} {s['mean_wait']:>10.1f} {s['max_wait']:>10.1f} "
              f"{s['makespan']:>10.1f} {s['utilisation']:>6.3f}", file=out)
        if denied:
            print(f"flux-brokermod: simulate: {scheduler}: {len(denied)} jobs denied, the first ({denied[0].id}): "
                  f"{denied[0].note}", file=err)
            status = 1
    return status


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
    argv += ["--", *options.schedulers]
    why = ""
    for python in ([flux, "env", sys.executable], [flux, "python"]):
        probe = subprocess.run([*python, "-c", "import flux.scheduler"], env=env, capture_output=True, text=True)
        if probe.returncode == 0:
            return subprocess.call([*python, "-m", "flux._brokermod_cli", *argv], env=env)
        why = why or (probe.stderr.strip().splitlines() or ["?"])[-1]
    print(f"flux-brokermod: simulate: needs flux-core 0.88+'s Python bindings (flux.scheduler), which import "
          f"neither here nor in `flux python`: {why}", file=err)
    return 1
