"""Stored device results (``deploy/<name>/accuracy.json`` entries), checked when read back.

A record edited by hand, written by an older edge-tl or by a broken device before deploy checked
device numbers (edge_tl.deploy.record) must not crash a plot or pass a gate: verify refuses an
entry that is not a measurement in one line, the report leaves it out and says so. The check is
loose on shape (the report reads older and newer field sets) and strict on numbers: each one
present is of its type, finite and in range.
"""

from __future__ import annotations

import math
from typing import Any

# Entry fields that are fractions, and those that are any finite number >= 0.
_FRACTIONS = ("top1", "top5", "reference_top1", "local_onnxruntime_top1", "top1_agreement",
              "local_onnxruntime_agreement")  # fmt: skip
_NON_NEGATIVE = ("mean_kl", "max_abs_diff", "throughput_ips", "power_mean_mw", "energy_mj_per_image", "size_bytes")
# What trtexec's text summary does not print is NaN in a statistics record (edge_tl.bench.trtexec).
_MAY_BE_UNKNOWN = frozenset({"std_ms", "cv", "p90_ms", "p95_ms", "p99_ms"})


def _bad_number(value: Any, *, unknown: bool = False) -> bool:
    if unknown and isinstance(value, float) and math.isnan(value):
        return False
    return isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0


def entry_problem(entry: Any) -> str | None:
    """Why a stored ``accuracy.json`` entry cannot be read as a measurement, or None when it can.

    Absent (``None``) optional fields are fine; a present one must be of its type and finite.
    """
    if not isinstance(entry, dict):
        return f"an entry is a {type(entry).__name__}, not an object"
    if not isinstance(entry.get("artifact"), str) or not entry["artifact"]:
        return "an entry has no 'artifact' name"
    name = entry["artifact"]
    n = entry.get("num_images")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        return f"{name}: 'num_images' is {n!r}, not a positive integer"
    for key in _FRACTIONS:
        value = entry.get(key)
        if key == "top1" or value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                return f"{name}: {key!r} is {value!r}, not a fraction in [0, 1]"
    for key in _NON_NEGATIVE:
        value = entry.get(key)
        if value is not None and _bad_number(value):
            return f"{name}: {key!r} is {value!r}, not a finite number >= 0"
    for key in ("latency_ms", "gpu_compute", "end_to_end"):
        block = entry.get(key)
        if block is None:
            continue
        if not isinstance(block, dict):
            return f"{name}: {key!r} is not an object"
        for field, value in block.items():
            if field == "batch_size" or field == "iterations":
                if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                    return f"{name}: {key}.{field} is {value!r}, not an integer >= 0"
            elif value is not None and _bad_number(value, unknown=field in _MAY_BE_UNKNOWN):
                return f"{name}: {key}.{field} is {value!r}, not a finite number >= 0"
    for key in ("lost", "gained"):
        value = entry.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= n):
            return f"{name}: {key!r} is {value!r}, not a count of images in [0, {n}]"
    counts = entry.get("class_counts")
    if counts is not None and not _class_counts_fit(counts, n):
        return f"{name}: 'class_counts' is not five rows of per-class image counts that add up to {n} images"
    for key in ("kind", "precision", "backend", "host", "mode", "target"):
        value = entry.get(key)
        if value is not None and not isinstance(value, str):
            return f"{name}: {key!r} is {value!r}, not a string"
    return None


def _class_counts_fit(counts: Any, n: int) -> bool:
    """Five equal rows of counts (images, right by the original, right on the device, lost, gained)
    per class, consistent with each other and with the ``n`` images."""
    if not isinstance(counts, list) or len(counts) != 5 or not all(isinstance(row, list) for row in counts):
        return False
    width = len(counts[0])
    if any(len(row) != width for row in counts) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for row in counts for v in row
    ):
        return False
    images, ref_right, right, lost, gained = counts
    return sum(images) == n and all(
        r <= i and c <= i and lo <= r and g <= c and r - lo + g == c
        for i, r, c, lo, g in zip(images, ref_right, right, lost, gained)
    )
