"""Run the in-memory suite many times with the GIL changing hands every
microsecond, optionally beside a CPU-bound process, to shake out races
between the in-memory broker's threads (issue 25).

    python tests/tools/stress.py [--runs 20] [--busy] [--interval 1e-6] [PYTEST_ARGS...]

or ``tox -e stress -- [OPTIONS]``.  Each run is ``python -m pytest
--switch-interval=INTERVAL -m "not real_flux"``; a test that runs past
``--hang-after`` seconds gets every thread's stack dumped (pytest's
faulthandler_timeout), and a run past ``--run-limit`` is killed and counts
as a failure.  Prints one line per run (its time and pytest's summary) and
exits non-zero if any run failed.
"""

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BUSY = "while True: pass"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="how many runs (default 20)")
    parser.add_argument("--busy", action="store_true", help="keep one CPU-bound process running beside the suite")
    parser.add_argument("--interval", type=float, default=1e-6, help="the switch interval (default 1e-6 s)")
    parser.add_argument("--hang-after", type=float, default=300, help="dump stacks of a test past this (s)")
    parser.add_argument("--run-limit", type=float, default=1800, help="kill a run past this (s)")
    args, pytest_args = parser.parse_known_args()
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-cov",
        f"--switch-interval={args.interval:g}", "-m", "not real_flux",
        "-o", f"faulthandler_timeout={args.hang_after:g}", "-rfE", *pytest_args,
    ]
    busy = subprocess.Popen([sys.executable, "-c", BUSY]) if args.busy else None
    failed = 0
    total = time.monotonic()
    try:
        for run in range(1, args.runs + 1):
            started = time.monotonic()
            try:
                done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=args.run_limit)
                lines = done.stdout.strip().splitlines()
                summary = lines[-1] if lines else "(no output)"
                ok = done.returncode == 0
            except subprocess.TimeoutExpired as expired:
                summary = f"killed after {args.run_limit:g} s (a hang?)"
                lines = (expired.stdout or b"").decode(errors="replace").splitlines()
                ok = False
            print(f"run {run}/{args.runs}: {time.monotonic() - started:.0f} s: {summary}", flush=True)
            if not ok:
                failed += 1
                report = [line for line in lines if not line.startswith("SKIPPED")]
                first = next((i for i, line in enumerate(report) if "= FAILURES =" in line or "= ERRORS =" in line), 0)
                print("\n".join(report[first:][-200:]), flush=True)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    beside = " beside a CPU-bound process" if args.busy else ""
    print(f"{args.runs - failed} of {args.runs} runs passed at switch interval {args.interval:g} s{beside}, "
          f"in {time.monotonic() - total:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
