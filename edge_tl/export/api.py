"""``export_run``: a run's fine-tuned model -> ONNX FP32 / FP16, each with a parity record.

Both files are written to a temporary directory inside ``export/`` first. Parity is
measured on real validation images against the original PyTorch model; a file
whose parity is within tolerance is moved into place and recorded, one that is not
is deleted and reported in a :class:`~edge_tl.errors.ToleranceError` with the
numbers, leaving the manifest as it was for that artifact.
"""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edge_tl.artifacts import CHECKPOINT_BEST, ONNX_FP16, ONNX_FP32, ArtifactKind, reference_artifact
from edge_tl.errors import ConfigError, ToleranceError
from edge_tl.export.onnx_export import (
    BATCH_DIM,
    DEFAULT_OPSET,
    INPUT_NAME,
    OUTPUT_NAME,
    Exporter,
    convert_to_fp16,
    export_torch_to_onnx,
    graph_op_types,
    io_signature,
    save_model,
)
from edge_tl.export.static_padding import make_same_padding_static
from edge_tl.runs import Run, atomic_write_bytes, tool_versions
from edge_tl.runtime.base import Device, InputSpec, RunnerOptions
from edge_tl.verify.metrics import Accuracy, AccuracyAccumulator, Agreement, AgreementAccumulator
from edge_tl.vocab import EXPORT_PRECISIONS, Precision, accept

STAGE = "export"


ARTIFACT_NAMES = {Precision.FP32: ONNX_FP32, Precision.FP16: ONNX_FP16}
FILE_NAMES = {Precision.FP32: "model.fp32.onnx", Precision.FP16: "model.fp16.onnx"}


@dataclass(frozen=True)
class ParityTolerance:
    """When an exported model counts as the same model.

    ``atol``/``rtol``: every logit must satisfy ``|onnx - torch| <= atol + rtol * |torch|``
    (``None`` = no element-wise check: FP16 is judged by agreement, as is usual).
    ``min_agreement``: fraction of images whose top-1 class is the same.
    """

    atol: float | None
    rtol: float
    min_agreement: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ConfigError(f"min_agreement is a fraction in [0, 1], got {self.min_agreement}")

    def to_dict(self) -> dict[str, Any]:
        return {"atol": self.atol, "rtol": self.rtol, "min_agreement": self.min_agreement}


FP32_TOLERANCE = ParityTolerance(atol=1e-4, rtol=1e-3, min_agreement=0.99)
FP16_TOLERANCE = ParityTolerance(atol=None, rtol=0.0, min_agreement=0.98)


@dataclass(frozen=True)
class ExportConfig:
    precisions: tuple[Precision, ...] = (Precision.FP32, Precision.FP16)
    #: None: DEFAULT_OPSET for a torch export; an imported ONNX model is kept at its own opset,
    #: and converted down (ONNX's version converter, parity-checked) only to an opset below it
    opset: int | None = None
    dynamic_batch: bool = True
    batch_size: int = 1  # the fixed batch of a static-batch export
    exporter: Exporter = Exporter.TORCHSCRIPT
    fp16_io: bool = False  # float16 inputs/outputs in the FP16 model (default: float32 kept)
    checkpoint: str = CHECKPOINT_BEST
    parity_images: int | None = 1000  # None = the whole validation set
    parity_batch_size: int = 32
    fp32_tolerance: ParityTolerance = FP32_TOLERANCE
    fp16_tolerance: ParityTolerance = FP16_TOLERANCE

    def __post_init__(self) -> None:
        if not self.precisions:
            raise ConfigError("choose at least one precision to export (fp32, fp16)")
        object.__setattr__(
            self,
            "precisions",
            tuple(
                accept(Precision, p, EXPORT_PRECISIONS, message=lambda v, c: f"export writes {c}, not {v!r}")
                for p in self.precisions
            ),
        )
        if self.parity_images is not None and self.parity_images < 1:
            raise ConfigError(f"parity_images must be >= 1 (or unset for all), got {self.parity_images}")
        if self.parity_batch_size < 1:
            raise ConfigError(f"parity batch size must be >= 1, got {self.parity_batch_size}")

    def tolerance(self, precision: Precision) -> ParityTolerance:
        return self.fp32_tolerance if precision is Precision.FP32 else self.fp16_tolerance


