"""One or more tests for every sentence of the spec, python-broker-modules.txt.

Grouped by the spec's sections, in order.  Everything runs as a module file
loaded into the in-memory broker (flux.membroker), which stands in for a real
Flux instance (see docs/real-flux.md).
"""

import errno
import inspect
import os
import syslog

import pytest
from _helpers import raised_by

from flux.brokermod import BrokerModule, event_handler, request_handler
from flux.membroker import FLUX_ROLE_USER, Broker, BrokerPanic, ModuleError

GUEST_UID = 1234

# A minimal BrokerModule: echoes the request payload back.
ECHO = """
    from flux.brokermod import BrokerModule, request_handler

    class Echo(BrokerModule):
        @request_handler("echo")
        def echo(self, msg):
            self.handle.respond(msg, msg.payload)
"""

# A plain mod_main that reports what it was given, logs after its reactor
# returns, and stops its reactor on NAME.quit.
PLAIN = """
    import syslog

    def mod_main(h, *args):
        def info(h, watcher, msg, arg):
            h.respond(msg, {
                "args_type": type(args).__name__,
                "args": list(args),
                "arg_types": sorted({type(a).__name__ for a in args}),
                "rank": h.get_rank(),
                "owner": h.attr_get("security.owner"),
            })

        def quit(h, watcher, msg, arg):
            h.respond(msg, None)
            h.reactor_stop()

        h.msg_watcher_create(info, 1, "plain.info").start()
        h.msg_watcher_create(quit, 1, "plain.quit").start()
        h.log(syslog.LOG_INFO, "mod_main started")
        h.reactor_run()
        h.log(syslog.LOG_INFO, "reactor exited")
"""

# Eight log calls, one per method, plus a few threshold helpers.
LOGGER = """
    import syslog
    from flux.brokermod import BrokerLogger, BrokerModule, request_handler

    class Logger(BrokerModule):
        @request_handler("emit")
        def emit(self, msg):
            for method in ("debug", "info", "notice", "warning",
                           "error", "critical", "alert", "emerg"):
                getattr(self.log, method)(method)
            self.handle.respond(msg, {"level": self.log.level})

        @request_handler("set")
        def set_(self, msg):
            try:
                self.log.level = msg.payload["level"]
            except ValueError as exc:
                self.handle.respond(msg, {"error": str(exc)})
                return
            self.handle.respond(msg, {"level": self.log.level})

        @request_handler("call")
        def call(self, msg):
            self.log(msg.payload["level"], msg.payload["text"])
            self.handle.respond(msg, {})

        @request_handler("kind")
        def kind(self, msg):
            self.handle.respond(msg, {"is_logger": isinstance(self.log, BrokerLogger)})
"""


@pytest.fixture
def nopanic():
    """A broker with broker.module-nopanic=1: a runtime failure is logged,
    the broker stays up."""
    b = Broker(attrs={"broker.module-nopanic": "1"})
    yield b
    if b.panicked is None:
        b.close()


def texts(broker, name):
    """The text of every log entry from module *name*."""
    return [entry.text for entry in broker.log if entry.name == name]


def crit(broker):
    """The broker's LOG_CRIT lines, as flux dmesg shows them."""
    return [str(e) for e in broker.log if e.name == "broker" and e.level == syslog.LOG_CRIT]


def guest(broker):
    return broker.connect(userid=GUEST_UID, rolemask=FLUX_ROLE_USER)




# ---------------------------------------------------------------------------
# Python Broker Modules (introduction)
# ---------------------------------------------------------------------------


def test_module_extends_broker_with_a_new_service(broker, write_module):
    """"Flux broker modules extend the broker with new services.\""""
    path = write_module("echo.py", ECHO)
    assert raised_by(broker.rpc("echo.echo", {"x": 1})).errno == errno.ENOSYS
    broker.load(path)
    assert broker.rpc("echo.echo", {"x": 1}).get() == {"x": 1}


def test_py_file_defining_mod_main_is_a_module(broker, write_module):
    """A Python broker module is a .py file that defines a mod_main() entry function."""
    broker.load(write_module("plain.py", PLAIN))
    assert broker.rpc("plain.info").get()["args"] == []


def test_py_file_defining_single_subclass_is_a_module(broker, write_module):
    """... or a .py file that defines a single BrokerModule subclass."""
    broker.load(write_module("echo.py", ECHO))
    assert broker.rpc("echo.echo", [1, 2]).get() == [1, 2]


def test_py_file_with_neither_entry_point_fails_to_load(broker, write_module):
    """A file with neither mod_main() nor a BrokerModule subclass is not a module."""
    path = write_module("nothing.py", "x = 1\n")
    with pytest.raises(ModuleError) as info:
        broker.load(path)
    assert info.value.errno == errno.EINVAL
    assert info.value.strerror == f"{path}: no mod_main() and no BrokerModule subclass"
    assert "nothing" not in broker.modules


# ---------------------------------------------------------------------------
# Loading a Python module
# ---------------------------------------------------------------------------


def test_load_by_path(broker, example):
    """`flux module load /path/to/mymod.py` loads the module."""
    module = broker.load(example("mymod.py"))
    assert module.state == "running"
    assert broker.modules["mymod"].path == os.path.abspath(example("mymod.py"))


