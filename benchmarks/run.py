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

from modules import write_modules  # noqa: E402

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


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _per_request(instance, pid, topic, requests, env=None) -> float:
    before = _cpu(pid)
    result = instance.flux("python", "-c", CLIENT, topic, str(requests), "256", env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    return (_cpu(pid) - before) / requests * 1e6


def real_rows(rounds: int, requests: int):
    from flux.brokermod_testing import skip_reason, start_instance

    reason = skip_reason()
    if reason is not None:
        return None, reason
    directory = tempfile.mkdtemp(prefix="brokermod-bench-")
    paths = write_modules(directory)
    ratios = {name: [] for name in paths}
    ratios["respondecho as guest"] = []
    floors = []
    instance = start_instance(attrs={"broker.module-nopanic": "1"})
    try:
        pids = {}
        for name, path in paths.items():
            instance.load(path)
            pids[name] = instance.rpc(f"{name}.pid").get()["pid"]
        guest = {"FLUX_HANDLE_USERID": "1234", "FLUX_HANDLE_ROLEMASK": "0x2"}
        for _ in range(rounds):
            for name in paths:
                floor = _per_request(instance, pids[name], f"{name}.ping", requests)
                floors.append(floor)
                ratios[name].append(_per_request(instance, pids[name], f"{name}.echo", requests) / floor)
                if name == "respondecho":
                    ratios["respondecho as guest"].append(
                        _per_request(instance, pids[name], "respondecho.echo", requests, env=guest) / floor)
    finally:
        instance.stop()
    # flux-core's own loader and flux.brokermod, the same module file
    core = start_instance(setup=False, attrs={"broker.module-nopanic": "1"})
    ratios["flux-core's BrokerModule"] = []
    try:
        core.load(paths["respondecho"])
        pid = core.rpc("respondecho.pid").get()["pid"]
        for _ in range(rounds):
            floor = _per_request(core, pid, "respondecho.ping", requests)
            ratios["flux-core's BrokerModule"].append(_per_request(core, pid, "respondecho.echo", requests) / floor)
    finally:
        core.stop()
    rows = [(name, statistics.median(values), min(values), max(values)) for name, values in ratios.items()]
    return (rows, statistics.median(floors)), None


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    options = parser.parse_args()
    machine = f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    real, reason = real_rows(options.rounds, options.requests)
    memory = memory_rows(options.rounds, max(1000, options.requests // 10))
    if options.json:
        print(json.dumps({"machine": machine, "real": real and real[0], "floor_us": real and real[1],
                          "skipped": reason, "memory": memory}))
        return 0
    print(f"machine: {machine}")
    if real is None:
        print(f"real instance: skipped ({reason})")
    else:
        rows, floor = real
        print(f"real instance: module CPU per request / C ping floor ({floor:.1f} us), "
              f"{options.rounds} rounds of {options.requests}")
        print(f"  {'variant':28} {'median':>7} {'min-max':>13}")
        for name, median, low, high in rows:
            print(f"  {name:28} {median:7.2f} {low:6.2f}-{high:<6.2f}")
    print("in memory:")
    for name, median, low, high in memory:
        print(f"  {name:28} {median:10.1f} ({low:.1f}-{high:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
