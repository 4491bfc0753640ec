"""The spec's flows on a real Flux instance running this library.

Each test module shares one private instance (``flux start`` with the setup
that ``flux-brokermod setup`` prints, and ``broker.module-nopanic=1``),
always torn down.  Skipped, with the reason, without flux-core 0.84+.
"""

import errno
import os
import textwrap

import pytest
from _helpers import error_of

from flux.brokermod_testing import module_names, skip_reason, start_instance, wait_for

pytestmark = [
    pytest.mark.real_flux,
    pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason())),
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


@pytest.fixture(scope="module")
def flux(real_instance):
    """This file's tests share conftest's nopanic instance."""
    return real_instance


def test_load_ping_list_stats_remove(flux):
    flux.load(os.path.join(EXAMPLES, "mymod.py"))
    try:
        assert "mymod" in module_names(flux)
        assert flux.rpc("mymod.info").get() == {"name": "mymod"}
        ping = flux.flux("ping", "--count=1", "mymod")
        assert ping.returncode == 0 and "mymod.ping" in ping.stdout
        stats = flux.flux("module", "stats", "mymod")
        assert stats.returncode == 0 and '"rx"' in stats.stdout
    finally:
        flux.remove("mymod")
    assert "mymod" not in module_names(flux)


def test_module_runs_on_this_projects_code(flux, write):
    path = write(
        "whose.py",
        """
        import flux.brokermod, flux.modloader
        from flux.brokermod import BrokerModule, request_handler

        class Whose(BrokerModule):
            @request_handler("files")
            def files(self, msg):
                self.handle.respond(msg, [flux.brokermod.__file__, flux.modloader.__file__])
        """,
    )
    flux.load(path)
    try:
        assert flux.rpc("whose.files").get() == [
            os.path.join(ROOT, "flux", "brokermod.py"),
            os.path.join(ROOT, "flux", "modloader.py"),
        ]
    finally:
        flux.remove("whose")


def test_name_option_renames_module_and_topics(flux):
    flux.load(os.path.join(EXAMPLES, "mymod.py"), name="renamed")
    try:
        assert flux.rpc("renamed.info").get() == {"name": "renamed"}
        assert error_of(flux.rpc("mymod.info"))[0] == errno.ENOSYS
    finally:
        flux.remove("renamed")


def test_arguments_reach_mod_main_and_the_single_subclass(flux, write):
    flux.load(os.path.join(EXAMPLES, "two_modules.py"), "--verbose", "--count=4")
    flux.load(os.path.join(EXAMPLES, "plain_mod_main.py"), "hello", "world")
    single = write(
        "single.py",
        """
        from flux.brokermod import BrokerModule, request_handler

        class Single(BrokerModule):
            @request_handler("args")
            def args_(self, msg):
                self.handle.respond(msg, list(self.args))
        """,
    )
    flux.load(single, "x", "y")
    try:
        assert flux.rpc("two_modules.args").get() == {"args": ["--verbose", "--count=4"], "class": "Primary"}
        assert flux.rpc("plain_mod_main.args").get() == ["hello", "world"]
        assert flux.rpc("single.args").get() == ["x", "y"]
    finally:
        for name in ["two_modules", "plain_mod_main", "single"]:
            flux.remove(name)


def test_two_subclasses_without_mod_main_fail_with_one_line(flux, write):
    path = write(
        "ambiguous.py",
        """
        from flux.brokermod import BrokerModule

        class One(BrokerModule):
            pass

        class Two(BrokerModule):
            pass
        """,
    )
    result = flux.flux("module", "load", path)
    assert result.returncode != 0
    assert f"{path}: several BrokerModule subclasses (One, Two) and no mod_main()" in flux.stderr()
    assert "ambiguous" not in module_names(flux)


def test_syntax_error_names_file_and_line_without_traceback(flux, write):
    path = write("broken.py", "x = 1\ndef f(:\n")
    before = flux.stderr()
    result = flux.flux("module", "load", path)
    assert result.returncode != 0
    new = flux.stderr()[len(before):]
    assert f"{path}:2: SyntaxError" in new
    assert "Traceback" not in new


