"""``flux-brokermod modprobe``: the files that load a module at instance start."""

import errno
import os
import subprocess
import sys

import pytest

from flux import _brokermod_cli, _modprobe
from flux.brokermod_testing import FluxInstance, find_flux, skip_reason

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PULSE = os.path.join(ROOT, "examples", "pulse.py")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "flux._brokermod_cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_the_entry_and_the_rc1_script():
    files = _modprobe.startup_files("/srv/mods/pulse.py", "pulse", ["interval=5", 'topic=a "b"'], ranks="0-3",
                                    after=["kvs"], requires=["kvs"])
    assert files == {
        "modprobe.d/pulse.toml": (
            "# Written by flux-brokermod modprobe: loaded at start by rc1.d/pulse.py.\n"
            "[[modules]]\n"
            'name = "pulse"\n'
            'module = "/srv/mods/pulse.py"\n'
            'ranks = "0-3"\n'
            'args = ["interval=5", "topic=a \\"b\\""]\n'
            'after = ["kvs"]\n'
            'requires = ["kvs"]\n'),
        "rc1.d/pulse.py": (
            '"""Load pulse when the instance starts (see modprobe.d/pulse.toml)."""\n\n\n'
            "def setup(context):\n    context.load_modules(['pulse'])\n"),
    }


def test_a_module_that_provides_a_service_is_loaded_as_that_service():
    files = _modprobe.startup_files("/srv/fair.py", "fair", provides=["sched", "feasibility"])
    assert 'provides = ["sched", "feasibility"]\n' in files["modprobe.d/fair.toml"]
    assert "context.load_modules(['sched', 'feasibility'])" in files["rc1.d/fair.py"]


@pytest.mark.parametrize("kwargs, text", [
    ({"name": "my.mod"}, "module name 'my.mod': letters, digits, '_' and '-' only (a dot is not allowed)"),
    ({"ranks": "0-x"}, "ranks '0-x': give an idset (0-3,7), 'all', '>N' or '<N'"),
    ({"after": ["kvs ok"]}, "after 'kvs ok' is not a module or service name"),
    ({"path": "mods/pulse.py"}, "module path 'mods/pulse.py' is not absolute: every broker reads it from its "
                                "own directory"),
])
def test_what_modprobe_would_refuse_is_refused_in_one_line(kwargs, text):
    arguments = {"path": "/srv/pulse.py", "name": "pulse", **kwargs}
    with pytest.raises(_modprobe.ModprobeError) as info:
        _modprobe.startup_files(**arguments)
    assert str(info.value) == text


def test_the_command_checks_the_module_and_its_arguments_before_writing(tmp_path):
    bad = cli("modprobe", "--dir", str(tmp_path), PULSE, "intervall=5")
    assert bad.returncode == 1
    assert bad.stderr.strip() == (f"flux-brokermod: modprobe: {PULSE}: unknown option 'intervall=5'; options: "
                                  f"interval (float, default 1.0), topic (str, default 'pulse.beat'), verbose "
                                  f"(flag, default False)")
    assert not os.listdir(tmp_path)
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    result = cli("modprobe", "--dir", str(tmp_path / "out"), str(broken))
    assert result.returncode == 1 and "SyntaxError" in result.stderr and len(result.stderr.splitlines()) == 1
    good = cli("modprobe", "--dir", str(tmp_path / "out"), "--after", "kvs", PULSE, "interval=5")
    assert good.returncode == 0, good.stderr
    assert good.stdout.splitlines() == [f"wrote {tmp_path}/out/modprobe.d/pulse.toml",
                                        f"wrote {tmp_path}/out/rc1.d/pulse.py"]


def test_print_shows_the_files_without_writing(tmp_path):
    result = cli("modprobe", "--dir", str(tmp_path), "--print", PULSE)
    assert result.returncode == 0
    assert f"# {tmp_path}/modprobe.d/pulse.toml\n" in result.stdout and not os.listdir(tmp_path)


