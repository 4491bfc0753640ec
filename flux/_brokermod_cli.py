"""The ``flux-brokermod`` command.

``flux-brokermod run [options] FILE [ARGS...]`` loads a module file into
the in-memory broker, sends the requests and events named on the command
line in order, and prints each answer and the module's log, the way
``flux module load``, ``flux rpc`` and ``flux dmesg`` would.

``flux-brokermod describe FILE`` prints a module file's handlers and
options without loading it.

``flux-brokermod modprobe --dir DIR FILE [ARGS...]`` writes the files
that make an instance load the module whenever it starts.

``flux-brokermod setup`` prints the shell commands that make a real Flux
instance load ``.py`` modules with this project's loader and
``flux.brokermod``.
"""

import argparse
import errno
import hashlib
import json
import os
import re
import shlex
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

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
            "[--name NAME] FILE ARGS...` would; --load loads other modules first), "
            "carry out each --rpc, --stream, "
            "--event, --advance, --as and --rank in the order given, print every "
            "answer and every event published, then the log (as `flux dmesg`), "
            "and remove the module. A request TOPIC without a dot is a method of "
            "the loaded module: `--rpc ping` sends NAME.ping; event topics are "
            "used as given. Options go before FILE; everything after FILE is "
            "passed to the module. Exit status: 0 when every request was "
            "answered without error, 1 when a request got an error, the module "
            "failed to load or failed at run time, 2 for a bad command line."
        ),
    )
    run.add_argument("--name", help="module name (default: FILE's basename up to its first '.')")
    run.add_argument("--size", type=_rank_count, default=1, metavar="N",
                     help="ranks of the in-memory instance (the module is loaded on every rank)")
    run.add_argument("--topo", metavar="SPEC", default=None,
                     help="how the ranks form a tree, as `flux start -Stbon.topo=SPEC`: kary:K, "
                          "binomial or mincrit[:K] (default kary:32)")
    for flag, metavar, help_text in (
        ("--rpc", "TOPIC[=JSON]", "send a request (the payload is sent as written, JSON or not)"),
        ("--stream", "TOPIC[=JSON]", "send a streaming request; print each response and how the stream ended"),
        ("--event", "TOPIC[=JSON]", "publish an event (the topic is used as given)"),
        ("--advance", "SECONDS", "let SECONDS of virtual time pass here (timers fire)"),
        ("--as", "WHO", "send what follows as 'owner', 'guest' (userid 1234) or the guest USERID"),
        ("--rank", "RANK", "send what follows to RANK (with --size)"),
    ):
        run.add_argument(flag, metavar=metavar, action=_Ordered, dest=flag[2:], help=help_text)
    run.add_argument("--load", metavar="'FILE [ARGS...]'", action="append", default=[],
                     help="load another module first (repeatable), for FILE to call: "
                          "--load 'kvstore.py' --load 'other.py --verbose'")
    run.add_argument("--guest", action="store_true", help="start as a guest (as `--as guest` first)")
    run.add_argument("--json", action="store_true", help="print one JSON object per line")
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

    modprobe = sub.add_parser(
        "modprobe",
        help="write the files that load a module whenever the instance starts",
        description=(
            "Write DIR/modprobe.d/NAME.toml (the module's entry: its absolute path, ARGS, "
            "ranks, order) and DIR/rc1.d/NAME.py (the rc1 script that loads it), so that "
            "every broker of an instance whose modprobe path holds DIR loads the module at "
            "start, and rc3 removes it at shutdown. DIR is /etc/flux/modprobe (flux-core's "
            "sysconfdir) for a system instance; any directory named in "
            "FLUX_MODPROBE_PATH_APPEND for `flux start`. FILE is imported first, and what its "
            "load would refuse before setup() runs is refused here: ARGS its options refuse, "
            "and timer periods, reduction timeouts and combine functions that cannot work "
            "with them (options not in ARGS are taken at their defaults). Exit status: 0 when written, 1 when FILE does not "
            "load or ARGS are refused, 2 for a bad command line."
        ),
    )
    modprobe.add_argument("--dir", required=True, help="the modprobe directory to write into")
    modprobe.add_argument("--name", help="module name (default: FILE's basename up to its first '.')")
    modprobe.add_argument("--ranks", default="all", metavar="IDSET",
                          help="the ranks that load it: an idset, 'all' (default), '>N' or '<N'")
    modprobe.add_argument("--after", action="append", default=[], metavar="MODULE",
                          help="load it after MODULE (repeatable), e.g. --after kvs")
    modprobe.add_argument("--requires", action="append", default=[], metavar="SERVICE",
                          help="load SERVICE too whenever it is loaded (repeatable)")
    modprobe.add_argument("--provides", action="append", default=[], metavar="SERVICE",
                          help="it is SERVICE (repeatable): --provides sched --provides feasibility "
                               "replaces the scheduler")
    modprobe.add_argument("--print", action="store_true", help="print the files instead of writing them")
    modprobe.add_argument("file", metavar="FILE", help="the module's .py file")
    modprobe.add_argument("args", metavar="ARGS", nargs=argparse.REMAINDER, help="module arguments")

    from flux.schedsim._cli import add_parser as add_simulate

    add_simulate(sub)

    sub.add_parser(
        "check",
        help="tell whether a Flux instance runs .py modules on this library",
        description=(
            "Inside an instance (FLUX_URI set), load a probe module and report "
            "which loader and flux.brokermod it ran on; outside one, tell what "
            "an instance started from this shell (flux start) would run. Exit "
            "status 0 when it is this library, 1 when it is not (with the fix), "
            "or when flux-core is not found."
        ),
    )
    return parser


