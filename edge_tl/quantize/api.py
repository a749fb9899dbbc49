"""``quantize_run``: a run's FP32 ONNX -> INT8 by a recipe, held to an accuracy budget.

INT8 flow:

1. load the recipe; pick calibration images (``calibrate.calibration_samples``);
2. observe the activations the recipe quantizes, streaming (``calibrate.collect``);
3. write the INT8 model (TensorRT-style Q/DQ, ONNX Runtime Q/DQ) or the TensorRT cache;
4. measure top-1 on the validation split against the original PyTorch model;
5. with ``max_accuracy_drop``: when the drop is over budget, rank the quantized
   layers by sensitivity (how much closer to FP32 the logits get on calibration
   images when that one layer stays in float) and return them to float one at a
   time, most sensitive first, re-measuring each time, until the budget is met; if
   it never is, keep the best attempt, label it failing, and raise.

Everything lands in ``quantize/<recipe>/`` with manifest records.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_tl._lazy import lazy_import
from edge_tl.artifacts import (
    ONNX_FP16,
    ONNX_FP32,
    ArtifactKind,
    calib_cache,
    calib_table,
    onnx_int8,
    reference_artifact,
)
from edge_tl.errors import ConfigError, DataError, RunError, ToleranceError
from edge_tl.quantize import calibrate, graph, qdq_onnxruntime, qdq_tensorrt, trt_cache
from edge_tl.quantize.observers import TensorRange
from edge_tl.quantize.recipes import CalibMethod, OutputFormat, Recipe, load_recipe
from edge_tl.runs import (
    Run,
    atomic_write_bytes,
    atomic_write_json,
    now_iso,
    tool_versions,
)
from edge_tl.vocab import QUANTIZE_PRECISIONS, Precision, accept

STAGE = "quantize"
SOURCE_ARTIFACT = ONNX_FP32
DEFAULT_RECIPE = "onnxruntime-cpu-int8"
MODEL_FILE = "model.int8.onnx"
TABLE_FILE = "calibration_table.json"
CACHE_FILE = "calibration.cache"


#: The one :class:`~edge_tl.vocab.Precision` (this name is kept for callers); quantize writes these two.
QuantPrecision = Precision


def accept_precision(value: Precision | str) -> Precision:
    return accept(
        Precision, value, QUANTIZE_PRECISIONS, message=lambda v, c: f"quantize writes {c}; --precision {v!r} is not one"
    )


@dataclass(frozen=True)
class QuantizeConfig:
    precision: QuantPrecision = QuantPrecision.INT8
    recipe: str = DEFAULT_RECIPE  # a shipped name or a TOML path
    calib_method: CalibMethod | None = None  # None = the recipe's
    calib_samples: int | None = None  # None = the recipe's
    calib_data: Path | None = None  # None = the run's training split
    seed: int = 0
    max_accuracy_drop: float | None = None  # top-1 points; None = measure, do not enforce
    max_float_layers: int = 16
    sensitivity_images: int = 64
    eval_batch_size: int = 32
    cache_version: int | None = None  # None = from --target's TensorRT, else the recipe's [cache] cache_version
    target: str | None = None  # a device profile (name or TOML): its TensorRT names the calibration cache
    tensorrt: str | None = None  # one of the target's TensorRT releases (default: its default release)
    latency_iterations: int = 30
    threads: int | None = None  # intra-op threads of calibration, evaluation and latency (None = library default)

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", accept_precision(self.precision))
        if self.max_accuracy_drop is not None and not self.max_accuracy_drop >= 0:
            raise ConfigError(f"--max-accuracy-drop is in top-1 points and must be >= 0, got {self.max_accuracy_drop}")
        if self.calib_samples is not None and self.calib_samples < 1:
            raise ConfigError(f"--calib-samples must be >= 1, got {self.calib_samples}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}; leave it unset for the library default")
        if self.max_float_layers < 0 or self.sensitivity_images < 1 or self.eval_batch_size < 1:
            raise ConfigError("max_float_layers must be >= 0, sensitivity_images and eval_batch_size >= 1")


@dataclass(frozen=True)
class Attempt:
    float_layers: tuple[str, ...]
    top1: float
    drop_points: float

    def to_dict(self) -> dict[str, Any]:
        return {"float_layers": list(self.float_layers), "top1": self.top1, "drop_points": self.drop_points}


@dataclass(frozen=True)
class QuantizeResult:
    run_dir: Path
    recipe: str
    precision: QuantPrecision
    artifacts: tuple[str, ...]
    model_path: Path | None = None
    table_path: Path | None = None
    cache_path: Path | None = None
    reference_top1: float | None = None
    top1: float | None = None
    drop_points: float | None = None
    budget_points: float | None = None
    budget_met: bool | None = None
    float_layers: tuple[str, ...] = ()
    sensitivity: tuple[tuple[str, float], ...] = ()  # (layer, KL to FP32 with it in float), most sensitive first
    attempts: tuple[Attempt, ...] = ()
    latency_p50_ms: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


# --------------------------------------------------------------------------- helpers


def _session(model: Any, threads: int | None = None) -> Any:
    ort = lazy_import("onnxruntime", purpose="running quantized models")
    options = ort.SessionOptions()
    from edge_tl.runtime.onnxruntime_runner import has_fp16_qdq

    # A Q/DQ graph with float16 scales is run as written (see has_fp16_qdq).
    level = "ORT_DISABLE_ALL" if has_fp16_qdq(model) else "ORT_ENABLE_ALL"
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])


def _logits(session: Any, images: np.ndarray) -> np.ndarray:
    inp = session.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    if fixed is None or fixed == images.shape[0]:
        return np.asarray(session.run(None, {inp.name: images})[0], dtype=np.float32)
    outs = []
    for start in range(0, images.shape[0], fixed):
        chunk = images[start : start + fixed]
        real = chunk.shape[0]
        if real < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - real, *chunk.shape[1:]), dtype=chunk.dtype)])
        outs.append(np.asarray(session.run(None, {inp.name: chunk})[0], dtype=np.float32)[:real])
    return np.concatenate(outs)


def _top1(session: Any, samples: Sequence[Any], prep: Any, batch_size: int) -> float:
    from edge_tl.data import iter_batches

    correct = total = 0
    for images, labels in iter_batches(list(samples), prep, batch_size):
        correct += int((_logits(session, images).argmax(axis=1) == labels).sum())
        total += labels.shape[0]
    return correct / total


def _reference_top1(run: Run, samples: Sequence[Any], prep: Any, batch_size: int, threads: int | None) -> float:
    """Top-1 of the original model: the reference every artifact is judged by (the fine-tuned or
    imported PyTorch model, or for an ONNX import the imported ONNX FP32 model)."""
    from edge_tl.data import iter_batches
    from edge_tl.models import load_run_model

    reference = run.artifact(reference_artifact(run))
    if reference.kind == ArtifactKind.ONNX:
        onnx = lazy_import("onnx", purpose="measuring the original model's accuracy")
        return _top1(
            _session(onnx.load(str(run.artifact_path(reference.name, check_hash=True))), threads),
            samples,
            prep,
            batch_size,
        )

    torch = lazy_import("torch", purpose="measuring the original model's accuracy")
    model = load_run_model(run)
    before = torch.get_num_threads()
    if threads is not None:
        # On a busy machine OpenMP threads that spin-wait for each other can make a small
        # model 50x slower than one thread; the caller decides.
        torch.set_num_threads(threads)
    correct = total = 0
    try:
        with torch.inference_mode():
            for images, labels in iter_batches(list(samples), prep, batch_size):
                logits = model(torch.from_numpy(images)).numpy()
                correct += int((logits.argmax(axis=1) == labels).sum())
                total += labels.shape[0]
    finally:
        torch.set_num_threads(before)
    return correct / total


def _kl(reference: np.ndarray, candidate: np.ndarray) -> float:
    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z.astype(np.float64) - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    lp, lq = log_softmax(reference), log_softmax(candidate)
    return float((np.exp(lp) * (lp - lq)).sum(axis=1).mean())


def _p50_ms(model: Any, shape: Sequence[int], iterations: int, threads: int | None) -> float:
    session = _session(model, threads)
    inp = session.get_inputs()[0]
    batch = np.random.default_rng(0).standard_normal((1, *shape[1:]), dtype=np.float32)
    feed = {inp.name: batch}
    for _ in range(5):
        session.run(None, feed)
    times = []
    for _ in range(iterations):
        start = time.perf_counter_ns()
        session.run(None, feed)
        times.append((time.perf_counter_ns() - start) / 1e6)
    return float(np.median(times))


def _input_chw(model: Any) -> tuple[int, ...]:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value if d.dim_value else 1 for d in dims)


# --------------------------------------------------------------------------- main entry


def quantize_run(
    run_dir: str | os.PathLike[str],
    *,
    config: QuantizeConfig = QuantizeConfig(),
    progress: Callable[[str], None] | None = None,
) -> QuantizeResult:
    """Quantize the run's ``onnx-fp32`` artifact (INT8 by a recipe), or produce ``onnx-fp16``."""
    say = progress or (lambda _msg: None)
    # Absolute, so that paths built from run.path() are recorded relative to the run (not twice).
    run = Run.open(Path(run_dir).resolve())
    if config.precision is QuantPrecision.FP16:
        return _fp16(run, say)
    recipe = load_recipe(config.recipe)
    # Checked before calibrating: a target whose TensorRT reads no cache fails at once.
    for_target = _target_cache_version(config) if recipe.output is OutputFormat.TENSORRT_CACHE else None
    onnx = lazy_import("onnx", purpose="quantization")
    from edge_tl.data import split_from_run
    from edge_tl.models import Preprocessing

    prep = Preprocessing.from_dict(run.require("preprocessing", stage=STAGE))
    source = run.artifact(SOURCE_ARTIFACT)
    model = graph.ensure_node_names(onnx.load(str(run.artifact_path(SOURCE_ARTIFACT, check_hash=True))))
    method = config.calib_method or recipe.calibration.method
    num_samples = config.calib_samples or recipe.calibration.num_samples

    samples = calibrate.calibration_samples(
        run, calib_data=config.calib_data, num_samples=num_samples, seed=config.seed
    )
    batches = calibrate.image_batches(samples, prep, recipe.calibration.batch_size)

    if recipe.output is OutputFormat.QDQ_TENSORRT:
        tensors = list(qdq_tensorrt.plan(model, recipe).activation_tensors)
    else:
        tensors = graph.float_activations(model)
        if recipe.output is OutputFormat.TENSORRT_CACHE:
            tensors = [t for t in tensors if not graph.matches(t, recipe.placement.keep_float)]
    say(f"calibrating {len(tensors)} tensors on {len(samples)} images ({method.value})")
    observers = calibrate.collect(
        model,
        tensors,
        batches,
        num_bins=recipe.calibration.num_bins,
        histogram=method is not CalibMethod.MINMAX,
        threads=config.threads,
    )
    ranges = observers.ranges(method, percentile=recipe.calibration.percentile)

    out_dir = run.path(STAGE, recipe.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    calib_info = {
        "method": method.value,
        "percentile": recipe.calibration.percentile if method is CalibMethod.PERCENTILE else None,
        "num_bins": recipe.calibration.num_bins,
        "num_samples": len(samples),
        "requested_samples": num_samples,
        "data": str(config.calib_data or (run.get("data") or {}).get("calib_source") or "run training split"),
        "seed": config.seed,
    }
    table_path = atomic_write_json(
        out_dir / TABLE_FILE,
        {
            "format": "edge-tl-calibration-table",
            "version": 1,
            "created": now_iso(),
            "recipe": recipe.name,
            "model": source.path,
            "model_sha256": source.sha256,
            "calibration": calib_info,
            "tensors": {name: r.to_dict() for name, r in ranges.items()},
        },
    )
    table_name, artifacts = calib_table(recipe.name), [calib_table(recipe.name)]
    run.add_artifact(
        table_name,
        kind="calibration-table",
        path=table_path,
        stage=STAGE,
        details={
            "recipe": recipe.name,
            "source": SOURCE_ARTIFACT,
            "calibration": calib_info,
            "num_tensors": len(ranges),
        },
    )

    if recipe.output is OutputFormat.TENSORRT_CACHE:
        return _write_cache(run, recipe, model, ranges, config, for_target, out_dir, table_path, calib_info, artifacts)

    val = list(split_from_run(run).val)
    if not val:
        raise DataError(
            f"run {str(run.root)!r} has no validation images; INT8 accuracy is measured on them "
            "(for an imported run: import again with --val-data DIR)"
        )

    def build(float_layers: Sequence[str]) -> Any:
        if recipe.output is OutputFormat.QDQ_TENSORRT:
            return qdq_tensorrt.write(model, ranges, qdq_tensorrt.plan(model, recipe, float_layers=float_layers))
        return qdq_onnxruntime.write(model, ranges, recipe, float_layers=float_layers)

    if recipe.output is OutputFormat.QDQ_TENSORRT:
        quantized_layers = list(qdq_tensorrt.plan(model, recipe).quantized_layers)
    else:
        quantized_layers = qdq_onnxruntime.quantizable_layers(model, recipe)[0]

    say(f"measuring the original model and INT8 on {len(val)} validation images")
    reference = _reference_top1(run, val, prep, config.eval_batch_size, config.threads)
    best_model = build(())
    budget = config.max_accuracy_drop

    def measure(float_layers: tuple[str, ...]) -> float:
        candidate = best_model if not float_layers else build(float_layers)
        return _top1(_session(candidate, config.threads), val, prep, config.eval_batch_size)

    def rank() -> list[tuple[str, float]]:
        say(f"ranking {len(quantized_layers)} layers by sensitivity")
        return _rank(model, build, quantized_layers, samples[: config.sensitivity_images], prep, config)

    attempts, sensitivity, chosen, met = search_float_layers(
        reference, budget=budget, max_float_layers=config.max_float_layers, rank=rank, measure=measure, say=say
    )
    final = best_model if not chosen.float_layers else build(chosen.float_layers)

    shape = _input_chw(model)
    latency = {
        "fp32": _p50_ms(model, shape, config.latency_iterations, config.threads),
        "int8_all_layers": _p50_ms(best_model, shape, config.latency_iterations, config.threads),
    }
    if chosen.float_layers:
        latency["int8_final"] = _p50_ms(final, shape, config.latency_iterations, config.threads)
    else:
        latency["int8_final"] = latency["int8_all_layers"]

    model_path = atomic_write_bytes(out_dir / MODEL_FILE, final.SerializeToString())
    status = {True: "passing", False: "failing", None: "no-budget"}[met]
    name = onnx_int8(recipe.name)
    details = dict(source.details)
    details.update(
        {
            "source": SOURCE_ARTIFACT,
            "recipe": recipe.to_dict(),
            "calibration": calib_info,
            "quantized_layers": len(quantized_layers) - len(chosen.float_layers),
            "float_layers": list(chosen.float_layers),
            "status": status,
            "tool_versions": tool_versions("onnx", "onnxruntime"),
            "ops": {
                op: sum(1 for n in final.graph.node if n.op_type == op)
                for op in sorted({n.op_type for n in final.graph.node})
            },
        }
    )
    metrics = {
        "val_top1": chosen.top1,
        "reference_top1": reference,
        "accuracy_drop_points": chosen.drop_points,
        "max_accuracy_drop_points": budget,
        "accuracy_budget_met": met,
        "num_val_images": len(val),
        "attempts": [a.to_dict() for a in attempts],
        "sensitivity": [{"layer": n, "kl_with_layer_in_float": s} for n, s in sensitivity],
        "latency_p50_ms_onnxruntime_cpu_b1": latency,
        "latency_cost_of_float_layers": latency["int8_final"] / latency["int8_all_layers"],
    }
    run.add_artifact(
        name, kind="onnx", path=model_path, stage=STAGE, precision="int8", details=details, metrics=metrics
    )
    artifacts.insert(0, name)
    if recipe.output is OutputFormat.QDQ_TENSORRT and _builds_strongly_typed(config):
        artifacts.insert(1, _strongly_typed_variant(run, name, final, details, reference, val, prep, config, say))
    result = QuantizeResult(
        run.root,
        recipe.name,
        QuantPrecision.INT8,
        tuple(artifacts),
        model_path=model_path,
        table_path=table_path,
        reference_top1=reference,
        top1=chosen.top1,
        drop_points=chosen.drop_points,
        budget_points=budget,
        budget_met=met,
        float_layers=chosen.float_layers,
        sensitivity=tuple(sensitivity),
        attempts=tuple(attempts),
        latency_p50_ms=latency,
    )
    if met is False:
        tried = len(attempts) - 1
        raise ToleranceError(
            f"INT8 ({recipe.name}) could not meet --max-accuracy-drop {budget:g} pt: the best of {len(attempts)} attempts "
            f"drops {chosen.drop_points:.2f} pt (top-1 {chosen.top1:.4f} vs {reference:.4f}) with {len(chosen.float_layers)} "
            f"layer(s) in float after trying up to {tried}. It is kept at {str(model_path)!r}, recorded as {name!r} with "
            "status 'failing'. Try more calibration images, another --calib-method, a larger --max-float-layers, or FP16."
        )
    return result


def _builds_strongly_typed(config: QuantizeConfig) -> bool:
    """Whether the FP16-float-part variant is wanted: for TensorRT 11 (always strongly typed), or when no
    target says which TensorRT will build. TensorRT 8.x/10.x plans build the FP32 Q/DQ model weakly
    typed with --int8 --fp16 (edge_tl.compile.plan), so for such a target the variant is not made."""
    if config.target is None:
        return True
    from edge_tl.targets import load_target

    return load_target(config.target).release(config.tensorrt).version.major >= 11


def _strongly_typed_variant(
    run: Run,
    name: str,
    final: Any,
    details: dict[str, Any],
    reference: float,
    val: Sequence[Any],
    prep: Any,
    config: QuantizeConfig,
    say: Callable[[str], None],
) -> str:
    """``<name>-fp16``: the same Q/DQ model with an FP16 float part, for strongly typed builds (TensorRT 11)."""
    from edge_tl.quantize.fp16_float import FP16_OPSET, float_part_to_fp16, raise_small_scales

    raised_model = type(final)()
    raised_model.CopyFrom(final)
    raised = raise_small_scales(raised_model)
    model, kept = float_part_to_fp16(raised_model)
    top1 = _top1(_session(model, config.threads), val, prep, config.eval_batch_size)
    drop = (reference - top1) * 100
    say(f"FP16 float part for strongly typed TensorRT: top-1 {top1:.4f} (drop {drop:.2f} pt)")
    over = config.max_accuracy_drop is not None and drop > config.max_accuracy_drop
    if over:
        say(
            f"WARNING: the FP16 float part drops {drop:.2f} pt, over the {config.max_accuracy_drop} pt budget: "
            "a strongly typed (TensorRT 11) engine built from it would not meet the budget; `edge-tl verify` gates it"
        )
    path = atomic_write_bytes(
        run.path(STAGE, details["recipe"]["name"], MODEL_FILE.replace(".onnx", ".fp16.onnx")), model.SerializeToString()
    )
    variant = f"{name}-fp16"
    info = dict(details)
    info.update(
        {
            "source": name,
            "opset": FP16_OPSET,
            "float_part": "float16",
            "kept_fp32": kept,
            # channels whose scale was under float16's smallest normal: raised to it (weights requantized)
            "scales_raised_to_fp16_min": raised,
            "onnxruntime_graph_optimization": "disabled (see runtime.onnxruntime_runner.has_fp16_qdq)",
            "for": "strongly typed TensorRT builds (11.x): layers outside Q/DQ pairs run FP16",
            "ops": {
                op: sum(1 for n in model.graph.node if n.op_type == op)
                for op in sorted({n.op_type for n in model.graph.node})
            },
        }
    )
    run.add_artifact(
        variant,
        kind="onnx",
        path=path,
        stage=STAGE,
        precision="int8",
        details=info,
        metrics={
            "val_top1": top1,
            "reference_top1": reference,
            "accuracy_drop_points": drop,
            "num_val_images": len(val),
            "accuracy_budget_met": None if config.max_accuracy_drop is None else not over,
        },
    )
    return variant


def search_float_layers(
    reference: float,
    *,
    budget: float | None,
    max_float_layers: int,
    rank: Callable[[], Sequence[tuple[str, float]]],
    measure: Callable[[tuple[str, ...]], float],
    say: Callable[[str], None] = lambda _msg: None,
) -> tuple[list[Attempt], list[tuple[str, float]], Attempt, bool | None]:
    """The accuracy-budget search: which layers stay in float.

    ``measure(float_layers)`` is the top-1 with those layers in float (``()``: all INT8);
    ``rank()`` the layers with their sensitivity, least KL (most helped by float) first,
    asked for only when the all-INT8 model is over budget. Layers go back to float one at
    a time in that order, at most ``max_float_layers``, stopping at the first attempt
    within budget. Returns (attempts, sensitivity, chosen, met): ``chosen`` is the first
    attempt within budget, else the one with the smallest drop; ``met`` is None without
    a budget.
    """
    top1 = measure(())
    attempts = [Attempt((), top1, (reference - top1) * 100.0)]
    sensitivity: list[tuple[str, float]] = []
    if budget is not None and attempts[0].drop_points > budget and max_float_layers > 0:
        say(f"drop {attempts[0].drop_points:.2f} pt > budget {budget:.2f} pt")
        sensitivity = list(rank())
        for k in range(1, min(max_float_layers, len(sensitivity)) + 1):
            floats = tuple(name for name, _ in sensitivity[:k])
            top1 = measure(floats)
            attempts.append(Attempt(floats, top1, (reference - top1) * 100.0))
            say(f"  {k} float layer(s) ({floats[-1]}): drop {attempts[-1].drop_points:.2f} pt")
            if attempts[-1].drop_points <= budget:
                break
    met = None if budget is None else any(a.drop_points <= budget for a in attempts)
    chosen = next(a for a in attempts if a.drop_points <= budget) if met else min(attempts, key=lambda a: a.drop_points)
    return attempts, sensitivity, chosen, met


def _rank(
    model: Any,
    build: Callable[[Sequence[str]], Any],
    layers: Sequence[str],
    samples: Sequence[Any],
    prep: Any,
    config: QuantizeConfig,
) -> list[tuple[str, float]]:
    """Layers by how much their quantization hurts: the KL divergence from FP32 logits on
    calibration images with that one layer in float (lower = floating it helps more)."""
    from edge_tl.data import iter_batches

    images = np.concatenate([b for b, _ in iter_batches(list(samples), prep, config.eval_batch_size)])
    reference = _logits(_session(model, config.threads), images)
    scores = [(name, _kl(reference, _logits(_session(build([name]), config.threads), images))) for name in layers]
    return sorted(scores, key=lambda item: item[1])


def _write_cache(
    run: Run,
    recipe: Recipe,
    model: Any,
    ranges: dict[str, TensorRange],
    config: QuantizeConfig,
    for_target: int | None,
    out_dir: Path,
    table_path: Path,
    calib_info: dict[str, Any],
    artifacts: list[str],
) -> QuantizeResult:
    if recipe.cache is None:
        raise ConfigError(f"recipe {recipe.source}: output 'tensorrt-cache' needs a [cache] table")
    version = config.cache_version or for_target or recipe.cache.cache_version
    cache = trt_cache.cache_from_amax(
        {n: r.amax for n, r in ranges.items()}, version=version, algorithm=recipe.cache.algorithm
    )
    known = set(graph.float_activations(model))
    unknown = [n for n in cache.scales if n not in known]
    if unknown:
        raise RunError(f"calibration produced names that are not tensors of the FP32 ONNX: {unknown[:5]}")
    path = trt_cache.write_cache(out_dir / CACHE_FILE, cache)
    name = calib_cache(recipe.name)
    run.add_artifact(
        name,
        kind="calibration-cache",
        path=path,
        stage=STAGE,
        precision="int8",
        details={
            "recipe": recipe.to_dict(),
            "source": SOURCE_ARTIFACT,
            "calibration": calib_info,
            "header": f"TRT-{version}-{recipe.cache.algorithm}",
            "num_tensors": len(cache.scales),
            "cache_version_from": "--cache-version"
            if config.cache_version
            else (f"target {config.target}" if for_target else "recipe"),
            "note": "use with the onnx-fp32 artifact; TensorRT 8.5-10.x implicit quantization reads it "
            "(trtexec --int8 --calib=FILE); its accuracy is measured on the built engine",
        },
    )
    artifacts.insert(0, name)
    return QuantizeResult(
        run.root,
        recipe.name,
        QuantPrecision.INT8,
        tuple(artifacts),
        table_path=table_path,
        cache_path=path,
        notes=("implicit quantization: accuracy is measured on the engine TensorRT builds from this cache",),
    )


def _target_cache_version(config: QuantizeConfig) -> int | None:
    """The TensorRT library version a cache for ``config.target`` must carry in its header."""
    if config.target is None:
        return None
    from edge_tl.targets import load_target

    target = load_target(config.target)
    release = target.release(config.tensorrt)
    if release.version.major >= 11:
        raise ConfigError(
            f"target {target.name!r} builds with TensorRT {release.version}, which cannot read a calibration cache "
            "(calibrators were removed in TensorRT 11): use --recipe tensorrt-int8-qdq, or a TensorRT 10 release "
            "of the target (--tensorrt)"
        )
    return release.version.library_version


def _fp16(run: Run, say: Callable[[str], None]) -> QuantizeResult:
    """FP16 comes from export (same conversion, same parity check); made here only if missing."""
    from edge_tl.export import ExportConfig, Precision, export_run

    if run.has_artifact(ONNX_FP16):
        say("onnx-fp16 already exists (made by export); nothing to do")
        art = run.artifact(ONNX_FP16)
        return QuantizeResult(
            run.root,
            "fp16",
            QuantPrecision.FP16,
            (ONNX_FP16,),
            model_path=run.root / art.path,
            notes=("already produced by export",),
        )
    say("producing onnx-fp16 with export's FP16 conversion and parity check")
    result = export_run(run.root, config=ExportConfig(precisions=(Precision.FP16,)), progress=say)
    path = next(m.path for m in result.models if m.name == ONNX_FP16)
    return QuantizeResult(run.root, "fp16", QuantPrecision.FP16, (ONNX_FP16,), model_path=path)
