"""Declared payloads: a request handler's keyword-only parameters.

A handler written as ``def div(self, msg, *, a: float, b: float = 1.0)``
declares that its request payload is a JSON object with a number ``a``
and an optional number ``b``.  :func:`schema_of` reads that declaration
once, when the class is defined; :meth:`PayloadSchema.fields_of` checks
each request's payload against it and returns the keyword arguments for
the call, or raises :class:`PayloadError` with one line naming the field.
"""

from __future__ import annotations

import inspect
import math
import typing
from typing import Any, Callable, Dict, List, Optional, Tuple, Union, get_args, get_origin

from flux._brief import BriefHelp
from flux._decoding import json_of, undecodable

_NoneType = type(None)


class PayloadError(ValueError, metaclass=BriefHelp):
    """A request payload does not match the handler's declared fields."""


# A checker takes a decoded JSON value and the field's path (for the
# message) and returns the value, or raises PayloadError.
_Checker = Callable[[Any, str], Any]


def _kind(value: Any) -> str:
    """The JSON kind of a decoded value, as a message names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number" if math.isfinite(value) else f"{value!r} (not a finite number)"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _describe(tp: Any) -> str:
    """How a message names the type *tp* expects."""
    names = {int: "an integer", float: "a number", str: "a string", bool: "a boolean",
             list: "an array", dict: "an object", _NoneType: "null", Any: "any value"}
    if tp in names:
        return names[tp]
    origin, args = get_origin(tp), get_args(tp)
    if origin is Union:
        return " or ".join(_describe(arg) for arg in args)
    if origin is list:
        return f"an array of {_plural(args[0])}" if args else "an array"
    if origin is dict:
        return f"an object of {_plural(args[1])}" if args else "an object"
    return getattr(tp, "__name__", str(tp))


def _plural(tp: Any) -> str:
    text = _describe(tp)
    for article in ("an ", "a "):
        if text.startswith(article):
            return text[len(article):] + "s"
    return text


def _fail(path: str, tp: Any, value: Any) -> PayloadError:
    return PayloadError(f"field {path!r}: expected {_describe(tp)}, got {_kind(value)}")


def _checker(tp: Any, where: str) -> _Checker:
    """Build the checker for annotation *tp* (TypeError if unsupported)."""
    if tp is Any or tp is inspect.Parameter.empty:
        return lambda value, path: value
    if tp is bool:
        def check_bool(value: Any, path: str) -> Any:
            if not isinstance(value, bool):
                raise _fail(path, tp, value)
            return value
        return check_bool
    if tp is int:
        def check_int(value: Any, path: str) -> Any:
            if isinstance(value, bool) or not isinstance(value, int):
                raise _fail(path, tp, value)
            return value
        return check_int
    if tp is float:
        def check_float(value: Any, path: str) -> Any:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _fail(path, tp, value)
            try:
                number = float(value)
            except OverflowError:
                digits = str(value)
                raise PayloadError(
                    f"field {path!r}: {digits[:10]}... ({len(digits)} digits) is too large for a number"
                ) from None
            if not math.isfinite(number):
                raise _fail(path, tp, value)
            return number
        return check_float
    if tp in (str, list, dict):
        def check_plain(value: Any, path: str) -> Any:
            if not isinstance(value, tp):
                raise _fail(path, tp, value)
            return value
        return check_plain
    if tp is None or tp is _NoneType:
        def check_none(value: Any, path: str) -> Any:
            if value is not None:
                raise _fail(path, _NoneType, value)
            return value
        return check_none
    origin, args = get_origin(tp), get_args(tp)
    if origin is Union:
        options = [_checker(arg, where) for arg in args]

        def check_union(value: Any, path: str) -> Any:
            for option in options:
                try:
                    return option(value, path)
                except PayloadError:
                    continue
            raise _fail(path, tp, value)
        return check_union
    if origin is list:
        item = _checker(args[0], where) if args else _checker(Any, where)

        def check_list(value: Any, path: str) -> Any:
            if not isinstance(value, list):
                raise _fail(path, tp, value)
            return [item(element, f"{path}[{index}]") for index, element in enumerate(value)]
        return check_list
    if origin is dict:
        if args and args[0] is not str:
            raise TypeError(f"{where}: JSON object keys are strings, so {tp} cannot be checked")
        entry = _checker(args[1], where) if args else _checker(Any, where)

        def check_dict(value: Any, path: str) -> Any:
            if not isinstance(value, dict):
                raise _fail(path, tp, value)
            return {key: entry(element, f"{path}.{key}") for key, element in value.items()}
        return check_dict
    raise TypeError(
        f"{where}: cannot check the annotation {tp!r}; use int, float, str, bool, list, dict, "
        f"List[...], Dict[str, ...], Optional[...], Union[...] or Any"
    )


class _Field:
    __slots__ = ("name", "check", "required", "expected")

    def __init__(self, name: str, check: _Checker, required: bool, expected: str) -> None:
        self.name = name
        self.check = check
        self.required = required
        self.expected = expected


class PayloadSchema:
    """The payload fields a handler declares, and the check of a request against them."""

    def __init__(self, fields: List[_Field], extra: bool) -> None:
        self._fields = fields
        self._names = {field.name for field in fields}
        self._extra = extra

    @property
    def fields(self) -> List[Tuple[str, str, bool]]:
        """``(name, expected type, required)`` of each declared field."""
        return [(f.name, f.expected, f.required) for f in self._fields]

    def fields_of(self, msg: Any) -> Dict[str, Any]:
        """The keyword arguments for the handler, from request *msg*'s payload.

        :raises PayloadError: one line naming what is wrong.
        """
        try:
            text = msg.payload_str
            if text is None:
                if any(field.required for field in self._fields):
                    raise PayloadError(f"request has no payload; expected a JSON object with {self._summary()}")
                return {}  # every field is optional: no payload means none of them
            payload = json_of(text)
        except (ValueError, RecursionError) as exc:
            reason = undecodable(exc)
            if reason is not None:
                raise PayloadError(reason) from None
            if isinstance(exc, PayloadError):
                raise
            raise PayloadError(f"payload is not JSON ({exc})") from None
        if not isinstance(payload, dict):
            raise PayloadError(f"payload is not a JSON object (got {_kind(payload)})")
        kwargs: Dict[str, Any] = {}
        for field in self._fields:
            if field.name in payload:
                kwargs[field.name] = field.check(payload[field.name], field.name)
            elif field.required:
                raise PayloadError(f"missing field {field.name!r} ({field.expected})")
        for name in payload:
            if name not in self._names:
                if not self._extra:
                    raise PayloadError(f"unexpected field {name!r}; the fields are {self._summary()}")
                kwargs[name] = payload[name]
        return kwargs

    def _summary(self) -> str:
        if not self._fields:
            return "any fields"  # only **extra
        return ", ".join(f"{f.name} ({f.expected}{'' if f.required else ', optional'})" for f in self._fields)


def schema_of(func: Callable[..., Any], where: str) -> Optional[PayloadSchema]:
    """The payload a handler declares, or None for a plain ``(self, msg)`` handler.

    *where* names the handler in errors.  Raises TypeError, at class
    definition, for an annotation that cannot be checked.
    """
    signature = inspect.signature(func)
    params = list(signature.parameters.values())
    declared = [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    extra = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    if not declared and not extra:
        return None
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:  # noqa: BLE001 - an unresolvable annotation
        raise TypeError(f"{where}: cannot read the annotations: {exc}") from None
    fields = []
    for param in declared:
        tp = hints.get(param.name, Any)
        check = _checker(tp, f"{where}: field {param.name!r}")
        fields.append(_Field(param.name, check, param.default is inspect.Parameter.empty, _describe(tp)))
    return PayloadSchema(fields, extra)

