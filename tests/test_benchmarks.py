"""The benchmark command runs (its in-memory part here; no time is asserted)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_command_reports_what_it_measured(tmp_path):
    env = dict(os.environ, FLUX_BROKERMOD_FLUX=str(tmp_path / "no-flux"))  # the real part skips
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--rounds", "1", "--requests", "200"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "real instance: skipped (no real Flux" in out
    assert "echo requests per second" in out and "one test's fixed cost (ms)" in out
