"""The in-memory broker: modules, routing, events, timers and the log."""

import collections
import copy
import errno
import functools
import io
import json
import math
import os
import re
import resource
import select
import socket
import syslog
import threading
import traceback
import uuid
import weakref
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

from flux import _idset, _layout, modloader
from flux._logtext import flux_error_text
from flux.membroker._libflux_bridge import module_handle_class
from flux.membroker._handle import DepartedClient, Future, Handle, send_disconnects
from flux.membroker._message import (
    FLUX_MSGTYPE_EVENT,
    FLUX_MSGTYPE_REQUEST,
    FLUX_MSGTYPE_RESPONSE,
    FLUX_NODEID_ANY,
    FLUX_NODEID_UPSTREAM,
    FLUX_POLLIN,
    FLUX_ROLE_ALL,
    FLUX_ROLE_LOCAL,
    FLUX_ROLE_OWNER,
    FLUX_ROLE_USER,
    FLUX_RPC_NORESPONSE,
    FLUX_RPC_STREAMING,
    Message,
)
from flux.membroker import _surface
from flux.membroker._builtins import BROKER_SERVICES, BrokerServices
from flux.membroker._clock import VirtualClock
from flux.membroker._methods import register_standard_methods
from flux.membroker._strands import HandoffLost, Strand, Strands
from flux.membroker._topology import DEFAULT_TOPO, Topology

#: How far :meth:`Future.get` lets the virtual clock run while it waits.
MAX_WAIT = 3600.0
#: Real seconds the broker waits, when nothing else can run, for a thread
#: of the process to make a module's file descriptor ready.
REAL_IO_WAIT = 10.0


# Module states, as flux module list shows them.
INIT = "init"
RUNNING = "running"
FINALIZING = "finalizing"
EXITED = "exited"


class ModuleError(OSError):
    """A module failed to load or to run, as ``flux module load`` reports it.

    ``errno`` is the error the module exited with; ``str()`` is one line:
    what the loader printed about it, or the error's text.
    """


class BrokerPanic(RuntimeError):
    """The broker panicked (a module failed at run time without
    ``broker.module-nopanic``): like a real instance, it is down."""


class ModuleHang(BrokerPanic):
    """A module waited for an answer nothing will ever send (a synchronous
    ``get()`` on a request to itself, or to a request nobody answers).  A
    real module would hang forever; the in-memory broker stops instead,
    and every later call says so."""


class StrayResponse(BrokerPanic):
    """A response reached a handle for a matchtag that no RPC of it waits
    for: its request had already been answered.  On a real broker the
    handle's next RPC that reuses the matchtag would take it as its own
    answer; the in-memory broker stops instead, and every later call says
    so."""


class LogEntry:
    """One broker log record, as ``flux dmesg`` shows it.

    ``timestamp`` is the broker's virtual clock when the record was made.
    """

    __slots__ = ("timestamp", "name", "level", "rank", "text")

    def __init__(self, timestamp: float, name: str, level: int, rank: int, text: str) -> None:
        self.timestamp = timestamp
        self.name = name
        self.level = level
        self.rank = rank
        self.text = text

    @property
    def level_name(self) -> str:
        """The severity as ``flux dmesg`` spells it (err, crit, warning...)."""
        from flux.brokermod import BrokerLogger  # imported late: see flux._layout

        return BrokerLogger.level_names().get(self.level, str(self.level))

    def __str__(self) -> str:
        return f"{self.name}.{self.level_name}[{self.rank}]: {self.text}"

    def __repr__(self) -> str:
        return f"<LogEntry {self}>"


class LoadedModule:
    """A module loaded into the in-memory broker: its ``flux module list`` row
    (name, state, errno it exited with) and what the broker keeps of it."""

    def __init__(
        self, broker: "Broker", name: str, path: Optional[str], args: Tuple[str, ...], rank: int = 0
    ) -> None:
        self.broker = broker
        self.name = name
        #: The rank of the broker the module runs on.
        self.rank = rank
        self.path = path
        self.args = args
        self._uuid: Optional[str] = None
        self.state = INIT
        self.errnum = 0
        self.debug_flags = 0
        self.unload_requested = False
        self.was_running = False
        #: What the module and its loader wrote to stderr.
        self.stderr = _Output(broker.stderr)
        self.services: Set[str] = {name}
        self.inflight: Dict[int, Message] = {}
        #: The BrokerModule instance the module runs (None for a mod_main
        #: that made none), for tests to inspect.
        self.instance: Any = None
        self.ctx = Strand(name)
        self.ctx.output = self.stderr
        self.handle = module_handle_class()(broker.link, broker.owner, FLUX_ROLE_OWNER | FLUX_ROLE_LOCAL, self)

    @property
    def uuid(self) -> str:
        """The module's uuid, as ``flux module list`` and message routes show it."""
        if self._uuid is None:
            self._uuid = str(uuid.uuid4())
        return self._uuid

    @property
    def exited(self) -> bool:
        """True once the module is gone (its handle's connection with it)."""
        return self.state == EXITED

    def __repr__(self) -> str:
        return f"<LoadedModule {self.name} rank={self.rank} {self.state}>"


class _Output(io.StringIO):
    """A module's stderr: kept whole, and each line added to the broker's
    stderr as soon as it is complete (as a real broker prints it)."""

    def __init__(self, lines: List[str]) -> None:
        super().__init__()
        self._lines = lines
        self._partial = ""

    def write(self, text: str) -> int:
        written = super().write(text)
        *complete, self._partial = (self._partial + text).split("\n")
        self._lines.extend(complete)
        return written

    def flush(self) -> None:
        if self._partial:
            self._lines.append(self._partial)
            self._partial = ""
        super().flush()


class HandlerError:
    """An exception a module's handler raised: ``module``, ``what`` (the
    handler, as the log names it) and ``exception``."""

    __slots__ = ("module", "what", "exception")

    def __init__(self, module: str, what: str, exception: BaseException) -> None:
        self.module = module
        self.what = what
        self.exception = exception

    def __str__(self) -> str:
        lines = traceback.format_exception(type(self.exception), self.exception, self.exception.__traceback__)
        return f"{self.module}: {self.what} handler failed:\n{''.join(lines).rstrip()}"


