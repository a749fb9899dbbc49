"""Generated hostile input for the parsers of what a device sends back and of the stored records:
every input ends in a typed refusal or in a record whose every number is finite, never a traceback.
The budget is bounded (max_examples) so that the suite stays fast."""

from __future__ import annotations

import json
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_tl.deploy.modes import Measurement, exported_logits, parse_device_result
from edge_tl.deploy.record import DeviceValueError, check_logits
from edge_tl.errors import RemoteError
from edge_tl.verify.deploy_records import entry_problem

BUDGET = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Numbers a hostile device prints: huge, tiny, negative, non-finite, of the wrong type.
_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)
_STATS_KEYS = ("batch_size", "iterations", "mean_ms", "std_ms", "min_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms",
               "max_ms", "throughput_ips", "cv")  # fmt: skip
_GOOD_STATS = {"batch_size": 1, "iterations": 20, "mean_ms": 1.2, "std_ms": 0.1, "min_ms": 1.0, "p50_ms": 1.1,
               "p90_ms": 1.3, "p95_ms": 1.4, "p99_ms": 1.5, "max_ms": 1.6, "throughput_ips": 833.3,
               "cv": 0.08}  # fmt: skip
_GOOD = {"artifact": "onnx-fp32", "kind": "onnx", "backend": "onnxruntime", "gpu_compute": None,
         "end_to_end": _GOOD_STATS, "latency": {"p50_ms": 1.0, "p99_ms": 2.0, "throughput_ips": 900.0,
                                                "batch_size": 1}}  # fmt: skip


def _mutated(base: dict, keys: tuple[str, ...]) -> st.SearchStrategy[dict]:
    """``base`` with some of ``keys`` replaced by hostile values or removed."""
    return st.fixed_dictionaries({}, optional={k: st.one_of(_NUMBERS, st.just(base.get(k))) for k in keys}).map(
        lambda changes: {**base, **changes}
    )


_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.floats(), st.integers(), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20,
)
_RESULTS = st.one_of(
    _JSON,
    _mutated(_GOOD, ("artifact", "kind", "backend", "edge_tl")),
    _mutated(_GOOD["latency"], ("p50_ms", "p99_ms", "throughput_ips", "batch_size")).map(
        lambda latency: {**_GOOD, "latency": latency}
    ),
    _mutated(_GOOD_STATS, _STATS_KEYS).map(lambda stats: {**_GOOD, "end_to_end": stats}),
    _mutated(_GOOD_STATS, _STATS_KEYS).map(lambda stats: {**_GOOD, "gpu_compute": stats}),
    _JSON.map(lambda value: {**_GOOD, "gpu_compute": value}),
)


# Statistics trtexec's text summary does not print (edge_tl.bench.trtexec): NaN there means "not known".
_MAY_BE_NAN = ("std_ms", "cv", "p90_ms", "p95_ms", "p99_ms")


def _finite_numbers(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite_numbers(v) for k, v in value.items() if k not in _MAY_BE_NAN)
    if isinstance(value, list):
        return all(_finite_numbers(v) for v in value)
    return True


@BUDGET
@given(_RESULTS)
def test_the_device_result_parser_refuses_with_a_typed_error_or_gives_finite_numbers(data):
    try:
        parsed = parse_device_result(data, where="result.json")
    except DeviceValueError as exc:
        assert "\n" not in str(exc)
        return
    # Accepted: what deploy reads from it is typed and finite, and a Measurement takes it as it is.
    latency = parsed["latency"]
    assert _finite_numbers([latency[k] for k in ("p50_ms", "p99_ms", "throughput_ips")])
    assert _finite_numbers(parsed.get("gpu_compute")) and _finite_numbers(parsed.get("end_to_end"))
    measured = Measurement(artifact=parsed["artifact"], kind=parsed["kind"], backend=parsed["backend"],
                           p50_ms=latency["p50_ms"], p99_ms=latency["p99_ms"], throughput_ips=latency["throughput_ips"],
                           batch_size=latency["batch_size"], gpu_compute=parsed.get("gpu_compute"),
                           end_to_end=parsed.get("end_to_end"))  # fmt: skip
    assert measured.p50_ms <= measured.p99_ms


@BUDGET
@given(st.one_of(st.binary(max_size=200), _JSON.map(lambda v: json.dumps(v).encode())))
def test_trtexec_exported_output_is_logits_or_a_remote_error(data):
    try:
        logits = exported_logits(data, output="logits", count=2, classes=3, where="out.json")
    except RemoteError as exc:
        assert "\n" not in str(exc)
        return
    assert logits.shape == (2, 3) and np.isfinite(logits).all()


@BUDGET
@given(
    st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=0, max_size=12),
    st.sampled_from(["float32", "float64", "int32", "complex64", "bool"]),
)
def test_device_logits_are_finite_floats_or_a_device_failure(values, dtype):
    with np.errstate(all="ignore"):
        array = np.asarray(values, dtype=np.float64).astype(dtype)
    array = array.reshape(-1, 3) if array.size % 3 == 0 else array
    try:
        checked = check_logits(array, classes=3, rows=None, where="device")
    except DeviceValueError:
        return
    assert checked.dtype.kind == "f" and np.isfinite(checked).all()


_ENTRY = {"artifact": "onnx-fp32", "num_images": 64, "top1": 0.5, "reference_top1": 0.5,
          "latency_ms": {"p50": 1.0, "p99": 2.0, "batch_size": 1}}  # fmt: skip


@BUDGET
@given(
    st.one_of(
        _JSON,
        _mutated(_ENTRY, ("artifact", "num_images", "top1", "reference_top1", "top5", "mean_kl", "size_bytes")),
        _mutated(_ENTRY["latency_ms"], ("p50", "p99", "batch_size")).map(lambda lat: {**_ENTRY, "latency_ms": lat}),
        _JSON.map(lambda value: {**_ENTRY, "end_to_end": value}),
    )
)
def test_a_stored_entry_is_a_measurement_or_one_named_problem(entry):
    problem = entry_problem(entry)
    if problem is not None:
        assert isinstance(problem, str) and "\n" not in problem
        return
    assert isinstance(entry, dict) and _finite_numbers(entry) and 0 <= entry["top1"] <= 1
