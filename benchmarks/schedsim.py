"""Benchmark: flux-core's sched-fifo in memory, on virtual time, against a real instance.

    flux python benchmarks/schedsim.py [--jobs N] [--nodes N] [--burst N]

Needs flux-core 0.88+ (``flux python`` is the Python its bindings were
built for).  Prints, for ``sched-fifo`` unchanged:

1. *trace*: --jobs jobs on --nodes nodes of 32 cores, one submitted every
   5 virtual seconds (sizes and run times from a fixed seed): real seconds
   taken and virtual seconds simulated;
2. *burst*: --burst one-core jobs of 0.01 s on one node of 16 cores, all at
   once, in memory, and (when ``flux`` is on PATH) the same jobs on ``flux
   start --test-size=1`` with that R and simulated execution: jobs per
   real second of each, on this machine.

Nothing here asserts a time.
"""

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from flux._flux_command import find_flux  # noqa: E402
from flux.schedsim import Simulation  # noqa: E402

REAL = """set -e
flux module remove sched-simple
flux module load sched-fifo queue-depth=unlimited
t0=$(date +%s.%N)
flux submit --cc=1-{n} --quiet -n1 --setattr=system.exec.test.run_duration=0.01s true
flux queue drain
echo "$t0 $(date +%s.%N)"
"""


def trace(jobs: int, nodes: int) -> None:
    rng = random.Random(1)
    t0 = time.perf_counter()
    with Simulation("sched-fifo", nodes=nodes, cores=32) as sim:
        start = sim.now
        for i in range(jobs):
            sim.submit(nnodes=rng.choice([1, 1, 2, 4, 8, 16]), ncores=32, runtime=rng.randint(60, 3600),
                       at=start + i * 5)
        sim.run()
        summary = sim.summary()
    real = time.perf_counter() - t0
    print(f"trace: {jobs} jobs on {nodes} nodes x 32 cores: {real:.1f} real s, "
          f"{summary['makespan']:.0f} virtual s simulated, mean wait {summary['mean_wait']:.0f} s, "
          f"utilisation {summary['utilisation']:.3f}")


def burst(jobs: int) -> None:
    t0 = time.perf_counter()
    with Simulation("sched-fifo", "queue-depth=unlimited", nodes=1, cores=16) as sim:
        with sim.burst():
            for _ in range(jobs):
                sim.submit(ncores=1, runtime=0.01)
        sim.run()
        makespan = sim.summary()["makespan"]
    real = time.perf_counter() - t0
    print(f"burst in memory: {jobs} jobs in {real:.2f} real s ({jobs / real:.0f} jobs/s), "
          f"{makespan:.2f} virtual s")
    flux = find_flux()
    if flux is None:
        print("burst on a real instance: skipped (no flux on PATH, nor $FLUX_BROKERMOD_FLUX)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        R = subprocess.run([flux, "R", "encode", "-r", "0", "-c", "0-15", "-H", socket.gethostname()],
                           capture_output=True, text=True, check=True).stdout
        with open(os.path.join(tmp, "R.json"), "w") as f:
            f.write(R)
        with open(os.path.join(tmp, "conf.toml"), "w") as f:
            f.write(f'[resource]\nnoverify = true\npath = "{tmp}/R.json"\n')
        with open(os.path.join(tmp, "run.sh"), "w") as f:
            f.write(REAL.format(n=jobs))
        out = subprocess.run([flux, "start", "--test-size=1", f"--config-path={tmp}/conf.toml",
                              "bash", f"{tmp}/run.sh"], capture_output=True, text=True, check=True).stdout
    start, end = (float(x) for x in out.split()[-2:])
    print(f"burst on a real instance (simulated execution): {jobs} jobs in {end - start:.2f} real s "
          f"({jobs / (end - start):.0f} jobs/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--burst", type=int, default=500)
    args = parser.parse_args()
    trace(args.jobs, args.nodes)
    burst(args.burst)


if __name__ == "__main__":
    main()
