"""The one reader of edge-tl's TOML files: target profiles, calibration recipes, fleet inventories.

Same rules for all three: a file that cannot be read or parsed, an unknown key (with the
closest known ones), a missing key or a value of the wrong type is one :class:`ConfigError`
that names the file, the dotted key and what to write instead. Unknown keys are refused
before anything else, so a misspelt key reads as such rather than as a missing one.

Light: the standard library's ``tomllib`` (``tomli``, imported lazily, on Python 3.10).
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Iterable
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from edge_tl.errors import ConfigError

E = TypeVar("E", bound=Enum)

#: ``default`` of :meth:`Table.get` when a key must be present.
REQUIRED: Any = object()

_KIND_NAMES = {
    bool: "true/false",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a table",
}


def loads(text: str, *, source: str) -> dict[str, Any]:
    """Parse TOML ``text``; a syntax error names ``source``."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        from edge_tl._lazy import lazy_import

        tomllib = lazy_import("tomli", purpose="reading TOML files on Python 3.10")
    try:
        return tomllib.loads(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise ConfigError(f"{source}: not valid TOML ({exc}); fix the line it names") from exc


def read(path: str | os.PathLike[str], *, what: str) -> dict[str, Any]:
    """The parsed TOML of ``path``; ``what`` ("target profile", "recipe", ...) words a read failure."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {source!r}: {exc}") from exc
    return loads(text, source=source)


def kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)


def close_matches(word: str, known: Iterable[str], *, n: int = 3) -> list[str]:
    return difflib.get_close_matches(word, sorted(known), n=n)


class Table:
    """One TOML table: typed access, errors naming ``source`` and the dotted key.

    ``known`` lists every key the table may hold; any other is refused on construction.
    """

    def __init__(self, data: dict[str, Any], *, source: str, known: Iterable[str], prefix: str = "") -> None:
        self.data = data
        self.source = source
        self.prefix = prefix
        self.known = frozenset(known)
        unknown = sorted(set(data) - self.known)
        if unknown:
            hints = []
            for key in unknown:
                close = close_matches(key, self.known, n=1)
                hints.append(f"'{prefix}{key}'" + (f" (did you mean '{prefix}{close[0]}'?)" if close else ""))
            raise ConfigError(
                f"{source}: unknown field(s) {', '.join(hints)} in '{prefix.rstrip('.') or 'top level'}'; "
                f"known: {', '.join(sorted(self.known))}"
            )

    def where(self, key: str) -> str:
        return f"{self.source}: field '{self.prefix}{key}'"

    def fail(self, key: str, message: str) -> ConfigError:
        """An error about ``key``: ``message`` says what is wrong and what to write."""
        return ConfigError(f"{self.where(key)} {message}")

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = REQUIRED) -> Any:
        """The value of ``key`` if it is of ``kind`` (``default`` when absent, unless required)."""
        if key not in self.data:
            if default is REQUIRED:
                raise self.fail(key, f"is missing: add {self.prefix}{key} = <{kind_name(kind)}>")
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python: `dla_cores = true` or `num_samples = true` is a mistake.
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kind):
            raise self.fail(key, f"must be {kind_name(kind)}, got {value!r}")
        return value

    def enum(self, key: str, enum: type[E], default: Any = REQUIRED, *, allowed: Iterable[E] | None = None) -> E:
        """The member of ``enum`` (restricted to ``allowed``) that ``key`` names."""
        value = self.get(key, str, default)
        if isinstance(value, enum) or (value is default and key not in self.data):
            return value
        choices = tuple(enum) if allowed is None else tuple(allowed)
        for member in choices:
            if member.value == value:
                return member
        raise self.fail(key, f"is {value!r}; choose one of: {', '.join(str(m.value) for m in choices)}")

    def strings(self, key: str, default: Any = REQUIRED) -> tuple[str, ...]:
        """A list of non-empty strings, as a tuple."""
        value = self.get(key, list, default)
        if not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, f"must be a list of non-empty strings, got {value!r}")
        return tuple(value)

    def table(self, key: str, known: Iterable[str], *, required: bool = True) -> Table:
        """The sub-table ``key`` (``[key]``); an absent optional one reads as empty."""
        data = self.get(key, dict, REQUIRED if required else {})
        return Table(data, source=self.source, known=known, prefix=f"{self.prefix}{key}.")

    def tables(self, key: str, known: Iterable[str], default: Any = REQUIRED) -> list[Table]:
        """The array of tables ``key`` (``[[key]]``), each checked like a table."""
        items = self.get(key, list, default)
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise self.fail(key, f"item {i} must be a table ([[{self.prefix}{key}]]), got {item!r}")
            out.append(Table(item, source=self.source, known=known, prefix=f"{self.prefix}{key}[{i}]."))
        return out