@pytest.mark.real_flux
@pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))
def test_an_eight_broker_instance_starts_with_the_module_on_every_rank_and_exits_0(tmp_path):
    """The files the command writes, under FLUX_MODPROBE_PATH_APPEND: every
    broker's rc1 loads the module (after kvs), with its arguments and the
    instance configuration's table; rc3 removes it; the instance exits 0."""
    assert cli("modprobe", "--dir", str(tmp_path / "modprobe"), "--after", "kvs", PULSE,
                "verbose=true").returncode == 0
    config = tmp_path / "config"
    config.mkdir()
    (config / "pulse.toml").write_text("[pulse]\ninterval = 30\n")
    instance = FluxInstance(find_flux(), size=8, config_path=str(config),
                            env={"FLUX_MODPROBE_PATH_APPEND": str(tmp_path / "modprobe")})
    instance.start()
    try:
        listed = instance.flux("exec", "-r", "all", "sh", "-c", "flux module list | grep -c '^pulse '")
        assert listed.stdout.split() == ["1"] * 8, listed.stderr
        stats = instance.flux("exec", "-r", "5", "flux", "module", "stats", "pulse")
        assert stats.returncode == 0, stats.stderr
        assert "pulse.info[0]: beating every 30s on rank 0 of 8" in "\n".join(instance.dmesg())
    finally:
        assert instance.stop() == 0, instance.stderr()[-3000:]
    assert "pulse" not in instance.stderr()  # nothing went wrong with it, at start or at shutdown


SHORTEST = os.path.join(ROOT, "examples", "sched-shortest.py")


def _older_flux_core_than(version):
    from flux.brokermod_testing import flux_version

    found = find_flux()
    return found is not None and (flux_version(found) or (0,)) < version


@pytest.mark.real_flux
@pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))
@pytest.mark.skipif(_older_flux_core_than((0, 88, 0)), reason="flux.scheduler needs flux-core 0.88+")
def test_a_site_scheduler_replaces_sched_simple_and_starts_jobs_in_its_order(tmp_path):
    """examples/sched-shortest.py, made the scheduler with --provides: with
    simulated execution, pending jobs start shortest first, and a pending
    job that is cancelled never runs."""
    written = cli("modprobe", "--dir", str(tmp_path), "--provides", "sched", "--provides", "feasibility", SHORTEST)
    assert written.returncode == 0, written.stderr
    instance = FluxInstance(find_flux(), size=1, env={"FLUX_MODPROBE_PATH_APPEND": str(tmp_path)})
    instance.start()
    try:
        modules = instance.flux("module", "list").stdout
        assert "sched-shortest" in modules and "sched-simple" not in modules, modules

        def submit(limit, run, name):
            result = instance.flux("submit", "--exclusive", "-N1", f"-t{limit}", f"--job-name={name}",
                                   f"--setattr=system.exec.test.run_duration={run}", "true")
            assert result.returncode == 0, result.stderr
            return result.stdout.strip()

        submit("30s", "4s", "blocker")  # holds the only node while the others queue
        for limit in ("30s", "10s", "20s"):
            submit(limit, "0.1s", f"t{limit}")
        cancelled = submit("1s", "0.1s", "cancelme")  # the shortest: it would run next
        assert instance.flux("job", "wait-event", cancelled, "priority").returncode == 0
        assert instance.flux("cancel", cancelled).returncode == 0
        drained = instance.flux("queue", "drain", timeout=60)
        assert drained.returncode == 0, drained.stderr
        rows = [line.split() for line in instance.flux("jobs", "-a", "-n", "-o", "{name} {t_run} {result}")
                .stdout.splitlines()]
        runs = {name: (float(t_run), result) for name, t_run, result in rows}
        started = sorted((t_run, name) for name, (t_run, result) in runs.items() if result == "COMPLETED")
        assert [name for _, name in started] == ["blocker", "t10s", "t20s", "t30s"], runs  # blocker: 30s, first
        assert runs["cancelme"] == (0.0, "CANCELED"), runs
    finally:
        assert instance.stop() == 0, instance.stderr()[-3000:]


# Issue 35, item 1: modprobe wrote files that the next start's rc1 failed
# to load.  What the load refuses before setup() runs, modprobe refuses.

HEADER = """\
from __future__ import annotations
from flux.brokermod import BrokerModule, Option, reduce_handler, request_handler, timer_handler
"""

