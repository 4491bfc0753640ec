"""The module variants the benchmark measures, written into a directory."""

ECHO_VARIANTS = {
    # a bare msg_watcher callback, no library: the Python floor
    "rawecho": '''
import os

def mod_main(h, *args):
    def echo(h, watcher, msg, arg):
        h.respond(msg, msg.payload_str)
    def pid(h, watcher, msg, arg):
        h.respond(msg, {"pid": os.getpid()})
    for topic, callback in (("rawecho.echo", echo), ("rawecho.pid", pid)):
        h.msg_watcher_create(callback, 1, topic).start()
    h.reactor_run()
''',
    # the flux-core way: self.handle.respond
    "respondecho": '''
import os
from flux.brokermod import BrokerModule, request_handler

class RespondEcho(BrokerModule):
    @request_handler("echo", allow_guest=True)
    def echo(self, msg):
        self.handle.respond(msg, msg.payload)

    @request_handler("pid")
    def pid(self, msg):
        self.handle.respond(msg, {"pid": os.getpid()})
''',
    "returnecho": '''
import os
from flux.brokermod import BrokerModule, request_handler

class ReturnEcho(BrokerModule):
    @request_handler("echo")
    def echo(self, msg):
        return msg.payload

    @request_handler("pid")
    def pid(self, msg):
        return {"pid": os.getpid()}
''',
    "declaredecho": '''
import os
from flux.brokermod import BrokerModule, request_handler

class DeclaredEcho(BrokerModule):
    @request_handler("echo")
    def echo(self, msg, *, data: str):
        return {"data": data}

    @request_handler("pid")
    def pid(self, msg):
        return {"pid": os.getpid()}
''',
    "asyncecho": '''
import os
from flux.brokermod import BrokerModule, request_handler

class AsyncEcho(BrokerModule):
    @request_handler("echo")
    async def echo(self, msg):
        return msg.payload

    @request_handler("pid")
    def pid(self, msg):
        return {"pid": os.getpid()}
''',
}


# streamed responses and delivered events, each with a C ping floor too
OTHER_MODULES = {
    "streamer": '''
import os
from flux.brokermod import BrokerModule, request_handler

class Streamer(BrokerModule):
    @request_handler("stream")
    def stream(self, msg, *, count: int):
        for i in range(count):
            yield {"i": i}

    @request_handler("pid")
    def pid(self, msg):
        return {"pid": os.getpid()}
''',
    "listener": '''
import os
from flux.brokermod import BrokerModule, event_handler, request_handler

class Listener(BrokerModule):
    heard = 0

    @event_handler("bench.tick", prefix=False)
    def tick(self, msg):
        self.heard += 1

    @request_handler("heard")
    def count(self, msg):
        return {"heard": self.heard}

    @request_handler("pid")
    def pid(self, msg):
        return {"pid": os.getpid()}
''',
}


def write_modules(directory: str, variants: dict = ECHO_VARIANTS) -> dict:
    """Write each of *variants* as NAME.py in *directory*; return name -> path."""
    import os
    import textwrap

    paths = {}
    for name, source in variants.items():
        path = os.path.join(directory, f"{name}.py")
        with open(path, "w") as f:
            f.write(textwrap.dedent(source))
        paths[name] = path
    return paths
