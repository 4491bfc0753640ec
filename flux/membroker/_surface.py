"""flux-core's Python surface, as recorded from a real instance of each release.

``surfaces/<version>.json`` lists, for one flux-core version, the public
names of the flux-core objects a module or a test receives (a handle, a
message, an RPC future, watchers), the libflux functions a handle answers
by name, and how many arguments each method takes.  The in-memory broker
imitates one version at a time: the newest recorded release unless
``$FLUX_BROKERMOD_FLUX_CORE`` or :func:`imitate` names another.  It offers
no name beyond that version's record (a name it has that the version
lacks raises AttributeError, as there); a recorded name it does not
provide raises NotImplementedError naming it.  Record a release with
``flux python tests/tools/record_flux_core_surface.py``.
"""

import functools
import json
import os
import re
from typing import Any, Callable, Dict, FrozenSet, List, Optional

_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "surfaces")
_ENV = "FLUX_BROKERMOD_FLUX_CORE"


def _key(version: str) -> List[int]:
    return [int(n) for n in re.findall(r"\d+", version)]


def versions() -> List[str]:
    """The recorded flux-core versions, oldest first (a branch such as
    ``0.88.0-59-g4a5e79f`` sorts after its release)."""
    return sorted((name[:-5] for name in os.listdir(_DIR) if name.endswith(".json")), key=_key)


def newest_release() -> str:
    """The newest recorded release: what the in-memory broker imitates by default."""
    return [v for v in versions() if "-" not in v][-1]


class Surface:
    """One flux-core version's recorded surface."""

    def __init__(self, version: str) -> None:
        with open(os.path.join(_DIR, f"{version}.json")) as f:
            record = json.load(f)
        #: The version, as ``flux version`` printed it.
        self.version: str = record.pop("flux-core")
        self._arity: Dict[str, Dict[str, List[int]]] = record.pop("arity", {})
        self._names = {kind: frozenset(names) for kind, names in record.items()}
        self._names["Flux"] = self._names["Flux"] | self._names["libflux"]

    def names(self, kind: str) -> FrozenSet[str]:
        """The public names flux-core's *kind* (``Flux``, ``Message``, ``RPC``...) offers."""
        return self._names[kind]

    def older_than(self, release: str) -> bool:
        """True if this version comes before *release* (``"0.86"``)."""
        return _key(self.version)[:3] < _key(release)

    def arity(self, kind: str) -> Dict[str, List[int]]:
        """How many arguments each method of *kind* takes: name to
        ``[fewest, most]`` (most: -1 for any number)."""
        return self._arity.get(kind, {})


@functools.lru_cache(maxsize=None)
def surface_of(version: str) -> Surface:
    """The :class:`Surface` of recorded *version*."""
    return Surface(version)


def resolve(version: Optional[str]) -> str:
    """The recorded version *version* names (``"0.84"`` names ``0.84.0``)."""
    if version is None:
        return newest_release()
    known = versions()
    if version in known:
        return version
    matches = [v for v in known if v.startswith(version + ".") or v.startswith(version + "-")]
    if not matches:
        raise ValueError(
            f"flux-core {version} has no recorded surface; the in-memory broker imitates "
            f"{', '.join(known)}"
        )
    return matches[0]


_current: List[Surface] = []
_absent_installed: List[tuple] = []


def current() -> Surface:
    """The surface the in-memory broker imitates now."""
    if not _current:
        imitate(os.environ.get(_ENV) or None)
    return _current[0]


def imitate(version: Optional[str]) -> str:
    """Make the in-memory broker imitate flux-core *version* (None: the newest
    recorded release); return the version.  Process-wide: the names the
    in-memory objects have that *version* lacks raise AttributeError from now on."""
    surface = surface_of(resolve(version))
    _current[:] = [surface]
    for cls, name, previous in _absent_installed:
        if previous is None:
            delattr(cls, name)
        else:
            setattr(cls, name, previous)
    _absent_installed.clear()
    for kind, cls in _STAND_INS.items():
        for name in sorted(n for n in dir(cls) if not n.startswith("_")):
            if name not in surface.names(kind):
                _absent_installed.append((cls, name, vars(cls).get(name)))
                setattr(cls, name, _Absent(kind, name, surface.version))
    return surface.version


_STAND_INS: Dict[str, type] = {}


def register_stand_in(kind: str, cls: type) -> None:
    """Tell the surface which in-memory class stands for flux-core's *kind*."""
    _STAND_INS[kind] = cls


class _Absent:
    """A name the imitated flux-core version does not have: AttributeError."""

    def __init__(self, kind: str, name: str, version: str) -> None:
        self._kind, self._name, self._version = kind, name, version

    def __get__(self, obj: Any, owner: Optional[type] = None) -> Any:
        raise AttributeError(
            f"{self._kind}.{self._name} is not in flux-core {self._version}, which the in-memory "
            f"broker imitates (${_ENV})"
        )


def recorded(kind: str) -> FrozenSet[str]:
    """The public names the imitated flux-core's *kind* offers."""
    return current().names(kind)


def arity(kind: str) -> Dict[str, List[int]]:
    """The argument counts of the imitated flux-core's *kind* (see :meth:`Surface.arity`)."""
    return current().arity(kind)


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
