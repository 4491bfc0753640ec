"""The documentation: Sphinx builds it without a warning, and every code
block marked runnable runs."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")


@pytest.mark.parametrize("builder", ["html", "man"])
def test_sphinx_builds_without_warnings(tmp_path, builder):
    pytest.importorskip("sphinx", reason="Sphinx is in the test extra: pip install -e '.[test]'")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", builder, DOCS, str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    produced = os.listdir(tmp_path)
    assert ("index.html" if builder == "html" else "flux-brokermod.1") in produced


def _runnable_blocks():
    blocks = []
    for name in sorted(os.listdir(DOCS)):
        if not name.endswith(".rst"):
            continue
        with open(os.path.join(DOCS, name)) as f:
            text = f.read()
        for match in re.finditer(r"\.\. code-block:: python\n   :class: runnable\n\n((?:   .*\n|\n)+)", text):
            code = "\n".join(line[3:] for line in match.group(1).splitlines())
            blocks.append((name, code))
    return blocks


def test_there_are_runnable_blocks():
    assert len(_runnable_blocks()) >= 1


@pytest.mark.parametrize("where, code", _runnable_blocks())
def test_runnable_module_blocks_load_and_answer(tmp_path, where, code):
    """Each runnable block is a module file: it loads, and every request
    handler it declares answers an empty request object with a JSON object
    (not an error, not an empty answer)."""
    from flux.brokermod import describe, module_classes
    from flux.membroker import Broker
    from flux import modloader

    path = tmp_path / "hello.py"
    path.write_text(code)
    with Broker() as broker:
        broker.load(str(path))
        module = modloader.import_path(str(path))
        try:
            (cls,) = module_classes(module)
            for handler in describe(cls, "hello")["handlers"]:
                if handler["kind"] == "request":
                    assert isinstance(broker.rpc(handler["topic"], {}).get(), dict), handler["topic"]
        finally:
            modloader.forget_module(module)


def _docs_extra():
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        listed = re.search(r"^docs = \[(.*?)\]", f.read(), re.MULTILINE | re.DOTALL).group(1)
    return {re.split(r"[<>=!~ \[]", name.strip().strip('"'))[0].lower() for name in listed.split(",") if name.strip()}


def _module_level_imports(source):
    """Top-level package names a module imports when it is imported (not
    under ``if TYPE_CHECKING``, nor inside a function or a try block)."""
    import ast

    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.skipif(sys.version_info < (3, 10), reason="sys.stdlib_module_names is Python 3.10+")
def test_the_docs_extra_installs_what_autodoc_imports():
    """`pip install '.[docs]'` then Sphinx must work: every module the docs
    document imports only the standard library, flux, and the docs extra."""
    with open(os.path.join(DOCS, "api.rst")) as f:
        documented = re.findall(r"^\.\. automodule:: (\S+)", f.read(), re.MULTILINE)
    assert "flux.brokermod_testing" in documented
    extra = _docs_extra()
    for module in documented:
        path = os.path.join(ROOT, *module.split("."))
        path = path + ".py" if os.path.exists(path + ".py") else os.path.join(path, "__init__.py")
        with open(path) as f:
            imported = _module_level_imports(f.read())
        outside = {name for name in imported - {"flux", "__future__"} if name not in sys.stdlib_module_names}
        assert outside <= extra, f"{module} imports {sorted(outside - extra)}, which the docs extra lacks"


def test_the_tutorials_test_passes_from_another_directory(tmp_path):
    """The tutorial's module and its test, written side by side, pass when
    pytest runs elsewhere (the module path is the test file's)."""
    with open(os.path.join(DOCS, "tutorial.rst")) as f:
        text = f.read()
    module = re.search(r"\.\. code-block:: python\n   :class: runnable\n\n((?:   .*\n|\n)+)", text).group(1)
    test = next(block for block in re.findall(r"\.\. code-block:: python\n\n((?:   .*\n|\n)+)", text)
                if "def test_greet" in block)
    for name, block in (("hello.py", module), ("test_hello.py", test)):
        (tmp_path / name).write_text("\n".join(line[3:] for line in block.splitlines()) + "\n")
    env = dict(os.environ, FLUX_BROKERMOD_FLUX=str(tmp_path / "no-flux"))  # the in-memory half
    env.pop("PYTEST_ADDOPTS", None)
    result = subprocess.run([sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
                            capture_output=True, text=True, cwd="/", env=env, timeout=120)
    assert "1 passed, 1 skipped" in result.stdout, result.stdout + result.stderr
    assert "no real Flux" in result.stdout
