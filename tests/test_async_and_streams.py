"""async handlers and streams that clean up after themselves, on both brokers.

Client scenarios are small scripts run against the in-memory broker (in
this process) and, with flux-core present, a real instance (as a client
process): see ``client()`` in tests/_targets.py.
"""

import errno
import os

import pytest
from _helpers import error_of


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
ENODATA, EPROTO, ENOENT = 61, 71, 2

WORKER = r'''
import asyncio
from flux.brokermod import BrokerModule, event_handler, request_facts, request_handler, timer_handler


class Worker(BrokerModule):
    order = []
    seen = []

    @request_handler("nap")
    async def nap(self, msg, *, t: float, name: str):
        await asyncio.sleep(t)
        self.order.append(name)
        return {"name": name}

    @request_handler("order")
    def get_order(self, msg):
        return self.order

    @request_handler("relay")
    async def relay(self, msg, *, key: str):
        return await self.handle.rpc("kvstore.get", {"key": key})

    @request_handler("several")
    async def several(self, msg, *, keys: list):
        futures = [self.handle.rpc("kvstore.get", {"key": key}) for key in keys]
        return [(await future)["value"] for future in futures]

    @request_handler("keep")
    def keep(self, msg, *, key: str):
        self.kept = self.handle.rpc("kvstore.get", {"key": key})
        return {}

    @request_handler("kept")
    async def kept_answer(self, msg):
        return await self.kept

    @request_handler("gather")
    async def gather(self, msg):
        async def double(x):
            await asyncio.sleep(0.01 * x)
            return 2 * x
        return await asyncio.gather(*(double(x) for x in range(3)))

    @request_handler("fail")
    async def fail(self, msg):
        await asyncio.sleep(0)
        raise ValueError("late failure")

    @request_handler("count")
    def count(self, msg, *, n: int):
        for i in range(n):
            yield i

    @request_handler("breaks")
    async def breaks(self, msg):
        yield 1
        raise OSError(5, "stream broke")

    @event_handler("poke")
    async def poke(self, msg):
        await asyncio.sleep(0.01)
        self.seen.append("event")

    @timer_handler(0.01)
    async def tick(self):
        await asyncio.sleep(0.01)
        self.seen.append("timer")

    @request_handler("seen")
    def get_seen(self, msg):
        return sorted(self.seen)

    @request_handler("facts", allow_guest=True)
    def facts(self, msg):
        return request_facts(msg)._asdict()

    @request_handler("in-task")
    async def in_task(self, msg):
        before = asyncio.current_task()  # the first step runs at once, in its task
        await asyncio.sleep(0)
        return {"first": before is not None, "same": asyncio.current_task() is before}

    @request_handler("quick")
    async def quick(self, msg):
        return {"quick": True}

    @request_handler("in-thread")
    async def in_thread(self, msg):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, sum, [1, 2, 3])
'''



@pytest.fixture
def kv(target):
    target.load(os.path.join(EXAMPLES, "kvstore.py"))
    yield target
    target.remove("kvstore")


@pytest.fixture
def worker(kv, write_module):
    kv.load(write_module("worker.py", WORKER))
    yield kv
    kv.remove("worker")


def _watching(target):
    return target.rpc("kvstore.watching").get()["watching"]


# Streams


def test_watch_streams_changes_and_ends_when_the_client_goes_away(kv):
    out = kv.client(
        """
        f = h.rpc("kvstore.watch", {"key": "a"}, flags=STREAMING)
        emit(f.get()); f.reset()
        h.rpc("kvstore.put", {"key": "a", "value": 2}).get()
        emit(f.get()); f.reset()
        emit(h.rpc("kvstore.watching").get())
        """
    )
    assert out == [{"value": None}, {"value": 2}, {"watching": 1}]
    kv.settle(lambda: _watching(kv) == 0, "the watch to end after the client left")


def test_cancel_ends_the_stream_with_enodata(kv):
    out = kv.client(
        """
        f = h.rpc("kvstore.watch", {"key": "a"}, flags=STREAMING)
        emit(f.get()); f.reset()
        h.rpc("kvstore.watch-cancel", {"matchtag": f.pimpl.get_matchtag()}, flags=1)
        try:
            f.get()
            emit("more")
        except OSError as exc:
            emit(exc.errno)
        emit(h.rpc("kvstore.watching").get())
        """
    )
    assert out == [{"value": None}, ENODATA, {"watching": 0}]


def test_a_guest_cannot_cancel_or_disconnect_an_owners_stream(kv):
    out = kv.client(
        """
        f = h.rpc("kvstore.watch", {"key": "a"}, flags=STREAMING)
        emit(f.get()); f.reset()
        # the guest's explicit disconnect is what the broker sends when it
        # exits; its last request returns only once both were handled
        guest(
            "h.rpc('kvstore.watch-cancel', {'matchtag': %d}, flags=1)\\n"
            "h.rpc('kvstore.disconnect', flags=1)\\n"
            "emit(h.rpc('kvstore.keys').get())" % f.pimpl.get_matchtag()
        )
        h.rpc("kvstore.put", {"key": "a", "value": 3}).get()
        f.wait_for(30)  # a stream ended by mistake would send nothing more
        emit(f.get())
        emit(h.rpc("kvstore.watching").get())
        """
    )
    assert out == [{"value": None}, [], {"value": 3}, {"watching": 1}]