REFUSED = {
    "timer-after": ("""
class M(BrokerModule):
    interval = Option(float, default=1.0)

    @timer_handler("interval", repeat="interval")
    def tick(self):
        pass
""", ["interval=-1"], "timer tick: after='interval' must name an option or attribute holding a finite number of "
                      "seconds >= 0, not -1.0"),
    "timer-repeat": ("""
class M(BrokerModule):
    every = Option(int, default=5)

    @timer_handler(0, repeat="every")
    def tick(self):
        pass
""", ["every=-3"], "timer tick: repeat='every' must name an option or attribute holding a finite number of "
                   "seconds >= 0, not -3"),
    "timer-class-attribute": ("""
class M(BrokerModule):
    period = -1

    @timer_handler("period")
    def tick(self):
        pass
""", [], "timer tick: after='period' must name an option or attribute holding a finite number of seconds >= 0, "
         "not -1"),
    "reduction-timeout": ("""
class M(BrokerModule):
    t = Option(float, default=2.0)

    @reduce_handler("count", combine=max, timeout="t")
    def count(self, msg):
        return 1
""", ["t=0"], "reduction count: timeout='t' must name an option or attribute holding a finite number of "
              "seconds > 0, not 0.0"),
    "reduction-combine-missing": ("""
class M(BrokerModule):
    @reduce_handler("count", combine="merge")
    def count(self, msg):
        return 1
""", [], "@reduce_handler('m.count') on count: combine='merge' names no method of M"),
    "reduction-combine-async": ("""
class M(BrokerModule):
    async def merge(self, a, b):
        return a + b

    @reduce_handler("count", combine="merge")
    def count(self, msg):
        return 1
""", [], "@reduce_handler('m.count') on count: combine must be a plain function of two values, not coroutine "
         "'merge'"),
    "payload-annotation": ("""
class M(BrokerModule):
    @request_handler("get")
    def get(self, msg, *, key: Nonesuch):
        return key
""", [], "M.get: cannot read the annotations: name 'Nonesuch' is not defined"),
}

# What only an instance can tell is left to the load, which accepts these.
ACCEPTED = {
    "property": ("""
class M(BrokerModule):
    @property
    def period(self):
        return 5.0

    @timer_handler("period")
    def tick(self):
        pass
""", []),
    "own-init": ("""
class M(BrokerModule):
    def __init__(self, h, *args):
        self.period = 5.0
        super().__init__(h, *args)

    @timer_handler("period", repeat="period")
    def tick(self):
        pass
""", []),
    "good-values": (REFUSED["timer-after"][0] + """
    t = Option(float, default=2.0)

    @reduce_handler("count", combine=max, timeout="t")
    def count(self, msg):
        return 1
""", ["interval=0.5", "t=3"]),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_modprobe_refuses_in_one_line_what_the_load_refuses_before_setup(tmp_path, case):
    source, args, text = REFUSED[case]
    module = tmp_path / "m.py"
    module.write_text(HEADER + source)
    out = tmp_path / "modprobe"
    result = cli("modprobe", "--dir", str(out), str(module), *args)
    assert (result.returncode, result.stderr) == (1, f"flux-brokermod: modprobe: {module}: {text}\n")
    assert result.stdout == "" and not out.exists()


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_modprobe_leaves_to_the_load_what_only_an_instance_can_tell(tmp_path, case):
    source, args = ACCEPTED[case]
    module = tmp_path / "m.py"
    module.write_text(HEADER + source)
    result = cli("modprobe", "--dir", str(tmp_path / "modprobe"), str(module), *args)
    assert (result.returncode, result.stderr) == (0, "")
    assert sorted(os.listdir(tmp_path / "modprobe")) == ["modprobe.d", "rc1.d"]


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_modprobe_refuses_the_load_refuses_with_the_same_line(target, write, case):
    """On the in-memory broker and on a real instance (flux on PATH): the
    file and arguments modprobe refuses fail the load, saying the same."""
    source, args, text = REFUSED[case]
    before = target.modules()
    try:
        errnum, said = target.load_error(write("m.py", HEADER + source), *args)
    finally:
        target.cleanup(before)  # should the load succeed, the next case's must not find m loaded
    assert errnum == errno.EINVAL and text in said


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_what_modprobe_leaves_to_the_load_the_load_accepts(target, write, case):
    source, args = ACCEPTED[case]
    before = target.modules()
    try:
        target.load(write("m.py", HEADER + source), *args)
        assert "m" in target.modules()
    finally:
        target.cleanup(before)
