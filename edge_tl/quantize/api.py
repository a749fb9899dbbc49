"""``quantize_run``: a run's FP32 ONNX -> INT8 by a recipe, held to an accuracy budget.

INT8 flow:

1. load the recipe; pick calibration images (``calibrate.calibration_samples``);
2. observe the activations the recipe quantizes, streaming (``calibrate.collect``);
3. write what the recipe's output format makes, by that format's writer (``writers``): an INT8
   model (TensorRT-style Q/DQ, ONNX Runtime Q/DQ) or a file for a later build (the TensorRT cache);
4. for a model: measure top-1 on the validation split against the original model (ONNX Runtime and
   PyTorch runners, ``verify.metrics``), and its latency (``bench.benchmark``);
5. with ``max_accuracy_drop``: when the drop is over budget, rank the quantized
   layers by sensitivity (how much closer to FP32 the logits get on calibration
   images when that one layer stays in float) and return them to float one at a
   time, most sensitive first, re-measuring each time, until the budget is met; if
   it never is, keep the best attempt, label it failing, and raise.

Everything lands in ``quantize/<recipe>/`` with manifest records. The recipe is ``--recipe``, else
the ``--target``'s (:func:`resolve_recipe`), else :data:`DEFAULT_RECIPE`.
"""

from __future__ import annotations

import os
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
    calib_table,
    onnx_int8,
    reference_artifact,
)
from edge_tl.errors import ConfigError, DataError, ToleranceError
from edge_tl.quantize.calibrate import calibration_samples, collect, image_batches
from edge_tl.quantize.graph import ensure_node_names
from edge_tl.quantize.observers import TensorRange
from edge_tl.quantize.recipes import CalibMethod, Recipe, load_recipe
from edge_tl.quantize.writers import FileWriter, ModelWriter, writer_for
from edge_tl.runs import (
    Run,
    atomic_write_bytes,
    atomic_write_json,
    now_iso,
    tool_versions,
)
from edge_tl.runtime.base import Device, Runner, RunnerOptions
from edge_tl.vocab import QUANTIZE_PRECISIONS, Precision, accept

STAGE = "quantize"
SOURCE_ARTIFACT = ONNX_FP32
DEFAULT_RECIPE = "onnxruntime-cpu-int8"
MODEL_FILE = "model.int8.onnx"
TABLE_FILE = "calibration_table.json"


#: The one :class:`~edge_tl.vocab.Precision` (this name is kept for callers); quantize writes these two.
QuantPrecision = Precision


def accept_precision(value: Precision | str) -> Precision:
    return accept(
        Precision, value, QUANTIZE_PRECISIONS, message=lambda v, c: f"quantize writes {c}; --precision {v!r} is not one"
    )


@dataclass(frozen=True)
class QuantizeConfig:
    precision: QuantPrecision = QuantPrecision.INT8
    recipe: str | None = None  # a shipped name or a TOML path; None = the target's INT8 recipe, else DEFAULT_RECIPE
    calib_method: CalibMethod | None = None  # None = the recipe's
    calib_samples: int | None = None  # None = the recipe's
    calib_data: Path | None = None  # None = the run's training split
    seed: int = 0
    max_accuracy_drop: float | None = None  # top-1 points; None = measure, do not enforce
    max_class_drop: float | None = None  # recall points of any one class; None = do not enforce
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
        if self.max_class_drop is not None and not self.max_class_drop >= 0:
            raise ConfigError(f"--max-class-drop is in recall points and must be >= 0, got {self.max_class_drop}")
        if self.calib_samples is not None and self.calib_samples < 1:
            raise ConfigError(f"--calib-samples must be >= 1, got {self.calib_samples}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}; leave it unset for the library default")
        if self.max_float_layers < 0 or self.sensitivity_images < 1 or self.eval_batch_size < 1:
            raise ConfigError("max_float_layers must be >= 0, sensitivity_images and eval_batch_size >= 1")


@dataclass(frozen=True)
class Outcome:
    """Right answers on the validation images, overall and per class (index = label): budgets are
    judged on these counts, in whole images (edge_tl.significance.over_budget)."""

    correct: int
    total: int
    class_correct: tuple[int, ...] = ()
    class_total: tuple[int, ...] = ()

    @property
    def top1(self) -> float:
        return self.correct / self.total if self.total else float("nan")


