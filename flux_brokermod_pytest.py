"""pytest plugin of flux-brokermod: fixtures for testing broker modules.

Installed with the package (entry point ``pytest11``), so any test suite
gets these fixtures:

``membroker``
    A fresh in-memory broker (:class:`flux.membroker.Broker`); every
    module still loaded is removed afterwards.  A handler exception fails
    the test (unless marked ``flux_handler_errors``), a failed test shows
    the broker's log, and a loaded module's ``instance`` is its
    BrokerModule object.

``flux_instance``
    A private real Flux instance (``flux start``) whose ``.py`` modules run
    on this library, torn down afterwards; skipped, with the reason,
    without flux-core 0.84+ (see :mod:`flux.brokermod_testing`).

``flux_broker``
    Each test twice, on the in-memory broker and on a real instance shared
    by the session, with the same calls; several ranks with
    ``@pytest.mark.flux_broker(size=8, topo="kary:2")``.

This file holds fixtures only; the helpers behind them are in
:mod:`flux.brokermod_testing`.  It lives outside the ``flux`` package on
purpose: importing ``flux`` runs flux-core's package when flux-core's
bindings are on the path, and must never take pytest down.  When that
import fails (flux-core's Python requirements missing from the
environment), the plugin says so once, with the fix, and makes ``flux``
this project's package alone, so in-memory tests still run.  Once the
plugin is loaded, ``import flux.brokermod`` means this library's module,
and ``flux.constants`` and ``flux.message`` import even without flux-core.
"""

import os
import sys
import types
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))


def _prepare_flux_package() -> Optional[str]:
    """Make ``flux.brokermod`` this project's; return why flux-core's
    ``flux`` package could not be imported, if it could not."""
    try:
        import flux  # noqa: F401 - flux-core's, when installed
    except ImportError as exc:
        sys.modules.pop("flux", None)
        package = types.ModuleType("flux", "flux-brokermod (flux-core's bindings could not be imported)")
        ours = os.path.join(_HERE, "flux")
        others = [
            os.path.join(entry, "flux") for entry in sys.path
            if entry and os.path.isdir(os.path.join(entry, "flux")) and os.path.join(entry, "flux") != ours
        ]
        package.__path__ = [ours, *others]  # type: ignore[attr-defined]
        sys.modules["flux"] = package
        return f"{type(exc).__name__}: {exc}"
    ours = os.path.join(_HERE, "flux")
    if isinstance(getattr(flux, "__path__", None), list) and ours not in flux.__path__:
        flux.__path__.append(ours)  # flux-core 0.84 and 0.85 do not extend their package
    from flux import _layout

    _layout.prefer_this_package()
    return None


_BROKEN_FLUX_CORE = _prepare_flux_package()

# Where flux-core is absent, a test file's module-level `from flux.constants
# import ...` and `from flux.message import Message` get the in-memory
# broker's (flux-core's own are left alone where they import).
import flux.membroker  # noqa: E402,F401 - provides them on import


def pytest_report_header(config: Any) -> Optional[str]:
    """Say once, in the header, when flux-core's bindings cannot be imported."""
    if _BROKEN_FLUX_CORE is None:
        return None
    return (
        f"flux-brokermod: flux-core's Python bindings are on the path but cannot be imported "
        f"({_BROKEN_FLUX_CORE}); in-memory tests run, tests that need the bindings in this "
        f"process cannot. Fix: pip install 'flux-brokermod[flux]' (flux-core's Python "
        f"requirements) in this environment."
    )


def pytest_addoption(parser: Any) -> None:
    """``--flux PATH``: the flux-core whose ``flux`` the real-instance tests use."""
    group = parser.getgroup("flux-brokermod")
    group.addoption(
        "--flux", metavar="PATH", default=None,
        help="run the real-instance half of the tests with this flux command (a flux-core "
             "release of your site: --flux=/opt/flux-0.84.0/bin/flux, with the '='); the "
             "in-memory half then imitates that release, when it is recorded (as it does the "
             "flux found otherwise, unless $FLUX_BROKERMOD_FLUX_CORE names one). Default: "
             "$FLUX_BROKERMOD_FLUX, else flux on PATH.",
    )


