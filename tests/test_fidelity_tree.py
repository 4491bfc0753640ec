"""The tree of brokers, reductions and rank sets, on both brokers (the
fidelity ledger's ranks/tree rows).

Each module is written to a file and loaded on the in-memory broker and on
a real instance (the ``flux_broker`` fixture).  The several-rank tests use
the shape of tests/test_tree.py's two-broker tests, eight brokers in the
tree ``kary:2``, so the session shares one real instance among them:

    0
    ├── 1
    │   ├── 3
    │   │   └── 7
    │   └── 4
    └── 2
        ├── 5
        └── 6
"""

import errno
import textwrap

import pytest
from test_tree import CENSUS, MEMBERS

kary2 = pytest.mark.flux_broker(size=8, topo="kary:2")

FLUX_NODEID_UPSTREAM = 0xFFFFFFFE


@pytest.fixture
def module_file(tmp_path):
    """``module_file("name", source) -> path`` of ``NAME.py``."""

    def write(name, source):
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        return str(path)

    return write


def error_of(result):
    """(errno, text) of an RPCResult's first answer, which must be an error."""
    first = result.answers[0]
    assert "errno" in first, f"{result.topic}: expected an error, got {first}"
    return first["errno"], first["error"]


# tree-7, tree-11: attributes ----------------------------------------------------

ATTRS = '''
from flux.brokermod import BrokerModule, request_handler

FLUX_NODEID_UPSTREAM = 0xFFFFFFFE


class Attrs(BrokerModule):
    @request_handler("get")
    def get(self, msg, *, name: str):
        try:
            return {"value": self.handle.attr_get(name)}
        except OSError as exc:
            return {"errno": exc.errno}

    @request_handler("upstream")
    async def upstream(self, msg, *, name: str):
        """attr.get of the broker upstream of this one."""
        return await self.handle.rpc("attr.get", {"name": name}, nodeid=FLUX_NODEID_UPSTREAM)
'''


def test_attr_get_of_an_unknown_attribute_is_enoent(flux_broker, module_file):
    flux_broker.load(module_file("attrs", ATTRS))
    assert flux_broker.rpc("attrs.get", {"name": "nosuch.attribute"}).get() == {"errno": errno.ENOENT}
    assert flux_broker.rpc("attrs.get", {"name": "rank"}).get() == {"value": "0"}


@kary2
def test_attr_get_answers_value_and_flags_enoent_and_the_parents_rank_upstream(flux_broker, module_file):
    assert flux_broker.rpc("attr.get", {"name": "rank"}, nodeid=1).get() == {"value": "1", "flags": 1}
    assert flux_broker.rpc("attr.get", {"name": "tbon.level"}, nodeid=3).get() == {"value": "2", "flags": 0}
    assert error_of(flux_broker.rpc("attr.get", {"name": "nosuch"}, nodeid=1))[0] == errno.ENOENT
    flux_broker.load(module_file("attrs", ATTRS), rank="3,7")
    assert flux_broker.rpc("attrs.upstream", {"name": "rank"}, nodeid=3).get()["value"] == "1"
    assert flux_broker.rpc("attrs.upstream", {"name": "rank"}, nodeid=7).get()["value"] == "3"


# tree-12: overlay.monitor ---------------------------------------------------------

# overlay.monitor has no cancel: a module holds the stream (a test client
# could not end it but by exiting), answering what came so far.
MONITOR = '''
from flux.brokermod import BrokerModule, request_handler

FLUX_RPC_STREAMING = 2


class Monitor(BrokerModule):
    def setup(self):
        self.seen = {}
        self.futures = []

    @request_handler("start")
    def start(self, msg, *, rank: int):
        seen = self.seen.setdefault(str(rank), [])

        def answered(future):
            try:
                seen.append(future.get())
            except OSError as exc:
                seen.append({"errno": exc.errno})
                return
            future.reset()

        future = self.handle.rpc("overlay.monitor", None, nodeid=rank, flags=FLUX_RPC_STREAMING)
        future.then(answered)
        self.futures.append(future)
        return {}

    @request_handler("seen")
    def get_seen(self, msg):
        return self.seen
'''


@kary2
def test_overlay_monitor_is_owner_only_streaming_only_and_answers_once_per_child(flux_broker, module_file):
    assert error_of(flux_broker.rpc("overlay.monitor", nodeid=1))[0] == errno.EPROTO
    assert error_of(flux_broker.rpc("overlay.monitor", nodeid=1, streaming=True, guest=True))[0] == errno.EPERM
    flux_broker.load(module_file("monitor", MONITOR))
    for rank in (0, 1, 3, 7):
        flux_broker.rpc("monitor.start", {"rank": rank}).get()
    expected = {
        "0": [{"rank": 1, "status": "full", "torpid": False}, {"rank": 2, "status": "full", "torpid": False}],
        "1": [{"rank": 3, "status": "full", "torpid": False}, {"rank": 4, "status": "full", "torpid": False}],
        "3": [{"rank": 7, "status": "full", "torpid": False}],
        "7": [],  # a leaf: no child, nothing to report, and no end either
    }
    flux_broker.settle(lambda: flux_broker.rpc("monitor.seen").get() == expected, "one answer per child")
    flux_broker.wait(1.0)
    assert flux_broker.rpc("monitor.seen").get() == expected  # nothing more while nothing changes