class BrokerLink:
    """What a :class:`Handle` asks of its broker: the one interface from
    handles to the broker (handles touch nothing else of it).

    Made by the :class:`Broker`; every handle of that broker shares it.
    """

    def __init__(self, broker: "Broker") -> None:
        self._broker = broker

    @property
    def clock(self) -> VirtualClock:
        """The broker's virtual clock (timers arm and disarm on it)."""
        return self._broker.clock

    @property
    def default_rank(self) -> int:
        """The rank clients connect to unless told otherwise."""
        return self._broker.rank

    def attr(self, name: str, rank: int) -> str:
        """Broker attribute *name* of rank *rank*'s broker (KeyError if unset)."""
        return self._broker._attr(name, rank)

    def handler_failed(self, record: Optional["LoadedModule"], what: str, exc: BaseException) -> None:
        """Keep a handler failure for the test (see :attr:`Broker.handler_errors`)."""
        self._broker.handler_errors.append(HandlerError(record.name if record else "client", what, exc))

    def config(self, rank: int) -> Optional[Dict[str, Any]]:
        """The configuration *rank*'s config service holds (a copy), or None
        while it waits for a module to take a new one: then it answers
        nothing, as flux-core's waits (synchronously) for that module."""
        broker = self._broker
        updating = broker._config_updating.get(rank)
        if updating is None:
            return copy.deepcopy(broker._held_config[rank])
        if broker.hung is None:
            broker.hung = (
                f"config.get was sent on rank {rank} while its config service waited for {updating} to answer "
                f"{updating}.config-reload: on a real instance the config service answers nothing until then, "
                f"so a module that asks for the configuration while it takes a new one (conf_get(update=True) "
                f"in options_changed) waits forever, and so does flux config reload; read the new values from "
                f"the module's options"
            )
        return None

    def send_request(self, msg: Message) -> None:
        """Route request *msg* (its ``_sender`` is the sending handle)."""
        self._broker._route_request(msg)

    def send_response(self, responder: Optional["LoadedModule"], request: Message, response: Message) -> None:
        """Deliver *response* to *request*'s sender."""
        self._broker._route_response(responder, request, response)

    def stray_response(self, handle: Handle, msg: Message) -> None:
        """Stop: response *msg* reached *handle*, and no RPC of it waits for its matchtag."""
        self._broker._stray_response(handle, msg, "reached it, and no RPC of it waits for that matchtag")

    def response_lost(self, handle: Handle, topic: str) -> None:
        """Stop: *handle*'s RPC to *topic* is used after its response was dropped."""
        broker = self._broker
        if broker.hung is None:
            broker.hung = (
                f"{handle!r} used its future for {topic} (then(), get() or await) after the response had "
                f"reached its reactor: libflux drops a response whose future has no handler yet, so on a "
                f"real broker this future never completes (or fails with EEXIST once its matchtag is "
                f"reused); use a future (then() or await) in the same callback that sends the RPC, or "
                f"send it from a BrokerModule, whose handle arms every RPC"
            )

    def publish(self, msg: Message) -> None:
        """Publish event *msg* to every subscriber on every rank."""
        self._broker._publish(msg)

    def log(self, name: str, level: int, text: str, rank: int) -> None:
        """Add *text* to rank *rank*'s log, as ``flux_log()`` does."""
        self._broker._log(name, level, text, rank)

    def wait_until(self, done: Callable[[], bool], what: str, timeout: float = -1.0) -> None:
        """Run the broker until *done* (OSError if it never will)."""
        self._broker._run_until(done, what, timeout)

    def post(self, strand: Optional[Strand], item: Callable[[], None]) -> None:
        """Queue *item* to run in *strand* (None: whichever strand drives)."""
        self._broker._strands.queue.append((strand, item))

    def next_item(
        self, strand: Strand, turn: Callable[[Callable[[], None]], bool]
    ) -> Optional[Callable[[], None]]:
        """Called by a module's reactor: go idle until there is work for *strand*.

        Return the work item, which the reactor runs with ``turn(item)``:
        the reactor's round (see :class:`Strand`).  Return None if another
        thread ran a turn and the reactor must now go on past it.
        """
        strands = self._broker._strands
        if not strands.in_turn(strand):
            return strands.wait_for_work(strand, turn)
        # A reactor run from a callback of a turn: this thread cannot park
        # (the test's frames lie below), so it runs the broker until
        # strand's next item comes up, as it would for an idle strand; the
        # test's code goes on only once that callback returns.
        stuck = (
            f"module {strand.name} runs reactor_run() inside a callback, and nothing left to run "
            f"would end it: the in-memory broker runs callbacks on the test's thread, so the "
            f"test cannot go on (to send what would end it) until that callback returns"
        )
        what = f"{strand.name}'s reactor_run()"
        return strands.wait_in_turn(strand, lambda done: self._broker._run_until(done, what, stuck=stuck))

    def module_running(self, record: "LoadedModule", pause: bool) -> None:
        """Mark *record* running (``flux module load`` returns); *pause*:
        let others run before the module goes on."""
        self._broker._set_running(record, pause)

    def service_change(self, handle: Handle, register: bool, name: str, record: "LoadedModule") -> Future:
        """Register (or unregister) service *name* for *record*; a future for the answer."""
        broker = self._broker
        change = broker._add_service if register else broker._remove_service
        return broker._service_future(handle, lambda: change(name, record))


class EventCollector:
    """The events a client subscribed to, in the order it received them.

    Made by :meth:`Broker.collect_events`.  ``events`` holds
    ``(topic, payload)`` pairs, the payload decoded as JSON (None when
    there is none).
    """

    def __init__(self, client: Handle, topic: str) -> None:
        self.client = client
        self.topic = topic
        self.events: List[Tuple[str, Any]] = []
        client.event_subscribe(topic)
        glob = f"{topic}*" if topic else "*"
        self._watcher = client.msg_watcher_create(self._received, FLUX_MSGTYPE_EVENT, glob, rolemask=FLUX_ROLE_ALL)
        self._watcher.start()

    def _received(self, h: Handle, watcher: Any, msg: Message, arg: Any) -> None:
        text = msg.payload_str
        self.events.append((msg.topic, None if text is None else json.loads(text)))

    @property
    def topics(self) -> List[str]:
        """The topics of the events collected so far."""
        return [topic for topic, _ in self.events]

    def close(self) -> None:
        """Stop collecting."""
        self._watcher.destroy()
        self.client.event_unsubscribe(self.topic)


