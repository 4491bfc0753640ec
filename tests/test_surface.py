"""The in-memory broker offers what flux-core offers, and nothing more.

Every object a module or a test receives from the in-memory broker (a
handle, a message, an RPC future, watchers) has only public names that
flux-core's counterpart has: the live flux-core classes when flux-core is
here, flux/membroker/surfaces/<version>.json (recorded from each flux-core
release with tests/tools/record_flux_core_surface.py) when it is not.  A
recorded name the in-memory object lacks raises NotImplementedError naming
it; any other name raises AttributeError, as on flux-core.
"""

import json
import os
import subprocess

import pytest

from flux.brokermod import BrokerModule, request_handler

from flux.brokermod_testing import find_flux, flux_version_text, skip_reason
from flux.membroker import FLUX_MSGTYPE_REQUEST, Broker, Message
from flux.membroker import imitate, versions
from flux.membroker._surface import WrongNumArguments, arity, current, newest_release, recorded, surface_of

HERE = os.path.dirname(os.path.abspath(__file__))
RECORDER = os.path.join(HERE, "tools", "record_flux_core_surface.py")


def _in_memory_objects():
    broker = Broker()
    client = broker.connect()
    nothing = lambda *args: None  # noqa: E731
    return broker, {
        "Flux": client,
        "Message": Message(FLUX_MSGTYPE_REQUEST, "a.b"),
        "RPC": client.rpc("nosuch.x"),
        "MessageWatcher": client.msg_watcher_create(nothing),
        "TimerWatcher": client.timer_watcher_create(1.0, nothing),
        "FDWatcher": client.fd_watcher_create(0, nothing),
        "PrepareWatcher": client.prepare_watcher_create(nothing),
        "CheckWatcher": client.check_watcher_create(nothing),
        "IdleWatcher": client.idle_watcher_create(),
    }


def _public(obj):
    names = {n for n in dir(type(obj)) if not n.startswith("_")}
    return names | {n for n in getattr(obj, "__dict__", {}) if not n.startswith("_")}


