"""Services that span the instance, in memory: the tree of brokers as a real
instance builds it, reductions down and up it, rank sets aggregated to
rank 0, the groups example, and 1,024 ranks.

What each in-memory behaviour stands in for was measured on flux-core 0.88
(docs/real-flux.md, "The tree of brokers"); tests/test_tree_real.py runs
the same on a real eight-broker instance.
"""

import asyncio
import errno
import json
import operator
import os
import re
import syslog

import pytest
from _helpers import error_of

from flux.brokermod import (
    BrokerModule,
    RankSets,
    Reduction,
    RequestError,
    reduce_handler,
    request_handler,
    timer_handler,
)
from flux.membroker import Broker, ModuleHang
from flux.membroker._topology import Topology

FLUX_RPC_STREAMING = 2
FLUX_RPC_NORESPONSE = 1
FLUX_ROLE_USER = 2
FLUX_NODEID_UPSTREAM = 0xFFFFFFFE
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def kary2(size=8):
    """A broker of *size* ranks arranged as kary:2, the deep tree of the real tests."""
    return Broker(size=size, attrs={"tbon.topo": "kary:2"})


# The tree itself


@pytest.mark.parametrize("spec, size, parents", [
    ("kary:2", 8, [None, 0, 0, 1, 1, 2, 2, 3]),
    ("kary:0", 4, [None, 0, 0, 0]),
    ("kary:1", 4, [None, 0, 1, 2]),
    ("binomial", 8, [None, 0, 0, 2, 0, 4, 4, 6]),
    ("mincrit:2", 7, [None, 0, 0, 1, 2, 1, 2]),
])
def test_the_tree_is_the_one_flux_cores_topology_plugins_build(spec, size, parents):
    """Parents as flux-core's overlay topology.c computes them for each scheme."""
    topology = Topology(size, spec)
    assert [topology.parent(rank) for rank in range(size)] == parents


def test_the_default_tree_is_kary_32_and_a_bad_topology_is_refused():
    with Broker(size=1024) as broker:
        assert broker.attrs["tbon.topo"] == "kary:32"
        assert broker.topology.children(0) == tuple(range(1, 33))
        assert broker.topology.maxlevel == 2
    with pytest.raises(ValueError, match="tbon.topo 'custom'"):
        Broker(size=4, attrs={"tbon.topo": "custom"})
    with pytest.raises(ValueError, match="k must be an integer"):
        Broker(size=4, attrs={"tbon.topo": "kary:x"})


def test_tbon_attributes_and_overlay_topology_as_measured():
    """Measured on 0.88, size 8, kary:2: tbon.level 0/1/2/3 and
    tbon.descendants 7/3/1/0 on ranks 0/1/3/7, tbon.maxlevel 3; overlay.topology
    answers this broker's subtree or a direct child's, compact, ENOENT otherwise."""
    with kary2() as broker:
        facts = []
        for rank in (0, 1, 3, 7):
            h = broker.connect(rank=rank)
            facts.append([h.attr_get(name) for name in ("tbon.level", "tbon.descendants", "tbon.maxlevel")])
        assert facts == [["0", "7", "3"], ["1", "3", "3"], ["2", "1", "3"], ["3", "0", "3"]]
        h = broker.connect(rank=1)
        assert h.rpc("overlay.topology", {"rank": 1}).get_str() == (
            '{"rank":1,"size":4,"children":[{"rank":3,"size":2,"children":[{"rank":7,"size":1,"children":[]}]},'
            '{"rank":4,"size":1,"children":[]}]}'
        )
        assert h.rpc("overlay.topology", {"rank": 4}).get()["size"] == 1
        assert error_of(h.rpc("overlay.topology", {"rank": 0})) == (
            errno.ENOENT, "requested rank is not this broker or its direct child")
        guest = broker.connect(userid=4242, rolemask=FLUX_ROLE_USER, rank=1)
        assert guest.rpc("overlay.topology", {"rank": 1}).get()["rank"] == 1


def test_attr_get_answers_value_and_flags_as_measured():
    with kary2(4) as broker:
        h = broker.connect(rank=1)
        assert h.rpc("attr.get", {"name": "rank"}).get() == {"value": "1", "flags": 1}
        assert h.rpc("attr.get", {"name": "tbon.level"}).get() == {"value": "1", "flags": 0}
        assert h.rpc("attr.get", {"name": "rank"}, nodeid=FLUX_NODEID_UPSTREAM).get()["value"] == "0"
        assert error_of(h.rpc("attr.get", {"name": "nosuch"}))[0] == errno.ENOENT


def test_overlay_monitor_is_owner_only_streaming_and_reports_each_child():
    with kary2() as broker:
        owner = broker.connect(rank=1)
        monitor = owner.rpc("overlay.monitor", None, flags=FLUX_RPC_STREAMING)
        seen = _drain(broker, monitor)
        assert seen == [{"rank": 3, "status": "full", "torpid": False}, {"rank": 4, "status": "full", "torpid": False}]
        assert error_of(owner.rpc("overlay.monitor"))[0] == errno.EPROTO
        guest = broker.connect(userid=4242, rolemask=FLUX_ROLE_USER, rank=1)
        assert error_of(guest.rpc("overlay.monitor", None, flags=FLUX_RPC_STREAMING))[0] == errno.EPERM


def test_a_request_sent_upstream_goes_one_hop_and_hangs_where_the_parent_lacks_the_service():
    """Measured on 0.84 to master: FLUX_NODEID_UPSTREAM is forwarded one hop;
    a parent without the service sends it back and forth forever."""
    class Solo(BrokerModule):
        @request_handler("where")
        def where(self, msg):
            return {"rank": self.rank}

    with kary2() as broker:
        broker.load(Solo, name="solo", rank=1)
        assert broker.connect(rank=3).rpc("solo.where", nodeid=FLUX_NODEID_UPSTREAM).get() == {"rank": 1}
        broker.connect(rank=7).rpc("solo.where", nodeid=FLUX_NODEID_UPSTREAM)
        with pytest.raises(ModuleHang, match="back and forth between rank 3 and rank 7 forever"):
            broker.run_until_idle()


