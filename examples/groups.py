"""flux-core's ``groups`` service, in Python: named groups of broker ranks.

A client asks its own broker to ``join`` a group; that rank stays a member
until the client (or another client of that broker) asks to ``leave``, or
the client disconnects.  Each rank knows the members within its subtree
of the tree of brokers; rank 0 knows them all and answers ``get``, which
with FLUX_RPC_STREAMING goes on answering after every change.  When a
subtree of brokers is lost, its ranks leave every group.

It behaves as flux-core's C module (``src/modules/groups/groups.c``) does,
answers and error texts included; a real instance already runs that one
as ``groups``, so load this one on every rank under another name:

    flux exec -r all flux module load --name=pygroups $PWD/examples/groups.py
    flux python -c 'import flux; print(flux.Flux().rpc("pygroups.join", {"name": "x"}).get())'
    flux exec -r all flux module remove pygroups

In memory, ``Broker(size=8).load("examples/groups.py", rank="all")``.
"""

import errno

from flux.brokermod import BrokerModule, RankSets, RequestError, request_facts, request_handler
from flux.constants import FLUX_ROLE_LOCAL


class Groups(BrokerModule):
    """Which broker ranks are members of which named groups."""

    # Changes wait 0.1 s on each rank, then go upstream together, as in groups.c.
    groups = RankSets(batch=0.1)

    def _local_only(self, msg, method):
        if not msg.rolemask & FLUX_ROLE_LOCAL:
            raise RequestError(errno.EPROTO, f"{self.name}.{method} is restricted to the local broker")

    @request_handler("join")
    def join(self, msg, *, name: str):
        """Make this broker's rank a member of group *name* until the client disconnects."""
        self._local_only(msg, "join")
        if self.groups.joined(name):
            raise RequestError(errno.EEXIST, f"rank {self.rank} is already a member of {name}")
        self.groups.add(name, msg)
        self.handle.respond(msg)

    @request_handler("leave")
    def leave(self, msg, *, name: str):
        """Take this broker's rank out of group *name*."""
        self._local_only(msg, "leave")
        if not self.groups.joined(name):
            raise RequestError(errno.ENOENT, f"rank {self.rank} is not a member of {name}")
        self.groups.discard(name)
        self.handle.respond(msg)

    @request_handler("get", allow_guest=True)
    async def get(self, msg, *, name: str):
        """The members of group *name* (rank 0 only); streamed as they change."""
        if self.rank != 0:
            raise RequestError(errno.EPROTO, "this RPC is only available on rank 0")
        async for members in self.groups.watch(name):
            self.handle.respond(msg, {"members": members})
            if not request_facts(msg).streaming:
                return

    def module_stats(self):
        """What ``flux module stats`` adds: each group's members in this subtree."""
        return {"subtree": {name: self.groups.members(name) for name in self.groups.names()}}
