"""Print the Pythons CI runs the suite on, one ``VERSION PATH`` a line:
the default ``python3``, and the oldest and newest that ``requires-python``
admits among those this machine has (on PATH as ``python3.N``, or
installed by pyenv).  A Python the floor names but the machine lacks is
said on stderr, in one line.  Free-threaded builds (3.13t) are left out:
the in-memory broker refuses them.

    python3 .ci/pythons.py
"""

import glob
import os
import re
import shutil
import subprocess
import sys
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Minor versions to look for past the floor; a newer Python is found when
# the machine has it.
NEWEST_MINOR_LOOKED_FOR = 30


def floor() -> int:
    """The minor version of requires-python's floor (3.N)."""
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        match = re.search(r'^requires-python\s*=\s*">=\s*3\.(\d+)"', f.read(), re.M)
    if match is None:
        sys.exit("CI: pyproject.toml has no requires-python = \">=3.N\"")
    return int(match.group(1))


def version_of(python: str) -> Optional[str]:
    """The ``3.N`` a Python runs as, or None if it does not run (a pyenv
    shim for a version not selected) or is free-threaded."""
    try:
        done = subprocess.run(
            [python, "-c", "import sys, sysconfig; print('%d.%d' % sys.version_info[:2], "
             "bool(sysconfig.get_config_var('Py_GIL_DISABLED')))"],
            capture_output=True, text=True, timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = done.stdout.split()
    if done.returncode != 0 or len(words) != 2 or words[1] == "True":
        return None
    return words[0]


def candidates(minor: int) -> List[str]:
    """Where Python 3.*minor* may be: PATH, then pyenv's versions."""
    found = []
    on_path = shutil.which(f"python3.{minor}")
    if on_path:
        found.append(on_path)
    pyenv = shutil.which("pyenv")
    root = os.environ.get("PYENV_ROOT") or (os.path.expanduser("~/.pyenv") if pyenv is None else None)
    if pyenv is not None and root is None:
        done = subprocess.run([pyenv, "root"], capture_output=True, text=True)
        root = done.stdout.strip() if done.returncode == 0 else None
    if root:
        found += sorted(glob.glob(os.path.join(root, "versions", f"3.{minor}.*", "bin", f"python3.{minor}")),
                        reverse=True)
    return found


def main() -> None:
    low = floor()
    chosen: Dict[str, str] = {}
    default = shutil.which("python3") or sys.executable
    default_version = version_of(default)
    if default_version is not None:
        chosen[default_version] = default
    available: Dict[int, str] = {}
    for minor in range(low, NEWEST_MINOR_LOOKED_FOR + 1):
        for python in candidates(minor):
            if version_of(python) == f"3.{minor}":
                available[minor] = python
                break
    if low not in available:
        print(f"CI: Python 3.{low} (requires-python's floor) is not on this machine: not run on it", file=sys.stderr)
    for minor in (min(available, default=None), max(available, default=None)):
        if minor is not None:
            chosen.setdefault(f"3.{minor}", available[minor])
    for version, python in sorted(chosen.items(), key=lambda item: tuple(map(int, item[0].split(".")))):
        print(version, python)


if __name__ == "__main__":
    main()