def test_a_request_to_another_broker_is_no_longer_local():
    """The overlay clears FLUX_ROLE_LOCAL on the way (groups.join relies on it)."""
    class Roles(BrokerModule):
        @request_handler("mask")
        def mask(self, msg):
            return {"rolemask": msg.rolemask}

    with kary2(4) as broker:
        broker.load(Roles, name="roles", rank="all")
        assert broker.rpc("roles.mask", nodeid=0).get()["rolemask"] & 4
        assert not broker.rpc("roles.mask", nodeid=2).get()["rolemask"] & 4


def test_overlay_disconnect_loses_the_subtree_as_measured():
    """``flux overlay disconnect 3`` on kary:2: brokers 3 and 7 exit, requests
    to them get EHOSTUNREACH, rank 1's monitor says 3 is lost and rank 0's
    that 1 is degraded."""
    with kary2() as broker:
        broker.load(Census, name="census", rank="all")
        monitors = {rank: broker.connect(rank=rank).rpc("overlay.monitor", None, flags=FLUX_RPC_STREAMING)
                    for rank in (0, 1)}
        for monitor in monitors.values():
            _drain(broker, monitor)
        broker.overlay_disconnect(3)
        assert _drain(broker, monitors[1]) == [{"rank": 3, "status": "lost", "torpid": False}]
        assert _drain(broker, monitors[0]) == [{"rank": 1, "status": "degraded", "torpid": False}]
        assert error_of(broker.rpc("census.where", nodeid=3))[0] == errno.EHOSTUNREACH
        assert error_of(broker.rpc("census.where", nodeid=7))[0] == errno.EHOSTUNREACH
        assert broker.modules_on(3) == {} and broker.modules_on(7) == {}
        assert any("(rank 3) disconnected by request and severed contact with 1 other nodes" in line
                   for line in broker.dmesg(rank=1))
        assert any(line.startswith("broker.err[0]: dead to Flux:") and line.endswith("(rank 3,7)")
                   for line in broker.dmesg())
        with pytest.raises(ValueError, match="already lost"):
            broker.overlay_disconnect(7)
        with pytest.raises(ValueError, match="no parent"):
            broker.overlay_disconnect(0)


# A module's place in the tree, and reductions


#: Counts ranks in every way a reduction can be written (also loaded from a
#: file on a real instance by test_tree_real.py, on both brokers by
#: test_fidelity_tree.py).
CENSUS = """
import asyncio
import operator

from flux.brokermod import BrokerModule, reduce_handler, request_facts, request_handler


class Census(BrokerModule):
    @reduce_handler("count", combine=operator.add, timeout=4)
    def count(self, msg):
        return 1

    @reduce_handler("ranks", combine="merge", allow_guest=True)
    async def ranks(self, msg, *, scale: int = 1):
        await asyncio.sleep(0)
        return {str(self.rank): scale}

    def merge(self, a, b):
        return {**a, **b}

    @reduce_handler("askers", combine="merge", allow_guest=True)
    def askers(self, msg):  # who each rank's method sees asking
        return {str(self.rank): [msg.userid, bool(msg.rolemask & 1), request_facts(msg).userid]}

    @request_handler("where")
    def where(self, msg):
        return {"rank": self.rank, "parent": self.parent, "children": list(self.children)}

    @request_handler("total")
    async def total(self, msg, *, rank: int = 0):
        reduction = await self.reduce("count", rank=rank)
        return {"value": reduction.value, "complete": reduction.complete}
"""
_census: dict = {"__name__": "census"}
exec(CENSUS, _census)  # noqa: S102 - the test's own module
Census = _census["Census"]


def test_a_module_knows_its_parent_and_children():
    with kary2() as broker:
        broker.load(Census, name="census", rank="all")
        assert [broker.rpc("census.where", nodeid=r).get() for r in (0, 1, 3, 7)] == [
            {"rank": 0, "parent": None, "children": [1, 2]},
            {"rank": 1, "parent": 0, "children": [3, 4]},
            {"rank": 3, "parent": 1, "children": [7]},
            {"rank": 7, "parent": 3, "children": []},
        ]


def test_a_reduction_combines_every_rank_of_the_instance_or_of_a_subtree():
    with kary2() as broker:
        broker.load(Census, name="census", rank="all")
        assert broker.rpc("census.count").get() == {"value": 8, "ranks": "0-7", "missing": "", "errors": {}}
        assert broker.rpc("census.count", nodeid=1).get() == {"value": 4, "ranks": "1,3-4,7", "missing": "",
                                                              "errors": {}}
        answer = broker.rpc("census.ranks", {"scale": 3}).get()
        assert answer["value"] == {str(rank): 3 for rank in range(8)} and answer["ranks"] == "0-7"
        assert broker.rpc("census.total", {"rank": 2}, nodeid=5).get() == {"value": 3, "complete": True}
        assert Reduction.from_answer(broker.rpc("census.count").get()).complete


def test_each_broker_handles_messages_from_its_own_children_only():
    """Rank 0's module takes the client's request and one answer per child;
    each other rank one request from its parent and one answer per child."""
    with Broker(size=64) as broker:  # kary:32: rank 0 has 32 children, rank 1 has 31
        broker.load(Census, name="census", rank="all")
        broker.rpc("census.count").get()  # the first asks each broker for its children once
        before = {r: _counters(broker, r) for r in (0, 1, 40)}
        assert broker.rpc("census.count").get()["value"] == 64
        after = {r: _counters(broker, r) for r in (0, 1, 40)}
        delta = {r: {key: after[r][key] - before[r][key] for key in after[r]} for r in after}
        # (the stats-get request itself adds one request and one response)
        assert delta[0] == {"rx request": 1 + 1, "rx response": 32, "tx request": 32, "tx response": 1 + 1}
        assert delta[1] == {"rx request": 1 + 1, "rx response": 31, "tx request": 31, "tx response": 1 + 1}
        assert delta[40] == {"rx request": 1 + 1, "rx response": 0, "tx request": 0, "tx response": 1 + 1}


def _counters(broker, rank):
    stats = broker.rpc("census.stats-get", nodeid=rank).get()
    return {f"{way} {kind}": stats[way][kind] for way in ("rx", "tx") for kind in ("request", "response")}


def test_a_subtree_without_the_module_is_reported_by_rank_and_the_rest_combined():
    with kary2() as broker:
        broker.load(Census, name="census", rank="all")
        broker.remove("census", rank=1)
        answer = broker.rpc("census.count").get()
        assert answer["value"] == 4 and answer["ranks"] == "0,2,5-6" and answer["missing"] == "1,3-4,7"
        assert answer["errors"] == {"1": "No service matching census.count-subtree is registered"}


