"""Shared fixtures: an in-memory broker and a writer of module files."""

import os
import sys
import textwrap

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EXAMPLES = os.path.join(ROOT, "examples")

from flux.membroker import Broker  # noqa: E402


@pytest.fixture
def broker():
    """A fresh in-memory broker; every module still loaded is removed after."""
    b = Broker()
    yield b
    if b.panicked is None:
        b.close()


@pytest.fixture
def write_module(tmp_path):
    """Write a module file: ``write_module("name.py", source) -> path``."""

    def write(filename, source):
        path = tmp_path / filename
        path.write_text(textwrap.dedent(source))
        return str(path)

    return write


@pytest.fixture
def write(write_module):
    """Short name for :func:`write_module`."""
    return write_module


@pytest.fixture
def example():
    """Path of a file in examples/: ``example("mymod.py")``."""

    def path(name):
        return os.path.join(EXAMPLES, name)

    return path


@pytest.fixture(autouse=True)
def _no_leaked_module_imports():
    """Module files must not stay in sys.modules after their module exits."""
    before = set(sys.modules)
    yield
    leaked = {name for name in set(sys.modules) - before if name.startswith("_flux_module_")}
    assert not leaked, f"module files left in sys.modules: {sorted(leaked)}"


@pytest.fixture(scope="module")
def real_broker():
    """A real instance for the test module, without broker.module-nopanic (a
    module that crashes panics it); skipped, with the reason, without flux-core.
    It must exit cleanly at the end."""
    from flux.brokermod_testing import skip_reason, start_instance

    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    instance = start_instance()
    try:
        yield instance
    finally:
        assert instance.stop() == 0, instance.stderr()[-2000:]


@pytest.fixture(scope="module")
def real_instance():
    """A real instance for the test module WITH broker.module-nopanic=1 (tests
    that make modules fail at run time on purpose); skipped without flux-core."""
    from flux.brokermod_testing import start_instance

    instance = start_instance(attrs={"broker.module-nopanic": "1"})
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(params=["membroker", "real"])
def target(request):
    """Each test twice: on the in-memory broker and on a real instance
    (tests/_targets.py), starting with an empty log."""
    from _targets import MemTarget, RealTarget

    if request.param == "membroker":
        t = MemTarget()
    else:
        t = RealTarget(request.getfixturevalue("real_broker"))
    t.clear_log()
    yield t
    t.close()


@pytest.fixture(params=["memory", "real"])
def nopanic(request):
    """Each test twice: on an in-memory broker and on the session's real
    instance, both with broker.module-nopanic=1, so a module's runtime
    failure is reported on both instead of a panic (tests/_targets.py's
    MemTarget and RealTarget); the modules the test loaded are removed
    after it.  (test_spec.py has an in-memory-only fixture of this name.)"""
    from _targets import nopanic_broker

    yield from nopanic_broker(request)


# The package's pytest plugin (registered by its entry point when installed);
# imported here too so the suite also runs from a plain checkout.
from flux_brokermod_pytest import flux_broker, flux_instance, flux_sched_simulation, flux_session_instances, membroker  # noqa: E402,F401
from flux_brokermod_pytest import pytest_addoption as _plugin_addoption  # noqa: E402
from flux_brokermod_pytest import pytest_configure as _plugin_configure  # noqa: E402


def pytest_addoption(parser):
    try:
        _plugin_addoption(parser)
    except ValueError:  # the installed plugin (its entry point) added --flux already
        pass
    parser.addoption(
        "--switch-interval",
        type=float,
        metavar="SECONDS",
        help="sys.setswitchinterval() for the whole run: 1e-6 lets the GIL change hands "
        "as often as on a loaded machine, to shake out races between the in-memory "
        "broker's threads (tests/tools/stress.py runs the suite so, many times)",
    )


def pytest_configure(config):
    _plugin_configure(config)
    interval = config.getoption("--switch-interval")
    if interval is not None:
        sys.setswitchinterval(interval)
