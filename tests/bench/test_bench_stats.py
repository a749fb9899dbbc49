"""Latency statistics on known inputs, budgets, and the timing loop with a scripted runner."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from edge_tl.bench import BenchConfig, BenchReport, Budget, LatencyStats, benchmark, fingerprint
from edge_tl.errors import ConfigError
from edge_tl.runtime.base import InputSpec, Runner


def test_statistics_of_known_samples() -> None:
    stats = LatencyStats.from_samples([float(v) for v in range(1, 101)], batch_size=4)
    assert stats.iterations == 100
    assert stats.mean_ms == pytest.approx(50.5)
    assert stats.std_ms == pytest.approx(29.011491975882016)  # sample std of 1..100
    assert (stats.min_ms, stats.max_ms) == (1.0, 100.0)
    # linear interpolation between order statistics
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p95_ms == pytest.approx(95.05)
    assert stats.p99_ms == pytest.approx(99.01)
    assert stats.throughput_ips == pytest.approx(4 * 1000 / 50.5)
    assert stats.cv == pytest.approx(29.011491975882016 / 50.5)
    assert any("too noisy" in w for w in stats.warnings())


def test_constant_samples_are_quiet_and_single_sample_has_zero_std() -> None:
    stats = LatencyStats.from_samples([2.0] * 200, batch_size=1)
    assert stats.std_ms == 0.0 and stats.cv == 0.0 and stats.p99_ms == 2.0
    assert stats.throughput_ips == pytest.approx(500.0)
    assert stats.warnings() == []
    one = LatencyStats.from_samples([3.0], batch_size=1)
    assert one.std_ms == 0.0
    assert any("only 1 iterations" in w for w in one.warnings())
    with pytest.raises(ConfigError, match="no timed iterations"):
        LatencyStats.from_samples([], batch_size=1)


def test_budget_parsing_and_stopping() -> None:
    assert Budget.parse("25") == Budget(iterations=25)
    assert Budget.parse("1.5s", min_iterations=3) == Budget(seconds=1.5, min_iterations=3)
    for bad, why in (
        ("abc", "is not a budget"),
        ("2.5", "iterations are a whole number"),
        ("-1", "is not a budget"),
        ("3ms", "is not a budget"),
    ):
        with pytest.raises(ConfigError, match=f"^'{bad}'.*{why}"):
            Budget.parse(bad)
    timed = Budget(seconds=1.0, min_iterations=5)
    assert not timed.done(4, 10.0)  # the minimum comes first
    assert timed.done(5, 1.0) and not timed.done(5, 0.5)
    both = Budget(iterations=10, seconds=1.0)
    assert both.done(10, 0.0) and both.done(1, 1.0) and not both.done(9, 0.9)
    with pytest.raises(ConfigError, match="needs iterations or seconds"):
        Budget()


class ScriptedRunner(Runner):
    """A runner whose first ``slow_calls`` inferences take ``slow_s`` of real time."""

    backend = "scripted"

    def __init__(self, *, slow_calls: int, slow_s: float, fixed_batch: int | None = None) -> None:
        super().__init__(name="scripted")
        self.slow_calls = slow_calls
        self.slow_s = slow_s
        self.calls = 0
        self.prepared_shapes: list[tuple[int, ...]] = []
        self._spec = InputSpec(3, 8, 8, batch=fixed_batch)

    @property
    def input_spec(self) -> InputSpec:
        return self._spec

    def activate(self) -> None:
        pass

    def deactivate(self) -> None:
        pass

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        self.prepared_shapes.append(batch.shape)
        return batch

    def infer(self, prepared: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls <= self.slow_calls:
            time.sleep(self.slow_s)
        return prepared.mean(axis=(2, 3))


def test_warmup_iterations_are_never_counted() -> None:
    runner = ScriptedRunner(slow_calls=5, slow_s=0.05)
    with runner:
        [stats] = benchmark(
            runner, BenchConfig(batch_sizes=(2,), warmup=Budget(iterations=5), measure=Budget(iterations=40))
        )
    assert runner.calls == 45
    assert stats.iterations == 40
    assert stats.max_ms < 25  # none of the 50 ms warm-up calls
    assert runner.prepared_shapes == [(2, 3, 8, 8)]  # prepared once, outside the timed loop


def test_without_warmup_the_slow_start_shows_up() -> None:
    runner = ScriptedRunner(slow_calls=2, slow_s=0.05)
    with runner:
        [stats] = benchmark(runner, BenchConfig(warmup=Budget(iterations=0), measure=Budget(iterations=20)))
    assert stats.max_ms >= 45


def test_warmup_by_seconds_and_batch_sweep() -> None:
    runner = ScriptedRunner(slow_calls=3, slow_s=0.03)
    config = BenchConfig(batch_sizes=(1, 8), warmup=Budget(seconds=0.15), measure=Budget(iterations=30))
    with runner:
        results = benchmark(runner, config)
    assert [r.batch_size for r in results] == [1, 8]
    assert all(r.max_ms < 20 for r in results)
    assert runner.prepared_shapes == [(1, 3, 8, 8), (8, 3, 8, 8)]


def test_fixed_batch_runner_refuses_other_batch_sizes() -> None:
    runner = ScriptedRunner(slow_calls=0, slow_s=0.0, fixed_batch=4)
    with runner, pytest.raises(ConfigError, match="fixed batch size of 4"):
        benchmark(runner, BenchConfig(batch_sizes=(1, 4), measure=Budget(iterations=2)))


def test_report_json_and_table(tmp_path) -> None:
    runner = ScriptedRunner(slow_calls=0, slow_s=0.0)
    config = BenchConfig(batch_sizes=(1,), warmup=Budget(iterations=2), measure=Budget(iterations=5))
    with runner:
        results = benchmark(runner, config)
    report = BenchReport(
        target="x", runner=runner.describe(), config=config, results=tuple(results), environment=fingerprint(threads=2)
    )
    data = json.loads(report.write_json(tmp_path / "b.json").read_text())
    assert data["results"][0]["iterations"] == 5
    assert {"p50_ms", "p90_ms", "p95_ms", "p99_ms", "throughput_ips", "cv", "std_ms"} <= set(data["results"][0])
    assert data["environment"]["cpu_model"] and data["environment"]["threads_requested"] == 2
    assert "numpy" in data["environment"]["libraries"]
    assert "p99" in report.table() and "clock perf_counter_ns" in report.table()
