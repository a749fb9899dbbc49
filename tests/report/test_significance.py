"""The statistics behind every accuracy comparison, against known values.

Known values come from SciPy (``scipy.stats.binomtest``: the exact McNemar test is the exact
binomial test on the discordant pairs; ``BinomTestResult.proportion_ci(method="wilson")``; the
chi-square McNemar test), and from closed forms worked out in the comments.
"""

from __future__ import annotations

import math

import pytest

from edge_tl.errors import ConfigError
from edge_tl.significance import (
    Gate,
    PairedComparison,
    PairedCounter,
    images_needed_to_detect,
    mcnemar_exact,
    tango_interval,
    tango_statistic,
    wilson_interval,
)
from edge_tl.verify.api import VerifyConfig, _gate
from edge_tl.verify.report import VerifyRow

stats = pytest.importorskip("scipy.stats")

DISCORDANT = [(0, 1), (1, 0), (1, 1), (0, 5), (0, 6), (2, 9), (8, 1), (10, 10), (3, 17), (40, 61), (120, 95), (0, 40)]


@pytest.mark.parametrize(("lost", "gained"), DISCORDANT)
def test_mcnemar_exact_equals_scipy_binomtest(lost: int, gained: int) -> None:
    expected = stats.binomtest(lost, lost + gained, 0.5, alternative="two-sided").pvalue
    assert mcnemar_exact(lost, gained) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_mcnemar_textbook_values() -> None:
    # By hand: 6 lost, 0 gained: 2 * 0.5**6 = 0.03125; 5 lost: 0.0625; 8 vs 1: 2 * 10/512 = 0.0390625.
    assert mcnemar_exact(6, 0) == pytest.approx(0.03125)
    assert mcnemar_exact(5, 0) == pytest.approx(0.0625)
    assert mcnemar_exact(8, 1) == pytest.approx(0.0390625)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 0) == 1.0  # min(1, 2 * 0.5)


@pytest.mark.parametrize(
    ("correct", "total"), [(0, 10), (10, 10), (352, 359), (359, 359), (81, 263), (1, 2), (975, 1000)]
)
@pytest.mark.parametrize("level", [0.05, 0.01, 0.2])
def test_wilson_interval_equals_scipy(correct: int, total: int, level: float) -> None:
    ci = stats.binomtest(correct, total).proportion_ci(confidence_level=1 - level, method="wilson")
    low, high = wilson_interval(correct, total, level=level)
    assert low == pytest.approx(ci.low, abs=1e-9)
    assert high == pytest.approx(ci.high, abs=1e-9)


def test_tango_interval_without_a_changed_image_has_its_closed_form() -> None:
    # No discordant image: the constrained MLE of a lost image is max(0, -d) and the statistic
    # reduces to -sign(d) sqrt(n |d| / (1 - |d|)); T = -+z gives |d| = z^2 / (n + z^2).
    z2 = stats.norm.ppf(0.975) ** 2
    low, high = tango_interval(359, 0, 0)
    assert high == pytest.approx(z2 / (359 + z2), abs=1e-12)
    assert low == pytest.approx(-z2 / (359 + z2), abs=1e-12)


def test_tango_statistic_at_no_change_is_mcnemars() -> None:
    for lost, gained in DISCORDANT:
        if lost + gained:
            assert tango_statistic(500, lost, gained, 0.0) == pytest.approx(
                (gained - lost) / math.sqrt(lost + gained), rel=1e-12
            )


@pytest.mark.parametrize(("lost", "gained"), DISCORDANT)
@pytest.mark.parametrize("level", [0.05, 0.01])
def test_tango_interval_leaves_out_zero_exactly_when_mcnemar_rejects(lost: int, gained: int, level: float) -> None:
    # The asymptotic McNemar test (chi-square, 1 df, no continuity correction) from SciPy.
    n = 400
    low, high = tango_interval(n, lost, gained, level=level)
    assert low <= (gained - lost) / n <= high
    if lost + gained == 0:
        assert low < 0 < high
        return
    p = stats.chi2.sf((gained - lost) ** 2 / (lost + gained), 1)
    assert (low > 0 or high < 0) == (p < level)
    z = stats.norm.ppf(1 - level / 2)
    # Each limit is a root of the score equation T(d) = +-z.
    if low > -1:
        assert tango_statistic(n, lost, gained, low) == pytest.approx(z, abs=1e-7)
    if high < 1:
        assert tango_statistic(n, lost, gained, high) == pytest.approx(-z, abs=1e-7)


