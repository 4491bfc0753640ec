"""Helpers for testing broker modules on a real Flux instance.

The pytest fixtures built on them (``membroker``, ``flux_instance``) are in
the plugin the package installs, ``flux_brokermod_pytest``.  This module's
public API:

* :class:`FluxInstance` (and :func:`start_instance`): a private instance
  started with ``flux start``, with :meth:`~FluxInstance.load`,
  :meth:`~FluxInstance.remove`, :meth:`~FluxInstance.rpc`,
  :meth:`~FluxInstance.start_rpc` and :meth:`~FluxInstance.dmesg`;
* :func:`find_flux`, :func:`flux_version` (:func:`flux_version_text`) and :func:`skip_reason`: which
  ``flux`` to use, and why real-instance tests cannot run here;
* :class:`RPCResult`, :func:`wait_for` and :func:`module_names`.

Example::

    from flux.brokermod_testing import start_instance

    def test_info():
        instance = start_instance()          # skips without flux-core 0.84+
        try:
            instance.load("mymod.py")
            assert instance.rpc("mymod.info").get() == {"name": "mymod"}
        finally:
            instance.stop()
"""

import errno
import json
import os
import re
import select
import signal
import subprocess
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import pytest

from flux import _idset
from flux._flux_command import find_flux
from flux._brokermod_cli import loader_dir

find_flux.__module__ = __name__  # public here; defined where the CLI imports it without pytest

__all__ = [
    "FluxInstance",
    "MemoryBroker",
    "RealBroker",
    "collect_answers",
    "RPCResult",
    "find_flux",
    "flux_version",
    "flux_version_text",
    "module_names",
    "skip_reason",
    "start_instance",
    "wait_for",
]

#: Oldest flux-core whose loader runs Python modules.
MIN_FLUX_VERSION = (0, 84, 0)

_RPC_SCRIPT = r"""
import json, sys, time
import flux
from flux.constants import FLUX_RPC_STREAMING
# The payload comes on stdin: an argument list is limited (about 128 KiB).
topic, nodeid, streaming = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
take, cancel_wait, timeout = int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
payload = json.loads(sys.stdin.read())
h = flux.Flux()
f = h.rpc(topic, payload if payload is not None else None, nodeid=nodeid,
          flags=FLUX_RPC_STREAMING if streaming else 0)
out = []
deadline = None  # once cancelled
while True:
    if deadline is not None:
        try:
            if time.monotonic() >= deadline:
                raise OSError("late")
            f.wait_for(deadline - time.monotonic())
        except OSError:
            print(json.dumps({"not_cancelled": take}))
            sys.exit(0)
    else:
        try:
            f.wait_for(timeout)
        except OSError:
            print(json.dumps({"no_answer": len(out)}))
            sys.exit(0)
    try:
        out.append({"payload": f.get_str()})
    except OSError as exc:
        out.append({"errno": exc.errno, "error": exc.strerror})
        break
    if not streaming:
        break
    if len(out) == take:  # enough: cancel, as flux-core's own clients do
        h.rpc(topic + "-cancel", {"matchtag": f.pimpl.get_matchtag()}, nodeid, 1)
        deadline = time.monotonic() + cancel_wait
    f.reset()
print(json.dumps(out))
"""

# A request sent without a matchtag (flux_send(), as flux-core's job manager
# sends sched.alloc): its answers are taken by topic, up to a count.
_SEND_SCRIPT = r"""
import json, sys
import flux
from flux.constants import FLUX_MSGTYPE_RESPONSE
from flux.message import Message
from _flux._core import lib
topic, nodeid, count, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
payload = json.loads(sys.stdin.read())
h = flux.Flux()
out = []

def answer(h, watcher, msg, arg):
    try:
        out.append({"payload": msg.decode()[2]})
    except OSError as exc:
        out.append({"errno": exc.errno, "error": exc.strerror})
    if len(out) >= count:
        h.reactor_stop()

late = []

def too_late(h, watcher, revents, arg):
    late.append(len(out))
    h.reactor_stop()

watcher = h.msg_watcher_create(answer, FLUX_MSGTYPE_RESPONSE, topic)
watcher.start()
request = Message()
request.topic = topic
if payload is not None:
    request.payload_str = json.dumps(payload)
lib.flux_msg_set_nodeid(request.handle, nodeid)
h.send(request)
if count > 0:
    h.timer_watcher_create(timeout, too_late).start()
    h.reactor_run()
print(json.dumps({"no_answer": late[0]} if late else out))
"""


