"""Declared module options, parsed from the load arguments.

A module class declares ``interval = Option(float, default=1.0, help="...")``;
``flux module load mymod.py interval=2`` (or ``--interval=2``, and
``--verbose`` for a boolean) sets it.  :func:`parse_options` turns the
argument list into values, or raises :class:`OptionError` with one line
naming the option and listing the valid ones.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from flux._brief import BriefHelp

_REQUIRED = object()
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class OptionError(ValueError, metaclass=BriefHelp):
    """A load argument names no option, or has a value the option refuses."""


class Option:
    """A module option: ``name = Option(type, default=..., help=...)`` on the class.

    *type* converts the argument text: ``str``, ``int``, ``float``,
    ``bool`` (a flag: ``--name`` alone means True; ``name=false`` too) or
    any callable taking a string.  Without a *default* the option is
    required.  On a module instance the attribute is the parsed value.
    """

    def __init__(self, type: Callable[[str], Any] = str, default: Any = _REQUIRED, help: str = "") -> None:
        if not callable(type):
            raise TypeError(f"Option type must be callable, not {type!r}")
        self.type = type
        self.default = default
        self.help = help
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: Optional[type] = None) -> Any:
        if instance is None:
            return self
        try:
            return instance.__dict__["_flux_options"][self.name]
        except KeyError:
            raise AttributeError(f"option {self.name!r} is not parsed yet") from None

    @property
    def required(self) -> bool:
        """True when the option has no default."""
        return self.default is _REQUIRED

    @property
    def kind(self) -> str:
        """The option's type as messages name it: ``float``, ``flag``..."""
        return "flag" if self.type is bool else str(getattr(self.type, "__name__", "value"))

    def describe(self) -> str:
        """``name (type, default X)``, as error messages list the options."""
        extra = "required" if self.required else f"default {self.default!r}"
        return f"{self.name} ({self.kind}, {extra})"

    def convert(self, text: Optional[str]) -> Any:
        """The value of the argument *text* (None: a bare ``--name`` flag)."""
        if self.type is bool:
            if text is None or text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise OptionError(f"option {self.name!r}: {text!r} is not a boolean (true/false)")
        if text is None:
            raise OptionError(f"option {self.name!r} needs a value: {self.name}=VALUE")
        try:
            value = self.type(text)
        except (TypeError, ValueError) as exc:
            raise OptionError(f"option {self.name!r}: {text!r} is not a valid {self.kind} ({exc})") from None
        if self.type is float and not math.isfinite(value):
            raise OptionError(f"option {self.name!r}: {text!r} is not a finite number")
        return value


def options_of(cls: type) -> Dict[str, Option]:
    """The options a class declares, subclasses overriding their bases."""
    found: Dict[str, Option] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, Option):
                found[name] = value
            elif name in found:
                del found[name]  # a subclass replaced the option by something else
    return found


def parse_options(options: Dict[str, Option], args: Iterable[str]) -> Dict[str, Any]:
    """Parse ``name=value``, ``--name=value`` and ``--flag`` arguments.

    :raises OptionError: one line naming the bad argument and listing the
        valid options.
    """
    values: Dict[str, Any] = {}
    given: Dict[str, str] = {}  # option name: the argument that set it
    for arg in args:
        try:
            name, text = _split(arg)
        except OptionError as exc:
            raise OptionError(f"{exc}; {_listing(options)}") from None
        option = options.get(name) or options.get(name.replace("-", "_"))
        if option is None:
            raise OptionError(f"unknown option {arg!r}; {_listing(options)}")
        if option.name in given:
            raise OptionError(f"option {option.name!r} is given twice ({given[option.name]!r}, {arg!r})")
        given[option.name] = arg
        values[option.name] = option.convert(text)
    for option in options.values():
        if option.name not in values:
            if option.required:
                raise OptionError(f"missing required option {option.name!r}; {_listing(options)}")
            values[option.name] = option.default
    return values


def _split(arg: str) -> Tuple[str, Optional[str]]:
    """``name=value`` or ``--name=value`` -> (name, value); ``--name`` -> (name, None)."""
    body = arg[2:] if arg.startswith("--") else arg
    if "=" in body:
        name, text = body.split("=", 1)
        return name, text
    if arg.startswith("--"):
        return body, None
    raise OptionError(f"argument {arg!r} is not an option: write name=value or --name")


def _listing(options: Dict[str, Option]) -> str:
    if not options:
        return "this module takes no options"
    return "options: " + ", ".join(option.describe() for option in options.values())


def option_table(options: Dict[str, Option]) -> List[Dict[str, Any]]:
    """The options as records, for introspection."""
    return [
        {"name": o.name, "type": o.kind, "required": o.required,
         "default": None if o.required else o.default, "help": o.help}
        for o in options.values()
    ]
