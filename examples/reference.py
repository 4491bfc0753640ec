"""The API reference's example: a raw-string response and stop_error().
The answer is a plain string, not JSON: read it with get_str() (get()
would fail to decode it).

    flux module load examples/reference.py
    flux python -c 'import flux; print(flux.Flux().rpc("reference.info").get_str())'   # reference
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
