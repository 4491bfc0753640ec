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
