"""Benchmarks: what the library costs between the broker and a handler.

    python benchmarks/run.py [--rounds N] [--requests N]

On a real instance (flux-core on PATH, else that part is skipped, saying
why): the module process's CPU time per request, as a ratio to the same
process's C ``ping`` handler (registered by libflux) as the floor, for
each variant of an echo handler; each round runs every variant, and the
table gives the median and the spread (min-max) of the ratios.  In
memory: echo requests per second and the fixed cost of one test
(``Broker()``, load, one request, teardown).  Nothing here asserts a time.
"""

import argparse
import ctypes
import json
import os
import platform
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

from modules import OTHER_MODULES, write_modules  # noqa: E402

CLIENT = r"""
import sys, time
import flux
topic, total, inflight = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
h = flux.Flux()
payload = {"data": "x" * 50}
state = {"sent": 0, "done": 0}
def send():
    state["sent"] += 1
    h.rpc(topic, payload).then(done)
def done(f):
    f.get()
    state["done"] += 1
    if state["sent"] < total:
        send()
    if state["done"] == total:
        h.reactor_stop()
for _ in range(min(inflight, total)):
    send()
h.reactor_run()
"""


STREAM_CLIENT = r"""
import sys, time
import flux
from flux.constants import FLUX_RPC_STREAMING
total = int(sys.argv[1])
h = flux.Flux()
start = time.perf_counter()
f = h.rpc("streamer.stream", {"count": total}, flags=FLUX_RPC_STREAMING)
got = 0
while True:
    try:
        f.get()
    except OSError:
        break
    got += 1
    f.reset()
assert got == total, got
print(total / (time.perf_counter() - start))
"""

EVENT_CLIENT = r"""
import sys, time
import flux
total = int(sys.argv[1])
h = flux.Flux()
before = h.rpc("listener.heard").get()["heard"]
start = time.perf_counter()
for _ in range(total):
    h.event_send("bench.tick")
while h.rpc("listener.heard").get()["heard"] < before + total:
    time.sleep(0.001)
print(total / (time.perf_counter() - start))
"""


