"""Logging from a module: one message at every level, and a threshold.

    flux module load examples/logging_levels.py            # all eight levels
    flux module load examples/logging_levels.py info       # debug is dropped
    flux dmesg | grep logging_levels
"""

from flux.brokermod import BrokerModule, request_handler

LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emerg"]


class LoggingModule(BrokerModule):
    def __init__(self, h, *args):
        super().__init__(h, *args)
        if args:
            self.log.level = args[0]  # e.g. "info" suppresses debug messages

    @request_handler("emit")
    def emit(self, msg):
        for level in LEVELS:
            getattr(self.log, level)(f"level {level}")
        self.handle.respond(msg, {"threshold": self.log.level})
