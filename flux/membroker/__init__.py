"""An in-memory Flux broker: run and test broker modules without flux-core.

The broker hosts modules inside the current Python process and behaves
like a real Flux instance (as measured on flux-core 0.88): requests are
routed by topic and checked against credentials, events reach their
subscribers, every module has the standard methods, and the log reads
like ``flux dmesg``.  It is deterministic: no background threads run,
and timers follow a virtual clock that tests control.

Example::

    from flux.membroker import Broker

    with Broker() as broker:
        broker.load("examples/mymod.py")
        print(broker.rpc("mymod.info").get())
"""

from flux.membroker._broker import (
    MAX_WAIT,
    Broker,
    BrokerPanic,
    EventCollector,
    HandlerError,
    LogEntry,
    LoadedModule,
    ModuleError,
    ModuleHang,
    StrayResponse,
)
from flux.membroker._strands import HandoffLost
from flux.membroker._handle import Future, Handle, MessageWatcher, TimerWatcher
from flux.membroker._message import (
    FLUX_MSGTYPE_ANY,
    FLUX_MSGTYPE_CONTROL,
    FLUX_MSGTYPE_EVENT,
    FLUX_MSGTYPE_REQUEST,
    FLUX_MSGTYPE_RESPONSE,
    FLUX_NODEID_ANY,
    FLUX_ROLE_ALL,
    FLUX_ROLE_LOCAL,
    FLUX_ROLE_NONE,
    FLUX_ROLE_OWNER,
    FLUX_ROLE_USER,
    FLUX_RPC_NORESPONSE,
    FLUX_RPC_STREAMING,
    Message,
)

from flux.membroker import _surface
from flux.membroker._provide import provide_flux_core_modules
from flux.membroker._surface import imitate, versions

#: The former name of :class:`LoadedModule`.
Module = LoadedModule

provide_flux_core_modules()
_surface.current()  # the imitated flux-core version: $FLUX_BROKERMOD_FLUX_CORE, or the newest release

__all__ = [
    "MAX_WAIT",
    "Broker",
    "BrokerPanic",
    "EventCollector",
    "HandlerError",
    "HandoffLost",
    "FLUX_MSGTYPE_ANY",
    "FLUX_MSGTYPE_CONTROL",
    "FLUX_MSGTYPE_EVENT",
    "FLUX_MSGTYPE_REQUEST",
    "FLUX_MSGTYPE_RESPONSE",
    "FLUX_NODEID_ANY",
    "FLUX_ROLE_ALL",
    "FLUX_ROLE_LOCAL",
    "FLUX_ROLE_NONE",
    "FLUX_ROLE_OWNER",
    "FLUX_ROLE_USER",
    "FLUX_RPC_NORESPONSE",
    "FLUX_RPC_STREAMING",
    "Future",
    "Handle",
    "LogEntry",
    "Message",
    "MessageWatcher",
    "LoadedModule",
    "Module",
    "ModuleError",
    "ModuleHang",
    "StrayResponse",
    "TimerWatcher",
    "imitate",
    "versions",
]
