"""Services that span the instance, on a real eight-broker instance
(``flux start --test-size=8 -Stbon.topo=kary:2``), each compared with the
in-memory broker of the same shape: the tree, reductions, timers, and the
groups example against flux-core's own C groups service.

Skipped, with the reason, without flux-core 0.84+.
"""

import errno
import json
import os
import queue
import signal
import subprocess
import textwrap
import threading
import time

import pytest

from flux.brokermod_testing import skip_reason, start_instance, wait_for
from flux.membroker import Broker
from test_tree import (
    BAD_COMBINES,
    CENSUS,
    HOLDERS,
    HOLDERS_CALLS,
    PARTIAL_STEPS,
    _bad_combines,
    _holders_in_memory,
    _partial_load_in_memory,
)

pytestmark = [
    pytest.mark.real_flux,
    pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason())),
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUPS = os.path.join(ROOT, "examples", "groups.py")
KARY2 = {"tbon.topo": "kary:2", "broker.module-nopanic": "1"}

# A client's view of the tree, the same script on both brokers.
TREE_FACTS = '''
facts = []
for rank in range(8):
    attrs = [h.rpc("attr.get", {"name": name}, nodeid=rank).get()["value"]
             for name in ("tbon.level", "tbon.maxlevel", "tbon.descendants")]
    facts.append([attrs, h.rpc("overlay.topology", {"rank": rank}, nodeid=rank).get_str()])
try:
    h.rpc("overlay.topology", {"rank": 0}, nodeid=1).get()
except OSError as exc:
    facts.append([exc.errno, exc.strerror])
'''

# What a client sees of Census, the same script on both brokers.
CENSUS_CALLS = '''
out = [h.rpc("census.count").get(), h.rpc("census.count", nodeid=1).get(),
       h.rpc("census.ranks", {"scale": 2}, nodeid=2).get()]
out += [h.rpc("census.where", nodeid=rank).get() for rank in range(8)]
'''


@pytest.fixture(scope="module")
def kary2():
    instance = start_instance(size=8, attrs=KARY2)
    try:
        yield instance
    finally:
        instance.stop()


def _real(instance, script):
    """Run *script* (it sets ``facts`` or ``out``) in a client of *instance*; its result."""
    code = "import flux, json\nh = flux.Flux()\n" + script + "\nprint(json.dumps(out if 'out' in dir() else facts))"
    result = instance.flux("python", "-c", code)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _in_memory(script, modules=()):
    with Broker(size=8, attrs={"tbon.topo": "kary:2"}) as broker:
        for path, name in modules:
            broker.load(path, name=name, rank="all")
        scope = {"h": broker.connect(), "json": json}
        exec(script, scope)  # noqa: S102 - the test's own script
        return json.loads(json.dumps(scope.get("out", scope.get("facts"))))


def test_the_in_memory_tree_is_the_real_one(kary2):
    """tbon.* attributes and overlay.topology on every rank, byte for byte."""
    real = _real(kary2, TREE_FACTS)
    assert real[7] == [["3", "3", "0"], '{"rank":7,"size":1,"children":[]}']
    assert real[-1] == [errno.ENOENT, "requested rank is not this broker or its direct child"]
    assert _in_memory(TREE_FACTS) == real


def test_reductions_and_tree_places_answer_as_in_memory(kary2, tmp_path):
    path = tmp_path / "census.py"
    path.write_text(CENSUS)
    kary2.load(str(path), rank="all")
    try:
        real = _real(kary2, CENSUS_CALLS)
        assert real[0] == {"value": 8, "ranks": "0-7", "missing": "", "errors": {}}
        assert real[3:] == [{"rank": r, "parent": None if r == 0 else (r - 1) // 2,
                             "children": [c for c in (2 * r + 1, 2 * r + 2) if c < 8]} for r in range(8)]
        assert _in_memory(CENSUS_CALLS, [(str(path), "census")]) == real
        guest = kary2.rpc("census.count-subtree", nodeid=1, guest=True)
        assert guest.answers[0]["errno"] == errno.EPERM
        # A guest's reduction reaches every rank as the guest (issue 26).
        seen = kary2.rpc("census.askers", guest=True).get()
        assert seen["value"] == {str(rank): [1234, False, 1234] for rank in range(8)}
        owner = kary2.rpc("census.askers").get()["value"]
        assert owner == {str(rank): [os.getuid(), True, os.getuid()] for rank in range(8)}
        kary2.remove("census", rank="1")
        answer = kary2.rpc("census.count").get()
        assert answer == {"value": 4, "ranks": "0,2,5-6", "missing": "1,3-4,7",
                          "errors": {"1": "No service matching census.count-subtree is registered"}}
    finally:
        kary2.flux("exec", "-r", "all", "flux", "module", "remove", "-f", "census")


BAD_CALLS = '''
out = {}
for topic in ("divide", "nan", "leafnan"):
    try:
        out[topic] = json.loads(h.rpc("bad." + topic).get_str())
    except OSError as exc:
        out[topic] = [exc.errno, exc.strerror]
'''