def test_ping_after_load(broker, example):
    """`flux ping mymod` works once the module is loaded."""
    broker.load(example("mymod.py"))
    reply = broker.rpc("mymod.ping", {"seq": 7}).get()
    assert reply["seq"] == 7
    assert "route" in reply


def test_remove_by_name(broker, example):
    """`flux module remove mymod` unloads it: gone, and its service too."""
    broker.load(example("mymod.py"))
    broker.remove("mymod")
    assert "mymod" not in broker.modules
    assert raised_by(broker.rpc("mymod.ping", {})).errno == errno.ENOSYS


def test_load_missing_path_fails(broker, tmp_path):
    """Loading a path that does not exist fails (docs/real-flux.md: before any loader runs)."""
    with pytest.raises(ModuleError) as info:
        broker.load(str(tmp_path / "absent.py"))
    assert info.value.errno == errno.ENOENT
    assert str(tmp_path / "absent.py") in str(info.value)


def test_default_name_is_basename_without_py(broker, write_module):
    """The module name defaults to the file's basename without the .py suffix."""
    module = broker.load(write_module("svc_one.py", ECHO))
    assert module.name == "svc_one"
    assert broker.rpc("svc_one.echo", {"hi": 1}).get() == {"hi": 1}


def test_name_overridden_with_name_option(broker, example):
    """The name may be overridden with --name; handler topics follow the new name."""
    broker.load(example("mymod.py"), name="myservice")
    assert set(broker.modules) == {"myservice"}
    assert broker.rpc("myservice.info").get() == {"name": "myservice"}
    assert raised_by(broker.rpc("mymod.info")).errno == errno.ENOSYS


def test_same_file_loads_under_two_names(broker, example):
    """--name lets one file be loaded twice, as two services."""
    broker.load(example("mymod.py"))
    broker.load(example("mymod.py"), name="myservice")
    assert broker.rpc("mymod.info").get() == {"name": "mymod"}
    assert broker.rpc("myservice.info").get() == {"name": "myservice"}


# ---------------------------------------------------------------------------
# The mod_main entry point
# ---------------------------------------------------------------------------


def test_mod_main_h_is_a_handle_connected_to_the_broker(broker, write_module):
    """h is a flux.Flux handle connected to the broker."""
    broker.load(write_module("plain.py", PLAIN))
    reply = broker.rpc("plain.info").get()
    assert reply["rank"] == broker.rank
    assert reply["owner"] == str(broker.owner)
    assert "plain.info[0]: mod_main started" in broker.dmesg("plain")


def test_mod_main_args_is_empty_tuple_without_args(broker, write_module):
    """args is a (possibly empty) tuple: empty when nothing follows the path."""
    broker.load(write_module("plain.py", PLAIN))
    reply = broker.rpc("plain.info").get()
    assert (reply["args_type"], reply["args"]) == ("tuple", [])


def test_mod_main_args_are_strings_after_path(broker, write_module):
    """args is a tuple of strings passed after the module path."""
    broker.load(write_module("plain.py", PLAIN), "one", "--two=2")
    reply = broker.rpc("plain.info").get()
    assert reply["args_type"] == "tuple"
    assert reply["args"] == ["one", "--two=2"]
    assert reply["arg_types"] == ["str"]


def test_mod_main_runs_reactor_and_returns_after_it_exits(broker, write_module):
    """mod_main must run the reactor and return only after the reactor exits."""
    module = broker.load(write_module("plain.py", PLAIN))
    assert module.state == "running"
    assert "reactor exited" not in texts(broker, "plain")
    broker.remove("plain")
    assert texts(broker, "plain")[-1] == "reactor exited"


def test_module_exits_when_mod_main_returns(broker, write_module):
    """Returning from mod_main (after the reactor exits) ends the module, cleanly."""
    module = broker.load(write_module("plain.py", PLAIN))
    broker.rpc("plain.quit").get()
    broker.run_until_idle()
    assert (module.state, module.errnum) == ("exited", 0)
    assert "plain" not in broker.modules
    assert broker.panicked is None


def test_mod_main_may_run_reactor_via_brokermodule(broker, write_module):
    """The reactor may be run via BrokerModule: mod_main calls Cls(h, *args).run()."""
    path = write_module(
        "viamod.py",
        ECHO
        + """
    def mod_main(h, *args):
        h.log(6, "explicit mod_main")
        Echo(h, *args).run()
    """,
    )
    broker.load(path)
    assert broker.rpc("viamod.echo", {"a": 1}).get() == {"a": 1}
    assert "explicit mod_main" in texts(broker, "viamod")


# ---------------------------------------------------------------------------
# Using BrokerModule
# ---------------------------------------------------------------------------


def test_spec_example_request_handler(broker, example):
    """Spec example: @request_handler("info") responds {"name": self.name}."""
    broker.load(example("mymod.py"))
    assert broker.rpc("mymod.info").get() == {"name": "mymod"}