@dataclass(frozen=True)
class ExportedModel:
    name: str
    precision: Precision
    path: Path | None  # None when refused
    parity: Agreement
    accuracy: Accuracy
    tolerance: ParityTolerance
    failures: tuple[str, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return not self.failures

    def metrics(self) -> dict[str, Any]:
        return {
            "parity_num_images": self.parity.num_images,
            "parity_max_abs_diff": self.parity.max_abs_diff,
            "parity_mean_abs_diff": self.parity.mean_abs_diff,
            "parity_top1_agreement": self.parity.top1_agreement,
            "parity_mean_kl": self.parity.mean_kl,
            "parity_num_outside_tolerance": self.parity.num_outside_tolerance,
            "parity_tolerance": self.tolerance.to_dict(),
            "parity_val_top1": self.accuracy.top1 if self.accuracy.num_images else None,
            "parity_runtime": "onnxruntime CPU, basic graph optimizations, vs PyTorch eager FP32 on the CPU",
        }


@dataclass(frozen=True)
class ExportResult:
    run_dir: Path
    models: tuple[ExportedModel, ...]
    static_padding_layers: int


def _check(parity: Agreement, tol: ParityTolerance) -> tuple[str, ...]:
    failures = []
    if tol.atol is not None and parity.num_outside_tolerance:
        failures.append(
            f"{parity.num_outside_tolerance} logits outside |diff| <= {tol.atol:g} + {tol.rtol:g}*|ref| "
            f"(max abs diff {parity.max_abs_diff:.3g})"
        )
    if not parity.top1_agreement >= tol.min_agreement:  # also catches NaN
        failures.append(f"top-1 agreement {parity.top1_agreement:.4f} < {tol.min_agreement:.4f}")
    return tuple(failures)


def export_run(
    run_dir: str | os.PathLike[str],
    *,
    config: ExportConfig = ExportConfig(),
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export the run's model to ONNX at its preprocessing input size, check parity, record it."""
    from edge_tl.data import iter_batches
    from edge_tl.models import Preprocessing, load_run_model
    from edge_tl.runtime.onnxruntime_runner import GraphOptimization, OnnxRuntimeRunner
    from edge_tl.runtime.torch_runner import TorchRunner

    say = progress or (lambda _msg: None)
    run = Run.open(run_dir)
    if run.artifact(reference_artifact(run)).kind == ArtifactKind.ONNX:
        return _export_from_onnx(run, config, say)
    opset = config.opset or DEFAULT_OPSET
    prep = Preprocessing.from_dict(run.require("preprocessing", stage=STAGE))
    classes = run.require("classes", stage=STAGE)
    model = load_run_model(run, checkpoint=config.checkpoint)
    samples, labelled = _parity_samples(run, config)

    export_model = copy.deepcopy(model)
    static_layers = make_same_padding_static(export_model, prep.input_size)
    out_dir = run.path("export")
    out_dir.mkdir(parents=True, exist_ok=True)
    shape: list[Any] = [BATCH_DIM if config.dynamic_batch else config.batch_size, 3, prep.input_size, prep.input_size]

    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as tmp:
        say(f"exporting {run.get('backbone', {}).get('name', 'model')} at {prep.input_size}px (opset {opset})")
        fp32_path = Path(tmp) / FILE_NAMES[Precision.FP32]
        fp32 = export_torch_to_onnx(
            export_model,
            fp32_path,
            input_size=prep.input_size,
            opset=opset,
            dynamic_batch=config.dynamic_batch,
            batch_size=config.batch_size,
            exporter=config.exporter,
        )
        files = {Precision.FP32: fp32_path}
        protos = {Precision.FP32: fp32}
        if Precision.FP16 in config.precisions:
            protos[Precision.FP16] = convert_to_fp16(fp32, keep_io_types=not config.fp16_io)
            files[Precision.FP16] = save_model(protos[Precision.FP16], Path(tmp) / FILE_NAMES[Precision.FP16])
        wanted = [p for p in Precision if p in config.precisions]

        say(f"parity on {len(samples)} validation images")
        agreement = {
            p: AgreementAccumulator(atol=config.tolerance(p).atol or 0.0, rtol=config.tolerance(p).rtol) for p in wanted
        }
        accuracy = {p: AccuracyAccumulator() for p in wanted}
        cpu = RunnerOptions(device=Device.CPU)
        reference = TorchRunner(
            model, input_spec=InputSpec(3, prep.input_size, prep.input_size), name="pytorch", options=cpu
        )
        # Basic graph optimisations: parity judges the exported graph, not ORT's layout rewrites
        # (verify measures the deployed configuration, with every optimisation on).
        candidates = {
            p: OnnxRuntimeRunner(files[p], name=ARTIFACT_NAMES[p], options=cpu, optimization=GraphOptimization.BASIC)
            for p in wanted
        }
        with reference:
            for runner in candidates.values():
                runner.__enter__()
            try:
                for images, labels in iter_batches(samples, prep, config.parity_batch_size):
                    ref_logits = reference.run(images)
                    for p, runner in candidates.items():
                        logits = runner.run(images)
                        agreement[p].update(ref_logits, logits)
                        if labelled:
                            accuracy[p].update(logits, labels)
            finally:
                for runner in candidates.values():
                    runner.__exit__(None, None, None)

        results = []
        for p in wanted:
            parity, tol = agreement[p].result(), config.tolerance(p)
            failures = _check(parity, tol)
            exported = ExportedModel(
                ARTIFACT_NAMES[p],
                p,
                None if failures else out_dir / FILE_NAMES[p],
                parity,
                accuracy[p].result(),
                tol,
                failures,
            )
            if exported.path is not None:
                os.replace(files[p], exported.path)
                signature = io_signature(protos[p])
                run.add_artifact(
                    ARTIFACT_NAMES[p],
                    kind="onnx",
                    path=exported.path,
                    stage=STAGE,
                    precision=p.value,
                    details={
                        "input_name": INPUT_NAME,
                        "output_name": OUTPUT_NAME,
                        "input_shape": shape,
                        "input_dtype": signature["inputs"][0]["dtype"],
                        "output_dtype": signature["outputs"][0]["dtype"],
                        "opset": opset,
                        "dynamic_batch": config.dynamic_batch,
                        # FP16 is converted from the FP32 export: name it when it was recorded alongside.
                        "source": ARTIFACT_NAMES[Precision.FP32]
                        if p is Precision.FP16 and any(r.passed and r.precision is Precision.FP32 for r in results)
                        else config.checkpoint,
                        "exporter": config.exporter.value,
                        "simplifier": "onnxslim",
                        "static_padding_layers": static_layers,
                        "num_classes": len(classes),
                        "preprocessing": prep.to_dict(),
                        "ops": graph_op_types(protos[p]),
                        "tool_versions": tool_versions("torch", "timm", "onnx", "onnxruntime", "onnxslim"),
                    },
                    metrics=exported.metrics(),
                )
            results.append(exported)

    refused = [m for m in results if not m.passed]
    if refused:
        lines = "; ".join(
            f"{m.name}: {', '.join(m.failures)} on {m.parity.num_images} images "
            f"(max abs diff {m.parity.max_abs_diff:.3g}, mean {m.parity.mean_abs_diff:.3g}, "
            f"agreement {m.parity.top1_agreement:.4f})"
            for m in refused
        )
        kept = [m.name for m in results if m.passed]
        raise ToleranceError(
            f"export refused {', '.join(m.name for m in refused)} (nothing written for it): {lines}. "
            f"{'Recorded: ' + ', '.join(kept) + '. ' if kept else ''}"
            "Check the model for export-unfriendly layers, or loosen the tolerance if the difference is expected."
        )
    return ExportResult(run.root, tuple(results), static_layers)


def _export_from_onnx(run: Run, config: ExportConfig, say: Callable[[str], None]) -> ExportResult:
    """A run imported from ONNX: its FP32 model is the imported file, kept as it is; FP16 is
    converted from it and held to the FP16 tolerance against it, as an exported FP16 is."""
    from edge_tl._lazy import lazy_import
    from edge_tl.data import iter_batches
    from edge_tl.models import Preprocessing
    from edge_tl.runtime.onnxruntime_runner import GraphOptimization, OnnxRuntimeRunner

    onnx = lazy_import("onnx", purpose="FP16 conversion")
    reference = run.artifact(reference_artifact(run))
    opset = reference.details.get("opset")
    converted: list[ExportedModel] = []
    if config.opset is not None and isinstance(opset, int) and config.opset < opset:
        converted.append(_convert_imported(run, reference, config, say))
        reference = run.artifact(reference.name)
    else:
        say(f"{reference.name} is the imported ONNX model: kept as it is (opset {opset})")
    if Precision.FP16 not in config.precisions:
        return ExportResult(run.root, tuple(converted), 0)
    prep = Preprocessing.from_dict(run.require("preprocessing", stage=STAGE))
    samples, labelled = _parity_samples(run, config)
    fp32_path = run.artifact_path(reference.name)
    fp16 = convert_to_fp16(onnx.load(str(fp32_path)), keep_io_types=not config.fp16_io)
    out_dir = run.path("export")
    tol = config.tolerance(Precision.FP16)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as tmp:
        path = save_model(fp16, Path(tmp) / FILE_NAMES[Precision.FP16])
        agreement, accuracy = AgreementAccumulator(atol=tol.atol or 0.0, rtol=tol.rtol), AccuracyAccumulator()
        cpu = RunnerOptions(device=Device.CPU)
        say(f"FP16 parity on {len(samples)} validation images")
        with (
            OnnxRuntimeRunner(fp32_path, name=reference.name, options=cpu, optimization=GraphOptimization.BASIC) as ref,
            OnnxRuntimeRunner(path, name=ONNX_FP16, options=cpu, optimization=GraphOptimization.BASIC) as half,
        ):
            for images, labels in iter_batches(samples, prep, config.parity_batch_size):
                ref_logits, logits = ref.run(images), half.run(images)
                agreement.update(ref_logits, logits)
                if labelled:
                    accuracy.update(logits, labels)
        parity = agreement.result()
        failures = _check(parity, tol)
        exported = ExportedModel(
            ONNX_FP16,
            Precision.FP16,
            None if failures else out_dir / FILE_NAMES[Precision.FP16],
            parity,
            accuracy.result(),
            tol,
            failures,
        )
        if failures:
            raise ToleranceError(
                f"export refused {ONNX_FP16} (nothing written for it): {', '.join(failures)} on "
                f"{parity.num_images} images against the imported {reference.name}"
            )
        os.replace(path, exported.path)
    signature = io_signature(fp16)
    details = {
        **reference.details,
        "input_dtype": signature["inputs"][0]["dtype"],
        "output_dtype": signature["outputs"][0]["dtype"],
        "source": reference.name,
        "ops": graph_op_types(fp16),
        "tool_versions": tool_versions("onnx", "onnxruntime"),
    }
    run.add_artifact(
        ONNX_FP16,
        kind=ArtifactKind.ONNX.value,
        path=exported.path,
        stage=STAGE,
        precision="fp16",
        details=details,
        metrics={
            **exported.metrics(),
            "parity_runtime": "onnxruntime CPU, basic graph optimizations, vs the imported ONNX FP32",
        },
    )
    return ExportResult(run.root, (*converted, exported), 0)


def _convert_imported(run: Run, reference: Any, config: ExportConfig, say: Callable[[str], None]) -> ExportedModel:
    """The imported ONNX model at ``config.opset``, by ONNX's version converter: it replaces the
    reference only when it computes the same logits within the FP32 tolerance on the run's images
    (what it was converted from is recorded in ``converted_from``)."""
    from edge_tl._lazy import lazy_import
    from edge_tl.data import iter_batches
    from edge_tl.export.onnx_export import convert_opset
    from edge_tl.models import Preprocessing
    from edge_tl.runtime.onnxruntime_runner import GraphOptimization, OnnxRuntimeRunner

    onnx = lazy_import("onnx", purpose="opset conversion")
    source_path = run.artifact_path(reference.name)
    source = onnx.load(str(source_path))
    old = reference.details.get("opset")
    say(f"converting the imported {reference.name} from opset {old} to {config.opset} (ONNX's version converter)")
    proto = convert_opset(source, int(config.opset), what=f"the imported {reference.name}")  # type: ignore[arg-type]
    prep = Preprocessing.from_dict(run.require("preprocessing", stage=STAGE))
    samples, labelled = _parity_samples(run, config)
    tol = config.tolerance(Precision.FP32)
    agreement, accuracy = AgreementAccumulator(atol=tol.atol or 0.0, rtol=tol.rtol), AccuracyAccumulator()
    cpu = RunnerOptions(device=Device.CPU)
    with (
        OnnxRuntimeRunner(source_path, name=reference.name, options=cpu, optimization=GraphOptimization.BASIC) as ref,
        OnnxRuntimeRunner(
            proto.SerializeToString(), name=f"opset {config.opset}", options=cpu, optimization=GraphOptimization.BASIC
        ) as new,
    ):
        for images, labels in iter_batches(samples, prep, config.parity_batch_size):
            logits = new.run(images)
            agreement.update(ref.run(images), logits)
            if labelled:
                accuracy.update(logits, labels)
    parity = agreement.result()
    failures = _check(parity, tol)
    if failures:
        raise ToleranceError(
            f"the imported {reference.name} converted to opset {config.opset} computes other logits "
            f"({', '.join(failures)} on {parity.num_images} images); nothing was changed: re-export it from its "
            f"source at opset {config.opset}"
        )
    original = {"opset": old, "sha256": reference.sha256}
    path = atomic_write_bytes(source_path, proto.SerializeToString())
    exported = ExportedModel(reference.name, Precision.FP32, path, parity, accuracy.result(), tol, ())
    run.add_artifact(
        reference.name,
        kind=ArtifactKind.ONNX.value,
        path=path,
        stage=reference.stage,
        precision="fp32",
        details={
            **reference.details,
            "opset": config.opset,
            "converted_from": original,
            "ops": graph_op_types(proto),
            "tool_versions": tool_versions("onnx", "onnxruntime"),
        },
        metrics={
            **exported.metrics(),
            "parity_runtime": f"onnxruntime CPU, basic graph optimizations, vs the imported opset-{old} model",
        },
    )
    return exported


def _parity_samples(run: Run, config: ExportConfig) -> tuple[list, bool]:
    """The images parity is checked on (up to ``--parity-images``), and whether they carry labels: a run
    imported without labelled images is checked on its unlabelled ones (parity needs images, not labels)."""
    from edge_tl.data import split_from_run, unlabelled_samples

    samples = list(split_from_run(run).val)
    labelled = bool(samples)
    if not labelled:
        samples = unlabelled_samples(run, stage=STAGE)
    if config.parity_images is not None:
        samples = samples[: config.parity_images]
    return samples, labelled
