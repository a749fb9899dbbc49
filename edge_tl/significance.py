"""What an accuracy difference is worth on this many images (numpy and the standard library only).

Every comparison edge-tl makes is *paired*: the original model and an artifact are run on the
same images, so the question is how many images changed from right to wrong (``lost``) and from
wrong to right (``gained``). The images both get right, or both get wrong, say nothing about the
difference. Two tools answer the question:

* the exact McNemar test: under "no difference" each changed image is a fair coin, so the
  two-sided p-value is the binomial tail ``2 * P(X <= min(lost, gained))``,
  ``X ~ Binomial(lost + gained, 1/2)`` (McNemar 1947; the exact form is the sign test on the
  discordant pairs, e.g. Agresti, *Categorical Data Analysis*, 3rd ed., section 11.1);
* Tango's score interval for the change in top-1 (Tango 1998, Stat Med 17:891-908): the
  differences ``d`` that a score test of "the change is d" does not reject. It depends only on
  the two discordant counts and the number of images, as McNemar does, and at ``d = 0`` its
  statistic is McNemar's ``(gained - lost) / sqrt(gained + lost)``: the interval leaves out 0
  exactly when the asymptotic McNemar test rejects, and keeps gains in view when one image was
  lost (a percentile bootstrap, used before, resamples one discordant image into an interval
  that ends at +0.00 and so excluded every gain while McNemar said p = 1).

Top-1 alone gets the Wilson score interval (Wilson 1927), which stays inside [0, 1] and keeps its
coverage near 0 % and 100 % errors, where validation sets of a few hundred images live.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import Enum
from fractions import Fraction
from typing import Any

import numpy as np

DEFAULT_LEVEL = 0.05  # significance level; intervals are at 1 - level


class Gate(str, Enum):
    """How a ``--max-accuracy-drop`` gate judges a drop."""

    POINT = "point"  # the point estimate is over the limit
    SIGNIFICANT = "significant"  # over the limit and distinguishable from noise at the chosen level


def _z(confidence: float) -> float:
    # Two-sided normal quantile by bisection on erf: keeps this module free of scipy.
    target = 0.5 + confidence / 2
    lo, hi = 0.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"significance level must be in (0, 1), e.g. 0.05; got {level}")


def wilson_interval(correct: int, total: int, *, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``correct / total`` at confidence ``1 - level``."""
    _check_level(level)
    if total <= 0 or not 0 <= correct <= total:
        raise ValueError(f"need 0 <= correct <= total and total > 0, got {correct} of {total}")
    z = _z(1 - level)
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(lost: int, gained: int) -> float:
    """Two-sided exact McNemar p-value from the two discordant counts."""
    if lost < 0 or gained < 0:
        raise ValueError(f"discordant counts must be >= 0, got {lost} and {gained}")
    n = lost + gained
    if n == 0:
        return 1.0
    k = min(lost, gained)
    # log-space terms: exact enough for tens of thousands of changed images, where comb() is slow.
    log_half_n = n * math.log(0.5)
    tail = sum(
        math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half_n) for i in range(k + 1)
    )
    return min(1.0, 2.0 * tail)


def tango_statistic(total: int, lost: int, gained: int, delta: float) -> float:
    """Tango's score statistic for "the change in top-1 is ``delta``" (a fraction, artifact minus
    original): ``(gained - lost - n delta) / sqrt(n (2 q + delta (1 - delta)))``, where ``q`` is
    the maximum-likelihood probability of a lost image under that hypothesis, the positive root
    of ``2n q^2 + (-(gained + lost) + (2n - gained + lost) delta) q - lost delta (1 - delta) = 0``
    (Tango 1998, equations 3 and 4, with his b = gained, c = lost)."""
    n = total
    a = 2.0 * n
    b = -(gained + lost) + (2.0 * n - gained + lost) * delta
    c = -lost * delta * (1.0 - delta)
    q = (math.sqrt(max(0.0, b * b - 4.0 * a * c)) - b) / (2.0 * a)
    variance = n * (2.0 * q + delta * (1.0 - delta))
    numerator = gained - lost - n * delta
    if variance <= 0.0:  # only at delta = 0 with no discordant image, where the numerator is 0 too
        return 0.0 if numerator == 0 else math.copysign(math.inf, numerator)
    return numerator / math.sqrt(variance)