def test_failing_combines_and_nan_answer_as_in_memory(kary2, tmp_path):
    """Issue 27, items 1 and 2, on 8 brokers in kary:2 (the shape where a
    combine failing on rank 1 used to look like ranks 1-7 missing)."""
    path = tmp_path / "bad.py"
    path.write_text(BAD_COMBINES)
    kary2.load(str(path), rank="all")
    try:
        real = _real(kary2, BAD_CALLS)
        assert real["divide"][0] == errno.EIO and real["nan"][0] == errno.EIO
        assert real == _bad_combines(8, "kary:2")
    finally:
        kary2.flux("exec", "-r", "all", "flux", "module", "remove", "-f", "bad")


# Clients connected to rank 3's broker itself: a broker sends NAME.disconnect
# to the services its own clients used.
HOLDERS_REAL = '''
import time
def CONNECT(rank):
    return flux.Flux(h.rpc("attr.get", {"name": "local-uri"}, nodeid=rank).get()["value"])
def CLOSE(client):
    pass  # flux-core closes a handle when it is deleted
def SETTLE():
    time.sleep(1)  # the broker's disconnect reaches the module
''' + HOLDERS_CALLS


def test_a_second_client_adding_a_name_its_rank_is_in_is_refused_as_in_memory(kary2, tmp_path):
    """Issue 27, item 6, on 8 brokers: refused with EEXIST as flux-core's
    groups refuses a second join; the first client's leaving ends it."""
    path = tmp_path / "holders.py"
    path.write_text(HOLDERS)
    kary2.load(str(path), rank="all")
    try:
        real = _real(kary2, HOLDERS_REAL)
        assert real[1][0] == errno.EEXIST
        assert real == _holders_in_memory()
    finally:
        kary2.flux("exec", "-r", "all", "flux", "module", "remove", "-f", "holders")


def test_a_change_that_cannot_go_upstream_is_repaired_as_in_memory(kary2, tmp_path):
    """Issue 27, item 5, on 8 brokers: rank 7's add under ranks without the
    module is logged there, and reaches rank 0 once the module starts on
    ranks 1-6."""
    path = tmp_path / "holders.py"
    path.write_text(HOLDERS)
    out = []
    try:
        for step in PARTIAL_STEPS:
            verb, *args = step.split()
            if verb == "load":
                kary2.load(str(path), rank=args[0])
            elif verb == "add":
                out.append(_real(kary2, f'out = h.rpc("holders.add", {{"name": "{args[1]}", "tied": False}}, nodeid={args[0]}).get()'))
            elif verb == "wait":
                time.sleep(1)
            else:
                out.append(_real(kary2, f'out = h.rpc("holders.names", nodeid={args[0]}).get()'))
        dmesg = kary2.flux("exec", "-r", "7", "flux", "dmesg").stdout.splitlines()
        lines = [line.split(" ", 1)[1] for line in dmesg if " holders." in line]
        assert (out, lines) == _partial_load_in_memory()
    finally:
        kary2.flux("exec", "-r", "all", "flux", "module", "remove", "-f", "holders")


TIMERS = '''
import time
t0 = time.monotonic()
out = []
def once(h, w, revents, arg):
    out.append(["once", round(time.monotonic() - t0, 2)])
    if len(out) == 1:
        w.start()
paused = None
def stopper(h, w, revents, arg):
    paused.stop()
    paused.start()
def end(h, w, revents, arg):
    out.append(["paused", round(time.monotonic() - t0, 2)])
    h.reactor_stop()
h.timer_watcher_create(0.5, once).start()
paused = h.timer_watcher_create(1.0, end)
paused.start()
h.timer_watcher_create(0.6, stopper).start()
h.reactor_run()
'''


def test_a_timer_started_again_resumes_the_time_it_had_left(kary2):
    """The libev rule the in-memory timers follow (test_membroker.py):
    fired one-shot restarted fires at once, a stopped one resumes."""
    out = _real(kary2, TIMERS)
    assert [what for what, _ in out] == ["once", "once", "paused"]
    assert out[1][1] - out[0][1] < 0.25  # at once, not 0.5 s later
    assert 0.9 <= out[2][1] < 1.4  # resumed at 0.6 s: due at 1.0 s, not 1.6 s


# The groups example against flux-core's groups, as clients see them

JOINER = '''
import sys, time, flux
h = flux.Flux()
for service in sys.argv[1:]:
    h.rpc(service + ".join", {"name": "test"}).get()
print("joined", flush=True)
while True:
    time.sleep(60)
'''

WATCHER = '''
import json, sys, flux
from flux.constants import FLUX_RPC_STREAMING
h = flux.Flux()
def show(future, service):
    try:
        print(json.dumps([service, future.get()["members"]]), flush=True)
    except OSError as exc:
        print(json.dumps([service, exc.errno]), flush=True)
    future.reset()
futures = [h.rpc(s + ".get", {"name": "test"}, flags=FLUX_RPC_STREAMING).then(show, s) for s in sys.argv[1:]]
h.reactor_run()
'''