class _Delivery:
    """A message on its way into a module's reactor."""

    __slots__ = ("handle", "msg")

    def __init__(self, handle: Handle, msg: Message) -> None:
        self.handle = handle
        self.msg = msg

    def __call__(self) -> None:
        self.handle._inbox.deliver(self.msg)


class _Response(_Delivery):
    """A response on its way to the handle that sent the request."""

    __slots__ = ()

    def __call__(self) -> None:
        self.handle._inbox.receive_response(self.msg)


class Broker:
    """A Flux broker that hosts Python modules inside this process.

    It routes requests by topic, publishes events to subscribers, checks
    credentials, provides each module's standard methods (``ping``,
    ``stats-get``, ``debug``, ``shutdown``...) and keeps a log like
    ``flux dmesg``, behaving as a real instance does.  It is deterministic:
    nothing runs in the background, and timers run on a virtual clock
    (:attr:`now`) that moves only when you wait for a response or call
    :meth:`advance`.

    Example::

        with Broker() as broker:
            broker.load("mymod.py", "--verbose")
            print(broker.rpc("mymod.info").get())
            print(broker.dmesg())
    """

    def __init__(
        self,
        rank: int = 0,
        size: int = 1,
        userid: Optional[int] = None,
        attrs: Optional[Dict[str, str]] = None,
        config: Optional[Dict[str, Any]] = None,
    ) -> None:
        _layout.prefer_this_package()
        #: The instance configuration (what a real instance loads from its
        #: TOML files): what modules read with ``h.conf_get()`` and their
        #: options' ``[NAME]`` tables.  Change it with :meth:`load_config`.
        self.config: Dict[str, Any] = copy.deepcopy(dict(config or {}))
        if not 0 <= rank < size:
            raise ValueError(f"rank {rank} is not below size {size}")
        #: The rank :meth:`rpc`, :meth:`connect`, :meth:`load` and
        #: :meth:`remove` use unless told otherwise.
        self.rank = rank
        #: The number of ranks (brokers) this instance has.
        self.size = size
        self.owner = os.getuid() if userid is None else userid
        self.attrs: Dict[str, str] = {
            "rank": str(rank),
            "size": str(size),
            "security.owner": str(self.owner),
            "instance-level": "0",
            "version": _surface.current().version,
            "hostname": socket.gethostname(),
            "hostlist": socket.gethostname(),
            "broker.pid": str(os.getpid()),
            "rundir": "/tmp/flux-membroker",
            "local-uri": "local:///tmp/flux-membroker/local-0",
            "log-level": str(syslog.LOG_DEBUG),
        }
        self.attrs.update(attrs or {})
        self.attrs.setdefault("tbon.topo", DEFAULT_TOPO)
        #: The tree of brokers a real instance of this size builds (``tbon.topo``).
        self.topology = Topology(size, self.attrs["tbon.topo"])
        #: Ranks lost with :meth:`overlay_disconnect` (``flux overlay disconnect``).
        self.lost: Set[int] = set()
        #: The virtual clock and its timers.
        self.clock = VirtualClock()
        # Each rank's ring buffer (what flux dmesg shows there).
        self._logs: List[List[LogEntry]] = [[] for _ in range(size)]
        #: The log of :attr:`rank`'s broker, as ``flux dmesg`` there shows it.
        self.log: List[LogEntry] = self._logs[rank]
        #: What module loaders printed (the broker's stderr), line by line.
        self.stderr: List[str] = []
        self.panicked: Optional[str] = None
        #: Every exception a module's handler raised (the library answered
        #: and logged it); the pytest fixture fails the test on them.
        self.handler_errors: List[HandlerError] = []
        #: Why a module would hang forever on a real instance, once one would.
        self.hung: Optional[str] = None
        #: What a stray response would have reached on a real instance, once one came.
        self.stray: Optional[str] = None
        self._strands = Strands()
        # The configuration each rank's config service holds (a follower
        # keeps its old one when one of its modules refuses the new one).
        self._held_config: List[Dict[str, Any]] = [self.config] * size
        # rank: the module its config service waits for (load_config)
        self._config_updating: Dict[int, str] = {}
        # Per rank: loaded modules and registered services, by name.
        self._modules: List[Dict[str, LoadedModule]] = [{} for _ in range(size)]
        self._services: List[Dict[str, LoadedModule]] = [{} for _ in range(size)]
        self._event_seq = 0
        # Client handles, held weakly: a test that drops one disconnects it.
        self._clients: "weakref.WeakValueDictionary[int, Handle]" = weakref.WeakValueDictionary()
        # (route, rank, services, userid, rolemask) of clients dropped since
        # the driver last looked: deque.append is atomic, from any thread.
        self._departed: "collections.deque[Tuple[str, int, List[str], int, int]]" = collections.deque()
        # (module, rank, item) to run once the instant has settled (call_when_settled),
        # appended from a module's strand, taken one at a time by the driver.
        self._settled: "collections.deque[Tuple[str, int, Callable[[], None]]]" = collections.deque()
        # Per rank: the broker's own services (broker.ping...), made on first use.
        self._builtins: Dict[int, BrokerServices] = {}
        #: The interface handles use (see BrokerLink).
        self.link = BrokerLink(self)
        self._owner_handle = self.connect()

    # The public interface

    @property
    def modules(self) -> Dict[str, LoadedModule]:
        """Modules loaded on :attr:`rank`, by name (a copy)."""
        return dict(self._modules[self.rank])

    def modules_on(self, rank: int) -> Dict[str, LoadedModule]:
        """Modules loaded on *rank*, by name (a copy), as ``flux module list`` there."""
        return dict(self._modules[self._rank(rank)])

    def connect(
        self, userid: Optional[int] = None, rolemask: Optional[int] = None, rank: Optional[int] = None
    ) -> Handle:
        """Return a client handle, connected to *rank* (default :attr:`rank`).

        By default it has the owner's credentials (rolemask OWNER|LOCAL, as
        owner requests have on a real instance); pass ``rolemask=FLUX_ROLE_USER``
        and another *userid* to act as a guest.
        """
        if rolemask is None:
            rolemask = FLUX_ROLE_OWNER | FLUX_ROLE_LOCAL if userid in (None, self.owner) else FLUX_ROLE_USER
        client = Handle(self.link, self.owner if userid is None else userid, rolemask, rank=self._rank(rank))
        self._clients[id(client)] = client
        # Dropped, it disconnects as flux-core's handle does; the finalizer may
        # run on any thread, so it only queues what the driver sends (_departures).
        weakref.finalize(client, self._departed.append,
                         (client._route, client._inbox.rank, client._services_used, client._userid, rolemask))
        return client

    def rpc(self, topic: str, payload: Any = None, nodeid: int = FLUX_NODEID_ANY, flags: int = 0) -> Future:
        """Send a request as the instance owner (see :meth:`Handle.rpc`)."""
        return self._owner_handle.rpc(topic, payload, nodeid, flags)

    def event_send(self, topic: str, payload: Any = None) -> None:
        """Publish an event as the instance owner."""
        self._owner_handle.event_send(topic, payload)
        self.run_until_idle()

    def load(
        self,
        module: Union[str, "os.PathLike[str]", Callable[..., Any]],
        *args: str,
        name: Optional[str] = None,
        rank: Union[int, str, None] = None,
    ) -> Any:
        """Load a module, like ``flux module load [--name NAME] PATH ARGS...``.

        *module* is a path to a ``.py`` file, or (handy in tests) a
        BrokerModule subclass or a ``mod_main``-like function, which then
        needs *name*.  Returns its :class:`LoadedModule` once the module is
        running.  *rank* is the rank to load it on (default :attr:`rank`),
        or ``"all"`` or an idset such as ``"1-3"`` to load it on each of
        those ranks, as ``flux exec -r RANKS flux module load`` does; then
        the list of them is returned.

        :raises ModuleError: if the module exits before it runs, with the
            errno it exited with and the loader's one-line message.
        """
        if isinstance(rank, str):
            return [self.load(module, *args, name=name, rank=r) for r in self._ranks(rank)]
        on = self._rank(rank)
        self._check_alive()
        path: Optional[str] = None
        entry: Optional[Callable[..., Any]] = None
        if isinstance(module, (str, os.PathLike)):
            path = os.fspath(module)
            if not os.path.exists(path):
                raise ModuleError(
                    errno.ENOENT,
                    f"could not canonicalize module path '{path}': No such file or directory",
                )
            path = os.path.abspath(path)
            if name is None:
                name = os.path.basename(path).split(".", 1)[0]
        else:
            entry = _entry_point_of(module)
            if name is None:
                raise ValueError(f"load({module!r}): give the module a name= when loading a class or function")
        if "." in name:
            raise ModuleError(errno.EINVAL, f"load {path or name}: Invalid argument (module name {name!r} has a dot)")
        if name in self._modules[on]:
            raise ModuleError(errno.EEXIST, f"{name}: File exists")
        if name in self._services[on] or name in BROKER_SERVICES:
            raise ModuleError(errno.EEXIST, f"{name}: service is already registered: File exists")
        # The broker passes arguments to the loader as one space-joined
        # string, which the loader splits on whitespace.
        record = LoadedModule(self, name, path, tuple(modloader.split_args(" ".join(args))), rank=on)
        register_standard_methods(self, record)
        self._modules[on][name] = record
        self._services[on][name] = record
        # flux-core 0.84 and 0.85 log the loader's start with the insmod line
        # (its pid still -1); 0.86 and later log insmod, then the loader's
        # pid as soon as its process runs: before anything the module logs,
        # even when it fails to load.
        if _old_insmod():
            self._log("broker", syslog.LOG_DEBUG, f"insmod {name} exec pid=-1", on)
        else:
            self._log("broker", syslog.LOG_DEBUG, f"insmod {name}", on)
            self._log("broker", syslog.LOG_DEBUG, f"module-python-exec {name} pid={os.getpid()}", on)
        _make_room_for_descriptors(sum(map(len, self._modules)))
        self._strands.spawn(record.ctx, lambda: self._module_main(record, entry))
        self._run_until(lambda: record.state != INIT, f"load {name}")
        if record.state == EXITED and record.errnum:
            detail = record.stderr.getvalue().strip().splitlines()
            raise ModuleError(record.errnum, detail[0] if detail else f"{name}: {os.strerror(record.errnum)}")
        return record

    def remove(self, name: str, rank: Union[int, str, None] = None) -> None:
        """Remove a module, like ``flux module remove NAME``: send it
        ``NAME.shutdown`` and wait for it to exit.  *rank*: as for
        :meth:`load`; on several ranks, as ``flux exec`` does, it is removed
        wherever it runs, and then ModuleError (ENOENT) names the ranks that
        did not have it."""
        if isinstance(rank, str):
            absent = []
            for r in self._ranks(rank):
                if name in self._modules[r]:
                    self.remove(name, rank=r)
                else:
                    absent.append(r)
            if absent:
                raise ModuleError(errno.ENOENT, f"{name}: No such file or directory (rank {_idset.encode(absent)})")
            return
        on = self._rank(rank)
        self._check_alive()
        record = self._modules[on].get(name)
        if record is None:
            raise ModuleError(errno.ENOENT, f"{name}: No such file or directory")
        record.unload_requested = True
        self._log("broker", syslog.LOG_DEBUG, f"rmmod {name}", on)
        self._owner_handle.rpc(f"{name}.shutdown", nodeid=on, flags=FLUX_RPC_NORESPONSE)
        self._run_until(lambda: record.state == EXITED, f"remove {name}")

    def load_config(self, config: Dict[str, Any]) -> Dict[int, str]:
        """Replace the instance configuration, as ``flux config load`` (or
        ``flux config reload`` after editing the TOML files) does.

        As flux-core's config service does: each module on rank 0 gets
        ``NAME.config-reload`` with the new configuration, in the order
        they were loaded; if one refuses, those already updated get the old
        one back and OSError is raised with that module's error (``error
        updating NAME: TEXT``), the configuration unchanged.  Then each
        follower does the same, parents before children; a follower whose
        module refuses logs ``parent update: ...`` at LOG_ERR and keeps
        its old configuration, and so does its subtree.  Return the
        followers' refusals, ``{rank: TEXT}`` (empty when all took it).
        """
        self._check_alive()
        if not isinstance(config, dict):
            raise TypeError(f"load_config(): the configuration is a dict (a TOML table), not {type(config).__name__}")
        new = copy.deepcopy(config)
        json.dumps(new, allow_nan=False)  # ValueError/TypeError: not what TOML can hold
        failure = self._update_rank(0, new)
        if failure is not None:
            raise OSError(failure[0], failure[1])
        self.config = new
        applied = {0}
        refused: Dict[int, str] = {}
        for rank in range(1, self.size):  # a parent's rank is below its children's
            if self.topology.parent(rank) not in applied or rank in self.lost:
                continue
            failure = self._update_rank(rank, new)
            if failure is None:
                applied.add(rank)
                self._log("config", syslog.LOG_DEBUG, "parent update applied", rank)
            else:
                self._log("config", syslog.LOG_ERR, f"parent update: {failure[1]}", rank)
                refused[rank] = failure[1]
        return refused

    def _update_rank(self, rank: int, new: Dict[str, Any]) -> Optional[Tuple[int, str]]:
        """Give *rank*'s modules configuration *new* (config.c's
        update_all_new); (errno, text) if one refused."""
        if self._held_config[rank] == new:
            return None
        old = self._held_config[rank]
        updated: List[str] = []
        try:  # the service answers nothing else until it is done (see BrokerLink.config)
            for name in list(self._modules[rank]):
                self._config_updating[rank] = name
                try:
                    self._owner_handle.rpc(f"{name}.config-reload", new, nodeid=rank).get()
                except OSError as exc:
                    if exc.errno == errno.ENOSYS:
                        continue
                    for done in updated:
                        self._config_updating[rank] = done
                        try:
                            self._owner_handle.rpc(f"{done}.config-reload", old, nodeid=rank).get()
                        except OSError as undo:
                            self._log("config", syslog.LOG_ERR, f"error reverting {done}: {undo.strerror}", rank)
                    # config.c formats it into a flux_error_t, which cuts it
                    return exc.errno, flux_error_text(f"error updating {name}: {exc.strerror}")
                updated.append(name)
        finally:
            self._config_updating.pop(rank, None)
        self._held_config[rank] = new
        return None

    def overlay_disconnect(self, rank: int) -> None:
        """Cut *rank* and the ranks below it off the instance, as ``flux overlay
        disconnect RANK`` does (measured on flux-core 0.88).

        Their brokers exit, so their modules stop; a request to one of those
        ranks, or one in flight to a module there, fails with EHOSTUNREACH;
        the parent's ``overlay.monitor`` reports *rank* ``lost`` and each
        broker above reports its child on the way ``degraded``.
        """
        rank = self._rank(rank)
        self._check_alive()
        parent = self.topology.parent(rank)
        if parent is None:
            raise ValueError("rank 0 is the root of the tree: it has no parent to disconnect it from")
        if rank in self.lost:
            raise ValueError(f"rank {rank} is already lost")
        severed = self.topology.subtree(rank)
        host = self.attrs["hostname"]
        self._log("overlay", syslog.LOG_ERR, f"{host} (rank {rank}) disconnected by request and severed "
                                              f"contact with {len(severed) - 1} other nodes", parent)
        # Cut off first: what their modules send as they stop reaches no one
        # outside, and what was in flight to them fails as the overlay fails
        # it, EHOSTUNREACH without a text (measured on flux-core 0.88).
        self.lost.update(severed)
        for lost in severed:
            for name, record in list(self._modules[lost].items()):
                for msg in list(record.inflight.values()):
                    if msg._sender is None or msg._sender._inbox.rank not in severed:
                        record.inflight.pop(id(msg))
                        self._broker_error(msg, errno.EHOSTUNREACH, None)
                record.unload_requested = True
                self._broker_services(lost).handle.rpc(f"{name}.shutdown", nodeid=lost, flags=FLUX_RPC_NORESPONSE)
                self._run_until(lambda: record.state == EXITED, f"stop {name} on lost rank {lost}")
        self._broker_services(parent).set_child_status(rank, "lost")
        child = parent
        while child != 0:
            above = self.topology.parent(child)
            self._broker_services(above).set_child_status(child, "degraded")
            child = above
        self._log("broker", syslog.LOG_ERR, f"dead to Flux: {','.join([host] * len(severed))} "
                                             f"(rank {_idset.encode(severed)})", 0)
        self.run_until_idle()

    def run_until_idle(self) -> None:
        """Deliver every queued message and due timer, without moving the clock."""
        self._check_alive()
        self._strands.check_thread()
        while self._send_departures() or self._strands.step() or self._fire_due_timers() or self._release_settled():
            pass
        if self.stray is not None:
            raise StrayResponse(self.stray)

    def call_when_settled(self, name: str, item: Callable[[], None], rank: int = 0) -> None:
        """Run *item* in module *name*'s context (on *rank*) once nothing
        else is left to run at this virtual instant, before the clock moves;
        items queued so run one per settling, in the order queued.

        For stand-ins of events a real instance spreads milliseconds apart
        (two jobs ending "at once"): each one's consequences play out before
        the next arrives.  An item of a module that has exited is dropped."""
        self._settled.append((name, rank, item))

    def _release_settled(self) -> bool:
        while self._settled:
            name, rank, item = self._settled.popleft()
            record = self._modules[rank].get(name)
            if record is not None and record.state != EXITED:
                self._strands.queue.append((record.ctx, item))
                return True
        return False

    def advance(self, seconds: float) -> None:
        """Move the virtual clock forward, firing the timers that fall due."""
        if seconds < 0:
            raise ValueError("cannot move the clock backwards")
        target = self.now + seconds
        self.run_until_idle()
        due = self.clock.next_due()
        while due is not None and due <= target:
            self.clock.jump(due)
            self.run_until_idle()
            due = self.clock.next_due()
        self.clock.jump(target)
        self.run_until_idle()

    def run_until(self, done: Callable[[], bool], what: str, timeout: Optional[float] = None) -> None:
        """Run the broker, letting virtual time pass from timer to timer,
        until ``done()`` is true.

        :raises OSError: EDEADLK naming *what* when nothing is left to run
            and ``done()`` is still false; ETIMEDOUT once *timeout* virtual
            seconds have passed (default: no limit).
        """
        self._run_until(done, what, math.inf if timeout is None else timeout)

    @property
    def now(self) -> float:
        """The virtual clock, in seconds."""
        return self.clock.now

    def dmesg(self, name: Optional[str] = None, rank: Optional[int] = None) -> List[str]:
        """The log as ``flux dmesg`` lines on *rank* (default :attr:`rank`),
        optionally only one module's.

        As on a real instance, each rank's ring buffer holds its own lines
        only; lines at ``log-stderr-level`` (LOG_ERR) or more urgent from
        every rank also go to the instance's stderr (:attr:`stderr`).
        """
        entries = self._logs[self._rank(rank)]
        return [str(entry) for entry in entries if name is None or entry.name == name]

    def close(self) -> None:
        """Close every client handle (each service it used gets
        ``NAME.disconnect``), then remove every module still loaded."""
        try:
            if (self.panicked is not None or self.hung is not None or self.stray is not None
                    or self._strands.lost is not None):
                return  # down, or stuck: nothing more can run
            for client in list(self._clients.values()):
                client.close()
            self._clients.clear()
            self.run_until_idle()
            for on, modules in enumerate(self._modules):
                for name in list(modules):
                    if self.panicked is None and name in modules:
                        self.remove(name, rank=on)
        finally:
            self._strands.close()

    def __enter__(self) -> "Broker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # Running things

    def _check_alive(self) -> None:
        if self._strands.lost is not None:
            raise HandoffLost(self._strands.lost)
        if self.stray is not None:
            raise StrayResponse(self.stray)
        if self.hung is not None:
            raise ModuleHang(self.hung)
        if self.panicked is not None:
            raise BrokerPanic(self.panicked)

    def _run_until(
        self, done: Callable[[], bool], what: str, timeout: float = -1.0, stuck: Optional[str] = None
    ) -> None:
        """Run queued work until *done*, letting virtual time pass if idle.

        A module that waits so, with nothing left to run, hangs: *stuck*
        says why (by default, a synchronous get() nothing will answer).
        """
        self._strands.check_thread()
        limit = self.now + (MAX_WAIT if timeout < 0 else timeout)
        while not done():
            if self.hung is not None:
                raise ModuleHang(self.hung)
            if self.stray is not None:
                raise StrayResponse(self.stray)
            if self._send_departures() or self._strands.step() or self._fire_due_timers() or self._release_settled():
                continue  # answers sent before a panic are still delivered
            self._check_alive()
            due = self.clock.next_due()
            if self._wake_on_real_io(waiting=due is None or due > limit):
                continue
            if due is not None and due <= limit:
                self.clock.jump(due)
                continue
            if timeout >= 0 and limit != math.inf:
                self.clock.jump(limit)
                raise OSError(errno.ETIMEDOUT, f"{what}: timed out after {timeout:g} virtual seconds")
            if due is not None:
                raise OSError(errno.ETIMEDOUT, f"{what}: no answer within {MAX_WAIT:g} virtual seconds")
            if self._strands.current is not self._strands.driver:
                self.hung = stuck or (
                    f"module {self._strands.current.name} waited for {what} (a synchronous get()), "
                    f"which nothing will ever answer: a real module would hang here forever"
                )
                raise ModuleHang(self.hung)
            raise OSError(errno.EDEADLK, f"{what}: no answer, and nothing left to run")
        if self.stray is not None:
            raise StrayResponse(self.stray)

    def _wake_on_real_io(self, waiting: bool) -> bool:
        """Wake the modules with a watched descriptor ready to read; True if any.

        Virtual time never waits for real I/O, but a thread of the test's
        process (an asyncio executor's, say) may still write to a module's
        descriptor: when nothing else can run (*waiting*) and such a thread
        is alive, wait for that in real time (up to REAL_IO_WAIT seconds).
        """
        watched = [(record, fd) for ranks in self._modules for record in ranks.values()
                   for fd, events in record.handle._inbox.watched_fds() if events & FLUX_POLLIN]
        if not watched:
            return False
        timeout = REAL_IO_WAIT if waiting and _other_threads_alive() else 0.0
        poller = select.poll()  # not select(): it refuses descriptors past 1024
        for _, fd in watched:
            poller.register(fd, select.POLLIN)
        readable = {fd for fd, revents in poller.poll(timeout * 1000) if not revents & select.POLLNVAL}
        woken = {id(record): record for record, fd in watched if fd in readable}
        for record in woken.values():
            record.handle._inbox.wake()
        return bool(woken)

    def _fire_due_timers(self) -> bool:
        fired = False
        for watcher in self.clock.pop_due():
            record = watcher.flux_handle._inbox.record
            if record is None or record.state == EXITED:
                continue
            self._strands.queue.append((record.ctx, watcher._fire))
            fired = True
        return fired

    def _set_running(self, record: LoadedModule, pause: bool) -> None:
        if record.state != INIT:
            return
        record.state = RUNNING
        record.was_running = True
        record.handle._counters["tx"]["request"] += 1  # the loader's status request
        if pause:
            self._strands.pause(record.ctx)

    def _module_main(self, record: LoadedModule, entry: Optional[Callable[..., Any]]) -> None:
        """What the loader does, in the module's own context."""
        counters = record.handle._counters  # the RFC 5 welcome: one request, one response
        counters["tx"]["request"] += 1
        counters["rx"]["response"] += 1
        errnum = modloader.run_module(record.handle, record.path or record.name, record.args, record.stderr, entry)
        self._finalize(record, errnum)

    def _finalize(self, record: LoadedModule, errnum: int) -> None:
        record.state = FINALIZING
        for item in self._strands.drop(record.ctx):
            if isinstance(item, _Delivery) and item.msg.type == FLUX_MSGTYPE_REQUEST and not item.msg._noresponse:
                record.handle.respond_error(item.msg, errno.ENOSYS, None)
        self._module_exited(record, errnum)

    def _module_exited(self, record: LoadedModule, errnum: int) -> None:
        name = record.name
        record.errnum = errnum
        record.state = EXITED
        record.stderr.flush()
        on = record.rank
        self._log("broker", syslog.LOG_DEBUG, f"module {name} exited", on)
        if errnum:
            self._log("broker", syslog.LOG_ERR, f"{name}: {os.strerror(errnum)}", on)
        services = self._services[on]
        for service in list(record.services):
            if services.get(service) is record:
                del services[service]
        for msg in list(record.inflight.values()):
            self._broker_error(msg, errno.EHOSTUNREACH, "module disconnect")
        record.inflight.clear()
        if self._modules[on].get(name) is record:
            del self._modules[on][name]
        if record.was_running and errnum and not record.unload_requested:
            # The same line with or without broker.module-nopanic (measured);
            # without it, the instance then goes down.
            self._log("broker", syslog.LOG_CRIT, f"{name} module runtime failure", on)
            if self.attrs.get("broker.module-nopanic", "0") in ("", "0"):
                self.panicked = f"{name} module runtime failure"

    # Routing

    def _route_request(self, msg: Message) -> None:
        if self.panicked is not None:
            raise BrokerPanic(self.panicked)
        origin = msg._sender._inbox.rank if msg._sender is not None else self.rank
        nodeid = msg._nodeid
        if origin in self.lost and nodeid not in (origin, FLUX_NODEID_ANY):
            # A broker cut off the instance reaches only itself.
            self._broker_error(msg, errno.EHOSTUNREACH, None)
            return
        if nodeid == FLUX_NODEID_UPSTREAM:
            if origin == 0:
                self._broker_error(msg, errno.EHOSTUNREACH, None)  # rank 0 has no upstream
                return
            ranks = self.topology.path_to_root(origin)[1:2]  # one hop only (measured)
        elif nodeid == FLUX_NODEID_ANY:
            # the local broker first, then upstream (a lost broker has none)
            ranks = (origin,) if origin in self.lost else self.topology.path_to_root(origin)
        elif nodeid >= self.size or (nodeid in self.lost and origin not in self.lost):
            self._broker_error(msg, errno.EHOSTUNREACH, None)
            return
        else:
            ranks = (nodeid,)
        service = msg.topic.split(".", 1)[0]
        if service in BROKER_SERVICES:  # the broker itself answers: the first rank on the way
            self._broker_services(ranks[0]).answer(msg)
            return
        record = None
        for rank in ranks:
            record = self._services[rank].get(service)
            if record is not None:
                break
        if record is None and nodeid == FLUX_NODEID_UPSTREAM:
            self.hung = self.hung or (
                f"{msg.topic} was sent upstream from rank {origin}, and rank {ranks[0]} has no {service} "
                f"service: a real instance sends such a request back and forth between rank {ranks[0]} "
                f"and rank {origin} forever, never answering it (measured on flux-core 0.84 to master); "
                f"send it to the parent's rank instead"
            )
            return  # the test's next call to the broker raises ModuleHang
        if record is None or record.state == EXITED:
            self._broker_error(msg, errno.ENOSYS, f"No service matching {msg.topic} is registered")
            return
        if record.rank != origin and msg.rolemask & FLUX_ROLE_LOCAL:
            msg.rolemask &= ~FLUX_ROLE_LOCAL  # the overlay clears it on the way to another broker
        if not msg._flags & FLUX_RPC_NORESPONSE:
            record.inflight[id(msg)] = msg
        self._strands.queue.append((record.ctx, _Delivery(record.handle, msg)))

    def _route_response(self, responder: Optional[LoadedModule], request: Message, response: Message) -> None:
        final = response._errnum or not request._flags & FLUX_RPC_STREAMING
        if request._matchtag:  # an RPC waits for it: one final answer, nothing after
            if request._answered:
                self._stray_response(request._sender, response, "was sent after its final answer")
                return
            request._answered = bool(final)
        if responder is not None and final:
            responder.inflight.pop(id(request), None)
        sender = request._sender
        if sender is None:
            return
        self._strands.queue.append((None, _Response(sender, response)))

    def _stray_response(self, handle: Optional[Handle], msg: Message, why: str) -> None:
        """Record (and drop) a response that, on a real broker, the handle's next
        RPC reusing its matchtag would take: the test's next broker call raises
        :class:`StrayResponse`."""
        what = f"error {msg._errnum}" if msg._errnum else "a response"
        if self.stray is None:
            self.stray = (
                f"{what} to {msg.topic} (matchtag {msg._matchtag}) {why}: on a real broker "
                f"{handle!r} would take it as the answer to its next request that reuses "
                f"matchtag {msg._matchtag}"
            )

    def _broker_error(self, request: Message, errnum: int, errstr: Optional[str]) -> None:
        if request._noresponse or request._sender is None:
            return
        response = Message(FLUX_MSGTYPE_RESPONSE, request.topic, None, matchtag=request._matchtag, flags=request._flags)
        response._errnum = errnum
        response._errstr = errstr
        self._strands.queue.append((None, _Response(request._sender, response)))

    def _publish(self, msg: Message) -> None:
        if self.panicked is not None:
            raise BrokerPanic(self.panicked)
        self._event_seq += 1
        msg._seq = self._event_seq
        for record in [record for modules in self._modules for record in modules.values()]:
            if record.state == EXITED:
                continue
            if any(msg.topic.startswith(sub) for sub in record.handle._inbox.subscriptions):
                self._strands.queue.append((record.ctx, _Delivery(record.handle, msg)))
        for client in list(self._clients.values()):
            if any(msg.topic.startswith(sub) for sub in client._inbox.subscriptions):
                self._strands.queue.append((None, _Delivery(client, msg)))

    def collect_events(self, topic: str = "", userid: Optional[int] = None) -> "EventCollector":
        """Start collecting the events whose topic starts with *topic*.

        Returns an :class:`EventCollector`; its ``events`` list fills as
        events are published (by modules or tests), as a client that
        subscribed would receive them.
        """
        return EventCollector(self.connect(userid=userid), topic)

    def _broker_services(self, rank: int) -> BrokerServices:
        services = self._builtins.get(rank)
        if services is None:
            h = Handle(self.link, self.owner, FLUX_ROLE_OWNER | FLUX_ROLE_LOCAL, rank=rank)
            services = self._builtins[rank] = BrokerServices(
                h, rank, functools.partial(self._attr, rank=rank), self.topology,
                functools.partial(self.link.config, rank))
        return services

    def _add_service(self, name: str, record: LoadedModule) -> None:
        if name in BROKER_SERVICES:
            raise OSError(errno.EEXIST, f"service {name} is the broker's own")
        if "." in name:
            raise OSError(errno.EINVAL, f"could not register service {name} for module {record.name}: Invalid argument")
        services = self._services[record.rank]
        if name in services:
            raise OSError(errno.EEXIST, f"service {name} is already registered")
        services[name] = record
        record.services.add(name)

    def _remove_service(self, name: str, record: LoadedModule) -> None:
        services = self._services[record.rank]
        if services.get(name) is not record:
            raise OSError(errno.ENOENT, f"service {name} is not registered by {record.name}")
        del services[name]
        record.services.discard(name)

    def _service_future(self, handle: Handle, action: Callable[[], None]) -> Future:
        future = Future(handle, "service")
        response = Message(FLUX_MSGTYPE_RESPONSE, "service", None)
        try:
            action()
        except OSError as exc:
            response._errnum = exc.errno or errno.EINVAL
            response._errstr = exc.strerror
        future._fulfill(response)
        return future

    def _attr(self, name: str, rank: int) -> str:
        if name == "rank":
            return str(rank)
        if name == "tbon.level":
            return str(self.topology.level(rank))
        if name == "tbon.maxlevel":
            return str(self.topology.maxlevel)
        if name == "tbon.descendants":
            return str(self.topology.descendants(rank))
        return self.attrs[name]

    def _ranks(self, ranks: str) -> List[int]:
        """The ranks of ``"all"`` or an idset, lowest first."""
        if ranks == "all":
            return list(range(self.size))
        try:
            return sorted(_idset.decode(ranks, limit=self.size))
        except ValueError as exc:
            raise ValueError(f"rank {ranks!r}: give a rank, 'all' or an idset of ranks below {self.size} "
                             f"({exc})") from None

    def _send_departures(self) -> bool:
        """Disconnect the client handles dropped since last time (on the
        driver's thread); True if there were any."""
        departed = self._departed
        if not departed:
            return False
        while departed:
            route, rank, services, userid, rolemask = departed.popleft()
            if services:  # else closed already, or it never sent a request
                send_disconnects(self.link, DepartedClient(route, rank), services, userid, rolemask)
        return True

    def _rank(self, rank: Optional[int]) -> int:
        if rank is None:
            return self.rank
        if not isinstance(rank, int) or not 0 <= rank < self.size:
            raise ValueError(f"rank {rank!r} is not one of 0..{self.size - 1}")
        return rank

    def _log(self, name: str, level: int, text: str, rank: Optional[int] = None) -> None:
        """Record a message as the broker's log does: in the ring buffer at
        ``log-level`` and below, on stderr at ``log-stderr-level`` and below."""
        on = self.rank if rank is None else rank
        keep = level <= _int_attr(self.attrs, "log-level", syslog.LOG_DEBUG)
        for line in _log_lines(text):
            entry = LogEntry(self.now, name, level, on, line)
            if keep:
                self._logs[on].append(entry)
            if level <= _int_attr(self.attrs, "log-stderr-level", syslog.LOG_ERR):
                self.stderr.append(str(entry))