def tango_interval(total: int, lost: int, gained: int, *, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """Tango's score interval of the change in top-1 (a fraction, artifact minus original).

    The statistic falls as ``delta`` rises, so each limit is the one root of ``T(delta) = +-z``
    in (-1, 1), found by bisection to well below 1e-12; a change of -1 or +1 is its own limit.
    """
    _check_level(level)
    if total <= 0 or lost < 0 or gained < 0 or lost + gained > total:
        raise ValueError(f"need lost + gained <= total and total > 0, got {lost} + {gained} of {total}")
    z = _z(1 - level)

    def root(target: float) -> float:
        lo, hi = -1.0, 1.0
        for _ in range(200):
            mid = (lo + hi) / 2
            if tango_statistic(total, lost, gained, mid) > target:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    low = -1.0 if lost == total else root(z)
    high = 1.0 if gained == total else root(-z)
    return low, high


def allowed_images(budget_pts: float, total: int) -> int:
    """The most images a drop of ``budget_pts`` points allows on ``total`` images.

    Budgets are compared in whole images, never in floats: the budget is read as the decimal
    the user wrote (``Fraction(repr(1.0)) == 1``), so 2 images of 200 at 1.0 pt is exactly
    within it, where ``(0.535 - 0.525) * 100`` is 1.0000000000000009.
    """
    return math.floor(Fraction(repr(float(budget_pts))) * total / 100)


def over_budget(net_lost: int, total: int, budget_pts: float) -> bool:
    """Whether losing ``net_lost`` images (lost minus gained) of ``total`` exceeds ``budget_pts`` points."""
    return net_lost > allowed_images(budget_pts, total)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the order given: the k-th smallest
    becomes ``max over j <= k of min(1, (m - j + 1) p_(j))``; rejecting where it is below the
    level keeps the family-wise error at that level over all ``m`` tests."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def images_needed_to_detect(total: int, *, level: float = DEFAULT_LEVEL) -> int:
    """The fewest images an artifact must lose (gaining none) for the drop to be significant."""
    _check_level(level)
    lost = 1
    while lost <= total:
        if mcnemar_exact(lost, 0) < level:
            return lost
        lost += 1
    return total + 1


@dataclass(frozen=True)
class PairedComparison:
    """An artifact against the original on the same ``total`` images."""

    total: int
    lost: int  # images the original got right and the artifact got wrong
    gained: int  # images the original got wrong and the artifact got right
    level: float
    delta_pts: float  # change in top-1, points (artifact minus original)
    ci_low_pts: float
    ci_high_pts: float
    p_value: float
    bound: bool = False  # True: the discordant counts are an upper bound (only agreement was known)

    @classmethod
    def from_counts(
        cls, total: int, lost: int, gained: int, *, level: float = DEFAULT_LEVEL, bound: bool = False
    ) -> "PairedComparison":
        low, high = tango_interval(total, lost, gained, level=level)
        return cls(
            total=total,
            lost=lost,
            gained=gained,
            level=level,
            delta_pts=(gained - lost) / total * 100,
            ci_low_pts=low * 100,
            ci_high_pts=high * 100,
            p_value=mcnemar_exact(lost, gained),
            bound=bound,
        )

    @classmethod
    def from_agreement(
        cls, total: int, delta_top1: float, agreement: float, *, level: float = DEFAULT_LEVEL
    ) -> "PairedComparison | None":
        """A conservative comparison when only top-1 change and agreement are known (e.g. from a device).

        An image can only change from right to wrong (or back) if the two models disagree on it, so
        ``lost + gained <= disagreements``; taking the upper bound gives a wider interval and a larger
        p-value than the exact counts would. ``None`` when the numbers are inconsistent.
        """
        change = round(delta_top1 * total)
        disagree = round((1 - agreement) * total)
        if disagree < abs(change) or total <= 0:
            return None
        if (disagree - change) % 2:
            # Keep the counts integral: one more changed image is the conservative side.
            disagree += 1 if disagree < total else -1
        lost, gained = (disagree - change) // 2, (disagree + change) // 2
        if min(lost, gained) < 0:
            return None
        return cls.from_counts(total, lost, gained, level=level, bound=True)

    @property
    def confidence_pct(self) -> str:
        return f"{(1 - self.level) * 100:g}%"

    @property
    def significant(self) -> bool:
        return self.p_value < self.level

    def interval_text(self) -> str:
        return f"{self.delta_pts:+.2f} pt ({self.confidence_pct} CI {self.ci_low_pts:+.2f} to {self.ci_high_pts:+.2f})"

    def verdict(self) -> str:
        where = f"on {self.total} images"
        if self.significant:
            return f"distinguishable from noise {where} (exact McNemar p = {self.p_value:.3g})"
        return f"not distinguishable from noise {where} (exact McNemar p = {self.p_value:.3g})"

    def describe(self) -> str:
        """E.g. ``-0.28 pt (95% CI -1.56 to +0.78), not distinguishable from noise on 359 images (...)``."""
        note = "; counts bounded from agreement" if self.bound else ""
        return f"{self.interval_text()}, {self.verdict()}{note}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant, "verdict": self.verdict(), "text": self.describe()}


def comparison_from_result(
    result: dict[str, Any], delta_top1: float, *, level: float = DEFAULT_LEVEL
) -> PairedComparison | None:
    """The comparison a stored result supports (e.g. ``deploy/<host>/accuracy.json``).

    Exact when it carries the discordant counts ``lost`` and ``gained``, else bounded from
    ``top1_agreement``; ``None`` when it has neither (or no ``num_images``).
    """
    total = result.get("num_images")
    if not isinstance(total, int) or total <= 0:
        return None
    lost, gained = result.get("lost"), result.get("gained")
    if isinstance(lost, int) and isinstance(gained, int) and lost >= 0 and gained >= 0 and lost + gained <= total:
        return PairedComparison.from_counts(total, lost, gained, level=level)
    agreement = result.get("top1_agreement")
    if isinstance(agreement, (int, float)) and not isinstance(agreement, bool) and 0.0 <= agreement <= 1.0:
        return PairedComparison.from_agreement(total, delta_top1, float(agreement), level=level)
    return None


@dataclass(frozen=True)
class ClassChange:
    """One class's recall, original and artifact, on the images of that class."""

    index: int
    name: str
    images: int
    reference_correct: int
    correct: int
    lost: int
    gained: int
    delta_pts: float  # change in recall, points (artifact minus original)
    ci_low_pts: float  # Tango's interval on this class's images
    ci_high_pts: float
    p_value: float  # exact McNemar on this class's images
    p_holm: float  # Holm-adjusted over the classes
    significant: bool  # p_holm < level
    level: float = DEFAULT_LEVEL

    @property
    def reference_recall(self) -> float:
        return self.reference_correct / self.images

    @property
    def recall(self) -> float:
        return self.correct / self.images

    def describe(self) -> str:
        return (
            f"class {self.name!r} recall {self.reference_recall:.4f} -> {self.recall:.4f} "
            f"({self.delta_pts:+.2f} pt: {self.lost} of {self.images} images lost, {self.gained} gained; "
            f"{(1 - self.level) * 100:g}% CI {self.ci_low_pts:+.2f} to {self.ci_high_pts:+.2f}; "
            f"Holm-adjusted McNemar p = {self.p_holm:.3g}"
            f"{', distinguishable from noise' if self.significant else ''})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "reference_recall": self.reference_recall,
            "recall": self.recall,
            "text": self.describe(),
        }


class PairedCounter:
    """Streams (original logits, artifact logits, labels) batches into the two discordant counts,
    overall and per class (the class is the image's label)."""

    def __init__(self) -> None:
        self.total = 0
        self.lost = 0
        self.gained = 0
        # Per class, grown to the largest label or logit width seen: images, right by the original,
        # right by the artifact, lost, gained.
        self.per_class = np.zeros((5, 0), dtype=np.int64)

    def update(self, reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> None:
        labels = np.asarray(labels)
        ref_right = np.asarray(reference).argmax(axis=1) == labels
        cand_right = np.asarray(candidate).argmax(axis=1) == labels
        self.total += int(ref_right.shape[0])
        self.lost += int((ref_right & ~cand_right).sum())
        self.gained += int((~ref_right & cand_right).sum())
        width = max(self.per_class.shape[1], np.asarray(reference).shape[1], int(labels.max(initial=-1)) + 1)
        if width > self.per_class.shape[1]:
            self.per_class = np.pad(self.per_class, ((0, 0), (0, width - self.per_class.shape[1])))
        # An unlabelled image (edge_tl.data.UNLABELED, negative) belongs to no class.
        labelled = labels >= 0
        for row, mask in enumerate(
            (np.ones_like(ref_right), ref_right, cand_right, ref_right & ~cand_right, ~ref_right & cand_right)
        ):
            self.per_class[row] += np.bincount(labels[mask & labelled], minlength=width)

    @classmethod
    def from_class_counts(cls, counts: list[list[int]]) -> PairedCounter:
        """A counter holding stored per-class counts (``per_class.tolist()``, e.g. from a device's result)."""
        counter = cls()
        counter.per_class = np.asarray(counts, dtype=np.int64).reshape(5, -1)
        counter.total = int(counter.per_class[0].sum())
        counter.lost = int(counter.per_class[3].sum())
        counter.gained = int(counter.per_class[4].sum())
        return counter

    def class_changes(self, names: list[str] | tuple[str, ...], *, level: float = DEFAULT_LEVEL) -> list[ClassChange]:
        """Every class with validation images: recall change, exact McNemar (Holm-corrected over
        those classes) and Tango's interval, on that class's images."""
        _check_level(level)
        images, ref_right, right, lost, gained = (self.per_class[i].tolist() for i in range(5))
        present = [c for c in range(len(images)) if images[c]]
        p_values = [mcnemar_exact(lost[c], gained[c]) for c in present]
        changes = []
        for c, p, adjusted in zip(present, p_values, holm(p_values)):
            low, high = tango_interval(images[c], lost[c], gained[c], level=level)
            changes.append(
                ClassChange(
                    index=c,
                    name=str(names[c]) if c < len(names) else str(c),
                    images=images[c],
                    reference_correct=ref_right[c],
                    correct=right[c],
                    lost=lost[c],
                    gained=gained[c],
                    delta_pts=(gained[c] - lost[c]) / images[c] * 100,
                    ci_low_pts=low * 100,
                    ci_high_pts=high * 100,
                    p_value=p,
                    p_holm=adjusted,
                    significant=adjusted < level,
                    level=level,
                )
            )
        return changes

    def result(self, *, level: float = DEFAULT_LEVEL) -> PairedComparison | None:
        if self.total == 0:
            return None
        return PairedComparison.from_counts(self.total, self.lost, self.gained, level=level)
