"""One interface over both brokers, for tests that run on each.

:class:`MemTarget` wraps the in-memory broker and :class:`RealTarget` a
real Flux instance; a test written against their common methods (load,
rpc, event, dmesg...) checks that the two behave alike.
"""

import errno
import json
import os
import textwrap
import time

import pytest

from flux.brokermod_testing import RPCResult, module_names, wait_for
from flux.membroker import FLUX_ROLE_USER, FLUX_RPC_STREAMING, Broker, ModuleError

GUEST = 1234

# A client script sees: h (an owner's handle), STREAMING, emit(value),
# matchtag_of(future), and guest(script) to run a script as a guest.  On a
# real instance it runs as ``flux python -c RUNNER SCRIPT RUNNER``.
_REAL_CLIENT_RUNNER = r"""
import json, os, subprocess, sys
import flux
from flux.constants import FLUX_RPC_STREAMING as STREAMING
from _flux._core import lib
h = flux.Flux()
def emit(value):
    print(json.dumps(value), flush=True)
def matchtag_of(future):
    return lib.flux_rpc_get_matchtag(future.pimpl.handle)
def guest(script):
    env = dict(os.environ, FLUX_HANDLE_USERID="%d", FLUX_HANDLE_ROLEMASK="0x2")
    subprocess.run([sys.executable, "-c", sys.argv[2], script, sys.argv[2]], env=env, check=True)
exec(compile(sys.argv[1], "<client>", "exec"))
""" % GUEST

# One client handle, several requests in turn: on a real broker each
# request may reuse the matchtag its predecessor freed.
_SEQUENTIAL_RPCS = r"""
import json, sys
import flux
topic, payloads = sys.argv[1], json.loads(sys.argv[2])
h = flux.Flux()
out = []
for payload in payloads:
    try:
        out.append({"payload": h.rpc(topic, payload).get_str()})
    except OSError as exc:
        out.append({"errno": exc.errno, "error": exc.strerror})
print(json.dumps(out))
"""


def _answers(future, streaming):
    """Every answer *future* gets, as RPCResult records.

    ``wait_for()`` comes first and is not caught: when no answer comes,
    the in-memory broker's EDEADLK or ETIMEDOUT fails the test instead of
    passing for an error answer.
    """
    answers = []
    while True:
        future.wait_for()
        try:
            answers.append({"payload": future.get_str()})
        except OSError as exc:
            answers.append({"errno": exc.errno, "error": exc.strerror})
            break
        if not streaming:
            break
        future.reset()
    return answers


class MemTarget:
    """The in-memory broker behind the common interface."""

    real = False

    def __init__(self, attrs=None):
        self.broker = Broker(attrs=attrs)

    def load(self, path, *args, name=None):
        self.broker.load(path, *args, name=name)

    def try_load(self, path, *args):
        """Load; return None, or the errno the load failed with."""
        try:
            self.broker.load(path, *args)
        except ModuleError as exc:
            return exc.errno
        return None

    def load_error(self, path, *args, name=None):
        """Load that must fail: return (errno or None, broker stderr text)."""
        before = len(self.broker.stderr)
        with pytest.raises(ModuleError) as info:
            self.broker.load(path, *args, name=name)
        return info.value.errno, "\n".join(self.broker.stderr[before:] + [str(info.value)])

    def remove(self, name):
        self.broker.remove(name)

    def load_on(self, path, rank, *args):
        """Load on *rank* (a number, or "all")."""
        self.broker.load(path, *args, rank=rank)

    def remove_on(self, name, rank):
        self.broker.remove(name, rank=rank)

    def _client(self, guest):
        return self.broker.connect(userid=GUEST, rolemask=FLUX_ROLE_USER) if guest else self.broker.connect()

    def rpc(self, topic, payload=None, streaming=False, guest=False):
        future = self._client(guest).rpc(topic, payload, flags=FLUX_RPC_STREAMING if streaming else 0)
        return RPCResult(topic, _answers(future, streaming))

    def rpcs_from_one_client(self, topic, payloads):
        """Send each payload in turn from one client; return the RPCResults."""
        client = self._client(False)
        return [RPCResult(topic, _answers(client.rpc(topic, p), False)) for p in payloads]

    def client(self, script, guest=False):
        """Run a client *script* (see _REAL_CLIENT_RUNNER); return what it emitted."""
        out = []
        h = self._client(guest)
        env = {
            "h": h,
            "STREAMING": FLUX_RPC_STREAMING,
            "emit": out.append,
            "matchtag_of": lambda future: future._matchtag,
            "guest": lambda text: out.extend(self.client(text, guest=True)),
        }
        exec(compile(textwrap.dedent(script), "<client>", "exec"), env)
        h.close()  # as a client process exiting
        self.broker.run_until_idle()
        return out

    def start_rpc(self, topic, payload=None):
        future = self.broker.connect().rpc(topic, payload)
        self.broker.run_until_idle()

        class Pending:
            def wait(self_):
                return RPCResult(topic, _answers(future, False))

        return Pending()

    def event(self, topic, payload=None, guest=False):
        self._client(guest).event_send(topic, payload)
        self.broker.run_until_idle()

    def dmesg(self):
        return self.broker.dmesg()

    def clear_log(self):
        for rank in range(self.broker.size):
            self.broker._logs[rank].clear()

    def dmesg_on(self, rank):
        return self.broker.dmesg(rank=rank)

    def stderr_text(self):
        return "\n".join(self.broker.stderr)

    def modules(self):
        return list(self.broker.modules)

    def owner(self):
        return self.broker.owner

    def settle(self, predicate, what, timeout=30.0):
        """Let virtual time pass (up to *timeout* s, as RealTarget waits) until *predicate*."""
        self.broker.run_until_idle()
        for _ in range(int(timeout * 10)):
            if predicate():
                return
            self.broker.advance(0.1)
        assert predicate(), what

    def wait(self, seconds):
        """Let *seconds* pass (virtual time here)."""
        self.broker.advance(seconds)

    def close(self):
        if self.broker.panicked is None:
            self.broker.close()