class Slow(BrokerModule):
    """Rank 3's own value never comes; rank 6 answers slowly."""

    @reduce_handler("count", combine=operator.add, timeout=8)
    async def count(self, msg):
        if self.rank == 3:
            await asyncio.Event().wait()
        return 1


def test_a_rank_or_subtree_that_does_not_answer_in_time_is_reported_and_nothing_hangs():
    """kary:2, size 8: rank 3 (level 2) has 8 * 2/4 = 4 virtual seconds for
    its own value; its child 7 answers, so only rank 3 is missing."""
    with kary2() as broker:
        broker.load(Slow, name="slow", rank="all")
        start = broker.now
        answer = broker.rpc("slow.count").get()
        assert answer == {"value": 7, "ranks": "0-2,4-7", "missing": "3", "errors": {"3": "no value within 4s"}}
        assert broker.now - start == pytest.approx(4)


def test_a_child_that_answers_too_late_is_reported_with_its_whole_subtree():
    class Stuck(BrokerModule):
        @reduce_handler("count", combine=operator.add, timeout=2)
        def count(self, msg):
            return 1

    with kary2() as broker:
        broker.load(Stuck, name="stuck", rank="all")
        broker.remove("stuck", rank=2)

        def mute(h):  # takes requests, never answers
            h.msg_watcher_create(lambda *args: None, 1, "stuck.count-subtree").start()
            h.reactor_run()

        broker.load(mute, name="stuck", rank=2)
        answer = broker.rpc("stuck.count").get()
        assert answer["missing"] == "2,5-6" and answer["errors"] == {"2": "no answer within 2s"}
        assert answer["value"] == 5


def test_a_rank_whose_method_fails_is_reported_and_the_others_combined():
    class Picky(BrokerModule):
        @reduce_handler("count", combine=operator.add)
        def count(self, msg):
            if self.rank == 2:
                raise RequestError(errno.EBUSY, "rank 2 is busy")
            if self.rank == 5:
                raise ValueError("rank 5 is broken")
            return 1

    with kary2() as broker:
        broker.load(Picky, name="picky", rank="all")
        answer = broker.rpc("picky.count").get()
        assert answer["value"] == 6 and answer["missing"] == "2,5"
        assert answer["errors"]["2"] == "rank 2 is busy"
        assert "ValueError: rank 5 is broken" in answer["errors"]["5"]
        assert [str(e) for e in broker.handler_errors if "rank 5 is broken" in str(e.exception)]
        assert any("rank 5 is broken" in line for line in broker.dmesg(rank=5))


def test_a_failing_combine_answers_eio_with_one_line():
    class Bad(BrokerModule):
        @reduce_handler("count", combine=lambda a, b: a / 0)
        def count(self, msg):
            return 1

    with kary2(4) as broker:
        broker.load(Bad, name="bad", rank="all")
        errnum, text = error_of(broker.rpc("bad.count", nodeid=1))
        assert errnum == errno.EIO and "ZeroDivisionError" in text and "\n" not in text


def test_guests_reach_a_reduction_only_where_allowed():
    """An owner-only reduction refuses a guest at its topic and at its
    subtree topic; an open one admits the guest at both, as the guest."""
    with kary2(4) as broker:
        broker.load(Census, name="census", rank="all")
        guest = broker.connect(userid=4242, rolemask=FLUX_ROLE_USER)
        assert guest.rpc("census.ranks").get()["ranks"] == "0-3"
        assert error_of(guest.rpc("census.count"))[0] == errno.EPERM
        assert error_of(guest.rpc("census.count-subtree", nodeid=1))[0] == errno.EPERM
        assert guest.rpc("census.ranks-subtree", nodeid=1).get()["ranks"] == "1,3"
        assert guest.rpc("census.askers-subtree", nodeid=1).get()["value"] == {
            "1": [4242, False, 4242], "3": [4242, False, 4242]}


def test_every_rank_of_a_reduction_sees_the_caller_not_the_module():
    """A guest's reduction reaches every rank with the guest's credentials
    (issue 26: it used to run as the owner below the rank asked)."""
    with kary2(8) as broker:
        broker.load(Census, name="census", rank="all")
        guest = broker.connect(userid=4242, rolemask=FLUX_ROLE_USER)
        seen = guest.rpc("census.askers").get()
        assert seen["ranks"] == "0-7"
        assert seen["value"] == {str(rank): [4242, False, 4242] for rank in range(8)}
        owner = broker.rpc("census.askers").get()["value"]
        assert owner == {str(rank): [broker.owner, True, broker.owner] for rank in range(8)}


def test_a_reduction_checks_its_declared_fields_at_the_rank_asked():
    with kary2(4) as broker:
        broker.load(Census, name="census", rank="all")
        errnum, text = error_of(broker.rpc("census.ranks", {"scale": "three"}))
        assert errnum == errno.EPROTO and "scale" in text


def test_reduce_handler_arguments_are_checked_where_written():
    with pytest.raises(TypeError, match="combine must be a function"):
        reduce_handler("x", combine=3)
    with pytest.raises(TypeError, match="timeout must be a finite number of seconds > 0"):
        reduce_handler("x", combine=max, timeout=float("nan"))
    with pytest.raises(TypeError, match="timeout must be a finite number of seconds > 0"):
        reduce_handler("x", combine=max, timeout=0)

    class NoMerge(BrokerModule):
        @reduce_handler("x", combine="nosuch")
        def x(self, msg):
            return 1

    with Broker() as broker:
        with pytest.raises(OSError, match="combine='nosuch' names no method of .*NoMerge"):
            broker.load(NoMerge, name="nomerge")


def test_handlers_lists_a_reduction_as_such():
    with Broker() as broker:
        broker.load(Census, name="census")
        kinds = {h["topic"]: h["kind"] for h in broker.rpc("census.handlers").get()["handlers"]}
        assert kinds["census.count"] == "reduction" and kinds["census.where"] == "request"


# Rank sets


