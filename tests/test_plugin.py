"""The pytest fixtures the package installs for module authors."""

import os

import pytest

from flux import brokermod_testing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_membroker_fixture_loads_and_answers(membroker):
    membroker.load(os.path.join(ROOT, "examples", "mymod.py"))
    assert membroker.rpc("mymod.info").get() == {"name": "mymod"}


def test_skip_reason_names_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("FLUX_BROKERMOD_FLUX", str(tmp_path / "no-such-flux"))
    assert brokermod_testing.skip_reason() == (
        "no real Flux: flux-core 0.84+ not found on PATH (or $FLUX_BROKERMOD_FLUX)"
    )


def test_old_flux_core_is_refused(monkeypatch, tmp_path):
    fake = tmp_path / "flux"
    fake.write_text("#!/bin/sh\necho 'commands:    \t\t0.83.0'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("FLUX_BROKERMOD_FLUX", str(fake))
    assert brokermod_testing.skip_reason() == (
        f"no real Flux: {fake} is flux-core 0.83.0, Python modules need 0.84+"
    )


def test_unparsable_version_is_refused(monkeypatch, tmp_path):
    fake = tmp_path / "flux"
    fake.write_text("#!/bin/sh\necho nonsense\n")
    fake.chmod(0o755)
    monkeypatch.setenv("FLUX_BROKERMOD_FLUX", str(fake))
    assert "did not report a version" in brokermod_testing.skip_reason()


def test_rpc_result_decodes_answers():
    ok = brokermod_testing.RPCResult("a.b", [{"payload": '{"x": 1}'}])
    assert ok.get() == {"x": 1}
    stream = brokermod_testing.RPCResult("a.b", [{"payload": "1"}, {"payload": "2"}, {"errno": 61, "error": "No data"}])
    assert stream.stream() == [1, 2]
    failed = brokermod_testing.RPCResult("a.b", [{"errno": 1, "error": "nope"}])
    with pytest.raises(OSError) as info:
        failed.get()
    assert (info.value.errno, info.value.strerror) == (1, "nope")


def test_instance_environment_puts_the_loader_first(monkeypatch):
    monkeypatch.setenv("FLUX_EXEC_PATH_PREPEND", "/opt/other")
    instance = brokermod_testing.FluxInstance("flux")
    assert instance.environment()["FLUX_EXEC_PATH_PREPEND"] == f"{brokermod_testing.LIBEXEC_DIR}:/opt/other"
