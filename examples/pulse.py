"""A pulse: publishes an event every ``interval`` seconds.

(Not named heartbeat: a real instance already runs flux-core's ``heartbeat`` module.)

Shows a module's life cycle and operation features together:

- declared options: ``flux module load pulse.py interval=0.5 --verbose``;
- ``setup()`` and ``teardown()``;
- a timer whose period comes from an option, paused and re-armed at run time;
- its own values in ``flux module stats pulse`` (``module_stats``);
- ``flux-brokermod describe examples/pulse.py`` (or the ``pulse.handlers``
  request) lists what it offers.

    flux-brokermod run --advance 3 --rpc status examples/pulse.py interval=1
"""

from typing import Any, Dict, Optional

from flux.brokermod import BrokerModule, Option, request_handler, timer_handler


class Pulse(BrokerModule):
    """Publishes ``TOPIC {"beat": N, "rank": R}`` every INTERVAL seconds."""

    interval = Option(float, default=1.0, help="seconds between beats")
    topic = Option(str, default="pulse.beat", help="topic of the events published")
    verbose = Option(bool, default=False, help="log each beat")

    def setup(self) -> None:
        if self.interval <= 0:
            raise ValueError(f"interval must be positive, not {self.interval}")
        self.beats = 0
        self.paused = False
        self.log.info(f"beating every {self.interval:g}s on rank {self.rank} of {self.size}")

    def teardown(self) -> None:
        self.log.info(f"stopped after {self.beats} beats")

    @timer_handler("interval", repeat="interval")
    def beat(self) -> None:
        """Publish one pulse event."""
        self.beats += 1
        self.handle.event_send(self.topic, {"beat": self.beats, "rank": self.rank})
        if self.verbose:
            self.log.debug(f"beat {self.beats}")

    @request_handler("pause")
    def pause(self, msg):
        """Stop beating until resumed."""
        self.timer("beat").stop()
        self.paused = True
        return {"paused": True}

    @request_handler("resume")
    def resume(self, msg, *, interval: Optional[float] = None):
        """Beat again, at a new interval if one is given."""
        every = interval or self.interval
        self.timer("beat").reset(after=every, repeat=every)
        self.paused = False
        return {"interval": every}

    @request_handler("status", allow_guest=True)
    def status(self, msg):
        """Beats so far, and whether beating is paused."""
        return {"beats": self.beats, "paused": self.paused, "rank": self.rank, "size": self.size}

    def module_stats(self) -> Dict[str, Any]:
        """Added to ``flux module stats pulse``."""
        return {"beats": self.beats}
