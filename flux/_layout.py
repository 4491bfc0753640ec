"""Make ``flux.brokermod`` mean this project's module next to flux-core.

flux-core installs ``flux`` as a regular package whose ``__init__`` extends
its ``__path__`` with every other ``flux/`` directory on ``sys.path``
(``pkgutil.extend_path``).  This project installs ``flux/`` without an
``__init__.py``, so:

* without flux-core, ``flux`` is a namespace package made of this
  directory alone, and ``import flux.brokermod`` finds this project's file;
* with flux-core, flux-core's package wins and this directory is appended
  to ``flux.__path__``: ``flux.modloader`` and ``flux.membroker`` are found
  here, but ``flux.brokermod`` is flux-core's, which is searched first.

:func:`prefer_this_package` moves this directory to the front of
``flux.__path__`` so that ``flux.brokermod`` is ours too.  The loader and
the in-memory broker call it before they import any module file.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def prefer_this_package() -> None:
    """Search this project's ``flux/`` directory before flux-core's.

    Raises ImportError if flux-core's ``flux.brokermod`` was imported
    already, since classes derived from it cannot run on this library.
    """
    flux_pkg = sys.modules.get("flux")
    if flux_pkg is None:
        import flux as flux_pkg
    path = flux_pkg.__path__
    if not isinstance(path, list):
        return  # namespace package: this directory is the only one
    if path[:1] != [_HERE]:
        if _HERE in path:
            path.remove(_HERE)
        path.insert(0, _HERE)
    loaded = sys.modules.get("flux.brokermod")
    if loaded is not None and not _is_ours(loaded):
        raise ImportError(
            f"flux.brokermod was already imported from {loaded.__file__} "
            f"(flux-core's), not from {_HERE}: import flux.modloader or "
            f"flux.membroker before flux.brokermod"
        )


def _is_ours(module: object) -> bool:
    filename = getattr(module, "__file__", None) or ""
    return os.path.dirname(os.path.abspath(filename)) == _HERE