def test_valueerror_at_start_is_einval_without_traceback(flux, write):
    path = write(
        "badarg.py",
        """
        def mod_main(h, *args):
            raise ValueError("unknown option " + " ".join(args))
        """,
    )
    before = flux.stderr()
    result = flux.flux("module", "load", path, "--frob")
    assert result.returncode == 1
    assert "Invalid argument" in result.stderr
    new = flux.stderr()[len(before):]
    assert "badarg.py: unknown option --frob" in new
    assert "Traceback" not in new
    assert "broker.err[0]: badarg: Invalid argument" in flux.dmesg()


def test_oserror_at_start_reaches_flux_module_load(flux, write):
    path = write(
        "exists.py",
        """
        import errno

        def mod_main(h, *args):
            raise OSError(errno.EEXIST, "service already registered")
        """,
    )
    result = flux.flux("module", "load", path)
    assert result.returncode != 0
    assert "File exists" in result.stderr


def test_set_running_lets_load_return_before_slow_start(flux, write, tmp_path):
    gate, ended = tmp_path / "gate", tmp_path / "ended"
    path = write(
        "slow.py",
        f"""
        import os, time
        from flux.brokermod import BrokerModule, request_handler

        class Slow(BrokerModule):
            def run(self):
                self.set_running()
                deadline = time.monotonic() + 60
                while not os.path.exists({str(gate)!r}) and time.monotonic() < deadline:
                    time.sleep(0.05)
                with open({str(ended)!r}, "w") as f:
                    f.write("the slow start ended")
                super().run()

            @request_handler("ready")
            def ready(self, msg):
                self.handle.respond(msg, {{"ready": True}})
        """,
    )
    flux.load(path)
    # A load that waited for the module's loop would return only after the
    # slow start gave up on the gate (60 s) and wrote `ended`.
    assert not ended.exists()
    gate.write_text("open")
    try:
        assert flux.rpc("slow.ready").get() == {"ready": True}
        assert ended.read_text() == "the slow start ended"
    finally:
        flux.remove("slow")


def test_debug_bits_from_flux_module_debug(flux, write):
    path = write(
        "dbg.py",
        """
        from flux.brokermod import BrokerModule, request_handler

        class Dbg(BrokerModule):
            @request_handler("test")
            def test(self, msg):
                flag = msg.payload["flag"]
                self.handle.respond(msg, {"set": self.debug_test(flag, clear=True)})
        """,
    )
    flux.load(path)
    try:
        assert flux.rpc("dbg.test", {"flag": 4}).get() == {"set": False}
        assert flux.flux("module", "debug", "--setbit", "4", "dbg").returncode == 0
        assert flux.rpc("dbg.test", {"flag": 4}).get() == {"set": True}
        assert flux.rpc("dbg.test", {"flag": 4}).get() == {"set": False}  # cleared
    finally:
        flux.remove("dbg")


def test_every_log_method_and_the_threshold(flux):
    path = os.path.join(EXAMPLES, "logging_levels.py")
    flux.load(path)
    flux.load(path, "info", name="quiet")
    try:
        flux.rpc("logging_levels.emit").get()
        flux.rpc("quiet.emit").get()
        lines = flux.dmesg()
        for level, shown in [
            ("debug", "debug"),
            ("info", "info"),
            ("notice", "notice"),
            ("warning", "warning"),
            ("error", "err"),
            ("critical", "crit"),
            ("alert", "alert"),
            ("emerg", "emerg"),
        ]:
            assert f"logging_levels.{shown}[0]: level {level}" in lines
        assert "quiet.info[0]: level info" in lines
        assert "quiet.debug[0]: level debug" not in lines
    finally:
        flux.remove("logging_levels")
        flux.remove("quiet")


def test_stop_ends_cleanly_and_stop_error_is_a_runtime_failure(flux):
    flux.load(os.path.join(EXAMPLES, "mymod.py"), name="stopper")
    flux.load(os.path.join(EXAMPLES, "reference.py"), name="failer")
    assert flux.flux("event", "pub", "shutdown").returncode == 0
    assert flux.flux("event", "pub", "failer.panic").returncode == 0
    from flux.brokermod_testing import wait_for

    wait_for(lambda: not {"stopper", "failer"} & set(module_names(flux)), what="modules to exit")
    lines = flux.dmesg()
    assert "broker.crit[0]: failer module runtime failure" in lines
    assert not any("stopper module runtime failure" in line for line in lines)
    assert not any(line.startswith("broker.err[0]: stopper:") for line in lines)


