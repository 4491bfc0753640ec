"""The CLI's commands that look for flux-core work where pytest is not installed."""

import subprocess
import sys


def test_simulate_and_check_need_no_pytest(tmp_path):
    # A Python that cannot import pytest (nor flux-core 0.88+'s flux.scheduler): each command answers in one line.
    script = (
        "import sys\n"
        "sys.modules['pytest'] = None\n"
        "sys.modules['flux.scheduler'] = None\n"
        "from flux._brokermod_cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {"PATH": "/nonexistent", "FLUX_BROKERMOD_FLUX": str(tmp_path / "no-flux")}
    run = subprocess.run([sys.executable, "-c", script, "simulate", "--swf", "x.swf", "--cores", "1", "sched-fifo"],
                         capture_output=True, text=True, env=env)
    assert (run.returncode, run.stderr.strip().count("\n")) == (1, 0), run.stderr
    assert "needs flux-core 0.88+'s Python bindings" in run.stderr
    run = subprocess.run([sys.executable, "-c", script, "check"], capture_output=True, text=True, env=env)
    assert run.returncode == 1 and run.stdout.startswith("flux-core not found"), run.stderr
