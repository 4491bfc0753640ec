"""This suite's two-broker targets: the library's MemoryBroker and
RealBroker (flux.brokermod_testing) plus client scripts, which run the
same code in this process (in memory) or as a client process (real)."""

import json
import textwrap

from flux.brokermod_testing import MemoryBroker, RealBroker, RPCResult, collect_answers
from flux.membroker import FLUX_RPC_STREAMING

GUEST = 1234

# A client script sees: h (an owner's handle), json, STREAMING, emit(value),
# and guest(script) to run a script as a guest.  On a
# real instance it runs as ``flux python -c RUNNER SCRIPT RUNNER``.
_REAL_CLIENT_RUNNER = r"""
import json, os, subprocess, sys
import flux
from flux.constants import FLUX_RPC_STREAMING as STREAMING
h = flux.Flux()
def emit(value):
    print(json.dumps(value), flush=True)
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


class MemTarget(MemoryBroker):
    """MemoryBroker with this suite's client scripts."""

    def rpcs_from_one_client(self, topic, payloads):
        """Send each payload in turn from one client; return the RPCResults."""
        client = self._client(False)
        return [RPCResult(topic, collect_answers(client.rpc(topic, p), False)) for p in payloads]

    def client(self, script, guest=False):
        """Run a client *script* (see _REAL_CLIENT_RUNNER); return what it emitted."""
        out = []
        h = self._client(guest)
        env = {
            "h": h,
            "json": json,
            "STREAMING": FLUX_RPC_STREAMING,
            "emit": out.append,
            "guest": lambda text: out.extend(self.client(text, guest=True)),
        }
        exec(compile(textwrap.dedent(script), "<client>", "exec"), env)
        h.close()  # as a client process exiting
        self.broker.run_until_idle()
        return out



class RealTarget(RealBroker):
    """RealBroker with this suite's client scripts."""

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


def nopanic_broker(request):
    """For a fixture parametrised ``"memory"``/``"real"`` to ``yield from``:
    an in-memory broker or the session's real instance, both with
    broker.module-nopanic=1, so a module's runtime failure is reported on
    both instead of a panic; the modules the test loaded are removed after
    it (conftest.py's ``nopanic``)."""
    if request.param == "memory":
        broker = MemTarget(attrs={"broker.module-nopanic": "1"})
    else:
        broker = RealTarget(request.getfixturevalue("flux_session_instances").get())
    yield from served(broker)


def served(broker):
    """Yield *broker* with its log cleared; then remove the modules the test
    loaded and close it (as the plugin's ``flux_broker`` does)."""
    before = set(broker.modules())
    broker.clear_log()
    try:
        yield broker
    finally:
        broker.cleanup(before)
        broker.close()