@dataclass(frozen=True)
class Attempt:
    float_layers: tuple[str, ...]
    top1: float
    drop_points: float
    # With --max-class-drop: the class whose recall fell most, and by how many points.
    worst_class: str | None = None
    worst_class_drop_points: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "float_layers": list(self.float_layers),
            "top1": self.top1,
            "drop_points": self.drop_points,
        }
        if self.worst_class is not None:
            out.update(worst_class=self.worst_class, worst_class_drop_points=self.worst_class_drop_points)
        return out


@dataclass(frozen=True)
class QuantizeResult:
    run_dir: Path
    recipe: str
    precision: QuantPrecision
    artifacts: tuple[str, ...]
    model_path: Path | None = None
    table_path: Path | None = None
    cache_path: Path | None = None  # a FileWriter's file (the TensorRT calibration cache)
    reference_top1: float | None = None
    top1: float | None = None
    drop_points: float | None = None
    budget_points: float | None = None
    budget_met: bool | None = None
    float_layers: tuple[str, ...] = ()
    sensitivity: tuple[tuple[str, float], ...] = ()  # (layer, KL to FP32 with it in float), most sensitive first
    attempts: tuple[Attempt, ...] = ()
    latency_p50_ms: dict[str, float] = field(default_factory=dict)
    latency_batch: int = 1  # a fixed-batch model is timed at its batch
    notes: tuple[str, ...] = ()


# --------------------------------------------------------------------------- helpers


def resolve_recipe(config: QuantizeConfig) -> str | None:
    """The recipe ``quantize_run`` uses for ``config``: ``config.recipe``; without one, the INT8 recipe of
    ``config.target`` for its TensorRT release (``Target.calibration_recipe_for``); without a target,
    :data:`DEFAULT_RECIPE`. ``None`` for FP16, which needs no recipe. `edge-tl quantize` (and so
    `edge-tl ship`) choose through this."""
    if config.recipe is not None or config.precision is not QuantPrecision.INT8:
        return config.recipe
    if config.target is not None:
        from edge_tl.targets import load_target

        chosen = load_target(config.target).calibration_recipe_for("int8", tensorrt=config.tensorrt)
        if chosen is not None:
            return _recipe_name(chosen)
    return DEFAULT_RECIPE


def _recipe_name(chosen: Any) -> str:
    """The name of a target's calibration recipe (a ``CalibrationRecipe`` member)."""
    return chosen.value


def _cpu(threads: int | None) -> RunnerOptions:
    # The CPU whatever providers this machine has: the accuracies and latencies quantize records are ONNX
    # Runtime's (and PyTorch's) on the CPU, comparable from one machine to the next.
    return RunnerOptions(device=Device.CPU, threads=threads)


def _runner(model: Any, threads: int | None, *, name: str = "candidate") -> Runner:
    """An ONNX Runtime runner for a graph held in memory (candidates are measured before one is written)."""
    from edge_tl.runtime.onnxruntime_runner import OnnxRuntimeRunner

    return OnnxRuntimeRunner(model.SerializeToString(), name=name, options=_cpu(threads))


def _outcome(runner: Runner, samples: Sequence[Any], prep: Any, batch_size: int) -> Outcome:
    """Right answers of a (not yet entered) runner on ``samples``, overall and per class."""
    from edge_tl.data import iter_batches

    total = np.zeros(0, dtype=np.int64)
    right = np.zeros(0, dtype=np.int64)
    with runner:
        for images, labels in iter_batches(list(samples), prep, batch_size):
            logits = np.asarray(runner.run(images))
            labels = np.asarray(labels)
            width = max(len(total), logits.shape[1], int(labels.max(initial=-1)) + 1)
            total = np.pad(total, (0, width - len(total))) + np.bincount(labels, minlength=width)
            hits = labels[logits.argmax(axis=1) == labels]
            right = np.pad(right, (0, width - len(right))) + np.bincount(hits, minlength=width)
    return Outcome(int(right.sum()), int(total.sum()), tuple(right.tolist()), tuple(total.tolist()))


def _top1(runner: Runner, samples: Sequence[Any], prep: Any, batch_size: int) -> float:
    """Top-1 of a (not yet entered) runner on ``samples``."""
    return _outcome(runner, samples, prep, batch_size).top1


def _reference_outcome(run: Run, samples: Sequence[Any], prep: Any, batch_size: int, threads: int | None) -> Outcome:
    """Top-1 of the original model: the reference every artifact is judged by (the fine-tuned or
    imported PyTorch model, or for an ONNX import the imported ONNX FP32 model)."""
    from edge_tl.runtime.registry import open_runner

    reference = run.artifact(reference_artifact(run))
    if reference.kind == ArtifactKind.ONNX:
        run.artifact_path(reference.name)  # an imported ONNX changed since import is refused
    # threads: on a busy machine OpenMP threads that spin-wait for each other can make a small
    # model 50x slower than one thread; the caller decides.
    return _outcome(open_runner(run, artifact=reference.name, options=_cpu(threads)), samples, prep, batch_size)


