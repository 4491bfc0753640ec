"""The spec's first example: a request handler and an un-prefixed event handler.

    flux module load examples/mymod.py
    flux rpc mymod.info          # {"name": "mymod"}
    flux event pub shutdown      # stops the module
"""

from flux.brokermod import BrokerModule, event_handler, request_handler


class MyModule(BrokerModule):
    @request_handler("info")
    def info(self, msg):
        self.handle.respond(msg, {"name": self.name})

    @event_handler("shutdown", prefix=False)
    def on_shutdown(self, msg):
        self.stop()