#: A module of rank sets (also loaded from a file on both brokers by
#: test_fidelity_tree.py).
MEMBERS = """
import asyncio

from flux.brokermod import BrokerModule, RankSets, request_handler


class Members(BrokerModule):
    members = RankSets()

    @request_handler("add")
    def add(self, msg, *, name: str, tied: bool = False):
        self.members.add(name, msg if tied else None)
        return {}

    @request_handler("discard")
    def discard(self, msg, *, name: str):
        self.members.discard(name)
        return {}

    @request_handler("members")
    def get_members(self, msg, *, name: str):
        return {"members": self.members.members(name), "names": self.members.names()}

    @request_handler("watch")
    async def watch(self, msg, *, name: str):
        async for members in self.members.watch(name):
            self.handle.respond(msg, {"members": members})

    @request_handler("hold")
    async def hold(self, msg, *, name: str):
        \"\"\"Add this rank to *name* for as long as the caller stays; answer
        what rank 0 has once it shows the change (or after 10 s).\"\"\"
        self.members.add(name, msg)
        for _ in range(50):
            await asyncio.sleep(0.2)
            seen = await self.handle.rpc(f"{self.name}.members", {"name": name}, nodeid=0)
            if seen["members"]:
                break
        return seen
"""
_members: dict = {"__name__": "members"}
exec(MEMBERS, _members)  # noqa: S102 - the test's own module
Members = _members["Members"]


def test_rank_sets_are_batched_and_reach_rank_0_a_level_at_a_time():
    """Each broker holds changes 0.1 s, then sends them up: rank 7 (level 3)
    shows at rank 0 after 0.4 s (measured for groups: 0.40 s)."""
    with kary2() as broker:
        broker.load(Members, name="m", rank="all")
        watch = broker.rpc("m.watch", {"name": "x"}, flags=FLUX_RPC_STREAMING)
        assert _drain(broker, watch) == [{"members": ""}]
        for rank in (7, 5):
            broker.rpc("m.add", {"name": "x"}, nodeid=rank).get()
        seen = []
        for _ in range(5):
            broker.advance(0.1)
            seen.append([answer["members"] for answer in _drain(broker, watch)])
        assert seen == [[], [], ["5"], ["5,7"], []]
        assert broker.rpc("m.members", {"name": "x"}, nodeid=1).get() == {"members": "7", "names": ["x"]}
        broker.rpc("m.discard", {"name": "x"}, nodeid=5).get()
        broker.rpc("m.add", {"name": "x"}, nodeid=0).get()
        broker.advance(1)
        assert [a["members"] for a in _drain(broker, watch)] == ["0,5,7", "0,7"]


def test_rank_sets_forget_a_name_once_no_rank_is_in_it():
    """Issue 27, item 4: names whose members all left stayed in names() on
    every rank of the path (10,000 adds and a disconnect left 10,000 names
    on ranks 0, 3 and 7).  Memory now holds only names that have members."""
    with kary2() as broker:
        broker.load(Members, name="m", rank="all")
        client = broker.connect(rank=7)
        for i in range(2000):
            client.rpc("m.add", {"name": f"job-{i}", "tied": True}, nodeid=7).get()
        broker.rpc("m.add", {"name": "kept"}, nodeid=7).get()
        broker.advance(1)
        assert len(broker.rpc("m.members", {"name": "kept"}, nodeid=0).get()["names"]) == 2001
        client.close()  # its disconnect ends the 2,000 tied memberships
        broker.advance(1)
        for rank in (0, 1, 3, 7):
            assert broker.rpc("m.members", {"name": "kept"}, nodeid=rank).get() == {
                "members": "7", "names": ["kept"]}, rank
            sets = broker.modules_on(rank)["m"].instance.members
            assert set(vars(sets)["_sets"]) == {"kept"} and not vars(sets)["_batch"]


def test_rank_sets_give_back_the_memory_of_names_that_went():
    """A dict never shrinks by itself: after 100,000 names came and went
    through rank 7 its tables held 1,014 KiB (measured); now they shrink."""
    import sys

    with kary2() as broker:
        broker.load(Members, name="m", rank="all")
        client = broker.connect(rank=7)
        for i in range(3000):
            client.rpc("m.add", {"name": f"job-{i}", "tied": True}, nodeid=7).get()
        broker.advance(1)
        client.close()
        broker.advance(1)
        for rank in (0, 3, 7):
            sets = vars(broker.modules_on(rank)["m"].instance.members)
            assert sys.getsizeof(sets["_sets"]) < 4096 and sys.getsizeof(sets["_joined"]) < 4096, rank


#: A module that adds for any client without checking joined() first
#: (also loaded from a file on a real instance by test_tree_real.py).
HOLDERS = """
from flux.brokermod import BrokerModule, RankSets, request_handler


class Holders(BrokerModule):
    items = RankSets()

    @request_handler("add")
    def add(self, msg, *, name: str, tied: bool = True):
        self.items.add(name, msg if tied else None)
        return {}

    @request_handler("names")
    def names(self, msg):
        self.items.flush()
        return {"names": self.items.names()}
"""

# A client on rank 3 adds "x"; a second adds it too and is refused, as
# flux-core's groups refuses a second join; once the first leaves, "x" is
# gone and the second can add it.
HOLDERS_CALLS = """
first, second = CONNECT(3), CONNECT(3)
out = [first.rpc("holders.add", {"name": "x"}, nodeid=3).get()]
try:
    second.rpc("holders.add", {"name": "x"}, nodeid=3).get()
except OSError as exc:
    out.append([exc.errno, exc.strerror])
out.append(h.rpc("holders.names", nodeid=3).get())
CLOSE(first)
del first
SETTLE()
out.append(h.rpc("holders.names", nodeid=3).get())
out.append(second.rpc("holders.add", {"name": "x"}, nodeid=3).get())
out.append(h.rpc("holders.names", nodeid=3).get())
"""


def _holders_in_memory():
    namespace = {}
    exec(HOLDERS, namespace)  # noqa: S102 - the test's own module
    with kary2() as broker:
        broker.load(namespace["Holders"], name="holders", rank="all")

        scope = {"h": broker.connect(), "CONNECT": lambda rank: broker.connect(rank=rank),
                 "CLOSE": lambda client: client.close(), "SETTLE": broker.run_until_idle}
        exec(HOLDERS_CALLS, scope)  # noqa: S102 - the test's own script
        return json.loads(json.dumps(scope["out"]))


def test_a_second_client_adding_a_name_its_rank_is_in_is_refused_as_groups_does():
    """Issue 27, item 6: the second add changed nothing, and the first
    client's disconnect then took the name away from the second."""
    assert _holders_in_memory() == [
        {}, [errno.EEXIST, "rank 3 is already in set 'x'"], {"names": ["x"]}, {"names": []}, {}, {"names": ["x"]}]