def _old_insmod() -> bool:
    """True when imitating flux-core before 0.86, whose broker logs
    ``insmod NAME exec pid=-1`` and no ``module-python-exec`` line."""
    return _surface.current().older_than("0.86")


_LINE_BREAKS = re.compile("[\r\n]+")


def _log_lines(text: str) -> List[str]:
    """The records flux_log() makes of *text*: trailing line breaks dropped,
    one record up to the first break, then one per non-empty line after it."""
    first, *rest = _LINE_BREAKS.split(text.rstrip("\r\n"), 1)
    return [first] + [line for line in _LINE_BREAKS.split(rest[0]) if line] if rest else [first]


def _int_attr(attrs: Dict[str, str], name: str, default: int) -> int:
    try:
        return int(attrs.get(name, default))
    except ValueError:
        return default


def _entry_point_of(module: Callable[..., Any]) -> Callable[..., Any]:
    from flux.brokermod import BrokerModule, entry_point_of

    if isinstance(module, type) and issubclass(module, BrokerModule):
        return entry_point_of(module)
    if callable(module):
        return module
    raise TypeError(f"cannot load {module!r}: expected a path, a BrokerModule subclass or a function")


# Descriptors a module may hold in this process: its asyncio loop's
# self-pipe (two) and a few of its own.
_DESCRIPTORS_PER_MODULE = 4


def _make_room_for_descriptors(modules: int) -> None:
    """Raise this process's soft limit on open files (up to the hard limit)
    so that *modules* modules fit: on a real instance each broker, and each
    module's loader, is a process with a limit of its own."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 256 + modules * _DESCRIPTORS_PER_MODULE
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY:
            wanted = min(wanted, hard)
        if wanted > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _other_threads_alive() -> bool:
    """True if a thread besides the broker's strands and the main thread runs."""
    main = threading.main_thread()
    return any(t is not main and not t.name.startswith("membroker:") for t in threading.enumerate())
