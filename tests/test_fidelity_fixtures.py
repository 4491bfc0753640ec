"""Promises of the fixtures and testing helpers (docs/fidelity.md, fix-*),
checked on both brokers: the in-memory broker and a real flux-core
instance (the session's, with broker.module-nopanic=1).

Client-side calls run in a client script (tests/_targets.py): in this
process on the in-memory broker's handle, in a ``flux python`` process on
flux-core's.  Real brokers run on wall-clock time: nothing here asserts
how long a thing took, only order and "never before due".
"""

import errno
import os
import textwrap

import pytest
from _helpers import error_of, exited
from _targets import nopanic_broker
from test_docs import _runnable_blocks as runnable_blocks  # (file, code) of each runnable block

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


@pytest.fixture(params=["memory", "real"])
def both(request):
    """conftest.py's ``nopanic`` under this file's name (its tests
    parametrise it indirectly): each test twice, an in-memory broker and
    the session's real instance, both with broker.module-nopanic=1."""
    yield from nopanic_broker(request)


@pytest.fixture
def module_file(tmp_path):
    def write(filename, source):
        path = tmp_path / filename
        path.write_text(textwrap.dedent(source))
        return str(path)

    return write


# fix-20: service_register("NAME") serves another service until unregistered ---

EDGE = """
from flux.brokermod import BrokerModule, request_handler
from flux.constants import FLUX_MSGTYPE_REQUEST


class Edge(BrokerModule):
    @request_handler("register")
    def register(self, msg):
        self.handle.service_register("extra").get()
        watcher = self.handle.msg_watcher_create(self.extra, FLUX_MSGTYPE_REQUEST, "extra.hello")
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
"""


def test_service_register_routes_another_service_until_unregistered_on_both_brokers(both, module_file):
    both.load(module_file("edge.py", EDGE))
    assert error_of(both.rpc("extra.hello"))[0] == errno.ENOSYS
    assert both.rpc("edge.register").get() is None
    assert both.rpc("extra.hello").get() == {"extra": True}
    assert both.rpc("edge.unregister").get() == {"again": errno.ENOENT}
    assert error_of(both.rpc("extra.hello")) == (errno.ENOSYS, "No service matching extra.hello is registered")
    assert both.rpc("edge.stats-get").get()  # the module itself goes on


# fix-24: a reactor_run() nested in a handler serves messages and timers -------

NEST = """
from flux.brokermod import BrokerModule, request_handler


class Nest(BrokerModule):
    depth = 0

    def now(self):
        return self.handle.reactor_now(self.handle.get_reactor())

    @request_handler("wait")
    def wait(self, msg):
        start = self.now()
        self.timer_ = self.handle.timer_watcher_create(msg.payload["timer"], lambda h, *args: h.reactor_stop())
        self.timer_.start()
        self.depth += 1
        self.handle.reactor_run()
        self.depth -= 1
        return {"waited": True, "after": self.now() - start}

    @request_handler("ping")
    def ping(self, msg):
        return {"pong": True, "depth": self.depth}
"""

DUE = 1.0  # seconds the nested reactor runs, by its timer


NESTED_CLIENT = """
wait = h.rpc("nest.wait", {"timer": %r})
ping = h.rpc("nest.ping")  # after the wait, from the same client: it reaches the nested reactor
emit(ping.get())
emit(wait.get())
""" % DUE


def test_a_reactor_run_nested_in_a_handler_serves_messages_and_timers_on_both_brokers(both, module_file):
    both.load(module_file("nest.py", NEST))
    assert both.rpc("nest.ping").get() == {"pong": True, "depth": 0}
    ping, wait = both.client(NESTED_CLIENT)
    assert ping == {"pong": True, "depth": 1}  # served inside the handler's reactor_run()
    assert wait["waited"] is True  # the nested reactor's timer ended it
    assert wait["after"] >= DUE - 0.01, wait  # never before due


@pytest.mark.parametrize("both", [
    pytest.param("memory", marks=pytest.mark.xfail(strict=True, reason=(
        "membroker disagrees: while a handler waits in a nested reactor_run(), start_rpc()'s "
        "run_until_idle() moves the virtual clock on to the nested run's timer, so a request the test "
        "sends next is answered after it (depth 0); a real module answers it inside (depth 1)"))),
    "real",
], indirect=True)
def test_a_request_sent_while_a_handler_waits_in_a_nested_reactor_run_is_served_inside_it(both, module_file):
    both.load(module_file("nest.py", NEST))
    waiting = both.start_rpc("nest.wait", {"timer": DUE})
    both.settle(lambda: both.rpc("nest.ping").get()["depth"] == 1, "a ping answered inside the nested reactor")
    assert waiting.wait().get()["after"] >= DUE - 0.01


@pytest.mark.parametrize("both", [
    pytest.param("memory", marks=pytest.mark.xfail(strict=True, reason=(
        "membroker disagrees: reactor_stop() inside a nested reactor_run() ends only that run in memory; "
        "flux-core's flux_reactor_stop() is ev_break(EVBREAK_ALL): every run ends, the module's own too, "
        "and the module exits"))),
    "real",
], indirect=True)
def test_reactor_stop_in_a_nested_reactor_run_ends_the_modules_own_run_too(both, module_file):
    """Measured on flux-core 0.88.0: once the nested run's timer calls
    reactor_stop(), the handler answers and the module's reactor_run()
    returns as well: the module exits, cleanly."""
    both.load(module_file("nest.py", NEST))
    assert both.rpc("nest.wait", {"timer": 0.2}).get()["waited"] is True
    exited(both, "nest")
    assert not [line for line in both.dmesg() if line.startswith("broker.crit[0]: ")]


