"""Helpers shared by the test modules."""

import pytest


def raised_by(answer):
    """The OSError that the error *answer* (a future or an RPC result) holds.

    A future is first waited for outside ``pytest.raises``: when no answer
    comes at all, the in-memory broker's EDEADLK or ETIMEDOUT fails the
    test rather than passing for an error answer.
    """
    if hasattr(answer, "wait_for"):
        answer.wait_for()
    with pytest.raises(OSError) as info:
        answer.get_str()
    return info.value


def error_of(answer):
    """The (errno, text) of the error *answer* (a future or an RPC result) holds."""
    exc = raised_by(answer)
    return exc.errno, exc.strerror


def exited(broker, name):
    """Wait until module *name* is no longer loaded on *broker* (a
    MemoryBroker or RealBroker of flux.brokermod_testing)."""
    broker.settle(lambda: name not in broker.modules(), f"module {name} to exit")
