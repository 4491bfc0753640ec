"""The API reference's example: a raw-string response and stop_error().

    flux module load examples/reference.py
    flux rpc reference.info      # reference   (a plain string, not JSON)
    flux event pub reference.panic   # the module stops with an error
"""

from flux.brokermod import BrokerModule, event_handler, request_handler


class MyModule(BrokerModule):
    @request_handler("info")
    def info(self, msg):
        self.handle.respond(msg, self.name)

    @event_handler("panic")
    def panic(self, msg):
        self.stop_error()
