"""Load and churn on a real instance: nothing a request does takes the
module or the instance down, and loading/removing leaks nothing.

Skipped, with the reason, without flux-core 0.84+.  The figures measured
are printed (run pytest with -s to see them).
"""

import json
import os
import subprocess
import textwrap

import pytest

from flux.brokermod_testing import module_names, skip_reason, start_instance, wait_for

pytestmark = [
    pytest.mark.real_flux,
    pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason())),
]

MIXED = """
import errno
from flux.brokermod import BrokerModule, request_handler


class LoadMod(BrokerModule):
    @request_handler("ok")
    def ok(self, msg):
        self.handle.respond(msg, {"i": msg.payload["i"]})

    @request_handler("raise")
    def raise_(self, msg):
        raise RuntimeError("failed %d" % msg.payload["i"])

    @request_handler("oserror")
    def oserror(self, msg):
        raise OSError(errno.EEXIST, "exists %d" % msg.payload["i"])
"""

CLIENT = r"""
import errno, json, sys, time
import flux

total, inflight = int(sys.argv[1]), int(sys.argv[2])
kinds = ["ok", "raise", "oserror"]
h = flux.Flux()
results = {}
state = {"sent": 0, "done": 0, "max_inflight": 0}

def send():
    i = state["sent"]
    state["sent"] += 1
    h.rpc("loadmod." + kinds[i % 3], {"i": i}).then(done, i)
    state["max_inflight"] = max(state["max_inflight"], state["sent"] - state["done"])

def done(future, i):
    try:
        results[i] = ["ok", future.get()["i"]]
    except OSError as exc:
        results[i] = ["error", exc.errno, exc.strerror]
    state["done"] += 1
    if state["sent"] < total:
        send()
    if state["done"] == total:
        h.reactor_stop()

t0 = time.monotonic()
for _ in range(min(inflight, total)):
    send()
h.reactor_run()
elapsed = time.monotonic() - t0
print(json.dumps({"results": results, "elapsed": elapsed, "max_inflight": state["max_inflight"]}))
"""


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    instance = start_instance(attrs={"broker.module-nopanic": "1"})
    try:
        yield instance
    finally:
        instance.stop()


def test_6000_requests_256_in_flight_mixed_failures(flux, tmp_path):
    path = tmp_path / "loadmod.py"
    path.write_text(MIXED)
    flux.load(str(path))
    try:
        run = flux.flux("python", "-c", CLIENT, "6000", "256", timeout=600)
        assert run.returncode == 0, run.stderr
        report = json.loads(run.stdout)
        results = {int(i): r for i, r in report["results"].items()}
        assert len(results) == 6000
        wrong = []
        for i, result in results.items():
            kind = ("ok", "raise", "oserror")[i % 3]
            expected = {
                "ok": ["ok", i],
                "raise": ["error", 5, f"RuntimeError: failed {i}"],
                "oserror": ["error", 17, f"exists {i}"],
            }[kind]
            if result != expected:
                wrong.append((i, result, expected))
        assert wrong == []
        assert report["max_inflight"] == 256
        assert "loadmod" in module_names(flux)
        assert flux.rpc("loadmod.ok", {"i": -1}).get() == {"i": -1}
        print(
            f"\n6000 requests, 256 in flight: {report['elapsed']:.2f} s "
            f"({6000 / report['elapsed']:.0f} req/s), 4000 handler failures answered, module alive"
        )
    finally:
        flux.remove("loadmod")


def _broker_pid(flux):
    return int(flux.flux("getattr", "broker.pid").stdout.strip())


def _fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def _loader_processes(broker_pid):
    """Module loader processes of this broker (other instances' do not count)."""
    out = subprocess.run(
        ["pgrep", "-P", str(broker_pid), "-f", "flux-module-python-exec"], capture_output=True, text=True
    ).stdout
    return len(out.split())


def test_load_and_remove_100_times_leaks_nothing(flux, tmp_path):
    path = tmp_path / "churn.py"
    path.write_text(
        textwrap.dedent(
            """
            from flux.brokermod import BrokerModule, request_handler

            class Churn(BrokerModule):
                @request_handler("hello")
                def hello(self, msg):
                    self.handle.respond(msg, {"hello": True})
            """
        )
    )
    pid = _broker_pid(flux)
    # one warm-up cycle, so lazily opened broker files do not count as leaks
    flux.load(str(path))
    flux.remove("churn")
    fds_before, procs_before = _fd_count(pid), _loader_processes(pid)
    for _ in range(100):
        flux.load(str(path))
        flux.remove("churn")
    # `flux module remove` returns before the last loader process has quite
    # exited: give it a moment, then count.
    wait_for(lambda: _loader_processes(pid) <= procs_before, timeout=10, what="the last loader to exit")
    fds_after, procs_after = _fd_count(pid), _loader_processes(pid)
    print(f"\n100 load/remove cycles: broker fds {fds_before} -> {fds_after}, "
          f"loader processes {procs_before} -> {procs_after}")
    # A leak grows the count; the broker may close files of earlier tests'
    # clients meanwhile, so fewer is fine.
    assert fds_after <= fds_before
    assert procs_after <= procs_before
    assert "churn" not in module_names(flux)
    flux.load(str(path))
    try:
        assert flux.rpc("churn.hello").get() == {"hello": True}
        run = flux.flux("run", "hostname")
        assert run.returncode == 0 and run.stdout.strip() == os.uname().nodename
    finally:
        flux.remove("churn")


def test_the_loader_names_the_process_after_the_module(flux, tmp_path):
    """As flux-core's loader does (prctl PR_SET_NAME): ps and top show the
    module's name, which the kernel cuts to 15 bytes."""
    path = tmp_path / "averylongmodulename.py"
    path.write_text(
        "import os\n"
        "from flux.brokermod import BrokerModule, request_handler\n\n"
        "class Named(BrokerModule):\n"
        "    @request_handler('pid')\n"
        "    def pid(self, msg):\n"
        "        return {'pid': os.getpid()}\n"
    )
    flux.load(str(path))
    try:
        pid = flux.rpc("averylongmodulename.pid").get()["pid"]
        with open(f"/proc/{pid}/comm") as comm:
            assert comm.read().strip() == "averylongmodule"
        ps = subprocess.run(["ps", "-o", "comm=", "-p", str(pid)], capture_output=True, text=True)
        assert ps.stdout.strip() == "averylongmodule"
    finally:
        flux.remove("averylongmodulename")
