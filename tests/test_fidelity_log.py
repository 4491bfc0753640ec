"""Logging on both brokers: the fidelity ledger's logging rows (docs/fidelity.md).

Each module is a file loaded on the in-memory broker and on a real
instance; what it logs is read back with ``flux dmesg`` (``dmesg()``).
"""

import pytest

from _targets import served
from flux.brokermod_testing import MemoryBroker, RealBroker, start_instance

# A module that logs, level by level, on request.
LOGGER = '''
from flux.brokermod import BrokerModule, request_handler


class Logger(BrokerModule):
    @request_handler("emit")
    def emit(self, msg):
        for method in ("debug", "info", "notice", "warning", "error", "critical"):
            getattr(self.log, method)(method)
        return {}
'''


def module_lines(broker, name):
    return [line for line in broker.dmesg() if line.startswith(name + ".")]


# log-9: the broker's log-level attribute, on an instance started with it


@pytest.fixture(scope="module")
def info_instance():
    """A private real instance started with -Slog-level=6 (LOG_INFO)."""
    instance = start_instance(attrs={"log-level": "6", "broker.module-nopanic": "1"})
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(params=["memory", "real"])
def info_broker(request):
    """A broker whose log-level attribute is 6 (LOG_INFO), in memory and real."""
    if request.param == "memory":
        broker = MemoryBroker(attrs={"log-level": "6"})
    else:
        broker = RealBroker(request.getfixturevalue("info_instance"))
    yield from served(broker)


def test_the_brokers_log_level_attribute_filters_what_reaches_the_log(info_broker, write_module):
    info_broker.load(write_module("logger.py", LOGGER))
    assert info_broker.rpc("logger.emit").get() == {}
    info_broker.settle(lambda: "logger.crit[0]: critical" in module_lines(info_broker, "logger"), "the last line")
    assert module_lines(info_broker, "logger") == [
        "logger.info[0]: info",
        "logger.notice[0]: notice",
        "logger.warning[0]: warning",
        "logger.err[0]: error",
        "logger.crit[0]: critical",
    ]  # no logger.debug: above the broker's log-level


# log-10: self.log takes any object; a raw h.log() takes bytes

ANYLOG = '''
from flux.brokermod import BrokerModule, request_handler


class Anylog(BrokerModule):
    @request_handler("log")
    def log_(self, msg):
        self.log.info(42)
        self.log.info(ValueError("%d apples"))
        self.log.info(b"\\xff 5%")
        self.log.info(None)
        self.handle.log(6, b"logged as bytes")
        return {}
'''


def test_self_log_sends_any_object_as_text_and_h_log_takes_bytes(flux_broker, write_module):
    flux_broker.load(write_module("anylog.py", ANYLOG))
    assert flux_broker.rpc("anylog.log").get() == {}
    flux_broker.settle(lambda: len(module_lines(flux_broker, "anylog")) >= 5, "five lines")
    assert module_lines(flux_broker, "anylog") == [
        "anylog.info[0]: 42",
        "anylog.info[0]: %d apples",
        "anylog.info[0]: \ufffd 5%",
        "anylog.info[0]: None",
        "anylog.info[0]: logged as bytes",
    ]


# log-11: a raw h.log(level, text), under the module's name (--name) at that level

RAW_LOG = '''
import syslog


def mod_main(h, *args):
    h.log(syslog.LOG_NOTICE, "starting up")
    h.log(syslog.LOG_DEBUG, "a detail")
    h.log(syslog.LOG_WARNING, "a warning")
    h.reactor_run()
'''


def test_a_raw_h_log_is_logged_under_the_modules_name_at_its_level(flux_broker, write_module):
    flux_broker.load(write_module("rawlog.py", RAW_LOG), name="noisy")
    flux_broker.settle(lambda: len(module_lines(flux_broker, "noisy")) >= 3, "three lines")
    assert module_lines(flux_broker, "noisy") == [
        "noisy.notice[0]: starting up",
        "noisy.debug[0]: a detail",
        "noisy.warning[0]: a warning",
    ]
    assert module_lines(flux_broker, "rawlog") == []


# log-12: a reduction and an aggregation over 8 ranks log nothing above LOG_DEBUG

TREE = '''
import operator

from flux.brokermod import BrokerModule, RankSets, reduce_handler, request_handler


class Census(BrokerModule):
    @reduce_handler("count", combine=operator.add, timeout=4)
    def count(self, msg):
        return 1


class Members(BrokerModule):
    members = RankSets()

    @request_handler("add")
    def add(self, msg, *, name: str):
        self.members.add(name)
        return {}

    @request_handler("members")
    def get_members(self, msg, *, name: str):
        return {"members": self.members.members(name)}


def mod_main(h, *args):
    {"census": Census, "m": Members}[args[0]](h, *args[1:]).run()
'''


@pytest.mark.flux_broker(size=8, topo="kary:2")
def test_a_reduction_and_an_aggregation_log_at_debug_only(flux_broker, write_module):
    path = write_module("tree.py", TREE)
    flux_broker.load(path, "census", name="census", rank="all")
    flux_broker.load(path, "m", name="m", rank="all")
    assert flux_broker.rpc("census.count").get() == {"value": 8, "ranks": "0-7", "missing": "", "errors": {}}
    assert flux_broker.rpc("m.add", {"name": "x"}, nodeid=7).get() == {}
    # rank 7 is three levels down: its member reaches rank 0 a level at a time
    flux_broker.settle(lambda: flux_broker.rpc("m.members", {"name": "x"}).get()["members"] == "7",
                       "rank 7's member to reach rank 0")
    # every line of every rank since the test began (the broker's insmod
    # lines among them): the modules' own and the brokers' about them
    lines = [line for rank in range(8) for line in flux_broker.dmesg_on(rank)]
    assert any(line.startswith("broker.debug[7]: insmod m") for line in lines), lines
    loud = [line for line in lines if ".debug[" not in line]
    assert loud == [], loud