def pytest_configure(config: Any) -> None:
    """Register the plugin's marker; apply ``--flux``."""
    config.addinivalue_line(
        "markers",
        "flux_handler_errors: the test expects module handlers to raise; "
        "the membroker fixture does not fail it for that",
    )
    config.addinivalue_line(
        "markers",
        "flux_broker(size=1, topo=None): the instance the flux_broker fixture gives "
        "this test: SIZE ranks in the tree tbon.topo=TOPO builds (e.g. kary:2)",
    )
    flux = config.getoption("--flux", default=None)
    if flux:
        os.environ["FLUX_BROKERMOD_FLUX"] = os.path.abspath(flux)
    from flux.brokermod_testing import find_flux

    found = find_flux()
    if found and not os.environ.get("FLUX_BROKERMOD_FLUX_CORE"):
        _imitate_the_release_of(found)


def _imitate_the_release_of(flux: str) -> None:
    """Make the in-memory broker imitate the flux-core *flux* is, if recorded."""
    from flux.brokermod_testing import flux_version_text
    from flux.membroker import imitate, versions

    version = flux_version_text(flux)
    if version in versions():
        imitate(version)


@pytest.fixture
def membroker(request: Any) -> Iterator[Any]:
    """A fresh in-memory broker (:class:`flux.membroker.Broker`).

    A handler that raises is answered and logged as usual, and then fails
    the test at teardown with its traceback (mark the test
    ``@pytest.mark.flux_handler_errors`` when that is expected).  A failed
    test's report shows the broker's log.  ``broker.load(...)`` returns the
    loaded module, whose ``instance`` is the BrokerModule object.
    """
    from flux.membroker import Broker

    broker = Broker()
    try:
        yield broker
    finally:
        if broker.panicked is None:
            broker.close()
        _report_log(request, "membroker", broker.dmesg())
    _fail_on_handler_errors(request, broker.handler_errors)


@pytest.fixture
def flux_sched_simulation() -> Iterator[Callable[..., Any]]:
    """Make scheduler simulations (:class:`flux.schedsim.Simulation`):
    ``flux_sched_simulation("sched-fifo", nodes=4, cores=8)`` loads a
    scheduler (a file, or one of flux-core's by name), unchanged, beside
    stand-in ``resource``, ``kvs`` and ``job-manager`` services, on virtual
    time.  Each is closed after the test.  Schedulers built on
    ``flux.scheduler`` need flux-core 0.88+'s Python bindings in the test's
    process (``flux env python -m pytest``): without them, the test is
    skipped, saying so."""
    from flux.membroker import ModuleError
    from flux.schedsim import Simulation

    made: List[Any] = []

    def make(scheduler: str, *args: str, **kwargs: Any) -> Any:
        try:
            import flux.scheduler  # noqa: F401
        except ImportError as exc:
            missing = f"{exc}"
        else:
            missing = ""

        def skip(why: str) -> None:
            pytest.skip(f"{scheduler} needs flux-core 0.88+'s Python bindings in this process "
                        f"(run pytest under `flux env`): {why}")

        if missing and not scheduler.endswith(".py"):
            skip(missing)
        try:
            sim = Simulation(scheduler, *args, **kwargs)
        except ModuleError as exc:
            text = str(exc)
            # the file's own import of flux-core's bindings failed, as here
            # (or a test hid flux.scheduler under `flux env`)
            if missing and ("ModuleNotFoundError" in text or "ImportError" in text) and (
                    ": No module named 'flux." in text or "'_flux" in text or " flux.scheduler " in text):
                skip(text)
            raise
        made.append(sim)
        return sim

    yield make
    for sim in made:
        sim.close()


@pytest.fixture
def flux_instance() -> Iterator[Any]:
    """A private one-broker Flux instance running ``.py`` modules on this library."""
    from flux.brokermod_testing import start_instance

    instance = start_instance(attrs={"broker.module-nopanic": "1"})
    try:
        yield instance
    finally:
        instance.stop()


