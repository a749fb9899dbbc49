"""Summaries of ``tegrastats`` logs sampled on a Jetson while it was measured.

A tegrastats line carries power rails (``VDD_IN 4855mW/4855mW`` on JetPack 5 and later:
current/average; ``POM_5V_IN 3047/3047`` on JetPack 4, in mW) and temperatures
(``gpu@44.9C``, ``tj@45.5C``). The summary keeps, per rail, the mean and maximum of the
*current* readings, and per sensor the maximum temperature.
"""

from __future__ import annotations

import re
from typing import Any

_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]+) (\d+)(?:mW)?/(\d+)(?:mW)?(?!\w)")
_TEMP = re.compile(r"\b([A-Za-z][\w]*)@(-?\d+(?:\.\d+)?)C\b")
# The rail that is the whole module's input power, by JetPack generation.
_TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")


def summarize(text: str) -> dict[str, Any]:
    rails: dict[str, list[int]] = {}
    temps: dict[str, float] = {}
    samples = 0
    for line in text.splitlines():
        found = _RAIL.findall(line)
        found_t = _TEMP.findall(line)
        if not found and not found_t:
            continue
        samples += 1
        for name, current, _average in found:
            rails.setdefault(name, []).append(int(current))
        for name, value in found_t:
            temps[name] = max(temps.get(name, float("-inf")), float(value))
    power = {name: {"mean_mw": sum(v) / len(v), "max_mw": max(v)} for name, v in rails.items()}
    total = next((power[r] for r in _TOTAL_RAILS if r in power), None)
    return {
        "samples": samples,
        "power": power,
        "total_power_mean_mw": total["mean_mw"] if total else None,
        "max_temperature_c": temps,
        "hottest_c": max(temps.values()) if temps else None,
    }
