"""Declared module options, from the instance configuration and the load arguments.

A module class declares ``interval = Option(float, default=1.0, help="...")``;
the instance configuration's table named after the module (``[mymod]
interval = 2.5``) sets it, and ``flux module load mymod.py interval=2`` (or
``--interval=2``, and ``--verbose`` for a boolean) overrides that.
:func:`parse_options` turns both into values, or raises
:class:`OptionError` with one line naming the option (and the table) and
listing the valid ones.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from flux._brief import BriefHelp
from flux._logtext import excerpt

#: Characters of a configuration key an error repeats (start and end).
_KEY_EXCERPT = 20

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

    def convert(self, text: Optional[str], what: str = "") -> Any:
        """The value of the argument *text* (None: a bare ``--name`` flag).
        *what* names the option in errors (default ``option 'NAME'``)."""
        what = what or f"option {self.name!r}"
        if self.type is bool:
            if text is None or text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise OptionError(f"{what}: {text!r} is not a boolean (true/false)")
        if text is None:
            raise OptionError(f"{what} needs a value: {self.name}=VALUE")
        try:
            value = self.type(text)
        except (TypeError, ValueError) as exc:
            raise OptionError(f"{what}: {text!r} is not a valid {self.kind} ({exc})") from None
        return self._finite(value, text, what)

    def _finite(self, value: Any, given: Any, what: str) -> Any:
        if self.type is float and not math.isfinite(value):
            raise OptionError(f"{what}: {given!r} is not a finite number")
        return value

    def from_config(self, value: Any, what: str) -> Any:
        """The value of a configuration value (TOML-typed: a string goes
        through the option's type as an argument would; a number, boolean,
        array or table must already be what the option takes)."""
        if isinstance(value, str):
            return self.convert(value, what)
        plain = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}.get(self.type)
        if plain is not None:
            if isinstance(value, plain) and (self.type is bool or not isinstance(value, bool)):
                return self._finite(self.type(value), value, what)
            raise OptionError(f"{what}: {value!r} is not a valid {self.kind} (a TOML {_toml_kind(value)})")
        try:
            return self.type(value)
        except (TypeError, ValueError) as exc:
            raise OptionError(f"{what}: {value!r} is not a valid {self.kind} ({exc})") from None


def _toml_kind(value: Any) -> str:
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "float"), (list, "array"), (dict, "table")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


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


def parse_options(options: Dict[str, Option], args: Iterable[str],
                  table: Optional[Dict[str, Any]] = None, table_name: str = "") -> Dict[str, Any]:
    """The options' values: from the configuration *table* (the instance
    configuration's ``[table_name]``), then from the ``name=value``,
    ``--name=value`` and ``--flag`` arguments *args*, which override it.

    :raises OptionError: one line naming the bad argument (or the table and
        key) and listing the valid options.
    """
    values = config_values(options, table, table_name) if table else {}
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


def config_values(options: Dict[str, Option], table: Any, table_name: str) -> Dict[str, Any]:
    """The values the configuration table ``[table_name]`` gives options.

    :raises OptionError: one line naming the table and the key.
    """
    # The key and the reason come first, and the options by name only: a
    # refused reload reaches the admin in what a flux_error_t holds.
    where = f"config [{table_name}]"
    if not isinstance(table, dict):
        raise OptionError(f"{where}: is a TOML {_toml_kind(table)}, not a table of options; {_names(options)}")
    values = {}
    for key, value in table.items():
        option = options.get(key) or options.get(key.replace("-", "_"))
        if option is None:
            raise OptionError(f"{where}: unknown key {excerpt(key, _KEY_EXCERPT)!r}; {_names(options)}")
        if option.name in values:
            raise OptionError(f"{where}: option {option.name!r} is set twice")
        values[option.name] = option.from_config(value, f"{where} {key}")
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


def _names(options: Dict[str, Option]) -> str:
    if not options:
        return "this module takes no options"
    return "options: " + ", ".join(options)


def option_table(options: Dict[str, Option]) -> List[Dict[str, Any]]:
    """The options as records, for introspection."""
    return [
        {"name": o.name, "type": o.kind, "required": o.required,
         "default": None if o.required else o.default, "help": o.help}
        for o in options.values()
    ]
