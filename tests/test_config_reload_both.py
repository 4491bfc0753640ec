"""A refused configuration on both brokers: the line `flux config reload`
shows (what flux-core's error buffer holds), a configuration that is not
JSON, and the refusal in the module's own log (issue 35, items 3 and 4)."""

import pytest

from flux._logtext import FLUX_ERROR_TEXT

NODECHECK = '''
from flux.brokermod import BrokerModule, Option, timer_handler


class Nodecheck(BrokerModule):
    interval = Option(float, default=30.0, help="seconds between samples")
    load_limit = Option(float, default=4.0, help="load average that raises an alert")
    disk_limit = Option(float, default=0.9, help="fraction of the disk in use that raises an alert")
    alert_topic = Option(str, default="nodecheck.alert", help="the topic alerts are published on")
    hostname_pattern = Option(str, default="", help="only hosts whose name matches")

    @timer_handler("interval", repeat="interval")
    def tick(self):
        pass
'''


@pytest.fixture
def nodecheck(flux_broker, write_module):
    flux_broker.load(write_module("nodecheck.py", NODECHECK))
    return flux_broker


def test_an_unknown_key_is_refused_with_the_key_and_every_option_in_what_flux_shows(nodecheck):
    refused = nodecheck.load_config({"nodecheck": {"intervall": 2}})
    assert refused == ("error updating nodecheck: config [nodecheck]: unknown key 'intervall'; "
                       "options: interval, load_limit, disk_limit, alert_topic, hostname_pattern")
    assert len(refused) <= FLUX_ERROR_TEXT
    assert any(line.startswith("nodecheck.err[0]: configuration refused, keeping the old values: config "
                               "[nodecheck]: unknown key 'intervall'") for line in nodecheck.dmesg())


def test_a_huge_key_is_cut_and_the_line_still_names_what_was_wrong(nodecheck):
    refused = nodecheck.load_config({"nodecheck": {"k" * 100_000: 1}})
    assert refused.startswith("error updating nodecheck: config [nodecheck]: unknown key 'kkkkkkkkkkkkkkk[... "
                              "99980 characters cut ...]kkkkk'; options: interval")
    assert len(refused) <= FLUX_ERROR_TEXT and not refused.endswith("+")  # the library's cut, not flux-core's
    assert all(len(line) < 1000 for line in nodecheck.dmesg())


def test_a_refusal_longer_than_flux_cores_buffer_is_cut_as_flux_core_cuts_it(nodecheck, flux_broker,
                                                                              write_module):
    """A module's own text (options_changed raising) beyond 159 characters:
    the library fits it; flux-core's config service would cut it with '+'."""
    flux_broker.load(write_module("wordy.py", '''
from flux.brokermod import BrokerModule, Option


class Wordy(BrokerModule):
    level = Option(int, default=1)

    def options_changed(self, changed):
        raise ValueError("no: " + "because " * 40)
'''))
    refused = flux_broker.load_config({"wordy": {"level": 2}})
    assert refused.startswith("error updating wordy: wordy: ValueError: no: because because")
    assert refused.endswith("...")
    assert len(refused) == FLUX_ERROR_TEXT


def test_a_configuration_holding_nan_is_refused_as_not_json(nodecheck):
    for value in (float("nan"), float("inf")):
        assert nodecheck.load_config({"nodecheck": {"interval": value}}) == (
            "flux-config: TOML parse error: syntax error")
    assert nodecheck.config().get("nodecheck") is None


@pytest.mark.flux_broker(size=4)
def test_followers_that_refuse_are_named_and_log_it_on_their_rank(flux_broker, write_module):
    """The module on ranks 1-3 only: rank 0 has nothing to refuse, so flux
    config load succeeds, and each follower keeps its old values."""
    flux_broker.load(write_module("nodecheck.py", NODECHECK), rank="1-3")
    refused = flux_broker.load_config({"nodecheck": {"intervall": 2}})
    assert refused == ("ranks 1-3 refused: error updating nodecheck: config [nodecheck]: unknown key 'intervall'; "
                       "options: interval, load_limit, disk_limit, alert_topic, hostname_pattern")
    for rank in (1, 2, 3):
        assert any(line.startswith(f"nodecheck.err[{rank}]: configuration refused, keeping the old values: ")
                   for line in flux_broker.dmesg_on(rank))
    assert flux_broker.load_config({"nodecheck": {"interval": 5}}) is None