def test_brokermodule_handles_boilerplate(broker, write_module):
    """BrokerModule registers handlers, runs the reactor and looks up the name:
    a subclass with only decorated methods serves under its broker-assigned name."""
    path = write_module(
        "boiler.py",
        """
        from flux.brokermod import BrokerModule, request_handler

        class Boiler(BrokerModule):
            @request_handler("whoami")
            def whoami(self, msg):
                self.handle.respond(msg, {"name": self.name})
        """,
    )
    broker.load(path, name="kettle")
    assert broker.rpc("kettle.whoami").get() == {"name": "kettle"}


def test_single_subclass_entry_point_is_synthesized(broker, write_module):
    """One subclass and no mod_main(): the loader calls MyModule(h, *args).run()."""
    path = write_module(
        "only.py",
        """
        from flux.brokermod import BrokerModule

        class Only(BrokerModule):
            def run(self):
                self.log.info("run() args=%r" % (self.args,))
                super().run()
        """,
    )
    broker.load(path, "a", "b")
    assert texts(broker, "only") == ["run() args=('a', 'b')"]
    assert "route" in broker.rpc("only.ping", {}).get()


def test_explicit_mod_main_is_optional_but_wins(broker, write_module):
    """Defining mod_main() is optional; when defined next to one subclass it is used."""
    path = write_module(
        "chosen.py",
        ECHO
        + """
    def mod_main(h, *args):
        h.log(6, "explicit mod_main")
        Echo(h, *args).run()
    """,
    )
    broker.load(path)
    assert texts(broker, "chosen") == ["explicit mod_main"]


def test_multiple_subclasses_without_mod_main_fail_to_load(broker, write_module):
    """If multiple subclasses are present, mod_main() must be defined."""
    path = write_module(
        "ambiguous.py",
        """
        from flux.brokermod import BrokerModule

        class First(BrokerModule):
            pass

        class Second(BrokerModule):
            pass
        """,
    )
    with pytest.raises(ModuleError) as info:
        broker.load(path)
    assert "First" in str(info.value) and "Second" in str(info.value)
    assert "mod_main" in str(info.value)
    assert "ambiguous" not in broker.modules


def test_multiple_subclasses_with_mod_main_load(broker, example):
    """mod_main() resolves the ambiguity: `MyModule(h, *args).run()`."""
    broker.load(example("two_modules.py"))
    assert broker.rpc("two_modules.args").get()["class"] == "Primary"


MESSAGES = """
    from flux.brokermod import BrokerModule, event_handler, request_handler

    class Msgs(BrokerModule):
        @request_handler("show")
        def show(self, msg):
            self.handle.respond(msg, {
                "cls": type(msg).__name__,
                "topic": msg.topic,
                "payload": msg.payload,
                "userid": msg.userid,
                "rolemask": msg.rolemask,
            })

        @event_handler("note")
        def note(self, msg):
            self.log.info("%s %s %r" % (type(msg).__name__, msg.topic, msg.payload))
"""


def test_request_handler_receives_message(broker, write_module):
    """Handler methods receive a Message object (owner: rolemask 0x5, owner uid)."""
    broker.load(write_module("msgs.py", MESSAGES))
    reply = broker.rpc("msgs.show", {"k": "v"}).get()
    assert reply == {
        "cls": "Message",
        "topic": "msgs.show",
        "payload": {"k": "v"},
        "userid": broker.owner,
        "rolemask": 0x5,
    }


def test_event_handler_receives_message(broker, write_module):
    """Event handler methods receive a Message object too."""
    broker.load(write_module("msgs.py", MESSAGES))
    broker.event_send("msgs.note", {"n": 1})
    assert texts(broker, "msgs") == ["Message msgs.note {'n': 1}"]


def test_respond_sends_response(broker, write_module):
    """For request handlers, flux.Flux.respond() on the handle sends the response:
    a dict as JSON, a str as the raw string."""
    path = write_module(
        "resp.py",
        """
        from flux.brokermod import BrokerModule, request_handler

        class Resp(BrokerModule):
            @request_handler("json")
            def json_(self, msg):
                self.handle.respond(msg, {"ok": True})

            @request_handler("text")
            def text(self, msg):
                self.handle.respond(msg, "hello")
        """,
    )
    broker.load(path)
    assert broker.rpc("resp.json").get() == {"ok": True}
    assert broker.rpc("resp.text").get_str() == "hello"


def test_prefix_default_registers_name_dot_topic(broker, example):
    """By default @request_handler("info") registers mymod.info, not "info"."""
    broker.load(example("mymod.py"))
    assert broker.rpc("mymod.info").get() == {"name": "mymod"}
    assert raised_by(broker.rpc("info")).errno == errno.ENOSYS


def test_prefix_false_request_topic_used_as_is(broker, write_module):
    """prefix=False uses the request topic string as-is."""
    path = write_module(
        "pfx.py",
        """
        from flux.brokermod import BrokerModule, request_handler

        class Pfx(BrokerModule):
            def __init__(self, h, *args):
                super().__init__(h, *args)
                h.service_register("other").get()

            @request_handler("other.hello", prefix=False)
            def hello(self, msg):
                self.handle.respond(msg, {"topic": msg.topic})
        """,
    )
    broker.load(path)
    assert broker.rpc("other.hello").get() == {"topic": "other.hello"}
    err = raised_by(broker.rpc("pfx.other.hello"))
    assert err.errno == errno.ENOSYS


