"""One latency definition for every backend: GPU compute and end-to-end, each named.

* ``gpu_compute``: the engine's work on the GPU alone. From trtexec it is "GPU Compute
  Time" (``computeMs``: CUDA events recorded on the stream around the enqueue); from
  edge-tl's TensorRT runner it is the same, two CUDA events on its stream (clock
  :data:`edge_tl.runtime.base.CUDA_EVENT_CLOCK`). Where the CUDA runtime has no events, the runner times the
  enqueue and the stream synchronisation with the host clock instead: that figure includes
  the host's launch overhead, so it is not called GPU compute but ``host_enqueue_sync``.
* ``end_to_end``: host-to-device copy + compute + device-to-host copy, as a caller of the
  engine sees it. From trtexec it is "Latency" (``latencyMs``), timed with the copies
  included on every release (:func:`edge_tl.compile.trtexec_flags.timing_flags`); from a
  runner it is the host clock around one whole ``run`` (input copy, inference, output copy).

A CPU backend has no GPU compute time: ``gpu_compute`` is ``None`` there and its one
timing is end-to-end. Every report (bench, deploy in both modes, verify, the fleet table)
writes these two fields under these names, plus ``energy_mj_per_image`` where tegrastats
sampled the module's power while it was timed.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from edge_tl.bench.stats import LatencyStats


def energy_mj_per_image(power_mean_mw: float | None, latency: LatencyStats | None) -> float | None:
    """Mean module power x mean latency / batch: mW x ms = uJ, so / 1000 gives mJ per image."""
    if power_mean_mw is None or latency is None or not math.isfinite(latency.mean_ms):
        return None
    return float(power_mean_mw) * latency.mean_ms / latency.batch_size / 1000.0


def latency_fields(
    *, gpu_compute: LatencyStats | None, end_to_end: LatencyStats | None, power_mean_mw: float | None = None
) -> dict[str, Any]:
    """The named fields every report carries (``None`` where a backend does not know one)."""
    return {
        "gpu_compute": gpu_compute.to_dict() if gpu_compute is not None else None,
        "end_to_end": end_to_end.to_dict() if end_to_end is not None else None,
        "energy_mj_per_image": energy_mj_per_image(power_mean_mw, end_to_end or gpu_compute),
    }


def time_end_to_end(runner: Any, batch: np.ndarray, *, warmup: int, iterations: int) -> LatencyStats:
    """End-to-end milliseconds of ``runner.run(batch)`` (copies in and out included), ``iterations`` times."""
    for _ in range(warmup):
        runner.run(batch)
    samples = []
    for _ in range(iterations):
        start = time.perf_counter_ns()
        runner.run(batch)
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return LatencyStats.from_samples(samples, batch_size=int(batch.shape[0]))


def named_latencies(measured: dict[str, Any], power_mean_mw: float | None) -> dict[str, Any]:
    """:func:`latency_fields` from a deploy measurement's ``gpu_compute``/``end_to_end`` dicts."""
    gpu, e2e = measured.get("gpu_compute"), measured.get("end_to_end")
    return latency_fields(
        gpu_compute=LatencyStats.from_dict(gpu) if gpu else None,
        end_to_end=LatencyStats.from_dict(e2e) if e2e else None,
        power_mean_mw=power_mean_mw,
    )
