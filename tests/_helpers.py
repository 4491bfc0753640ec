"""Helpers shared by the test modules."""

import pytest


def error_of(answer):
    """The (errno, text) of the error *answer* (a future or an RPC result) holds."""
    with pytest.raises(OSError) as info:
        answer.get_str()
    return info.value.errno, info.value.strerror