def test_event_prefix_default_and_prefix_false(broker, write_module):
    """Event topics: prefixed with the module name by default, as-is with prefix=False;
    the handler matches its topic exactly."""
    path = write_module(
        "ev.py",
        """
        from flux.brokermod import BrokerModule, event_handler

        class Ev(BrokerModule):
            @event_handler("tick")
            def tick(self, msg):
                self.log.info("got " + msg.topic)

            @event_handler("global.tick", prefix=False)
            def gtick(self, msg):
                self.log.info("got " + msg.topic)
        """,
    )
    broker.load(path)
    for topic in ("tick", "ev.tick", "ev.tickle", "global.tick", "ev.global.tick"):
        broker.event_send(topic)
    assert texts(broker, "ev") == ["got ev.tick", "got global.tick"]


GUARDED = """
    from flux.brokermod import BrokerModule, request_handler

    class Guarded(BrokerModule):
        @request_handler("secret")
        def secret(self, msg):
            self.log.info("secret handler ran")
            self.handle.respond(msg, {"userid": msg.userid})

        @request_handler("status", allow_guest=True)
        def status(self, msg):
            self.handle.respond(msg, {"running": True, "userid": msg.userid})
"""


def test_owner_request_delivered_by_default(broker, write_module):
    """By default, requests from the instance owner are delivered to a handler."""
    broker.load(write_module("guarded.py", GUARDED))
    assert broker.rpc("guarded.secret").get() == {"userid": broker.owner}
    assert texts(broker, "guarded") == ["secret handler ran"]


# A guest's request to an owner-only handler: EPERM, and the handler never runs:
# test_contract.py::test_guest_gets_eperm_and_handler_never_runs, on both brokers.


def test_allow_guest_accepts_guest_requests(broker, write_module):
    """allow_guest=True also accepts requests from non-owner users."""
    broker.load(write_module("guarded.py", GUARDED))
    reply = guest(broker).rpc("guarded.status").get()
    assert reply == {"running": True, "userid": GUEST_UID}


def test_guest_event_does_not_reach_owner_only_event_handler(broker, write_module):
    """docs/real-flux.md: an event published by a guest does not reach an owner-only
    event handler (silently dropped); the owner's does."""
    broker.load(write_module("msgs.py", MESSAGES))
    guest(broker).event_send("msgs.note", {"from": "guest"})
    broker.event_send("msgs.note", {"from": "owner"})
    assert texts(broker, "msgs") == ["Message msgs.note {'from': 'owner'}"]


def test_handle_property_gives_rpc(broker, write_module, example):
    """The handle property gives the Flux API for RPCs."""
    path = write_module(
        "caller.py",
        """
        from flux.brokermod import BrokerModule, request_handler

        class Caller(BrokerModule):
            @request_handler("ask")
            def ask(self, msg):
                answer = self.handle.rpc("mymod.info").get()
                self.handle.respond(msg, {"peer": answer})
        """,
    )
    broker.load(example("mymod.py"))
    broker.load(path)
    assert broker.rpc("caller.ask").get() == {"peer": {"name": "mymod"}}


def test_handle_property_gives_timers(broker, write_module):
    """The handle property gives the Flux API for timers and other watchers."""
    path = write_module(
        "timed.py",
        """
        from flux.brokermod import BrokerModule, request_handler

        class Timed(BrokerModule):
            @request_handler("arm")
            def arm(self, msg):
                def ring(h, watcher, revents, arg):
                    self.log.info("timer fired")
                self.timer = self.handle.timer_watcher_create(10, ring)
                self.timer.start()
                self.handle.respond(msg, {})
        """,
    )
    broker.load(path)
    broker.rpc("timed.arm").get()
    broker.advance(9)
    assert "timer fired" not in texts(broker, "timed")
    broker.advance(1)
    assert texts(broker, "timed") == ["timer fired"]


# ---------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------

DMESG_NAMES = ["debug", "info", "notice", "warning", "err", "crit", "alert", "emerg"]


def test_self_log_is_a_broker_logger(broker, write_module):
    """BrokerModule provides a BrokerLogger instance as self.log."""
    broker.load(write_module("logger.py", LOGGER))
    assert broker.rpc("logger.kind").get() == {"is_logger": True}


def test_spec_log_examples(broker, write_module):
    """self.log.info("module started") / self.log.error(f"handler failed: {exc}")
    without importing syslog."""
    path = write_module(
        "started.py",
        """
        from flux.brokermod import BrokerModule

        class Started(BrokerModule):
            def __init__(self, h, *args):
                super().__init__(h, *args)
                self.log.info("module started")
                try:
                    raise RuntimeError("boom")
                except RuntimeError as exc:
                    self.log.error(f"handler failed: {exc}")
        """,
    )
    broker.load(path)
    assert broker.dmesg("started") == [
        "started.info[0]: module started",
        "started.err[0]: handler failed: boom",
    ]


