"""The fidelity ledger (docs/fidelity.md) against the suite itself.

Every test the ledger names must exist; a row marked ``both`` must name a
test that runs on a real instance as well as in memory; a ``memory`` row
must say why it does not run on a real one.  Which broker a test runs on
is read from its source with ``ast`` (no collection, no flux-core):

* **both**: the test takes, directly or through fixtures, a fixture
  parametrised with ``"real"`` (``flux_broker``, ``target``...); or it
  branches on ``skip_reason()`` to run a real half (the plugin's own
  tests); or it needs a real instance and also builds an in-memory broker
  (itself or through a helper), to compare the two;
* **real**: it needs a real instance: a real-instance fixture, a
  ``real_flux`` or ``skipif(skip_reason() ...)`` mark (its own or the
  file's), or a call to ``start_instance()``/``find_flux()``;
* **memory**: anything else.
"""

import ast
import os
import re

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LEDGER = os.path.join(ROOT, "docs", "fidelity.md")
BROKERS = ("both", "real", "memory", "none")

REAL_FIXTURES = {"real_broker", "real_instance", "flux_instance", "flux_session_instance", "flux_session_instances"}
REAL_CALLS = {"start_instance", "find_flux"}
MEMORY_CALLS = {"Broker", "MemTarget", "MemoryBroker", "Simulation"}


# Which brokers each test runs on --------------------------------------------


def _called(node):
    """Names of the functions *node* calls."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            func = sub.func
            yield func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")


def _is_real_mark(text):
    return "real_flux" in text or ("skipif" in text and "skip_reason()" in text)


def _has_real_param(decorator):
    if not isinstance(decorator, ast.Call):
        return False
    for keyword in decorator.keywords:
        if keyword.arg == "params" and isinstance(keyword.value, (ast.List, ast.Tuple)):
            return any(isinstance(e, ast.Constant) and e.value == "real" for e in keyword.value.elts)
    return False


class _Fixture:
    def __init__(self, node):
        source = ast.unparse(node)
        self.args = [a.arg for a in node.args.args if a.arg not in ("self", "request")]
        self.both = any(_has_real_param(d) for d in node.decorator_list)
        fake = "setenv" in source and "FLUX_BROKERMOD_FLUX" in source  # a fake flux command
        self.real = not fake and (bool(set(_called(node)) & REAL_CALLS) or any(
            isinstance(s, ast.Constant) and s.value in REAL_FIXTURES for s in ast.walk(node)))


def _is_fixture(node):
    return any(re.match(r"(pytest\.)?fixture\b", ast.unparse(d)) for d in node.decorator_list)


def _fixtures(tree):
    return {node.name: _Fixture(node) for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _is_fixture(node)}


def _runs_a_real_half(node):
    """``if ... skip_reason() ...:`` whose branch does more than skip."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.If) and "skip_reason()" in ast.unparse(sub.test):
            if sub.body and "pytest.skip" not in ast.unparse(sub.body[0]):
                return True
    return False


def _parse(path):
    with open(path) as f:
        return ast.parse(f.read())


def test_kinds(root=ROOT):
    """{"test_x.py::test_name": "both" | "real" | "memory"} for every test of tests/."""
    tests_dir = os.path.join(root, "tests")
    shared = {}
    for rel in ("flux_brokermod_pytest.py", os.path.join("tests", "conftest.py")):
        shared.update(_fixtures(_parse(os.path.join(root, rel))))
    trees = {name: _parse(os.path.join(tests_dir, name)) for name in sorted(os.listdir(tests_dir))
             if name.endswith(".py")}
    helpers = {}  # what each helper function of the suite calls
    for tree in trees.values():
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("test"):
                helpers.setdefault(node.name, set()).update(_called(node))

    def reach(called):
        seen, todo = set(called), list(called)
        while todo:
            for name in helpers.get(todo.pop(), ()):
                if name not in seen:
                    seen.add(name)
                    todo.append(name)
        return seen

    kinds = {}
    for name, tree in trees.items():
        if not (name.startswith("test_") and name.endswith(".py")):
            continue
        fixtures = dict(shared)
        fixtures.update(_fixtures(tree))
        file_real = any(
            isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets)
            and _is_real_mark(ast.unparse(node.value)) for node in tree.body)

        def visit(body, prefix=""):
            for node in body:
                if isinstance(node, ast.ClassDef):
                    visit(node.body, prefix + node.name + "::")
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                    if _is_fixture(node):
                        continue
                    both = real = False
                    seen, todo = set(), [a.arg for a in node.args.args if a.arg != "self"]
                    while todo:
                        arg = todo.pop()
                        if arg in seen:
                            continue
                        seen.add(arg)
                        real |= arg in REAL_FIXTURES
                        fixture = fixtures.get(arg)
                        if fixture is not None:
                            both |= fixture.both
                            real |= fixture.real
                            todo.extend(fixture.args)
                    called = reach(set(_called(node)))
                    real |= file_real or any(_is_real_mark(ast.unparse(d)) for d in node.decorator_list)
                    real |= bool(called & REAL_CALLS)
                    both |= _runs_a_real_half(node)
                    if real and (called & MEMORY_CALLS or any("in_memory" in c for c in called)):
                        both = True  # one body, both brokers, compared
                    kinds[f"{name}::{prefix}{node.name}"] = "both" if both else "real" if real else "memory"

        visit(tree.body)
    return kinds


test_kinds.__test__ = False  # a helper, named for what it gives


# The ledger ------------------------------------------------------------------

