"""Timing a runner: warm-up never counted, inputs prepared outside the timed region.

Each timed iteration is :meth:`Runner.time_once` on an input that was generated and
:meth:`Runner.prepare`-d (copied to the device, cast) before the loop starts, so only
the model is timed; the runner chooses the clock (``perf_counter_ns`` on the CPU,
CUDA events on a GPU).
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_tl.bench.env import fingerprint
from edge_tl.bench.stats import LatencyStats
from edge_tl.errors import ConfigError
from edge_tl.runs import Run, atomic_write_json, now_iso
from edge_tl.runtime.base import Runner, RunnerOptions


@dataclass(frozen=True)
class Budget:
    """How long a phase runs: a number of iterations, a number of seconds, or the first reached.

    ``min_iterations`` applies to a time budget: a slow model still gets that many.
    """

    iterations: int | None = None
    seconds: float | None = None
    min_iterations: int = 0

    def __post_init__(self) -> None:
        if self.iterations is None and self.seconds is None:
            raise ConfigError("a budget needs iterations or seconds")
        if self.iterations is not None and self.iterations < 0:
            raise ConfigError(f"iterations must be >= 0, got {self.iterations}")
        if self.seconds is not None and self.seconds < 0:
            raise ConfigError(f"seconds must be >= 0, got {self.seconds}")

    def done(self, count: int, elapsed_s: float) -> bool:
        if count < self.min_iterations:
            return False
        if self.iterations is not None and count >= self.iterations:
            return True
        return self.seconds is not None and elapsed_s >= self.seconds

    @classmethod
    def parse(cls, text: str, *, min_iterations: int = 0) -> "Budget":
        """``"50"`` -> 50 iterations; ``"2s"`` / ``"0.5s"`` -> seconds."""
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s?)\s*", text)
        if match is None:
            raise ConfigError(f"{text!r} is not a budget: give iterations (e.g. 50) or seconds (e.g. 2s)")
        number, unit = match.groups()
        if unit:
            return cls(seconds=float(number), min_iterations=min_iterations)
        if "." in number:
            raise ConfigError(f"{text!r}: iterations are a whole number; add 's' for seconds")
        return cls(iterations=int(number))

    def to_dict(self) -> dict[str, Any]:
        return {"iterations": self.iterations, "seconds": self.seconds, "min_iterations": self.min_iterations}


@dataclass(frozen=True)
class BenchConfig:
    batch_sizes: tuple[int, ...] = (1,)
    warmup: Budget = Budget(iterations=10)
    measure: Budget = Budget(seconds=2.0, min_iterations=10)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ConfigError(f"batch sizes must be >= 1, got {self.batch_sizes}")
        if self.measure.iterations == 0:
            raise ConfigError("measure at least one iteration")


def benchmark(runner: Runner, config: BenchConfig = BenchConfig()) -> list[LatencyStats]:
    """Latency statistics per batch size for an active runner."""
    fixed = runner.input_spec.batch
    bad = [b for b in config.batch_sizes if fixed is not None and b != fixed]
    if bad:
        raise ConfigError(
            f"{runner.name!r} has a fixed batch size of {fixed}; cannot measure batch size(s) {bad}. "
            f"Use --batch-size {fixed} or export with a dynamic batch."
        )
    rng = np.random.default_rng(config.seed)
    results = []
    for batch_size in config.batch_sizes:
        batch = rng.standard_normal(runner.input_spec.shape(batch_size), dtype=np.float32)
        prepared = runner.prepare(batch)
        time_loop(runner, prepared, config.warmup)
        samples = time_loop(runner, prepared, config.measure)
        results.append(LatencyStats.from_samples(samples, batch_size=batch_size))
    return results


def time_loop(runner: Runner, prepared: Any, budget: Budget) -> list[float]:
    """Milliseconds of each :meth:`Runner.time_once` on ``prepared`` until ``budget`` is spent."""
    samples: list[float] = []
    start = time.perf_counter()
    while not budget.done(len(samples), time.perf_counter() - start):
        samples.append(runner.time_once(prepared))
    return samples


@dataclass(frozen=True)
class BenchReport:
    target: str
    runner: dict[str, Any]
    config: BenchConfig
    results: tuple[LatencyStats, ...]
    environment: dict[str, Any]
    created: str = field(default_factory=now_iso)
    # The named latencies of edge_tl.bench.latency, one per batch size (None where the backend has none).
    gpu_compute: tuple[LatencyStats | None, ...] | None = None
    end_to_end: tuple[LatencyStats | None, ...] | None = None

    @property
    def warnings(self) -> list[str]:
        return [w for r in self.results for w in r.warnings()]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "created": self.created,
            "runner": self.runner,
            "config": {
                "batch_sizes": list(self.config.batch_sizes),
                "warmup": self.config.warmup.to_dict(),
                "measure": self.config.measure.to_dict(),
                "seed": self.config.seed,
            },
            "results": [r.to_dict() for r in self.results],
            "gpu_compute": [r.to_dict() if r else None for r in self.gpu_compute] if self.gpu_compute else None,
            "end_to_end": [r.to_dict() if r else None for r in self.end_to_end] if self.end_to_end else None,
            "warnings": self.warnings,
            "environment": self.environment,
        }

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_json(path, self.to_dict())

    def table(self) -> str:
        head = (
            f"{'batch':>5} {'iters':>6} {'mean':>8} {'std':>7} {'min':>8} {'p50':>8} "
            f"{'p90':>8} {'p95':>8} {'p99':>8} {'max':>8} {'img/s':>9} {'cv':>5}"
        )
        lines = [
            f"{self.runner.get('name')} [{self.runner.get('backend')} on {self.runner.get('device')}, "
            f"clock {self.runner.get('clock')}] latency in ms",
            head,
        ]
        for r in self.results:
            lines.append(
                f"{r.batch_size:>5} {r.iterations:>6} {r.mean_ms:>8.3f} {r.std_ms:>7.3f} {r.min_ms:>8.3f} "
                f"{r.p50_ms:>8.3f} {r.p90_ms:>8.3f} {r.p95_ms:>8.3f} {r.p99_ms:>8.3f} {r.max_ms:>8.3f} "
                f"{r.throughput_ips:>9.1f} {r.cv:>5.2f}"
            )
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


def bench_target(
    target: str | os.PathLike[str] | Run,
    *,
    artifact: str | None = None,
    backend: str | None = None,
    options: RunnerOptions = RunnerOptions(),
    config: BenchConfig = BenchConfig(),
) -> BenchReport:
    """Benchmark a model file or a run's artifact (default: its best checkpoint in PyTorch).

    ``backend="trtexec"`` times a TensorRT engine with NVIDIA's trtexec instead of our own
    runner, so the two can be compared on the device (same report schema; GPU compute time
    in ``results``, trtexec's end-to-end latency beside it).
    """
    from edge_tl.runtime.registry import open_runner

    if backend == TRTEXEC_BACKEND:
        return _bench_with_trtexec(target, artifact=artifact, options=options, config=config)
    runner = open_runner(target, artifact=artifact, backend=backend, options=options)
    with runner:
        results = benchmark(runner, config)
        described = runner.describe()
        described["input"] = runner.input_spec.to_dict()
    env = fingerprint(threads=options.threads)
    label = str(target.root if isinstance(target, Run) else target) + (f" [{artifact}]" if artifact else "")
    return BenchReport(target=label, runner=described, config=config, results=tuple(results), environment=env)


#: ``edge-tl bench --backend trtexec``: not a runner (trtexec owns the timing loop).
TRTEXEC_BACKEND = "trtexec"


def _bench_with_trtexec(
    target: str | os.PathLike[str] | Run, *, artifact: str | None, options: RunnerOptions, config: BenchConfig
) -> BenchReport:
    from edge_tl.runtime.registry import resolve_source

    source = resolve_source(target, artifact=artifact)
    if source.kind != "engine":
        raise ConfigError(
            f"--backend trtexec times TensorRT engines; {source.name!r} is of kind {source.kind!r}. "
            "Build one with `edge-tl compile`, then pass the engine file or --artifact engine-<name>"
        )
    seconds = config.measure.seconds
    return trtexec_bench_report(
        source.path,
        batch_sizes=config.batch_sizes,
        # trtexec takes whole seconds and stops at whichever of duration and iterations comes last.
        duration_s=max(1, math.ceil(seconds)) if seconds is not None else 1,
        iterations=config.measure.iterations or max(config.measure.min_iterations, 10),
        cuda_graph=options.cuda_graph,
    )


def trtexec_bench_report(
    engine: str | os.PathLike[str],
    *,
    batch_sizes: tuple[int, ...] = (1,),
    duration_s: int = 10,
    iterations: int = 100,
    cuda_graph: bool = True,
    trtexec: str | None = None,
    timeout_s: float | None = 600,
) -> BenchReport:
    """Time an engine with trtexec and return an ``edge-tl bench`` :class:`BenchReport`.

    ``results`` hold the GPU compute time (the same quantity the TensorRT runner
    times around ``execute_async_v3``); the end-to-end latency (with H2D and D2H
    copies) is kept apart in ``runner["end_to_end"]``, one record per batch size.
    """
    from edge_tl.bench.trtexec import run_trtexec, timing_truth
    from edge_tl.compile.trtexec_flags import bench_command, timing_flags
    from edge_tl.targets import TrtVersion
    from edge_tl.trt.sidecar import read_sidecar
    from edge_tl.trt.trtexec import find_trtexec

    engine = Path(engine)
    meta = read_sidecar(engine)
    binary = trtexec or find_trtexec()
    workdir = engine.parent / "trtexec-bench"
    workdir.mkdir(exist_ok=True)
    gpu_results, end_to_end, e2e_stats, reports = [], [], [], []
    for batch in batch_sizes:
        if meta.batch is not None and not meta.batch["min"] <= batch <= meta.batch["max"]:
            raise ConfigError(f"batch {batch} is outside the engine's profile {meta.batch}; rebuild with --batch")
        times = workdir / f"times-b{batch}.json"
        argv = bench_command(
            str(engine),
            TrtVersion.parse(meta.tensorrt_version),
            input_name=meta.input_name,
            chw=meta.chw,
            batch=batch if meta.batch is not None else None,
            export_times=str(times),
            duration_s=duration_s,
            iterations=iterations,
            cuda_graph=cuda_graph,
            dla_core=meta.dla_core,
            trtexec=binary,
        )
        out = run_trtexec(
            argv, log_path=workdir / f"bench-b{batch}.log", times_path=times, batch_size=batch, timeout_s=timeout_s
        )
        gpu_results.append(out["gpu_compute"])
        end_to_end.append(out["end_to_end"].to_dict())
        e2e_stats.append(out["end_to_end"])
        reports.append(out["trtexec"])
    version = TrtVersion.parse(meta.tensorrt_version)
    meaning = timing_flags(version, cuda_graph=cuda_graph, dla=meta.dla_core is not None)[1]
    runner = {
        "name": engine.name,
        "backend": "trtexec",
        "device": "cuda",
        "clock": "trtexec-gpu-compute",
        "path": str(engine),
        "tensorrt": meta.tensorrt_version,
        "precision": meta.precision,
        "end_to_end": end_to_end,
        "trtexec": reports,
        "timing": timing_truth(meaning, reports),
    }
    config = BenchConfig(
        batch_sizes=tuple(batch_sizes),
        warmup=Budget(seconds=0.5),
        measure=Budget(seconds=float(duration_s), min_iterations=iterations),
    )
    return BenchReport(
        target=str(engine),
        runner=runner,
        config=config,
        results=tuple(gpu_results),
        environment=fingerprint(),
        gpu_compute=tuple(gpu_results),
        end_to_end=tuple(e2e_stats),
    )