def test_eight_methods_mirror_syslog_levels(broker, write_module):
    """debug, info, notice, warning, error, critical, alert, emerg map to the
    syslog severities; dmesg shows NAME.LEVEL[RANK]: text."""
    broker.load(write_module("logger.py", LOGGER))
    broker.rpc("logger.emit").get()
    entries = [e for e in broker.log if e.name == "logger"]
    assert [e.level for e in entries] == [
        syslog.LOG_DEBUG, syslog.LOG_INFO, syslog.LOG_NOTICE, syslog.LOG_WARNING,
        syslog.LOG_ERR, syslog.LOG_CRIT, syslog.LOG_ALERT, syslog.LOG_EMERG,
    ]
    methods = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emerg"]
    assert broker.dmesg("logger") == [
        f"logger.{level}[0]: {method}" for level, method in zip(DMESG_NAMES, methods)
    ]


def test_error_messages_appear_on_broker_stderr(broker, write_module):
    """Log messages appear in flux-dmesg(1) and the broker's stderr
    (on a real broker: severity err and above, log-stderr-level=3 by default)."""
    broker.load(write_module("logger.py", LOGGER))
    broker.rpc("logger.emit").get()
    assert "logger.err[0]: error" in broker.dmesg()
    assert any(line.endswith("logger.err[0]: error") for line in broker.stderr)


def test_default_threshold_forwards_everything(broker, write_module):
    """By default all messages (debug too) are forwarded to the ring buffer."""
    broker.load(write_module("logger.py", LOGGER))
    reply = broker.rpc("logger.emit").get()
    assert reply == {"level": syslog.LOG_DEBUG}
    assert len(broker.dmesg("logger")) == 8
    assert "logger.debug[0]: debug" in broker.dmesg("logger")


def test_broker_global_log_level_filters(write_module):
    """The broker's global log level acts as the filter (log-level attribute)."""
    b = Broker(attrs={"log-level": str(syslog.LOG_INFO)})
    try:
        b.load(write_module("logger.py", LOGGER))
        b.rpc("logger.emit").get()
        assert "logger.info[0]: info" in b.dmesg("logger")
        assert "logger.debug[0]: debug" not in b.dmesg("logger")
    finally:
        b.close()


def test_level_info_suppresses_debug(broker, write_module):
    """self.log.level = "info" suppresses debug messages."""
    broker.load(write_module("logger.py", LOGGER))
    assert broker.rpc("logger.set", {"level": "info"}).get() == {"level": syslog.LOG_INFO}
    broker.rpc("logger.emit").get()
    lines = broker.dmesg("logger")
    assert "logger.debug[0]: debug" not in lines
    assert lines[0] == "logger.info[0]: info"
    assert len(lines) == 7


def test_level_by_number(broker, write_module):
    """The threshold may be a syslog number: LOG_WARNING keeps warning..emerg."""
    broker.load(write_module("logger.py", LOGGER))
    broker.rpc("logger.set", {"level": syslog.LOG_WARNING}).get()
    broker.rpc("logger.emit").get()
    assert [e.level for e in broker.log if e.name == "logger"] == [
        syslog.LOG_WARNING, syslog.LOG_ERR, syslog.LOG_CRIT, syslog.LOG_ALERT, syslog.LOG_EMERG,
    ]


def test_invalid_level_name_raises_value_error(broker, write_module):
    """An unknown level name raises ValueError naming the valid ones."""
    broker.load(write_module("logger.py", LOGGER))
    reply = broker.rpc("logger.set", {"level": "loud"}).get()
    assert "loud" in reply["error"]
    for name in DMESG_NAMES:
        assert name in reply["error"]


def test_log_is_callable_with_level_and_message(broker, write_module):
    """The logger can be called as log(level, msg); the threshold still applies."""
    broker.load(write_module("logger.py", LOGGER))
    broker.rpc("logger.call", {"level": syslog.LOG_NOTICE, "text": "called"}).get()
    broker.rpc("logger.set", {"level": "notice"}).get()
    broker.rpc("logger.call", {"level": syslog.LOG_INFO, "text": "dropped"}).get()
    assert broker.dmesg("logger") == ["logger.notice[0]: called"]


# ---------------------------------------------------------------------------
# Error handling (QUIT_THEN, RUN_FAILS, STOPPER and STOPPER_MAIN are loaded
# on both brokers by test_fidelity_lifecycle.py too)
# ---------------------------------------------------------------------------

QUIT_THEN = """
    import errno

    def mod_main(h, *args):
        def quit(h, watcher, msg, arg):
            h.respond(msg, None)
            h.reactor_stop()

        h.msg_watcher_create(quit, 1, "crash.quit").start()
        h.reactor_run()
        raise {exc}
"""


RUN_FAILS = """
    import errno
    from flux.brokermod import BrokerModule, request_handler

    class Fails(BrokerModule):
        @request_handler("quit")
        def quit(self, msg):
            self.handle.respond(msg, None)
            self.stop()

        def run(self):
            super().run()
            raise OSError(errno.EIO, "disk on fire")
"""


