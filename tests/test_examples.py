"""One test per file in examples/: load it (on both brokers where it can) and check
what its docstring says it does."""

import errno
import os
import syslog

import pytest

from flux.membroker import Broker

LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emerg"]
DMESG = ["debug", "info", "notice", "warning", "err", "crit", "alert", "emerg"]


def _lines(target, name):
    return [line for line in target.dmesg() if line.startswith(f"{name}.")]


def test_logging_levels(target, example):
    """One message at every level; with the "info" argument debug is dropped.
    Runs on both brokers."""
    target.load(example("logging_levels.py"))
    assert target.rpc("logging_levels.emit").get() == {"threshold": syslog.LOG_DEBUG}
    assert _lines(target, "logging_levels") == [
        f"logging_levels.{name}[0]: level {level}" for name, level in zip(DMESG, LEVELS)
    ]
    target.load(example("logging_levels.py"), "info", name="levels_info")
    assert target.rpc("levels_info.emit").get() == {"threshold": syslog.LOG_INFO}
    assert _lines(target, "levels_info") == [
        f"levels_info.{name}[0]: level {level}" for name, level in zip(DMESG[1:], LEVELS[1:])
    ]
    target.remove("logging_levels")
    target.remove("levels_info")


def test_mymod(target, example):
    """`mymod.info` gives {"name": "mymod"}; the `shutdown` event stops the
    module.  Runs on both brokers."""
    target.load(example("mymod.py"))
    assert target.rpc("mymod.info").get() == {"name": "mymod"}
    target.event("shutdown")
    target.settle(lambda: "mymod" not in target.modules(), "mymod to stop on the shutdown event")


def test_plain_mod_main(target, example):
    """Loaded with `hello world`, `plain_mod_main.args` gives ["hello", "world"]
    (both brokers)."""
    target.load(example("plain_mod_main.py"), "hello", "world")
    assert target.rpc("plain_mod_main.args").get() == ["hello", "world"]
    target.remove("plain_mod_main")


def test_reference(example):
    """`reference.info` gives the plain string "reference"; the
    reference.panic event stops the module with an error.  In memory only:
    on a real instance without broker.module-nopanic that is a panic, which
    tests/test_real_flux.py provokes with nopanic set."""
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


def test_status(target, example):
    """A guest may call status.status (allow_guest=True) but gets EPERM from
    the owner-only status.secret (both brokers)."""
    target.load(example("status.py"))
    assert target.rpc("status.status", guest=True).get() == {"running": True}
    with pytest.raises(OSError) as info:
        target.rpc("status.secret", guest=True).get()
    assert info.value.errno == errno.EPERM
    assert target.rpc("status.secret").get() == {"owner": target.owner()}
    target.remove("status")


def test_two_modules(target, example):
    """Loaded with `--verbose --count=4`, mod_main() picks Primary:
    {"args": ["--verbose", "--count=4"], "class": "Primary"}."""
    target.load(example("two_modules.py"), "--verbose", "--count=4")
    assert target.rpc("two_modules.args").get() == {
        "args": ["--verbose", "--count=4"],
        "class": "Primary",
    }
    target.remove("two_modules")


# Calls that load or run a module file, as the suite writes them.
_LOADERS = {"load", "load_on", "try_load", "load_error", "run", "run_cli", "cli", "main"}


def _functions_that_load(tree):
    """Each function (fixtures and nested helpers too) that calls a loader,
    with the string constants it holds, or reads from a module-level name
    (``NOTIFY = os.path.join(ROOT, "examples", "jobnotify.py")``)."""
    import ast

    def constants(node):
        return {const.value for const in ast.walk(node)
                if isinstance(const, ast.Constant) and isinstance(const.value, str)}

    named = {target.id: constants(statement.value) for statement in tree.body if isinstance(statement, ast.Assign)
             for target in statement.targets if isinstance(target, ast.Name)}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        calls = {getattr(call.func, "attr", getattr(call.func, "id", None))
                 for call in ast.walk(node) if isinstance(call, ast.Call)}
        if calls & _LOADERS:
            read = {name.id for name in ast.walk(node) if isinstance(name, ast.Name)}
            yield constants(node).union(*(named[name] for name in read & set(named)))


def test_every_example_is_exercised_by_a_test():
    """Each example's file name is written in a test function (or fixture)
    that loads or runs a module: a mention in a comment or docstring of a
    test that loads nothing does not count."""
    import ast

    here = os.path.dirname(os.path.abspath(__file__))
    loaded = set()
    for name in os.listdir(here):
        if (name.startswith("test_") or name == "conftest.py") and name.endswith(".py"):
            with open(os.path.join(here, name)) as f:
                for constants in _functions_that_load(ast.parse(f.read())):
                    loaded |= constants
    examples = os.path.join(os.path.dirname(here), "examples")
    untested = [name for name in sorted(os.listdir(examples)) if name.endswith(".py") and name not in loaded]
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