def test_allow_guest_with_a_masquerading_guest(flux):
    flux.load(os.path.join(EXAMPLES, "status.py"))
    try:
        assert flux.rpc("status.status", guest=True).get() == {"running": True}
        assert error_of(flux.rpc("status.secret", guest=True)) == (
            errno.EPERM,
            "Request requires owner credentials",
        )
        assert flux.rpc("status.secret").get()["owner"] == os.getuid()
    finally:
        flux.remove("status")


def test_failing_handler_answers_and_module_survives(flux, write):
    path = write(
        "fragile.py",
        """
        import errno
        from flux.brokermod import BrokerModule, request_handler

        class Fragile(BrokerModule):
            @request_handler("key")
            def key(self, msg):
                self.handle.respond(msg, {"x": msg.payload["x"]})

            @request_handler("oserror")
            def oserror(self, msg):
                raise OSError(errno.EEXIST, "already there")
        """,
    )
    flux.load(path)
    try:
        assert error_of(flux.rpc("fragile.key", {"y": 1})) == (errno.EPROTO, "KeyError: missing key 'x'")
        assert error_of(flux.rpc("fragile.key")) == (errno.EPROTO, "TypeError: request has no payload")
        assert error_of(flux.rpc("fragile.oserror")) == (errno.EEXIST, "already there")
        assert flux.rpc("fragile.key", {"x": 5}).get() == {"x": 5}
        assert "fragile" in module_names(flux)
    finally:
        flux.remove("fragile")


def test_modprobe_toml_loads_a_python_module(flux, tmp_path):
    confdir = tmp_path / "modprobe"
    (confdir / "modprobe.d").mkdir(parents=True)
    (confdir / "modprobe.d" / "probed.toml").write_text(
        textwrap.dedent(
            f"""
            [[modules]]
            name = "probed"
            module = "{os.path.join(EXAMPLES, 'two_modules.py')}"
            args = ["from-toml"]
            """
        )
    )
    # flux-core 0.88 documents FLUX_MODPROBE_PATH_PREPEND but only reads _APPEND
    env = {"FLUX_MODPROBE_PATH_APPEND": str(confdir)}
    result = flux.flux("modprobe", "load", "probed", env=env)
    assert result.returncode == 0, result.stderr
    try:
        assert flux.rpc("probed.args").get() == {"args": ["from-toml"], "class": "Primary"}
    finally:
        flux.remove("probed")


def test_flux_cores_scheduler_and_commands_work_under_the_setup(flux):
    run = flux.flux("run", "hostname")
    assert run.returncode == 0 and run.stdout.strip() == os.uname().nodename
    assert "sched-simple" in module_names(flux)
    for cmd in [("jobs", "-a"), ("resource", "list"), ("kvs", "get", "--waitcreate", "--count=1", "resource.R")]:
        result = flux.flux(*cmd)
        assert result.returncode == 0, (cmd, result.stderr)


def test_streaming_request_ends_with_enodata(flux, write):
    path = write(
        "streamer.py",
        """
        import errno
        from flux.brokermod import BrokerModule, request_handler

        class Streamer(BrokerModule):
            @request_handler("count")
            def count(self, msg):
                for i in range(msg.payload["n"]):
                    self.handle.respond(msg, {"i": i})
                self.handle.respond_error(msg, errno.ENODATA)
        """,
    )
    flux.load(path)
    try:
        result = flux.rpc("streamer.count", {"n": 3}, streaming=True)
        assert result.stream() == [{"i": 0}, {"i": 1}, {"i": 2}]
        assert result.answers[-1]["errno"] == errno.ENODATA
    finally:
        flux.remove("streamer")


@pytest.fixture(scope="module")
def flux4():
    instance = start_instance(size=4, attrs={"broker.module-nopanic": "1"})
    try:
        yield instance
    finally:
        instance.stop()


