"""Two BrokerModule subclasses in one file: mod_main() picks which one runs.

    flux module load examples/two_modules.py --verbose --count=4
    flux python -c 'import flux; print(flux.Flux().rpc("two_modules.args").get())'
    # {'args': ['--verbose', '--count=4'], 'class': 'Primary'}
"""

from flux.brokermod import BrokerModule, request_handler


class Primary(BrokerModule):
    @request_handler("args")
    def args_(self, msg):
        self.handle.respond(msg, {"args": list(self.args), "class": type(self).__name__})


class Secondary(Primary):
    pass


def mod_main(h, *args):
    Primary(h, *args).run()
