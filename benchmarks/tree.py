"""Benchmark: one reduction over the whole instance, against its size.

    python benchmarks/tree.py [--reductions N] [--sizes 16,256,1024] [--brokers 1,2,4,8,16] [--topo kary:2]

Two modules count the ranks of the instance, asked on rank 0:

* ``tree``: ``@reduce_handler``, each rank asking its children;
* ``flat``: rank 0 asks every rank itself, as ``examples/ranks.py`` has
  every rank talk to rank 0.

In memory (virtual ranks; tbon.topo kary:32, the default, and kary:2):
messages rank 0's module handled per reduction (requests and responses
received, from its message counters) and wall time per reduction.  On a
real instance of 1 to 16 brokers on this machine (kary:2, a deep tree;
skipped, saying why, without flux-core): the client's latency and rank 0's
module CPU per reduction.  Nothing here asserts a time.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

from run import _cpu  # noqa: E402

MODULES = {
    "tree": '''
import operator, os
from flux.brokermod import BrokerModule, reduce_handler, request_handler

class Tree(BrokerModule):
    @reduce_handler("count", combine=operator.add, timeout=30)
    def count(self, msg):
        return 1

    @request_handler("pid")
    def pid(self, msg):
        return {"pid": os.getpid()}
''',
    "flat": '''
import os
from flux.brokermod import BrokerModule, request_handler

class Flat(BrokerModule):
    @request_handler("count")
    async def count(self, msg):
        futures = [self.handle.rpc("flat.one", nodeid=rank) for rank in range(self.size)]
        return {"value": sum([(await future)["value"] for future in futures])}

    @request_handler("one")
    def one(self, msg):
        return {"value": 1}

    @request_handler("pid")
    def pid(self, msg):
        return {"pid": os.getpid()}
''',
}

CLIENT = r"""
import sys, time, flux
topic, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
h = flux.Flux()
assert h.rpc(topic).get()["value"] == size  # warm: each broker learns its children
times = []
for _ in range(count):
    start = time.perf_counter()
    value = h.rpc(topic).get()["value"]
    times.append(time.perf_counter() - start)
    assert value == size, value
times.sort()
print(times[len(times) // 2])
"""


def _write(directory):
    paths = {}
    for name, source in MODULES.items():
        paths[name] = os.path.join(directory, f"{name}.py")
        with open(paths[name], "w") as f:
            f.write(source)
    return paths


def _received(broker, name):
    stats = broker.rpc(f"{name}.stats-get").get()
    return stats["rx"]["request"] + stats["rx"]["response"]


def memory_rows(sizes, reductions):
    """(topology, size, module, messages at rank 0 per reduction, ms per reduction)."""
    from flux.membroker import Broker

    paths = _write(tempfile.mkdtemp(prefix="brokermod-tree-"))
    rows = []
    for topo in ("kary:32", "kary:2"):
        for size in sizes:
            with Broker(size=size, attrs={"tbon.topo": topo}) as broker:
                for name, path in paths.items():
                    broker.load(path, rank="all")
                for name in paths:
                    assert broker.rpc(f"{name}.count").get()["value"] == size  # warm
                    before = _received(broker, name)
                    start = time.perf_counter()
                    for _ in range(reductions):
                        broker.rpc(f"{name}.count").get()
                    elapsed = (time.perf_counter() - start) / reductions
                    # each stats-get request is one more received message
                    messages = (_received(broker, name) - before - 1) / reductions
                    rows.append((topo, size, name, messages, elapsed * 1e3))
    return rows


def real_rows(brokers, reductions, topo="kary:2"):
    """(brokers, module, latency ms, rank 0 module CPU us) per reduction, on *topo*."""
    from flux.brokermod_testing import skip_reason, start_instance

    reason = skip_reason()
    if reason is not None:
        return None, reason
    paths = _write(tempfile.mkdtemp(prefix="brokermod-tree-"))
    rows = []
    for size in brokers:
        instance = start_instance(size=size, attrs={"tbon.topo": topo, "broker.module-nopanic": "1"})
        try:
            for name, path in paths.items():
                instance.load(path, rank="all")
                pid = instance.rpc(f"{name}.pid", nodeid=0).get()["pid"]
                before = _cpu(pid)
                result = instance.flux("python", "-c", CLIENT, f"{name}.count", str(reductions), str(size),
                                       timeout=600)
                assert result.returncode == 0, result.stderr
                cpu = (_cpu(pid) - before) / (reductions + 1) * 1e6
                rows.append((size, name, float(result.stdout.split()[-1]) * 1e3, cpu))
        finally:
            instance.stop()
    return rows, None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reductions", type=int, default=200)
    parser.add_argument("--sizes", default="16,256,1024", help="in-memory sizes (none: skip)")
    parser.add_argument("--brokers", default="1,2,4,8,16", help="real instance sizes")
    parser.add_argument("--topo", default="kary:2", help="the real instance's tbon.topo")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    options = parser.parse_args()
    sizes = [int(s) for s in options.sizes.split(",") if s.strip() and s != "none"]
    memory = memory_rows(sizes, max(1, options.reductions // 10))
    real, reason = real_rows([int(s) for s in options.brokers.split(",")], options.reductions, options.topo)
    if options.json:
        print(json.dumps({"memory": memory, "real": real, "skipped": reason}))
        return 0
    print("in memory: per reduction, asked on rank 0")
    print(f"  {'tbon.topo':9} {'ranks':>5} {'module':6} {'msgs at rank 0':>14} {'ms':>8}")
    for topo, size, name, messages, ms in memory:
        print(f"  {topo:9} {size:5} {name:6} {messages:14.0f} {ms:8.2f}")
    if real is None:
        print(f"real instance: skipped ({reason})")
        return 0
    print(f"real instance, {options.topo}: per reduction (median of {options.reductions})")
    print(f"  {'brokers':>7} {'module':6} {'latency ms':>10} {'rank 0 CPU us':>13}")
    for size, name, ms, cpu in real:
        print(f"  {size:7} {name:6} {ms:10.2f} {cpu:13.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
