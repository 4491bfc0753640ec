"""Hostile input from a client or a site: nothing crashes, nothing shouts.

Each test runs on the in-memory broker and, with flux-core on PATH, on a
real instance (WITHOUT broker.module-nopanic: a module that died would
take the instance down, and the fixture checks it exits cleanly).  What a
bad request gets is the caller's error: EPROTO and one line, logged like
any refusal, never a traceback at LOG_ERR.
"""

import errno
import io

import pytest
from _helpers import error_of

# Deeper than json decodes on any supported Python (3.13 decodes 3,000 levels).
DEPTH = 20000
DEEP = "[" * DEPTH + "]" * DEPTH

LEASES = r'''
import asyncio
from flux.brokermod import BrokerModule, Option, request_handler, timer_handler


class Leases(BrokerModule):
    sweep = Option(float, 1.0, "seconds between expiry sweeps")
    max_ttl = Option(float, 60.0, "the longest lease, in seconds")

    @timer_handler("sweep", repeat="sweep")
    def expire(self):
        pass

    @request_handler("acquire", allow_guest=True)
    def acquire(self, msg, *, name: str, ttl: float = 10.0):
        self.log.info(f"acquire {name} for {ttl}")
        return {"name": name, "ttl": ttl}

    @request_handler("keys", allow_guest=True)
    def keys(self, msg):
        return {"keys": sorted(msg.payload)}

    @request_handler("watch", allow_guest=True)
    async def watch(self, msg):
        while True:
            yield {"tick": True}
            await asyncio.sleep(3600)

    @request_handler("rearm")
    def rearm(self, msg):
        self.timer("expire").reset(after=float(msg.payload["after"]))
        return {}
'''


@pytest.fixture
def leases(target, write):
    path = write("leases.py", LEASES)
    target.load(path)
    yield target
    assert target.rpc("leases.ping", {}).get()["userid"] == target.owner()  # it survived
    target.remove("leases")
    if not target.real:
        assert target.broker.panicked is None


def _error_of(target, topic, payload):
    """(errno, text) of the error answer to *payload*, which may be bytes
    that are not UTF-8 (sent by a client script on either broker)."""
    got = target.client(f"""
        try:
            emit(h.rpc({topic!r}, {payload!r}).get())
        except OSError as exc:
            emit([exc.errno, exc.strerror])
    """)
    return tuple(got[0])


def _module_lines(target, level=None):
    lines = [line for line in target.dmesg() if line.startswith("leases.")]
    return [line for line in lines if level is None or line.startswith(f"leases.{level}[")]


# A module option that would abort the module process (libev asserts on a
# NaN timer period) fails the load instead, with one line naming it.


@pytest.mark.parametrize("value, why", [("nan", "is not a finite number"), ("inf", "is not a finite number"),
                                        ("-1", "must name an option or attribute holding")])
def test_a_timer_period_that_libev_refuses_fails_the_load(target, write, value, why):
    target.clear_log()
    errnum, _ = target.load_error(write("leases.py", LEASES), f"sweep={value}")
    assert errnum == errno.EINVAL
    logged = [line.split(": ", 1)[1] for line in target.dmesg() if line.startswith("leases.err")]
    assert len(logged) == 1 and why in logged[0] and "sweep" in logged[0], logged
    assert "leases" not in target.modules()
    target.close()


def test_rearming_a_timer_with_nan_is_refused_and_the_module_lives(leases):
    assert error_of(leases.rpc("leases.rearm", {"after": "nan"})) == (
        errno.EPROTO, "ValueError: timer expire: reset(after=nan): a timer needs a finite number of seconds >= 0")
    assert leases.rpc("leases.rearm", {"after": 5}).get() == {}


def test_a_repeated_option_fails_the_load_naming_it(target, write):
    errnum, text = target.load_error(write("leases.py", LEASES), "max_ttl=1", "max_ttl=2")
    assert errnum == errno.EINVAL
    assert "leases.py: option 'max_ttl' is given twice ('max_ttl=1', 'max_ttl=2')" in text
    target.close()


# The library's own callbacks survive any payload from anyone.


def test_a_guest_cancel_nested_too_deep_changes_nothing(leases):
    got = leases.client("""
        f = h.rpc("leases.watch", flags=STREAMING)
        emit(f.get())
        guest("deep = '{\\"matchtag\\":' + '[' * %d + ']' * %d + '}'\\n"
              "h.rpc('leases.watch-cancel', deep, flags=1)")
        emit(h.rpc("leases.ping", {}).get()["userid"] >= 0)
    """ % (DEPTH, DEPTH))
    assert got == [{"tick": True}, True]
    assert "Exception ignored" not in leases.stderr_text()
    assert "RecursionError" not in leases.stderr_text()


# Log text is data: any str can be logged.


def test_a_lone_surrogate_in_a_request_is_logged_escaped(leases):
    assert leases.rpc("leases.acquire", '{"name": "\\ud800x"}').get() == {"name": "\ud800x", "ttl": 10.0}
    assert "leases.info[0]: acquire \\ud800x for 10.0" in _module_lines(leases)


# A bad payload is the caller's error: EPROTO, one line, no traceback.


@pytest.mark.parametrize("payload, text", [
    ('{"name": "a", "ttl": 1' + "0" * 400 + "}", "field 'ttl': 1000000000... (401 digits) is too large for a number"),
    ('{"name": "a", "ttl": ' + DEEP + "}", "payload is nested too deeply to decode"),
    (b'{"name": "\xff\xfe"}', "payload is not UTF-8 (byte 0xff at offset 10)"),
])
def test_an_undecodable_payload_to_a_declared_handler_is_eproto(leases, payload, text):
    assert _error_of(leases, "leases.acquire", payload) == (errno.EPROTO, text)
    assert _module_lines(leases, "err") == []


@pytest.mark.parametrize("payload, text", [
    ('{"a": ' + DEEP + "}", "payload is nested too deeply to decode"),
    (b'{"\xff": 1}', "payload is not UTF-8 (byte 0xff at offset 2)"),
])
def test_an_undecodable_payload_read_by_a_plain_handler_is_eproto(leases, payload, text):
    assert _error_of(leases, "leases.keys", payload) == (errno.EPROTO, text)
    assert _module_lines(leases, "err") == []
    assert any(line.startswith("leases.debug[0]: request leases.keys refused: ") for line in _module_lines(leases))


# The command line tool sends a payload as written, as a client sending
# text does, and shows what the module made of it.


@pytest.mark.parametrize("spec, status, line", [
    ("acquire=" + DEEP, 1, "leases.acquire: error EPROTO: payload is nested too deeply to decode"),
    ('acquire={"name": "\\ud800"}', 0, 'leases.acquire: {"name": "\\ud800", "ttl": 10.0}'),
    ("acquire={nope", 1, "leases.acquire: error EPROTO: payload is not JSON (Expecting property name "
                         "enclosed in double quotes: line 1 column 2 (char 1))"),
])
def test_the_run_command_sends_any_payload_and_shows_the_answer(write, spec, status, line):
    from flux._brokermod_cli import _parser, run

    options = _parser().parse_args(["run", "--rpc", spec, "--rpc", "ping={}", write("leases.py", LEASES)])
    out, err = io.StringIO(), io.StringIO()
    assert run(options, out, err) == status
    lines = out.getvalue().splitlines()
    assert line in lines and any(text.startswith("leases.ping: {") for text in lines), lines
    assert err.getvalue() == ""
    assert not [text for text in lines if text.startswith("leases.err")]
