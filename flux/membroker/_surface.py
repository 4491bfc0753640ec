"""flux-core's Python surface, as recorded from a real instance.

``flux_core_surface.json`` lists the public names of the flux-core
objects a module or a test receives (a handle, a message, an RPC future,
watchers) and the libflux functions a handle answers by name.  The
in-memory broker offers none beyond them; a recorded name it does not
provide raises NotImplementedError naming it, any other AttributeError,
as flux-core would.  Refresh the record for a new release with
``tests/tools/record_flux_core_surface.py``.
"""

import json
import os
from typing import Dict, FrozenSet

_RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flux_core_surface.json")
_NAMES: Dict[str, FrozenSet[str]] = {}


def recorded(kind: str) -> FrozenSet[str]:
    """The public names flux-core's *kind* (``Flux``, ``Message``, ``RPC``...) offers."""
    if not _NAMES:
        with open(_RECORD) as f:
            record = json.load(f)
        version = record.pop("flux-core")
        _NAMES.update((key, frozenset(names)) for key, names in record.items())
        _NAMES["version"] = frozenset([version])
        _NAMES["Flux"] = _NAMES["Flux"] | _NAMES["libflux"]
    return _NAMES[kind]


def missing(kind: str, obj: object, name: str) -> AttributeError:
    """The error for *name*, which the in-memory *obj* lacks: NotImplementedError
    (an AttributeError too, so ``hasattr`` stays False) when flux-core's
    *kind* offers it, AttributeError otherwise."""
    if not name.startswith("_") and name in recorded(kind):
        return _NotProvided(
            f"{kind}.{name} of flux-core is not available on the in-memory broker "
            f"(flux.membroker); run this on a real Flux instance to use it"
        )
    return AttributeError(f"{type(obj).__name__!r} object has no attribute {name!r}")


class _NotProvided(NotImplementedError, AttributeError):
    """A flux-core name the in-memory broker does not provide."""