# Rank 7's parent (3) and grandparent (1) start without the module; rank 7
# adds "x" for itself (not for the client, which exits on a real instance);
# then the module starts on ranks 1-6.  (The same on both brokers.)
PARTIAL_STEPS = ["load 0,7", "add 7 x", "wait", "names 0", "load 1-6", "wait", "names 0"]


def _partial_load_in_memory():
    namespace = {}
    exec(HOLDERS, namespace)  # noqa: S102 - the test's own module
    out = []
    with kary2() as broker:
        for step in PARTIAL_STEPS:
            verb, *args = step.split()
            if verb == "load":
                for rank in _idset_ranks(args[0]):
                    broker.load(namespace["Holders"], name="holders", rank=rank)
            elif verb == "add":
                out.append(broker.rpc("holders.add", {"name": args[1], "tied": False}, nodeid=int(args[0])).get())
            elif verb == "wait":
                broker.advance(1)
            else:
                out.append(broker.rpc("holders.names", nodeid=int(args[0])).get())
        lines = [line for line in broker.dmesg(rank=7) if line.startswith("holders.")]
        return out, lines


def _idset_ranks(spec):
    first, _, last = spec.partition("-")
    return range(int(first), int(last or first) + 1) if "," not in spec else [int(r) for r in spec.split(",")]


def test_a_change_that_cannot_go_upstream_is_logged_and_sent_again_when_the_parent_starts():
    """Issue 27, item 5: an add on rank 7 under a parent without the module
    answered success, rank 0 never learned of it, nothing was logged, and
    loading the module on ranks 1-6 never repaired it.  Now the refusal is
    one line at LOG_ERR on rank 7, and a parent whose module starts asks its
    children for all they hold (as a broker's children resend their state
    to groups when they connect)."""
    out, lines = _partial_load_in_memory()
    assert out == [{}, {"names": []}, {"names": ["x"]}]
    refused = [line for line in lines if line.startswith("holders.err")]
    assert refused == ["holders.err[7]: holders.items-update: rank 3 did not take this subtree's changes "
                       "(No service matching holders.items-update is registered); they reach it once its "
                       "module starts there"]
    assert "holders.info[7]: holders.items-update: rank 3 takes this subtree's changes again" in lines


def test_rank_sets_merge_a_batch_as_groups_does():
    with kary2() as broker:
        broker.load(Members, name="m", rank="all")
        watch = broker.rpc("m.watch", {"name": "x"}, flags=FLUX_RPC_STREAMING)
        _drain(broker, watch)
        for rank in (1, 3, 4):
            broker.rpc("m.add", {"name": "x"}, nodeid=rank).get()
        broker.advance(1)
        assert [a["members"] for a in _drain(broker, watch)] == ["1", "1,3-4"]


def test_what_goes_upstream_is_one_merged_change_per_set_as_in_groups():
    with kary2() as broker:
        updates = []

        def recorder(h):  # rank 0's "m": records what rank 1 sends up
            h.msg_watcher_create(lambda h, w, msg, arg: updates.append(msg.payload), 1, "m.members-update").start()
            h.reactor_run()

        broker.load(recorder, name="m", rank=0)
        for rank in (1, 3, 4):
            broker.load(Members, name="m", rank=rank)
        for rank in (1, 3, 4):
            broker.rpc("m.add", {"name": "x"}, nodeid=rank).get()
        broker.advance(1)
        assert updates == [{"update": {}, "clear": "1,3-4,7"},  # rank 1's module started
                           {"update": {"x": [{"ranks": "1", "set": True}]}},
                           {"update": {"x": [{"ranks": "3-4", "set": True}]}}]


def test_a_disconnecting_client_leaves_what_it_joined():
    with kary2() as broker:
        broker.load(Members, name="m", rank="all")
        client = broker.connect(rank=4)
        client.rpc("m.add", {"name": "x", "tied": True}).get()
        other = broker.connect(rank=5)  # kept: a dropped handle disconnects
        other.rpc("m.add", {"name": "x", "tied": True}).get()
        broker.advance(1)
        assert broker.rpc("m.members", {"name": "x"}).get()["members"] == "4-5"
        client.close()
        broker.advance(1)
        assert broker.rpc("m.members", {"name": "x"}).get()["members"] == "5"


def test_a_lost_subtree_leaves_every_set():
    with kary2() as broker:
        broker.load(Members, name="m", rank="all")
        for rank in range(8):
            broker.rpc("m.add", {"name": "x"}, nodeid=rank).get()
            broker.rpc("m.add", {"name": "y"}, nodeid=rank).get()
        broker.advance(1)
        broker.overlay_disconnect(3)
        broker.advance(1)
        assert [broker.rpc("m.members", {"name": n}).get()["members"] for n in "xy"] == ["0-2,4-6"] * 2


def test_a_malformed_update_is_refused_in_one_line_and_changes_nothing():
    with kary2(4) as broker:
        broker.load(Members, name="m", rank="all")
        broker.rpc("m.members-update", {"update": {"x": [{"ranks": "1-2", "set": "yes"}]}}, nodeid=0,
                   flags=FLUX_RPC_NORESPONSE)
        broker.advance(1)
        assert broker.rpc("m.members", {"name": "x"}).get()["members"] == ""
        refusals = [line for line in broker.dmesg("m") if "m.members-update" in line]
        assert len(refusals) == 1 and refusals[0].startswith("m.debug[0]")


def test_a_parent_without_the_module_drops_updates_and_nothing_hangs():
    with kary2(4) as broker:
        broker.load(Members, name="m", rank=0)
        broker.load(Members, name="m", rank=3)  # its parent, rank 1, has no m
        broker.rpc("m.add", {"name": "x"}, nodeid=3).get()
        broker.advance(1)
        assert broker.rpc("m.members", {"name": "x"}, nodeid=3).get()["members"] == "3"
        assert broker.rpc("m.members", {"name": "x"}).get()["members"] == ""


def test_rank_sets_batch_must_be_seconds():
    with pytest.raises(ValueError, match="RankSets"):
        RankSets(batch=float("nan"))
    with pytest.raises(ValueError, match="RankSets"):
        RankSets(batch=-1)


# The groups example, as clients of flux-core's groups see it


