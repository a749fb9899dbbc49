"""The options several commands take, declared once (as Polygraphy's argument groups are).

Each factory returns an :class:`Opt`: used as a decorator on a click command
(``@options.quiet()``) or, for a command built from parameter objects (``edge-tl ship``),
as ``.param()``. A command passes what differs for it (which precisions it accepts, what
``--quiet`` leaves printed); name, type and wording live here. Light to import: click and
:mod:`edge_tl.vocab` only, so ``edge-tl --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import click

from edge_tl.vocab import DEVICE_PRECISIONS, Device, Precision

F = TypeVar("F", bound=Callable[..., Any])


class Opt:
    """One option's declaration: a decorator for a command, or a parameter object."""

    def __init__(self, *decls: str, **attrs: Any) -> None:
        self.decls = decls
        self.attrs = attrs

    def __call__(self, f: F) -> F:
        return click.option(*self.decls, **self.attrs)(f)

    def param(self) -> click.Option:
        return click.Option(list(self.decls), **self.attrs)


def _choice(members: Iterable[Precision | Device]) -> click.Choice:
    return click.Choice([m.value for m in members])


def quiet(prints: str = "the result lines") -> Opt:
    """``--quiet``: no progress output; ``prints`` says what is still printed."""
    return Opt("--quiet", is_flag=True, help=f"Print only {prints}.")


def precision(
    accepted: Iterable[Precision] = DEVICE_PRECISIONS,
    *,
    help: str,
    default: Any = None,
    required: bool = False,
    dest: str | None = None,
    **attrs: Any,
) -> Opt:
    """``--precision``, choosing among the members of the one :class:`Precision` this command accepts."""
    return Opt(
        "--precision",
        *((dest,) if dest else ()),
        type=_choice(accepted),
        default=default,
        required=required,
        show_default=default is not None,
        help=help,
        **attrs,
    )


def target(*, required: bool = False, help: str | None = None) -> Opt:
    """``--target NAME|PATH``: a shipped device profile (`edge-tl targets list`) or the path of a profile TOML."""
    return Opt(
        "--target",
        required=required,
        default=None,
        metavar="NAME|PATH",
        help=help or "Device profile: a name from `edge-tl targets list` or the path of a profile TOML.",
    )


def tensorrt(*, help: str = "One of the target's TensorRT releases, e.g. 8.5.2 or 8.5 (default: its default).") -> Opt:
    """``--tensorrt MAJOR.MINOR[.PATCH]``: one of the releases the target lists."""
    return Opt("--tensorrt", default=None, metavar="MAJOR.MINOR", help=help)


def device() -> Opt:
    """``--device``: where the model runs on this machine."""
    return Opt("--device", type=_choice(Device), default=Device.AUTO.value, show_default=True)


def threads(*, help: str) -> Opt:
    """``--threads N``: intra-op CPU threads (default: the library's own)."""
    return Opt("--threads", type=click.IntRange(min=1), default=None, help=help)


def seed(*, help: str | None = None) -> Opt:
    attrs: dict[str, Any] = {"help": help} if help else {}
    return Opt("--seed", type=int, default=0, show_default=True, **attrs)


def as_json(*, help: str = "Print JSON instead of a table.") -> Opt:
    """``--json``: machine-readable output on stdout."""
    return Opt("--json", "as_json", is_flag=True, help=help)


def json_file() -> Opt:
    """``--json FILE``: also write the results to FILE."""
    return Opt(
        "--json",
        "json_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Write the results as JSON.",
    )


def run_dir(*, exists: bool = False) -> Callable[[F], F]:
    """The ``RUN`` argument: a run directory (``exists``: refused by click when it is not there)."""
    return click.argument("run_dir", metavar="RUN", type=click.Path(exists=exists, file_okay=False, path_type=Path))
