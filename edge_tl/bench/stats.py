"""Latency statistics from a list of per-iteration times."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

import numpy as np

from edge_tl.errors import ConfigError

# Above this coefficient of variation (std / mean) the percentiles mostly describe
# the machine's other load, not the model.
NOISY_CV = 0.10
# With fewer samples than this p99 is the maximum of a handful of values.
FEW_SAMPLES = 100


@dataclass(frozen=True)
class LatencyStats:
    batch_size: int
    iterations: int
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    throughput_ips: float  # images per second at the mean latency
    cv: float  # coefficient of variation: std / mean

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], *, batch_size: int) -> "LatencyStats":
        times = np.asarray(samples_ms, dtype=np.float64)
        if times.size == 0:
            raise ConfigError("no timed iterations: give at least one measured iteration")
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        mean = float(times.mean())
        # Sample standard deviation: the iterations are a sample of the latency distribution.
        std = float(times.std(ddof=1)) if times.size > 1 else 0.0
        p50, p90, p95, p99 = (float(v) for v in np.percentile(times, [50, 90, 95, 99]))
        return cls(
            batch_size=batch_size,
            iterations=int(times.size),
            mean_ms=mean,
            std_ms=std,
            min_ms=float(times.min()),
            p50_ms=p50,
            p90_ms=p90,
            p95_ms=p95,
            p99_ms=p99,
            max_ms=float(times.max()),
            throughput_ips=batch_size * 1000.0 / mean if mean > 0 else float("inf"),
            cv=std / mean if mean > 0 else 0.0,
        )

    def warnings(self) -> list[str]:
        out = []
        if self.cv > NOISY_CV:
            out.append(
                f"batch {self.batch_size}: coefficient of variation {self.cv:.3f} > {NOISY_CV:.2f}: the machine is too "
                "noisy to trust these numbers (close other work, pin threads, measure longer)"
            )
        if self.iterations < FEW_SAMPLES:
            out.append(f"batch {self.batch_size}: only {self.iterations} iterations: p99 is close to the maximum")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LatencyStats":
        return cls(**{f.name: data[f.name] for f in fields(cls)})
