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


def test_simulate_says_in_one_line_when_no_python_imports_flux_cores_bindings(tmp_path):
    fake = tmp_path / "flux"
    fake.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named '_cffi_backend'\" >&2\nexit 1\n")
    fake.chmod(0o755)
    script = ("import sys\nsys.modules['flux.scheduler'] = None\n"
              "from flux._brokermod_cli import main\nsys.exit(main(sys.argv[1:]))\n")
    run = subprocess.run([sys.executable, "-c", script, "simulate", "--swf", "x.swf", "--cores", "1", "sched-fifo"],
                         capture_output=True, text=True, env={"PATH": "/nonexistent", "FLUX_BROKERMOD_FLUX": str(fake)})
    assert run.returncode == 1
    assert run.stderr.strip() == (
        "flux-brokermod: simulate: needs flux-core 0.88+'s Python bindings (flux.scheduler), which import "
        "neither here nor in `flux python`: ModuleNotFoundError: No module named '_cffi_backend'")
