"""A calculator: declared payloads, return values and clean refusals.

Each handler declares its payload as keyword-only parameters: a request
whose payload lacks a field, or has one of the wrong type, is refused with
EPROTO and a message naming the field before the handler runs.  The value
a handler returns is its answer.  ``RequestError`` refuses a request with
an errno of your choice, without a traceback in the log.

    flux-brokermod run --rpc 'div={"a": 1, "b": 4}' --rpc 'div={"a": 1, "b": 0}' examples/calculator.py
"""

import errno
from typing import List

from flux.brokermod import BrokerModule, RequestError, request_handler


class Calculator(BrokerModule):
    """Arithmetic for everyone: guests may call each method."""

    @request_handler("add", allow_guest=True)
    def add(self, msg, *, a: float, b: float):
        """Add two numbers."""
        return {"result": a + b}

    @request_handler("div", allow_guest=True)
    def div(self, msg, *, a: float, b: float = 1.0):
        """Divide a by b (1 if omitted)."""
        if b == 0:
            raise RequestError(errno.EDOM, "division by zero")
        return {"result": a / b}

    @request_handler("sum", allow_guest=True)
    def total(self, msg, *, values: List[float]):
        """Add up a list of numbers."""
        return {"result": sum(values)}
