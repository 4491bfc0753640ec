"""Guests, on both brokers: what a guest (userid 1234, role user, the
``guest=True`` of the fixture's ``rpc``) may ask of a module's standard
methods and of a reduction.

Each test loads its module from a file and runs once on the in-memory
broker and once on a real flux-core instance (the ``flux_broker``
fixture); these are the ledger's guest rows (docs/fidelity.md) that used
to be checked in memory only.
"""

import errno
import textwrap

import pytest
from _helpers import error_of

from flux.brokermod_testing import GUEST

FLUX_ROLE_USER = 2

ECHO = """
from flux.brokermod import BrokerModule, request_handler


class Echo(BrokerModule):
    @request_handler("hello", allow_guest=True)
    def hello(self, msg):
        return {"userid": msg.userid}
"""


@pytest.fixture
def module_file(tmp_path):
    """Write a module file: ``module_file("name", source) -> path``."""

    def write(name, source):
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        return str(path)

    return write


@pytest.fixture
def echo(flux_broker, module_file):
    flux_broker.load(module_file("echo", ECHO))
    return flux_broker


def test_stats_clear_and_shutdown_are_owner_only(echo):
    assert echo.rpc("echo.hello", guest=True).get() == {"userid": GUEST}  # the guest reaches the module
    assert error_of(echo.rpc("echo.stats-clear", guest=True))[0] == errno.EPERM
    assert error_of(echo.rpc("echo.shutdown", guest=True))[0] == errno.EPERM
    assert "echo" in echo.modules()
    assert echo.rpc("echo.hello").get() == {"userid": echo.owner()}  # still serving
    assert echo.rpc("echo.stats-clear").get() is None  # the owner may


def test_ping_answers_a_guest_with_the_guests_own_credentials(echo):
    reply = echo.rpc("echo.ping", {"seq": 1}, guest=True).get()
    assert (reply["seq"], reply["userid"], reply["rolemask"]) == (1, GUEST, FLUX_ROLE_USER)
    owner = echo.rpc("echo.ping", {"seq": 2}).get()
    assert (owner["seq"], owner["userid"]) == (2, echo.owner())


CENSUS = """
from flux.brokermod import BrokerModule, reduce_handler, request_facts
import operator


class Census(BrokerModule):
    @reduce_handler("count", combine=operator.add, timeout=4)
    def count(self, msg):
        return 1

    @reduce_handler("ranks", combine="merge", allow_guest=True)
    def ranks(self, msg):
        return {str(self.rank): 1}

    def merge(self, a, b):
        return {**a, **b}

    @reduce_handler("askers", combine="merge", allow_guest=True)
    def askers(self, msg):  # who each rank's method sees asking
        return {str(self.rank): [msg.userid, bool(msg.rolemask & 1), request_facts(msg).userid]}
"""


@pytest.mark.flux_broker(size=8, topo="kary:2")
def test_a_reduction_refuses_a_guest_where_it_is_owner_only_at_both_its_topics(flux_broker, module_file):
    """kary:2 on 8 ranks: rank 1's subtree is 1, 3, 4 and 7."""
    flux_broker.load(module_file("census", CENSUS), rank="all")
    assert flux_broker.rpc("census.count").get()["value"] == 8  # the owner may
    assert error_of(flux_broker.rpc("census.count", guest=True))[0] == errno.EPERM
    assert error_of(flux_broker.rpc("census.count-subtree", guest=True, nodeid=1))[0] == errno.EPERM
    assert flux_broker.rpc("census.ranks", guest=True).get()["ranks"] == "0-7"
    assert flux_broker.rpc("census.ranks-subtree", guest=True, nodeid=1).get()["ranks"] == "1,3-4,7"
    assert flux_broker.rpc("census.askers-subtree", guest=True, nodeid=1).get()["value"] == {
        str(rank): [GUEST, False, GUEST] for rank in (1, 3, 4, 7)}
