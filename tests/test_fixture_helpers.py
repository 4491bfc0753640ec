"""The two-broker fixture's helpers for what tests used to write twice: a
bounded rpc, start_rpc with take/guest/nodeid, a lost rank, and a request
sent without a matchtag.  Each runs on both brokers (``flux_broker``)."""

import errno

import pytest

from flux.brokermod_testing import RPC_TIMEOUT

SERVICE = '''
import asyncio
import errno

from flux.brokermod import BrokerModule, request_handler, timer_handler


class Helped(BrokerModule):
    """Answers some requests, never others; streams until cancelled."""

    @timer_handler(0.5, repeat=0.5)
    def tick(self):
        pass  # keeps virtual time going, as a real module's timers do

    @request_handler("never")
    def never(self, msg):
        return None  # held, never answered

    @request_handler("stream")
    async def stream(self, msg):
        for i in range(1000):
            yield {"i": i}
            await asyncio.sleep(0.05)

    @request_handler("clock")
    def clock(self, msg):
        return {"now": self.handle.reactor_now(self.handle.get_reactor())}

    @request_handler("where")
    def where(self, msg):
        return {"rank": self.rank}

    @request_handler("owner-only")
    def owner_only(self, msg):
        return {}

    @request_handler("many", allow_guest=True)
    def many(self, msg):
        for i in range(msg.payload.get("count", 3)):
            self.handle.respond(msg, {"i": i})
        if msg.payload.get("fail"):
            self.handle.respond_error(msg, errno.ENOSPC, "no room")
        return None
'''


@pytest.fixture
def helped(flux_broker, write_module):
    flux_broker.load(write_module("helped.py", SERVICE))
    return flux_broker


def _clock(broker):
    """The module's reactor clock (virtual seconds in memory)."""
    return broker.rpc("helped.clock").get()["now"]


def test_rpc_fails_naming_the_topic_when_no_answer_comes_in_time(helped):
    before = _clock(helped)
    with pytest.raises(AssertionError, match=r"^rpc helped\.never: no answer in 2 s$"):
        helped.rpc("helped.never", {}, timeout=2)
    assert 2 <= _clock(helped) - before < 10
    assert helped.rpc("helped.where", {}, timeout=2).get() == {"rank": 0}  # the module still serves


def test_rpcs_default_bound_is_well_under_two_minutes(helped):
    assert RPC_TIMEOUT <= 30
    before = _clock(helped)
    with pytest.raises(AssertionError, match=rf"^rpc helped\.never: no answer in {RPC_TIMEOUT:g} s$"):
        helped.rpc("helped.never", {})
    assert RPC_TIMEOUT <= _clock(helped) - before < RPC_TIMEOUT + 10


def test_a_stream_that_stops_answering_fails_saying_how_far_it_got(helped):
    pending = helped.start_rpc("helped.many", {"count": 2}, streaming=True, timeout=2)
    with pytest.raises(AssertionError, match=r"^rpc helped\.many: no answer in 2 s after 2 responses$"):
        pending.wait()


def test_an_rpc_timeout_must_be_a_positive_number_of_seconds(helped):
    for bad in (0, -1, float("nan"), float("inf"), "5", True):
        with pytest.raises(ValueError, match=r"rpc timeout=.*: expected a finite number of seconds > 0"):
            helped.rpc("helped.where", {}, timeout=bad)


def test_start_rpc_takes_take_and_cancels_the_stream(helped):
    pending = helped.start_rpc("helped.stream", {}, streaming=True, take=3)
    result = pending.wait()
    assert result.stream() == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert result.answers[-1]["errno"] == errno.ENODATA


def test_start_rpc_takes_guest_and_nodeid(helped):
    refused = helped.start_rpc("helped.owner-only", {}, guest=True).wait()
    assert refused.answers[0]["errno"] == errno.EPERM
    assert helped.start_rpc("helped.where", {}, nodeid=0).wait().get() == {"rank": 0}


def test_a_request_without_a_matchtag_gets_every_answer_by_topic(helped):
    result = helped.send_without_matchtag("helped.many", {"count": 3, "fail": True}, answers=4)
    assert result.answers[:3] == [{"payload": '{"i": 0}'}, {"payload": '{"i": 1}'}, {"payload": '{"i": 2}'}]
    # taken by topic, an error's text is not decoded: flux-core's wrapper names the errno
    assert result.answers[3] == {"errno": errno.ENOSPC, "error": "ENOSPC: No space left on device"}
    as_guest = helped.send_without_matchtag("helped.many", {"count": 1}, answers=1, guest=True)
    assert as_guest.stream() == [{"i": 0}]


def test_a_request_without_a_matchtag_and_no_answer_wanted_is_still_handled(helped):
    before = helped.rpc("helped.stats-get").get()["handlers"]["helped.many"]["requests"]
    assert helped.send_without_matchtag("helped.many", {"count": 2}).answers == []

    def handled():
        return helped.rpc("helped.stats-get").get()["handlers"]["helped.many"]["requests"] == before + 1

    helped.settle(handled, "helped.many handled once")


def test_too_few_answers_to_a_request_without_a_matchtag_fail_saying_so(helped):
    with pytest.raises(AssertionError, match=r"^send helped\.many without matchtag: 2 of 5 answers in 2 s$"):
        helped.send_without_matchtag("helped.many", {"count": 2}, answers=5, timeout=2)


@pytest.mark.flux_broker(size=8, topo="kary:2")
def test_a_lost_rank_takes_its_subtree_and_the_others_go_on_serving(flux_broker, write_module):
    """``flux overlay disconnect 3`` on kary:2, as measured on flux-core
    0.88 with ``--test-exit-mode=leader``: brokers 3 and 7 exit, requests
    to them fail with EHOSTUNREACH, every other rank still answers."""
    flux_broker.load(write_module("helped.py", SERVICE), rank="all")
    assert flux_broker.lose_rank(3) == [3, 7]
    for rank in (3, 7):
        assert flux_broker.rpc("helped.where", nodeid=rank).answers[0]["errno"] == errno.EHOSTUNREACH
    for rank in (0, 1, 2, 4, 5, 6):
        assert flux_broker.rpc("helped.where", nodeid=rank).get() == {"rank": rank}
    assert any("(rank 3) disconnected by request and severed contact with 1 other nodes" in line
               for line in flux_broker.dmesg_on(1))
    assert any(line.startswith("broker.err[0]: dead to Flux:") and line.endswith("(rank 3,7)")
               for line in flux_broker.dmesg())


@pytest.mark.flux_broker(size=8, topo="kary:2")
def test_after_a_lost_rank_the_next_test_gets_a_whole_instance(flux_broker, write_module):
    """Runs after the test above: its instance lost ranks 3 and 7, so a new
    one serves this test on every rank."""
    flux_broker.load(write_module("helped.py", SERVICE), rank="all")
    assert [flux_broker.rpc("helped.where", nodeid=rank).get()["rank"] for rank in range(8)] == list(range(8))


@pytest.mark.flux_broker(size=2)
def test_lose_rank_refuses_rank_0_and_ranks_outside_the_instance(flux_broker):
    for bad in (0, 2, -1, "1"):
        with pytest.raises(ValueError, match=r"lose_rank\(.*\): expected a rank from 1 to 1"):
            flux_broker.lose_rank(bad)