def test_module_on_every_rank_of_four_brokers(flux4, write, tmp_path):
    path = write(
        "ranked.py",
        """
        from flux.brokermod import BrokerModule, event_handler, request_handler

        class Ranked(BrokerModule):
            events = 0

            @request_handler("rank")
            def rank(self, msg):
                self.handle.respond(msg, {"rank": self.handle.get_rank(), "events": self.events})

            @event_handler("poke")
            def poke(self, msg):
                self.events += 1
        """,
    )
    flux4.load(path, rank="all")
    try:
        assert [flux4.rpc("ranked.rank", nodeid=r).get()["rank"] for r in range(4)] == [0, 1, 2, 3]
        assert flux4.flux("event", "pub", "ranked.poke").returncode == 0
        from flux.brokermod_testing import wait_for

        wait_for(
            lambda: all(flux4.rpc("ranked.rank", nodeid=r).get()["events"] == 1 for r in range(4)),
            what="the event on all ranks",
        )
    finally:
        flux4.remove("ranked", rank="all")
    for r in range(4):
        assert error_of(flux4.rpc("ranked.rank", nodeid=r))[0] == errno.ENOSYS


def test_flux_instance_fixture_for_module_authors(flux_instance):
    """The installed fixture starts a private instance with the setup."""
    flux_instance.load(os.path.join(EXAMPLES, "mymod.py"))
    assert flux_instance.rpc("mymod.info").get() == {"name": "mymod"}
    assert flux_instance.environment()["FLUX_EXEC_PATH_PREPEND"].split(":")[0].endswith("_libexec")



def test_instance_shutdown_with_a_module_still_loaded_is_clean():
    """flux-core's loader dies of the broker's SIGTERM at shutdown ("module
    runtime failure", flux start exits 1); this loader stops the reactor."""
    instance = start_instance()
    try:
        instance.load(os.path.join(EXAMPLES, "mymod.py"))
        assert instance.rpc("mymod.info").get() == {"name": "mymod"}
    finally:
        rc = instance.stop()
    assert rc == 0
    assert "runtime failure" not in instance.stderr()


def test_failing_timer_handler_is_logged_and_module_keeps_running(flux, write):
    path = write(
        "ticker.py",
        """
        from flux.brokermod import BrokerModule, request_handler, timer_handler

        class Ticker(BrokerModule):
            ticks = 0

            @timer_handler(0.05, repeat=0.05)
            def tick(self):
                self.ticks += 1
                raise RuntimeError("tick failed")

            @request_handler("ticks")
            def get_ticks(self, msg):
                self.handle.respond(msg, {"ticks": self.ticks})
        """,
    )
    flux.load(path)
    try:
        from flux.brokermod_testing import wait_for

        wait_for(lambda: flux.rpc("ticker.ticks").get()["ticks"] >= 3, what="three ticks")
        lines = flux.dmesg()
        assert "ticker.err[0]: timer tick handler failed: Traceback (most recent call last):" in lines
        assert "ticker.err[0]: RuntimeError: tick failed" in lines
        assert "ticker" in module_names(flux)
    finally:
        flux.remove("ticker")


def test_readme_real_instance_snippet(flux_instance, tmp_path, monkeypatch):
    import re

    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.DOTALL)
    module_src = blocks[0]
    snippet = next(b for b in blocks if "def test_on_real_flux" in b)
    (tmp_path / "mymod.py").write_text(module_src)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(snippet, "README-real", "exec"), namespace)
    namespace["test_on_real_flux"](flux_instance)


@pytest.mark.parametrize("scheduler", ["sched-fifo", "sched-backfill"])
def test_flux_cores_other_python_schedulers_run_jobs_on_this_library(flux, scheduler):
    """flux-core's Scheduler subclasses (flux/scheduler.py) run unchanged."""
    flux.remove("sched-simple")
    try:
        loaded = flux.flux("module", "load", scheduler)
        assert loaded.returncode == 0, loaded.stderr
        run = flux.flux("run", "hostname")
        assert run.returncode == 0 and run.stdout.strip() == os.uname().nodename
        flux.remove(scheduler)
    finally:
        flux.flux("module", "load", "sched-simple")
    assert "sched-simple" in module_names(flux)


