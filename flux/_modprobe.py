"""The files that make an instance load a Python module when it starts.

flux-core's ``flux modprobe rc1`` (what every broker runs at start) loads
the modules its rc scripts name, described by the ``[[modules]]`` entries
of ``modprobe.toml`` and ``modprobe.d/*.toml`` in each directory of its
search path (``/etc/flux/modprobe`` for the system instance; more with
``FLUX_MODPROBE_PATH_APPEND``).  An entry alone loads nothing: a script in
``rc1.d/`` must ask for it.  :func:`startup_files` writes both for a
module file; ``flux modprobe rc3`` removes every module at shutdown.
"""

from __future__ import annotations

import json
import os
import re
from typing import Dict, List, Sequence

__all__ = ["ModprobeError", "startup_files", "write_startup_files"]

# What modprobe takes for ranks: an RFC 22 idset, "all", or ">N"/"<N".
_RANKS = re.compile(r"all|[<>]\d+|\d+(-\d+)?(,\d+(-\d+)?)*")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")


class ModprobeError(ValueError):
    """A module entry that ``flux modprobe`` would refuse or misread."""


def _toml(value: object) -> str:
    # JSON's string escapes are a subset of TOML's basic strings.
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(json.dumps(item) for item in value) + "]"  # type: ignore[union-attr]


def startup_files(path: str, name: str, args: Sequence[str] = (), ranks: str = "all",
                  after: Sequence[str] = (), requires: Sequence[str] = (),
                  provides: Sequence[str] = ()) -> Dict[str, str]:
    """The two files, by path relative to a modprobe directory: the
    ``modprobe.d/NAME.toml`` entry (module *path*, *args*, *ranks*,
    *after*, *requires*, *provides*) and the ``rc1.d/NAME.py`` script that
    loads it.  A module that *provides* services is loaded as them: with
    ``sched`` and ``feasibility`` it replaces flux-core's scheduler (whose
    entries have a lower priority than this one's).

    :raises ModprobeError: one line naming the bad name, rank set or path.
    """
    if not _NAME.fullmatch(name):
        raise ModprobeError(f"module name {name!r}: letters, digits, '_' and '-' only (a dot is not allowed)")
    if not _RANKS.fullmatch(ranks):
        raise ModprobeError(f"ranks {ranks!r}: give an idset (0-3,7), 'all', '>N' or '<N'")
    for what, names in (("after", after), ("requires", requires), ("provides", provides)):
        for other in names:
            if not _NAME.fullmatch(other):
                raise ModprobeError(f"{what} {other!r} is not a module or service name")
    if not os.path.isabs(path):
        raise ModprobeError(f"module path {path!r} is not absolute: every broker reads it from its own directory")
    lines = ["# Written by flux-brokermod modprobe: loaded at start by rc1.d/" + name + ".py.",
             "[[modules]]", f"name = {_toml(name)}", f"module = {_toml(path)}"]
    if ranks != "all":
        lines.append(f"ranks = {_toml(ranks)}")
    for key, values in (("args", list(args)), ("after", list(after)), ("requires", list(requires)),
                        ("provides", list(provides))):
        if values:
            lines.append(f"{key} = {_toml(values)}")
    toml = "\n".join(lines) + "\n"
    if provides:
        # rc1 loads the services it knows by name (sched, feasibility); of the
        # modules providing one, the highest priority wins, and this entry's
        # (modprobe's default, 100) is above flux-core's schedulers' (40-50).
        script = (f'"""{name} provides {", ".join(provides)}: rc1 loads it in place of the default."""\n\n\n'
                  f"def setup(context):\n    context.load_modules({list(provides)!r})\n")
    else:
        script = (f'"""Load {name} when the instance starts (see modprobe.d/{name}.toml)."""\n\n\n'
                  f"def setup(context):\n    context.load_modules([{name!r}])\n")
    return {os.path.join("modprobe.d", f"{name}.toml"): toml, os.path.join("rc1.d", f"{name}.py"): script}


def write_startup_files(directory: str, files: Dict[str, str]) -> List[str]:
    """Write *files* (from :func:`startup_files`) under *directory*; return their paths."""
    written = []
    for relative, text in files.items():
        target = os.path.join(directory, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as f:
            f.write(text)
        written.append(target)
    return written
