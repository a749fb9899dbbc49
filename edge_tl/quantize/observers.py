"""Calibration observers: streaming range statistics and the four ways to pick a range.

Each observed tensor keeps its minimum, maximum and a histogram of ``|x|`` with a
fixed number of bins, so memory does not grow with the number of calibration
images. When a batch exceeds the histogram's range, the bin width grows by an
integer factor and every ``factor`` old bins merge into one new bin: the old counts
stay exact, only the resolution coarsens (at worst to half the bins across the
observed range).

Methods (all symmetric around zero; see :meth:`TensorObserver.range`):

* ``minmax``: the largest magnitude seen;
* ``percentile``: the magnitude below which ``percentile`` % of the values lie;
* ``entropy``: TensorRT's threshold search: the clipping point whose 128-level
  quantized distribution has the smallest KL divergence from the clipped one;
* ``mse``: the clipping point with the smallest expected squared error, counting
  rounding noise inside the range and clipping error outside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_tl.errors import DataError
from edge_tl.quantize.recipes import CalibMethod

# Number of quantization levels on one side of zero for INT8 (TensorRT's 127).
INT8_LEVELS = 127


@dataclass(frozen=True)
class TensorRange:
    """The calibrated range of one tensor: ``amax`` for symmetric, ``[low, high]`` for asymmetric."""

    amax: float
    low: float
    high: float
    method: CalibMethod

    def to_dict(self) -> dict[str, float | str]:
        return {"amax": self.amax, "min": self.low, "max": self.high, "method": self.method.value}


class TensorObserver:
    """Streaming statistics of one tensor (see the module docstring)."""

    def __init__(self, *, num_bins: int = 2048, histogram: bool = True):
        if num_bins < 128:
            raise ValueError(f"num_bins must be >= 128 (the entropy search quantizes into 128 bins), got {num_bins}")
        self.num_bins = num_bins
        self.histogram = histogram
        self.low = math.inf
        self.high = -math.inf
        self.count = 0
        self.hist = np.zeros(num_bins, dtype=np.int64) if histogram else None
        self.width = 0.0  # bin width; 0 until the first non-zero value

    def update(self, values: np.ndarray) -> None:
        x = np.asarray(values)
        if x.size == 0:
            return
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        low, high = float(x.min()), float(x.max())
        if not (math.isfinite(low) and math.isfinite(high)):
            raise DataError(
                "a calibration batch produced NaN or infinite activations; check the calibration images and that the "
                "model is the run's trained one"
            )
        self.low, self.high = min(self.low, low), max(self.high, high)
        self.count += x.size
        if self.hist is None:
            return
        amax = max(-low, high)
        if amax > 0.0 and self.width == 0.0:
            # Before the first non-zero value every count sits in bin 0, which is still right
            # at any width.
            self.width = amax / self.num_bins
        elif amax > self.width * self.num_bins:
            factor = math.ceil(amax / (self.width * self.num_bins))
            merged = np.arange(self.num_bins) // factor
            self.hist = np.bincount(merged, weights=self.hist, minlength=self.num_bins).astype(np.int64)
            self.width *= factor
        if self.width == 0.0:
            self.hist[0] += x.size
            return
        index = (np.abs(x).ravel() * np.float32(1.0 / self.width)).astype(np.int64)
        np.minimum(index, self.num_bins - 1, out=index)
        self.hist += np.bincount(index, minlength=self.num_bins)

    # ---- range selection

    @property
    def abs_max(self) -> float:
        return max(-self.low, self.high, 0.0)

    def amax(self, method: CalibMethod, *, percentile: float = 99.99) -> float:
        if self.count == 0:
            raise DataError("a tensor was never observed during calibration; were any calibration images given?")
        if method is CalibMethod.MINMAX or self.width == 0.0:
            return self.abs_max
        if self.hist is None:
            raise ValueError(f"method {method.value!r} needs a histogram; create the observer with histogram=True")
        if method is CalibMethod.PERCENTILE:
            value = percentile_amax(self.hist, self.width, percentile)
        elif method is CalibMethod.ENTROPY:
            value = entropy_amax(self.hist, self.width)
        else:
            value = mse_amax(self.hist, self.width)
        return min(value, self.abs_max)

    def range(self, method: CalibMethod, *, percentile: float = 99.99) -> TensorRange:
        """``amax`` by ``method``; the asymmetric range is the observed one clipped to ``[-amax, amax]``."""
        amax = self.amax(method, percentile=percentile)
        return TensorRange(amax=amax, low=max(self.low, -amax), high=min(self.high, amax), method=method)


def percentile_amax(hist: np.ndarray, width: float, percentile: float) -> float:
    cdf = np.cumsum(hist, dtype=np.float64)
    total = cdf[-1]
    index = int(np.searchsorted(cdf, total * percentile / 100.0, side="left"))
    return (min(index, len(hist) - 1) + 1) * width


def entropy_amax(hist: np.ndarray, width: float, *, levels: int = 128) -> float:
    """TensorRT's KL-divergence threshold search over an ``|x|`` histogram.

    For each candidate threshold bin ``i`` (from ``levels`` up): the reference
    distribution is the first ``i`` bins with all counts beyond folded into the last;
    the candidate is those ``i`` bins merged into ``levels`` groups and spread back
    evenly over each group's non-empty bins. The threshold with the smallest
    KL(reference || candidate) wins. The zero bin is levelled first (see below).
    """
    num_bins = len(hist)
    counts = hist.astype(np.float64)
    # After a ReLU most values are exactly 0; that spike in bin 0 would dominate the
    # divergence of every wide candidate (merging it with its neighbours) and drive the
    # threshold to the narrowest one. Its count is replaced by its neighbour's, as
    # TensorRT-style entropy calibrators do.
    counts[0] = counts[1]
    tail = np.cumsum(counts[::-1])[::-1]  # tail[i] = counts[i:].sum()
    # Every bin from `levels` up is a candidate; on wide histograms a stride keeps the
    # search to ~1000 candidates (the chosen edge moves by at most stride-1 bins).
    stride = max(1, num_bins // 1024)
    best_i, best_kl = num_bins, math.inf
    for i in range(levels, num_bins + 1, stride):
        ref = counts[:i].copy()
        if i < num_bins:
            ref[i - 1] += tail[i]
        if ref.sum() == 0:
            continue
        group = i // levels
        starts = np.arange(levels) * group
        body = counts[:i]
        nonzero = body != 0
        sums = np.add.reduceat(body, starts)
        filled = np.add.reduceat(nonzero.astype(np.float64), starts)
        lengths = np.diff(np.append(starts, i))
        avg = np.divide(sums, filled, out=np.zeros_like(sums), where=filled > 0)
        cand = np.repeat(avg, lengths) * nonzero
        kl = _kl(ref, cand)
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i * width


def _kl(p: np.ndarray, q: np.ndarray, *, eps: float = 1e-4) -> float:
    p = p / p.sum()
    q_total = q.sum()
    if q_total == 0:
        return math.inf
    q = q / q_total
    mask = p > 0
    # A bin the reference has and the candidate lacks gets a small floor instead of an
    # infinite penalty (TensorRT smooths the same way).
    qm = np.maximum(q[mask], eps * p[mask].min())
    return float(np.sum(p[mask] * np.log(p[mask] / qm)))


def mse_amax(hist: np.ndarray, width: float, *, levels: int = INT8_LEVELS) -> float:
    """The clipping threshold with the least expected squared error on the histogram.

    Values inside ``[-a, a]`` carry uniform rounding noise ``(a/levels)^2 / 12``;
    values beyond are clipped to ``a``. Evaluated for every bin edge at once with
    cumulative sums.
    """
    num_bins = len(hist)
    counts = hist.astype(np.float64)
    centers = (np.arange(num_bins) + 0.5) * width
    # Suffix sums of n, n*c and n*c^2 give each candidate's clipping error in O(1).
    n_tail = np.append(np.cumsum(counts[::-1])[::-1], 0.0)
    c_tail = np.append(np.cumsum((counts * centers)[::-1])[::-1], 0.0)
    c2_tail = np.append(np.cumsum((counts * centers**2)[::-1])[::-1], 0.0)
    edges = np.arange(1, num_bins + 1)
    amax = edges * width
    inside = counts.sum() - n_tail[edges]
    clip = c2_tail[edges] - 2 * amax * c_tail[edges] + amax**2 * n_tail[edges]
    noise = inside * (amax / levels) ** 2 / 12.0
    return float(amax[int(np.argmin(clip + noise))])


class ObserverSet:
    """One :class:`TensorObserver` per tensor name."""

    def __init__(self, names: list[str], *, num_bins: int = 2048, histogram: bool = True):
        self.observers = {name: TensorObserver(num_bins=num_bins, histogram=histogram) for name in names}

    def update(self, outputs: dict[str, np.ndarray]) -> None:
        for name, value in outputs.items():
            self.observers[name].update(value)

    def ranges(self, method: CalibMethod, *, percentile: float = 99.99) -> dict[str, TensorRange]:
        return {name: obs.range(method, percentile=percentile) for name, obs in self.observers.items()}
