"""The flux-brokermod console command."""

import errno
import json
import os
import subprocess
import sys

import pytest

from flux import _brokermod_cli as cli


def run(args, capsys):
    status = cli.main(args)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_run_answers_a_request_and_shows_the_log(example, capsys):
    status, out, err = run(["run", "--rpc", "info", example("mymod.py")], capsys)
    assert status == 0, err
    assert 'mymod.info: {"name": "mymod"}' in out
    assert out.splitlines()[0] == f"loaded mymod from {example('mymod.py')}"


def test_run_passes_arguments_and_name(example, capsys):
    status, out, _ = run(
        ["run", "--name", "svc", "--rpc", "args", example("two_modules.py"), "--verbose", "--count=4"],
        capsys,
    )
    assert status == 0
    assert 'svc.args: {"args": ["--verbose", "--count=4"], "class": "Primary"}' in out


def test_run_prints_errors_like_flux_rpc_and_exits_1(example, capsys):
    status, out, _ = run(["run", "--rpc", "nosuch", example("mymod.py")], capsys)
    assert status == 1
    assert "mymod.nosuch: error ENOSYS: Unknown service method 'mymod.nosuch'" in out


def test_run_as_guest_is_refused_by_owner_only_handlers(example, capsys):
    status, out, _ = run(["run", "--guest", "--rpc", "status", "--rpc", "secret", example("status.py")], capsys)
    assert 'status.status: {"running": true}' in out
    assert "status.secret: error EPERM: Request requires owner credentials" in out
    assert status == 1


def test_run_sends_events_in_order_with_payloads(write_module, capsys):
    path = write_module(
        "ev.py",
        """
        from flux.brokermod import BrokerModule, event_handler, request_handler

        class Ev(BrokerModule):
            seen = []

            @event_handler("note")
            def note(self, msg):
                self.seen.append(msg.payload["n"])

            @request_handler("seen")
            def seen_(self, msg):
                self.handle.respond(msg, self.seen)
        """,
    )
    status, out, _ = run(
        ["run", "--event", 'ev.note={"n": 1}', "--event", 'ev.note={"n": 2}', "--rpc", "seen", path], capsys
    )
    assert status == 0
    lines = out.splitlines()
    assert lines[1:4] == ['event ev.note: {"n": 1}', 'event ev.note: {"n": 2}', "ev.seen: [1, 2]"]


def test_run_sends_text_that_is_not_json_as_is(write_module, capsys):
    path = write_module(
        "echo.py",
        """
        from flux.brokermod import BrokerModule, request_handler

        class Echo(BrokerModule):
            @request_handler("echo")
            def echo(self, msg):
                self.handle.respond(msg, {"text": msg.payload_str})
        """,
    )
    status, out, _ = run(["run", "--rpc", "echo=hello world", path], capsys)
    assert status == 0
    assert 'echo.echo: {"text": "hello world"}' in out


def test_run_advances_virtual_time(write_module, capsys):
    path = write_module(
        "tick.py",
        """
        from flux.brokermod import BrokerModule

        class Tick(BrokerModule):
            def __init__(self, h, *args):
                super().__init__(h, *args)
                self.timer = h.timer_watcher_create(1.0, self.tick, repeat=1.0)
                self.timer.start()

            def tick(self, h, watcher, revents, arg):
                self.log.info("tick")
        """,
    )
    status, out, _ = run(["run", "--advance", "3", path], capsys)
    assert status == 0
    assert out.count("tick.info[0]: tick") == 3


def test_load_failure_exits_nonzero_with_one_line(write_module, capsys):
    path = write_module("broken.py", "x = = 1\ndef mod_main(h, *args):\n    pass\n")
    status, out, err = run(["run", path], capsys)
    assert status == 1
    first = err.splitlines()[0]
    assert first.startswith(f"flux-brokermod: {path}:1: SyntaxError") and first.endswith("(EINVAL)")
    assert first.count(path) == 1
    assert "Traceback" not in err


def test_missing_file_exits_nonzero(capsys, tmp_path):
    status, _, err = run(["run", str(tmp_path / "nope.py")], capsys)
    assert status == 1
    assert "No such file or directory" in err


def test_setup_prints_the_loader_directory(capsys, monkeypatch):
    monkeypatch.delenv("FLUX_EXEC_PATH_PREPEND", raising=False)
    status, out, _ = run(["setup", "--check"], capsys)
    assert status == 0
    assert out.strip() == f"export FLUX_EXEC_PATH_PREPEND={cli.LIBEXEC_DIR}"
    assert os.access(os.path.join(cli.LIBEXEC_DIR, "flux-module-python-exec.py"), os.X_OK)


