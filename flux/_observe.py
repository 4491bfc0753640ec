"""What a test may observe of a module on the in-memory broker.

The library reports two things to the handle it runs on: the
:class:`~flux.brokermod.BrokerModule` instance it created, and each
handler failure it logged.  The in-memory handle keeps them for tests
(``LoadedModule.instance``, ``Broker.handler_errors``); a real handle has
no such hooks and nothing happens.
"""

from typing import Any


def module_created(h: Any, instance: Any) -> None:
    """*instance* is the BrokerModule running on handle *h*."""
    hook = getattr(type(h), "_brokermod_module_created", None)
    if hook is not None:
        hook(h, instance)


def handler_failed(h: Any, what: str, exc: BaseException) -> None:
    """A handler running on handle *h* raised *exc* (*what*: which one)."""
    hook = getattr(type(h), "_brokermod_handler_failed", None)
    if hook is not None:
        hook(h, what, exc)