def flux_version_text(flux: str) -> Optional[str]:
    """Return the version *flux* reports (``0.88.0``, ``0.88.0-59-g4a5e79f56``), or None."""
    try:
        out = subprocess.run([flux, "version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"commands:\s+(\S+)", out)
    return match.group(1) if match else None


def flux_version(flux: str) -> Optional[tuple]:
    """Return flux-core's release as a tuple of ints, or None."""
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", flux_version_text(flux) or "")
    return tuple(int(part) for part in match.groups()) if match else None


def skip_reason() -> Optional[str]:
    """Why real-instance tests cannot run here, or None if they can."""
    flux = find_flux()
    if flux is None:
        return "no real Flux: flux-core 0.84+ not found on PATH (or $FLUX_BROKERMOD_FLUX)"
    version = flux_version(flux)
    if version is None:
        return f"no real Flux: `{flux} version` did not report a version"
    if version < MIN_FLUX_VERSION:
        found = ".".join(map(str, version))
        return f"no real Flux: {flux} is flux-core {found}, Python modules need 0.84+"
    return None


class RPCResult:
    """The answer(s) to one request made by :meth:`FluxInstance.rpc`."""

    def __init__(self, topic: str, answers: List[Dict[str, Any]]) -> None:
        self.topic = topic
        self.answers = answers

    def get_str(self) -> Optional[str]:
        """The first response's payload text; OSError if it was an error."""
        first = self.answers[0]
        if "errno" in first:
            raise OSError(first["errno"], first["error"])
        return first["payload"]

    def get(self) -> Any:
        """The first response's payload decoded as JSON."""
        text = self.get_str()
        return None if text is None else json.loads(text)

    def stream(self) -> List[Any]:
        """Every payload of a streaming request, decoded, before its end."""
        return [json.loads(a["payload"]) for a in self.answers if "payload" in a]


class PendingRPC:
    """A request sent by :meth:`FluxInstance.start_rpc`, not yet answered."""

    def __init__(self, topic: str, proc: "subprocess.Popen[str]", timeout: float, rpc_timeout: float) -> None:
        self.topic = topic
        self._proc = proc
        self._timeout = timeout
        self._rpc_timeout = rpc_timeout

    def wait(self) -> RPCResult:
        """Wait for the answer(s) and return them."""
        try:
            out, err = self._proc.communicate(timeout=self._timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate()
            raise AssertionError(f"rpc {self.topic}: no answer in {self._timeout:g} s") from None
        if self._proc.returncode != 0:
            raise AssertionError(f"rpc {self.topic} client failed: {err.strip()}")
        answers = json.loads(out)
        if isinstance(answers, dict) and "no_answer" in answers:
            raise AssertionError(_no_answer(self.topic, self._rpc_timeout, answers["no_answer"]))
        if isinstance(answers, dict):
            raise AssertionError(_not_cancelled(self.topic, answers["not_cancelled"]))
        return RPCResult(self.topic, answers)


class FluxInstance:
    """A private Flux instance started with ``flux start``.

    Commands run inside it with :meth:`flux`; the helpers :meth:`load`,
    :meth:`remove`, :meth:`rpc` and :meth:`dmesg` wrap the usual ones.
    *attrs* are broker attributes (``flux start -SKEY=VALUE``); *setup*
    runs ``.py`` modules on this library's loader (False: flux-core's);
    *env* adds variables to the environment of the instance and of every
    command run in it; *config_path* is a directory of TOML files, the
    instance configuration (``flux start --config-path``); *exit_mode*
    ``"leader"`` keeps the instance running when a follower broker exits
    (``flux start --test-exit-mode``), as a system instance does.
    """

    def __init__(
        self,
        flux: str,
        size: int = 1,
        attrs: Optional[Dict[str, str]] = None,
        setup: bool = True,
        timeout: float = 120.0,
        env: Optional[Dict[str, str]] = None,
        config_path: Optional[str] = None,
        exit_mode: Optional[str] = None,
    ) -> None:
        self.flux_command = flux
        self.config_path = config_path
        self.exit_mode = exit_mode
        #: Ranks cut off by :meth:`RealBroker.lose_rank` (their brokers exited).
        self.lost: set = set()
        self.size = size
        self.attrs = dict(attrs or {})
        self.setup = setup
        self.timeout = timeout
        self.env = dict(env or {})
        #: The instance's ``FLUX_URI`` once started (None before): give it to
        #: ``flux.Flux(uri)`` in a test, or set it as ``FLUX_URI`` for a command.
        self.uri: Optional[str] = None
        self._proc: Optional["subprocess.Popen[str]"] = None
        self._stderr = tempfile.NamedTemporaryFile(prefix="flux-instance-", suffix=".err")

    def environment(self) -> Dict[str, str]:
        """The environment ``flux start`` runs with."""
        env = dict(os.environ)
        env.update(self.env)
        if self.setup:
            prepend = env.get("FLUX_EXEC_PATH_PREPEND", "")
            env["FLUX_EXEC_PATH_PREPEND"] = ":".join(p for p in [loader_dir(), prepend] if p)
        return env

    def start(self) -> "FluxInstance":
        """Start the instance and wait for its URI."""
        cmd = [self.flux_command, "start", f"--test-size={self.size}"]
        if self.config_path is not None:
            cmd.append(f"--config-path={self.config_path}")
        if self.exit_mode is not None:
            cmd.append(f"--test-exit-mode={self.exit_mode}")
        cmd += [f"-S{key}={value}" for key, value in self.attrs.items()]
        cmd += ["sh", "-c", 'echo "$FLUX_URI"; exec cat']
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=self.environment(),
            text=True,
            start_new_session=True,
        )
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], self.timeout)
        line = self._proc.stdout.readline().strip() if ready else ""
        if not line:
            self.stop()
            raise RuntimeError(f"flux start gave no URI: {self.stderr()[-2000:]}")
        self.uri = line
        return self

    def stop(self) -> int:
        """Shut the instance down (killing it if it does not stop in time)."""
        proc = self._proc
        if proc is None:
            return 0
        self._proc = None
        self.uri = None
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            return proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait(timeout=30)
        finally:
            if proc.stdout is not None:
                proc.stdout.close()

    def stderr(self) -> str:
        """What the brokers printed on stderr so far."""
        with open(self._stderr.name, errors="replace") as f:
            return f.read()

    def flux(self, *args: str, env: Optional[Dict[str, str]] = None, timeout: Optional[float] = None) -> "subprocess.CompletedProcess[str]":
        """Run ``flux ARGS`` inside the instance; return the completed process."""
        if self.uri is None:
            raise RuntimeError("the instance is not running")
        full_env = self.environment()
        full_env["FLUX_URI"] = self.uri
        full_env.update(env or {})
        return subprocess.run(
            [self.flux_command, *args],
            capture_output=True,
            text=True,
            errors="replace",  # a module may log bytes that are not UTF-8
            env=full_env,
            timeout=timeout or self.timeout,
        )

    def load(self, path: str, *args: str, name: Optional[str] = None, rank: Optional[str] = None) -> "subprocess.CompletedProcess[str]":
        """``flux module load [--name NAME] PATH ARGS``; AssertionError if it fails.

        With *rank* (an idset such as ``all``), load it on those ranks with
        ``flux exec -r RANK``.
        """
        options = ["--name", name] if name else []
        return self._module_command(["load", *options, os.path.abspath(path), *args], rank)

    def remove(self, name: str, rank: Optional[str] = None) -> "subprocess.CompletedProcess[str]":
        """``flux module remove NAME``; AssertionError if it fails."""
        return self._module_command(["remove", name], rank)

    def _module_command(self, args: List[str], rank: Optional[str]) -> "subprocess.CompletedProcess[str]":
        cmd = ["module", *args]
        if rank is not None:
            cmd = ["exec", "-r", rank, "flux", *cmd]
        result = self.flux(*cmd)
        if result.returncode != 0:
            raise AssertionError(f"flux {' '.join(cmd)} failed: {result.stderr.strip()}")
        return result

    def rpc(
        self,
        topic: str,
        payload: Any = None,
        nodeid: int = 0xFFFFFFFF,
        streaming: bool = False,
        guest: bool = False,
        take: int = 0,
        timeout: Optional[float] = None,
    ) -> RPCResult:
        """Send a request from a separate client process; return its answers.

        With *guest*, the client masquerades as a guest (userid 1234,
        rolemask FLUX_ROLE_USER), as the instance owner may for tests.  A
        *streaming* request is read to its end; with *take*, after that many
        responses it is cancelled (``TOPIC-cancel``) and read to its ENODATA.
        Each answer must come within *timeout* seconds (default
        :data:`RPC_TIMEOUT`), else AssertionError naming the topic.
        """
        return self.start_rpc(topic, payload, nodeid, streaming, guest, take, timeout).wait()

    def start_rpc(
        self,
        topic: str,
        payload: Any = None,
        nodeid: int = 0xFFFFFFFF,
        streaming: bool = False,
        guest: bool = False,
        take: int = 0,
        timeout: Optional[float] = None,
    ) -> "PendingRPC":
        """Like :meth:`rpc`, but return at once; ``.wait()`` gives the result."""
        timeout = RPC_TIMEOUT if timeout is None else _rpc_timeout(timeout)
        if self.uri is None:
            raise RuntimeError("the instance is not running")
        env = self.environment()
        env["FLUX_URI"] = self.uri
        if guest:
            env.update(FLUX_HANDLE_USERID="1234", FLUX_HANDLE_ROLEMASK="0x2")
        args = [topic, str(nodeid), "1" if streaming else "0", str(take), str(CANCEL_WAIT), repr(timeout)]
        proc = subprocess.Popen(
            [self.flux_command, "python", "-c", _RPC_SCRIPT, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps(payload))
        except BrokenPipeError:  # the client failed at once: wait() says why
            pass
        finally:
            proc.stdin.close()
            proc.stdin = None  # closed: communicate() must not flush it
        # The client process itself is bounded too (it might hang connecting).
        return PendingRPC(topic, proc, max(self.timeout, timeout + 30.0), timeout)

    def send_without_matchtag(
        self,
        topic: str,
        payload: Any = None,
        answers: int = 0,
        nodeid: int = 0xFFFFFFFF,
        guest: bool = False,
        timeout: Optional[float] = None,
    ) -> RPCResult:
        """Send a request without a matchtag from a client process, as
        flux-core's job manager sends ``sched.alloc`` (``flux_send()``);
        take its first *answers* responses by topic (each within *timeout*
        seconds, default :data:`RPC_TIMEOUT`) and return them."""
        timeout = RPC_TIMEOUT if timeout is None else _rpc_timeout(timeout)
        if self.uri is None:
            raise RuntimeError("the instance is not running")
        env = self.environment()
        env["FLUX_URI"] = self.uri
        if guest:
            env.update(FLUX_HANDLE_USERID=str(GUEST), FLUX_HANDLE_ROLEMASK="0x2")
        result = subprocess.run(
            [self.flux_command, "python", "-c", _SEND_SCRIPT, topic, str(nodeid), str(answers), repr(timeout)],
            input=json.dumps(payload), capture_output=True, text=True, env=env, timeout=timeout + 30.0,
        )
        if result.returncode != 0:
            raise AssertionError(f"send {topic} client failed: {result.stderr.strip()}")
        out = json.loads(result.stdout)
        if isinstance(out, dict):
            raise AssertionError(f"send {topic} without matchtag: {out['no_answer']} of {answers} answers "
                                 f"in {timeout:g} s")
        return RPCResult(topic, out)

    def dmesg(self) -> List[str]:
        """``flux dmesg`` lines, without their timestamps."""
        out = self.flux("dmesg").stdout
        return [re.sub(r"^\S+\s", "", line, count=1) for line in out.splitlines()]

    def __enter__(self) -> "FluxInstance":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_instance(
    size: int = 1,
    attrs: Optional[Dict[str, str]] = None,
    setup: bool = True,
    env: Optional[Dict[str, str]] = None,
    exit_mode: Optional[str] = None,
) -> FluxInstance:
    """Start a :class:`FluxInstance`, or skip the calling test with the reason."""
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    flux = find_flux()
    assert flux is not None
    return FluxInstance(flux, size=size, attrs=attrs, setup=setup, env=env, exit_mode=exit_mode).start()


def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll *predicate* (for real-instance tests only) until true or timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def module_names(instance: FluxInstance) -> Sequence[str]:
    """Names in ``flux module list`` of *instance*."""
    lines = instance.flux("module", "list").stdout.splitlines()[1:]
    return [line.split()[0] for line in lines if line.strip()]


# One interface over both brokers

#: The userid of the guest that ``guest=True`` acts as.
GUEST = 1234


def _membroker() -> Any:
    """flux.membroker, imported when first needed."""
    from flux import membroker

    return membroker


def collect_answers(future: Any, streaming: bool, cancel: Optional[Callable[[], None]] = None,
                    take: int = 0, topic: str = "?",
                    clock: Callable[[], float] = time.monotonic,
                    timeout: Optional[float] = None) -> List[Dict[str, Any]]:
    """Every answer *future* gets, as RPCResult records; after *take*
    responses of a stream, *cancel* is called (and the stream read on to
    its end).

    Each answer is waited for first, for up to *timeout* seconds of
    *clock* (default :data:`RPC_TIMEOUT`): when none comes, that is an
    AssertionError naming the topic, so that no test passes for an error
    answer that never came (the in-memory broker's EDEADLK, nothing left
    to run that could answer, is one too).  After the cancel the wait is
    :data:`CANCEL_WAIT`, and a stream that does not end is an
    AssertionError saying so.
    """
    timeout = RPC_TIMEOUT if timeout is None else _rpc_timeout(timeout)
    answers: List[Dict[str, Any]] = []
    deadline: Optional[float] = None  # by *clock*, once cancelled
    while True:
        if deadline is not None:
            try:
                if clock() >= deadline:
                    raise OSError(errno.ETIMEDOUT, "")
                future.wait_for(deadline - clock())
            except OSError:
                raise AssertionError(_not_cancelled(topic, take)) from None
        else:
            try:
                future.wait_for(timeout)
            except OSError as exc:
                if exc.errno == errno.ETIMEDOUT:
                    raise AssertionError(_no_answer(topic, timeout, len(answers))) from None
                raise AssertionError(f"rpc {topic}: no answer, and nothing left to run in memory could answer it "
                                     f"(a real broker: no answer in {timeout:g} s)") from None
        try:
            answers.append({"payload": future.get_str()})
        except OSError as exc:
            answers.append({"errno": exc.errno, "error": exc.strerror})
            break
        if not streaming:
            break
        if len(answers) == take and cancel is not None:
            cancel()
            deadline = clock() + CANCEL_WAIT
        future.reset()
    return answers


def _epoch(stamp: str) -> float:
    """Seconds since the epoch of a ``flux dmesg`` ISO timestamp (0 if not one)."""
    import datetime

    try:
        return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        return 0.0


#: Seconds a stream has to end after its ``TOPIC-cancel`` (``take=``).
CANCEL_WAIT = 10.0

#: Seconds the fixtures' ``rpc`` waits for each answer by default (virtual
#: seconds in memory), before failing the test naming the topic.
RPC_TIMEOUT = 30.0


def _rpc_timeout(timeout: Any) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
        raise ValueError(f"rpc timeout={timeout!r}: expected a finite number of seconds > 0")
    return float(timeout)


def _no_answer(topic: str, timeout: float, answered: int) -> str:
    after = f" after {answered} responses" if answered else ""
    return f"rpc {topic}: no answer in {timeout:g} s{after}"


def _not_cancelled(topic: str, taken: int) -> str:
    return (f"rpc {topic}: the stream did not end within {CANCEL_WAIT:g} s of {topic}-cancel (sent after {taken} "
            f"responses): the service does not take a cancel (a generator handler does; an async def handler "
            f"that responds in a loop, or flux-core's groups.get, does not)")


class _BothBrokers:
    """What :class:`MemoryBroker` and :class:`RealBroker` share: loading on
    ranks, and removing after a test what it loaded.

    *rank* arguments are a rank, an RFC 22 idset string (``"1-6"``) or
    ``"all"``; None is the rank clients connect to (0).
    """

    def __init__(self) -> None:
        # (name, rank) of each load through this object, for cleanup().
        self._loaded: List[tuple] = []
        # The configuration before the first load_config(), for cleanup().
        self._first_config: Optional[Dict[str, Any]] = None

    def load_config(self, config: Dict[str, Any]) -> Optional[str]:
        """Replace the instance configuration (``flux config load``): each
        module gets ``NAME.config-reload``.  Return None when every rank's
        modules took it; else one line: the error of rank 0's module that
        refused it (``error updating NAME: TEXT``), or, when followers'
        modules refused it (flux config load still succeeds), which ranks
        did and the first one's error (``ranks 1-3 refused: error updating
        NAME: TEXT``); each keeps its old configuration, and so do the
        ranks below it."""
        if self._first_config is None:
            self._first_config = self.config()
        started = time.time()
        refused = self._load_config(config)
        if refused is not None or self.size == 1:
            return refused
        followers = self._followers_refusals(config, started)
        if not followers:
            return None
        ranks = sorted(followers)
        return f"rank{'s' if len(ranks) > 1 else ''} {_idset.encode(ranks)} refused: {followers[ranks[0]]}"

    def _ranks(self, rank: Any) -> Optional[List[int]]:
        """*rank* as a sorted list of ranks (None for the default rank)."""
        if rank is None:
            return None
        if rank == "all":
            return list(range(self.size))
        ranks = sorted(_idset.decode(rank) if isinstance(rank, str) else {int(rank)})
        outside = [r for r in ranks if not 0 <= r < self.size]
        if outside:
            raise ValueError(f"rank {outside[0]} is not in an instance of size {self.size}")
        return ranks

    def load(self, path, *args, name=None, rank=None):
        """``flux module load [--name NAME] PATH ARGS`` on *rank* (default:
        rank 0; ``"all"`` or an idset: each of those ranks, as ``flux exec
        -r RANKS flux module load`` does).  AssertionError or
        :class:`~flux.membroker.ModuleError` if it fails."""
        if name is None and isinstance(path, (str, os.PathLike)):
            name = os.path.basename(os.fspath(path)).split(".", 1)[0]
        self._loaded.append((name, rank))
        self._load(path, args, name, self._ranks(rank))

    def remove(self, name, rank=None):
        """``flux module remove NAME`` on *rank* (as for :meth:`load`)."""
        self._remove(name, self._ranks(rank), force=False)

    def load_on(self, path, rank, *args):
        """``load(path, *args, rank=rank)``."""
        self.load(path, *args, rank=rank)

    def remove_on(self, name, rank):
        """``remove(name, rank=rank)``."""
        self.remove(name, rank=rank)

    def lose_rank(self, rank: int) -> List[int]:
        """``flux overlay disconnect RANK``: cut *rank* and the ranks below
        it off the instance, as when a node fails.  Their brokers exit, the
        others go on serving; return once rank 0 has logged them dead to
        Flux, with the ranks lost (sorted).  A real instance that lost a
        rank is not shared with later tests."""
        if not isinstance(rank, int) or isinstance(rank, bool) or not 0 < rank < self.size:
            raise ValueError(f"lose_rank({rank!r}): expected a rank from 1 to {self.size - 1} (rank 0 has no parent)")
        self._disconnect(rank)
        dead: List[int] = []

        def logged() -> bool:
            for line in self.dmesg():
                match = re.search(r"broker\.err\[0\]: dead to Flux: .* \(rank ([0-9,-]+)\)$", line)
                if match and rank in _idset.decode(match.group(1)):
                    dead[:] = sorted(_idset.decode(match.group(1)))
                    return True
            return False

        self.settle(logged, f"rank 0 to log rank {rank} dead to Flux")
        self._lost_ranks().update(dead)
        return dead

    def cleanup(self, before: Sequence[str] = ()) -> None:
        """Remove what this object loaded, on every rank where it still
        runs, and whatever else is on rank 0 but not in *before*."""
        for name, rank in reversed(self._loaded):
            ranks = self._ranks(rank)
            if ranks is not None:
                ranks = [r for r in ranks if r not in self._lost_ranks()]
                if not ranks:
                    continue
            self._remove(name, ranks, force=True)
        self._loaded.clear()
        for name in set(self.modules()) - set(before):
            self._remove(name, None, force=True)
        if self._first_config is not None:
            self._load_config(self._first_config)
            self._first_config = None


class MemoryBroker(_BothBrokers):
    """The in-memory broker (:class:`flux.membroker.Broker`) behind the
    interface :class:`RealBroker` shares, so one test body runs on both.

    *size* ranks in the tree *topo* builds (``tbon.topo``, such as
    ``"kary:2"``; default as ``flux start --test-size``).  ``broker`` is
    the in-memory broker itself.
    """

    #: False here, True for :class:`RealBroker`.
    real = False

    def __init__(self, attrs=None, size=1, topo=None):
        super().__init__()
        attrs = dict(attrs or {})
        if topo is not None:
            attrs["tbon.topo"] = topo
        self.broker = _membroker().Broker(size=size, attrs=attrs)

    @property
    def size(self):
        """The number of ranks (brokers) of the instance."""
        return self.broker.size

    def _load(self, path, args, name, ranks):
        for rank in ranks if ranks is not None else [None]:
            self.broker.load(path, *args, name=name, rank=rank)

    def config(self):
        """The configuration rank 0 holds (``flux config get``)."""
        return self.broker.connect().rpc("config.get").get()

    def _followers_refusals(self, config, started):
        return self._refusals

    def _load_config(self, config):
        self._refusals = {}
        try:
            json.dumps(config, allow_nan=False)
        except ValueError:
            # What flux config load says of the JSON Python writes for NaN or
            # an infinity: not JSON, so it reads it as TOML (measured on 0.88).
            return "flux-config: TOML parse error: syntax error"
        try:
            self._refusals = self.broker.load_config(config)
        except OSError as exc:
            return exc.strerror
        return None

    def _remove(self, name, ranks, force):
        for rank in ranks if ranks is not None else [None]:
            if force and name not in self.broker.modules_on(self.broker.rank if rank is None else rank):
                continue
            self.broker.remove(name, rank=rank)

    def _disconnect(self, rank):
        self.broker.overlay_disconnect(rank)

    def _lost_ranks(self):
        return self.broker.lost

    def try_load(self, path, *args):
        """Load; return None, or the errno the load failed with."""
        try:
            self.load(path, *args)
        except _membroker().ModuleError as exc:
            return exc.errno
        return None

    def load_error(self, path, *args, name=None):
        """Load that must fail: return (errno or None, broker stderr text)."""
        before = len(self.broker.stderr)
        with pytest.raises(_membroker().ModuleError) as info:
            self.broker.load(path, *args, name=name)
        return info.value.errno, "\n".join(self.broker.stderr[before:] + [str(info.value)])

    def _client(self, guest):
        return self.broker.connect(userid=GUEST, rolemask=_membroker().FLUX_ROLE_USER) if guest else self.broker.connect()

    def rpc(self, topic, payload=None, streaming=False, guest=False, take=0, nodeid=None, timeout=None):
        """Send a request (to rank *nodeid*, default: any) from a client of
        its own; return its answers.  A *streaming* request is read to its
        end; with *take*, it is cancelled after that many responses.  Each
        answer must come within *timeout* seconds (default
        :data:`RPC_TIMEOUT`; virtual time here), else AssertionError naming
        the topic."""
        return self.start_rpc(topic, payload, streaming, guest, take, nodeid, timeout).wait()

    def start_rpc(self, topic, payload=None, streaming=False, guest=False, take=0, nodeid=None, timeout=None):
        """Send a request as :meth:`rpc` does, and return at once, once the
        broker has nothing left to run; ``wait()`` gives its RPCResult."""
        from flux.brokermod import cancel_stream

        membroker = _membroker()
        client = self._client(guest)
        future = client.rpc(topic, payload, nodeid=membroker.FLUX_NODEID_ANY if nodeid is None else nodeid,
                            flags=membroker.FLUX_RPC_STREAMING if streaming else 0)
        self.broker.run_until_idle()
        broker = self.broker

        class Pending:
            def wait(self_):
                answers = collect_answers(future, streaming, lambda: cancel_stream(client, future, topic), take,
                                          topic, lambda: broker.now, timeout)
                # As the real side's client process exits: its disconnects reach
                # the module now, not whenever the garbage collector finds the
                # handle; a broker that went down takes no more (as a real
                # client's answers reach it before the instance goes down).
                if broker.panicked is None:
                    client.close()
                return RPCResult(topic, answers)

        return Pending()

    def send_without_matchtag(self, topic, payload=None, answers=0, nodeid=None, guest=False, timeout=None):
        """Send a request without a matchtag, as flux-core's job manager
        sends ``sched.alloc`` (``flux_send()``), from a client of its own;
        take its first *answers* responses by topic (within *timeout*
        seconds, default :data:`RPC_TIMEOUT`; virtual time here) and return
        them as an RPCResult.  AssertionError if fewer come."""
        membroker = _membroker()
        timeout = RPC_TIMEOUT if timeout is None else _rpc_timeout(timeout)
        client = self._client(guest)
        got = []

        def answer(h, watcher, msg, arg):
            try:
                got.append({"payload": msg.decode()[2]})
            except OSError as exc:
                got.append({"errno": exc.errno, "error": exc.strerror})

        client.msg_watcher_create(answer, membroker.FLUX_MSGTYPE_RESPONSE, topic).start()
        body = None if payload is None else json.dumps(payload).encode()
        client.send(membroker.Message(membroker.FLUX_MSGTYPE_REQUEST, topic, body,
                                      nodeid=membroker.FLUX_NODEID_ANY if nodeid is None else nodeid))
        try:
            self.broker.run_until(lambda: len(got) >= answers, f"{answers} answers to {topic}", timeout)
            self.broker.run_until_idle()
        except OSError:
            raise AssertionError(f"send {topic} without matchtag: {len(got)} of {answers} answers "
                                 f"in {timeout:g} s") from None
        finally:
            client.close()
        return RPCResult(topic, got[:answers] if answers else [])

    def event(self, topic, payload=None, guest=False):
        """Publish an event (as a guest with *guest*)."""
        self._client(guest).event_send(topic, payload)
        self.broker.run_until_idle()

    def dmesg(self):
        """Rank 0's log, as ``flux dmesg`` shows it."""
        return self.broker.dmesg()

    def clear_log(self):
        """``flux dmesg --clear`` on every rank."""
        for rank in range(self.broker.size):
            self.broker._logs[rank].clear()

    def dmesg_on(self, rank):
        """*rank*'s log."""
        return self.broker.dmesg(rank=rank)

    def stderr_text(self):
        """What module loaders printed on the broker's stderr."""
        return "\n".join(self.broker.stderr)

    def modules(self):
        """Names of the modules loaded on rank 0."""
        return list(self.broker.modules)

    def owner(self):
        """The instance owner's userid."""
        return self.broker.owner

    def settle(self, predicate, what, timeout=30.0):
        """Let virtual time pass (up to *timeout* s, as RealTarget waits) until
        *predicate* (on a broker that went down, time stops: it is asked once)."""
        for _ in range(int(timeout * 10)):
            if self.broker.panicked is not None:
                break
            self.broker.run_until_idle()
            if predicate():
                return
            self.broker.advance(0.1)
        assert predicate(), what

    def wait(self, seconds):
        """Let *seconds* pass (virtual time here)."""
        self.broker.advance(seconds)

    def close(self):
        """Close the broker (unless it panicked)."""
        if self.broker.panicked is None:
            self.broker.close()


class RealBroker(_BothBrokers):
    """A real instance (a :class:`FluxInstance`) behind the interface
    :class:`MemoryBroker` shares.

    ``instance`` is the :class:`FluxInstance`.
    """

    #: True here, False for :class:`MemoryBroker`.
    real = True

    def __init__(self, instance):
        super().__init__()
        self.instance = instance

    @property
    def size(self):
        """The number of ranks (brokers) of the instance."""
        return self.instance.size

    def _load(self, path, args, name, ranks):
        self.instance.load(path, *args, name=name, rank=None if ranks is None else _idset.encode(ranks))

    def config(self):
        """The configuration rank 0 holds (``flux config get``)."""
        result = self.instance.flux("config", "get")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def _load_config(self, config):
        env = self.instance.environment()
        env["FLUX_URI"] = self.instance.uri
        result = subprocess.run([self.instance.flux_command, "config", "load"], input=json.dumps(config),
                                capture_output=True, text=True, env=env, timeout=self.instance.timeout)
        if result.returncode == 0:
            return None
        return result.stderr.strip().split("flux-config: load: ", 1)[-1]

    def _followers_refusals(self, config, started):
        """Wait for each follower to take *config* or refuse it (its config
        service logs ``parent update: TEXT`` at LOG_ERR); {rank: TEXT}."""
        from flux.membroker._topology import DEFAULT_TOPO, Topology

        topology = Topology(self.size, self.instance.attrs.get("tbon.topo", DEFAULT_TOPO))
        refused: Dict[int, str] = {}
        kept = set(self.instance.lost)  # ranks the configuration will not reach
        for rank in range(1, self.size):
            if rank in kept or topology.parent(rank) in kept:
                kept.add(rank)
                continue
            deadline = time.monotonic() + 30.0
            while self.rpc("config.get", nodeid=rank).get() != config:
                text = self._refusal_logged(rank, started)
                if text is not None:
                    refused[rank] = text
                    kept.add(rank)
                    break
                assert time.monotonic() < deadline, f"load_config: rank {rank} neither took nor refused it in 30 s"
                time.sleep(0.1)
        return refused

    def _refusal_logged(self, rank, started):
        out = self.instance.flux("exec", "-r", str(rank), "flux", "dmesg").stdout
        for line in out.splitlines():
            stamp, _, text = line.partition(" ")
            prefix = f"config.err[{rank}]: parent update: "
            if text.startswith(prefix) and _epoch(stamp) >= started - 1.0:
                return text[len(prefix):]
        return None

    def _remove(self, name, ranks, force):
        cmd = ["module", "remove", *(["-f"] if force else []), name]
        if ranks is not None:
            cmd = ["exec", "-r", _idset.encode(ranks), "flux", *cmd]
        result = self.instance.flux(*cmd)
        if result.returncode != 0:
            raise AssertionError(f"flux {' '.join(cmd)} failed: {result.stderr.strip()}")

    def _disconnect(self, rank):
        if self.instance.exit_mode != "leader":
            raise RuntimeError("lose_rank: this instance stops when a broker exits: start it with "
                               "exit_mode='leader' (the flux_broker fixture's instances of size > 1 are)")
        result = self.instance.flux("overlay", "disconnect", str(rank))
        assert result.returncode == 0, f"flux overlay disconnect {rank} failed: {result.stderr.strip()}"
        self.instance.lost.add(rank)

    def _lost_ranks(self):
        return self.instance.lost

    def try_load(self, path, *args):
        """Load; return None, or the errno the load failed with."""
        result = self.instance.flux("module", "load", path, *args)
        if result.returncode == 0:
            self._loaded.append((os.path.basename(path).split(".", 1)[0], None))
            return None
        codes = {os.strerror(code): code for code in errno.errorcode}
        found = [code for message, code in codes.items() if message in result.stderr]
        return found[0] if found else -1

    def load_error(self, path, *args, name=None):
        """Load that must fail: return (errno or None, broker stderr text)."""
        before = len(self.instance.stderr())
        cmd = ["module", "load"] + (["--name", name] if name else []) + [path, *args]
        result = self.instance.flux(*cmd)
        assert result.returncode != 0, f"load of {path} should have failed"
        text = self.instance.stderr()[before:] + result.stderr
        codes = {os.strerror(code): code for code in errno.errorcode}
        found = [code for message, code in codes.items() if message in result.stderr]
        return (found[0] if found else None), text

    def rpc(self, topic, payload=None, streaming=False, guest=False, take=0, nodeid=None, timeout=None):
        """As :meth:`MemoryBroker.rpc`, from a client process."""
        return self.start_rpc(topic, payload, streaming, guest, take, nodeid, timeout).wait()

    def start_rpc(self, topic, payload=None, streaming=False, guest=False, take=0, nodeid=None, timeout=None):
        """As :meth:`MemoryBroker.start_rpc` (the client process has sent
        the request, or is about to)."""
        return self.instance.start_rpc(topic, payload, nodeid=0xFFFFFFFF if nodeid is None else nodeid,
                                       streaming=streaming, guest=guest, take=take, timeout=timeout)

    def send_without_matchtag(self, topic, payload=None, answers=0, nodeid=None, guest=False, timeout=None):
        """As :meth:`MemoryBroker.send_without_matchtag`, from a client process."""
        return self.instance.send_without_matchtag(topic, payload, answers, 0xFFFFFFFF if nodeid is None else nodeid,
                                                   guest, timeout)

    def event(self, topic, payload=None, guest=False):
        """Publish an event (``flux event pub``; as a guest with *guest*)."""
        env = {"FLUX_HANDLE_USERID": str(GUEST), "FLUX_HANDLE_ROLEMASK": "0x2"} if guest else None
        if payload is None:
            args = ["event", "pub", topic]
        elif isinstance(payload, str):  # a string payload, as event_send() sends a str
            args = ["event", "pub", topic, payload]
        else:
            args = ["event", "pub", topic, json.dumps(payload)]
        result = self.instance.flux(*args, env=env)
        assert result.returncode == 0, result.stderr

    def dmesg(self):
        """Rank 0's log, as ``flux dmesg`` shows it."""
        return self.instance.dmesg()

    def clear_log(self):
        """``flux dmesg --clear`` on every rank."""
        cmd = ["dmesg", "--clear"] if self.size == 1 else ["exec", "-r", "all", "flux", "dmesg", "--clear"]
        result = self.instance.flux(*cmd)
        assert result.returncode == 0, result.stderr

    def stderr_text(self):
        """What the brokers printed on stderr."""
        return self.instance.stderr()

    def dmesg_on(self, rank):
        """*rank*'s log."""
        out = self.instance.flux("exec", "-r", str(rank), "flux", "dmesg").stdout
        return [line.split(" ", 1)[1] if " " in line else line for line in out.splitlines()]

    def modules(self):
        """Names of the modules loaded on rank 0."""
        return module_names(self.instance)

    def owner(self):
        """The instance owner's userid."""
        return os.getuid()

    def settle(self, predicate, what, timeout=30.0):
        """Wait (up to *timeout* s) until *predicate*."""
        wait_for(predicate, timeout=timeout, what=what)

    def wait(self, seconds):
        """Let *seconds* pass."""
        time.sleep(seconds)

    def close(self):
        """Nothing: the instance outlives this object."""
