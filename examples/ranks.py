"""A module that behaves differently on rank 0 and on the other ranks.

Load it on every rank (``flux exec -r all flux module load
/path/to/ranks.py``).  Each rank's module reports to rank 0 on a timer;
rank 0 keeps the latest report of every rank and answers ``ranks.status``
with them.  ``self.rank`` and ``self.size`` tell a module where it runs.
Every rank talking to rank 0 is fine for a few brokers; rank 0 then
handles a message per rank each round, so a service over a large
instance gives each broker its parent and children only instead:
``@reduce_handler`` and ``RankSets`` (see ``examples/groups.py``).

    flux-brokermod run --size 3 --advance 1.5 --rpc status examples/ranks.py
"""

import time

from flux.brokermod import BrokerModule, Option, request_handler, timer_handler


class Ranks(BrokerModule):
    """Rank 0 collects; every rank reports."""

    every = Option(float, default=1.0, help="seconds between reports")

    def setup(self):
        self.reports = {}
        self.sent = 0

    @timer_handler("every", repeat="every")
    async def report(self):
        """Send this rank's report to rank 0."""
        self.sent += 1
        await self.handle.rpc("ranks.report", {"rank": self.rank, "sent": self.sent}, nodeid=0)

    @request_handler("report")
    def take_report(self, msg, *, rank: int, sent: int):
        """Rank 0 keeps the latest report of each rank."""
        if self.rank != 0:
            raise ValueError("reports go to rank 0")
        self.reports[str(rank)] = {"sent": sent, "at": time.time()}
        return {}

    @request_handler("status", allow_guest=True)
    def status(self, msg):
        """On rank 0: every rank's latest report; elsewhere: where to ask."""
        if self.rank != 0:
            return {"rank": self.rank, "ask": "rank 0"}
        return {"size": self.size, "reporting": sorted(self.reports, key=int),
                "sent": {rank: report["sent"] for rank, report in self.reports.items()}}
