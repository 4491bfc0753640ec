"""The spec's first example, as the README shows it: a request handler, one
open to guests, and an un-prefixed event handler.

    flux module load examples/mymod.py
    flux python -c 'import flux; print(flux.Flux().rpc("mymod.info").get())'   # {'name': 'mymod'}
    flux event pub shutdown      # stops the module
"""

from flux.brokermod import BrokerModule, event_handler, request_handler


class MyModule(BrokerModule):
    @request_handler("info")
    def info(self, msg):
        self.handle.respond(msg, {"name": self.name})

    @request_handler("status", allow_guest=True)  # guests may call this one
    def status(self, msg):
        self.handle.respond(msg, {"running": True})

    @event_handler("shutdown", prefix=False)
    def on_shutdown(self, msg):
        self.stop()
