"""`edge-tl ship`'s config files: ``edge-tl.toml`` beside the data, ``--config FILE``, ``RUN/ship.toml``.

A config file holds option values under the options' own names without the dashes
(``max-accuracy-drop = 1.0``; ``max_accuracy_drop`` is read the same). Command-line options
override it. Relative paths in a file are relative to the file's folder. The resolved options
of a run are written to ``RUN/ship.toml`` with absolute paths, so that
``edge-tl ship --config RUN/ship.toml`` repeats the run.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from edge_tl.errors import ConfigError
from edge_tl.runs import SHIP_CONFIG_NAME

#: The file read from the data folder when no --config is given.
DATA_CONFIG_NAME = "edge-tl.toml"
#: The resolved options of a run, inside the run directory.
RUN_CONFIG_NAME = SHIP_CONFIG_NAME


def key_to_name(key: str) -> str:
    return key.replace("-", "_")


def name_to_key(name: str) -> str:
    return name.replace("_", "-")


def find_config(*, config: str | None, data: str | None) -> Path | None:
    """The file to read: ``--config``, else ``DATA/edge-tl.toml`` when it exists, else none."""
    if config is not None:
        path = Path(config).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {config!r} does not exist; give the path of a TOML file to --config")
        return path
    if data is not None:
        beside = Path(data).expanduser() / DATA_CONFIG_NAME
        if beside.is_file():
            return beside
    return None


def load_config(path: Path, *, known: Iterable[str], paths: Iterable[str]) -> dict[str, Any]:
    """Option name -> value from ``path``; unknown keys are refused by name.

    ``paths``: option names whose values are file paths (made absolute against the file's folder).
    """
    from edge_tl import tomlfile

    data = tomlfile.read(path, what="config file")
    known = frozenset(known)
    unknown = [key for key in data if key_to_name(key) not in known]
    if unknown:
        raise ConfigError(
            f"config file {str(path)!r}: unknown option(s) {', '.join(repr(k) for k in unknown)}; "
            f"see `edge-tl ship --help` for the option names (written without the leading dashes)"
        )
    nested = [key for key, value in data.items() if isinstance(value, dict)]
    if nested:
        raise ConfigError(f"config file {str(path)!r}: {', '.join(nested)} should be values, not tables")
    folder = path.parent.resolve()
    path_names = frozenset(paths)
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = key_to_name(key)
        if name in values:
            raise ConfigError(f"config file {str(path)!r} sets {name_to_key(name)!r} twice ({key!r})")
        if name in path_names and isinstance(value, str):
            value = str(folder / Path(value).expanduser())
        values[name] = value
    return values


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (str, os.PathLike)):
        # JSON's string escapes are all valid in a TOML basic string.
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if hasattr(value, "value"):  # Enums
        return _toml_value(value.value)
    raise TypeError(f"no TOML form for {type(value).__name__}")


def config_text(values: dict[str, Any], *, header: str) -> str:
    """A TOML file of ``values`` (``None`` values left out: the option's default is none)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += [f"{name_to_key(name)} = {_toml_value(value)}" for name, value in values.items() if value is not None]
    return "\n".join(lines) + "\n"
