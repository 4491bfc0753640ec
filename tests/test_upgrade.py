"""Upgrading a module in place: what ``flux module reload`` (a remove, then
a load of the new file) does to the clients of the old one."""

import errno
import textwrap

UP = '''
import asyncio
from flux.brokermod import BrokerModule, request_handler

VERSION = {version}


class Up(BrokerModule):
    @request_handler("version")
    def version(self, msg):
        return {{"version": VERSION}}

    @request_handler("ticks")
    async def ticks(self, msg):
        n = 0
        while True:
            n += 1
            yield {{"tick": n}}
            await asyncio.sleep(0.2)

    @request_handler("slow")
    async def slow(self, msg):
        await asyncio.sleep(30)
        return {{"slow": VERSION}}
'''


def test_a_reload_ends_open_streams_and_requests_in_flight_with_one_error_each(flux_broker, tmp_path):
    path = tmp_path / "up.py"
    path.write_text(textwrap.dedent(UP.format(version=1)))
    flux_broker.load(str(path))
    stream = flux_broker.start_rpc("up.ticks", {}, streaming=True)
    slow = flux_broker.start_rpc("up.slow", {})
    flux_broker.wait(0.5)
    path.write_text(textwrap.dedent(UP.format(version=2)))
    flux_broker.remove("up")  # flux module reload PATH: remove, then load
    flux_broker.load(str(path))
    ticks = stream.wait()
    assert ticks.answers[-1] == {"errno": errno.EHOSTUNREACH, "error": "module disconnect"}
    assert len(ticks.answers) >= 2 and all("payload" in answer for answer in ticks.answers[:-1])
    assert slow.wait().answers == [{"errno": errno.EHOSTUNREACH, "error": "module disconnect"}]
    assert flux_broker.rpc("up.version").get() == {"version": 2}


def test_flux_module_reload_runs_the_new_file(flux_session_instances, tmp_path):
    """The command itself, on a real instance (skipped without one): it
    removes the module by the name its path gives and loads the file again."""
    instance = flux_session_instances.get()
    path = tmp_path / "up.py"
    path.write_text(textwrap.dedent(UP.format(version=1)))
    instance.load(str(path))
    try:
        path.write_text(textwrap.dedent(UP.format(version=2)))
        result = instance.flux("module", "reload", str(path))
        assert result.returncode == 0, result.stderr
        assert instance.rpc("up.version").get() == {"version": 2}
    finally:
        instance.flux("module", "remove", "-f", "up")