_TEST_NAME = re.compile(r"`([\w./-]+\.py::[\w:]+)(?:\[[^`]*\])?`")


def ledger_rows(path=LEDGER):
    """Each row of the ledger's table: a dict of id, section, behaviour, tests, brokers, why."""
    rows = []
    with open(path) as f:
        for line in f:
            if not line.startswith("| ") or line.startswith("| id |"):
                continue
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            assert len(cells) == 6, f"a ledger row has 6 cells, not {len(cells)}: {line.strip()}"
            row_id, section, behaviour, tests, brokers, why = cells
            rows.append({"id": row_id, "section": section, "behaviour": behaviour,
                         "tests": _TEST_NAME.findall(tests), "brokers": brokers, "why": why})
    return rows


def missing_tests(rows, kinds):
    """Rows that name a test the suite does not have."""
    return [f"{row['id']}: {test}" for row in rows for test in row["tests"] if test not in kinds]


def unfounded_both(rows, kinds):
    """``both`` rows whose tests are neither a two-broker test nor a memory+real pair."""
    bad = []
    for row in rows:
        if row["brokers"] != "both":
            continue
        found = {kinds.get(test) for test in row["tests"]}
        if "both" not in found and not {"memory", "real"} <= found:
            bad.append(f"{row['id']}: {sorted(k for k in found if k)} ({', '.join(row['tests']) or 'no test'})")
    return bad


def unexplained(rows):
    """``memory`` and ``none`` rows that do not say why they do not run for real."""
    return [row["id"] for row in rows if row["brokers"] in ("memory", "none") and not row["why"]]


def malformed(rows):
    """Rows with an unknown brokers value, a repeated id, or a tested row without a test."""
    bad = [f"{row['id']}: brokers {row['brokers']!r}" for row in rows if row["brokers"] not in BROKERS]
    ids = [row["id"] for row in rows]
    bad += [f"{row_id}: repeated" for row_id in sorted({i for i in ids if ids.count(i) > 1})]
    bad += [f"{row['id']}: no test named" for row in rows if row["brokers"] != "none" and not row["tests"]]
    return bad


@pytest.fixture(scope="module")
def kinds():
    return test_kinds()


@pytest.fixture(scope="module")
def rows():
    return ledger_rows()


def test_every_test_the_ledger_names_exists(rows, kinds):
    assert rows, "the ledger has no rows"
    assert missing_tests(rows, kinds) == []


def test_a_both_row_names_a_test_that_runs_on_a_real_instance(rows, kinds):
    assert unfounded_both(rows, kinds) == []


def test_a_memory_row_says_why_it_does_not_run_on_a_real_instance(rows):
    assert unexplained(rows) == []
    counts = {kind: sum(row["brokers"] == kind for row in rows) for kind in BROKERS}
    convert = sum(row["brokers"] == "memory" and row["why"].startswith("convert:") for row in rows)
    print(f"\nledger: {len(rows)} rows, {counts}; memory rows that could run for real: {convert}")


def test_every_row_is_well_formed(rows):
    assert malformed(rows) == []


def test_the_check_catches_a_misspelled_name_and_a_memory_test_called_both(kinds):
    """The checks above can fail: a broken row is reported."""
    memory_only = next(name for name, kind in sorted(kinds.items()) if kind == "memory")
    real_only = next(name for name, kind in sorted(kinds.items()) if kind == "real")
    two_brokers = next(name for name, kind in sorted(kinds.items()) if kind == "both")
    broken = [
        {"id": "x-1", "tests": ["test_contract.py::test_name_is_basname_up_to_first_dot"], "brokers": "both", "why": ""},
        {"id": "x-2", "tests": [memory_only], "brokers": "both", "why": ""},
        {"id": "x-3", "tests": [real_only], "brokers": "both", "why": ""},
        {"id": "x-4", "tests": [memory_only], "brokers": "memory", "why": ""},
        {"id": "x-5", "tests": [memory_only, real_only], "brokers": "both", "why": ""},
        {"id": "x-6", "tests": [two_brokers], "brokers": "sometimes", "why": ""},
    ]
    assert missing_tests(broken, kinds) == ["x-1: test_contract.py::test_name_is_basname_up_to_first_dot"]
    assert [line.split(":")[0] for line in unfounded_both(broken, kinds)] == ["x-1", "x-2", "x-3"]
    assert unexplained(broken) == ["x-4"]
    assert malformed(broken) == ["x-6: brokers 'sometimes'"]


def test_the_classifier_knows_each_kind_of_test(kinds):
    """Known tests of each kind, so a change in how the suite is written
    that the classifier misses shows here first."""
    assert kinds["test_config.py::test_followers_get_the_leaders_configuration"] == "both"  # flux_broker
    assert kinds["test_contract.py::test_unknown_method_is_enosys"] == "both"  # probe -> target
    assert kinds["test_no_crash.py::test_system_exit_in_a_handler_answers_einval"] == "both"  # three brokers
    assert kinds["test_tree_real.py::test_the_in_memory_tree_is_the_real_one"] == "both"  # compares in one body
    assert kinds["test_plugin.py::test_one_test_body_runs_on_both_brokers"] == "both"  # a real half when found
    assert kinds["test_real_flux.py::test_load_ping_list_stats_remove"] == "real"  # the file's pytestmark
    assert kinds["test_lifecycle.py::test_teardown_runs_once_when_the_instance_shuts_down"] == "real"
    assert kinds["test_membroker.py::test_timers_fire_in_due_order"] == "memory"
    assert kinds["test_plugin.py::test_dmesg_drops_timestamps"] == "memory"  # a fake flux command