def test_a_generator_streams_to_a_streaming_request_only(worker):
    result = worker.rpc("worker.count", {"n": 3}, streaming=True)
    assert result.stream() == [0, 1, 2]
    assert result.answers[-1]["errno"] == ENODATA
    assert error_of(worker.rpc("worker.count", {"n": 3})) == (
        EPROTO, "worker.count is a stream: send the request with FLUX_RPC_STREAMING")


def test_a_stream_that_fails_midway_gets_its_responses_then_the_error(worker):
    result = worker.rpc("worker.breaks", streaming=True)
    assert result.stream() == [1]
    assert result.answers[-1] == {"errno": 5, "error": "stream broke"}


# async def handlers


def test_an_awaiting_handler_does_not_hold_up_others(worker):
    out = worker.client(
        """
        slow = h.rpc("worker.nap", {"t": 0.5, "name": "slow"})
        fast = h.rpc("worker.nap", {"t": 0.05, "name": "fast"})
        emit(fast.get()); emit(slow.get())
        emit(h.rpc("worker.order").get())
        """
    )
    assert out == [{"name": "fast"}, {"name": "slow"}, ["fast", "slow"]]


def test_awaiting_a_flux_future_and_gather(worker):
    worker.rpc("kvstore.put", {"key": "k", "value": [1]}).get()
    assert worker.rpc("worker.relay", {"key": "k"}).get() == {"value": [1]}
    assert error_of(worker.rpc("worker.relay", {"key": "nope"})) == (ENOENT, "no such key: nope")
    assert worker.rpc("worker.gather").get() == [0, 2, 4]


def test_several_rpcs_sent_at_once_are_awaited_one_by_one(worker):
    """Their answers come while the first is awaited: libflux would drop
    them (no handler yet) but a BrokerModule's handle arms every RPC."""
    for key in "abcd":
        worker.rpc("kvstore.put", {"key": key, "value": key * 2}).get()
    for _ in range(3):
        assert worker.rpc("worker.several", {"keys": list("abcd")}).get() == ["aa", "bb", "cc", "dd"]


def test_a_future_kept_for_a_later_handler_still_gets_its_answer(worker):
    """Without arming, libflux would drop its answer (no handler yet)."""
    worker.rpc("kvstore.put", {"key": "k", "value": 5}).get()
    assert worker.rpc("worker.keep", {"key": "k"}).get() == {}
    worker.wait(0.5)  # its answer reaches the module's reactor
    assert worker.rpc("worker.kept").get() == {"value": 5}


def test_a_failing_coroutine_answers_as_a_failing_handler_does(worker):
    assert error_of(worker.rpc("worker.fail")) == (EPROTO, "ValueError: late failure")
    assert any("request worker.fail handler failed" in line for line in worker.dmesg())


def test_event_and_timer_coroutines_run(worker):
    worker.event("worker.poke")
    worker.settle(lambda: worker.rpc("worker.seen").get() == ["event", "timer"], "event and timer coroutines")


# Request facts


def test_request_facts_are_the_same_on_both_brokers(worker):
    out = worker.client(
        """
        first = h.rpc("worker.facts")
        second = h.rpc("worker.facts", flags=STREAMING)
        emit([first.get(), first.pimpl.get_matchtag(), second.get(), second.pimpl.get_matchtag()])
        guest("emit(h.rpc('worker.facts').get())")
        """
    )
    (first, first_tag, second, second_tag), from_guest = out
    assert (first["streaming"], first["matchtag"]) == (False, first_tag)
    assert (second["streaming"], second["matchtag"]) == (True, second_tag)
    assert first["sender"] == second["sender"] != ""  # one client, one identity
    assert first["userid"] == worker.owner()
    assert from_guest["sender"] != first["sender"] and from_guest["userid"] == 1234


def test_awaits_follow_the_virtual_clock_in_memory(write_module):
    from flux.membroker import Broker

    path = write_module("worker.py", WORKER)
    with Broker() as broker:
        broker.load(path)
        slow = broker.rpc("worker.nap", {"t": 50.0, "name": "slow"})
        fast = broker.rpc("worker.nap", {"t": 5.0, "name": "fast"})
        assert fast.get() == {"name": "fast"} and broker.now == 5.0
        assert slow.get() == {"name": "slow"} and broker.now == 50.0


@pytest.mark.parametrize("payload", [None, "text", [1], {"matchtag": [1]}, {"matchtag": "x"}, {"matchtag": True}, {}])
def test_a_malformed_cancel_is_ignored_and_the_open_stream_goes_on(kv, payload):
    got = kv.client(
        """
        f = h.rpc("kvstore.watch", {"key": "a"}, flags=STREAMING)
        emit(f.get())
        f.reset()
        h.rpc("kvstore.watch-cancel", %r, flags=1)
        h.rpc("kvstore.put", {"key": "a", "value": 1}).get()
        emit(f.get())
        f.reset()
        emit(h.rpc("kvstore.watching").get())
        h.rpc("kvstore.watch-cancel", {"matchtag": f.pimpl.get_matchtag()}, flags=1)
        try:
            f.get()
        except OSError as exc:
            emit(exc.errno)
        """ % (payload,)
    )
    assert got == [{"value": None}, {"value": 1}, {"watching": 1}, errno.ENODATA]