# Census: reductions (tree-17, tree-22, tree-28) -----------------------------------
# (test_tree.py's CENSUS module, loaded from a file)


def _counters(flux_broker, rank):
    """*rank*'s module's message counters, but for requests received: the
    requests each of its handlers took."""
    stats = flux_broker.rpc("census.stats-get", nodeid=rank).get()
    counters = {"rx response": stats["rx"]["response"], "tx request": stats["tx"]["request"],
                "tx response": stats["tx"]["response"]}
    counters.update({topic: handler["requests"] for topic, handler in stats["handlers"].items()})
    return counters


@kary2
def test_each_broker_hears_from_its_parent_and_its_own_children_only(flux_broker, module_file):
    """One reduction: rank 0's module takes the client's request and one
    answer from each of its children (1, 2); rank 1 one request from its
    parent and an answer from each of 3 and 4; rank 3 one from 7; the leaf
    7 its parent's request alone.  (Requests received are counted by the
    handler that took them, not in ``rx``: the disconnects of the clients
    that read the counters are requests too, which the two brokers send to
    different ranks.)"""
    flux_broker.load(module_file("census", CENSUS), rank="all")
    assert flux_broker.rpc("census.count").get()["value"] == 8  # each broker asks for its children once
    ranks = (0, 1, 3, 7)
    before = {rank: _counters(flux_broker, rank) for rank in ranks}
    assert flux_broker.rpc("census.count").get() == {"value": 8, "ranks": "0-7", "missing": "", "errors": {}}
    after = {rank: _counters(flux_broker, rank) for rank in ranks}
    delta = {rank: {key: n - before[rank][key] for key, n in after[rank].items() if n != before[rank][key]}
             for rank in ranks}
    children = {0: 2, 1: 2, 3: 1, 7: 0}
    expected = {}
    for rank, n in children.items():
        took = "census.count" if rank == 0 else "census.count-subtree"
        expected[rank] = {took: 1, "tx response": 1 + 1}  # (+ the answer to the first stats-get)
        if n:
            expected[rank].update({"rx response": n, "tx request": n})
    assert delta == expected


@kary2
def test_a_reduction_checks_its_declared_fields_at_the_rank_asked(flux_broker, module_file):
    flux_broker.load(module_file("census", CENSUS), rank="all")
    for rank in (0, 1, 7):
        errnum, text = error_of(flux_broker.rpc("census.ranks", {"scale": "three"}, nodeid=rank))
        assert errnum == errno.EPROTO and "field 'scale'" in text and "\n" not in text, text
    assert flux_broker.rpc("census.ranks", {"scale": 3}, nodeid=1).get() == {
        "value": {"1": 3, "3": 3, "4": 3, "7": 3}, "ranks": "1,3-4,7", "missing": "", "errors": {}}


def test_handlers_lists_a_reduction_as_such(flux_broker, module_file):
    flux_broker.load(module_file("census", CENSUS))
    kinds = {h["topic"]: h["kind"] for h in flux_broker.rpc("census.handlers").get()["handlers"]}
    assert kinds["census.count"] == "reduction" and kinds["census.ranks"] == "reduction"
    assert kinds["census.where"] == "request"


# tree-23: reduce_handler's arguments, at load -------------------------------------

NO_MERGE = '''
from flux.brokermod import BrokerModule, reduce_handler


class NoMerge(BrokerModule):
    @reduce_handler("x", combine="nosuch")
    def x(self, msg):
        return 1
'''

ASYNC_COMBINE = '''
from flux.brokermod import BrokerModule, reduce_handler


class Hostile(BrokerModule):
    @reduce_handler("collect", combine="merge")
    def collect(self, msg):
        return {str(self.rank): 1}

    async def merge(self, a, b):
        return {**a, **b}
'''

BAD_ARGUMENTS = '''
from flux.brokermod import BrokerModule, reduce_handler


class Bad(BrokerModule):
    @reduce_handler("x", combine=max, timeout=0)
    def x(self, msg):
        return 1
'''


def _the_line(text, fragment):
    lines = [line for line in text.splitlines() if fragment in line]
    assert lines, f"{fragment!r} not in:\n{text}"
    return lines[0]


def test_reduce_handler_arguments_are_checked_and_an_async_combine_fails_the_load_in_one_line(flux_broker,
                                                                                              module_file):
    errnum, text = flux_broker.load_error(module_file("nomerge", NO_MERGE))
    assert errnum == errno.EINVAL
    assert "combine='nosuch' names no method of" in _the_line(text, "combine='nosuch'")
    errnum, text = flux_broker.load_error(module_file("hostile", ASYNC_COMBINE))
    assert errnum == errno.EINVAL
    assert _the_line(text, "combine must be").endswith(
        "hostile.py: @reduce_handler('hostile.collect') on collect: combine must be a plain function of two "
        "values, not coroutine 'merge'")
    path = module_file("bad", BAD_ARGUMENTS)
    errnum, text = flux_broker.load_error(path)
    assert errnum == errno.EINVAL
    assert _the_line(text, "timeout must be").endswith(
        f"{path}:6: TypeError: @reduce_handler('x'): timeout must be a finite number of seconds > 0 or the name of "
        f"an option, not 0")
    assert "Traceback" not in text
    assert not {"nomerge", "hostile", "bad"} & set(flux_broker.modules())


