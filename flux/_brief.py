"""Keep ``help()`` on this library's exceptions and records to what it adds."""

from typing import List


class BriefHelp(type):
    """Metaclass of the public classes built on a builtin type (exceptions,
    a named tuple): ``dir()``, and so ``help()``, lists what the class and
    defines, plus what its bases offer that is not a dunder (``errno``,
    ``strerror``, ``_asdict``...): not the builtins' dozens of special methods."""

    def __dir__(cls) -> List[str]:
        names = set(vars(cls))
        for klass in cls.__mro__[1:]:
            names.update(name for name in vars(klass) if not name.startswith("__"))
        return sorted(names)
