"""Compatibility: Python 3.9 floor, flux-core's public API, and the package layout."""

import os
import subprocess
import sys
import textwrap

import pytest

import flux.brokermod as brokermod
from flux import _layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _vermin(*paths):
    """Run vermin for a 3.9 floor on *paths*; return the completed process."""
    pytest.importorskip("vermin")
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from vermin import main; sys.exit(main())",
            "--target=3.9-",
            "--violations",
            "--no-tips",
            "--eval-annotations",
            *paths,
        ],
        capture_output=True,
        text=True,
    )


def test_code_runs_on_python_3_9():
    """vermin finds nothing in flux/ or examples/ that needs Python newer than 3.9."""
    result = _vermin(os.path.join(ROOT, "flux"), os.path.join(ROOT, "examples"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_vermin_would_catch_a_newer_feature(tmp_path):
    """The floor check is real: a 3.10-only construct fails it."""
    newer = tmp_path / "newer.py"
    newer.write_text("pairs = zip([1], [2], strict=True)\n")
    assert _vermin(str(newer)).returncode != 0


def test_public_names_of_flux_cores_brokermod_exist():
    """Every public name of flux-core 0.84+'s flux.brokermod is here too."""
    for name in [
        "BrokerLogger",
        "BrokerModule",
        "event_handler",
        "request_handler",
        "resolve_entry_point",
    ]:
        assert hasattr(brokermod, name), name
    for attr in ["handle", "name", "args", "run", "stop", "stop_error", "set_running", "debug_test"]:
        assert hasattr(brokermod.BrokerModule, attr), attr
    assert brokermod.BrokerLogger.LEVEL_NAMES["err"] == 3
    assert brokermod.BrokerLogger.LEVEL_NAMES["debug"] == 7


def test_handler_metadata_matches_flux_core():
    """Decorated functions carry the same ``_flux_handler`` dict as flux-core's."""

    @brokermod.request_handler("hello")
    def req(self, msg):
        pass

    @brokermod.event_handler("panic", prefix=False)
    def ev(self, msg):
        pass

    assert req._flux_handler == {"msgtype": 1, "topic": "hello", "prefix": True, "allow_guest": False}
    assert ev._flux_handler["msgtype"] == 4
    assert ev._flux_handler["topic"] == "panic"
    assert ev._flux_handler["prefix"] is False


def test_flux_is_a_namespace_portion():
    """flux/ has no __init__.py, so flux-core's regular package can own `flux`."""
    assert not os.path.exists(os.path.join(ROOT, "flux", "__init__.py"))
    assert os.path.exists(os.path.join(ROOT, "flux", "py.typed"))


def _fake_flux_core(tmp_path):
    """A stand-in for flux-core's installed bindings: a regular `flux` package
    using pkgutil.extend_path, with its own brokermod."""
    site = tmp_path / "fluxcore-site"
    pkg = site / "flux"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "from pkgutil import extend_path\n__path__ = extend_path(__path__, __name__)\n"
    )
    (pkg / "brokermod.py").write_text("WHO = 'flux-core'\n")
    return str(site)


def _run(code, pythonpath):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(pythonpath))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env
    )


def test_flux_cores_brokermod_wins_without_the_layout_fix(tmp_path):
    """Measured fact: with flux-core's regular package present, even a
    directory earlier on sys.path loses flux.brokermod to flux-core's."""
    fake = _fake_flux_core(tmp_path)
    result = _run("import flux.brokermod as b; print(getattr(b, 'WHO', 'ours'))", [ROOT, fake])
    assert result.stdout.strip() == "flux-core", result.stderr


def test_layout_fix_makes_flux_brokermod_ours_next_to_flux_core(tmp_path):
    """After flux.modloader/flux.membroker prefer this package, flux.brokermod
    is this project's while flux-core's other modules stay reachable."""
    fake = _fake_flux_core(tmp_path)
    (tmp_path / "fluxcore-site" / "flux" / "job.py").write_text("WHO = 'flux-core job'\n")
    result = _run(
        """
        from flux import _layout
        _layout.prefer_this_package()
        import flux.brokermod as b, flux.job as j
        print(getattr(b, 'WHO', 'ours'), '|', j.WHO)
        """,
        [fake, ROOT],
    )
    assert result.stdout.strip() == "ours | flux-core job", result.stderr


