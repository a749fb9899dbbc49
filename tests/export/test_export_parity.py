"""Export's parity verdict on logits of known difference: the tolerances it ships with and how it applies them.

``export_run`` (test_export_run.py) refuses a model when ``_check`` finds a failure
in the agreement it accumulated; these tests feed that same accumulator and check
synthetic candidates just inside and just outside each shipped limit, so a loosened
constant or a flipped comparison lets a bad export through here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_tl.errors import ConfigError
from edge_tl.export.api import (
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    ExportConfig,
    ExportedModel,
    ParityTolerance,
    Precision,
    _check,
)
from edge_tl.verify.metrics import AccuracyAccumulator, AgreementAccumulator

# 100 images x 10 classes of logits near zero (so rtol * |ref| is small): the reference.
REFERENCE = np.random.default_rng(0).uniform(-0.01, 0.01, size=(100, 10))
REFERENCE[np.arange(100), np.arange(100) % 10] = 5.0  # a clear top-1 per image


def _verdict(candidate: np.ndarray, tol: ParityTolerance) -> tuple[str, ...]:
    agree = AgreementAccumulator(atol=tol.atol or 0.0, rtol=tol.rtol)
    agree.update(REFERENCE, candidate)
    return _check(agree.result(), tol)


def test_shipped_tolerances() -> None:
    # The FP32 limit is what ONNX Runtime's FP32 kernels reach against PyTorch eager on
    # the CPU (about 1e-5 on the models here); FP16 is judged by top-1 agreement only.
    assert FP32_TOLERANCE == ParityTolerance(atol=1e-4, rtol=1e-3, min_agreement=0.99)
    assert FP16_TOLERANCE == ParityTolerance(atol=None, rtol=0.0, min_agreement=0.98)
    config = ExportConfig()
    assert config.tolerance(Precision.FP32) is FP32_TOLERANCE and config.tolerance(Precision.FP16) is FP16_TOLERANCE
    assert config.precisions == (Precision.FP32, Precision.FP16) and config.parity_images == 1000


def test_fp32_refuses_logits_off_by_twice_the_limit_and_accepts_half_of_it() -> None:
    assert _verdict(REFERENCE + 5e-5, FP32_TOLERANCE) == ()
    off = REFERENCE.copy()
    off[7, 3] += 2e-4  # one logit of one image, near zero: outside 1e-4 + 1e-3 * |ref|
    (failure,) = _verdict(off, FP32_TOLERANCE)
    assert failure.startswith("1 logits outside |diff| <= 0.0001 + 0.001*|ref|")


def test_fp32_relative_part_scales_with_the_logit() -> None:
    off = REFERENCE.copy()
    off[0, 0] += 4e-3  # |ref| = 5: allowed 1e-4 + 5e-3
    assert _verdict(off, FP32_TOLERANCE) == ()
    off[0, 0] += 2e-3  # 6e-3 > 5.1e-3
    assert len(_verdict(off, FP32_TOLERANCE)) == 1


def test_agreement_limits_count_images_whose_top1_moved() -> None:
    loose = ParityTolerance(atol=None, rtol=0.0, min_agreement=0.99)

    def moved(n: int) -> np.ndarray:
        candidate = REFERENCE.copy()
        for i in range(n):
            candidate[i, (i + 1) % 10] = 10.0
        return candidate

    assert _verdict(moved(1), loose) == ()  # 0.99: exactly the limit passes
    (failure,) = _verdict(moved(2), loose)
    assert failure == "top-1 agreement 0.9800 < 0.9900"
    assert _verdict(moved(2), FP16_TOLERANCE) == ()  # FP16 allows 2 in 100
    assert len(_verdict(moved(3), FP16_TOLERANCE)) == 1
    # FP16 has no element-wise limit: large logit differences with the same top-1 pass.
    assert _verdict(REFERENCE * 1.5, FP16_TOLERANCE) == ()


def test_nan_logits_are_refused_by_both_checks() -> None:
    candidate = REFERENCE.copy()
    candidate[:, 0] = np.nan
    failures = _verdict(candidate, FP32_TOLERANCE)
    assert len(failures) == 2 and failures[0].startswith("100 logits outside")
    assert "max abs diff inf" in failures[0]
    everything_nan = np.full_like(REFERENCE, np.nan)
    agree = AgreementAccumulator()
    agree.update(REFERENCE, everything_nan)
    assert _check(agree.result(), FP16_TOLERANCE) == ("top-1 agreement 0.1000 < 0.9800",)  # argmax of NaN is 0
    empty = AgreementAccumulator().result()  # no images: agreement NaN must fail, not pass
    assert _check(empty, FP16_TOLERANCE) == ("top-1 agreement nan < 0.9800",)


def test_tolerance_and_config_limits() -> None:
    for bad in (-0.01, 1.01, math.nan):
        with pytest.raises(ConfigError, match="min_agreement is a fraction in \\[0, 1\\]"):
            ParityTolerance(atol=None, rtol=0.0, min_agreement=bad)
    assert ParityTolerance(atol=None, rtol=0.0, min_agreement=0.0).min_agreement == 0.0
    assert ParityTolerance(atol=None, rtol=0.0, min_agreement=1.0).min_agreement == 1.0
    with pytest.raises(ConfigError, match=r"^choose at least one precision to export \(fp32, fp16\)$"):
        ExportConfig(precisions=())
    with pytest.raises(ConfigError, match="parity_images must be >= 1"):
        ExportConfig(parity_images=0)
    with pytest.raises(ConfigError, match="parity batch size must be >= 1, got 0"):
        ExportConfig(parity_batch_size=0)
    assert ExportConfig(parity_images=None, parity_batch_size=1).parity_images is None
    assert ExportConfig(parity_images=1).parity_images == 1


def test_recorded_metrics_name_the_tolerance_applied() -> None:
    agree = AgreementAccumulator(atol=1e-4, rtol=1e-3)
    agree.update(REFERENCE, REFERENCE)
    acc = AccuracyAccumulator()
    acc.update(REFERENCE, np.arange(100) % 10)
    model = ExportedModel("onnx-fp32", Precision.FP32, None, agree.result(), acc.result(), FP32_TOLERANCE)
    assert model.passed
    metrics = model.metrics()
    assert metrics["parity_tolerance"] == {"atol": 1e-4, "rtol": 1e-3, "min_agreement": 0.99}
    assert (metrics["parity_num_images"], metrics["parity_top1_agreement"], metrics["parity_val_top1"]) == (
        100,
        1.0,
        1.0,
    )
    assert (
        metrics["parity_max_abs_diff"],
        metrics["parity_mean_abs_diff"],
        metrics["parity_num_outside_tolerance"],
    ) == (0.0, 0.0, 0)
    assert metrics["parity_mean_kl"] == 0.0
    assert metrics["parity_runtime"] == "onnxruntime CPU, basic graph optimizations, vs PyTorch eager FP32 on the CPU"
    refused = ExportedModel("onnx-fp32", Precision.FP32, None, agree.result(), acc.result(), FP32_TOLERANCE, ("x",))
    assert not refused.passed