def test_run_raising_oserror_is_module_runtime_failure(nopanic, write_module):
    """If run() raises OSError, the module exits with an error and the broker logs
    a module runtime failure."""
    module = nopanic.load(write_module("fails.py", RUN_FAILS))
    nopanic.rpc("fails.quit").get()
    nopanic.run_until_idle()
    assert (module.state, module.errnum) == ("exited", errno.EIO)
    assert "broker.err[0]: fails: Input/output error" in nopanic.dmesg()
    assert crit(nopanic) == ["broker.crit[0]: fails module runtime failure"]
    assert "fails" not in nopanic.modules


@pytest.mark.parametrize(
    "exc",
    ["RuntimeError('boom')", "KeyError('k')", "ValueError('bad')", "ZeroDivisionError()",
     "OSError(errno.EPERM, 'no')"],
)
def test_mod_main_raising_any_exception_is_runtime_failure(nopanic, write_module, exc):
    """If mod_main() raises any exception, the module has exited with an error and
    the broker logs "NAME module runtime failure" (LOG_CRIT)."""
    module = nopanic.load(write_module("crash.py", QUIT_THEN.format(exc=exc)))
    nopanic.rpc("crash.quit").get()
    nopanic.run_until_idle()
    assert module.state == "exited"
    assert module.errnum != 0
    assert crit(nopanic) == ["broker.crit[0]: crash module runtime failure"]
    assert "crash" not in nopanic.modules


def test_runtime_failure_panics_broker_without_nopanic(broker, write_module):
    """docs/real-flux.md: without broker.module-nopanic=1 a runtime failure panics the
    broker: the instance is down."""
    broker.load(write_module("crash.py", QUIT_THEN.format(exc="RuntimeError('boom')")))
    with pytest.raises(BrokerPanic):
        broker.rpc("crash.quit").get()
        broker.run_until_idle()
    assert broker.panicked == "crash module runtime failure"
    assert "broker.crit[0]: crash module runtime failure" in broker.dmesg()  # as a real broker logs it
    with pytest.raises(BrokerPanic):
        broker.rpc("crash.ping", {})


def test_mod_main_raising_value_error_at_load_fails_load(broker, write_module):
    """docs/real-flux.md: mod_main raising ValueError before running: load fails with
    EINVAL, the message without traceback, broker log "NAME: Invalid argument"."""
    path = write_module("early.py", "def mod_main(h, *args):\n    raise ValueError('no good')\n")
    with pytest.raises(ModuleError) as info:
        broker.load(path)
    assert info.value.errno == errno.EINVAL
    assert "no good" in str(info.value)
    assert not any("Traceback" in line for line in broker.stderr)
    assert "broker.err[0]: early: Invalid argument" in broker.dmesg()
    assert crit(broker) == []
    assert "early" not in broker.modules


def test_mod_main_raising_oserror_at_load_gives_its_errno(broker, write_module):
    """docs/real-flux.md: mod_main raising OSError(EEXIST) makes load fail with File exists."""
    path = write_module(
        "exists.py",
        "import errno\n\ndef mod_main(h, *args):\n    raise OSError(errno.EEXIST, 'taken')\n",
    )
    with pytest.raises(ModuleError) as info:
        broker.load(path)
    assert info.value.errno == errno.EEXIST
    assert "broker.err[0]: exists: File exists" in broker.dmesg()


STOPPER = """
    import syslog
    from flux.brokermod import BrokerModule, event_handler, request_handler

    class Stopper(BrokerModule):
        @request_handler("fail")
        def fail(self, msg):
            self.handle.respond(msg, {})
            self.stop_error()

        @request_handler("done")
        def done(self, msg):
            self.handle.respond(msg, {})
            self.stop()

        @event_handler("panic")
        def panic(self, msg):
            self.stop_error()
"""

STOPPER_MAIN = STOPPER + """
    def mod_main(h, *args):
        try:
            Stopper(h, *args).run()
        except OSError:
            h.log(syslog.LOG_NOTICE, "run raised OSError")
            return
        h.log(syslog.LOG_NOTICE, "run returned")
"""


def test_stop_error_from_handler_signals_error(nopanic, write_module):
    """Use stop_error() to signal an error from within a handler: runtime failure."""
    module = nopanic.load(write_module("stopper.py", STOPPER))
    assert nopanic.rpc("stopper.fail").get() == {}
    nopanic.run_until_idle()
    assert module.state == "exited" and module.errnum != 0
    assert crit(nopanic) == ["broker.crit[0]: stopper module runtime failure"]


# ---------------------------------------------------------------------------
# Module arguments
# ---------------------------------------------------------------------------

ARGS = """
    from flux.brokermod import BrokerModule, request_handler

    class Args(BrokerModule):
        @request_handler("args")
        def args_(self, msg):
            self.handle.respond(msg, {"instance": list(self.args),
                                      "mod_main": list(self.main_args)})

    def mod_main(h, *args):
        module = Args(h, *args)
        module.main_args = args
        module.run()
"""


def test_args_available_in_mod_main_and_on_instance(broker, write_module):
    """Arguments after the path are args in mod_main() and args on the instance:
    ('--verbose', '--count=4')."""
    broker.load(write_module("args.py", ARGS), "--verbose", "--count=4")
    assert broker.rpc("args.args").get() == {
        "instance": ["--verbose", "--count=4"],
        "mod_main": ["--verbose", "--count=4"],
    }


