"""Run test_schedsim.py where flux-core's Python bindings are (``flux env``),
whenever flux-core 0.88+ is found: its schedulers need them in-process."""

import os
import subprocess
import sys

import pytest

from flux.brokermod_testing import find_flux

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_flux_cores_schedulers_run_unchanged_in_memory():
    flux = find_flux()
    if flux is None:
        pytest.skip("no real Flux: flux-core 0.88+ not found on PATH (or $FLUX_BROKERMOD_FLUX)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    probe = subprocess.run([flux, "env", sys.executable, "-c", "import flux.scheduler"],
                           env=env, capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"flux-core's bindings do not import in this Python ({sys.version.split()[0]}): {last}")
    run = subprocess.run(
        [flux, "env", sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
         "--no-cov", os.path.join(ROOT, "tests", "test_schedsim.py")],
        env=env, capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-2000:]
