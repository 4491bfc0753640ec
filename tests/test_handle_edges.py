"""Edge cases of the in-memory handle, watchers and futures."""

import errno

import pytest
from _helpers import error_of

from flux.brokermod import BrokerModule, request_handler
from flux.membroker import (
    FLUX_MSGTYPE_EVENT,
    FLUX_MSGTYPE_REQUEST,
    FLUX_RPC_NORESPONSE,
    Broker,
    Message,
)


class Edge(BrokerModule):
    """A module whose handlers poke at the handle's corners."""

    results = {}

    @request_handler("respond-errors")
    def respond_errors(self, msg):
        h = self.handle
        for name, call in [
            ("not-a-request", lambda: h.respond(Message(FLUX_MSGTYPE_EVENT, "x"), {})),
            ("unsubscribe", lambda: h.event_unsubscribe("never.subscribed")),
            ("timer", lambda: h.timer_watcher_create(-1, lambda *a: None)),
            ("topic", lambda: h.rpc(42)),
        ]:
            try:
                call()
                self.results[name] = None
            except (OSError, TypeError) as exc:
                self.results[name] = type(exc).__name__
        h.respond_error(msg, errno.EINVAL, b"bytes text")

    @request_handler("bytes-log")
    def bytes_log(self, msg):
        self.handle.log(6, b"logged as bytes")
        self.handle.respond(msg, None)

    @request_handler("register")
    def register(self, msg):
        self.handle.service_register("extra").get()
        watcher = self.handle.msg_watcher_create(self.extra, FLUX_MSGTYPE_REQUEST, b"extra.hello")
        watcher.start()
        self.extra_watcher = watcher
        self.handle.respond(msg, None)

    def extra(self, h, watcher, msg, arg):
        h.respond(msg, {"extra": True})

    @request_handler("unregister")
    def unregister(self, msg):
        self.extra_watcher.destroy()
        self.handle.service_unregister("extra").get()
        try:
            self.handle.service_unregister("extra").get()
        except OSError as exc:
            self.handle.respond(msg, {"again": exc.errno})

    @request_handler("timer-reset")
    def timer_reset(self, msg):
        fired = self.results.setdefault("fired", [])
        with self.handle.timer_watcher_create(10, lambda *a: fired.append("ctx")):
            pass  # started then destroyed: never fires
        timer = self.handle.timer_watcher_create(10, lambda *a: fired.append(self.handle.reactor_now(self.handle.get_reactor())))
        timer.reset(after=2.0)
        timer.start()
        self.handle.respond(msg, None)


@pytest.fixture
def edge():
    broker = Broker()
    Edge.results.clear()
    broker.load(Edge, name="edge")
    yield broker
    broker.close()


def test_bad_calls_raise_clear_errors(edge):
    assert error_of(edge.rpc("edge.respond-errors")) == (errno.EINVAL, "bytes text")
    assert Edge.results == {
        "not-a-request": "OSError",
        "unsubscribe": "FileNotFoundError",  # OSError(ENOENT)
        "timer": "OSError",
        "topic": "TypeError",
    }


def test_log_accepts_bytes(edge):
    edge.rpc("edge.bytes-log").get()
    assert "edge.info[0]: logged as bytes" in edge.dmesg()


def test_service_register_routes_another_service_until_unregistered(edge):
    assert error_of(edge.rpc("extra.hello"))[0] == errno.ENOSYS
    edge.rpc("edge.register").get()
    assert edge.rpc("extra.hello").get() == {"extra": True}
    assert edge.rpc("edge.unregister").get() == {"again": errno.ENOENT}
    assert error_of(edge.rpc("extra.hello")) == (errno.ENOSYS, "No service matching extra.hello is registered")


def test_timer_reset_and_context_manager(edge):
    edge.rpc("edge.timer-reset").get()
    edge.advance(20)
    assert Edge.results["fired"] == [2.0]


def test_then_on_a_ready_future_and_none_callback(edge):
    future = edge.rpc("edge.ping", {})
    future.wait_for()
    seen = []
    future.then(lambda f: seen.append(f.get()["rank"]))
    edge.run_until_idle()
    assert seen == [0]
    with pytest.raises(ValueError, match="Callback cannot be None"):
        future.then(None)


def test_noresponse_request_gets_no_answer_and_no_error(edge):
    future = edge.rpc("edge.nosuch", flags=FLUX_RPC_NORESPONSE)
    edge.run_until_idle()
    assert not future.is_ready()


def test_client_handles_refuse_module_only_methods(edge):
    client = edge.connect()
    with pytest.raises(OSError, match="client reactor_run, which a real reactor would never end") as info:
        client.reactor_run()  # nothing will ever call reactor_stop()
    assert info.value.errno == errno.EDEADLK
    with pytest.raises(NotImplementedError, match="service_register\\(\\) is for module handles"):
        client.service_register("x")
    with pytest.raises(NotImplementedError, match="Flux.kvs_lookup of flux-core is not available"):
        client.kvs_lookup("a")
    with pytest.raises(AttributeError):
        client._private_thing
    assert repr(client).startswith("<flux.membroker.Handle client userid=")


def test_bytes_topics_and_bad_topic_types():
    broker = Broker()
    client = broker.connect()
    assert error_of(client.rpc(b"nosvc.x"))[0] == errno.ENOSYS
    with pytest.raises(TypeError):
        client.event_send(3.5)
    with pytest.raises(TypeError):
        client.msg_watcher_create(lambda *a: None, FLUX_MSGTYPE_REQUEST, 7)


def test_message_decode_and_repr():
    msg = Message(FLUX_MSGTYPE_REQUEST, "a.b", b'{"x": 1}', userid=5, rolemask=0x5)
    assert msg.decode() == (FLUX_MSGTYPE_REQUEST, "a.b", '{"x": 1}')
    msg.payload = {"y": [2]}  # settable, as on flux-core's Message
    assert msg.payload_str == '{"y": [2]}' and msg.handle is msg
    assert repr(msg) == "<Message request 'a.b' userid=5 rolemask=0x5>"
    response = Message(2, "a.b")
    response._errnum, response._errstr = errno.EPERM, "no"  # as a broker sets them
    with pytest.raises(OSError) as info:
        response.decode()
    # flux-core's decode() drops the response's text: its wrapper names the errno
    # (test_fixture_helpers.py checks the same through a real broker)
    assert (info.value.errno, info.value.strerror) == (errno.EPERM, "EPERM: Operation not permitted")


def test_a_timer_libev_would_abort_on_is_refused_loudly():
    """libflux checks neither NaN nor reset()'s values; libev's
    ev_timer_start() then aborts the module process.  In memory: ValueError."""
    with Broker() as broker:
        h = broker.connect()
        with pytest.raises(ValueError, match="libev aborts the module process on a NaN timeout"):
            h.timer_watcher_create(float("nan"), lambda *a: None)
        timer = h.timer_watcher_create(1.0, lambda *a: None)
        with pytest.raises(ValueError, match=r"after=1\.0 repeat=-1.*a negative repeat"):
            timer.reset(repeat=-1)
        with pytest.raises(ValueError, match="a real module dies here"):
            timer.reset(after=float("nan"))
        timer.reset(after=2.0, repeat=float("inf"))  # libev takes these
        # As flux-core's TimerWatcher: after/repeat stay the creation values,
        # the ones a reset() without arguments goes back to.
        assert (timer.after, timer.repeat) == (1.0, 0.0)
