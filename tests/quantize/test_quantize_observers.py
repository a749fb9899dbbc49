"""Observers on data whose answer is known, streaming histograms, and the calibration image choice."""

from __future__ import annotations

import numpy as np
import pytest

from edge_tl.data import Sample
from edge_tl.quantize.calibrate import balanced_subset
from edge_tl.quantize.observers import (
    TensorObserver,
    entropy_amax,
    mse_amax,
    percentile_amax,
)
from edge_tl.quantize.recipes import CalibMethod


def _observe(batches: list[np.ndarray], **kwargs) -> TensorObserver:
    obs = TensorObserver(**kwargs)
    for batch in batches:
        obs.update(batch)
    return obs


def test_minmax_is_exact_across_batches() -> None:
    rng = np.random.default_rng(0)
    batches = [rng.normal(0, 1 + i, (4, 8, 5, 5)).astype(np.float32) for i in range(6)]
    obs = _observe(batches)
    everything = np.concatenate([b.ravel() for b in batches])
    assert obs.low == everything.min() and obs.high == everything.max()
    r = obs.range(CalibMethod.MINMAX)
    assert r.amax == max(-everything.min(), everything.max())
    assert (r.low, r.high) == (everything.min(), everything.max())


def test_histogram_keeps_every_count_while_its_range_grows() -> None:
    rng = np.random.default_rng(1)
    # Growing magnitudes force several re-binnings; counts must survive each one.
    batches = [rng.uniform(-s, s, 10_000).astype(np.float32) for s in (0.5, 3.0, 7.0, 100.0)]
    obs = _observe(batches, num_bins=256)
    assert obs.hist.sum() == 40_000 and len(obs.hist) == 256
    assert obs.width * obs.num_bins >= 100.0 * 0.999
    # The bin holding 0.25 on the final grid counts what a direct histogram counts, within one old bin.
    direct = np.histogram(np.abs(np.concatenate(batches)), bins=256, range=(0, obs.width * 256))[0]
    assert np.abs(direct - obs.hist).max() <= np.abs(direct).max() * 0.05 + 40


def test_percentile_on_known_distributions() -> None:
    rng = np.random.default_rng(2)
    uniform = _observe([rng.uniform(-1, 1, 200_000).astype(np.float32)])
    assert uniform.amax(CalibMethod.PERCENTILE, percentile=99.0) == pytest.approx(0.99, abs=0.002)
    normal = _observe([rng.standard_normal(200_000).astype(np.float32) for _ in range(5)])
    # P(|x| < 3.29) = 99.9 % for a standard normal.
    assert normal.amax(CalibMethod.PERCENTILE, percentile=99.9) == pytest.approx(3.29, abs=0.03)
    assert normal.amax(CalibMethod.PERCENTILE, percentile=99.9) < normal.amax(CalibMethod.MINMAX)


def test_entropy_and_mse_clip_long_tails_but_not_uniform_data() -> None:
    rng = np.random.default_rng(3)
    laplace = _observe([rng.laplace(0, 1, 400_000).astype(np.float32)])
    top = laplace.amax(CalibMethod.MINMAX)
    p99 = laplace.amax(CalibMethod.PERCENTILE, percentile=99.0)
    # A Laplace(1) tail: both clip the extreme values but keep more than 99 % of the mass.
    # MSE weighs the rounding noise of a wide range and clips harder than the KL search,
    # which keeps rare outliers whose clipping would fold mass into its last bin.
    assert p99 < laplace.amax(CalibMethod.MSE) < 0.8 * top
    assert p99 < laplace.amax(CalibMethod.ENTROPY) < 0.95 * top
    uniform = _observe([rng.uniform(-2, 2, 100_000).astype(np.float32)])
    for method in (CalibMethod.ENTROPY, CalibMethod.MSE):
        assert uniform.amax(method) == pytest.approx(2.0, rel=0.02), method


def test_entropy_is_not_pulled_to_zero_by_relu_zeros() -> None:
    rng = np.random.default_rng(4)
    # 90 % exact zeros (a ReLU output) and a half-normal body.
    values = np.maximum(rng.standard_normal(500_000), 0).astype(np.float32)
    values[rng.random(values.size) < 0.8] = 0
    obs = _observe([values])
    amax = obs.amax(CalibMethod.ENTROPY)
    assert 2.0 < amax <= obs.amax(CalibMethod.MINMAX)


def test_selection_functions_on_a_hand_made_histogram() -> None:
    hist = np.zeros(1024, dtype=np.int64)
    hist[:512] = 10_000  # flat body up to 0.5
    hist[1023] = 1  # one outlier at ~1.0
    width = 1.0 / 1024
    assert percentile_amax(hist, width, 100.0) == pytest.approx(1.0)
    assert percentile_amax(hist, width, 99.0) == pytest.approx(0.5, abs=0.01)
    # KL only compares shapes: with the range up to the outlier, 8 bins per level hold the flat
    # body exactly and the lone outlier alone, so nothing diverges; any clip folds it in.
    assert entropy_amax(hist, width) == pytest.approx(1.0)
    # Squared error instead pays for the coarse steps that range costs the body.
    assert mse_amax(hist, width) == pytest.approx(0.5, abs=0.02)


def test_nan_activations_are_refused() -> None:
    from edge_tl.errors import DataError

    with pytest.raises(DataError, match="NaN"):
        TensorObserver().update(np.array([1.0, np.nan], dtype=np.float32))


def test_balanced_seeded_subset() -> None:
    samples = [Sample(label=c, index=i, builtin="digits") for c, n in ((0, 50), (1, 10), (2, 30)) for i in range(n)]
    picked = balanced_subset(samples, 24, seed=0)
    assert [sum(s.label == c for s in picked) for c in range(3)] == [8, 8, 8]
    assert picked == balanced_subset(samples, 24, seed=0) and picked != balanced_subset(samples, 24, seed=1)
    many = balanced_subset(samples, 60, seed=0)  # class 1 runs out at 10; the others fill up
    assert [sum(s.label == c for s in many) for c in range(3)] == [25, 10, 25]
    assert len(balanced_subset(samples, 1000, seed=0)) == 90