# fix-30: the handle's corners, the same calls on flux-core's handle ----------

CORNERS = """
import errno

def attempt(name, call):
    try:
        call()
    except Exception as exc:
        emit([name, type(exc).__name__, getattr(exc, "errno", None), str(exc)])
    else:
        emit([name, None, None, None])

attempt("rpc-bytes-topic", lambda: h.rpc(b"nosvc.x").get())
attempt("rpc-int-topic", lambda: h.rpc(42))
attempt("watcher-int-topic", lambda: h.msg_watcher_create(lambda *a: None, 1, 7))
attempt("unsubscribe", lambda: h.event_unsubscribe("never.subscribed"))
attempt("timer", lambda: h.timer_watcher_create(-1, lambda *a: None))

future = h.rpc("broker.ping", {})
future.wait_for()
seen = []

def callback(f):
    seen.append(sorted(f.get()))
    h.reactor_stop()

future.then(callback)  # on a ready future: the callback runs in the reactor
h.reactor_run()
emit(["then", seen])
attempt("then-none", lambda: future.then(None))
"""


def test_the_handles_corners_in_a_client_script_on_both_brokers(both):
    got = {entry[0]: entry[1:] for entry in both.client(CORNERS)}
    assert got.pop("rpc-bytes-topic") == ["OSError", errno.ENOSYS, "[Errno 38] No service matching nosvc.x is registered"]
    for name in ("rpc-int-topic", "watcher-int-topic"):
        kind, _, text = got.pop(name)
        assert (kind, "Topic must be a string" in text) == ("TypeError", True), (name, text)
    assert got.pop("unsubscribe")[:2] == ["FileNotFoundError", errno.ENOENT]
    assert got.pop("timer")[:2] == ["OSError", errno.EINVAL]
    assert got.pop("then") == [[["rank", "rolemask", "route", "userid"]]]
    assert got.pop("then-none") == ["ValueError", None, "Callback cannot be None"]
    assert got == {}


def membroker_disagrees(why):
    return pytest.mark.parametrize("both", [
        pytest.param("memory", marks=pytest.mark.xfail(strict=True, reason=f"membroker disagrees: {why}")),
        "real",
    ], indirect=True)


@membroker_disagrees("event_send() of a float topic raises TypeError in memory; flux-core raises "
                     "flux.wrapper.InvalidArguments, a ValueError")
def test_event_send_of_a_topic_that_is_not_a_string_is_a_value_error(both):
    (entry,) = both.client("""
        try:
            h.event_send(3.5)
        except Exception as exc:
            emit([cls.__name__ for cls in type(exc).__mro__])
        """)
    assert "ValueError" in entry, entry


@membroker_disagrees("a client handle's reactor_run() with nothing to run raises EDEADLK in memory "
                     "(\"a real reactor would never end\"); flux-core's returns 0 at once")
def test_a_client_reactor_run_with_nothing_to_run_returns_at_once(both):
    assert both.client("""
        try:
            emit(h.reactor_run())
        except OSError as exc:
            emit([exc.errno, exc.strerror])
        """) == [0]


@membroker_disagrees("service_register() on a client handle raises NotImplementedError in memory; "
                     "flux-core's registers the service for the client")
def test_a_client_handle_may_register_a_service(both):
    assert both.client("""
        try:
            emit(h.service_register("fidelityclient").get())
        except Exception as exc:
            emit(type(exc).__name__)
        """) == [None]


@membroker_disagrees("an unknown private attribute of a client handle raises AttributeError in memory; "
                     "flux-core's Flux.__getattr__ gives an object (a wrapper's ErrorPrinter)")
def test_an_unknown_private_attribute_of_a_client_handle(both):
    assert both.client("""
        try:
            h._private_thing
        except AttributeError:
            emit("AttributeError")
        else:
            emit("an object")
        """) == ["an object"]


# fix-35: the reference example -------------------------------------------------


def test_the_reference_example_answers_its_name_and_its_panic_event_stops_it_on_both_brokers(both):
    both.load(os.path.join(EXAMPLES, "reference.py"))
    assert both.rpc("reference.info").get_str() == "reference"
    both.event("reference.panic")
    exited(both, "reference")
    both.settle(lambda: "broker.crit[0]: reference module runtime failure" in both.dmesg(),
                "the runtime failure in flux dmesg")


# fix-36: each runnable block of the docs loads and answers ---------------------


def test_there_are_runnable_blocks_to_load():
    assert len(runnable_blocks()) >= 1


@pytest.mark.parametrize("where, code", runnable_blocks())
def test_runnable_module_blocks_load_and_answer_on_both_brokers(flux_broker, tmp_path, where, code):
    """Each runnable block is a module file: it loads, and every request
    handler it declares answers an empty request object with a JSON object."""
    from flux import modloader
    from flux.brokermod import describe, module_classes

    path = tmp_path / "hello.py"
    path.write_text(code)
    module = modloader.import_path(str(path))
    try:
        (cls,) = module_classes(module)
        topics = [handler["topic"] for handler in describe(cls, "hello")["handlers"] if handler["kind"] == "request"]
    finally:
        modloader.forget_module(module)
    assert topics, f"{where}: a runnable block with no request handler"
    flux_broker.load(str(path))
    for topic in topics:
        assert isinstance(flux_broker.rpc(topic, {}).get(), dict), (where, topic)