def test_args_split_on_whitespace(broker, write_module):
    """Arguments are split on whitespace."""
    broker.load(write_module("args.py", ARGS), "a  b", "c\td")
    assert broker.rpc("args.args").get()["instance"] == ["a", "b", "c", "d"]


def test_quoting_not_supported(broker, write_module):
    """Quoting is not supported: '"hello world"' becomes '"hello' and 'world"'."""
    broker.load(write_module("args.py", ARGS), '"hello world"')
    assert broker.rpc("args.args").get()["instance"] == ['"hello', 'world"']


def test_quote_characters_kept_literally(broker, write_module):
    """Quoting is not supported: quote characters stay part of the argument."""
    broker.load(write_module("args.py", ARGS), "'x'", '"y"')
    assert broker.rpc("args.args").get()["instance"] == ["'x'", '"y"']


# ---------------------------------------------------------------------------
# API reference
# ---------------------------------------------------------------------------


def test_brokermodule_constructor_signature():
    """class flux.brokermod.BrokerModule(h, *args)."""
    params = list(inspect.signature(BrokerModule).parameters.values())
    assert [p.name for p in params] == ["h", "args"]
    assert params[1].kind is inspect.Parameter.VAR_POSITIONAL


def test_reference_example(nopanic, example):
    """Reference example: info responds self.name (a raw string); the "panic"
    event handler calls stop_error(); one subclass, no mod_main, loads."""
    module = nopanic.load(example("reference.py"))
    assert nopanic.rpc("reference.info").get_str() == "reference"
    nopanic.event_send("reference.panic")
    assert module.state == "exited" and module.errnum != 0
    assert crit(nopanic) == ["broker.crit[0]: reference module runtime failure"]


def test_args_property_is_tuple_of_load_args(broker, write_module):
    """property args: tuple of module arguments passed at load time."""
    path = write_module(
        "argprop.py",
        """
        from flux.brokermod import BrokerModule, request_handler

        class ArgProp(BrokerModule):
            @request_handler("get")
            def get(self, msg):
                self.handle.respond(msg, {"type": type(self.args).__name__,
                                          "args": list(self.args)})
        """,
    )
    broker.load(path, "x", "y=1")
    assert broker.rpc("argprop.get").get() == {"type": "tuple", "args": ["x", "y=1"]}


DEBUGGER = """
    from flux.brokermod import BrokerModule, request_handler

    class Debugger(BrokerModule):
        @request_handler("test")
        def test(self, msg):
            p = msg.payload
            self.handle.respond(msg, {"set": self.debug_test(p["flag"], p.get("clear", False))})
"""


def setbit(broker, name, flags):
    """What `flux module debug --setbit FLAGS NAME` sends."""
    return broker.rpc(f"{name}.debug", {"op": "setbit", "flags": flags}).get()


def test_debug_test_true_when_bit_set_externally(broker, write_module):
    """debug_test(flag) returns True if the bit is set; bits are set externally
    via flux module debug --setbit."""
    broker.load(write_module("debugger.py", DEBUGGER))
    assert broker.rpc("debugger.test", {"flag": 4}).get() == {"set": False}
    setbit(broker, "debugger", 4)
    assert broker.rpc("debugger.test", {"flag": 4}).get() == {"set": True}
    assert broker.rpc("debugger.test", {"flag": 2}).get() == {"set": False}


def test_debug_test_without_clear_keeps_bit(broker, write_module):
    """debug_test(flag) with clear=False (the default) leaves the bit set."""
    broker.load(write_module("debugger.py", DEBUGGER))
    setbit(broker, "debugger", 1)
    assert broker.rpc("debugger.test", {"flag": 1}).get() == {"set": True}
    assert broker.rpc("debugger.test", {"flag": 1}).get() == {"set": True}
    assert inspect.signature(BrokerModule.debug_test).parameters["clear"].default is False


def test_debug_test_with_clear_clears_bit_after_reading(broker, write_module):
    """debug_test(flag, clear=True) reads the bit, then clears it."""
    broker.load(write_module("debugger.py", DEBUGGER))
    setbit(broker, "debugger", 8 | 2)
    assert broker.rpc("debugger.test", {"flag": 8, "clear": True}).get() == {"set": True}
    assert broker.rpc("debugger.test", {"flag": 8, "clear": True}).get() == {"set": False}
    assert broker.rpc("debugger.test", {"flag": 2}).get() == {"set": True}


def test_handle_property_is_the_handle(broker, write_module):
    """property handle: the underlying flux.Flux handle (the h given to the class)."""
    path = write_module(
        "handy.py",
        """
        from flux.brokermod import BrokerModule, request_handler

        class Handy(BrokerModule):
            @request_handler("check")
            def check(self, msg):
                self.handle.respond(msg, {"same": self.handle is self.h_given})

        def mod_main(h, *args):
            module = Handy(h, *args)
            module.h_given = h
            module.run()
        """,
    )
    broker.load(path)
    assert broker.rpc("handy.check").get() == {"same": True}