def test_layout_fix_refuses_when_flux_cores_brokermod_is_already_imported(tmp_path):
    fake = _fake_flux_core(tmp_path)
    result = _run(
        """
        import flux.brokermod
        from flux import _layout
        try:
            _layout.prefer_this_package()
        except ImportError as exc:
            print("refused:", exc)
        """,
        [fake, ROOT],
    )
    assert result.stdout.startswith("refused: flux.brokermod was already imported"), result.stderr


def test_without_flux_core_flux_is_this_package_alone(tmp_path):
    result = _run(
        "import flux, flux.brokermod as b; print(list(flux.__path__)); print(b.__file__)", [ROOT]
    )
    lines = result.stdout.splitlines()
    assert os.path.join(ROOT, "flux") in lines[0]
    assert lines[1] == os.path.join(ROOT, "flux", "brokermod.py")


def test_prefer_this_package_is_harmless_on_a_namespace_package():
    _layout.prefer_this_package()
    import flux.brokermod as b

    assert b is brokermod


def test_handlers_may_use_the_names_this_library_added():
    """A module written for flux-core may name handlers rank, size, setup,
    timer...: they keep working (only flux-core's own names are refused)."""
    from flux.membroker import Broker

    class Old(brokermod.BrokerModule):
        @brokermod.request_handler("rank")
        def rank(self, msg):
            self.handle.respond(msg, {"rank": self.handle.get_rank()})

        @brokermod.request_handler("setup")
        def setup(self, msg):
            self.handle.respond(msg, {"setup": True})

    with Broker() as broker:
        broker.load(Old, name="old")
        assert broker.rpc("old.rank").get() == {"rank": 0}
        assert broker.rpc("old.setup").get() == {"setup": True}


def _help_entries(text):
    """The lines of a pydoc page with its layout taken out: no margins or
    blank lines, and a signature that pydoc wraps over several lines
    (Python 3.13 does, past 80 columns) as one line.  What is left is what
    help() says, the same on every Python."""
    entries, signature = [], None
    for line in text.splitlines():
        body = line.lstrip(" |").rstrip()
        if signature is not None:
            signature.append(body)
            if body.startswith(")"):
                entries.append("".join(signature))
                signature = None
        elif body.endswith("("):
            signature = [body]
        elif body:
            entries.append(body)
    return entries


def test_help_entries_do_not_depend_on_how_pydoc_lays_them_out():
    one_line = "     |  reduce(self, topic: 'str') -> 'Reduction'\n     |  \n     |      Run a reduction.\n"
    wrapped = (
        "     |  reduce(\n     |      self,\n     |      topic: 'str'\n     |  ) -> 'Reduction'\n"
        "     |\n     |      Run a reduction.\n"
    )
    assert len(_help_entries(one_line)) == len(_help_entries(wrapped)) == 2


def test_help_shows_what_this_library_adds_not_builtin_boilerplate():
    """help(flux.brokermod) once ran to 816 lines, mostly the dunder methods
    exceptions and tuples inherit; the public docstrings say what a module
    author needs, and every public name has one."""
    import inspect
    import pydoc

    text = pydoc.render_doc(brokermod, renderer=pydoc.plaintext)
    assert "__reduce__" not in text and "__getnewargs__" not in text
    assert "errno" in dir(brokermod.RequestError) and "_asdict" in dir(brokermod.RequestFacts)
    # What help() says, measured the same way on every Python (3.9: 516
    # entries, 3.11 and 3.13: 528, at the tree services); the rendered line
    # count differs (721, 737, 784) with pydoc's layout alone.
    assert len(_help_entries(text)) < 600
    assert "__weakref__" not in text.split("class RankSets")[1].split("class Reduction")[0]
    for name in brokermod.__all__:
        value = getattr(brokermod, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"flux.brokermod.{name} has no docstring"
        if inspect.isclass(value) and value.__module__.startswith("flux."):
            for member, attr in vars(value).items():
                if not member.startswith("_") and (inspect.isfunction(attr) or isinstance(attr, property)):
                    assert inspect.getdoc(attr), f"flux.brokermod.{name}.{member} has no docstring"
    for needed in ("self.log", "Option(", "module_stats", "NAME.handlers", "timer_handler"):
        assert needed in brokermod.BrokerModule.__doc__, needed
    for needed in ("return", "keyword-only", "async def", "generator", "RequestError"):
        assert needed in brokermod.request_handler.__doc__, needed