def _p50_ms(model: Any, iterations: int, threads: int | None) -> float:
    """Median milliseconds of one batch-1 inference (5 warm-up runs), timed by ``bench.benchmark``;
    a fixed-batch model is timed at its own batch (as verify times it)."""
    from edge_tl.bench.api import BenchConfig, Budget, benchmark

    with _runner(model, threads, name="latency") as runner:
        batch = runner.input_spec.batch or 1
        config = BenchConfig(batch_sizes=(batch,), warmup=Budget(iterations=5), measure=Budget(iterations=iterations))
        return benchmark(runner, config)[0].p50_ms


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
    recipe = load_recipe(str(resolve_recipe(config)))
    writer = writer_for(recipe)
    writer.check(recipe, config)
    onnx = lazy_import("onnx", purpose="quantization")
    from edge_tl.models import Preprocessing

    prep = Preprocessing.from_dict(run.require("preprocessing", stage=STAGE))
    source = run.artifact(SOURCE_ARTIFACT)
    model = ensure_node_names(onnx.load(str(run.artifact_path(SOURCE_ARTIFACT))))
    method = config.calib_method or recipe.calibration.method
    num_samples = config.calib_samples or recipe.calibration.num_samples

    samples = calibration_samples(run, calib_data=config.calib_data, num_samples=num_samples, seed=config.seed)
    batches = image_batches(samples, prep, recipe.calibration.batch_size)

    tensors = writer.tensors(model, recipe)
    say(f"calibrating {len(tensors)} tensors on {len(samples)} images ({method.value})")
    observers = collect(
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
    run.add_artifact(
        calib_table(recipe.name),
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

    job = _Job(run, recipe, config, model, ranges, samples, prep, out_dir, table_path, calib_info, say)
    if isinstance(writer, FileWriter):
        return _record_file(job, writer)
    return _quantized_model(job, writer)


@dataclass(frozen=True)
class _Job:
    """A quantize job once calibrated: what a writer's output is made and recorded from."""

    run: Run
    recipe: Recipe
    config: QuantizeConfig
    model: Any  # the FP32 ModelProto, every node named
    ranges: dict[str, TensorRange]
    samples: Sequence[Any]  # the calibration images
    prep: Any
    out_dir: Path
    table_path: Path
    calib_info: dict[str, Any]
    say: Callable[[str], None]


def _quantized_model(job: _Job, writer: ModelWriter) -> QuantizeResult:
    """A :class:`ModelWriter`'s model: measured, held to the budget, timed, written and recorded."""
    from edge_tl.data import split_from_run

    run, recipe, config, model, prep, say = job.run, job.recipe, job.config, job.model, job.prep, job.say
    source = run.artifact(SOURCE_ARTIFACT)
    artifacts = [calib_table(recipe.name)]
    val = list(split_from_run(run).val)
    if not val:
        raise DataError(
            f"run {str(run.root)!r} has no validation images; INT8 accuracy is measured on them "
            "(for an imported run: import again with --val-data DIR)"
        )

    def build(float_layers: Sequence[str]) -> Any:
        return writer.build(model, job.ranges, recipe, float_layers)

    quantized_layers = writer.layers(model, recipe)

    say(f"measuring the original model and INT8 on {len(val)} validation images")
    reference_outcome = _reference_outcome(run, val, prep, config.eval_batch_size, config.threads)
    reference = reference_outcome.top1
    best_model = build(())
    budget = config.max_accuracy_drop

    def measure(float_layers: tuple[str, ...]) -> Outcome:
        candidate = best_model if not float_layers else build(float_layers)
        return _outcome(_runner(candidate, config.threads), val, prep, config.eval_batch_size)

    def rank() -> list[tuple[str, float]]:
        say(f"ranking {len(quantized_layers)} layers by sensitivity")
        return _rank(model, build, quantized_layers, job.samples[: config.sensitivity_images], prep, config)

    attempts, sensitivity, chosen, met = search_float_layers(
        reference_outcome,
        budget=budget,
        max_float_layers=config.max_float_layers,
        rank=rank,
        measure=measure,
        say=say,
        max_class_drop=config.max_class_drop,
        classes=tuple(run.get("classes") or ()),
    )
    final = best_model if not chosen.float_layers else build(chosen.float_layers)

    latency = {
        "fp32": _p50_ms(model, config.latency_iterations, config.threads),
        "int8_all_layers": _p50_ms(best_model, config.latency_iterations, config.threads),
    }
    if chosen.float_layers:
        latency["int8_final"] = _p50_ms(final, config.latency_iterations, config.threads)
    else:
        latency["int8_final"] = latency["int8_all_layers"]

    model_path = atomic_write_bytes(job.out_dir / MODEL_FILE, final.SerializeToString())
    status = {True: "passing", False: "failing", None: "no-budget"}[met]
    name = onnx_int8(recipe.name)
    details = dict(source.details)
    details.update(
        {
            "source": SOURCE_ARTIFACT,
            "recipe": recipe.to_dict(),
            "calibration": job.calib_info,
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
        "max_class_drop_points": config.max_class_drop,
        "accuracy_budget_met": met,
        "num_val_images": len(val),
        "attempts": [a.to_dict() for a in attempts],
        "sensitivity": [{"layer": n, "kl_with_layer_in_float": s} for n, s in sensitivity],
        "latency_p50_ms_onnxruntime_cpu_b1": latency,
        "latency_batch": _fixed_batch(source),
        "latency_cost_of_float_layers": latency["int8_final"] / latency["int8_all_layers"],
    }
    run.add_artifact(
        name, kind="onnx", path=model_path, stage=STAGE, precision="int8", details=details, metrics=metrics
    )
    artifacts.insert(0, name)
    if writer.strongly_typed_variant and _builds_strongly_typed(config):
        artifacts.insert(1, _strongly_typed_variant(run, name, final, details, reference, val, prep, config, say))
    result = QuantizeResult(
        run.root,
        recipe.name,
        QuantPrecision.INT8,
        tuple(artifacts),
        model_path=model_path,
        table_path=job.table_path,
        reference_top1=reference,
        top1=chosen.top1,
        drop_points=chosen.drop_points,
        budget_points=budget,
        budget_met=met,
        float_layers=chosen.float_layers,
        sensitivity=tuple(sensitivity),
        attempts=tuple(attempts),
        latency_p50_ms=latency,
        latency_batch=_fixed_batch(source),
    )
    if met is False:
        tried = len(attempts) - 1
        asked = " and ".join(
            f"{flag} {value:g} pt"
            for flag, value in (("--max-accuracy-drop", budget), ("--max-class-drop", config.max_class_drop))
            if value is not None
        )
        worst = (
            f", worst class {chosen.worst_class!r} {chosen.worst_class_drop_points:.2f} pt"
            if chosen.worst_class is not None
            else ""
        )
        raise ToleranceError(
            f"INT8 ({recipe.name}) could not meet {asked}: the best of {len(attempts)} "
            f"attempts drops {chosen.drop_points:.2f} pt{worst} (top-1 {chosen.top1:.4f} vs {reference:.4f}) with "
            f"{len(chosen.float_layers)} layer(s) in float after trying up to {tried}. It is kept at "
            f"{str(model_path)!r}, recorded as {name!r} with status 'failing'. Try more calibration images, another "
            "--calib-method, a larger --max-float-layers, or FP16."
        )
    return result


def _fixed_batch(source: Any) -> int:
    """The batch latency is timed at: the source's fixed batch, else 1."""
    first = (source.details.get("input_shape") or [1])[0]
    return first if isinstance(first, int) else 1


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
    top1 = _top1(_runner(model, config.threads), val, prep, config.eval_batch_size)
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
            # channels whose scale was under float16's smallest subnormal (0 in float16): raised to it,
            # weights requantized
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
    reference: Outcome,
    *,
    budget: float | None,
    max_float_layers: int,
    rank: Callable[[], Sequence[tuple[str, float]]],
    measure: Callable[[tuple[str, ...]], Outcome],
    say: Callable[[str], None] = lambda _msg: None,
    max_class_drop: float | None = None,
    classes: Sequence[str] = (),
) -> tuple[list[Attempt], list[tuple[str, float]], Attempt, bool | None]:
    """The accuracy-budget search: which layers stay in float.

    ``measure(float_layers)`` is the outcome with those layers in float (``()``: all INT8);
    ``rank()`` the layers with their sensitivity, least KL (most helped by float) first,
    asked for only when the all-INT8 model is over budget. An attempt is within budget when
    top-1 lost at most ``budget`` points and, with ``max_class_drop``, no class's recall lost
    more than that, both counted in whole images. Layers go back to float one at a time in
    that order, at most ``max_float_layers``, stopping at the first attempt within budget.
    Returns (attempts, sensitivity, chosen, met): ``chosen`` is the first attempt within
    budget, else the one with the smallest drop (the smallest worst-class drop first, with
    ``max_class_drop``); ``met`` is None without a budget.
    """
    from edge_tl.significance import over_budget

    judged = budget is not None or max_class_drop is not None

    def attempt(float_layers: tuple[str, ...], outcome: Outcome) -> tuple[Attempt, list[str]]:
        """The attempt and why it is over budget (empty: within)."""
        drop = (reference.top1 - outcome.top1) * 100.0
        over = []
        if budget is not None and over_budget(reference.correct - outcome.correct, outcome.total, budget):
            over.append(f"drop {drop:.2f} pt > budget {budget:.2f} pt")
        if max_class_drop is None:
            return Attempt(float_layers, outcome.top1, drop), over
        drops = [
            ((ref - right) / images * 100.0, c, ref - right, images)
            for c, (ref, right, images) in enumerate(
                zip(reference.class_correct, outcome.class_correct, outcome.class_total)
            )
            if images
        ]
        # The largest drop; on a tie the class that lost more images, then the first class.
        worst_drop, worst, _, _ = max(drops, key=lambda d: (d[0], d[2], -d[1]), default=(0.0, -1, 0, 0))
        name = (str(classes[worst]) if worst < len(classes) else str(worst)) if worst >= 0 else "-"
        over += [
            f"class {str(classes[c]) if c < len(classes) else str(c)!r} recall drop {d:.2f} pt ({net} of {n} "
            f"images) > --max-class-drop {max_class_drop:g} pt"
            for d, c, net, n in drops
            if over_budget(net, n, max_class_drop)
        ]
        return Attempt(float_layers, outcome.top1, drop, name, worst_drop), over

    first, over = attempt((), measure(()))
    attempts, within = [first], [not over]
    sensitivity: list[tuple[str, float]] = []
    if over and max_float_layers > 0:
        say("; ".join(over))
        sensitivity = list(rank())
        for k in range(1, min(max_float_layers, len(sensitivity)) + 1):
            floats = tuple(name for name, _ in sensitivity[:k])
            latest, over = attempt(floats, measure(floats))
            attempts.append(latest)
            within.append(not over)
            worst = (
                f", worst class {latest.worst_class!r} {latest.worst_class_drop_points:.2f} pt"
                if latest.worst_class is not None
                else ""
            )
            say(f"  {k} float layer(s) ({floats[-1]}): drop {latest.drop_points:.2f} pt{worst}")
            if not over:
                break
    met = None if not judged else any(within)
    if met:
        chosen = next(a for a, ok in zip(attempts, within) if ok)
    else:
        chosen = min(attempts, key=lambda a: (a.worst_class_drop_points or 0.0, a.drop_points))
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
    from edge_tl.verify.metrics import mean_kl

    images = np.concatenate([b for b, _ in iter_batches(list(samples), prep, config.eval_batch_size)])
    with _runner(model, config.threads, name="fp32") as fp32:
        reference = fp32.run(images)
    scores = []
    for name in layers:
        with _runner(build([name]), config.threads, name=f"{name} in float") as candidate:
            scores.append((name, mean_kl(reference, candidate.run(images))))
    return sorted(scores, key=lambda item: item[1])


def _record_file(job: _Job, writer: FileWriter) -> QuantizeResult:
    """A :class:`FileWriter`'s file, recorded beside the calibration table."""
    recipe = job.recipe
    written = writer.write(job.model, job.ranges, recipe, job.config, job.out_dir)
    job.run.add_artifact(
        written.artifact,
        kind=written.kind,
        path=written.path,
        stage=STAGE,
        precision="int8",
        details={
            "recipe": recipe.to_dict(),
            "source": SOURCE_ARTIFACT,
            "calibration": job.calib_info,
            **written.details,
        },
    )
    return QuantizeResult(
        job.run.root,
        recipe.name,
        QuantPrecision.INT8,
        (written.artifact, calib_table(recipe.name)),
        table_path=job.table_path,
        cache_path=written.path,
        notes=(written.note,) if written.note else (),
    )


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
            model_path=run.artifact_path(art.name),
            notes=("already produced by export",),
        )
    say("producing onnx-fp16 with export's FP16 conversion and parity check")
    result = export_run(run.root, config=ExportConfig(precisions=(Precision.FP16,)), progress=say)
    path = next(m.path for m in result.models if m.name == ONNX_FP16)
    return QuantizeResult(run.root, "fp16", QuantPrecision.FP16, (ONNX_FP16,), model_path=path)
