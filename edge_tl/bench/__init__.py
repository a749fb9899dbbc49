"""Latency measurement: timing loop, statistics, environment fingerprint (light to import)."""

from edge_tl.bench.api import BenchConfig, BenchReport, Budget, bench_target, benchmark
from edge_tl.bench.env import fingerprint
from edge_tl.bench.stats import LatencyStats

__all__ = ["BenchConfig", "BenchReport", "Budget", "LatencyStats", "bench_target", "benchmark", "fingerprint"]