_PROBE = """
import json, sys


def mod_main(h, *args):
    import flux.brokermod
    with open(args[0], "w") as f:
        json.dump({"loader": sys.argv[0], "brokermod": flux.brokermod.__file__}, f)
    h.reactor_run()
"""

_FIX = ('run eval "$(flux-brokermod setup)" before flux start (for a system instance, '
        "give the broker that FLUX_EXEC_PATH_PREPEND)")


def check(out: Any = None) -> int:
    """Carry out ``flux-brokermod check``; return the exit status."""
    import subprocess

    from flux._flux_command import find_flux
    import tempfile

    out = out or sys.stdout
    flux = find_flux()
    if not flux:
        print("flux-core not found (no flux on PATH, nor $FLUX_BROKERMOD_FLUX): modules run on the "
              "in-memory broker only (flux-brokermod run FILE)", file=out)
        return 1
    ours = os.path.dirname(os.path.abspath(__file__))
    if not os.environ.get("FLUX_URI"):
        prepend = os.environ.get("FLUX_EXEC_PATH_PREPEND", "").split(":")
        if loader_dir() in prepend:
            print(f"an instance started from this shell (flux start) loads .py modules with this "
                  f"library's loader ({loader_dir()} is in FLUX_EXEC_PATH_PREPEND)", file=out)
            return 0
        print(f"an instance started from this shell would load .py modules with flux-core's own "
              f"loader and flux.brokermod: {_FIX}", file=out)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        name = f"brokermod_check_{os.getpid()}"
        probe, facts = os.path.join(tmp, f"{name}.py"), os.path.join(tmp, "facts.json")
        with open(probe, "w") as f:
            f.write(_PROBE)
        loaded = subprocess.run([flux, "module", "load", probe, facts], capture_output=True, text=True)
        if loaded.returncode != 0:
            print(f"the probe module did not load: {loaded.stderr.strip()}", file=out)
            return 1
        subprocess.run([flux, "module", "remove", name], capture_output=True, text=True)
        with open(facts) as f:
            seen = json.load(f)
    if os.path.dirname(os.path.abspath(seen["brokermod"])) == ours:
        print(f"this instance loads .py modules with this library: loader {seen['loader']}, "
              f"flux.brokermod {seen['brokermod']}", file=out)
        return 0
    print(f"this instance loads .py modules with flux-core's own loader ({seen['loader']}) and "
          f"flux.brokermod ({seen['brokermod']}): a module using Option, timer_handler, returned "
          f"answers... fails there with ImportError; {_FIX}", file=out)
    return 1


def _split(spec: str, name: Optional[str]) -> Tuple[str, Optional[str]]:
    """``TOPIC[=PAYLOAD]`` as (topic, payload text).  The text is sent as it
    is written, JSON or not, as a client sending a string does: what the
    module makes of it (a refusal, for a payload it cannot decode) is what
    this tool is for."""
    topic, sep, text = spec.partition("=")
    if not topic:
        raise ValueError(f"{spec!r}: empty topic")
    if name is not None and "." not in topic:
        topic = f"{name}.{topic}"
    return topic, (text if sep else None)


def _show(payload: Any) -> str:
    if payload is None:
        return "(no payload)"
    return json.dumps(payload, sort_keys=True)


