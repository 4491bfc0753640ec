"""The standard methods of every module, as libflux's flux_module_register_handlers gives them.

``NAME.ping``, ``stats-get``, ``stats-clear`` (request and event),
``config-reload``/``config-update``, ``debug``, ``rusage`` and ``shutdown``,
answering as a real broker does (measured on flux-core 0.88.0; see
docs/real-flux.md).
"""

import errno
import functools
import json
import math
import resource
from typing import Any, Dict, Optional

from flux.membroker._message import (
    FLUX_MSGTYPE_EVENT,
    FLUX_MSGTYPE_REQUEST,
    FLUX_ROLE_ALL,
    FLUX_ROLE_USER,
)


def register_standard_methods(broker: Any, record: Any) -> None:
    """Give *record*'s module the standard methods libflux gives every module."""
    h = record.handle
    name = record.name
    methods = [
        (FLUX_MSGTYPE_REQUEST, "stats-get", _stats_get, FLUX_ROLE_ALL),
        (FLUX_MSGTYPE_REQUEST, "stats-clear", _stats_clear, 0),
        (FLUX_MSGTYPE_EVENT, "stats-clear", _stats_clear, 0),
        (FLUX_MSGTYPE_REQUEST, "config-reload", _config_reload, 0),
        (FLUX_MSGTYPE_REQUEST, "config-update", _config_reload, 0),
        (FLUX_MSGTYPE_REQUEST, "debug", _debug, 0),
        (FLUX_MSGTYPE_REQUEST, "rusage", _rusage, FLUX_ROLE_USER),
        (FLUX_MSGTYPE_REQUEST, "ping", _ping, FLUX_ROLE_USER),
        (FLUX_MSGTYPE_REQUEST, "shutdown", _shutdown, 0),
    ]
    h.event_subscribe(f"{name}.stats-clear")
    for msgtype, method, callback, rolemask in methods:
        h.msg_watcher_create(functools.partial(callback, broker), msgtype, f"{name}.{method}", record,
                             rolemask=rolemask).start()


def _ping(broker: Any, h: Any, watcher: Any, msg: Any, record: Any) -> None:
    answer_ping(h, msg, record.uuid[:8], record.rank)


def answer_ping(h: Any, msg: Any, uuid: str, rank: int) -> None:
    """Answer ``ping`` as libflux does: the request's object with the route,
    credentials and rank added, in jansson's spaced text."""
    payload = request_object(h, msg)
    if payload is not None:
        route = f"{msg._sender._route}!{uuid}"
        payload.update(route=route, userid=msg.userid, rolemask=msg.rolemask, rank=rank)
        h.respond(msg, jansson_dumps(payload, compact=False))


def request_object(h: Any, msg: Any, array_errno: int = errno.ENOMEM) -> Optional[Dict[str, Any]]:
    """The request's payload as a JSON object to jansson, or None after
    answering what libflux answers (measured for ping: an array ENOMEM;
    no payload, NaN, a bare number or string EPROTO)."""
    try:
        payload = jansson_loads(msg.payload_str)
    except (TypeError, ValueError):
        payload = None
    if isinstance(payload, dict):
        return payload
    h.respond_error(msg, array_errno if isinstance(payload, list) else errno.EPROTO, None)
    return None


def _stats_get(broker: Any, h: Any, watcher: Any, msg: Any, record: Any) -> None:
    h.respond(msg, jansson_dumps(h._brokermod_msgcounters()))


def _stats_clear(broker: Any, h: Any, watcher: Any, msg: Any, record: Any) -> None:
    h._brokermod_clear_msgcounters()
    if msg.type == FLUX_MSGTYPE_REQUEST:
        h.respond(msg, None)


def _config_reload(broker: Any, h: Any, watcher: Any, msg: Any, record: Any) -> None:
    try:
        if not isinstance(jansson_loads(msg.payload_str), dict):
            raise ValueError
    except (TypeError, ValueError):
        h.respond_error(msg, errno.EPROTO, f"Failed to parse {msg.topic} request")
        return
    h.respond(msg, None)


def _debug(broker: Any, h: Any, watcher: Any, msg: Any, record: Any) -> None:
    flags = debug_flags(msg, record.debug_flags)
    if flags is None:
        h.respond_error(msg, errno.EPROTO, None)
        return
    record.debug_flags = flags
    h.respond(msg, jansson_dumps({"flags": flags}))


def debug_flags(msg: Any, flags: int) -> Optional[int]:
    """The debug flags after request *msg* (``{"op": "setbit", "flags": N}``...)
    changes *flags*; None for a request libflux refuses with EPROTO."""
    try:
        payload = jansson_loads(msg.payload_str)
        op, bits = payload["op"], payload["flags"]
        if not isinstance(bits, int) or not isinstance(op, str):
            raise TypeError
    except (TypeError, ValueError, KeyError):
        return None
    changed = {"setbit": flags | bits, "clrbit": flags & ~bits, "set": bits, "clr": 0}.get(op)
    return changed


def _rusage(broker: Any, h: Any, watcher: Any, msg: Any, record: Any) -> None:
    h.respond(msg, jansson_dumps(rusage()))


def rusage() -> Dict[str, Any]:
    """getrusage(RUSAGE_SELF) as the ``rusage`` method answers it."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    fields = [
        "maxrss", "ixrss", "idrss", "isrss", "minflt", "majflt", "nswap", "inblock",
        "oublock", "msgsnd", "msgrcv", "nsignals", "nvcsw", "nivcsw",
    ]
    result: Dict[str, Any] = {"utime": usage.ru_utime, "stime": usage.ru_stime}
    result.update((field, getattr(usage, f"ru_{field}")) for field in fields)
    return result


def _shutdown(broker: Any, h: Any, watcher: Any, msg: Any, record: Any) -> None:
    h.reactor_stop()


def jansson_dumps(value: Any, compact: bool = True) -> str:
    """*value* as libflux's C handlers encode it with jansson: compact
    (``{"flags":4}``) where they pass JSON_COMPACT, spaced (``{"a": 1}``)
    where they do not; a real number with 17 significant digits."""
    comma, colon = (",", ":") if compact else (", ", ": ")

    def encode(item: Any) -> str:
        if isinstance(item, dict):
            return "{" + comma.join(json.dumps(str(k), ensure_ascii=False) + colon + encode(v)
                                    for k, v in item.items()) + "}"
        if isinstance(item, (list, tuple)):
            return "[" + comma.join(encode(v) for v in item) + "]"
        if isinstance(item, float) and math.isfinite(item):
            text = "%.17g" % item
            return text if any(c in text for c in ".e") else text + ".0"
        return json.dumps(item, ensure_ascii=False)

    return encode(value)


def jansson_loads(text: Optional[str]) -> Any:
    """Decode JSON as libflux's jansson does: no NaN or Infinity (TypeError: no payload)."""
    if text is None:
        raise TypeError("no payload")

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    try:
        return json.loads(text, parse_constant=refuse)
    except RecursionError:  # jansson refuses what it nests too deep to parse
        raise ValueError("nested too deeply") from None
