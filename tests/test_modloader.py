"""flux.modloader: importing module files, entry points, arguments, load errors.

How flux-core's own loader behaves is in docs/real-flux.md; where this
loader differs on purpose (module names, sys.modules) the issue says so.
"""

import errno
import io
import json
import os
import sys
import syslog

import pytest

from flux import modloader
from flux.brokermod import resolve_entry_point as brokermod_resolve_entry_point
from flux.membroker import ModuleError
from flux.modloader import (
    LoadError,
    forget_module,
    import_path,
    module_import_name,
    resolve_entry_point,
    run_module,
    split_args,
)

MODLOADER_FILE = os.path.join("flux", "modloader.py")


@pytest.fixture
def imported():
    """Import a file with import_path; forget it again after the test."""
    modules = []

    def load(path):
        module = import_path(path)
        modules.append(module)
        return module

    yield load
    for module in modules:
        forget_module(module)


def load_error(path):
    with pytest.raises(LoadError) as info:
        import_path(path)
    return info.value


def one_line(text):
    return "\n" not in text.strip()


# module_import_name -------------------------------------------------------------


def test_import_name_drops_py_suffix():
    assert module_import_name("happy.py") == "happy"


def test_import_name_is_not_a_character_strip():
    # flux-core's basename.rstrip(".py") gives "ha" and "".
    assert module_import_name("/some/dir/happy.py") == "happy"
    assert module_import_name("pypy.py") == "pypy"


def test_import_name_keeps_other_dots():
    assert module_import_name("happy.v2.py") == "happy.v2"


# import_path ----------------------------------------------------------------------


def test_module_is_in_sys_modules_while_it_executes(imported, write_module):
    path = write_module(
        "selfcheck_mod.py",
        """
        import sys
        REGISTERED = sys.modules.get(__name__) is not None
        NAME = __name__
        """,
    )
    module = imported(path)
    assert module.NAME == "selfcheck_mod"
    assert module.REGISTERED is True


def test_dataclass_with_future_annotations_works(imported, write_module):
    path = write_module(
        "dataclass_mod.py",
        """
        from __future__ import annotations
        from dataclasses import dataclass

        @dataclass
        class Point:
            x: int
            y: int = 0

        ORIGIN = Point(0)
        """,
    )
    module = imported(path)
    assert module.Point(3, 4).x == 3
    assert module.ORIGIN == module.Point(0, 0)


def test_file_named_like_imported_module_does_not_replace_it(imported, write_module):
    stdlib_json = sys.modules["json"]
    path = write_module("json.py", "NAME = __name__\n")
    module = imported(path)
    assert module.NAME == "_flux_module_json"
    assert sys.modules["json"] is stdlib_json
    assert json.dumps([1]) == "[1]"


def test_forget_module_removes_it_from_sys_modules(write_module):
    path = write_module("forget_me_mod.py", "X = 1\n")
    module = import_path(path)
    assert sys.modules["forget_me_mod"] is module
    forget_module(module)
    assert "forget_me_mod" not in sys.modules


def test_forget_module_of_renamed_module(write_module):
    path = write_module("json.py", "X = 1\n")
    module = import_path(path)
    assert sys.modules["_flux_module_json"] is module
    forget_module(module)
    assert "_flux_module_json" not in sys.modules
    assert sys.modules["json"] is json


def test_forget_module_leaves_another_module_of_that_name(write_module):
    path = write_module("forget_other_mod.py", "X = 1\n")
    first = import_path(path)
    second = import_path(path)
    forget_module(first)
    assert sys.modules["forget_other_mod"] is second
    forget_module(second)
    assert "forget_other_mod" not in sys.modules


# resolve_entry_point -----------------------------------------------------------------


def test_mod_main_wins_over_a_subclass(imported, write_module):
    path = write_module(
        "with_main_mod.py",
        """
        from flux.brokermod import BrokerModule

        class One(BrokerModule):
            pass

        def mod_main(h, *args):
            pass
        """,
    )
    module = imported(path)
    assert resolve_entry_point(module) is module.mod_main


def test_single_subclass_defined_in_file_is_the_entry_point(imported, write_module):
    path = write_module(
        "single_sub_mod.py",
        """
        from flux.brokermod import BrokerModule

        CREATED = []

        class Only(BrokerModule):
            def __init__(self, h, *args):
                CREATED.append(args)

            def run(self):
                CREATED.append("run")
        """,
    )
    module = imported(path)
    entry = resolve_entry_point(module)
    entry(object(), "a", "b")
    assert module.CREATED == [("a", "b"), "run"]