class _Printer:
    """Print results as ``flux rpc``-like lines, or as JSON lines."""

    def __init__(self, out: Any, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json

    def __call__(self, record: Dict[str, Any], text: str) -> None:
        print(json.dumps(record, sort_keys=True) if self.as_json else text, file=self.out)


def _answer(topic: str, future: Any) -> Tuple[Dict[str, Any], str, bool]:
    """One answer of *future*: (record, text, failed)."""
    try:
        payload = future.get_str()
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        return {"topic": topic, "errno": exc.errno, "error": exc.strerror}, f"{topic}: error {code}: {exc.strerror}", True
    try:
        value = None if payload is None else json.loads(payload)
    except (ValueError, RecursionError):  # shown as the text it is
        value = payload
    return {"topic": topic, "payload": value}, f"{topic}: {_show(value)}", False


def _drain(streams: List[Tuple[str, Any]], show: _Printer) -> int:
    """Print the responses open streams got so far; drop the ended ones.
    Return 1 if one ended with an error other than ENODATA."""
    failed_any = 0
    for topic, future in list(streams):
        while future.is_ready():
            record, text, failed = _answer(topic, future)
            if failed:
                streams.remove((topic, future))
                if record["errno"] == errno.ENODATA:
                    show({"topic": topic, "end": "ENODATA"}, f"{topic}: end of stream")
                else:
                    show(record, text)
                    failed_any = 1
                break
            show(record, text)
            future.reset()
    return failed_any


def _rank_count(text: str) -> int:
    """``--size``: a whole number of ranks, at least 1 (argparse says which option)."""
    try:
        size = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of ranks, not {text!r}") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"an instance has at least 1 rank, not {size}")
    return size


def run(options: argparse.Namespace, out: Any = None, err: Any = None) -> int:
    """Carry out ``flux-brokermod run``; return the exit status (see its --help)."""
    from flux.membroker import FLUX_ROLE_USER, FLUX_RPC_STREAMING, Broker, BrokerPanic, ModuleError

    out = out or sys.stdout
    err = err or sys.stderr
    show = _Printer(out, getattr(options, "json", False))
    size = getattr(options, "size", 1)
    topo = getattr(options, "topo", None)
    try:
        broker = Broker(size=size, attrs={"tbon.topo": topo} if topo else None)
    except ValueError as exc:
        print(f"flux-brokermod: --topo: {exc}", file=err)
        return 2
    others: List[str] = []  # the names --load gave, in load order
    loading = options.file
    try:
        for spec in getattr(options, "load", None) or []:
            path, *args = spec.split()
            loading = path
            others.append(broker.load(path, *args, rank="all")[0].name)
        loading = options.file
        records = broker.load(options.file, *options.args, name=options.name, rank="all")
    except ModuleError as exc:
        code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        reason = str(exc.strerror)
        named = reason.startswith((loading + ":", os.path.basename(loading) + ":"))
        print(f"flux-brokermod: {reason if named else loading + ': ' + reason} ({code})", file=err)
        broker.close()
        return 1
    except ValueError:  # an empty --load
        print("flux-brokermod: --load needs a FILE", file=err)
        return 2
    name = records[0].name
    show({"loaded": name, "file": options.file}, f"loaded {name} from {options.file}")
    events = broker.collect_events("")
    seen_events = 0
    who, rank = ("guest" if options.guest else "owner"), broker.rank
    streams: List[Tuple[str, Any]] = []  # streaming requests not ended yet
    status = 0

    def client() -> Any:
        if who == "owner":
            return broker.connect(rank=rank)
        return broker.connect(userid=1234 if who == "guest" else int(who), rolemask=FLUX_ROLE_USER, rank=rank)

    try:
        for kind, spec in getattr(options, "actions", None) or []:
            if kind == "as":
                if spec not in ("owner", "guest") and not spec.isdigit():
                    raise ValueError(f"--as {spec!r}: expected owner, guest or a userid")
                who = spec
            elif kind == "rank":
                if not spec.isdigit() or int(spec) >= size:
                    raise ValueError(f"--rank {spec!r}: expected a rank below --size {size}")
                rank = int(spec)
            elif kind == "advance":
                broker.advance(float(spec))
                show({"advanced": float(spec), "now": broker.now}, f"advanced {float(spec):g}s (now {broker.now:g}s)")
            elif kind == "event":
                topic, payload = _split(spec, None)
                client().event_send(topic, payload)
                broker.run_until_idle()
            elif kind == "stream":
                topic, payload = _split(spec, name)
                streams.append((topic, client().rpc(topic, payload, flags=FLUX_RPC_STREAMING)))
            else:
                topic, payload = _split(spec, name)
                record, text, failed = _answer(topic, client().rpc(topic, payload))
                show(record, text)
                status |= failed
            broker.run_until_idle()
            status |= _drain(streams, show)
            for topic, payload in events.events[seen_events:]:
                show({"event": topic, "payload": payload}, f"event {topic}: {_show(payload)}")
            seen_events = len(events.events)
        for topic, _ in streams:
            show({"topic": topic, "end": None}, f"{topic}: stream still open")
    except ValueError as exc:
        print(f"flux-brokermod: {exc}", file=err)
        status = 2
    except BrokerPanic as exc:
        print(f"flux-brokermod: the broker went down: {exc}", file=err)
        status = 1
    if broker.panicked is None and broker.hung is None:
        try:
            for module in [name, *reversed(others)]:
                for on in range(size):
                    if module in broker.modules_on(on):
                        broker.remove(module, rank=on)
        except BrokerPanic as exc:
            print(f"flux-brokermod: the broker went down: {exc}", file=err)
            status = 1
    logged = set()
    lines = []
    for on in range(size):
        for line in broker.dmesg(rank=on):
            logged.add(line)
            if any(line.startswith(f"{module}.") or (line.startswith("broker.") and module in line)
                   for module in (name, *others)):
                lines.append(line)
    if lines:
        if not show.as_json:
            print("--- log ---", file=out)
        for line in lines:
            show({"log": line}, line)
    for line in broker.stderr:  # what the module printed; log lines were shown above
        if line not in logged:
            print(line, file=err)
    return status


_LOADER_COPY = """#!/usr/bin/env python3
# flux module-python-exec for flux-brokermod installed in {site}
# (written by `flux-brokermod setup`: the installed copy is not executable).
import sys

if {site!r} not in sys.path:
    sys.path.append({site!r})

import flux  # flux-core 0.84 and 0.85 do not extend their package: add ours

if isinstance(getattr(flux, "__path__", None), list) and {ours!r} not in flux.__path__:
    flux.__path__.append({ours!r})

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
        f.write(_LOADER_COPY.format(site=site, ours=os.path.join(site, "flux")))
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


def modprobe_files(options: argparse.Namespace, out: Any = None) -> int:
    """Carry out ``flux-brokermod modprobe``; return the exit status."""
    out = sys.stdout if out is None else out
    from flux import _layout, _modprobe, modloader

    _layout.prefer_this_package()
    from flux.brokermod import check_load, module_classes

    path = os.path.abspath(options.file)
    name = options.name or os.path.basename(path).split(".", 1)[0]
    try:
        files = _modprobe.startup_files(path, name, options.args, options.ranks, options.after,
                                        options.requires, options.provides)
        module = modloader.import_path(path)
    except _modprobe.ModprobeError as exc:
        print(f"flux-brokermod: modprobe: {exc}", file=sys.stderr)
        return 1
    except modloader.LoadError as exc:
        if not re.search(r"No module named '_?flux[.']", str(exc)):
            print(f"flux-brokermod: modprobe: {exc}", file=sys.stderr)
            return 1
        # A scheduler imports flux-core's bindings (flux.scheduler), which
        # only the brokers may have: the broker's loader will check it.
        print(f"flux-brokermod: modprobe: {path} not checked: it needs flux-core's Python bindings, which "
              f"are not importable here ({str(exc).rsplit(': ', 1)[-1]})", file=sys.stderr)
        module = None
    if module is not None:
        try:
            modloader.resolve_entry_point(module)
            for cls in module_classes(module):
                # What the load would refuse before setup(), by the load's own rules.
                check_load(cls, name, modloader.split_args(" ".join(options.args)))
        except (modloader.LoadError, ValueError) as exc:
            print(f"flux-brokermod: modprobe: {path}: {exc}", file=sys.stderr)
            return 1
        finally:
            modloader.forget_module(module)
    if options.print:
        for relative, text in files.items():
            print(f"# {os.path.join(options.dir, relative)}\n{text}", file=out)
        return 0
    try:
        written = _modprobe.write_startup_files(options.dir, files)
    except OSError as exc:
        print(f"flux-brokermod: modprobe: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    for target in written:
        print(f"wrote {target}", file=out)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``flux-brokermod`` console command."""
    try:
        return _main(argv)
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _main(argv: Optional[Sequence[str]] = None) -> int:
    options = _parser().parse_args(argv)
    if options.command == "describe":
        return describe_file(options)
    if options.command == "check":
        return check()
    if options.command == "modprobe":
        return modprobe_files(options)
    if options.command == "simulate":
        from flux.schedsim._cli import simulate

        return simulate(options)
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
