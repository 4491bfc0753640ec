"""Module options from the instance configuration, and ``flux config reload``.

Each test runs on both brokers (the flux_broker fixture): in memory the
configuration changes with ``Broker.load_config()``, on a real instance
with ``flux config load`` (what ``flux config reload`` does after the TOML
files changed).
"""

import errno
import textwrap

import pytest

from flux.membroker import Broker

POLLER = '''
import errno
from flux.brokermod import BrokerModule, Option, RequestError, request_handler, timer_handler


class Poller(BrokerModule):
    interval = Option(float, default=1.0, help="seconds between polls")
    label = Option(str, default="x")
    limit = Option(int, default=10)
    verbose = Option(bool, default=False)

    def setup(self):
        self.polls = 0
        self.seen = []

    @timer_handler("interval", repeat="interval")
    def poll(self):
        self.polls += 1

    @request_handler("get")
    def get(self, msg):
        return {"interval": self.interval, "label": self.label, "limit": self.limit,
                "verbose": self.verbose, "seen": self.seen}

    def options_changed(self, changed):
        if self.label == "refuse":
            raise RequestError(errno.EPERM, "label 'refuse' is not allowed")
        self.seen.append(sorted(changed))
'''

PLAIN = '''
from flux.brokermod import BrokerModule, request_handler


class Plain(BrokerModule):
    @request_handler("get")
    def get(self, msg):
        return {"args": list(self.args)}
'''


@pytest.fixture
def module_file(tmp_path):
    def write(name, source):
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        return str(path)

    return write


def test_options_come_from_the_configuration_table_and_arguments_override_it(flux_broker, module_file):
    assert flux_broker.load_config({"poller": {"interval": 2.5, "label": "from-config", "limit": 3}}) is None
    flux_broker.load(module_file("poller", POLLER), "limit=7")
    assert flux_broker.rpc("poller.get").get() == {
        "interval": 2.5, "label": "from-config", "limit": 7, "verbose": False, "seen": []}


@pytest.mark.parametrize("table, text", [
    ({"interval": "soon"}, "config [poller] interval: 'soon' is not a valid float (could not convert string "
                           "to float: 'soon')"),
    # by name only: a refused reload's whole line must fit a flux_error_t
    ({"intervall": 2}, "config [poller]: unknown key 'intervall'; options: interval, label, limit, verbose"),
    ({"limit": 2.5}, "config [poller] limit: 2.5 is not a valid int (a TOML float)"),
    ({"verbose": "maybe"}, "config [poller] verbose: 'maybe' is not a boolean (true/false)"),
    ({"interval": "inf"}, "config [poller] interval: 'inf' is not a finite number"),
    ({"interval": True}, "config [poller] interval: True is not a valid float (a TOML boolean)"),
])
def test_a_bad_table_fails_the_load_naming_the_table_and_key(flux_broker, module_file, table, text):
    assert flux_broker.load_config({"poller": table}) is None  # nothing checks it yet
    errnum, output = flux_broker.load_error(module_file("poller", POLLER))
    assert text in output


def test_a_reload_changes_every_option_at_once_and_tells_the_module(flux_broker, module_file):
    flux_broker.load(module_file("poller", POLLER))
    assert flux_broker.load_config({"poller": {"interval": 4, "label": "y"}}) is None
    assert flux_broker.rpc("poller.get").get() == {
        "interval": 4.0, "label": "y", "limit": 10, "verbose": False, "seen": [["interval", "label"]]}
    assert any("options changed by the configuration: interval=4.0, label='y'" in line
               for line in flux_broker.dmesg())


@pytest.mark.parametrize("table, text", [
    ({"interval": "soon", "label": "y"}, "error updating poller: config [poller] interval: 'soon' is not a valid "
                                         "float"),
    ({"label": "y", "bogus": 1}, "error updating poller: config [poller]: unknown key 'bogus'"),
    ({"label": "refuse", "limit": 1}, "error updating poller: poller: label 'refuse' is not allowed"),
    ({"interval": -1}, "error updating poller: timer poll: after='interval' must name an option or attribute "
                       "holding a finite number of seconds >= 0, not -1.0"),
])
def test_a_refused_reload_fails_in_one_line_and_changes_nothing(flux_broker, module_file, table, text):
    flux_broker.load(module_file("poller", POLLER), "limit=5")
    refused = flux_broker.load_config({"poller": table})
    assert refused is not None and refused.startswith(text), refused
    assert "\n" not in refused
    assert flux_broker.rpc("poller.get").get() == {
        "interval": 1.0, "label": "x", "limit": 5, "verbose": False, "seen": []}
    assert flux_broker.config() == {}


