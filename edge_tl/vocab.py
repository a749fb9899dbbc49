"""The words every stage shares: one :class:`Precision`, one :class:`Device`.

Each stage accepts only some members (export writes fp32 and fp16, a target runs some
of fp32/fp16/int8/fp8/fp4 fast, training computes in auto/fp32/bf16/fp16) and says
which with :func:`accept`, so a value is spelt the same way everywhere and a refusal
names what that stage takes.

Training's ``auto`` is a member of the one :class:`Precision` (not a separate enum):
like ``Device.AUTO`` it means "the stage picks from the hardware it finds" (bf16 on a
GPU that has it, else fp16, fp32 on the CPU), which is a value a user writes in the
same ``--precision`` slot. Only training accepts it; every other stage refuses it by
name like any other member it does not take.

Imports nothing beyond the standard library and :mod:`edge_tl.errors`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any, TypeVar

from edge_tl.errors import ConfigError

E = TypeVar("E", bound=Enum)


class Precision(str, Enum):
    """Number formats, for storage (export, quantize, compile, deploy) or arithmetic (training)."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"
    FP8 = "fp8"
    FP4 = "fp4"
    AUTO = "auto"  # training only: bf16/fp16 on a CUDA GPU, fp32 on the CPU


class Device(str, Enum):
    """Where a model runs on the host (``auto``: CUDA when present, else the CPU)."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


# What each stage accepts, in the order its help and errors list them.
#: A device profile's ``fast_precisions`` (only fp32/fp16/int8 can be compiled today).
TARGET_PRECISIONS = (Precision.FP32, Precision.FP16, Precision.INT8, Precision.FP8, Precision.FP4)
#: What compile, bundle, deploy and ship build and run on a device.
DEVICE_PRECISIONS = (Precision.FP32, Precision.FP16, Precision.INT8)
#: What export writes.
EXPORT_PRECISIONS = (Precision.FP32, Precision.FP16)
#: What quantize writes.
QUANTIZE_PRECISIONS = (Precision.INT8, Precision.FP16)
#: Training arithmetic. ``auto``: bf16 autocast on a CUDA GPU that supports it, else fp16
#: with a gradient scaler on CUDA, fp32 on the CPU.
TRAIN_PRECISIONS = (Precision.AUTO, Precision.FP32, Precision.BF16, Precision.FP16)


class NotAccepted(ConfigError):
    """A value that is not one of what a stage accepts; ``allowed`` lists those, in order."""

    def __init__(self, message: str, *, value: Any, allowed: tuple[Enum, ...]) -> None:
        super().__init__(message)
        self.value = value
        self.allowed = allowed


def accept(
    enum: type[E],
    value: Any,
    allowed: Iterable[E] | None = None,
    *,
    message: Callable[[Any, str], str],
) -> E:
    """``value`` as a member of ``enum`` if it is among ``allowed`` (default: every member).

    ``message(value, choices)`` words the refusal (``value`` as written, an enum member by its
    value), ``choices`` being the allowed values joined by ", ": each stage keeps its own
    wording (an option name, a profile field).
    """
    allowed = tuple(enum) if allowed is None else tuple(allowed)
    raw = value.value if isinstance(value, Enum) else value
    try:
        member = enum(raw)
    except ValueError:
        member = None
    if member is None or member not in allowed:
        raise NotAccepted(message(raw, ", ".join(str(m.value) for m in allowed)), value=value, allowed=allowed)
    return member
