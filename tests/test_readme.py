"""The README's two commands are the ones CI and newcomers run."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    return re.findall(r"^    (python3 -m venv .*)$", text.split("---")[0], re.MULTILINE)


def test_readme_starts_with_two_commands():
    commands = readme_commands()
    assert len(commands) == 2
    assert "flux-brokermod run" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    assert readme_commands()[1] in ci.splitlines()


def test_readme_example_file_exists():
    paths = re.findall(r"(examples/\S+\.py)", readme_commands()[0])
    assert paths and all(os.path.exists(os.path.join(ROOT, p)) for p in paths)


def python_blocks():
    with open(os.path.join(ROOT, "README.md")) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.DOTALL)


def test_readme_module_and_test_snippets_work(tmp_path, monkeypatch):
    """The README's module and its membroker test run as written."""
    blocks = python_blocks()
    module_src = next(b for b in blocks if "class MyModule" in b)
    test_src = next(b for b in blocks if "def test_info" in b)
    (tmp_path / "mymod.py").write_text(module_src)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(test_src, "README-test", "exec"), namespace)
    namespace["test_info"]()


def test_readme_census_answers_as_it_says(tmp_path):
    """The README's reduction module, on a kary:2 tree of 64 ranks."""
    from flux.membroker import Broker

    source = next(b for b in python_blocks() if "class Census" in b)
    (tmp_path / "census.py").write_text(source)
    with Broker(size=64, attrs={"tbon.topo": "kary:2"}) as broker:
        broker.load(str(tmp_path / "census.py"), rank="all")
        assert broker.rpc("census.count").get() == {"value": 64, "ranks": "0-63", "missing": "", "errors": {}}


def test_readme_tree_test_runs_on_both_brokers(tmp_path):
    """The README's flux_broker test of the census, marked size=8 kary:2,
    run by pytest as a module author would (real half: with flux on PATH)."""
    import subprocess
    import sys

    from flux.brokermod_testing import skip_reason

    blocks = python_blocks()
    (tmp_path / "census.py").write_text(next(b for b in blocks if "class Census" in b))
    (tmp_path / "test_census.py").write_text(next(b for b in blocks if "def test_census" in b))
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "test_census.py"],
                            capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED test_census.py::test_census[memory]" in result.stdout
    if skip_reason() is None:
        assert "PASSED test_census.py::test_census[real]" in result.stdout


def _ci_pythons(env=None):
    import subprocess
    import sys

    return subprocess.run([sys.executable, os.path.join(ROOT, ".ci", "pythons.py")],
                          capture_output=True, text=True, env=env, timeout=120)


def test_ci_runs_the_test_command_on_the_oldest_and_newest_python_too():
    """.ci/run takes its Pythons from .ci/pythons.py: the default python3
    and the oldest and newest this machine has within requires-python."""
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    assert "python3 .ci/pythons.py" in ci and '"$python" -m venv' in ci
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        floor = int(re.search(r'requires-python = ">=3\.(\d+)"', f.read()).group(1))
    found = _ci_pythons()
    assert found.returncode == 0, found.stderr
    rows = [line.split(" ", 1) for line in found.stdout.splitlines()]
    assert rows and all(re.fullmatch(r"3\.\d+", version) and os.path.isabs(path) for version, path in rows)
    minors = [int(version.split(".")[1]) for version, _ in rows]
    assert minors == sorted(set(minors)) and min(minors) >= floor


def test_ci_says_in_one_line_which_python_the_machine_lacks(tmp_path):
    """With no other Python to be found (a PATH with python3 alone, an
    empty pyenv), the floor's absence is one line and the default runs."""
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    env = {"PATH": str(bin_dir), "PYENV_ROOT": str(tmp_path / "no-pyenv"), "HOME": str(tmp_path)}
    found = _ci_pythons(env)
    assert found.returncode == 0, found.stderr
    mine = "%d.%d" % sys.version_info[:2]
    assert found.stdout == f"{mine} {bin_dir / 'python3'}\n"
    if mine != "3.9":
        assert found.stderr == ("CI: Python 3.9 (requires-python's floor) is not on this machine: "
                                "not run on it\n")