# Rank sets (tree-30, tree-37, tree-43) ---------------------------------------------
# (test_tree.py's MEMBERS module, loaded from a file)


def _view(flux_broker, rank, name):
    return flux_broker.rpc("m.members", {"name": name}, nodeid=rank).get()


PATH_OF_7 = (0, 1, 3, 7)  # rank 7 and the ranks its changes go through


@kary2
def test_a_set_that_empties_is_forgotten_on_every_rank(flux_broker, module_file):
    """Rank 7's sets reach rank 0 through 3 and 1; once the last member of
    one leaves, no rank of that path still names it."""
    flux_broker.load(module_file("m", MEMBERS), rank="all")
    for name in ("kept", "gone"):
        flux_broker.rpc("m.add", {"name": name}, nodeid=7).get()
    flux_broker.settle(lambda: all(_view(flux_broker, rank, "gone") == {"members": "7", "names": ["gone", "kept"]}
                                   for rank in PATH_OF_7), "'gone' and 'kept' on 0, 1, 3 and 7")
    flux_broker.rpc("m.discard", {"name": "gone"}, nodeid=7).get()
    flux_broker.settle(lambda: all(_view(flux_broker, rank, "kept") == {"members": "7", "names": ["kept"]}
                                   for rank in PATH_OF_7), "only 'kept' left on 0, 1, 3 and 7")
    assert _view(flux_broker, 0, "gone") == {"members": "", "names": ["kept"]}


TIED_TO_A_CLIENT_OF_RANK_0 = (
    "membroker disagrees: a client's disconnect goes to the service on the client's own rank (0), not to "
    "the rank its request was sent to (7), so rank 7's module never hears that the client left; flux-core "
    "(librouter/disconnect.c) sends one disconnect per (service, nodeid) the client used")


@kary2
@pytest.mark.parametrize("flux_broker", [
    pytest.param("memory", marks=pytest.mark.xfail(strict=True, reason=TIED_TO_A_CLIENT_OF_RANK_0)),
    "real",
], indirect=True)
def test_a_set_whose_client_left_is_forgotten_on_every_rank(flux_broker, module_file):
    """A client of rank 0 adds rank 7 to 'tied' for as long as it stays;
    rank 0 shows it while the client waits; once the client has exited
    (its disconnect reaches rank 7's module), no rank of the path names it."""
    flux_broker.load(module_file("m", MEMBERS), rank="all")
    flux_broker.rpc("m.add", {"name": "kept"}, nodeid=7).get()
    assert flux_broker.rpc("m.hold", {"name": "tied"}, nodeid=7).get() == {"members": "7", "names": ["kept", "tied"]}
    flux_broker.settle(lambda: all(_view(flux_broker, rank, "kept") == {"members": "7", "names": ["kept"]}
                                   for rank in PATH_OF_7), "only 'kept' left on 0, 1, 3 and 7")


@kary2
def test_a_parent_without_the_module_drops_updates_and_nothing_hangs(flux_broker, module_file):
    flux_broker.load(module_file("m", MEMBERS), rank="0,3")  # rank 3's parent, 1, has no m
    assert flux_broker.rpc("m.add", {"name": "x"}, nodeid=3).get() == {}
    flux_broker.wait(1.0)
    assert _view(flux_broker, 3, "x") == {"members": "3", "names": ["x"]}
    assert _view(flux_broker, 0, "x") == {"members": "", "names": []}
    assert flux_broker.rpc("m.add", {"name": "y"}, nodeid=3).get() == {}  # rank 3 still answers
    flux_broker.settle(lambda: _view(flux_broker, 3, "y")["members"] == "3", "'y' on rank 3")


@kary2
def test_a_set_name_utf8_cannot_carry_is_the_callers_error_and_nothing_sticks(flux_broker, module_file):
    """A lone surrogate from a JSON payload: EPROTO; the rank's later
    changes still go up, and nothing is logged as an error."""
    flux_broker.load(module_file("m", MEMBERS), rank="all")
    refused = flux_broker.rpc("m.add", '{"name": "\\ud800"}', nodeid=3)
    assert error_of(refused) == (errno.EPROTO, "set name '\\ud800' is not text UTF-8 can carry")
    assert flux_broker.rpc("m.add", {"name": "ok"}, nodeid=3).get() == {}
    flux_broker.settle(lambda: _view(flux_broker, 0, "ok") == {"members": "3", "names": ["ok"]}, "'ok' at rank 0")
    assert _view(flux_broker, 3, "ok")["names"] == ["ok"]
    assert not [line for line in flux_broker.dmesg_on(3) if ".err[" in line or "Traceback" in line]
