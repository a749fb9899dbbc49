"""The streaming accuracy and agreement metrics, on logits whose answers are known by hand.

Export parity, quantization and verification all judge artifacts with these sums, so
each number is pinned exactly: a flipped comparison, an off-by-one in top-5 or a NaN
that slips through would pass a bad model.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_tl.verify.metrics import Accuracy, AccuracyAccumulator, Agreement, AgreementAccumulator

# Six classes; each row's logits are distinct so the ranking is unambiguous.
LOGITS = np.array(
    [
        [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],  # ranking 0,1,2,3,4,5
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # ranking 5,4,3,2,1,0
        [0.0, 9.0, 1.0, 2.0, 3.0, 4.0],  # ranking 1,5,4,3,2,0
    ]
)


def test_top1_and_top5_count_exactly_over_batches() -> None:
    acc = AccuracyAccumulator()
    acc.update(LOGITS[:2], np.array([0, 1]))  # row 0 right; row 1: label 1 ranked 5th -> top-5 only
    acc.update(LOGITS[2:], np.array([0]))  # label 0 ranked 6th -> neither
    result = acc.result()
    assert result == Accuracy(num_images=3, top1=1 / 3, top5=2 / 3)
    assert result.to_dict() == {"num_images": 3, "top1": 1 / 3, "top5": 2 / 3}
    rowwise = AccuracyAccumulator()  # argmax per row, not over the whole batch
    rowwise.update(LOGITS[1:], np.array([5, 1]))
    assert rowwise.result().top1 == 1.0


def test_top5_counts_the_fifth_but_not_the_sixth_rank() -> None:
    fifth = AccuracyAccumulator()
    fifth.update(LOGITS[:1], np.array([4]))
    assert fifth.result().top5 == 1.0 and fifth.result().top1 == 0.0
    sixth = AccuracyAccumulator()
    sixth.update(LOGITS[:1], np.array([5]))
    assert sixth.result().top5 == 0.0


def test_top5_exists_from_five_classes_on() -> None:
    five = AccuracyAccumulator()
    five.update(LOGITS[:1, :5], np.array([4]))
    assert five.result().top5 == 1.0
    four = AccuracyAccumulator()
    four.update(LOGITS[:1, :4], np.array([0]))
    assert four.result() == Accuracy(1, 1.0, None)


def test_empty_accuracy_is_nan_not_zero() -> None:
    result = AccuracyAccumulator().result()
    assert result.num_images == 0 and math.isnan(result.top1) and result.top5 is None


def test_rows_and_labels_must_match() -> None:
    with pytest.raises(ValueError, match="2 rows of logits for 3 labels"):
        AccuracyAccumulator().update(LOGITS[:2], np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"reference logits \(3, 6\) and candidate logits \(2, 6\) differ"):
        AgreementAccumulator().update(LOGITS, LOGITS[:2])


def test_agreement_sums_known_differences() -> None:
    candidate = LOGITS.copy()
    candidate[0, 1] += 0.25
    candidate[1, 0] += 10.0  # row 1's argmax moves from class 5 to class 0
    candidate[2, 2] -= 0.5
    agree = AgreementAccumulator(atol=0.5, rtol=0.0)
    agree.update(LOGITS[:1], candidate[:1])
    agree.update(LOGITS[1:], candidate[1:])
    result = agree.result()
    assert result.num_images == 3
    assert result.top1_agreement == pytest.approx(2 / 3)
    assert result.max_abs_diff == 10.0
    assert result.mean_abs_diff == pytest.approx(10.75 / 18)  # summed over both batches
    # 0.5 is within atol (<=, not <); 10 is not
    assert result.num_outside_tolerance == 1
    assert set(result.to_dict()) == {
        "num_images",
        "top1_agreement",
        "max_abs_diff",
        "mean_abs_diff",
        "mean_kl",
        "num_outside_tolerance",
    }


def test_mean_kl_is_kl_of_reference_to_candidate_averaged_over_images() -> None:
    reference = np.array([[0.0, 0.0], [1.0, 0.0]])
    candidate = np.array([[2.0, 0.0], [1.0, 0.0]])
    agree = AgreementAccumulator()
    agree.update(reference[:1], candidate[:1])
    agree.update(reference[1:], candidate[1:])  # summed over batches, not replaced
    p = np.array([0.5, 0.5])
    q = np.exp([2.0, 0.0]) / np.exp([2.0, 0.0]).sum()
    expected = float((p * np.log(p / q)).sum()) / 2  # the second image agrees exactly: KL 0
    assert agree.result().mean_kl == pytest.approx(expected, rel=1e-12)
    together = AgreementAccumulator()  # softmax per row, also when rows share a batch
    together.update(reference, candidate)
    assert together.result().mean_kl == pytest.approx(expected, rel=1e-12)
    # KL(P||Q) is not symmetric: the other direction is a different number.
    reverse = float((q * np.log(q / p)).sum()) / 2
    assert abs(expected - reverse) > 1e-3


def test_kl_is_stable_for_large_logits() -> None:
    # Each row is shifted by its own maximum: a row of large logits next to a row of
    # small ones must not underflow the small one.
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 1.0, 2.0]])
    agree = AgreementAccumulator()
    agree.update(logits, logits + np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    assert agree.result().mean_kl == pytest.approx(0.0, abs=1e-12) and math.isfinite(agree.result().mean_kl)


def test_relative_tolerance_scales_with_the_reference() -> None:
    reference = np.array([[100.0, -100.0, 1.0]])
    candidate = reference + np.array([[0.9, -0.9, 0.9]])
    agree = AgreementAccumulator(atol=0.0, rtol=0.01)  # allows 1.0 on +-100, 0.01 on 1
    agree.update(reference, candidate)
    assert agree.result().num_outside_tolerance == 1
    exact = AgreementAccumulator(atol=0.0, rtol=0.0)
    exact.update(reference, reference)
    assert exact.result().num_outside_tolerance == 0


def test_default_tolerance_is_exact() -> None:
    agree = AgreementAccumulator()
    agree.update(LOGITS, LOGITS + 1e-9)
    assert agree.result().num_outside_tolerance == LOGITS.size


def test_nan_in_the_candidate_fails_every_check() -> None:
    candidate = LOGITS.copy()
    candidate[0, 3] = np.nan
    agree = AgreementAccumulator(atol=1.0, rtol=1.0)
    agree.update(LOGITS, candidate)
    agree.update(LOGITS, LOGITS)  # a later clean batch must not hide it
    result = agree.result()
    assert result.num_outside_tolerance == 1
    assert result.max_abs_diff == math.inf


def test_identical_logits_agree_completely() -> None:
    agree = AgreementAccumulator(atol=0.0, rtol=0.0)
    agree.update(LOGITS, LOGITS)
    assert agree.result() == Agreement(3, 1.0, 0.0, 0.0, 0.0, 0)


def test_empty_agreement_is_nan() -> None:
    result = AgreementAccumulator(atol=1.0).result()
    assert result.num_images == 0 and result.num_outside_tolerance == 0
    assert all(
        math.isnan(v) for v in (result.top1_agreement, result.max_abs_diff, result.mean_abs_diff, result.mean_kl)
    )