IMPORTED_BASE = """
from flux.brokermod import BrokerModule, request_handler

class SharedBase(BrokerModule):
    @request_handler("whoami")
    def whoami(self, msg):
        self.handle.respond(msg, {"class": type(self).__name__, "name": self.name})
"""


@pytest.fixture
def shared_base(tmp_path, monkeypatch, write_module):
    """A base class in its own importable file, "shared_base_mod"."""
    write_module("shared_base_mod.py", IMPORTED_BASE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("shared_base_mod", None)


def test_subclass_imported_from_another_file_does_not_count(broker, shared_base, write_module):
    path = write_module(
        "child_mod.py",
        """
        from shared_base_mod import SharedBase

        class Child(SharedBase):
            pass
        """,
    )
    broker.load(path)
    assert broker.rpc("child_mod.whoami").get() == {"class": "Child", "name": "child_mod"}


def test_file_only_importing_a_subclass_has_no_entry_point(imported, shared_base, write_module):
    path = write_module("only_import_mod.py", "from shared_base_mod import SharedBase\n")
    with pytest.raises(LoadError) as info:
        resolve_entry_point(imported(path))
    assert path in str(info.value)
    assert one_line(str(info.value))


def test_no_entry_point_is_one_line_error_naming_the_file(imported, write_module):
    path = write_module("empty_mod.py", "X = 1\n")
    with pytest.raises(LoadError) as info:
        resolve_entry_point(imported(path))
    message = str(info.value)
    assert path in message
    assert one_line(message)


def test_several_subclasses_is_one_line_error_naming_file_and_classes(imported, write_module):
    path = write_module(
        "several_mod.py",
        """
        from flux.brokermod import BrokerModule

        class Alpha(BrokerModule):
            pass

        class Beta(BrokerModule):
            pass
        """,
    )
    with pytest.raises(LoadError) as info:
        resolve_entry_point(imported(path))
    message = str(info.value)
    assert path in message
    assert "Alpha" in message and "Beta" in message
    assert one_line(message)


def test_brokermod_resolve_entry_point_raises_valueerror(imported, write_module):
    # flux-core's stock loader imports it from flux.brokermod and expects ValueError.
    path = write_module("empty_vmod.py", "X = 1\n")
    with pytest.raises(ValueError):
        brokermod_resolve_entry_point(imported(path))


# split_args -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "modargs, expected",
    [
        ("a b c", ["a", "b", "c"]),
        ("a\tb", ["a", "b"]),
        ("  a    b  ", ["a", "b"]),
        ("--verbose --count=4\n", ["--verbose", "--count=4"]),
        ("", []),
        ("   ", []),
        (None, []),
    ],
)
def test_split_args_on_whitespace(modargs, expected):
    assert split_args(modargs) == expected


# Load errors ---------------------------------------------------------------------------


def test_missing_file_is_enoent_naming_the_file(tmp_path):
    path = str(tmp_path / "nosuch.py")
    err = load_error(path)
    assert err.errno == errno.ENOENT
    assert path in str(err)


def test_syntax_error_names_file_and_line(write_module):
    path = write_module("syntax_mod.py", "X = 1\nY = 2\ndef broken(:\n    pass\n")
    err = load_error(path)
    message = str(err)
    assert f"{path}:3" in message
    assert "SyntaxError" in message
    assert one_line(message)
    assert "syntax_mod" not in sys.modules


def test_exception_while_importing_names_file_line_and_exception(write_module):
    path = write_module("raising_mod.py", "X = 1\nraise RuntimeError('boom at import')\n")
    message = str(load_error(path))
    assert f"{path}:2" in message
    assert "RuntimeError" in message and "boom at import" in message
    assert one_line(message)
    assert "raising_mod" not in sys.modules


def test_exception_in_function_called_at_import_names_the_deepest_line(write_module):
    path = write_module(
        "deep_raise_mod.py",
        "def helper():\n    return 1 / 0\n\nVALUE = helper()\n",
    )
    message = str(load_error(path))
    assert f"{path}:2" in message
    assert "ZeroDivisionError" in message


def test_import_error_inside_module_names_file_line_and_module(write_module):
    path = write_module("needs_missing_mod.py", "import os\nimport no_such_module_xyz\n")
    message = str(load_error(path))
    assert f"{path}:2" in message
    assert "no_such_module_xyz" in message
    assert "ModuleNotFoundError" in message or "ImportError" in message
    assert one_line(message)


