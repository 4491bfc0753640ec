"""flux-core's modules that broker modules import, where flux-core is absent.

Modules import their constants from ``flux.constants`` and build messages
with ``flux.message``.  With flux-core installed those modules are used
as they are; without it, the in-memory broker provides each with what it
implements, under the same names.
"""

import sys
import types
from typing import Any, Dict


def provide_flux_core_modules() -> None:
    """Make ``import flux.constants`` and ``import flux.message`` work without flux-core."""
    from flux.membroker import _message
    from flux.membroker._handle import MessageWatcher

    constants = {name: value for name, value in vars(_message).items()
                 if name.startswith("FLUX_") and isinstance(value, int)}
    _provide("constants", "The flux-core constants the in-memory broker implements.", constants)
    _provide("message", "flux-core's message classes, as the in-memory broker implements them.", {
        "Message": _message.Message,
        "MessageWatcher": MessageWatcher,
        "msg_typestr": _message.msg_typestr,
        "__all__": ["Message", "MessageWatcher", "msg_typestr"],
    })


def _provide(name: str, doc: str, names: Dict[str, Any]) -> None:
    full = f"flux.{name}"
    try:
        __import__(full)
        return  # flux-core's
    except ImportError:
        pass
    module = types.ModuleType(full, doc)
    for key, value in names.items():
        setattr(module, key, value)
    sys.modules[full] = module
    flux_pkg = sys.modules.get("flux")
    if flux_pkg is not None:
        setattr(flux_pkg, name, module)
