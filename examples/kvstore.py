"""A key-value store: guests read, the owner writes, anyone may watch a key.

``watch`` is a stream: it answers with the key's value now and again after
each change, until the caller cancels it (``kvstore.watch-cancel`` with the
stream's matchtag) or goes away; then its ``finally`` runs.  The library
does the stream bookkeeping, cancel and disconnect handling.

    flux-brokermod run --rpc 'put={"key": "a", "value": 1}' --rpc 'get={"key": "a"}' examples/kvstore.py
"""

import asyncio
import errno
from typing import Any, Dict, List

from flux.brokermod import BrokerModule, RequestError, request_handler


class KVStore(BrokerModule):
    """A dictionary served over RPC, with watchers."""

    def __init__(self, h, *args):
        super().__init__(h, *args)
        self.data: Dict[str, Any] = {}
        self.changed: Dict[str, asyncio.Event] = {}
        self.watching = 0

    @request_handler("get", allow_guest=True)
    def get(self, msg, *, key: str):
        """The value of a key (ENOENT if there is none)."""
        if key not in self.data:
            raise RequestError(errno.ENOENT, f"no such key: {key}")
        return {"value": self.data[key]}

    @request_handler("put")
    def put(self, msg, *, key: str, value: Any):
        """Set a key (owner only) and wake its watchers."""
        self.data[key] = value
        self.changed.pop(key, asyncio.Event()).set()
        return {}

    @request_handler("keys", allow_guest=True)
    def keys(self, msg) -> List[str]:
        """Every key, sorted."""
        return sorted(self.data)

    @request_handler("watch", allow_guest=True)
    async def watch(self, msg, *, key: str):
        """Stream the key's value now and after each change."""
        self.watching += 1
        try:
            while True:
                yield {"value": self.data.get(key)}
                await self.changed.setdefault(key, asyncio.Event()).wait()
        finally:
            self.watching -= 1

    @request_handler("watching", allow_guest=True)
    def count_watching(self, msg):
        """How many watch streams are open."""
        return {"watching": self.watching}