def test_sys_exit_while_importing_is_a_load_error(write_module):
    path = write_module("exit_at_import_mod.py", "import sys\nsys.exit(3)\n")
    try:
        message = str(load_error(path))
        assert f"{path}:2" in message
        assert "exit_at_import_mod" not in sys.modules
    finally:
        sys.modules.pop("exit_at_import_mod", None)


def test_multiline_exception_message_becomes_one_line(write_module):
    path = write_module("multiline_mod.py", "raise ValueError('first line\\nsecond line')\n")
    message = str(load_error(path))
    assert "first line" in message
    assert one_line(message)


# run_module ------------------------------------------------------------------------------


def run(entry, path="mod.py", args=()):
    out = io.StringIO()
    errnum = run_module(object(), path, args, out, entry)
    return errnum, out.getvalue()


def test_run_module_success_returns_zero_and_passes_args():
    seen = []
    errnum, output = run(lambda h, *args: seen.append(args), args=("a", "b"))
    assert errnum == 0
    assert seen == [("a", "b")]
    assert output == ""


def test_run_module_valueerror_is_einval_one_line_without_traceback():
    def mod_main(h, *args):
        raise ValueError("bad argument --frob")

    errnum, output = run(mod_main)
    assert errnum == errno.EINVAL
    assert output == "mod.py: bad argument --frob\n"


def test_run_module_oserror_keeps_its_errno():
    def mod_main(h, *args):
        raise OSError(errno.EEXIST, "already have one")

    errnum, output = run(mod_main)
    assert errnum == errno.EEXIST
    assert "already have one" in output
    assert "Traceback" not in output


def test_run_module_other_exception_is_econnreset_with_user_traceback(write_module):
    path = write_module(
        "crashing_mod.py",
        """
        def helper():
            raise RuntimeError("crashed in helper")

        def mod_main(h, *args):
            helper()
        """,
    )
    out = io.StringIO()
    errnum = run_module(object(), path, (), out)
    output = out.getvalue()
    assert errnum == errno.ECONNRESET
    assert "Traceback" in output
    assert "RuntimeError: crashed in helper" in output
    assert path in output and "in helper" in output
    assert MODLOADER_FILE not in output


def test_run_module_traceback_of_subclass_skips_loader_frames(write_module):
    path = write_module(
        "crash_init_mod.py",
        """
        from flux.brokermod import BrokerModule

        class Crashing(BrokerModule):
            def __init__(self, h, *args):
                raise KeyError("no such thing")
        """,
    )
    out = io.StringIO()
    errnum = run_module(object(), path, (), out)
    output = out.getvalue()
    assert errnum == errno.ECONNRESET
    assert "KeyError" in output and path in output
    assert MODLOADER_FILE not in output


def test_run_module_sys_exit_gives_an_errno():
    def mod_main(h, *args):
        sys.exit(2)

    errnum, output = run(mod_main)
    assert errnum == errno.EINVAL
    assert output == "mod.py: exited (sys.exit(2))\n"


def test_run_module_load_error_is_one_line(write_module):
    path = write_module("syntax_run_mod.py", "def broken(:\n")
    out = io.StringIO()
    errnum = run_module(object(), path, (), out)
    assert errnum == errno.EINVAL
    assert out.getvalue().startswith(f"{path}:1: SyntaxError: ")  # then Python's own words
    assert one_line(out.getvalue())
    assert "syntax_run_mod" not in sys.modules


# The same errors through broker.load() -------------------------------------------------

VALUEERROR_MOD = """
def mod_main(h, *args):
    raise ValueError("unknown option " + " ".join(args))
"""


def test_broker_load_valueerror_is_einval_one_line(broker, write_module):
    path = write_module("badopt.py", VALUEERROR_MOD)
    with pytest.raises(ModuleError) as info:
        broker.load(path, "--frob")
    err = info.value
    assert err.errno == errno.EINVAL
    assert "unknown option --frob" in str(err)
    assert one_line(str(err))
    assert "badopt" not in broker.modules


def test_broker_load_valueerror_goes_to_stderr_without_traceback(broker, write_module):
    path = write_module("badopt.py", VALUEERROR_MOD)
    with pytest.raises(ModuleError):
        broker.load(path, "--frob")
    assert "badopt.py: unknown option --frob" in broker.stderr
    assert not any("Traceback" in line for line in broker.stderr)


