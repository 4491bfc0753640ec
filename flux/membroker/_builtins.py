"""The broker's own services, as far as the in-memory broker serves them.

A real broker answers requests to ``broker.*`` itself (libflux's default
methods, and ``getenv``/``setenv``/``conf-builtin``), and runs a few more
services inside the broker process (``log``, ``attr``, ``event``,
``service``, ``module``...).  Loaded modules cannot register those names.
In memory, ``broker.ping``, ``stats-get``, ``stats-clear``, ``rusage``,
``debug``, ``config-reload``/``config-update``, ``getenv`` and ``setenv``
answer as on a real broker (measured on flux-core 0.88; module code and
flux-core's own ``flux modprobe`` call them); an unknown ``broker``
method gets ENOSYS as there; anything else the broker itself serves gets
EOPNOTSUPP, saying the in-memory broker does not simulate it, so that a
test never mistakes it for a missing service.
"""

import errno
import os
from typing import Any, Dict

from flux.membroker import _methods
from flux.membroker._message import FLUX_ROLE_ALL, FLUX_ROLE_OWNER, FLUX_ROLE_USER, Message

#: Services a real broker runs itself (flux-core 0.88's broker.c).
BROKER_SERVICES = frozenset([
    "broker", "log", "attr", "heaptrace", "event", "service", "module", "bootstrap", "runat",
    "state-machine", "shutdown",
])

# broker.* methods a real broker has but the in-memory one does not simulate
_UNSIMULATED = frozenset(["conf-builtin"])


class BrokerServices:
    """The ``broker.*`` methods of one rank's broker, answered through *h*,
    a handle with the broker's own credentials (its counters are the broker's)."""

    def __init__(self, h: Any, rank: int) -> None:
        self._h = h
        self.rank = rank
        self.debug_flags = 0
        self.uuid = f"{id(self) & 0xFFFFFFFF:08x}"
        self._env: Dict[str, str] = dict(os.environ)
        self._methods: Dict[str, Any] = {
            "ping": (self._ping, FLUX_ROLE_USER),
            "stats-get": (self._stats_get, FLUX_ROLE_ALL),
            "stats-clear": (self._stats_clear, 0),
            "rusage": (self._rusage, FLUX_ROLE_USER),
            "debug": (self._debug, 0),
            "config-reload": (self._config, 0),
            "config-update": (self._config, 0),
            "getenv": (self._getenv, 0),
            "setenv": (self._setenv, 0),
        }

    def answer(self, msg: Message) -> None:
        """Answer request *msg*, addressed to one of :data:`BROKER_SERVICES` here."""
        h = self._h
        h._rx["request"] += 1
        service, _, method = msg.topic.partition(".")
        entry = self._methods.get(method) if service == "broker" else None
        if entry is None:
            if msg._noresponse:
                return
            if service == "broker" and method not in _UNSIMULATED:
                h.respond_error(msg, errno.ENOSYS, f"Unknown service method '{msg.topic}'")
            else:
                h.respond_error(msg, errno.EOPNOTSUPP, f"{msg.topic}: the in-memory broker does not simulate "
                                                       f"this method of the broker's own {service} service; "
                                                       f"run on a real Flux instance")
            return
        callback, rolemask = entry
        if not msg.rolemask & (FLUX_ROLE_OWNER | rolemask):
            if not msg._noresponse:
                h.respond_error(msg, errno.EPERM, "Request requires owner credentials")
            return
        callback(msg)

    def _ping(self, msg: Message) -> None:
        _methods.answer_ping(self._h, msg, self.uuid, self.rank)

    def _stats_get(self, msg: Message) -> None:
        self._h.respond(msg, _methods.jansson_dumps(self._h._brokermod_msgcounters()))

    def _stats_clear(self, msg: Message) -> None:
        self._h._brokermod_clear_msgcounters()
        self._h.respond(msg, None)

    def _rusage(self, msg: Message) -> None:
        self._h.respond(msg, _methods.jansson_dumps(_methods.rusage()))

    def _debug(self, msg: Message) -> None:
        flags = _methods.debug_flags(msg, self.debug_flags)
        if flags is None:
            self._h.respond_error(msg, errno.EPROTO, None)
            return
        self.debug_flags = flags
        self._h.respond(msg, _methods.jansson_dumps({"flags": flags}))

    def _config(self, msg: Message) -> None:
        if _methods.request_object(self._h, msg) is not None:
            self._h.respond(msg, None)

    def _getenv(self, msg: Message) -> None:
        payload = _methods.request_object(self._h, msg, errno.EPROTO)
        names = None if payload is None else payload.get("names")
        if payload is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
            self._h.respond_error(msg, errno.EPROTO, None)
            return
        if payload is not None:
            env = {name: self._env[name] for name in names if name in self._env}
            self._h.respond(msg, _methods.jansson_dumps({"env": env}))

    def _setenv(self, msg: Message) -> None:
        payload = _methods.request_object(self._h, msg, errno.EPROTO)
        env = None if payload is None else payload.get("env")
        if payload is not None and (not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values())):
            self._h.respond_error(msg, errno.EPROTO, None)
            return
        if payload is not None:
            self._env.update(env)
            self._h.respond(msg, None)
