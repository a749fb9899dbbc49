"""trtexec as a timer: run it, parse its output, map it onto ``edge-tl bench``'s result schema.

trtexec reports two different times and they must not be mixed up:

* **GPU Compute Time**: the engine's kernels alone (what the GPU spends);
* **Latency** (host latency): H2D copy + compute + D2H copy, per query, as a
  user of the engine sees it (end to end).

Both are kept, each as a :class:`~edge_tl.bench.stats.LatencyStats`. From the
``--exportTimes`` JSON (one record per query) the statistics are computed exactly
like every other backend's; from the text summary alone, trtexec's own
min/mean/median/percentiles are taken, and the standard deviation (which the
summary does not print) is ``nan``.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_tl.bench.stats import LatencyStats
from edge_tl.errors import ConfigError, RunError

_BANNER = re.compile(r"\[TensorRT v(\d+)\]")
_VERSION_LINE = re.compile(r"TensorRT version:\s*([\d.]+)")
_DEVICE = re.compile(r"Selected Device:\s*(.+?)\s*$", re.M)
_CC = re.compile(r"Compute Capability:\s*([\d.]+)")
_THROUGHPUT = re.compile(r"Throughput:\s*([\d.eE+-]+)\s*qps")
_QUERIES = re.compile(r"Timing trace has (\d+) queries over ([\d.]+) s")
# "GPU Compute Time: min = 0.37 ms, max = 0.40 ms, mean = ..., median = ..., percentile(99%) = 0.39 ms".
# The label must start the message (after any "[time] [I] " prefix): TensorRT 8.0/8.2 also print
# "End-to-End Host Latency: ..." (release/8.2 samples/common/sampleReporting.cpp, printEpilog), which
# a bare "Latency:" would match and let overwrite the real Latency line.
_METRIC = re.compile(
    r"^(?:\[[^\]\n]*\]\s*)*"
    r"(?P<label>Latency|GPU Compute Time|H2D Latency|D2H Latency|Enqueue Time):\s*(?P<body>min\b.*)$",
    re.M,
)
_FIELD = re.compile(r"(min|max|mean|median|percentile\((\d+(?:\.\d+)?)%\))\s*=?\s*([\d.eE+-]+)\s*ms")
_CV = re.compile(r"coefficient of variance\s*=\s*([\d.]+)%")
# trtexec's ways of saying that it timed without the CUDA graph it was asked for:
# "The specified --useCudaGraph flag has been ignored" when the capture fails (release/8.2 to 10.x
# samples/common/sampleInference.cpp), "CUDA graph capture failed" (release/11.0 and later, same file),
# and "The CUDA graph option has been disabled" under --useDLACore (release/11.0 sampleOptions.cpp).
_GRAPH_DROPPED = re.compile(
    r"The specified --useCudaGraph flag has been ignored|CUDA graph capture failed|The CUDA graph option has been "
    r"disabled"
)
# trtexec's default --warmUp (defaultWarmUp{200}, release/8.2 to 11.x samples/common/sampleOptions.h).
DEFAULT_WARMUP_MS = 200.0

_LABELS = {
    "Latency": "latency",
    "GPU Compute Time": "gpu_compute",
    "H2D Latency": "h2d",
    "D2H Latency": "d2h",
    "Enqueue Time": "enqueue",
}


@dataclass(frozen=True)
class Summary:
    """One metric of trtexec's "Performance summary" (milliseconds)."""

    min_ms: float
    max_ms: float
    mean_ms: float
    median_ms: float
    percentiles: dict[float, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrtexecResult:
    tensorrt_version: str | None
    gpu_name: str | None
    compute_capability: str | None
    throughput_qps: float | None
    queries: int | None
    metrics: dict[str, Summary]
    gpu_compute_cv: float | None  # trtexec's own warning value, as a fraction
    passed: bool
    cuda_graph_dropped: bool = False  # trtexec said it timed without the CUDA graph it was asked for

    @property
    def gpu_compute(self) -> Summary | None:
        return self.metrics.get("gpu_compute")

    @property
    def latency(self) -> Summary | None:
        return self.metrics.get("latency")


def _version_from_banner(code: str) -> str:
    from edge_tl.targets import TrtVersion

    return str(TrtVersion.from_library_version(int(code)))


def parse_log(text: str) -> TrtexecResult:
    """Parse trtexec's text output (any of 8.x, 10.x, 11.x; with or without timestamps)."""
    metrics: dict[str, Summary] = {}
    for match in _METRIC.finditer(text):
        values: dict[str, float] = {}
        percentiles: dict[float, float] = {}
        for name, pct, number in _FIELD.findall(match.group("body")):
            if pct:
                percentiles[float(pct)] = _number(number, match)
            else:
                values[name] = _number(number, match)
        if {"min", "max", "mean", "median"} <= set(values):
            lo, hi = values["min"], values["max"]
            if not all(lo <= v <= hi for v in (values["mean"], values["median"], *percentiles.values())):
                raise RunError(f"trtexec's summary line is not a measurement (min to max out of order): {match[0]!r}")
            metrics[_LABELS[match.group("label")]] = Summary(lo, hi, values["mean"], values["median"], percentiles)
    version = _VERSION_LINE.search(text)
    banner = _BANNER.search(text)
    if version:
        # 8.0 prints getInferLibVersion() ("TensorRT version: 8001", release/8.0 samples/trtexec/trtexec.cpp);
        # 8.2 on print MAJOR.MINOR.PATCH (release/8.2 and later). Both name the same release.
        printed = version.group(1)
        tensorrt = printed if "." in printed else _version_from_banner(printed)
    else:
        tensorrt = _version_from_banner(banner.group(1)) if banner else None
    device = _DEVICE.search(text)
    cc = _CC.search(text)
    throughput = _THROUGHPUT.search(text)
    queries = _QUERIES.search(text)
    cv = _CV.search(text)
    return TrtexecResult(
        tensorrt_version=tensorrt,
        gpu_name=device.group(1) if device else None,
        compute_capability=cc.group(1) if cc else None,
        throughput_qps=_number(throughput.group(1), throughput) if throughput else None,
        queries=int(queries.group(1)) if queries else None,
        metrics=metrics,
        gpu_compute_cv=_number(cv.group(1), cv) / 100 if cv else None,
        passed=_final_status(text) == "PASSED",
        cuda_graph_dropped=_GRAPH_DROPPED.search(text) is not None,
    )


def _number(text: str, line: re.Match[str]) -> float:
    """A number of trtexec's summary: finite and non-negative, or the log is refused in one line."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise RunError(f"trtexec's summary line has {text!r} where a number belongs: {line[0]!r}")
    return value


# trtexec reports its outcome on lines of their own, "&&&& <RUNNING|PASSED|FAILED|WAIVED> TensorRT.trtexec
# ... # <command>" (samples/common/logging.h, Logger::reportTestResult and testResultString, in
# NVIDIA/TensorRT): RUNNING first, then one verdict. Passed means that one verdict is the last status line
# and is PASSED; a log with a FAILED verdict, or with "&&&& PASSED" only inside another line, did not pass.
_STATUS = re.compile(r"^&&&& (RUNNING|PASSED|FAILED|WAIVED) ", re.MULTILINE)


def _final_status(text: str) -> str | None:
    """trtexec's verdict: the final status line's, when it is the log's only verdict; else None."""
    statuses = _STATUS.findall(text)
    verdicts = [s for s in statuses if s != "RUNNING"]
    return verdicts[0] if len(verdicts) == 1 and statuses[-1] == verdicts[0] else None


def stats_from_summary(summary: Summary, *, batch_size: int, iterations: int) -> LatencyStats:
    """A bench record from trtexec's printed summary (no standard deviation in it: ``nan``)."""

    def pct(p: float) -> float:
        return summary.percentiles.get(p, math.nan)

    return LatencyStats(
        batch_size=batch_size,
        iterations=iterations,
        mean_ms=summary.mean_ms,
        std_ms=math.nan,
        min_ms=summary.min_ms,
        p50_ms=summary.median_ms,
        p90_ms=pct(90.0),
        p95_ms=pct(95.0),
        p99_ms=pct(99.0),
        max_ms=summary.max_ms,
        throughput_ips=batch_size * 1000.0 / summary.mean_ms if summary.mean_ms > 0 else math.inf,
        cv=math.nan,
    )


def drop_warmup(records: list[dict[str, Any]], *, tensorrt: str | None, warmup_ms: float) -> list[dict[str, Any]]:
    """The timed records of an ``--exportTimes`` file.

    Before TensorRT 8.5 the file also holds the warm-up queries: 8.2/8.4's ``exportJSONTrace``
    writes the whole trace, while the summary skips queries whose compute started before
    ``--warmUp`` ms (``isNotWarmup``: ``computeStart >= warmupMs``, release/8.2 and release/8.4
    ``samples/common/sampleReporting.cpp``). From 8.5 the file starts after the warm-ups
    (``exportJSONTrace(trace, fileName, nbWarmups)``, release/8.5). Same rule here.
    """
    from edge_tl.targets import TrtVersion

    if tensorrt is None or TrtVersion.parse(tensorrt) >= TrtVersion(8, 5, 0):
        return records
    try:
        return [r for r in records if float(r["startComputeMs"]) >= warmup_ms]
    except (KeyError, TypeError, ValueError) as exc:
        raise RunError(f"--exportTimes records of TensorRT {tensorrt} lack {exc}: not a trtexec timing file") from exc


def parse_times(records: list[dict[str, Any]], *, batch_size: int) -> dict[str, LatencyStats]:
    """Per-query ``--exportTimes`` records -> GPU compute and end-to-end statistics.

    ``computeMs`` is the GPU compute time and ``latencyMs`` is H2D + compute + D2H in every
    release from 8.2 to 11 (``exportJSONTrace`` in ``samples/common/sampleReporting.cpp``).
    """
    if not records:
        raise RunError("the --exportTimes file has no records: trtexec timed nothing")
    try:
        compute = [float(r["computeMs"]) for r in records]
        latency = [float(r["latencyMs"]) for r in records]
    except (KeyError, TypeError, ValueError) as exc:
        raise RunError(f"--exportTimes records lack {exc}: not a trtexec timing file") from exc
    return {
        "gpu_compute": LatencyStats.from_samples(compute, batch_size=batch_size),
        "end_to_end": LatencyStats.from_samples(latency, batch_size=batch_size),
    }


def to_bench_results(
    result: TrtexecResult, *, batch_size: int, times: list[dict[str, Any]] | None = None, warmup_ms: float = 0.0
) -> dict[str, Any]:
    """The one place trtexec output meets the bench schema.

    Returns ``{"gpu_compute": LatencyStats, "end_to_end": LatencyStats, "source": ..., "trtexec": {...}}``;
    exact statistics from ``times`` when given, else from the text summary.
    """
    if times is not None:
        stats = parse_times(
            drop_warmup(times, tensorrt=result.tensorrt_version, warmup_ms=warmup_ms), batch_size=batch_size
        )
        source = "exportTimes"
    else:
        missing = [k for k in ("gpu_compute", "latency") if k not in result.metrics]
        if missing:
            raise RunError(
                f"trtexec output has no {', '.join(missing)} summary; was the engine timed (no --skipInference)?"
            )
        n = result.queries or 0
        stats = {
            "gpu_compute": stats_from_summary(result.metrics["gpu_compute"], batch_size=batch_size, iterations=n),
            "end_to_end": stats_from_summary(result.metrics["latency"], batch_size=batch_size, iterations=n),
        }
        source = "summary"
    return {
        **stats,
        "source": source,
        "trtexec": {
            "tensorrt_version": result.tensorrt_version,
            "gpu_name": result.gpu_name,
            "compute_capability": result.compute_capability,
            "throughput_qps": result.throughput_qps,
            "queries": result.queries,
            "gpu_compute_cv": result.gpu_compute_cv,
            "cuda_graph_dropped": result.cuda_graph_dropped,
        },
    }


def warmup_ms(argv: list[str]) -> float:
    """The ``--warmUp`` of a trtexec command (trtexec's default when it has none)."""
    return next((float(a.split("=", 1)[1]) for a in argv if a.startswith("--warmUp=")), DEFAULT_WARMUP_MS)


def timing_truth(meaning: dict[str, bool], results: list[dict[str, Any]]) -> dict[str, bool]:
    """What the timing flags meant, with ``cuda_graph`` true only where no run said it dropped the graph."""
    dropped = any(r.get("cuda_graph_dropped") for r in results)
    return {**meaning, "cuda_graph": bool(meaning.get("cuda_graph")) and not dropped}


def run_trtexec(
    argv: list[str],
    *,
    log_path: str | os.PathLike[str],
    times_path: str | os.PathLike[str] | None,
    batch_size: int,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Run a trtexec command, keep its log, and return :func:`to_bench_results` of its output.

    Success is exit 0 *and* trtexec's ``&&&& PASSED`` line (``sample::gLogger.reportPass``); a
    run that prints ``&&&& FAILED`` or stops early is refused whatever its exit status.
    """
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError as exc:
        raise ConfigError(f"cannot run {argv[0]!r}: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise RunError(f"trtexec did not finish within {timeout_s} s") from exc
    text = proc.stdout + proc.stderr
    Path(log_path).write_text(text, encoding="utf-8")
    result = parse_log(text)
    if proc.returncode != 0 or not result.passed:
        tail = "\n".join(text.strip().splitlines()[-15:])
        raise RunError(f"trtexec failed (exit {proc.returncode}); log kept at {str(log_path)!r}. Last lines:\n{tail}")
    times = None
    if times_path is not None and Path(times_path).is_file():
        times = json.loads(Path(times_path).read_text(encoding="utf-8"))
    return to_bench_results(result, batch_size=batch_size, times=times, warmup_ms=warmup_ms(argv))