def test_setup_keeps_an_existing_prepend(capsys, monkeypatch):
    monkeypatch.setenv("FLUX_EXEC_PATH_PREPEND", "/opt/mine")
    status, out, _ = run(["setup"], capsys)
    assert status == 0
    assert out.strip() == f"export FLUX_EXEC_PATH_PREPEND={cli.LIBEXEC_DIR}:/opt/mine"


def test_console_script_runs_as_a_module(example):
    """The command works as a separate process (as the README runs it)."""
    result = subprocess.run(
        [sys.executable, "-m", "flux._brokermod_cli", "run", "--rpc", "ping={}", example("mymod.py")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert '"rolemask": 5' in result.stdout


@pytest.mark.parametrize("bad", ["--rpc", "=x"])
def test_empty_topic_is_reported(example, capsys, bad):
    args = ["run", "--rpc", "=x", example("mymod.py")] if bad == "=x" else ["run", "--rpc", "", example("mymod.py")]
    status, _, err = run(args, capsys)
    assert status == 2  # a bad command line
    assert "empty topic" in err


def test_event_topics_are_used_as_given(example, capsys):
    status, out, _ = run(["run", "--event", "shutdown", "--rpc", "info", example("mymod.py")], capsys)
    assert "event shutdown: (no payload)" in out
    # the module stopped on the un-prefixed "shutdown" event, so info is unanswered
    assert "mymod.info: error ENOSYS" in out
    assert status == 1


def test_setup_writes_an_executable_copy_when_the_installed_one_is_not(tmp_path, monkeypatch, capsys):
    """A wheel install drops the executable bit; setup then writes a copy."""
    libexec = tmp_path / "site" / "flux" / "_libexec"
    libexec.mkdir(parents=True)
    script = libexec / "flux-module-python-exec.py"
    script.write_text("# not executable\n")
    script.chmod(0o644)
    monkeypatch.setattr(cli, "LIBEXEC_DIR", str(libexec))
    monkeypatch.setattr(cli, "LOADER_SCRIPT", str(script))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FLUX_EXEC_PATH_PREPEND", raising=False)
    real_chmod = os.chmod

    def chmod(path, mode):
        if str(path) == str(script):
            raise PermissionError(1, "read-only site-packages")
        real_chmod(path, mode)

    monkeypatch.setattr(cli.os, "chmod", chmod)
    status, out, _ = run(["setup", "--check"], capsys)
    assert status == 0
    directory = out.strip().split("=", 1)[1]
    assert directory.startswith(str(tmp_path / "cache" / "flux-brokermod" / "libexec-"))
    copy = os.path.join(directory, "flux-module-python-exec.py")
    assert os.access(copy, os.X_OK)
    with open(copy) as f:
        text = f.read()
    assert repr(str(tmp_path / "site")) in text and "from flux.modloader import main" in text


def test_setup_makes_the_installed_script_executable_when_it_can(tmp_path, monkeypatch, capsys):
    libexec = tmp_path / "flux" / "_libexec"
    libexec.mkdir(parents=True)
    script = libexec / "flux-module-python-exec.py"
    script.write_text("# not executable yet\n")
    script.chmod(0o644)
    monkeypatch.setattr(cli, "LIBEXEC_DIR", str(libexec))
    monkeypatch.setattr(cli, "LOADER_SCRIPT", str(script))
    monkeypatch.delenv("FLUX_EXEC_PATH_PREPEND", raising=False)
    status, out, _ = run(["setup", "--check"], capsys)
    assert status == 0 and out.strip() == f"export FLUX_EXEC_PATH_PREPEND={libexec}"
    assert os.access(str(script), os.X_OK)


def test_describe_lists_handlers_and_options_without_a_broker(example, capsys):
    status, out, err = run(["describe", example("pulse.py")], capsys)
    assert status == 0, err
    lines = out.splitlines()
    assert "timer   -     beat  Publish one pulse event." in lines
    assert ("request owner pulse.resume {interval: a number or null (optional)}  "
            "Beat again, at a new interval if one is given.") in lines
    assert "option  interval=float (default 1.0)  seconds between beats" in lines


def test_describe_as_guest_and_as_json(example, capsys):
    status, out, _ = run(["describe", "--guest", example("kvstore.py")], capsys)
    assert status == 0
    assert [line.split()[2] for line in out.splitlines()] == [
        "kvstore.get", "kvstore.keys", "kvstore.watch", "kvstore.watching"]
    status, out, _ = run(["describe", "--json", "--name", "kv", example("kvstore.py")], capsys)
    info = __import__("json").loads(out)
    assert info["name"] == "kv" and info["handlers"][3] == {
        "topic": "kv.watch", "kind": "stream", "access": "guest",
        "fields": [{"name": "key", "type": "a string", "required": True}],
        "doc": "Stream the key's value now and after each change.",
    }


def test_describe_needs_one_broker_module_class(example, tmp_path, capsys):
    status, _, err = run(["describe", example("plain_mod_main.py")], capsys)
    assert status == 1 and "expected one BrokerModule subclass, found none" in err
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    status, _, err = run(["describe", str(broken)], capsys)
    assert status == 1 and "broken.py:1: SyntaxError" in err and "(EINVAL)" in err


COUNTER = """
import sys
from flux.brokermod import BrokerModule, request_handler, timer_handler


class Counter(BrokerModule):
    ticks = 0

    @timer_handler(1, repeat=1)
    def tick(self):
        type(self).ticks += 1

    @request_handler("ticks", allow_guest=True)
    def get_ticks(self, msg):
        return {"ticks": self.ticks, "rank": self.rank, "guest": msg.rolemask == 2}

    @request_handler("count", allow_guest=True)
    def count(self, msg, *, n: int):
        for i in range(n):
            yield i

    @request_handler("fail")
    def fail(self, msg):
        raise RuntimeError("on purpose")

    @request_handler("crash")
    def crash(self, msg):
        print("crashing now", file=sys.stderr)
        self.stop_error()
        return {}
"""


@pytest.fixture
def counter(write_module):
    return write_module("counter.py", COUNTER)


def test_run_carries_out_options_in_order(counter, capsys):
    status, out, _ = run(
        ["run", "--rpc", "ticks", "--advance", "2.5", "--rpc", "ticks", "--as", "guest", "--rpc", "ticks",
         "--as", "owner", "--rpc", "ticks", counter], capsys)
    assert status == 0
    lines = out.splitlines()
    assert lines[1:6] == [
        'counter.ticks: {"guest": false, "rank": 0, "ticks": 0}',
        "advanced 2.5s (now 2.5s)",
        'counter.ticks: {"guest": false, "rank": 0, "ticks": 2}',
        'counter.ticks: {"guest": true, "rank": 0, "ticks": 2}',
        'counter.ticks: {"guest": false, "rank": 0, "ticks": 2}',
    ]


def test_run_streams_print_each_response_and_the_end(counter, example, capsys):
    status, out, _ = run(["run", "--stream", 'count={"n": 2}', counter], capsys)
    assert status == 0
    assert out.splitlines()[1:4] == ["counter.count: 0", "counter.count: 1", "counter.count: end of stream"]
    status, out, _ = run(["run", "--stream", 'watch={"key": "a"}', "--rpc", 'put={"key": "a", "value": 5}',
                          example("kvstore.py")], capsys)
    assert out.splitlines()[1:5] == ['kvstore.watch: {"value": null}', "kvstore.put: {}",
                                     'kvstore.watch: {"value": 5}', "kvstore.watch: stream still open"]


def test_run_json_output(counter, capsys):
    status, out, _ = run(["run", "--json", "--rpc", "ticks", "--rpc", "nosuch", counter], capsys)
    records = [json.loads(line) for line in out.splitlines()]
    assert records[1] == {"topic": "counter.ticks", "payload": {"guest": False, "rank": 0, "ticks": 0}}
    assert records[2]["errno"] == errno.ENOSYS and status == 1
    assert any("log" in record for record in records)


def test_run_on_several_ranks(counter, capsys):
    status, out, _ = run(["run", "--size", "3", "--rank", "2", "--rpc", "ticks", counter], capsys)
    assert status == 0
    assert 'counter.ticks: {"guest": false, "rank": 2, "ticks": 0}' in out


def test_run_prints_each_log_line_once_on_one_stream(counter, capsys):
    status, out, err = run(["run", "--rpc", "fail", counter], capsys)
    assert status == 1
    assert out.count("counter.err[0]: RuntimeError: on purpose") == 1
    assert "RuntimeError: on purpose" not in err


def test_run_reports_a_runtime_failure_as_the_broker_does(counter, capsys):
    status, out, err = run(["run", "--rpc", "crash", "--rpc", "ticks", counter], capsys)
    assert status == 1
    assert "Traceback" not in err
    assert "flux-brokermod: the broker went down: counter module runtime failure" in err
    assert "crashing now" in err  # the module's own stderr
    assert "broker.crit[0]: counter module runtime failure" in out


CALLER = """
from flux.brokermod import BrokerModule, request_handler

class Caller(BrokerModule):
    @request_handler("get-a")
    async def get_a(self, msg):
        return await self.handle.rpc("kvstore.get", {"key": "a"})
"""


def test_run_loads_the_modules_a_handler_calls_first(example, write_module, capsys):
    caller = write_module("caller.py", CALLER)
    status, out, err = run(["run", "--load", example("kvstore.py"), "--rpc", 'kvstore.put={"key": "a", "value": 7}',
                            "--rpc", "get-a", caller], capsys)
    assert status == 0, err
    assert 'caller.get-a: {"value": 7}' in out.splitlines()
    lines = out.splitlines()
    assert lines.index("broker.debug[0]: rmmod caller") < lines.index("broker.debug[0]: rmmod kvstore")


def test_run_names_a_load_that_fails(write_module, capsys):
    caller = write_module("caller.py", CALLER)
    status, _, err = run(["run", "--load", "/no/such/kv.py", "--rpc", "get-a", caller], capsys)
    assert status == 1
    assert err.startswith("flux-brokermod: /no/such/kv.py: ") and err.rstrip().endswith("(ENOENT)")


FAKE_FLUX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "fake_flux.py")


def test_check_without_flux_core_says_modules_run_in_memory(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FLUX_BROKERMOD_FLUX", str(tmp_path / "no-flux"))
    status, out, _ = run(["check"], capsys)
    assert status == 1 and out.startswith("flux-core not found")


@pytest.mark.parametrize("set_up", [True, False])
def test_check_outside_an_instance_tells_what_flux_start_would_run(monkeypatch, capsys, set_up):
    monkeypatch.setenv("FLUX_BROKERMOD_FLUX", FAKE_FLUX)
    monkeypatch.delenv("FLUX_URI", raising=False)
    monkeypatch.setenv("FLUX_EXEC_PATH_PREPEND", cli.loader_dir() if set_up else "/elsewhere")
    status, out, _ = run(["check"], capsys)
    if set_up:
        assert status == 0 and "loads .py modules with this library's loader" in out
    else:
        assert status == 1 and 'eval "$(flux-brokermod setup)" before flux start' in out


@pytest.mark.real_flux
@pytest.mark.parametrize("set_up", [True, False])
def test_check_inside_an_instance_asks_it(set_up):
    from flux.brokermod_testing import skip_reason, start_instance

    if skip_reason() is not None:
        pytest.skip(skip_reason())
    with start_instance(setup=set_up) as instance:
        env = dict(instance.environment(), FLUX_URI=instance.uri)
        result = subprocess.run([sys.executable, "-m", "flux._brokermod_cli", "check"],
                                capture_output=True, text=True, env=env, timeout=120)
    if set_up:
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith("this instance loads .py modules with this library")
    else:
        assert result.returncode == 1
        assert "flux-core's own loader" in result.stdout and "ImportError" in result.stdout


def test_run_builds_the_tree_topo_names(example, capsys):
    """--topo is tbon.topo: on kary:2 rank 3's join reaches rank 0's view
    through rank 1; rank 5 is not rank 0."""
    status, out, err = run(["run", "--size", "8", "--topo", "kary:2", "--rank", "3", "--rpc", 'join={"name": "x"}',
                            "--advance", "1", "--rank", "0", "--rpc", 'get={"name": "x"}', "--rank", "5",
                            "--rpc", 'get={"name": "x"}', example("groups.py")], capsys)
    assert status == 1, err
    assert 'groups.get: {"members": "3"}' in out
    assert "groups.get: error EPROTO: this RPC is only available on rank 0" in out
    status, out, err = run(["run", "--size", "4", "--topo", "kary:x", example("groups.py")], capsys)
    assert status == 2 and err == "flux-brokermod: --topo: tbon.topo 'kary:x': k must be an integer >= 0\n"


@pytest.mark.parametrize("size, why", [("0", "an instance has at least 1 rank, not 0"),
                                       ("-3", "an instance has at least 1 rank, not -3"),
                                       ("two", "expected a number of ranks, not 'two'")])
def test_run_refuses_a_size_below_one_in_one_line(example, capsys, size, why):
    """--size 0 and --size -3 used to run silently as one rank and exit 0."""
    with pytest.raises(SystemExit) as exited:
        run(["run", f"--size={size}", "--rpc", "info", example("mymod.py")], capsys)
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"flux-brokermod run: error: argument --size: {why}"
