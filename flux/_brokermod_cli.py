"""The ``flux-brokermod`` command.

``flux-brokermod run [options] FILE [ARGS...]`` loads a module file into
the in-memory broker, sends the requests and events named on the command
line in order, and prints each answer and the module's log, the way
``flux module load``, ``flux rpc`` and ``flux dmesg`` would.

``flux-brokermod describe FILE`` prints a module file's handlers and
options without loading it.

``flux-brokermod setup`` prints the shell commands that make a real Flux
instance load ``.py`` modules with this project's loader and
``flux.brokermod``.
"""

import argparse
import errno
import hashlib
import json
import os
import shlex
import sys
from typing import Any, List, Optional, Sequence, Tuple

LIBEXEC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_libexec")
LOADER_SCRIPT = os.path.join(LIBEXEC_DIR, "flux-module-python-exec.py")


class _Ordered(argparse.Action):
    """Collect --rpc and --event into one list, in command-line order."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        actions = getattr(namespace, "actions", None) or []
        actions.append((self.dest, values))
        namespace.actions = actions


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flux-brokermod",
        description="Run Flux broker modules written in Python.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser(
        "run",
        help="load a module file into the in-memory broker and talk to it",
        description=(
            "Load FILE into the in-memory broker (as `flux module load "
            "[--name NAME] FILE ARGS...` would), send each --rpc and --event "
            "in order, print every answer, then the log (as `flux dmesg`), and "
            "remove the module. A request TOPIC without a dot is a method of the "
            "loaded module: `--rpc ping` sends NAME.ping; event topics are used as "
            "given. Options go before FILE; "
            "everything after FILE is passed to the module."
        ),
    )
    run.add_argument("--name", help="module name (default: FILE's basename up to its first '.')")
    run.add_argument(
        "--rpc",
        metavar="TOPIC[=JSON]",
        action=_Ordered,
        dest="rpc",
        help="send a request (payload: JSON, or text that is not JSON)",
    )
    run.add_argument(
        "--event",
        metavar="TOPIC[=JSON]",
        action=_Ordered,
        dest="event",
        help="publish an event (the topic is used as given)",
    )
    run.add_argument(
        "--guest",
        action="store_true",
        help="send the requests and events as a guest (FLUX_ROLE_USER, userid 1234)",
    )
    run.add_argument(
        "--advance",
        metavar="SECONDS",
        type=float,
        default=0.0,
        help="let SECONDS of virtual time pass after the messages (timers fire)",
    )
    run.add_argument("file", metavar="FILE", help="the module's .py file")
    run.add_argument("args", metavar="ARGS", nargs=argparse.REMAINDER, help="module arguments")

    describe_cmd = sub.add_parser(
        "describe",
        help="print a module file's handlers and options without loading it",
        description=(
            "Import FILE and print what its BrokerModule subclass offers, as the "
            "module's NAME.handlers method answers on a broker: each handler's "
            "topic, kind, who may call it, declared payload fields and docstring, "
            "and the module's options."
        ),
    )
    describe_cmd.add_argument("--name", help="module name (default: FILE's basename up to its first '.')")
    describe_cmd.add_argument("--guest", action="store_true", help="show only what a guest may call")
    describe_cmd.add_argument("--json", action="store_true", help="print the answer as JSON")
    describe_cmd.add_argument("file", metavar="FILE", help="the module's .py file")

    setup = sub.add_parser(
        "setup",
        help="print the environment that makes real Flux load .py modules with this library",
        description=(
            "Print shell `export` lines. Evaluate them before `flux start` "
            "(eval \"$(flux-brokermod setup)\") and every `flux module load x.py` in "
            "that instance runs on this project's loader and flux.brokermod."
        ),
    )
    setup.add_argument("--check", action="store_true", help="also verify the loader script is usable")
    return parser


def _split(spec: str, name: Optional[str]) -> Tuple[str, Any]:
    topic, sep, text = spec.partition("=")
    if not topic:
        raise ValueError(f"{spec!r}: empty topic")
    if name is not None and "." not in topic:
        topic = f"{name}.{topic}"
    if not sep:
        return topic, None
    try:
        return topic, json.loads(text)
    except ValueError:
        return topic, text


def _show(payload: Any) -> str:
    if payload is None:
        return "(no payload)"
    return json.dumps(payload, sort_keys=True)


def run(options: argparse.Namespace, out: Any = None, err: Any = None) -> int:
    """Carry out ``flux-brokermod run``; return the exit status."""
    from flux.membroker import FLUX_ROLE_USER, Broker, ModuleError

    out = out or sys.stdout
    err = err or sys.stderr
    broker = Broker()
    try:
        record = broker.load(options.file, *options.args, name=options.name)
    except ModuleError as exc:
        print(f"flux-brokermod: load {options.file}: {exc.strerror}", file=err)
        return 1
    name = record.name
    print(f"loaded {name} from {options.file}", file=out)
    client = broker.connect(userid=1234, rolemask=FLUX_ROLE_USER) if options.guest else broker.connect()
    status = 0
    for kind, spec in getattr(options, "actions", None) or []:
        try:
            topic, payload = _split(spec, name if kind == "rpc" else None)
        except ValueError as exc:
            print(f"flux-brokermod: --{kind} {exc}", file=err)
            status = 1
            continue
        if kind == "event":
            client.event_send(topic, payload)
            broker.run_until_idle()
            print(f"event {topic}: published", file=out)
            continue
        try:
            result = client.rpc(topic, payload).get()
        except OSError as exc:
            code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            print(f"{topic}: error {code}: {exc.strerror}", file=out)
            status = 1
        else:
            print(f"{topic}: {_show(result)}", file=out)
    if options.advance:
        broker.advance(options.advance)
    if name in broker.modules:
        broker.remove(name)
    lines = broker.dmesg(name) + [line for line in broker.dmesg("broker") if f"{name}:" in line or "panic" in line]
    if lines:
        print("--- log ---", file=out)
        for line in lines:
            print(line, file=out)
    for line in broker.stderr:
        print(line, file=err)
    return status


_LOADER_COPY = """#!/usr/bin/env python3
# flux module-python-exec for flux-brokermod installed in {site}
# (written by `flux-brokermod setup`: the installed copy is not executable).
import sys