def test_tango_interval_at_the_edges() -> None:
    assert tango_interval(10, 10, 0)[0] == -1.0 and tango_interval(10, 0, 10)[1] == 1.0
    low, high = tango_interval(10, 10, 0)
    assert -1.0 < high < 0


def test_the_quickstart_sentence() -> None:
    change = PairedComparison.from_counts(359, 1, 0)
    assert change.delta_pts == pytest.approx(-100 / 359)
    assert change.describe() == (
        "-0.28 pt (95% CI -1.56 to +0.78), not distinguishable from noise on 359 images (exact McNemar p = 1)"
    )
    assert not change.significant
    strong = PairedComparison.from_counts(359, 6, 0)
    assert (
        strong.significant
        and "distinguishable from noise on 359 images (exact McNemar p = 0.0313)" in strong.describe()
    )
    assert "not" not in strong.verdict()


def test_images_needed_to_detect() -> None:
    # 2 * 0.5**k < 0.05 first at k = 6; < 0.01 first at k = 8 (2/256 = 0.0078).
    assert images_needed_to_detect(359) == 6
    assert images_needed_to_detect(359, level=0.01) == 8
    assert images_needed_to_detect(5) == 6  # cannot be detected on 5 images at all


def test_paired_counter_counts_discordant_images() -> None:
    import numpy as np

    labels = np.array([0, 1, 2, 0, 1])
    eye = np.eye(3, dtype=np.float32)
    reference = eye[[0, 1, 2, 1, 2]]  # right, right, right, wrong, wrong
    candidate = eye[[0, 2, 2, 0, 0]]  # right, wrong, right, right, wrong
    counter = PairedCounter()
    counter.update(reference[:2], candidate[:2], labels[:2])
    counter.update(reference[2:], candidate[2:], labels[2:])
    assert (counter.total, counter.lost, counter.gained) == (5, 1, 1)
    assert counter.result().delta_pts == 0.0
    assert PairedCounter().result() is None


def test_comparison_bounded_from_agreement_is_conservative() -> None:
    exact = PairedComparison.from_counts(200, 7, 1)
    # 4 % disagreement = 8 images; a -3 pt change = 6 images: at most 7 lost and 1 gained.
    bound = PairedComparison.from_agreement(200, -0.03, 0.96)
    assert bound is not None and bound.bound
    assert (bound.lost, bound.gained) == (7, 1)
    assert bound.p_value >= exact.p_value - 1e-12
    assert PairedComparison.from_agreement(200, -0.10, 0.99) is None  # 20 images changed but only 2 disagree


def _row(name: str, delta: float, change: PairedComparison | None) -> VerifyRow:
    return VerifyRow(
        name,
        "onnx",
        "int8",
        "onnxruntime",
        "local",
        359,
        top1=0.9,
        delta_top1_pts=delta,
        change=change.to_dict() if change else None,
    )


def test_gate_significant_fails_only_over_the_limit_and_significant() -> None:
    noise = _row("onnx-int8-a", -100 / 359, PairedComparison.from_counts(359, 1, 0))
    real = _row("onnx-int8-b", -600 / 359, PairedComparison.from_counts(359, 6, 0))
    small_real = _row("onnx-int8-c", -600 / 359, PairedComparison.from_counts(359, 6, 0))
    unknown = _row("engine-x", -1.0, None)
    point = _gate([noise, real, unknown], VerifyConfig(max_accuracy_drop=0.2))
    assert [f.split(":")[0] for f in point] == ["onnx-int8-a", "onnx-int8-b", "engine-x"]
    significant = _gate([noise, real, unknown], VerifyConfig(max_accuracy_drop=0.2, gate=Gate.SIGNIFICANT))
    assert [f.split(":")[0] for f in significant] == ["onnx-int8-b", "engine-x"]
    assert "distinguishable from noise on 359 images" in significant[0]
    assert "point estimate judged" in significant[1]
    assert _gate([small_real], VerifyConfig(max_accuracy_drop=2.0, gate=Gate.SIGNIFICANT)) == []


def test_significance_level_is_checked() -> None:
    with pytest.raises(ConfigError, match="significance-level"):
        VerifyConfig(significance_level=5.0)
    with pytest.raises(ValueError, match="level"):
        wilson_interval(1, 2, level=0.0)
