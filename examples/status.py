"""A handler that guests may call (allow_guest=True) next to an owner-only one.

    flux module load examples/status.py
    FLUX_HANDLE_USERID=1234 FLUX_HANDLE_ROLEMASK=0x2 flux python -c 'import flux; print(flux.Flux().rpc("status.status").get())'
    # {'running': True}
    FLUX_HANDLE_USERID=1234 FLUX_HANDLE_ROLEMASK=0x2 flux python -c 'import flux; print(flux.Flux().rpc("status.secret").get())'
    # PermissionError: [Errno 1] Request requires owner credentials

(FLUX_HANDLE_USERID and FLUX_HANDLE_ROLEMASK: the instance owner acting as a guest.)
"""

from flux.brokermod import BrokerModule, request_handler


class StatusModule(BrokerModule):
    @request_handler("status", allow_guest=True)
    def status(self, msg):
        self.handle.respond(msg, {"running": True})

    @request_handler("secret")
    def secret(self, msg):
        self.handle.respond(msg, {"owner": msg.userid})