ONE_RPC = '''
import json, sys, flux
h = flux.Flux()
topic, nodeid = sys.argv[1], int(sys.argv[2])
try:
    print(json.dumps(h.rpc(topic, {"name": "test"}, nodeid=nodeid).get()))
except OSError as exc:
    print(json.dumps([exc.errno, exc.strerror]))
'''

SERVICES = ("groups", "pygroups")


class _Clients:
    """Client processes on the ranks of a real instance."""

    def __init__(self, instance, tmp_path):
        self.instance = instance
        self.scripts = {}
        for name, source in (("joiner", JOINER), ("watcher", WATCHER), ("one", ONE_RPC)):
            path = tmp_path / f"{name}.py"
            path.write_text(textwrap.dedent(source))
            self.scripts[name] = str(path)
        lines = instance.flux("exec", "-r", "all", "sh", "-c", 'echo "$(flux getattr rank) $(flux getattr local-uri)"')
        self.uris = dict(line.split() for line in lines.stdout.splitlines())
        self.procs = []

    def start(self, rank, script, *args):
        env = self.instance.environment()
        env["FLUX_URI"] = self.uris[str(rank)]
        proc = subprocess.Popen([self.instance.flux_command, "python", self.scripts[script], *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.procs.append(proc)
        return proc

    def one(self, rank, topic, nodeid=0xFFFFFFFF):
        proc = self.start(rank, "one", topic, str(nodeid))
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        return json.loads(out)

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def test_the_groups_example_matches_flux_cores_groups_on_a_deep_tree(tmp_path):
    """Joins one rank at a time, a client killed, a leave from another
    client, ``flux overlay disconnect 3`` and more kills: the members each
    watcher sees, in order, and the error answers, are the same."""
    instance = start_instance(size=8, attrs=KARY2)
    clients = _Clients(instance, tmp_path)
    try:
        instance.load(GROUPS, name="pygroups", rank="all")
        seen = {service: [] for service in SERVICES}
        lines = queue.Queue()
        watcher = clients.start(0, "watcher", *SERVICES)
        threading.Thread(target=lambda: [lines.put(json.loads(line)) for line in watcher.stdout],
                         daemon=True).start()

        def settle():
            """Take updates until both watchers have as many and none came for a while."""
            quiet_since = time.monotonic()
            deadline = quiet_since + 30
            while True:
                assert time.monotonic() < deadline, f"the watchers differ: {seen}"
                try:
                    service, members = lines.get(timeout=0.1)
                    seen[service].append(members)
                    quiet_since = time.monotonic()
                except queue.Empty:
                    if len(seen["groups"]) == len(seen["pygroups"]) and time.monotonic() - quiet_since > 1.0:
                        return

        settle()
        joiners = {}
        for rank in range(8):
            joiners[rank] = clients.start(rank, "joiner", *SERVICES)
            assert joiners[rank].stdout.readline().strip() == "joined"
            settle()
        joiners[5].send_signal(signal.SIGTERM)
        joiners[5].wait()
        settle()
        for service in SERVICES:
            assert clients.one(6, f"{service}.leave") is None
        settle()
        errors = {service: [clients.one(4, f"{service}.join"), clients.one(5, f"{service}.leave"),
                            clients.one(0, f"{service}.get", nodeid=1), clients.one(0, f"{service}.join", nodeid=5)]
                  for service in SERVICES}
        assert instance.flux("overlay", "disconnect", "3").returncode == 0
        settle()
        for rank in (0, 1, 2):
            joiners[rank].send_signal(signal.SIGTERM)
            joiners[rank].wait()
            settle()
        assert seen["groups"] == ["", "0", "0-1", "0-2", "0-3", "0-4", "0-5", "0-6", "0-7", "0-4,6-7", "0-4,7",
                                  "0-2,4", "1-2,4", "2,4", "4"]
        assert seen["pygroups"] == seen["groups"]
        assert errors["groups"] == [
            [errno.EEXIST, "rank 4 is already a member of test"], [errno.ENOENT, "rank 5 is not a member of test"],
            [errno.EPROTO, "this RPC is only available on rank 0"],
            [errno.EPROTO, "groups.join is restricted to the local broker"]]
        assert json.loads(json.dumps(errors["pygroups"]).replace("pygroups.", "groups.")) == errors["groups"]
    finally:
        clients.close()
        instance.stop()


def test_loading_on_every_rank_is_one_command_each_way(kary2):
    """The documented step: ``flux exec -r all flux module load PATH`` and
    ``flux exec -r all flux module remove NAME``."""
    load = kary2.flux("exec", "-r", "all", "flux", "module", "load", "--name=pygroups", GROUPS)
    assert load.returncode == 0, load.stderr
    wait_for(lambda: all("pygroups" in kary2.flux("exec", "-r", str(r), "flux", "module", "list").stdout
                         for r in range(8)), what="pygroups on every rank")
    remove = kary2.flux("exec", "-r", "all", "flux", "module", "remove", "pygroups")
    assert remove.returncode == 0, remove.stderr
    assert all("pygroups" not in kary2.flux("exec", "-r", str(r), "flux", "module", "list").stdout
               for r in range(8))