def test_the_groups_example_answers_as_flux_cores_groups_does():
    """The sequence tests/test_tree_real.py runs against the C groups service,
    and what it measured there."""
    with kary2() as broker:
        broker.load(os.path.join(EXAMPLES, "groups.py"), rank="all")
        watch = broker.rpc("groups.get", {"name": "test"}, flags=FLUX_RPC_STREAMING)
        seen = [a["members"] for a in _drain(broker, watch)]
        clients = {}
        for rank in range(8):
            clients[rank] = broker.connect(rank=rank)
            assert clients[rank].rpc("groups.join", {"name": "test"}).get() is None
            broker.advance(1)
            seen += [a["members"] for a in _drain(broker, watch)]
        clients[5].close()
        broker.advance(1)
        seen += [a["members"] for a in _drain(broker, watch)]
        assert broker.connect(rank=6).rpc("groups.leave", {"name": "test"}).get() is None
        broker.advance(1)
        seen += [a["members"] for a in _drain(broker, watch)]
        broker.overlay_disconnect(3)
        broker.advance(1)
        seen += [a["members"] for a in _drain(broker, watch)]
        assert seen == ["", "0", "0-1", "0-2", "0-3", "0-4", "0-5", "0-6", "0-7", "0-4,6-7", "0-4,7", "0-2,4"]
        assert error_of(broker.connect(rank=4).rpc("groups.join", {"name": "test"})) == (
            errno.EEXIST, "rank 4 is already a member of test")
        assert error_of(broker.connect(rank=5).rpc("groups.leave", {"name": "test"})) == (
            errno.ENOENT, "rank 5 is not a member of test")
        assert error_of(broker.rpc("groups.get", {"name": "test"}, nodeid=1)) == (
            errno.EPROTO, "this RPC is only available on rank 0")
        assert error_of(broker.rpc("groups.join", {"name": "test"}, nodeid=5)) == (
            errno.EPROTO, "groups.join is restricted to the local broker")
        assert broker.rpc("groups.get", {"name": "test"}).get() == {"members": "0-2,4"}
        assert broker.rpc("groups.stats-get", nodeid=2).get()["subtree"] == {"test": "2"}


# Scale


class Everywhere(BrokerModule):
    """A tree-aware module with async handlers and a timer, for 1,024 ranks."""

    present = RankSets()

    def setup(self):
        self.ticks = 0

    @timer_handler(0.5, repeat=0.5)
    async def tick(self):
        self.ticks += 1

    @reduce_handler("ticks", combine=operator.add)
    async def ticks_seen(self, msg):
        return self.ticks

    @request_handler("arrive")
    async def arrive(self, msg):
        self.present.add("here")
        return {}

    @request_handler("present")
    def here(self, msg):
        return {"members": self.present.members("here")}


def test_1024_ranks_reduce_and_aggregate_with_async_handlers_and_timers():
    """Past ~500 async modules, select() refused the descriptors of their
    asyncio loops; this runs in the default suite (about 3 s here)."""
    with Broker(size=1024) as broker:
        broker.load(Everywhere, name="every", rank="all")
        broker.advance(1.0)
        answer = broker.rpc("every.ticks").get()
        assert answer == {"value": 2 * 1024, "ranks": "0-1023", "missing": "", "errors": {}}
        for rank in range(1024):
            broker.rpc("every.arrive", nodeid=rank)
        broker.advance(0.5)
        assert broker.rpc("every.present").get() == {"members": "0-1023"}
        assert broker.rpc("every.present", nodeid=1).get() == {"members": "1,33-64"}
        broker.remove("every", rank="all")


def _drain(broker, future):
    """The responses a streaming *future* has now, in order."""
    broker.run_until_idle()
    seen = []
    while future.is_ready():
        seen.append(future.get())
        future.reset()
    return seen


def test_log_lines_of_the_tree_are_at_debug_only():
    """A whole reduction and aggregation leaves nothing above LOG_DEBUG in the log."""
    with kary2() as broker:
        broker.load(Members, name="m", rank="all")
        broker.load(Census, name="census", rank="all")
        broker.rpc("census.count").get()
        broker.rpc("m.add", {"name": "x"}, nodeid=7).get()
        broker.advance(1)
        loud = [entry for rank in range(8) for entry in broker.dmesg(rank=rank)
                if not any(f".{level}[" in entry for level in ("debug", "info"))]
        assert loud == [], loud
        assert syslog.LOG_DEBUG == 7


#: Combines that fail, and values that are not JSON (also loaded from a file
#: on a real instance by test_tree_real.py).
BAD_COMBINES = """
import operator

from flux.brokermod import BrokerModule, reduce_handler


class BadCombines(BrokerModule):
    @reduce_handler("divide", combine=lambda a, b: a / 0)
    def divide(self, msg):
        return 1

    @reduce_handler("nan", combine=lambda a, b: float("nan"))
    def nan(self, msg):
        return 1.0

    @reduce_handler("leafnan", combine=operator.add)
    def leafnan(self, msg):
        return float("nan") if self.rank == 3 else 1.0
"""


def _bad_combines(size, topo):
    namespace = {}
    exec(BAD_COMBINES, namespace)  # noqa: S102 - the test's own module
    with Broker(size=size, attrs={"tbon.topo": topo} if topo else None) as broker:
        broker.load(namespace["BadCombines"], name="bad", rank="all")
        answers = {}
        for topic in ("divide", "nan", "leafnan"):
            future = broker.rpc(f"bad.{topic}")
            try:
                answers[topic] = json.loads(future.get_str())
            except OSError as exc:
                answers[topic] = [exc.errno, exc.strerror]
        broker.handler_errors.clear()  # the failures are the point
        return answers


@pytest.mark.parametrize("size, topo", [(2, None), (3, None), (8, None), (8, "kary:2"), (16, "kary:2"),
                                        (64, "binomial")])
def test_a_failing_combine_is_eio_whatever_the_trees_shape(size, topo):
    """Issue 27: at size 8 on kary:2 a combine that raised on rank 1 left
    its parent answering ``missing "1-7"`` as if those ranks were down;
    now a combine that fails anywhere fails the reduction with EIO,
    naming the rank.  A NaN from a combine is the same failure, never the
    invalid JSON ``{"value": NaN}``; a NaN from one rank's method is that
    rank's error, saying it was a float."""
    answers = _bad_combines(size, topo)
    errnum, text = answers["divide"]
    assert errnum == errno.EIO and "\n" not in text
    assert re.fullmatch(r"bad\.divide: combine failed on rank \d+: ZeroDivisionError: division by zero", text)
    errnum, text = answers["nan"]
    assert errnum == errno.EIO and text.endswith("ValueError: combine gave float nan, which is not JSON")
    leafnan = answers["leafnan"]
    if size > 3:
        assert leafnan["missing"] == "3" and leafnan["value"] == size - 1
        assert leafnan["errors"]["3"].startswith("the handler gave float, which is not JSON")
    else:
        assert leafnan == {"value": float(size), "ranks": f"0-{size - 1}", "missing": "", "errors": {}}


