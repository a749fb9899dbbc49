"""What a device sends back, checked before anything is replaced; and the stored records, checked when read.

A device is not trusted: its agent may be another edge-tl, a broken install or a hostile
wheel. Every number it reports is checked here to be finite, of its type and in a plausible
range, every field to be of its type, and the logits to be finite floats, so that what
reaches ``deploy/<name>/`` (and from there verify and the report) is a measurement, never
``Infinity``, ``NaN`` or a string. The stored ``accuracy.json`` entries are read back by
:mod:`edge_tl.verify.deploy_records` (verify and the report, below deploy).

Light to import (no numpy at module level).
"""

from __future__ import annotations

import math
from typing import Any

from edge_tl.errors import RemoteError

# One batch taking longer than an hour, or more than a billion images a second, is not a
# measurement of a compact image model: the device (or its clock) is broken.
MAX_MS = 3_600_000.0
MAX_IPS = 1e9
MAX_BATCH = 1 << 16
MAX_ITERATIONS = 1 << 31
# Fields of a latency-statistics dict (edge_tl.bench.stats.LatencyStats), in increasing order.
_ORDERED_MS = ("min_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms")
_STATS_MS = ("mean_ms", "std_ms", *_ORDERED_MS)
_STATS_FIELDS = ("batch_size", "iterations", *_STATS_MS, "throughput_ips", "cv")
# What trtexec's text summary does not print is NaN in a statistics record (edge_tl.bench.trtexec:
# no standard deviation, no percentile it left out) and its query count may be unknown (0):
# NaN there means "not known", never infinity.
_MAY_BE_UNKNOWN = ("std_ms", "cv", "p90_ms", "p95_ms", "p99_ms")
# Slack for percentiles compared after a round trip through JSON.
_ORDER_SLACK = 1e-9


class DeviceValueError(RemoteError):
    """A value a device sent back is missing, of the wrong type, not finite or out of range."""


def _fail(where: str, key: str, value: Any, expected: str) -> DeviceValueError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return DeviceValueError(
        f"{where} from the device has no valid {key!r} (got {shown}; expected {expected}); "
        "nothing was replaced. The device's edge-tl may differ from this one, or it is broken"
    )


def number(
    data: Any,
    key: str,
    *,
    where: str,
    low: float = 0.0,
    high: float = MAX_MS,
    low_open: bool = False,
    unknown: bool = False,
) -> float:
    """``data[key]`` as a finite float in ``[low, high]`` (``(low, high]`` with ``low_open``); NaN with ``unknown``."""
    value = data.get(key) if isinstance(data, dict) else None
    if unknown and isinstance(value, float) and math.isnan(value):
        return value
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value > high
        or value < low
        or (low_open and value == low)
    ):
        bound = f"({low:g}, {high:g}]" if low_open else f"[{low:g}, {high:g}]"
        raise _fail(where, key, value, f"a finite number in {bound}")
    return float(value)


def integer(data: Any, key: str, *, where: str, low: int = 1, high: int = MAX_BATCH) -> int:
    value = data.get(key) if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(where, key, value, f"an integer in [{low}, {high}]")
    return value


def text(data: Any, key: str, *, where: str, limit: int = 200) -> str:
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        raise _fail(where, key, value, f"a printable string of 1 to {limit} characters")
    return value


def latency_stats(data: Any, *, where: str) -> dict[str, Any]:
    """A latency-statistics dict (``LatencyStats.to_dict()``), every field typed, finite and ordered."""
    if not isinstance(data, dict):
        raise DeviceValueError(f"{where} from the device is not a latency record (got {type(data).__name__})")
    out: dict[str, Any] = {
        "batch_size": integer(data, "batch_size", where=where),
        "iterations": integer(data, "iterations", where=where, low=0, high=MAX_ITERATIONS),
    }
    for key in _STATS_MS:
        out[key] = number(data, key, where=where, unknown=key in _MAY_BE_UNKNOWN)
    out["throughput_ips"] = number(data, "throughput_ips", where=where, high=MAX_IPS, low_open=True)
    out["cv"] = number(data, "cv", where=where, high=1e6, unknown=True)
    _ordered(out, _ORDERED_MS, where=where)
    return {key: out[key] for key in _STATS_FIELDS}


def _ordered(values: dict[str, float], keys: tuple[str, ...], *, where: str) -> None:
    known = [k for k in keys if not math.isnan(values[k])]
    for low, high in zip(known, known[1:]):
        if values[low] > values[high] * (1 + _ORDER_SLACK) + _ORDER_SLACK:
            raise DeviceValueError(
                f"{where} from the device gives {low} {values[low]!r} above {high} {values[high]!r}; nothing was "
                "replaced. The device's edge-tl may differ from this one, or it is broken"
            )


def optional_latency_stats(data: Any, *, where: str) -> dict[str, Any] | None:
    return None if data is None else latency_stats(data, where=where)


def headline(data: Any, *, where: str) -> dict[str, Any]:
    """The headline latency of a result (``p50_ms``, ``p99_ms``, ``throughput_ips``, ``batch_size``)."""
    if not isinstance(data, dict):
        raise DeviceValueError(f"{where} from the device has no 'latency' record")
    out: dict[str, Any] = {
        "p50_ms": number(data, "p50_ms", where=where),
        "p99_ms": number(data, "p99_ms", where=where),
        "throughput_ips": number(data, "throughput_ips", where=where, high=MAX_IPS, low_open=True),
        "batch_size": integer(data, "batch_size", where=where),
    }
    _ordered(out, ("p50_ms", "p99_ms"), where=where)
    return out


def check_logits(logits: Any, *, classes: int, rows: int | None, where: str) -> Any:
    """Logits from a device: a 2-D array of finite floats, ``rows`` x ``classes``; a device failure otherwise."""
    import numpy as np

    if not isinstance(logits, np.ndarray) or logits.dtype.kind != "f":
        kind = logits.dtype if isinstance(logits, np.ndarray) else type(logits).__name__
        raise DeviceValueError(f"{where}: the device returned logits of type {kind}; floating-point logits expected")
    if logits.ndim != 2 or logits.shape[1] != classes or (rows is not None and logits.shape[0] != rows):
        expected = f"{rows if rows is not None else 'N'} x {classes}"
        raise DeviceValueError(f"{where}: the device returned logits of shape {logits.shape}; {expected} expected")
    finite = np.isfinite(logits)
    if not finite.all():
        bad_rows = int((~finite).any(axis=1).sum())
        raise DeviceValueError(
            f"{where}: {bad_rows} of {logits.shape[0]} rows of the device's logits hold NaN or infinity: the model "
            "failed on the device (a broken engine, an FP16 overflow, or a broken install); nothing was replaced"
        )
    return logits
