"""The broker's own services, as far as the in-memory broker serves them.

A real broker answers requests to ``broker.*`` itself (libflux's default
methods, and ``getenv``/``setenv``/``conf-builtin``), and runs a few more
services inside the broker process (``log``, ``attr``, ``event``,
``service``, ``module``...).  Loaded modules cannot register those names.
In memory, ``broker.ping``, ``stats-get``, ``stats-clear``, ``rusage``,
``debug``, ``config-reload``/``config-update``, ``getenv`` and ``setenv``,
and ``config.get`` (the configuration that rank holds), answer as on a
real broker (measured on flux-core 0.88; module code and flux-core's own
``flux modprobe`` call them); an unknown ``broker``
method gets ENOSYS as there; anything else the broker itself serves gets
EOPNOTSUPP, saying the in-memory broker does not simulate it, so that a
test never mistakes it for a missing service.
"""

import errno
import os
from typing import Any, Callable, Dict, List, Optional

from flux.membroker import _methods
from flux.membroker._message import FLUX_ROLE_ALL, FLUX_ROLE_OWNER, FLUX_ROLE_USER, FLUX_RPC_STREAMING, Message
from flux.membroker._topology import Topology

#: Services a real broker runs itself (flux-core 0.88's broker.c, and its
#: overlay, which flux-core 0.88 made a built-in module).
BROKER_SERVICES = frozenset([
    "broker", "log", "attr", "heaptrace", "event", "service", "module", "bootstrap", "runat",
    "state-machine", "shutdown", "overlay", "config",
])

# broker.* methods a real broker has but the in-memory one does not simulate
_UNSIMULATED = frozenset(["conf-builtin"])

# attr.get's "flags": 1 (ATTR_IMMUTABLE) but for the tbon.* attributes
# (measured on flux-core 0.88: rank, size and log-level give 1, tbon.* 0).
_MUTABLE_PREFIX = "tbon."


class BrokerServices:
    """The broker's own methods on one rank, answered through *h*, a handle
    with the broker's own credentials (its counters are the broker's).

    *attr* gives that broker's attributes by name (KeyError if unset) and
    *topology* is the instance's :class:`~flux.membroker._topology.Topology`.
    """

    def __init__(self, h: Any, rank: int, attr: Callable[[str], str], topology: Topology,
                 config: Callable[[], Optional[Dict[str, Any]]]) -> None:
        self._h = h
        self._config_held = config
        self.rank = rank
        self.debug_flags = 0
        self.uuid = f"{id(self) & 0xFFFFFFFF:08x}"
        self._env: Dict[str, str] = dict(os.environ)
        self._attr = attr
        self._topology = topology
        # overlay.monitor requests waiting for news of a child's subtree
        self._monitors: List[Message] = []
        # each child's subtree status, as overlay.monitor reports it
        self.child_status: Dict[int, str] = {child: "full" for child in topology.children(rank)}
        self._methods: Dict[str, Any] = {
            "broker.ping": (self._ping, FLUX_ROLE_USER),
            "broker.stats-get": (self._stats_get, FLUX_ROLE_ALL),
            "broker.stats-clear": (self._stats_clear, 0),
            "broker.rusage": (self._rusage, FLUX_ROLE_USER),
            "broker.debug": (self._debug, 0),
            "broker.config-reload": (self._config, 0),
            "broker.config-update": (self._config, 0),
            "broker.getenv": (self._getenv, 0),
            "broker.setenv": (self._setenv, 0),
            "attr.get": (self._attr_get, FLUX_ROLE_ALL),
            "overlay.topology": (self._overlay_topology, FLUX_ROLE_USER),
            "overlay.monitor": (self._overlay_monitor, 0),
            "overlay.disconnect": (self._overlay_disconnect, FLUX_ROLE_USER),
            "config.get": (self._config_get, FLUX_ROLE_USER),
            "config.load": (self._config_change, 0),
            "config.reload": (self._config_change, 0),
        }

    @property
    def handle(self) -> Any:
        """The broker's own handle on this rank (its credentials: the owner's)."""
        return self._h

    def answer(self, msg: Message) -> None:
        """Answer request *msg*, addressed to one of :data:`BROKER_SERVICES` here."""
        h = self._h
        h._rx["request"] += 1
        service, _, method = msg.topic.partition(".")
        entry = self._methods.get(msg.topic)
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

    def set_child_status(self, child: int, status: str) -> None:
        """Child *child*'s subtree is now *status* (``lost``, ``degraded``...):
        tell the overlay.monitor requests, as the overlay does."""
        if self.child_status.get(child) == status:
            return
        self.child_status[child] = status
        for msg in self._monitors:
            self._h.respond(msg, _monitor_answer(child, status))

    def _attr_get(self, msg: Message) -> None:
        payload = _methods.request_object(self._h, msg, errno.EPROTO)
        name = None if payload is None else payload.get("name")
        if payload is None:
            return
        if not isinstance(name, str):
            self._h.respond_error(msg, errno.EPROTO, None)
            return
        try:
            value = self._attr(name)
        except KeyError:
            self._h.respond_error(msg, errno.ENOENT, None)
            return
        flags = 0 if name.startswith(_MUTABLE_PREFIX) else 1
        self._h.respond(msg, _methods.jansson_dumps({"value": value, "flags": flags}))

    def _overlay_topology(self, msg: Message) -> None:
        payload = _methods.request_object(self._h, msg, errno.EPROTO)
        if payload is None:
            return
        rank = payload.get("rank")
        if not isinstance(rank, int) or isinstance(rank, bool):
            self._h.respond_error(msg, errno.EPROTO, None)
            return
        if rank != self.rank and rank not in self.child_status:
            self._h.respond_error(msg, errno.ENOENT, "requested rank is not this broker or its direct child")
            return
        self._h.respond(msg, _methods.jansson_dumps(self._topology.as_json(rank)))

    def _overlay_monitor(self, msg: Message) -> None:
        if not msg._flags & FLUX_RPC_STREAMING:
            self._h.respond_error(msg, errno.EPROTO, None)
            return
        for child, status in self.child_status.items():
            if status != "offline":
                self._h.respond(msg, _monitor_answer(child, status))
        self._monitors.append(msg)

    def _overlay_disconnect(self, msg: Message) -> None:
        sender = msg._sender
        self._monitors = [m for m in self._monitors if m._sender is not sender or m.userid != msg.userid]

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

    def _config_get(self, msg: Message) -> None:
        config = self._config_held()
        if config is not None:  # None: busy, as flux-core's config service is during an update
            self._h.respond(msg, config)

    def _config_change(self, msg: Message) -> None:
        self._h.respond_error(msg, errno.EOPNOTSUPP, f"{msg.topic}: in memory, a test changes the configuration "
                                                     f"with Broker.load_config(config)")

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


def _monitor_answer(child: int, status: str) -> str:
    return _methods.jansson_dumps({"rank": child, "status": status, "torpid": False})
