"""flux-core's Python surface, as recorded from a real instance.

``flux_core_surface.json`` lists the public names of the flux-core
objects a module or a test receives (a handle, a message, an RPC future,
watchers) and the libflux functions a handle answers by name.  The
in-memory broker offers none beyond them; a recorded name it does not
provide raises NotImplementedError naming it, any other AttributeError,
as flux-core would.  Refresh the record for a new release with
``tests/tools/record_flux_core_surface.py``.
"""

import functools
import json
import os
from typing import Any, Callable, Dict, FrozenSet, List

_RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flux_core_surface.json")
_NAMES: Dict[str, FrozenSet[str]] = {}
_ARITY: Dict[str, Dict[str, List[int]]] = {}


def _load() -> None:
    with open(_RECORD) as f:
        record = json.load(f)
    version = record.pop("flux-core")
    _ARITY.update(record.pop("arity"))
    _NAMES.update((key, frozenset(names)) for key, names in record.items())
    _NAMES["version"] = frozenset([version])
    _NAMES["Flux"] = _NAMES["Flux"] | _NAMES["libflux"]


def recorded(kind: str) -> FrozenSet[str]:
    """The public names flux-core's *kind* (``Flux``, ``Message``, ``RPC``...) offers."""
    if not _NAMES:
        _load()
    return _NAMES[kind]


def arity(kind: str) -> Dict[str, List[int]]:
    """How many arguments each method of flux-core's *kind* takes: name to
    ``[fewest, most]`` (most: -1 for any number)."""
    if not _NAMES:
        _load()
    return _ARITY.get(kind, {})


class WrongNumArguments(ValueError):
    """flux-core's ``flux.wrapper.WrongNumArguments``: a handle method that
    is a libflux function, called with the wrong number of arguments."""


def libflux_function(method: Callable[..., Any]) -> Callable[..., Any]:
    """Give an in-memory handle method that stands for a libflux function
    (``reactor_now``, ``respond_error``...) flux-core's check of its
    arguments: exactly the C function's, else :class:`WrongNumArguments`."""
    name = method.__name__

    @functools.wraps(method)
    def call(self: Any, *args: Any) -> Any:
        expected = arity("Flux")[name][0]
        if len(args) != expected:
            raise WrongNumArguments(
                f"The wrong number of arguments has been passed to wrapped C function "
                f"flux_{name}: {name}() takes {expected}, received {len(args)}"
            )
        return method(self, *args)

    return call


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