def test_a_module_without_async_handlers_never_imports_asyncio(tmp_path):
    """asyncio is about 9 ms of a module's load time: only async handlers pay it."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from flux.membroker import Broker\n"
        "with Broker() as b:\n"
        "    b.load(sys.argv[1])\n"
        "    assert b.rpc('calculator.add', {'a': 1, 'b': 2}).get() == {'result': 3.0}\n"
        "    plain = 'asyncio' in sys.modules\n"
        "    b.load(sys.argv[2])\n"
        "print(plain, 'asyncio' in sys.modules)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-c", script, os.path.join(root, "examples", "calculator.py"),
         os.path.join(root, "examples", "kvstore.py")],
        capture_output=True, text=True, timeout=120, cwd=root,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]


def test_an_async_handler_runs_in_its_task_from_its_first_step(worker):
    assert worker.rpc("worker.in-task", {}).get() == {"first": True, "same": True}


def test_async_handlers_that_never_wait_answer_and_are_counted_once(worker):
    for _ in range(3):
        assert worker.rpc("worker.quick", {}).get() == {"quick": True}
    assert worker.rpc("worker.nap", {"t": 0.01, "name": "a"}).get() == {"name": "a"}
    counted = worker.rpc("worker.stats-get").get()["handlers"]
    assert counted["worker.quick"] == {**counted["worker.quick"], "requests": 3, "errors": 0}
    assert counted["worker.nap"]["requests"] == 1


def test_work_handed_to_a_thread_wakes_the_handler(worker):
    """A thread's result comes back through asyncio's self-pipe: the loop
    must step again although it had gone quiet."""
    assert worker.rpc("worker.quick", {}).get() == {"quick": True}  # the loop goes quiet
    for _ in range(3):
        assert worker.rpc("worker.in-thread", {}).get() == 6


def test_refused_and_failed_async_requests_are_counted_as_errors(worker):
    """As for a plain handler: a payload refused before the coroutine runs,
    and a coroutine that raises, each count as one request and one error."""
    assert error_of(worker.rpc("worker.nap", {"t": "soon", "name": "a"}))[0] == EPROTO
    assert error_of(worker.rpc("worker.fail", {}))[0] == EPROTO  # a ValueError
    counted = worker.rpc("worker.stats-get").get()["handlers"]
    assert (counted["worker.nap"]["requests"], counted["worker.nap"]["errors"]) == (1, 1)
    assert (counted["worker.fail"]["requests"], counted["worker.fail"]["errors"]) == (1, 1)


def test_a_client_takes_some_responses_of_an_endless_stream_then_cancels_it(kv):
    """The same call on both brokers: the stream never ends by itself."""
    result = kv.rpc("kvstore.watch", {"key": "a"}, streaming=True, take=1)
    assert result.stream() == [{"value": None}]
    assert result.answers[-1]["errno"] == errno.ENODATA
    kv.settle(lambda: kv.rpc("kvstore.watching").get() == {"watching": 0}, "the watch to end")


def test_a_client_cancels_its_stream_as_flux_cores_clients_do(kv):
    """flux-core's own idiom (flux.abc.JournalConsumer): the matchtag from
    future.pimpl.get_matchtag(), in a TOPIC-cancel without response."""
    got = kv.client("""
        f = h.rpc("kvstore.watch", {"key": "a"}, flags=STREAMING)
        emit(f.get())
        f.reset()
        emit(f.pimpl.get_matchtag() > 0)
        h.rpc("kvstore.watch-cancel", {"matchtag": f.pimpl.get_matchtag()}, flags=1)
        try:
            f.get()
        except OSError as exc:
            emit(exc.errno)
    """)
    assert got == [{"value": None}, True, errno.ENODATA]


WATCHER = """
import errno
from flux.brokermod import BrokerModule, cancel_stream, request_handler
from flux.constants import FLUX_RPC_STREAMING


class Watcher(BrokerModule):
    @request_handler("first-two")
    def first_two(self, msg):
        f = self.handle.rpc("kvstore.watch", {"key": "a"}, flags=FLUX_RPC_STREAMING)
        got = [f.get()]
        f.reset()
        self.handle.rpc("kvstore.put", {"key": "a", "value": 1}).get()
        got.append(f.get())
        f.reset()
        cancel_stream(self.handle, f, "kvstore.watch")
        try:
            f.get()
        except OSError as exc:
            got.append(errno.errorcode[exc.errno])
        return got
"""


def test_a_module_cancels_a_stream_it_reads_with_cancel_stream(kv, write_module):
    kv.load(write_module("watcher.py", WATCHER))
    try:
        assert kv.rpc("watcher.first-two").get() == [{"value": None}, {"value": 1}, "ENODATA"]
    finally:
        kv.remove("watcher")
