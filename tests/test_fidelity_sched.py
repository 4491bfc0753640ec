"""The scheduler emulator against a real instance (docs/fidelity.md, sched-*),
as test_schedsim.py's sched-fifo differential does: the same jobs through
the same flux-core scheduler on ``flux start --test-size=1`` (fake
resources, simulated execution) and in memory on virtual time; the order
of allocations must be the same.

flux-core's schedulers need its Python bindings in the test's process;
without them here, the test runs itself again under ``flux env`` (as
test_schedsim_under_flux.py does for test_schedsim.py), and is skipped
only when they cannot be imported there either.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

from flux.brokermod_testing import find_flux

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = "FLUX_BROKERMOD_FIDELITY_SCHED_CHILD"  # set in the run under `flux env`


def has_scheduler_bindings():
    try:
        import _flux._core  # noqa: F401
        import flux.scheduler  # noqa: F401
    except ImportError:
        return False
    return True


def run_under_flux_env(flux, test):
    """Run this file's *test* where flux-core's bindings are (``flux env``)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    env[CHILD] = "1"
    run = subprocess.run(
        [flux, "env", sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:randomly", "-p", "no:cacheprovider",
         "--no-cov", f"{os.path.abspath(__file__)}::{test}"],
        env=env, capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    if run.returncode == 0 and " skipped" in run.stdout and " passed" not in run.stdout:
        pytest.skip(run.stdout.strip().splitlines()[-1])
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "1 passed" in run.stdout, run.stdout[-2000:]


def needs_the_bindings(test):
    """Skip, run under ``flux env``, or go on here (True)."""
    flux = find_flux()
    if flux is None:
        pytest.skip("no real Flux: flux-core not found on PATH (or $FLUX_BROKERMOD_FLUX)")
    if has_scheduler_bindings():
        return flux
    if os.environ.get(CHILD):
        pytest.skip("flux-core's Python bindings do not import under `flux env` either "
                    "(pip install 'flux-brokermod[flux]': cffi, pyyaml, ply)")
    probe = subprocess.run([flux, "env", sys.executable, "-c", "import flux.scheduler"], capture_output=True, text=True)
    if probe.returncode != 0:  # as test_schedsim_under_flux.py does
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"flux-core's bindings do not import in this Python ({sys.version.split()[0]}): {last}")
    run_under_flux_env(flux, test)
    return None


# sched-6: an urgent job overtakes a full limited queue ----------------------------

QUEUE_DEPTH = 2  # sched-simple's limit on outstanding alloc requests (default 8)
BLOCKER_SECONDS = 3  # long enough that every other job is submitted while it runs

URGENT_INSIDE = """set -e
flux module remove sched-simple
flux module load sched-simple queue-depth={depth}
run() {{ flux submit -n1 -c2 -t 100s --setattr=system.exec.test.run_duration=${{1}}s "${{@:2}}" true; }}
blocker=$(run {blocker})
flux job wait-event $blocker alloc
low=$(run 1 --urgency=1 --cc=1-{nlow})
urgent=$(run 1 --urgency=20)
flux queue drain
for id in $blocker $low $urgent; do
  printf '{{"alloc": %s, "jobspec": %s}}\\n' \\
    "$(flux job eventlog $id | awk '$2=="alloc"{{print $1}}')" "$(flux job info $id jobspec)"
done
"""


def test_an_urgent_job_overtakes_a_full_limited_queue_on_both_brokers(tmp_path):
    """A 2-core blocker runs; QUEUE_DEPTH + 1 jobs of urgency 1 wait (the
    limited queue is full); then one of urgency 20 comes: on both, it is
    allocated right after the blocker, before the earlier low ones."""
    flux = needs_the_bindings("test_an_urgent_job_overtakes_a_full_limited_queue_on_both_brokers")
    if flux is None:
        return  # it ran (and passed) under `flux env`
    nlow = QUEUE_DEPTH + 1
    real = run_on_a_real_instance(flux, tmp_path, URGENT_INSIDE.format(depth=QUEUE_DEPTH, blocker=BLOCKER_SECONDS,
                                                                        nlow=nlow))
    assert len(real) == nlow + 2
    runtimes = [BLOCKER_SECONDS] + [1] * (nlow + 1)
    priorities = [16] + [1] * nlow + [20]
    memory = run_in_memory("sched-simple", [f"queue-depth={QUEUE_DEPTH}"], 2,
                           [(job["jobspec"], seconds, priority)
                            for job, seconds, priority in zip(real, runtimes, priorities)])

    def order(times):
        return sorted(range(len(times)), key=lambda i: (times[i], i))

    real_order = order([job["alloc"] for job in real])
    assert real_order[:3] == [0, nlow + 1, 1]  # blocker, urgent, the first low one: what real does
    assert order(memory) == real_order
    t0 = min(job["alloc"] for job in real)
    assert [round(job["alloc"] - t0) for job in real] == [t - memory[0] for t in memory]


def run_on_a_real_instance(flux, tmp_path, inside):
    """Run *inside* (bash) in ``flux start --test-size=1`` on one fake node of
    2 cores; return the JSON lines it printed."""
    R = subprocess.run([flux, "R", "encode", "-r", "0", "-c", "0-1", "-H", socket.gethostname()],
                       capture_output=True, text=True, check=True).stdout
    (tmp_path / "R.json").write_text(R)
    (tmp_path / "conf.toml").write_text(f'[resource]\nnoverify = true\npath = "{tmp_path / "R.json"}"\n')
    (tmp_path / "inside.sh").write_text(inside)
    run = subprocess.run([flux, "start", "--test-size=1", f"--config-path={tmp_path / 'conf.toml'}",
                          "bash", str(tmp_path / "inside.sh")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]


def run_in_memory(scheduler, args, cores, jobs):
    """Submit *jobs* ((jobspec, runtime, priority), in order) to *scheduler*
    on one node of *cores* cores in memory; return each job's alloc time."""
    from flux.schedsim import Simulation

    with Simulation(scheduler, *args, nodes=1, cores=cores) as sim:
        ids = [sim.submit(spec=spec, runtime=seconds, priority=priority) for spec, seconds, priority in jobs]
        sim.run()
        return [sim.jobs[i].t_alloc for i in ids]