def test_name_property_is_broker_assigned(broker, example):
    """property name: the module name as assigned by the broker."""
    broker.load(example("mymod.py"), name="assigned")
    assert broker.rpc("assigned.info").get() == {"name": "assigned"}


def test_run_runs_reactor_until_stopped(broker, write_module):
    """run(): run the reactor until stopped; stop() makes run() return normally."""
    module = broker.load(write_module("stopper.py", STOPPER_MAIN))
    assert module.state == "running"
    assert texts(broker, "stopper") == []
    broker.rpc("stopper.done").get()
    broker.run_until_idle()
    assert texts(broker, "stopper") == ["run returned"]
    assert (module.state, module.errnum) == ("exited", 0)
    assert broker.panicked is None and crit(broker) == []


def test_stop_error_makes_run_raise_oserror(broker, write_module):
    """stop_error(): stop the reactor and cause run() to raise OSError."""
    module = broker.load(write_module("stopper.py", STOPPER_MAIN))
    broker.rpc("stopper.fail").get()
    broker.run_until_idle()
    assert texts(broker, "stopper") == ["run raised OSError"]
    assert module.state == "exited"


def test_run_raises_oserror_when_callback_raised(broker, write_module):
    """run() raises OSError if a Python exception was set on the handle during a
    callback (here: a timer callback)."""
    path = write_module(
        "cbfail.py",
        """
        import syslog
        from flux.brokermod import BrokerModule, request_handler

        class CbFail(BrokerModule):
            @request_handler("arm")
            def arm(self, msg):
                def ring(h, watcher, revents, arg):
                    1 / 0
                self.timer = self.handle.timer_watcher_create(1, ring)
                self.timer.start()
                self.handle.respond(msg, {})

        def mod_main(h, *args):
            try:
                CbFail(h, *args).run()
            except OSError:
                h.log(syslog.LOG_NOTICE, "run raised OSError")
            except Exception as exc:
                h.log(syslog.LOG_NOTICE, "run raised " + type(exc).__name__)
        """,
    )
    broker.load(path)
    broker.rpc("cbfail.arm").get()
    broker.advance(1)
    texts_ = texts(broker, "cbfail")
    assert texts_[-1] == "run raised OSError"
    assert texts_[0].startswith("reactor callback handler failed: Traceback")
    assert "ZeroDivisionError: division by zero" in texts_


SLOW_INIT = """
    from flux.brokermod import BrokerModule

    class Slow(BrokerModule):
        def run(self):
            {call}
            self.log.info("slow init done")
            super().run()
"""


def test_set_running_lets_load_return_before_init(broker, write_module):
    """set_running() before synchronous initialization in run() lets load return
    without waiting for the reactor; the init completes afterwards."""
    module = broker.load(write_module("slow.py", SLOW_INIT.format(call="self.set_running()")))
    assert module.state == "running"
    assert "slow init done" not in texts(broker, "slow")
    assert "route" in broker.rpc("slow.ping", {}).get()
    assert texts(broker, "slow") == ["slow init done"]


def test_without_set_running_load_waits_for_reactor(broker, write_module):
    """Without set_running(), load returns only once the reactor starts (init done)."""
    broker.load(write_module("slow.py", SLOW_INIT.format(call="pass")))
    assert texts(broker, "slow") == ["slow init done"]


def test_stop_exits_run_normally(broker, example):
    """stop(): stop the reactor and exit run() normally (no error, no panic);
    the spec's example stops on the unprefixed event "shutdown"."""
    module = broker.load(example("mymod.py"))
    broker.event_send("shutdown")
    assert (module.state, module.errnum) == ("exited", 0)
    assert crit(broker) == [] and broker.panicked is None


def test_request_handler_signature_and_defaults():
    """request_handler(topic, prefix=True, allow_guest=False)."""
    params = inspect.signature(request_handler).parameters
    assert list(params)[:3] == ["topic", "prefix", "allow_guest"]
    assert params["prefix"].default is True
    assert params["allow_guest"].default is False


def test_request_handler_invoked_with_self_and_msg(broker, write_module):
    """The request handler is invoked with (self, msg) for <module_name>.<topic>."""
    path = write_module(
        "selfmsg.py",
        """
        from flux.brokermod import BrokerModule, request_handler

        class SelfMsg(BrokerModule):
            @request_handler("who")
            def who(self, msg):
                self.handle.respond(msg, {"self": type(self).__name__, "topic": msg.topic})
        """,
    )
    broker.load(path)
    assert broker.rpc("selfmsg.who").get() == {"self": "SelfMsg", "topic": "selfmsg.who"}


def test_event_handler_signature_and_defaults():
    """event_handler(topic, prefix=True)."""
    params = inspect.signature(event_handler).parameters
    assert list(params)[:2] == ["topic", "prefix"]
    assert params["prefix"].default is True


def test_event_handler_invoked_for_name_dot_topic(broker, write_module):
    """The event handler is invoked with (self, msg) for <module_name>.<topic>."""
    broker.load(write_module("msgs.py", MESSAGES), name="renamed")
    broker.event_send("msgs.note", {"n": 0})
    broker.event_send("renamed.note", {"n": 1})
    assert texts(broker, "renamed") == ["Message renamed.note {'n': 1}"]