def test_flux_cores_sched_simple_runs_on_this_library(flux):
    """flux-core 0.88's default scheduler, sched-simple, is a Python module:
    under the setup it runs on this project's loader and schedules jobs."""
    processes = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                processes.append(f.read().replace(b"\0", b" ").decode(errors="replace").strip())
        except (OSError, ValueError):
            continue
    ours = os.path.join(ROOT, "flux", "_libexec", "flux-module-python-exec.py")
    assert any(ours in line and line.endswith("sched-simple.py") for line in processes), "no sched-simple on our loader"
    run = flux.flux("run", "hostname")
    assert run.returncode == 0 and run.stdout.strip() == os.uname().nodename


@pytest.mark.parametrize("scheduler", ["sched-fifo", "sched-backfill"])
def test_flux_cores_schedulers_annotate_and_cancel_pending_jobs_on_this_library(real_broker, scheduler):
    """RFC 27: the job manager sends sched.alloc without a matchtag and the
    scheduler answers a pending job several times: a forecast annotation
    (t_estimate), then its final cancel.  On an instance WITHOUT
    broker.module-nopanic, a refused second answer would kill the scheduler
    and take the instance down (the instance fixture checks it exits 0)."""
    flux = real_broker
    flux.remove("sched-simple")
    jobs = []
    try:
        loaded = flux.flux("module", "load", scheduler)
        assert loaded.returncode == 0, loaded.stderr
        cores = flux.flux("resource", "list", "--state=free", "-no", "{ncores}").stdout.strip()

        def submit(*command):
            submitted = flux.flux("submit", f"-n{cores}", "--time-limit=3600s", *command)
            assert submitted.returncode == 0, submitted.stderr
            jobs.append(submitted.stdout.strip())
            return jobs[-1]

        running = submit("sleep", "600")
        assert flux.flux("job", "wait-event", "--timeout=30", running, "alloc").returncode == 0
        pending = submit("hostname")
        wait_for(lambda: flux.flux("jobs", "-no", "{annotations.sched.t_estimate}", pending).stdout.strip() != "",
                 what="a forecast annotation (t_estimate) on the pending job")
        assert flux.flux("cancel", pending).returncode == 0
        assert flux.flux("job", "wait-event", "--timeout=30", pending, "clean").returncode == 0
        status = flux.flux("job", "status", pending)
        assert status.returncode != 0  # canceled before it ran
        assert scheduler in module_names(flux)
        assert flux.flux("cancel", running).returncode == 0
        run = flux.flux("run", "hostname")
        assert run.returncode == 0 and run.stdout.strip() == os.uname().nodename, run.stderr
        lines = flux.dmesg()
        assert not [line for line in lines if "AnswerError" in line or "runtime failure" in line], lines[-20:]
    finally:
        for job in jobs:
            flux.flux("cancel", job)
        flux.flux("module", "remove", "-f", scheduler)
        flux.flux("module", "load", "sched-simple")
    assert "sched-simple" in module_names(flux)


def test_a_response_before_its_future_is_used_is_lost(flux, tmp_path):
    """What test_membroker.py's test of the same name models: two gets in
    a row work (the handle clone requeues the second answer); a then() on
    a future whose answer the reactor already had never completes."""
    from test_membroker import EARLY_RESPONSES

    for name in ("echo", "two_gets", "late_then", "kept"):
        path = tmp_path / f"{name}.py"
        path.write_text(EARLY_RESPONSES + f"\nmod_main = {name}\n")
    flux.load(str(tmp_path / "echo.py"))
    flux.load(str(tmp_path / "two_gets.py"), name="two")
    flux.load(str(tmp_path / "late_then.py"), name="late")
    flux.load(str(tmp_path / "kept.py"), name="kept")
    try:
        assert flux.rpc("two.go").get() == [1, 2]
        assert flux.rpc("late.go").get() == [1, 2]
        assert flux.rpc("kept.send").get() == {}
        code = ("import flux\ntry:\n    flux.Flux().rpc('kept.read').wait_for(3).get()\n"
                "except OSError as exc:\n    print(exc.errno)")
        result = flux.flux("python", "-c", code)
        assert result.stdout.strip() == str(errno.ETIMEDOUT), result.stderr
    finally:
        for name in ("echo", "two", "late", "kept"):
            flux.remove(name)