def test_a_module_without_options_keeps_flux_core_behaviour(flux_broker, module_file):
    """Its table is not checked: flux-core's modules read theirs themselves."""
    assert flux_broker.load_config({"plain": {"anything": [1, 2]}}) is None
    flux_broker.load(module_file("plain", PLAIN))
    assert flux_broker.load_config({"plain": {"else": "x"}}) is None
    assert flux_broker.rpc("plain.get").get() == {"args": []}


def test_when_a_later_module_refuses_the_earlier_ones_get_the_old_configuration_back(flux_broker, module_file):
    flux_broker.load(module_file("poller", POLLER))
    flux_broker.load(module_file("poller", POLLER), name="strict")
    refused = flux_broker.load_config({"poller": {"label": "new"}, "strict": {"label": 5}})
    assert refused == "error updating strict: config [strict] label: 5 is not a valid str (a TOML integer)"
    # poller took the new label, then got the old configuration back
    assert flux_broker.rpc("poller.get").get()["label"] == "x"
    assert flux_broker.rpc("strict.get").get()["label"] == "x"


def test_arguments_still_override_after_a_reload(flux_broker, module_file):
    flux_broker.load(module_file("poller", POLLER), "label=pinned")
    assert flux_broker.load_config({"poller": {"label": "from-config", "limit": 2}}) is None
    answer = flux_broker.rpc("poller.get").get()
    assert (answer["label"], answer["limit"], answer["seen"]) == ("pinned", 2, [["limit"]])


@pytest.mark.flux_broker(size=8, topo="kary:2")
def test_followers_get_the_leaders_configuration(flux_broker, module_file):
    flux_broker.load(module_file("poller", POLLER), rank="all")
    assert flux_broker.load_config({"poller": {"limit": 42}}) is None
    flux_broker.settle(lambda: all(flux_broker.rpc("poller.get", nodeid=rank).get()["limit"] == 42
                                   for rank in range(8)), "every rank took limit=42")


def test_a_timer_whose_period_names_an_option_is_re_armed():
    """In memory, on virtual time: 1 s polls, then 10 s polls after the reload."""
    broker = Broker()
    module = broker.load(_poller_class(), name="poller").instance
    broker.advance(3.5)
    assert module.polls == 3
    broker.load_config({"poller": {"interval": 10}})
    broker.advance(9.9)
    assert module.polls == 3
    broker.advance(0.2)
    assert module.polls == 4
    broker.close()


def test_a_follower_whose_module_refuses_keeps_the_old_configuration_and_says_so():
    broker = Broker(size=8, attrs={"tbon.topo": "kary:2"})
    poller = _poller_class()
    broker.load(poller, name="poller", rank="all")
    broker.load(poller, name="strict", rank=3)  # only on rank 3: rank 0 does not check it
    broker.load_config({"poller": {"limit": 1}, "strict": {"limit": "many"}})
    limits = [broker.connect(rank=rank).rpc("poller.get").get()["limit"] for rank in range(8)]
    assert limits == [1, 1, 1, 10, 1, 1, 1, 10]  # rank 3 refused; 7, its child, follows it
    assert ("config.err[3]: parent update: error updating strict: config [strict] limit: 'many' is not a valid "
            "int (invalid literal for int() with base 10: 'many')") in broker.dmesg(rank=3)
    broker.close()


def test_reading_the_configuration_is_cached_as_flux_cores_handle_does():
    broker = Broker(config={"site": {"name": "a"}})
    client = broker.connect()
    assert client.conf_get("site.name") == "a"
    broker.load_config({"site": {"name": "b"}})
    assert client.conf_get("site.name") == "a"
    assert client.conf_get("site.name", update=True) == "b"
    with pytest.raises(OSError) as info:
        client.rpc("config.load", {}).get()
    assert info.value.errno == errno.EOPNOTSUPP and "Broker.load_config" in info.value.strerror
    broker.close()


def _poller_class():
    namespace = {}
    exec(compile(POLLER, "poller", "exec"), namespace)
    return namespace["Poller"]


def test_asking_for_the_configuration_while_taking_a_new_one_would_hang_forever():
    """Measured on flux-core 0.88.0: flux-core's config service waits for
    the module's answer before answering anything else, so a module that
    calls conf_get(update=True) in options_changed never returns, and
    neither does flux config reload.  In memory: ModuleHang, saying so."""
    from flux.brokermod import BrokerModule, Option
    from flux.membroker import ModuleHang

    class Asks(BrokerModule):
        x = Option(int, default=1)

        def options_changed(self, changed):
            self.handle.conf_get(update=True)

    broker = Broker()
    broker.load(Asks, name="asks")
    with pytest.raises(ModuleHang, match=r"config.get was sent on rank 0 while its config service waited for "
                                         r"asks to answer asks.config-reload"):
        broker.load_config({"asks": {"x": 2}})
