"""One test per file in examples/: load it in the in-memory broker and check
what its docstring says it does."""

import errno
import os
import syslog

import pytest

from flux.membroker import FLUX_ROLE_USER, Broker

LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emerg"]
DMESG = ["debug", "info", "notice", "warning", "err", "crit", "alert", "emerg"]


def test_logging_levels(broker, example):
    """One message at every level; with the "info" argument debug is dropped."""
    broker.load(example("logging_levels.py"))
    assert broker.rpc("logging_levels.emit").get() == {"threshold": syslog.LOG_DEBUG}
    assert broker.dmesg("logging_levels") == [
        f"logging_levels.{name}[0]: level {level}" for name, level in zip(DMESG, LEVELS)
    ]

    broker.load(example("logging_levels.py"), "info", name="levels_info")
    assert broker.rpc("levels_info.emit").get() == {"threshold": syslog.LOG_INFO}
    assert broker.dmesg("levels_info") == [
        f"levels_info.{name}[0]: level {level}"
        for name, level in zip(DMESG[1:], LEVELS[1:])
    ]


def test_mymod(broker, example):
    """`flux rpc mymod.info` gives {"name": "mymod"}; `flux event pub shutdown`
    stops the module."""
    module = broker.load(example("mymod.py"))
    assert broker.rpc("mymod.info").get() == {"name": "mymod"}
    broker.event_send("shutdown")
    assert (module.state, module.errnum) == ("exited", 0)
    assert "mymod" not in broker.modules


def test_plain_mod_main(broker, example):
    """Loaded with `hello world`, `flux rpc plain_mod_main.args` gives ["hello", "world"]."""
    broker.load(example("plain_mod_main.py"), "hello", "world")
    assert broker.rpc("plain_mod_main.args").get() == ["hello", "world"]


def test_reference(example):
    """`flux rpc reference.info` gives the plain string "reference"; the
    reference.panic event stops the module with an error."""
    broker = Broker(attrs={"broker.module-nopanic": "1"})
    try:
        module = broker.load(example("reference.py"))
        assert broker.rpc("reference.info").get_str() == "reference"
        broker.event_send("reference.panic")
        assert module.state == "exited"
        assert module.errnum != 0
        assert "broker.crit[0]: reference module runtime failure" in broker.dmesg()
    finally:
        broker.close()


def test_status(broker, example):
    """A guest may call status.status (allow_guest=True) but gets EPERM from
    the owner-only status.secret."""
    broker.load(example("status.py"))
    guest = broker.connect(userid=1234, rolemask=FLUX_ROLE_USER)
    assert guest.rpc("status.status").get() == {"running": True}
    with pytest.raises(OSError) as info:
        guest.rpc("status.secret").get()
    assert info.value.errno == errno.EPERM
    assert broker.rpc("status.secret").get() == {"owner": broker.owner}


def test_two_modules(broker, example):
    """Loaded with `--verbose --count=4`, mod_main() picks Primary:
    {"args": ["--verbose", "--count=4"], "class": "Primary"}."""
    broker.load(example("two_modules.py"), "--verbose", "--count=4")
    assert broker.rpc("two_modules.args").get() == {
        "args": ["--verbose", "--count=4"],
        "class": "Primary",
    }


def test_every_example_is_exercised_by_a_test():
    here = os.path.dirname(os.path.abspath(__file__))
    texts = ""
    for name in os.listdir(here):
        if name.startswith("test_") and name.endswith(".py"):
            with open(os.path.join(here, name)) as f:
                texts += f.read()
    examples = os.path.join(os.path.dirname(here), "examples")
    untested = [name for name in sorted(os.listdir(examples)) if name.endswith(".py") and name not in texts]
    assert untested == []


def test_every_example_the_code_names_exists():
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    named = set()
    for directory, _, files in os.walk(os.path.join(root, "flux")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(directory, name)) as f:
                    named.update(re.findall(r"examples/(\w+\.py)", f.read()))
    assert named and all(os.path.exists(os.path.join(root, "examples", name)) for name in named), named