def test_broker_load_valueerror_logs_invalid_argument_at_err(broker, write_module):
    path = write_module("badopt.py", VALUEERROR_MOD)
    with pytest.raises(ModuleError):
        broker.load(path)
    errors = [e.text for e in broker.log if e.level == syslog.LOG_ERR]
    assert "badopt: Invalid argument" in errors


def test_broker_load_oserror_eexist_is_eexist(broker, write_module):
    path = write_module(
        "dup.py",
        """
        import errno

        def mod_main(h, *args):
            raise OSError(errno.EEXIST, "another dup is running")
        """,
    )
    with pytest.raises(ModuleError) as info:
        broker.load(path)
    assert info.value.errno == errno.EEXIST
    assert one_line(str(info.value))


def test_broker_load_syntax_error_names_file_and_line(broker, write_module):
    path = write_module("broken.py", "X = 1\nif True\n    pass\n")
    with pytest.raises(ModuleError) as info:
        broker.load(path)
    message = str(info.value)
    assert info.value.errno != 0
    assert f"{path}:2" in message
    assert one_line(message)
    assert "broken" not in broker.modules


def test_broker_load_no_entry_point_names_file(broker, write_module):
    path = write_module("noentry.py", "X = 1\n")
    with pytest.raises(ModuleError) as info:
        broker.load(path)
    assert path in str(info.value)
    assert one_line(str(info.value))


def test_broker_load_import_error_names_missing_module(broker, write_module):
    path = write_module("needs_dep.py", "import no_such_dependency_xyz\n")
    with pytest.raises(ModuleError) as info:
        broker.load(path)
    assert "no_such_dependency_xyz" in str(info.value)
    assert f"{path}:1" in str(info.value)
    assert one_line(str(info.value))


def test_broker_load_crash_is_econnreset_with_traceback_without_loader(broker, write_module):
    path = write_module(
        "crashes.py",
        """
        def mod_main(h, *args):
            raise RuntimeError("crash during start")
        """,
    )
    with pytest.raises(ModuleError) as info:
        broker.load(path)
    assert info.value.errno == errno.ECONNRESET
    assert one_line(str(info.value))
    stderr = "\n".join(broker.stderr)
    assert "RuntimeError: crash during start" in stderr
    assert "Traceback" in stderr
    assert MODLOADER_FILE not in stderr


def test_broker_load_dataclass_module_file(broker, write_module):
    path = write_module(
        "dcmod.py",
        """
        from __future__ import annotations
        from dataclasses import dataclass, asdict
        from flux.brokermod import BrokerModule, request_handler

        @dataclass
        class Reply:
            name: str
            count: int = 0

        class DataclassModule(BrokerModule):
            @request_handler("get")
            def get(self, msg):
                self.handle.respond(msg, asdict(Reply(self.name, 2)))
        """,
    )
    broker.load(path)
    assert broker.rpc("dcmod.get").get() == {"name": "dcmod", "count": 2}


def test_broker_forgets_module_file_after_it_exits(broker, write_module):
    path = write_module("transient_mod.py", IMPORTED_BASE.replace("SharedBase", "Transient"))
    broker.load(path)
    assert "transient_mod" in sys.modules
    broker.remove("transient_mod")
    assert "transient_mod" not in sys.modules


# main() --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv", [["flux-module-python-exec"], ["flux-module-python-exec", "a.py", "b"]]
)
def test_main_with_wrong_argument_count_exits_1_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as info:
        modloader.main(argv)
    assert info.value.code == 1
    assert "Usage: flux-module-python-exec PATH" in capsys.readouterr().err


def test_main_without_flux_module_uri_exits_1_with_clear_message(monkeypatch, capsys):
    monkeypatch.delenv("FLUX_MODULE_URI", raising=False)
    with pytest.raises(SystemExit) as info:
        modloader.main(["flux-module-python-exec", "mod.py"])
    assert info.value.code == 1
    assert "FLUX_MODULE_URI is not set" in capsys.readouterr().err


def test_main_with_empty_flux_module_uri_exits_1(monkeypatch, capsys):
    monkeypatch.setenv("FLUX_MODULE_URI", "")
    with pytest.raises(SystemExit) as info:
        modloader.main(["flux-module-python-exec", "mod.py"])
    assert info.value.code == 1
    assert "FLUX_MODULE_URI" in capsys.readouterr().err


def test_main_reads_sys_argv_by_default(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["flux-module-python-exec"])
    with pytest.raises(SystemExit) as info:
        modloader.main()
    assert info.value.code == 1
    assert "Usage" in capsys.readouterr().err