if {site!r} not in sys.path:
    sys.path.append({site!r})

from flux.modloader import main

if __name__ == "__main__":
    main()
"""


def loader_dir() -> str:
    """Return a directory holding an executable ``flux-module-python-exec.py``.

    flux(1) only runs a ``flux-NAME.py`` that is executable, and installing
    from a wheel drops the file's executable bit.  So: the packaged
    directory if its script is executable (or can be made so), else a copy
    written under ``$XDG_CACHE_HOME/flux-brokermod``.
    """
    if os.access(LOADER_SCRIPT, os.R_OK | os.X_OK):
        return LIBEXEC_DIR
    try:
        os.chmod(LOADER_SCRIPT, os.stat(LOADER_SCRIPT).st_mode | 0o111)
        return LIBEXEC_DIR
    except OSError:
        pass
    site = os.path.dirname(os.path.dirname(LIBEXEC_DIR))
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha1(site.encode()).hexdigest()[:12]
    target = os.path.join(cache, "flux-brokermod", f"libexec-{digest}")
    os.makedirs(target, exist_ok=True)
    script = os.path.join(target, os.path.basename(LOADER_SCRIPT))
    with open(script, "w") as f:
        f.write(_LOADER_COPY.format(site=site))
    os.chmod(script, 0o755)
    return target


def setup_lines(check: bool = False) -> List[str]:
    """Return the ``export`` lines for ``flux-brokermod setup``."""
    directory = loader_dir()
    script = os.path.join(directory, os.path.basename(LOADER_SCRIPT))
    if check and not os.access(script, os.R_OK | os.X_OK):
        raise OSError(errno.EACCES, f"{script} is not an executable file")
    prepend = os.environ.get("FLUX_EXEC_PATH_PREPEND", "")
    parts = [directory] + [p for p in prepend.split(":") if p and p != directory]
    return [f"export FLUX_EXEC_PATH_PREPEND={shlex.quote(':'.join(parts))}"]


def describe_file(options: argparse.Namespace, out: Any = None) -> int:
    """Carry out ``flux-brokermod describe``; return the exit status."""
    out = sys.stdout if out is None else out
    from flux import _layout, modloader

    _layout.prefer_this_package()
    from flux.brokermod import describe, module_classes

    name = options.name or os.path.basename(options.file).split(".", 1)[0]
    try:
        module = modloader.import_path(options.file)
    except modloader.LoadError as exc:
        print(f"flux-brokermod: describe: {exc} ({errno.errorcode.get(exc.errno, exc.errno)})", file=sys.stderr)
        return 1
    try:
        classes = module_classes(module)
        if len(classes) != 1:
            found = ", ".join(cls.__name__ for cls in classes) or "none"
            print(f"flux-brokermod: describe: {options.file}: expected one BrokerModule subclass, "
                  f"found {found}", file=sys.stderr)
            return 1
        info = describe(classes[0], name, guest=options.guest)
    finally:
        modloader.forget_module(module)
    if options.json:
        print(json.dumps(info, indent=2, sort_keys=True), file=out)
        return 0
    for handler in info["handlers"]:
        fields = ""
        if handler["fields"] is not None:
            fields = " {" + ", ".join(
                f"{f['name']}: {f['type']}" + ("" if f["required"] else " (optional)") for f in handler["fields"]
            ) + "}"
        doc = f"  {handler['doc']}" if handler["doc"] else ""
        print(f"{handler['kind']:7} {handler['access'] or '-':5} {handler['topic']}{fields}{doc}", file=out)
    for option in info["options"]:
        default = "required" if option["required"] else f"default {option['default']!r}"
        help_text = f"  {option['help']}" if option["help"] else ""
        print(f"option  {option['name']}={option['type']} ({default}){help_text}", file=out)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``flux-brokermod`` console command."""
    options = _parser().parse_args(argv)
    if options.command == "describe":
        return describe_file(options)
    if options.command == "setup":
        try:
            lines = setup_lines(options.check)
        except OSError as exc:
            print(f"flux-brokermod: setup: {exc.strerror}", file=sys.stderr)
            return 1
        print("\n".join(lines))
        return 0
    return run(options)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
