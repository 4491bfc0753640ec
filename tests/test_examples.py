"""One test per file in examples/: load it (on both brokers where it can) and check
what its docstring says it does."""

import ast
import errno
import os
import re
import subprocess
import syslog

import pytest

from flux.brokermod_testing import start_instance
from flux.membroker import Broker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


# Issue 35, item 2: examples told users to run `flux rpc`, which flux-core
# 0.88 does not have.  A command line running it (`flux rpc TOPIC`,
# `flux rpc -r 1 ...`), not a sentence naming it ("has no `flux rpc` command").
_RUNS_FLUX_RPC = re.compile(r"\bflux rpc\s+[-\w]")


def _user_facing_files():
    yield os.path.join(ROOT, "README.md")
    for top in ("docs", "examples", "flux"):
        for directory, dirs, files in os.walk(os.path.join(ROOT, top)):
            dirs[:] = [d for d in dirs if not d.startswith((".", "_build", "__pycache__"))]
            for name in files:
                if name.endswith((".py", ".rst", ".md", ".txt")):
                    yield os.path.join(directory, name)


def test_no_example_doc_or_readme_tells_users_to_run_flux_rpc():
    """README.md, docs/, examples/ and the package's docstrings (which the API
    docs show) give `flux python -c '...rpc(...)...'` instead."""
    found = []
    for path in _user_facing_files():
        with open(path, errors="replace") as f:
            for number, line in enumerate(f, 1):
                if _RUNS_FLUX_RPC.search(line):
                    found.append(f"{os.path.relpath(path, ROOT)}:{number}: {line.strip()}")
    assert found == []


_CALL = re.compile(r"^(?P<command>.*\bflux python -c '[^']*')(?:\s+#\s*(?P<output>.*))?$")


def _docstring_commands(name):
    """The ``flux module load`` lines of example *name*'s docstring, and its
    ``flux python -c '...'`` lines with the output written after each (``#
    OUTPUT``, on the line or the next)."""
    with open(os.path.join(ROOT, "examples", name)) as f:
        lines = [line.strip() for line in (ast.get_docstring(ast.parse(f.read())) or "").splitlines()]
    loads, calls = [], []
    for number, line in enumerate(lines):
        match = _CALL.match(line)
        if line.startswith("flux module load "):
            loads.append(line)
        elif match:
            output = match["output"]
            if output is None and number + 1 < len(lines) and lines[number + 1].startswith("#"):
                output = lines[number + 1].lstrip("#").strip()
            calls.append((match["command"], output))
    return loads, calls


@pytest.fixture(scope="module")
def instance():
    started = start_instance()  # skips the test without a real flux-core
    yield started
    assert started.stop() == 0, started.stderr()[-2000:]


@pytest.mark.real_flux
@pytest.mark.parametrize("name", ["mymod.py", "plain_mod_main.py", "reference.py", "status.py", "two_modules.py"])
def test_an_examples_flux_python_lines_print_what_its_docstring_says(instance, name):
    """Run as written, in a shell inside a real instance, from the project's
    directory: each ``flux module load`` line, then each ``flux python``
    line, whose last line printed (stderr's, when it fails) is the one the
    docstring shows."""
    loads, calls = _docstring_commands(name)
    assert loads and calls and all(output for _, output in calls), (loads, calls)
    env = dict(instance.environment(), FLUX_URI=str(instance.uri))

    def shell(line):
        return subprocess.run(line, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    try:
        for line in loads:
            loaded = shell(line)
            assert loaded.returncode == 0, loaded.stderr
        for command, output in calls:
            result = shell(command)
            printed = (result.stdout if result.returncode == 0 else result.stderr).strip().splitlines()
            assert printed[-1:] == [output], (command, result.stdout, result.stderr[-1000:])
    finally:
        shell(f"flux module remove -f {name.split('.', 1)[0]}")