class RealTarget:
    """A real Flux instance (a FluxInstance) behind the common interface."""

    real = True

    def __init__(self, instance):
        self.instance = instance

    def load(self, path, *args, name=None):
        self.instance.load(path, *args, name=name)

    def try_load(self, path, *args):
        result = self.instance.flux("module", "load", path, *args)
        if result.returncode == 0:
            return None
        codes = {os.strerror(code): code for code in errno.errorcode}
        found = [code for message, code in codes.items() if message in result.stderr]
        return found[0] if found else -1

    def load_error(self, path, *args, name=None):
        before = len(self.instance.stderr())
        cmd = ["module", "load"] + (["--name", name] if name else []) + [path, *args]
        result = self.instance.flux(*cmd)
        assert result.returncode != 0, f"load of {path} should have failed"
        text = self.instance.stderr()[before:] + result.stderr
        codes = {os.strerror(code): code for code in errno.errorcode}
        found = [code for message, code in codes.items() if message in result.stderr]
        return (found[0] if found else None), text

    def remove(self, name):
        self.instance.remove(name)

    def load_on(self, path, rank, *args):
        """Load on *rank* (a number, or "all"), with ``flux exec -r``."""
        self.instance.load(path, *args, rank=str(rank))

    def remove_on(self, name, rank):
        self.instance.remove(name, rank=str(rank))

    def rpc(self, topic, payload=None, streaming=False, guest=False):
        return self.instance.rpc(topic, payload, streaming=streaming, guest=guest)

    def rpcs_from_one_client(self, topic, payloads):
        result = self.instance.flux("python", "-c", _SEQUENTIAL_RPCS, topic, json.dumps(payloads))
        assert result.returncode == 0, result.stderr
        return [RPCResult(topic, [answer]) for answer in json.loads(result.stdout)]

    def client(self, script):
        """Run a client *script* in its own process; return what it emitted."""
        script = textwrap.dedent(script)
        result = self.instance.flux("python", "-c", _REAL_CLIENT_RUNNER, script, _REAL_CLIENT_RUNNER)
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    def start_rpc(self, topic, payload=None):
        return self.instance.start_rpc(topic, payload)

    def event(self, topic, payload=None, guest=False):
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
        return self.instance.dmesg()

    def clear_log(self):
        for rank in range(self.instance.size):
            result = self.instance.flux("exec", "-r", str(rank), "flux", "dmesg", "--clear")
            assert result.returncode == 0, result.stderr

    def stderr_text(self):
        return self.instance.stderr()

    def dmesg_on(self, rank):
        out = self.instance.flux("exec", "-r", str(rank), "flux", "dmesg").stdout
        return [line.split(" ", 1)[1] if " " in line else line for line in out.splitlines()]

    def modules(self):
        return module_names(self.instance)

    def owner(self):
        return os.getuid()

    def settle(self, predicate, what, timeout=30.0):
        wait_for(predicate, timeout=timeout, what=what)

    def wait(self, seconds):
        """Let *seconds* pass."""
        time.sleep(seconds)

    def close(self):
        pass
