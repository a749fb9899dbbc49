"""Streaming accuracy and agreement metrics (numpy only).

Both accumulators take one batch at a time and keep a few running sums, so memory
does not grow with the number of images. Export parity and verification share them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def mean_kl(reference: np.ndarray, candidate: np.ndarray) -> float:
    """KL(softmax(reference) || softmax(candidate)) in nats per image, averaged over the images of one batch
    of logits: how far a candidate's predictions moved from the reference's (quantize ranks layers by it)."""
    log_p, log_q = _log_softmax(np.asarray(reference)), _log_softmax(np.asarray(candidate))
    return float((np.exp(log_p) * (log_p - log_q)).sum(axis=1).mean())


@dataclass(frozen=True)
class Accuracy:
    num_images: int
    top1: float
    top5: float | None  # None with fewer than 5 classes, where top-5 means nothing

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AccuracyAccumulator:
    def __init__(self) -> None:
        self.n = 0
        self.correct1 = 0
        self.correct5 = 0
        self.num_classes: int | None = None

    def update(self, logits: np.ndarray, labels: np.ndarray) -> None:
        logits = np.asarray(logits)
        labels = np.asarray(labels)
        if logits.shape[0] != labels.shape[0]:
            raise ValueError(f"{logits.shape[0]} rows of logits for {labels.shape[0]} labels")
        self.num_classes = logits.shape[1]
        self.n += labels.shape[0]
        self.correct1 += int((logits.argmax(axis=1) == labels).sum())
        if self.num_classes >= 5:
            top5 = np.argpartition(-logits, 4, axis=1)[:, :5]
            self.correct5 += int((top5 == labels[:, None]).any(axis=1).sum())

    def result(self) -> Accuracy:
        if self.n == 0:
            return Accuracy(0, float("nan"), None)
        top5 = self.correct5 / self.n if self.num_classes is not None and self.num_classes >= 5 else None
        return Accuracy(self.n, self.correct1 / self.n, top5)


@dataclass(frozen=True)
class Agreement:
    """How a candidate's logits compare with the reference's on the same images."""

    num_images: int
    top1_agreement: float
    max_abs_diff: float
    mean_abs_diff: float
    mean_kl: float  # KL(softmax(reference) || softmax(candidate)), nats, averaged over images
    num_outside_tolerance: int  # elements with |c - r| > atol + rtol * |r|

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AgreementAccumulator:
    def __init__(self, *, atol: float = 0.0, rtol: float = 0.0) -> None:
        self.atol = atol
        self.rtol = rtol
        self.n = 0
        self.agree = 0
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.elements = 0
        self.sum_kl = 0.0
        self.outside = 0

    def update(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        ref = np.asarray(reference, dtype=np.float64)
        cand = np.asarray(candidate, dtype=np.float64)
        if ref.shape != cand.shape:
            raise ValueError(f"reference logits {ref.shape} and candidate logits {cand.shape} differ in shape")
        diff = np.abs(cand - ref)
        self.n += ref.shape[0]
        self.agree += int((ref.argmax(axis=1) == cand.argmax(axis=1)).sum())
        # NaN in the candidate must show up as a failure, not vanish in max().
        self.max_abs = max(self.max_abs, float(np.max(diff)) if not np.isnan(diff).any() else float("inf"))
        self.sum_abs += float(diff.sum())
        self.elements += diff.size
        log_p, log_q = _log_softmax(ref), _log_softmax(cand)
        self.sum_kl += float((np.exp(log_p) * (log_p - log_q)).sum())
        self.outside += int((~(diff <= self.atol + self.rtol * np.abs(ref))).sum())

    def result(self) -> Agreement:
        if self.n == 0:
            nan = float("nan")
            return Agreement(0, nan, nan, nan, nan, 0)
        return Agreement(
            num_images=self.n,
            top1_agreement=self.agree / self.n,
            max_abs_diff=self.max_abs,
            mean_abs_diff=self.sum_abs / self.elements,
            mean_kl=max(self.sum_kl / self.n, 0.0),
            num_outside_tolerance=self.outside,
        )