@pytest.fixture(scope="module")
def flux_core_surface():
    """The live flux-core surface when flux-core is here, else the record."""
    if skip_reason() is not None:
        return {kind: recorded(kind) for kind in _in_memory_objects()[1]}
    result = subprocess.run(
        [find_flux(), "start", "flux", "python", RECORDER], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    live = json.loads(result.stdout)
    live["Flux"] = sorted(set(live["Flux"]) | set(live["libflux"]))
    return {kind: frozenset(live[kind]) for kind in _in_memory_objects()[1]}


@pytest.mark.parametrize("kind", list(_in_memory_objects()[1]))
def test_nothing_more_than_flux_core(flux_core_surface, kind):
    _, objects = _in_memory_objects()
    extra = sorted(_public(objects[kind]) - flux_core_surface[kind])
    assert extra == [], f"the in-memory {kind} offers names flux-core's lacks: {extra}"


@pytest.mark.parametrize("kind", list(_in_memory_objects()[1]))
def test_what_flux_core_has_and_this_lacks_says_so(flux_core_surface, kind):
    _, objects = _in_memory_objects()
    obj = objects[kind]
    for name in sorted(flux_core_surface[kind] - _public(obj))[:50]:
        with pytest.raises(NotImplementedError, match=f"{kind}.{name} of flux-core is not available"):
            getattr(obj, name)
        assert not hasattr(obj, name)
    with pytest.raises(AttributeError) as info:
        getattr(obj, "no_such_name_anywhere")
    assert not isinstance(info.value, NotImplementedError)


def _arity(method):
    import inspect

    params = list(inspect.signature(method).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    fewest = sum(1 for p in positional if p.default is p.empty)
    return fewest, -1 if any(p.kind == p.VAR_POSITIONAL for p in params) else len(positional)


@pytest.mark.parametrize("kind", list(_in_memory_objects()[1]))
def test_no_method_takes_arguments_flux_cores_refuses(kind):
    """Names are not enough: a call that fails on a real handle (too few or
    too many arguments) fails in memory too."""
    _, objects = _in_memory_objects()
    checked, looser = 0, []
    for name, (fewest, most) in sorted(arity(kind).items()):
        method = getattr(objects[kind], name, None)
        if not callable(method):
            continue
        checked += 1
        ours = _arity(method)
        if ours[0] < fewest or (most != -1 and (ours[1] == -1 or ours[1] > most)):
            looser.append(f"{name}: takes {ours}, flux-core's {[fewest, most]}")
    assert looser == []
    assert checked >= (20 if kind == "Flux" else 1)


def test_a_libflux_function_called_wrongly_raises_flux_cores_error():
    broker, objects = _in_memory_objects()
    h = objects["Flux"]
    with pytest.raises(WrongNumArguments, match="flux_reactor_now: reactor_now\\(\\) takes 1, received 0"):
        h.reactor_now()
    assert isinstance(WrongNumArguments("x"), ValueError)  # as flux.wrapper.WrongNumArguments
    assert h.reactor_now(h.get_reactor()) == broker.now
    with pytest.raises(WrongNumArguments):
        h.respond_error(Message(FLUX_MSGTYPE_REQUEST, "a.b"), 2)


def test_the_default_is_the_newest_recorded_release_or_the_flux_found():
    assert newest_release() == "0.88.0"
    if skip_reason() is None:  # the plugin imitates the release of the flux it found
        assert current().version == flux_version_text(find_flux())
    else:
        assert current().version == newest_release()
    assert {"respond", "rpc", "reactor_run", "module_set_running"} <= recorded("Flux")
    assert "matchtag" not in recorded("Message") and "handle" in recorded("Message")


@pytest.fixture
def imitating():
    """Imitate another flux-core version in this test, then the one before again."""
    before = current().version
    yield imitate
    imitate(before)


@pytest.mark.parametrize("version", versions())
@pytest.mark.parametrize("kind", list(_in_memory_objects()[1]))
def test_imitating_a_version_offers_nothing_it_lacks(imitating, version, kind):
    imitating(version)
    _, objects = _in_memory_objects()
    names = surface_of(version).names(kind)
    extra = sorted(_public(objects[kind]) - names)
    assert extra == [], f"imitating flux-core {version}, the in-memory {kind} offers {extra}"
    for name in sorted(set(dir(type(objects[kind]))) - names):
        if not name.startswith("_"):
            with pytest.raises(AttributeError, match=f"not in flux-core {version}"):
                getattr(objects[kind], name)


def test_an_unrecorded_version_is_refused_naming_the_recorded_ones(imitating):
    with pytest.raises(ValueError, match="flux-core 0.70 has no recorded surface; the in-memory broker imitates 0"):
        imitating("0.70")


@pytest.mark.real_flux
@pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))
def test_the_record_matches_the_flux_core_on_path():
    """The flux-core on PATH has a record, and it is what that release offers."""
    result = subprocess.run(
        [find_flux(), "start", "flux", "python", RECORDER], capture_output=True, text=True, timeout=120
    )
    live = json.loads(result.stdout)
    assert live["flux-core"] in versions(), (
        f"flux-core {live['flux-core']} on PATH has no record: "
        f"flux start flux python {RECORDER} > flux/membroker/surfaces/{live['flux-core']}.json"
    )
    with open(os.path.join(os.path.dirname(HERE), "flux", "membroker", "surfaces", f"{live['flux-core']}.json")) as f:
        assert live == json.load(f)


@pytest.mark.real_flux
@pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))
def test_constant_values_are_flux_cores():
    import flux._constants as ours

    names = sorted(n for n in vars(ours) if n.startswith("FLUX_"))
    script = "import json, flux.constants as c, sys; print(json.dumps({n: getattr(c, n) for n in sys.argv[1:]}))"
    result = subprocess.run([find_flux(), "python", "-c", script, *names], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {n: getattr(ours, n) for n in names}


def test_imitating_0_84_logs_the_load_as_0_84_did(imitating):
    imitating("0.84")
    with Broker() as broker:
        assert broker.attrs["version"] == "0.84.0"
        broker.load(Echo, name="echo")
        broker.remove("echo")
        assert [line for line in broker.dmesg() if "echo" in line] == [
            "broker.debug[0]: insmod echo exec pid=-1", "broker.debug[0]: rmmod echo",
            "broker.debug[0]: module echo exited"]
    imitating("0.86")
    with Broker() as broker:
        broker.load(Echo, name="echo")
        assert [line for line in broker.dmesg() if "echo" in line][:2] == [
            "broker.debug[0]: insmod echo", f"broker.debug[0]: module-python-exec echo pid={os.getpid()}"]


class Echo(BrokerModule):
    @request_handler("ping2")
    def ping2(self, msg):
        return {}
