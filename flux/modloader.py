"""Find, import and start a Python broker module file.

The pieces here are shared by the real loader (:func:`main`, which speaks
the RFC 5 module protocol to a Flux broker the way flux-core's
``flux module-python-exec`` does) and by the in-memory broker
(:mod:`flux.membroker`), so a module file loads the same way on both:

* :func:`import_path` imports the file under its basename without the
  ``.py`` suffix and keeps it in ``sys.modules`` while it runs;
* :func:`resolve_entry_point` picks ``mod_main`` or the one
  :class:`~flux.brokermod.BrokerModule` subclass defined in the file;
* :func:`split_args` splits the module argument string on whitespace;
* :func:`run_module` runs the entry point and turns what it raised into
  the errno the broker reports.

Every load error is a :class:`LoadError`, whose message is one line that
names the file (and the line, where there is one) and the cause.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import signal
import sys
import traceback
from types import CodeType, ModuleType
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Tuple

from flux import _layout
from flux._startfail import log, reported, start_failure

__all__ = [
    "LoadError",
    "import_path",
    "load_entry_point",
    "main",
    "module_import_name",
    "resolve_entry_point",
    "run_module",
    "split_args",
]

class LoadError(Exception):
    """A module file could not be loaded; ``str()`` is a one-line reason.

    ``errno`` is the error number the broker reports for it.
    """

    def __init__(self, message: str, errnum: int = errno.EINVAL) -> None:
        super().__init__(message)
        self.errno = errnum


def module_import_name(path: str) -> str:
    """Return the Python module name for *path*: its basename minus ``.py``."""
    base = os.path.basename(path)
    return base[:-3] if base.endswith(".py") else base


def split_args(modargs: Optional[str]) -> List[str]:
    """Split a module argument string on whitespace (no quoting)."""
    return modargs.split() if modargs else []


def import_path(path: str) -> ModuleType:
    """Import the module file at *path* and return the module.

    The module is named after the file's basename without ``.py`` and is
    in ``sys.modules`` under that name while it executes, so code that
    looks itself up there (``@dataclass``, ``pickle``, ``typing``) works.
    If that name belongs to another module already imported (a file named
    ``json.py``), the file is imported as ``_flux_module_<name>`` instead of
    replacing it.

    :raises LoadError: naming the file (and line) when the file is missing,
        does not compile, or raises while executing.
    """
    if not os.path.isfile(path):
        raise LoadError(f"{path}: No such file or directory", errno.ENOENT)
    name = module_import_name(path)
    current = sys.modules.get(name)
    if current is not None and not _same_file(current, path):
        name = f"_flux_module_{name}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise LoadError(f"{path}: not a Python module file", errno.EINVAL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        exec(_compiled(path), module.__dict__)  # noqa: S102 - what exec_module() does
    except SyntaxError as exc:
        if sys.modules.get(name) is module:
            del sys.modules[name]
        where = f"{exc.filename or path}:{exc.lineno}" if exc.lineno else path
        raise LoadError(f"{where}: SyntaxError: {exc.msg}") from None
    except (Exception, SystemExit) as exc:
        if sys.modules.get(name) is module:
            del sys.modules[name]
        if isinstance(exc, SystemExit):
            raise LoadError(f"{_where(exc, path)}: exited while importing ({_exit_text(exc)})") from None
        raise LoadError(f"{_where(exc, path)}: {_one_line(exc)}") from None
    return module


_CODE_CACHE: Dict[Tuple[str, int, int], CodeType] = {}


def _compiled(path: str) -> CodeType:
    """The code of the file at *path*, compiled once per version of the file
    (its modification time and size, as ``__pycache__`` checks): a process
    hosting the same module on many ranks, as the in-memory broker does,
    compiles it once even where bytecode files are not written."""
    stat = os.stat(path)
    key = (path, stat.st_mtime_ns, stat.st_size)
    code = _CODE_CACHE.get(key)
    if code is None:
        with open(path, "rb") as source:
            code = compile(source.read(), path, "exec", dont_inherit=True)
        _CODE_CACHE[key] = code
    return code


def _set_process_name(name: bytes) -> None:
    """Show the process as *name* in ``ps`` and ``top``, as flux-core's loader does.

    flux-core's ``set_proctitle`` calls ``prctl(PR_SET_NAME)`` through
    ctypes, after importing it and asking ``ctypes.util.find_library``,
    which may run ``ldconfig``: 0.6 to 4 ms, measured.  Writing
    ``/proc/self/comm`` from the main thread sets the same name (the
    kernel keeps the first 15 bytes) in 50 µs.  Where there is no such
    file (not Linux), nothing happens, as with flux-core.
    """
    try:
        with open("/proc/self/comm", "wb") as comm:
            comm.write(name)
    except OSError:
        pass


def forget_module(module: ModuleType) -> None:
    """Drop *module* from ``sys.modules`` if it is still registered there."""
    if sys.modules.get(module.__name__) is module:
        del sys.modules[module.__name__]


def resolve_entry_point(module: ModuleType) -> Callable[..., Any]:
    """Return the entry point of an imported module file.

    ``mod_main`` if the file defines it, else ``cls(h, *args).run()`` for
    the single BrokerModule subclass defined in that file.

    :raises LoadError: when there are zero or several such subclasses and
        no ``mod_main``; the message names the file and the classes.
    """
    from flux.brokermod import resolve_entry_point as resolve

    try:
        return resolve(module)
    except ValueError as exc:
        raise LoadError(str(exc)) from None


def load_entry_point(path: str) -> Callable[..., Any]:
    """Import the file at *path* and return its entry point."""
    return resolve_entry_point(import_path(path))


def run_module(
    h: Any,
    path: str,
    args: Sequence[str] = (),
    stderr: Optional[TextIO] = None,
    entry_point: Optional[Callable[..., Any]] = None,
) -> int:
    """Run a module file's entry point on handle *h*; return an errno (0 = ok).

    Without *entry_point*, import the file at *path* first; it stays in
    ``sys.modules`` until the entry point returns.  Load errors and what ``mod_main`` raised are printed to *stderr* (by
    default ``sys.stderr``, which the broker logs): one line for a load
    error, a ValueError or an OSError; a traceback without the loader's
    frames for anything else.  A ValueError gives EINVAL, an OSError its
    errno (ECONNRESET if it has none), anything else ECONNRESET.
    """
    out = sys.stderr if stderr is None else stderr
    base = os.path.basename(path)
    imported = None
    try:
        if entry_point is None:
            imported = import_path(path)
            entry_point = resolve_entry_point(imported)
        entry_point(h, *args)
    except LoadError as exc:
        return _load_failed(h, out, str(exc), exc.errno, exc)
    except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt too: the loader must finalize
        # sys.exit() in a module (argparse on bad arguments does it): exit
        # status 0 is a normal exit.
        if isinstance(exc, SystemExit) and exc.code in (None, 0):
            return 0
        text, errnum = start_failure(base, exc)
        return _load_failed(h, out, text, errnum, exc)
    finally:
        if imported is not None:
            forget_module(imported)
    return 0


def _load_failed(h: Any, out: TextIO, text: str, errnum: int, exc: BaseException) -> int:
    """Report why the module failed, on *out* (the broker's stderr) and, unless
    the module did (see flux._startfail), in its own log.  Return *errnum*."""
    print(text, file=out)
    if not reported(exc):
        log(h, text)
    return errnum


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Load and run a module file as the broker's Python module loader.

    Usage: ``flux module-python-exec PATH``.  Follows RFC 5: open a handle
    on FLUX_MODULE_URI, initialize the module, register the standard
    module methods, run the module, and finalize with its errno.
    """
    argv = list(sys.argv if argv is None else argv)
    prog = os.path.basename(argv[0]) if argv else "flux-module-python-exec"
    if len(argv) != 2:
        _die(prog, f"Usage: {prog} PATH")
    path = argv[1]
    uri = os.environ.get("FLUX_MODULE_URI")
    if not uri:
        _die(prog, "FLUX_MODULE_URI is not set")

    _layout.prefer_this_package()
    from _flux._core import ffi, lib
    from flux.core.handle import Flux

    try:
        h = Flux(url=uri)
    except OSError as exc:
        _die(prog, f"flux_open: {exc}")

    error = ffi.new("flux_error_t[1]")
    args_p = ffi.new("char **")
    if lib.flux_module_initialize(h.handle, args_p, error) < 0:
        _die(prog, f"flux_module_initialize: {_error_text(ffi, error)}")
    modargs = None
    if args_p[0] != ffi.NULL:
        modargs = ffi.string(args_p[0]).decode("utf-8")
        lib.free(args_p[0])

    name_p = ffi.cast("char *", lib.flux_aux_get(h.handle, b"flux::name"))
    if name_p != ffi.NULL:
        _set_process_name(ffi.string(name_p))

    if lib.flux_module_register_handlers(h.handle, error) < 0:
        _die(prog, f"flux_module_register_handlers: {_error_text(ffi, error)}")

    sigterm = _stop_reactor_on_sigterm(h)
    errnum = run_module(h, path, split_args(modargs))
    sigterm.stop()

    error = ffi.new("flux_error_t[1]")
    if lib.flux_module_finalize(h.handle, errnum, error) < 0:
        _die(prog, f"flux_module_finalize: {_error_text(ffi, error)}")


def _stop_reactor_on_sigterm(h: Any) -> Any:
    """Make SIGTERM stop the module's reactor, so the module exits cleanly.

    A broker shutting down sends SIGTERM to the module processes still
    loaded; without this, Python dies of it and the broker reports a
    "module runtime failure" (and ``flux start`` exits 1).
    """

    def on_sigterm(handle: Any, watcher: Any, signum: int, arg: Any) -> None:
        handle.reactor_stop()

    watcher = h.signal_watcher_create(signal.SIGTERM, on_sigterm)
    watcher.start()
    watcher.unref()  # do not keep the reactor alive on its own
    return watcher


def _die(prog: str, message: str) -> None:
    print(f"{prog}: {message}", file=sys.stderr)
    sys.exit(1)


def _error_text(ffi: Any, error: Any) -> str:
    return str(ffi.string(error[0].text).decode("utf-8", errors="replace"))


def _same_file(module: ModuleType, path: str) -> bool:
    filename = getattr(module, "__file__", None)
    return bool(filename) and os.path.abspath(filename) == os.path.abspath(path)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _where(exc: BaseException, path: str) -> str:
    """Return ``file:line`` of the deepest frame in *path*, else *path*."""
    where = path
    target = os.path.abspath(path)
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if os.path.abspath(frame.f_code.co_filename) == target:
            where = f"{path}:{lineno}"
    return where


def _exit_text(exc: SystemExit) -> str:
    # Imported late: flux.brokermod must not be imported before main() has
    # made it mean this project's file (see flux._layout).
    from flux._dispatch import exit_text

    return exit_text(exc)
