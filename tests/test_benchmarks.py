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


def test_tree_benchmark_counts_rank_0s_messages(tmp_path):
    """In memory, a tree reduction costs rank 0 (children + 1) messages and
    the flat one (size + 2); the real part skips without flux-core."""
    env = dict(os.environ, FLUX_BROKERMOD_FLUX=str(tmp_path / "no-flux"))
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "tree.py"), "--sizes", "16,64", "--reductions", "10",
         "--json"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr
    import json

    out = json.loads(result.stdout)
    messages = {(topo, size, name): count for topo, size, name, count, _ in out["memory"]}
    assert messages[("kary:32", 64, "tree")] == 32 + 1 and messages[("kary:2", 64, "tree")] == 2 + 1
    assert messages[("kary:32", 64, "flat")] == 64 + 2 and messages[("kary:2", 16, "flat")] == 16 + 2
    assert out["real"] is None and out["skipped"].startswith("no real Flux")