_LIBC = ctypes.CDLL(None, use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _cpu(pid: int) -> float:
    """CPU seconds process *pid* has used, to the nanosecond (/proc counts 10 ms ticks)."""
    clock, now = ctypes.c_int(), _Timespec()
    failed = _LIBC.clock_getcpuclockid(pid, ctypes.byref(clock))  # an errno, not -1
    if failed or _LIBC.clock_gettime(clock, ctypes.byref(now)) < 0:
        errnum = failed or ctypes.get_errno()
        raise OSError(errnum, f"cannot read the CPU clock of pid {pid}: {os.strerror(errnum)}")
    return now.tv_sec + now.tv_nsec * 1e-9


def _with_cpu(instance, pid, count, *args, env=None) -> tuple:
    """Run ``flux ARGS``; return (its stdout, process *pid*'s CPU us per item of *count*)."""
    before = _cpu(pid)
    result = instance.flux(*args, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout, (_cpu(pid) - before) / count * 1e6


def _per_request(instance, pid, topic, requests, env=None) -> float:
    """Module CPU us per request of *topic*, 256 in flight from one client."""
    return _with_cpu(instance, pid, requests, "python", "-c", CLIENT, topic, str(requests), "256", env=env)[1]


def _floor(instance, pid, name, requests) -> float:
    """Module CPU per request of the process's C ping handler (libflux's own)."""
    return _per_request(instance, pid, f"{name}.ping", requests)


def _rate(instance, pid, script, count) -> tuple:
    """(per second as the client saw it, module CPU us per item) of *script*."""
    out, us = _with_cpu(instance, pid, count, "python", "-c", script, str(count))
    return float(out.split()[-1]), us


def _load(instance, path) -> int:
    """Load module *path*; return its pid."""
    instance.load(path)
    return instance.rpc(f"{os.path.basename(path)[:-3]}.pid").get()["pid"]


def _seconds(instance, *args) -> float:
    """Wall time of ``flux ARGS``."""
    start = time.perf_counter()
    result = instance.flux(*args)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    return elapsed


def _load_seconds(instance, path) -> float:
    """Wall time of ``flux module load`` of a copy of *path* (then removed)."""
    copy = os.path.join(os.path.dirname(path), "loadme.py")
    with open(path) as src, open(copy, "w") as dst:
        dst.write(src.read())
    elapsed = _seconds(instance, "module", "load", copy)
    _seconds(instance, "module", "remove", "loadme")
    return elapsed


def _summary(values):
    return statistics.median(values), min(values), max(values)


def _vs_floor(instance, pid, name, topic, count, env=None, measure=None) -> tuple:
    """(ratio, us, floor us, rate or None): module CPU per item of *topic*
    (or of *measure*, a function returning (rate, us)) over the process's
    own C ping, measured just before and after (their mean, to even out drift)."""
    before = _floor(instance, pid, name, count)
    rate = None
    if measure is None:
        us = _per_request(instance, pid, topic, count, env=env)
    else:
        rate, us = measure()
    floor = (before + _floor(instance, pid, name, count)) / 2
    return us / floor, us, floor, rate


def real_rows(rounds: int, requests: int):
    """Every real-instance row: echo ratios, streams, events, load times."""
    from flux.brokermod_testing import skip_reason, start_instance

    reason = skip_reason()
    if reason is not None:
        return None, reason
    directory = tempfile.mkdtemp(prefix="brokermod-bench-")
    paths = write_modules(directory)
    others = write_modules(directory, OTHER_MODULES)
    guest = {"FLUX_HANDLE_USERID": "1234", "FLUX_HANDLE_ROLEMASK": "0x2"}
    cases = [(name, name, f"{name}.echo", None) for name in paths]
    cases.append(("respondecho as guest", "respondecho", "respondecho.echo", guest))
    results = {case[0]: [] for case in cases}
    results["flux-core's BrokerModule"] = []
    results["streamed response"] = []
    results["delivered event"] = []
    loads = {"this project's loader": [], "flux-core's loader": [], "flux module list (the CLI alone)": [],
             "flux python: start, import flux": [], "  + import flux.brokermod": []}
    instance = start_instance(attrs={"broker.module-nopanic": "1"})
    # flux-core's own loader and flux.brokermod, for the same module file
    core = start_instance(setup=False, attrs={"broker.module-nopanic": "1"})
    try:
        # Load times first, each loader on an instance with no other Python
        # module yet, the two taking turns so that both see the same drift.
        for _ in range(rounds):
            loads["this project's loader"].append(_load_seconds(instance, paths["respondecho"]))
            loads["flux-core's loader"].append(_load_seconds(core, paths["respondecho"]))
            loads["flux module list (the CLI alone)"].append(_seconds(instance, "module", "list"))
            loads["flux python: start, import flux"].append(_seconds(instance, "python", "-c", "import flux"))
            loads["  + import flux.brokermod"].append(_seconds(instance, "python", "-c", "import flux, flux.brokermod"))
        pids = {name: _load(instance, path) for name, path in {**paths, **others}.items()}
        core_pid = _load(core, paths["respondecho"])
        for _ in range(rounds):
            for label, name, topic, env in cases:
                results[label].append(_vs_floor(instance, pids[name], name, topic, requests, env=env))
            pid = pids["streamer"]
            results["streamed response"].append(_vs_floor(
                instance, pid, "streamer", None, requests,
                measure=lambda: _rate(instance, pid, STREAM_CLIENT, requests)))
            pid = pids["listener"]
            results["delivered event"].append(_vs_floor(
                instance, pid, "listener", None, requests,
                measure=lambda: _rate(instance, pid, EVENT_CLIENT, requests // 4)))
            results["flux-core's BrokerModule"].append(
                _vs_floor(core, core_pid, "respondecho", "respondecho.echo", requests))
    finally:
        core.stop()
        instance.stop()
    rows = [(name, *_summary([r[0] for r in values]), statistics.median(r[1] for r in values))
            for name, values in results.items()]
    floor = statistics.median(r[2] for values in results.values() for r in values)
    rates = [("streamed responses per second", *_summary([r[3] for r in results["streamed response"]])),
             ("events delivered per second", *_summary([r[3] for r in results["delivered event"]]))]
    load_rows = [(name, *(x * 1e3 for x in _summary(values))) for name, values in loads.items()]
    return (rows, floor, rates, load_rows), None


def memory_rows(rounds: int, requests: int):
    from flux.membroker import Broker

    directory = tempfile.mkdtemp(prefix="brokermod-bench-")
    path = write_modules(directory)["respondecho"]
    rates, fixed = [], []
    for _ in range(rounds):
        with Broker() as broker:
            broker.load(path)
            start = time.perf_counter()
            for _ in range(requests):
                broker.rpc("respondecho.echo", {"data": "x"}).get()
            rates.append(requests / (time.perf_counter() - start))
        start = time.perf_counter()
        for _ in range(20):
            with Broker() as broker:
                broker.load(path)
                broker.rpc("respondecho.echo", {"data": "x"}).get()
        fixed.append((time.perf_counter() - start) / 20 * 1e3)
    return [("echo requests per second", statistics.median(rates), min(rates), max(rates)),
            ("one test's fixed cost (ms)", statistics.median(fixed), min(fixed), max(fixed))]


def _table(rows, value: str, spread: str) -> None:
    for name, median, low, high in rows:
        print(f"  {name:34} {value.format(median)} {spread.format(low, high)}")


def main() -> int:
    # An installed package runs from compiled bytecode, and a test suite's
    # module files are compiled once: let every process here cache it too,
    # or load times would include compiling the library and the module.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.dont_write_bytecode = False
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    options = parser.parse_args()
    machine = f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    real, reason = real_rows(options.rounds, options.requests)
    memory = memory_rows(options.rounds, max(1000, options.requests // 10))
    if options.json:
        print(json.dumps({"machine": machine, "real": real, "skipped": reason, "memory": memory}))
        return 0
    print(f"machine: {machine}")
    if real is None:
        print(f"real instance: skipped ({reason})")
    else:
        rows, floor, rates, loads = real
        print(f"real instance: module CPU per message / its C ping handler's (median {floor:.1f} us), "
              f"{options.rounds} rounds of {options.requests}")
        print(f"  {'variant':34} {'median':>7} {'min-max':13} {'us':>6}")
        for name, median, low, high, micros in rows:
            print(f"  {name:34} {median:7.2f} {low:6.2f}-{high:<6.2f} {micros:6.1f}")
        _table(rates, "{:7.0f}", "{:6.0f}-{:<6.0f}")
        print("module load, wall time (ms):")
        _table(loads, "{:7.1f}", "{:6.1f}-{:<6.1f}")
    print("in memory:")
    for name, median, low, high in memory:
        print(f"  {name:28} {median:10.1f} ({low:.1f}-{high:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
