"""Several ranks: the same module on every broker of a four-broker instance,
on the in-memory broker (``Broker(size=4)``) and a real one (``flux start
--test-size=4``)."""

import errno
import textwrap

import pytest
from _targets import MemTarget, RealTarget

from flux.brokermod_testing import skip_reason, start_instance

RANKY = r'''
from flux.brokermod import BrokerModule, event_handler, request_handler


class Ranky(BrokerModule):
    seen = []

    def setup(self):
        self.log.info(f"on rank {self.rank} of {self.size}")

    @request_handler("where", allow_guest=True)
    def where(self, msg):
        return {"rank": self.rank, "size": self.size, "attr": self.handle.attr_get("rank")}

    @request_handler("ask-leader")
    async def ask_leader(self, msg):
        return {"me": self.rank, "leader": await self.handle.rpc("ranky.where", nodeid=0)}

    @request_handler("ask-solo")
    async def ask_solo(self, msg):
        return {"me": self.rank, "solo": await self.handle.rpc("solo.where")}

    @request_handler("complain")
    def complain(self, msg):
        self.log.error(f"complaint on rank {self.rank}")
        return {}

    @event_handler("ev")
    def ev(self, msg):
        self.seen.append(msg.payload["n"])

    @request_handler("seen")
    def get_seen(self, msg):
        return self.seen
'''

SOLO = r'''
from flux.brokermod import BrokerModule, request_handler


class Solo(BrokerModule):
    @request_handler("where")
    def where(self, msg):
        return {"rank": self.rank}
'''


@pytest.fixture(scope="module")
def four_brokers():
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    instance = start_instance(size=4)
    try:
        yield instance
    finally:
        assert instance.stop() == 0


@pytest.fixture(params=["membroker", "real"])
def ranks(request, tmp_path):
    if request.param == "membroker":
        from flux.membroker import Broker

        target = MemTarget()
        target.broker = Broker(size=4)
    else:
        target = RealTarget(request.getfixturevalue("four_brokers"))
    target.clear_log()
    for name, source in (("ranky", RANKY), ("solo", SOLO)):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    target.load_on(str(tmp_path / "ranky.py"), "all")
    target.load_on(str(tmp_path / "solo.py"), 0)
    yield target
    target.remove_on("ranky", "all")
    target.remove_on("solo", 0)
    target.close()


def test_a_request_reaches_the_rank_it_names(ranks):
    out = ranks.client(
        """
        for rank in range(4):
            emit(h.rpc("ranky.where", nodeid=rank).get())
        emit(h.rpc("ranky.where").get())
        try:
            h.rpc("ranky.where", nodeid=4).get()
        except OSError as exc:
            emit(exc.errno)
        """
    )
    assert out[:4] == [{"rank": r, "size": 4, "attr": str(r)} for r in range(4)]
    assert out[4]["rank"] == 0  # a client of rank 0, no nodeid: its own broker
    assert out[5] == errno.EHOSTUNREACH


def test_a_module_calls_another_rank_and_finds_a_service_upstream(ranks):
    out = ranks.client(
        """
        emit(h.rpc("ranky.ask-leader", nodeid=3).get())
        emit(h.rpc("ranky.ask-solo", nodeid=2).get())
        try:
            h.rpc("solo.where", nodeid=1).get()
        except OSError as exc:
            emit(exc.errno)
        """
    )
    assert out[0] == {"me": 3, "leader": {"rank": 0, "size": 4, "attr": "0"}}
    assert out[1] == {"me": 2, "solo": {"rank": 0}}  # not on rank 2: found upstream
    assert out[2] == errno.ENOSYS  # not on rank 1, and a nodeid does not look further


def test_one_event_reaches_every_rank(ranks):
    ranks.event("ranky.ev", {"n": 7})
    script = "for r in range(4):\n    emit(h.rpc('ranky.seen', nodeid=r).get())"
    ranks.settle(lambda: ranks.client(script) == [[7]] * 4, "the event on every rank")


def test_each_rank_keeps_its_own_log_and_errors_reach_stderr(ranks):
    """Measured: flux dmesg on a rank shows that rank's lines only (no
    forwarding to rank 0's buffer, even for errors); the brokers' stderr
    gets every rank's errors, each marked with its rank."""
    for rank in range(4):
        assert f"ranky.info[{rank}]: on rank {rank} of 4" in ranks.dmesg_on(rank)
    assert not any(line.startswith("ranky.info[2]") for line in ranks.dmesg_on(0))
    ranks.client("h.rpc('ranky.complain', nodeid=2).get()")
    ranks.settle(lambda: "ranky.err[2]: complaint on rank 2" in ranks.stderr_text(), "rank 2's error on stderr")
    assert "ranky.err[2]: complaint on rank 2" in ranks.dmesg_on(2)
    assert "ranky.err[2]: complaint on rank 2" not in ranks.dmesg_on(0)


@pytest.fixture(params=["membroker", "real"])
def four_ranks(request):
    """An empty four-rank broker of each kind (the real one skips without flux-core)."""
    if request.param == "membroker":
        from flux.membroker import Broker

        target = MemTarget()
        target.broker = Broker(size=4)
    else:
        target = RealTarget(request.getfixturevalue("four_brokers"))
    yield target
    target.close()


def test_the_ranks_example_collects_every_ranks_reports_on_rank_0(four_ranks):
    """examples/ranks.py on four ranks: every rank reports to rank 0."""
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "ranks.py")
    four_ranks.load_on(path, "all", "every=0.2")
    four_ranks.settle(lambda: _ranks_status(four_ranks)["reporting"] == ["0", "1", "2", "3"], "every rank's report")
    assert _ranks_status(four_ranks)["size"] == 4
    assert four_ranks.client("emit(h.rpc('ranks.status', nodeid=3).get())") == [{"rank": 3, "ask": "rank 0"}]
    four_ranks.remove_on("ranks", "all")


def _ranks_status(target):
    return target.client("emit(h.rpc('ranks.status', nodeid=0).get())")[0]