def test_a_failing_combine_answers_the_same_when_it_runs_in_the_handler():
    """Rank 0's own value times out after its children answered, so the
    combine runs when the handler returns, not in a continuation: the same
    EIO answer as test_a_failing_combine_answers_eio_with_one_line."""
    class LateOwn(BrokerModule):
        @reduce_handler("count", combine="divide", timeout=2)
        async def count(self, msg):
            if self.rank == 0:
                await asyncio.sleep(3)
            return 1

        def divide(self, a, b):
            return a / 0

    with kary2(3) as broker:
        broker.load(LateOwn, name="late", rank="all")
        errnum, text = error_of(broker.rpc("late.count"))
        assert errnum == errno.EIO and text.startswith("late.count: combine failed on rank 0: ZeroDivisionError"), text


def test_a_set_name_utf8_cannot_carry_is_the_callers_error_and_nothing_sticks():
    """A lone surrogate from a JSON payload: EPROTO, one line at LOG_DEBUG;
    the rank's later changes still go up."""
    with kary2() as broker:
        broker.load(Members, name="m", rank="all")
        assert error_of(broker.rpc("m.add", '{"name": "\\ud800"}', nodeid=3)) == (
            errno.EPROTO, "set name '\\ud800' is not text UTF-8 can carry")
        assert broker.rpc("m.add", {"name": "ok"}, nodeid=3).get() == {}
        broker.advance(1)
        assert broker.rpc("m.members", {"name": "ok"}).get()["members"] == "3"
        assert not [line for line in broker.dmesg(rank=3) if ".err[" in line]


TIMEOUT_OPTION = """
from flux.brokermod import BrokerModule, Option, reduce_handler


class Timed(BrokerModule):
    t = Option(float, 2.0, "seconds a reduction waits")

    @reduce_handler("count", combine=max, timeout="t")
    def count(self, msg):
        return 1
"""


@pytest.mark.parametrize("value, why", [
    ("0", "timeout='t' must name an option or attribute holding a finite number of seconds > 0, not 0.0"),
    ("-1", "timeout='t' must name an option or attribute holding a finite number of seconds > 0, not -1.0"),
    ("nan", "option 't': 'nan' is not a finite number"),
])
def test_a_reduction_timeout_option_of_zero_fails_the_load_as_a_literal_does(target, write, value, why):
    """Issue 27, item 3: ``timeout=0`` was refused where written but an
    option holding 0 loaded, and then the brokers disagreed; now both fail
    the load, on both brokers, with one line naming the reduction."""
    errnum, text = target.load_error(write("timed.py", TIMEOUT_OPTION), f"t={value}")
    assert errnum == errno.EINVAL and why in text
    assert target.load(write("timed.py", TIMEOUT_OPTION), "t=0.5") is None
    assert target.rpc("timed.count", {}).get()["value"] == 1
    target.remove("timed")


# The second new-user trial (issue 27): what it found, on both brokers

DRAINED = '''
import errno
from flux.brokermod import BrokerModule, RankSets, RequestError, request_handler


class Drained(BrokerModule):
    drained = RankSets(batch=0.1)

    @request_handler("set")
    def set(self, msg):
        self.drained.add("drained")
        return {}

    @request_handler("clear")
    def clear(self, msg):
        if not self.drained.joined("drained"):
            raise RequestError(errno.ENOENT, f"rank {self.rank} is not drained")
        self.drained.discard("drained")
        return {}

    @request_handler("list")
    def list(self, msg):
        self.drained.flush()
        return {"ranks": self.drained.members("drained")}
'''

kary2_both = pytest.mark.flux_broker(size=8, topo="kary:2")


@pytest.fixture
def drained_file(tmp_path):
    path = tmp_path / "drained.py"
    path.write_text(DRAINED)
    return str(path)


@kary2_both
@pytest.mark.parametrize("ranks", ["0-4294967294", "99", "7-3", "abc", "0", "2"])
def test_an_update_naming_ranks_outside_the_childrens_subtrees_changes_nothing(flux_broker, drained_file, ranks):
    """Trial 2, D1: "0-4294967294" made rank 0's module expand four billion
    ranks (OOM-killed on the real instance); "99" was listed; "7-3" and "abc"
    raised at LOG_ERR and took the legitimate changes of the batch with them.
    Rank 1's children's subtrees are 3, 4 and 7; 0 and 2 are not below it."""
    flux_broker.load(drained_file, rank="all")
    flux_broker.rpc("drained.set", nodeid=3).get()
    bad = {"update": {"drained": [{"ranks": ranks, "set": True}]}}
    refused = flux_broker.rpc("drained.drained-update", bad, nodeid=1).answers
    assert refused[0]["errno"] == errno.EPROTO and "\n" not in refused[0]["error"]
    assert refused[0]["error"].startswith("drained.drained-update: ")
    flux_broker.settle(lambda: flux_broker.rpc("drained.list").get() == {"ranks": "3"}, "rank 3 alone drained")
    assert not [line for line in flux_broker.dmesg_on(1) if ".err[" in line or "Traceback" in line]


@kary2_both
def test_an_update_without_a_payload_is_refused_in_one_line(flux_broker, drained_file):
    flux_broker.load(drained_file, rank="all")
    refused = flux_broker.rpc("drained.drained-update", nodeid=1).answers
    assert refused == [{"errno": errno.EPROTO, "error": 'drained.drained-update: expected {"update": {NAME: '
                                                         '[CHANGE...]}, "clear": IDSET}'}]
    assert not [line for line in flux_broker.dmesg_on(1) if ".err[" in line]


@kary2_both
def test_a_resync_asked_by_a_client_is_answered(flux_broker, drained_file):
    """Trial 2, D6: it was never answered (memory: EDEADLK; real: a hang)."""
    flux_broker.load(drained_file, rank="all")
    assert flux_broker.rpc("drained.drained-resync", nodeid=3).get() == {}


