"""Loading a module file, on both brokers (the fidelity ledger's loading rows).

Each test writes its module to a file and loads it, unchanged, on the
in-memory broker and on a real instance (the ``flux_broker`` fixture), so
what the in-memory tests of the same rows promise is checked where it
matters too.
"""

import errno
import os
import re
import textwrap

import pytest
from flux.membroker._surface import current

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MYMOD = os.path.join(ROOT, "examples", "mymod.py")


@pytest.fixture
def module_file(tmp_path):
    """``module_file("name.py", source) -> path`` of the file written."""

    def write(filename, source):
        path = tmp_path / filename
        path.write_text(textwrap.dedent(source))
        return str(path)

    return write


def one_line_with(text, fragment):
    """The one line of *text* that holds *fragment* (there must be one)."""
    lines = [line for line in text.splitlines() if fragment in line]
    assert lines, f"{fragment!r} not in:\n{text}"
    return lines[0]


# load-5: no quoting ------------------------------------------------------------

ARGS = """
from flux.brokermod import BrokerModule, request_handler


class Args(BrokerModule):
    @request_handler("args")
    def args_(self, msg):
        return {"args": list(self.args)}
"""


def test_quote_characters_stay_in_the_arguments(flux_broker, module_file):
    """'"hello world"' is two arguments, '"hello' and 'world"', and quote
    characters stay part of the arguments, as flux-core's loader splits them."""
    path = module_file("args.py", ARGS)
    flux_broker.load(path, '"hello world"', "'x'", '"y"')
    assert flux_broker.rpc("args.args").get() == {"args": ['"hello', 'world"', "'x'", '"y"']}


# load-9: a subclass imported from another file ---------------------------------

SHARED_BASE = """
from flux.brokermod import BrokerModule, request_handler


class SharedBase(BrokerModule):
    @request_handler("whoami")
    def whoami(self, msg):
        return {"class": type(self).__name__, "name": self.name}
"""

# The base class's file is imported by path, so the module process of a real
# broker finds it without anything added to the instance's PYTHONPATH.
IMPORT_BASE = """
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "shared_base_mod", os.path.join(os.path.dirname(os.path.abspath(__file__)), "shared_base_mod.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)
SharedBase = _base.SharedBase
"""


def test_a_subclass_imported_from_another_file_is_not_the_entry_point(flux_broker, module_file):
    """The one subclass defined in the file is the module, not the imported
    base; a file that only imports a subclass has no entry point, one line
    naming the file."""
    module_file("shared_base_mod.py", SHARED_BASE)
    child = module_file("child_mod.py", IMPORT_BASE + "\n\nclass Child(SharedBase):\n    pass\n")
    flux_broker.load(child)
    assert flux_broker.rpc("child_mod.whoami").get() == {"class": "Child", "name": "child_mod"}

    only_import = module_file("only_import_mod.py", IMPORT_BASE)
    errnum, text = flux_broker.load_error(only_import)
    assert errnum == errno.EINVAL
    assert one_line_with(text, "no mod_main() and no BrokerModule subclass").endswith(
        f"{only_import}: no mod_main() and no BrokerModule subclass")
    assert "only_import_mod" not in flux_broker.modules()


# load-13: a module that exits before it runs -----------------------------------

RAISES_AT_START = """
import errno


def mod_main(h, *args):
    raise OSError(errno.EEXIST, "already there")
"""

ARGPARSE_EXIT = """
import argparse


def mod_main(h, *args):
    parser = argparse.ArgumentParser(prog="argp_exit_mod")
    parser.add_argument("--count", type=int)
    parser.parse_args(args)
    h.reactor_run()
"""


def test_a_module_exiting_before_it_runs_fails_the_load_and_is_not_left_loaded(flux_broker, module_file):
    """An OSError from mod_main fails the load with its errno; argparse's
    sys.exit(2) on a bad argument fails it too; neither stays loaded, and
    the same file with good arguments loads."""
    errnum, _ = flux_broker.load_error(module_file("early_exit.py", RAISES_AT_START))
    assert errnum == errno.EEXIST
    argparse_file = module_file("argp_exit_mod.py", ARGPARSE_EXIT)
    errnum, text = flux_broker.load_error(argparse_file, "--bogus")
    assert errnum not in (None, 0), text
    assert "unrecognized arguments: --bogus" in text
    modules = flux_broker.modules()
    assert "early_exit" not in modules and "argp_exit_mod" not in modules
    flux_broker.load(argparse_file, "--count=3")
    assert "argp_exit_mod" in flux_broker.modules()


# load-21: EEXIST ----------------------------------------------------------------

OTHER = """
from flux.brokermod import BrokerModule, request_handler


class Other(BrokerModule):
    @request_handler("info")
    def info(self, msg):
        return {"other": True}
"""


