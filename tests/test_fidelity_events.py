"""Events on both brokers: the fidelity ledger's event rows (docs/fidelity.md).

Each module is a file loaded on the in-memory broker and on a real
instance (``flux_broker``); events are published as ``flux event pub``
does, or by another module.  A real broker delivers an event some time
after its publisher returns, so each test settles on a last event (or a
log line) before it looks at what arrived.
"""

# A raw mod_main that records the topic of every event its handle gets.
EVENTS_SEEN = '''
from flux.constants import FLUX_MSGTYPE_EVENT, FLUX_MSGTYPE_REQUEST


def mod_main(h, *subscriptions):
    seen = []
    for item in subscriptions:  # "+prefix" subscribes, "-prefix" unsubscribes
        if item[0] == "+":
            h.event_subscribe(item[1:])
        else:
            h.event_unsubscribe(item[1:])

    def on_event(h, watcher, msg, arg):
        seen.append(msg.topic)

    def report(h, watcher, msg, arg):
        h.respond(msg, {"seen": seen})

    watchers = [
        h.msg_watcher_create(on_event, FLUX_MSGTYPE_EVENT, "*"),
        h.msg_watcher_create(report, FLUX_MSGTYPE_REQUEST, "seen.get"),
    ]
    for watcher in watchers:
        watcher.start()
    h.reactor_run()
'''


def seen(broker):
    return broker.rpc("seen.get").get()["seen"]


# ev-4


def test_a_module_unsubscribed_from_a_prefix_gets_no_more_of_its_events(flux_broker, write_module):
    flux_broker.load(write_module("seen.py", EVENTS_SEEN), "+foo", "+bar", "-foo")
    for topic in ("foo.x", "bar.x", "foo.y", "bar.end"):
        flux_broker.event(topic)
    flux_broker.settle(lambda: "bar.end" in seen(flux_broker), "the last event to arrive")
    assert seen(flux_broker) == ["bar.x", "bar.end"]
    # never delivered to the module at all, not only unwatched
    assert flux_broker.rpc("seen.stats-get").get()["rx"]["event"] == 2


# ev-5

PUBLISHER = '''
from flux.constants import FLUX_MSGTYPE_REQUEST


def mod_main(h, *args):
    def publish(h, watcher, msg, arg):
        h.event_send("foo.bar", {"from": "pub"})
        h.respond(msg, None)

    watcher = h.msg_watcher_create(publish, FLUX_MSGTYPE_REQUEST, "pub.go")
    watcher.start()
    h.reactor_run()
'''

SUBSCRIBER = '''
import syslog
from flux.constants import FLUX_MSGTYPE_EVENT


def mod_main(h, *args):
    h.event_subscribe("foo")

    def on_bar(h, watcher, msg, arg):
        h.log(syslog.LOG_INFO, f"handled {msg.topic} ({msg.type_str}) from {msg.payload['from']}")

    watcher = h.msg_watcher_create(on_bar, FLUX_MSGTYPE_EVENT, "foo.bar")
    watcher.start()
    h.reactor_run()
'''


def test_an_event_one_module_publishes_reaches_another_module(flux_broker, write_module):
    flux_broker.load(write_module("sub.py", SUBSCRIBER))
    flux_broker.load(write_module("pub.py", PUBLISHER))
    assert flux_broker.rpc("pub.go").get() is None

    def handled():
        return [line for line in flux_broker.dmesg() if line.startswith("sub.")]

    flux_broker.settle(handled, "the subscriber to handle the event")
    assert handled() == ["sub.info[0]: handled foo.bar (event) from pub"]


# ev-6

COUNTER = '''
from flux.brokermod import BrokerModule, event_handler, request_handler


class Counter(BrokerModule):
    def setup(self):
        self.handled = 0

    @event_handler("bump")
    def bump(self, msg):
        self.handled += 1

    @request_handler("handled")
    def get_handled(self, msg):
        return {"handled": self.handled}
'''


def test_stats_get_counts_the_events_a_module_received(flux_broker, write_module):
    flux_broker.load(write_module("counter.py", COUNTER))
    before = flux_broker.rpc("counter.stats-get").get()["rx"]["event"]
    for topic in ("counter.bump", "other.bump", "counter.bump"):
        flux_broker.event(topic)
    flux_broker.settle(lambda: flux_broker.rpc("counter.handled").get()["handled"] == 2, "both events handled")
    stats = flux_broker.rpc("counter.stats-get").get()
    assert stats["rx"]["event"] - before == 2, stats  # other.bump never reached it
    assert stats["tx"]["event"] == 0, stats
