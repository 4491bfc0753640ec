"""Print flux-core's Python surface as JSON, for flux/membroker/surfaces/VERSION.json.

Run it inside an instance of the flux-core release to record, from a
checkout of this project:

    flux start flux python tests/tools/record_flux_core_surface.py > flux/membroker/surfaces/VERSION.json

The in-memory broker offers no public name outside this record, and
answers the recorded names it lacks with NotImplementedError; the surface
test (tests/test_surface.py) checks both against the live classes when
flux-core is present, and against this record when it is not.
"""

import json
import sys


def surface() -> dict:
    """Public names of the flux-core classes a module or a test receives."""
    from _flux._core import lib
    from flux.core.handle import Flux
    from flux.core.watchers import CheckWatcher, FDWatcher, IdleWatcher, PrepareWatcher, TimerWatcher
    from flux.message import Message, MessageWatcher
    from flux.rpc import RPC

    classes = {
        "Flux": Flux, "Message": Message, "RPC": RPC, "MessageWatcher": MessageWatcher,
        "TimerWatcher": TimerWatcher, "FDWatcher": FDWatcher, "PrepareWatcher": PrepareWatcher,
        "CheckWatcher": CheckWatcher, "IdleWatcher": IdleWatcher,
    }
    record = {name: sorted(n for n in dir(cls) if not n.startswith("_")) for name, cls in classes.items()}
    # What instances hold besides their class's names (needs a running instance).
    h = Flux()
    instances = {
        "Flux": h, "Message": Message(), "RPC": h.rpc("broker.ping", {}),
        "MessageWatcher": h.msg_watcher_create(_nothing), "TimerWatcher": h.timer_watcher_create(1.0, _nothing),
        "FDWatcher": h.fd_watcher_create(0, _nothing), "PrepareWatcher": h.prepare_watcher_create(_nothing),
        "CheckWatcher": h.check_watcher_create(_nothing), "IdleWatcher": h.idle_watcher_create(),
    }
    for name, obj in instances.items():
        record[name] = sorted(set(record[name]) | {n for n in vars(obj) if not n.startswith("_")})
    # flux.Flux answers any libflux function by its name without "flux_".
    record["libflux"] = sorted(n[len("flux_"):] for n in dir(lib) if n.startswith("flux_"))
    record["arity"] = arity(classes, record)
    return record


def arity(classes: dict, record: dict) -> dict:
    """How many arguments each recorded method takes, as [fewest, most]
    (most: -1 for any number): from the Python signature, or for a libflux
    function a handle answers, its C arguments less the handle it adds."""
    import inspect

    from _flux._core import ffi, lib

    counts: dict = {}
    for kind, cls in classes.items():
        for name in record[kind]:
            method = inspect.getattr_static(cls, name, None)
            if not inspect.isfunction(method):
                continue
            params = list(inspect.signature(method).parameters.values())[1:]  # less self
            positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            fewest = sum(1 for p in positional if p.default is p.empty)
            most = -1 if any(p.kind == p.VAR_POSITIONAL for p in params) else len(positional)
            counts.setdefault(kind, {})[name] = [fewest, most]
    flux_t = ffi.typeof("flux_t *")
    for name in record["libflux"]:
        if name in counts.get("Flux", {}):
            continue
        try:
            args = ffi.typeof(getattr(lib, "flux_" + name)).args
        except (TypeError, AttributeError):  # va_list functions, constants: not callable as such
            continue
        n = len(args) - (1 if args and args[0] == flux_t else 0)
        counts["Flux"][name] = [n, n]
    return counts


def _nothing(*args: object) -> None:
    pass


if __name__ == "__main__":


    from _flux._core import ffi, lib

    version = ffi.string(lib.flux_core_version_string()).decode()
    json.dump({"flux-core": version, **surface()},
              sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