@kary2_both
def test_memberships_end_with_their_module_and_a_module_loaded_again_heals_its_subtree(flux_broker, drained_file):
    """Trial 2, D3: a membership outlived the module that made it, on both
    brokers, and rank 0 listed it until a set and a clear on that rank."""
    flux_broker.load(drained_file, rank="0-3")
    flux_broker.rpc("drained.set", nodeid=3).get()
    flux_broker.rpc("drained.set", nodeid=1).get()
    flux_broker.load(drained_file, rank="4,5,7")
    flux_broker.rpc("drained.set", nodeid=7).get()
    flux_broker.rpc("drained.set", nodeid=5).get()
    flux_broker.settle(lambda: flux_broker.rpc("drained.list").get() == {"ranks": "1,3,5,7"}, "1,3,5,7")
    flux_broker.remove("drained", rank=1)  # its own membership goes with it; 3 and 7 stay
    flux_broker.settle(lambda: flux_broker.rpc("drained.list").get() == {"ranks": "3,5,7"}, "1 gone")
    flux_broker.rpc("drained.set", nodeid=4).get()  # its parent, rank 1, has no module: it waits
    flux_broker.load(drained_file, rank=1)
    flux_broker.settle(lambda: flux_broker.rpc("drained.list").get() == {"ranks": "3-5,7"}, "4 arrives")
    assert flux_broker.rpc("drained.clear", nodeid=1).answers[0]["errno"] == errno.ENOENT
    flux_broker.remove("drained", rank=3)
    flux_broker.settle(lambda: flux_broker.rpc("drained.list").get() == {"ranks": "4-5,7"}, "3 gone")
    assert flux_broker.rpc("drained.list", nodeid=1).get() == {"ranks": "4,7"}


SLOW_BELOW = """
import asyncio
from flux.brokermod import BrokerModule, reduce_handler


class Slow(BrokerModule):
    @reduce_handler("collect", combine=lambda a, b: a + b, timeout=60)
    async def collect(self, msg):
        if self.rank == 7:
            self.log.info("rank 7 holds its answer")
            await asyncio.sleep(30)
        return 1
"""


@kary2_both
def test_a_reduction_cut_off_below_reports_no_route_to_host(flux_broker, write_module):
    """Trial 2, D8: in memory the cut subtree's error was "module
    disconnect" (in flight) or ENOSYS (just after); a real instance says
    "No route to host" (EHOSTUNREACH), measured.  Rank 3 is cut off while
    rank 7, below it, holds its answer."""
    flux_broker.load(write_module("slow.py", SLOW_BELOW), rank="all")
    pending = flux_broker.start_rpc("slow.collect")
    flux_broker.settle(lambda: "slow.info[7]: rank 7 holds its answer" in flux_broker.dmesg_on(7),
                       "rank 7's part of the reduction to start")
    assert flux_broker.lose_rank(3) == [3, 7]
    answer = pending.wait().get()
    assert (answer["ranks"], answer["missing"], answer["errors"]) == ("0-2,4-6", "3,7", {"3": "No route to host"})
    assert flux_broker.rpc("slow.collect", nodeid=7).answers == [
        {"errno": errno.EHOSTUNREACH, "error": "No route to host"}]


HOSTILE = '''
import json
from flux.brokermod import BrokerModule, reduce_handler, request_handler


class Hostile(BrokerModule):
    def setup(self):
        self.value = 1

    @request_handler("put")
    def put(self, msg, *, value):
        self.value = value
        return {"rank": self.rank}

    @reduce_handler("collect", combine=lambda a, b: {**a, **b}, timeout=5)
    def collect(self, msg):
        return {str(self.rank): self.value}

    @request_handler("reduce-at")
    async def reduce_at(self, msg, *, rank):
        return (await self.reduce("collect", rank=rank)).ranks
'''


@pytest.fixture
def hostile_file(tmp_path):
    path = tmp_path / "hostile.py"
    path.write_text(HOSTILE)
    return str(path)


@pytest.mark.flux_handler_errors
@kary2_both
def test_a_leafs_value_too_deep_for_json_is_that_ranks_error_not_a_failed_combine(flux_broker, hostile_file):
    """Trial 2, D4: a leaf (where no combine runs) whose value was just deep
    enough failed the whole reduction with EIO 'combine failed on rank 7'.
    Where the limit falls depends on the stack; on either side of it the
    reduction is answered."""
    flux_broker.load(hostile_file, rank="all")
    for depth in range(940, 1000):
        text = '{"value": ' + "[" * depth + "]" * depth + "}"
        flux_broker.rpc("hostile.put", text, nodeid=7)  # refused, or taken: either way
        answer = flux_broker.rpc("hostile.collect").answers[0]
        assert "payload" in answer, (depth, answer)  # never EIO for the whole reduction


@pytest.mark.flux_handler_errors
@pytest.mark.parametrize("rank", [-1, 2 ** 70, 0xFFFFFFFE, 8, "0", True])
@kary2_both
def test_reduce_refuses_a_rank_outside_the_instance(flux_broker, hostile_file, rank):
    """Trial 2, D2: FLUX_NODEID_UPSTREAM bounced forever on a real broker;
    -1 and 2**70 gave different errors on the two brokers."""
    flux_broker.load(hostile_file, rank="all")
    answer = flux_broker.rpc("hostile.reduce-at", {"rank": rank}).answers[0]
    assert answer["errno"] == errno.EPROTO, answer  # a ValueError in a handler, as always
    assert answer["error"] == (f"ValueError: reduce('hostile.collect', rank={rank!r}): not a rank of this "
                               f"instance (0 to 7)")


def test_an_async_combine_fails_the_load_in_one_line():
    """Trial 2, D12: it loaded, then every reduction failed 'combine gave coroutine'."""
    from flux.membroker import ModuleError

    source = HOSTILE.replace("combine=lambda a, b: {**a, **b}", 'combine="merge"') + '''
    async def merge(self, a, b):
        return {**a, **b}
'''
    namespace = {}
    exec(compile(source, "hostile", "exec"), namespace)
    with Broker() as broker:
        with pytest.raises(ModuleError) as info:
            broker.load(namespace["Hostile"], name="hostile")
    assert str(info.value) == ("[Errno 22] hostile: @reduce_handler('hostile.collect') on collect: combine must be "
                               "a plain function of two values, not coroutine 'merge'")