class _SessionInstances:
    """The real instances tests share during a session, one per (size, topo),
    each started when a test first asks for it and stopped at the end."""

    def __init__(self) -> None:
        self._instances: Dict[Tuple[int, Optional[str]], Any] = {}

    def get(self, size: int = 1, topo: Optional[str] = None) -> Any:
        """The shared instance of *size* brokers in tree *topo*; skips the
        test, with the reason, without flux-core 0.84+."""
        key = (size, topo)
        if key in self._instances and self._instances[key].lost:  # a test lost ranks of it
            self._instances.pop(key).stop()
        if key not in self._instances:
            from flux.brokermod_testing import start_instance

            # broker.module-nopanic: a crashing module cannot take the
            # instance down for the tests after it; exit mode leader: a
            # follower that exits (lose_rank) leaves the others serving.
            attrs = {"broker.module-nopanic": "1"}
            if topo is not None:
                attrs["tbon.topo"] = topo
            self._instances[key] = start_instance(size=size, attrs=attrs,
                                                  exit_mode="leader" if size > 1 else None)
        return self._instances[key]

    def stop(self) -> None:
        """Stop every instance started."""
        for instance in self._instances.values():
            instance.stop()
        self._instances.clear()


@pytest.fixture(scope="session")
def flux_session_instances() -> Iterator[_SessionInstances]:
    """The real instances shared by the session: ``.get(size, topo)``."""
    instances = _SessionInstances()
    try:
        yield instances
    finally:
        instances.stop()


@pytest.fixture(scope="session")
def flux_session_instance(flux_session_instances: _SessionInstances) -> Any:
    """One real one-broker instance for the whole test session
    (``broker.module-nopanic=1``, so a crashing module cannot take it down
    for the tests after it); skipped, with the reason, without flux-core 0.84+."""
    return flux_session_instances.get()


def _instance_shape(request: Any) -> Tuple[int, Optional[str]]:
    """(size, topo) of the ``flux_broker`` marker on the test, else (1, None)."""
    marker = request.node.get_closest_marker("flux_broker")
    if marker is None:
        return 1, None
    if marker.args:
        raise pytest.UsageError(f"{request.node.nodeid}: use @pytest.mark.flux_broker(size=N, topo=SPEC)")
    options = dict(marker.kwargs)
    size, topo = options.pop("size", 1), options.pop("topo", None)
    if options:
        raise pytest.UsageError(f"{request.node.nodeid}: flux_broker marker: unknown option {sorted(options)[0]!r} "
                                f"(it takes size= and topo=)")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise pytest.UsageError(f"{request.node.nodeid}: flux_broker marker: size={size!r} is not a number of "
                                f"brokers >= 1")
    return size, topo


@pytest.fixture(params=["memory", "real"])
def flux_broker(request: Any) -> Iterator[Any]:
    """Each test twice, with the same calls: on the in-memory broker
    (:class:`~flux.brokermod_testing.MemoryBroker`) and on a real instance
    (:class:`~flux.brokermod_testing.RealBroker`, skipped without
    flux-core).  ``load(path, rank=)``, ``remove``, ``rpc(topic, payload,
    guest=, streaming=, nodeid=)``, ``event``, ``dmesg``, ``modules``,
    ``settle``...

    One rank by default; mark the test ``@pytest.mark.flux_broker(size=8,
    topo="kary:2")`` for several ranks in the tree ``tbon.topo`` builds.
    The real instance of each shape is shared by the session; the modules
    a test loaded are removed after it, on every rank.  In memory, a
    handler exception fails the test as with ``membroker``.
    """
    from flux.brokermod_testing import MemoryBroker, RealBroker

    size, topo = _instance_shape(request)
    if request.param == "memory":
        broker = MemoryBroker(size=size, topo=topo)
    else:
        broker = RealBroker(request.getfixturevalue("flux_session_instances").get(size, topo))
    before = set(broker.modules())
    broker.clear_log()
    try:
        yield broker
    finally:
        broker.cleanup(before)
        _report_log(request, request.param, broker.dmesg())
        broker.close()
    _fail_on_handler_errors(request, [] if broker.real else broker.broker.handler_errors)


def _report_log(request: Any, which: str, lines: List[str]) -> None:
    """Attach the broker's log to the test's report (shown if it fails)."""
    if lines:
        request.node.add_report_section("teardown", f"flux dmesg ({which})", "\n".join(lines))


def _fail_on_handler_errors(request: Any, errors: List[Any]) -> None:
    """Fail the test on handler exceptions, unless it is marked as expecting them."""
    if errors and request.node.get_closest_marker("flux_handler_errors") is None:
        pytest.fail(
            "a module's handler raised (mark the test @pytest.mark.flux_handler_errors "
            "if that is expected):\n\n" + "\n\n".join(str(error) for error in errors),
            pytrace=False,
        )