def test_loading_a_name_already_loaded_or_the_same_file_twice_is_eexist(flux_broker, module_file):
    flux_broker.load(MYMOD)
    errnum, _ = flux_broker.load_error(module_file("other.py", OTHER), name="mymod")
    assert errnum == errno.EEXIST
    errnum, _ = flux_broker.load_error(MYMOD)
    assert errnum == errno.EEXIST
    assert flux_broker.rpc("mymod.info").get() == {"name": "mymod"}  # the first one, untouched
    assert flux_broker.modules().count("mymod") == 1


# load-28: handlers named like the library's additions ---------------------------

OLD_NAMES = """
from flux.brokermod import BrokerModule, request_handler


class Old(BrokerModule):
    \"\"\"Written for flux-core's BrokerModule, which had none of these names.\"\"\"

    @request_handler("rank")
    def rank(self, msg):
        self.handle.respond(msg, {"rank": self.handle.get_rank()})

    @request_handler("size")
    def size(self, msg):
        self.handle.respond(msg, {"size": int(self.handle.attr_get("size"))})

    @request_handler("setup")
    def setup(self, msg):
        self.handle.respond(msg, {"setup": True})

    @request_handler("timer")
    def timer(self, msg):
        self.handle.respond(msg, {"timer": True})
"""


def test_handlers_may_be_named_like_what_this_library_added(flux_broker, module_file):
    flux_broker.load(module_file("old.py", OLD_NAMES))
    assert flux_broker.rpc("old.rank").get() == {"rank": 0}
    assert flux_broker.rpc("old.size").get() == {"size": flux_broker.size}
    assert flux_broker.rpc("old.setup").get() == {"setup": True}
    assert flux_broker.rpc("old.timer").get() == {"timer": True}


# load-29: an annotation the library cannot check ----------------------------------

BAD_ANNOTATION = """
from typing import Set
from flux.brokermod import BrokerModule, request_handler


class BadType(BrokerModule):
    @request_handler("x")
    def x(self, msg, *, items: Set[int]):
        return None
"""


def test_an_annotation_that_cannot_be_checked_fails_the_load_in_one_line(flux_broker, module_file):
    errnum, text = flux_broker.load_error(module_file("badtype.py", BAD_ANNOTATION))
    assert errnum == errno.EINVAL
    line = one_line_with(text, "cannot check the annotation")
    assert "badtype.py: BadType.x: field 'items': cannot check the annotation" in line
    assert "Traceback" not in text
    assert "badtype" not in flux_broker.modules()


# load-24: what a module logs while it loads, after the broker's load lines -----

# setup() and teardown() log a line each; the other refuses in setup().
LOUD = """
from flux.brokermod import BrokerModule


class Loud(BrokerModule):
    def setup(self):
        self.log.info("setup logs this")

    def teardown(self):
        self.log.info("teardown logs this")
"""

REFUSES = """
import errno
from flux.brokermod import BrokerModule


class Refuses(BrokerModule):
    def setup(self):
        self.log.info("setup logs this")
        raise OSError(errno.EPERM, "setup refuses")
"""


def broker_and_module_lines(broker, name):
    """*name*'s lines of rank 0's log, in their order, pids as N."""
    return [re.sub(r"pid=\d+$", "pid=N", line) for line in broker.dmesg() if re.search(rf"\b{name}\b", line)]


def load_lines(name):
    """The broker's lines when it starts *name*'s loader: flux-core 0.86+
    logs ``insmod NAME``, then the loader's pid once its process runs;
    0.84 and 0.85 one line (measured on 0.84)."""
    if current().older_than("0.86"):
        return [f"broker.debug[0]: insmod {name} exec pid=-1"]
    return [f"broker.debug[0]: insmod {name}", f"broker.debug[0]: module-python-exec {name} pid=N"]


def test_what_a_module_logs_while_it_loads_comes_after_the_brokers_load_lines(flux_broker, module_file):
    """In flux dmesg: the broker's load lines, then what setup() logs;
    ``rmmod`` before what teardown() logs, ``module NAME exited`` last.
    A load that fails in setup() logs the same start, then the failure."""
    flux_broker.load(module_file("loud.py", LOUD))
    flux_broker.remove("loud")
    assert broker_and_module_lines(flux_broker, "loud") == load_lines("loud") + [
        "loud.info[0]: setup logs this",
        "broker.debug[0]: rmmod loud",
        "loud.info[0]: teardown logs this",
        "broker.debug[0]: module loud exited",
    ]

    path = module_file("refuses.py", REFUSES)
    errnum, text = flux_broker.load_error(path)
    assert (errnum, one_line_with(text, "setup refuses").endswith("refuses.py: setup refuses")) == (errno.EPERM, True)
    assert broker_and_module_lines(flux_broker, "refuses") == load_lines("refuses") + [
        "refuses.info[0]: setup logs this",
        "refuses.err[0]: refuses.py: setup refuses",
        "broker.debug[0]: module refuses exited",
        "broker.err[0]: refuses: Operation not permitted",
    ]
