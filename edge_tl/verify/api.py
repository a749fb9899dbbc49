"""``verify_run``: every deployable artifact of a run against the original PyTorch model.

Candidates are chosen by kind (:data:`VERIFIED_KINDS`), never by name, and each is
run through :func:`edge_tl.runtime.open_runner`, so INT8 ONNX models and TensorRT
engines are verified as soon as they are recorded (an engine is reported as skipped
where no TensorRT backend can run it). Results measured on devices are read from
``deploy/<host>/accuracy.json`` (format in docs/design.md) and added as rows.
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edge_tl.artifacts import VERIFY_REPORT, reference_artifact
from edge_tl.bench.api import BenchConfig, Budget, benchmark
from edge_tl.bench.env import fingerprint
from edge_tl.errors import ConfigError, EdgeTLError, RunError, ToleranceError
from edge_tl.runs import Run, now_iso
from edge_tl.runtime.base import Device, Runner, RunnerOptions
from edge_tl.runtime.registry import open_runner
from edge_tl.significance import (
    DEFAULT_LEVEL,
    Gate,
    PairedCounter,
    allowed_images,
    comparison_from_result,
    images_needed_to_detect,
    over_budget,
)
from edge_tl.verify.metrics import AccuracyAccumulator, AgreementAccumulator
from edge_tl.verify.report import VerifyRow, format_table, write_reports

STAGE = "verify"
VERIFIED_KINDS = ("onnx", "engine")
DEPLOY_RESULT_FILE = "accuracy.json"
REPORT_ARTIFACT = VERIFY_REPORT


@dataclass(frozen=True)
class VerifyConfig:
    reference: str | None = None  # None: the run's reference (edge_tl.artifacts.reference_artifact)
    artifacts: tuple[str, ...] | None = None  # None: every artifact of a verified kind
    batch_size: int = 32
    max_images: int | None = None  # None: the whole validation set
    device: Device = Device.AUTO
    threads: int | None = None
    measure_latency: bool = True
    latency: BenchConfig = BenchConfig(batch_sizes=(1,), warmup=Budget(iterations=10), measure=Budget(iterations=100))
    max_accuracy_drop: float | None = None  # top-1 points
    max_class_drop: float | None = None  # recall points of any one class
    min_agreement: float | None = None  # fraction of images
    gate: Gate = Gate.POINT  # SIGNIFICANT: a drop over the limit fails only when it is also distinguishable from noise
    significance_level: float = DEFAULT_LEVEL  # of the exact McNemar test; intervals are at 1 - level

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if self.max_images is not None and self.max_images < 1:
            raise ConfigError(f"max images must be >= 1, got {self.max_images}")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise ConfigError(f"--max-accuracy-drop is in points and >= 0, got {self.max_accuracy_drop}")
        if self.max_class_drop is not None and not self.max_class_drop >= 0:
            raise ConfigError(f"--max-class-drop is in recall points and >= 0, got {self.max_class_drop}")
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 1.0:
            raise ConfigError(f"--min-agreement is a fraction in [0, 1] (e.g. 0.99 for 99%), got {self.min_agreement}")
        if not 0.0 < self.significance_level < 1.0:
            raise ConfigError(
                f"--significance-level is a probability in (0, 1) (e.g. 0.05), got {self.significance_level}"
            )


@dataclass(frozen=True)
class VerifyReport:
    run_dir: Path
    rows: tuple[VerifyRow, ...]
    paths: dict[str, Path]
    failures: tuple[str, ...] = field(default_factory=tuple)
    notes: tuple[str, ...] = field(default_factory=tuple)

    def table(self) -> str:
        return format_table(self.rows, self.notes)

    def raise_for_gates(self) -> None:
        """Raise :class:`ToleranceError` naming every artifact that failed a gate."""
        if self.failures:
            raise ToleranceError(f"verification failed: {'; '.join(self.failures)}. Report: {self.paths['markdown']}")

    def row(self, name: str) -> VerifyRow:
        for r in self.rows:
            if r.name == name and r.origin == "local":
                return r
        raise KeyError(name)


@dataclass
class _Candidate:
    name: str
    kind: str
    precision: str | None
    path: Path
    runner: Runner | None
    skipped: str | None = None
    accuracy: AccuracyAccumulator = field(default_factory=AccuracyAccumulator)
    agreement: AgreementAccumulator = field(default_factory=AgreementAccumulator)
    paired: PairedCounter = field(default_factory=PairedCounter)


def verify_run(
    run_dir: str | os.PathLike[str],
    *,
    config: VerifyConfig = VerifyConfig(),
    progress: Callable[[str], None] | None = None,
    check: bool = True,
) -> VerifyReport:
    """Compare artifacts with the original; write verify/report.{md,json,png}; apply the gates.

    With ``check`` a failed gate raises :class:`ToleranceError` (after the reports are
    written); without it the caller gets the report and calls ``raise_for_gates``.
    """
    from edge_tl.data import iter_batches, split_from_run
    from edge_tl.models import Preprocessing

    say = progress or (lambda _msg: None)
    run = Run.open(run_dir)
    prep = Preprocessing.from_dict(run.require("preprocessing", stage=STAGE))
    samples = list(split_from_run(run).val)
    labelled = bool(samples)
    if not labelled:  # a run imported without labelled images: agreement with the reference only
        from edge_tl.data import unlabelled_samples

        samples = unlabelled_samples(run, stage=STAGE)
        given = [
            flag
            for flag, value in (
                ("--max-accuracy-drop", config.max_accuracy_drop),
                ("--max-class-drop", config.max_class_drop),
            )
            if value is not None
        ]
        if given:
            raise ConfigError(
                f"{' and '.join(given)} need{'s' if len(given) == 1 else ''} labelled images and run "
                f"{str(run.root)!r} has none; gate on --min-agreement, or import again with --val-data DIR"
            )
    if config.max_images is not None:
        samples = samples[: config.max_images]

    reference_name = config.reference or reference_artifact(run)
    # An imported ONNX model is itself the reference: it is not compared with itself.
    records = [a for a in run.artifacts() if a.kind in VERIFIED_KINDS and a.name != reference_name]
    if config.artifacts is not None:
        known = {a.name for a in records}
        unknown = [n for n in config.artifacts if n not in known]
        if unknown:
            raise RunError(
                f"no verifiable artifact(s) {unknown} in {str(run.root)!r}; it has {sorted(known) or 'none'}"
            )
        records = [a for a in records if a.name in config.artifacts]

    options = RunnerOptions(device=config.device, threads=config.threads)
    reference_record = run.artifact(reference_name)
    reference = _Candidate(
        reference_record.name,
        reference_record.kind,
        "fp32",
        run.artifact_path(reference_record.name),
        open_runner(run, artifact=reference_record.name, options=options),
    )
    candidates = []
    for record in records:
        try:
            runner: Runner | None = open_runner(run, artifact=record.name, options=options)
            skipped = None
        except EdgeTLError as exc:  # e.g. an engine where no TensorRT backend is available
            runner, skipped = None, str(exc)
        candidates.append(
            _Candidate(record.name, record.kind, record.precision, run.confined(record.path), runner, skipped)
        )

    with ExitStack() as stack:
        stack.enter_context(reference.runner)  # type: ignore[arg-type]
        for cand in candidates:
            if cand.runner is None:
                continue
            try:
                stack.enter_context(cand.runner)
            except EdgeTLError as exc:
                cand.runner, cand.skipped = None, str(exc)
        active = [c for c in candidates if c.runner is not None]
        say(f"verifying {1 + len(active)} model(s) on {len(samples)} validation images")
        for images, labels in iter_batches(samples, prep, config.batch_size):
            ref_logits = reference.runner.run(images)  # type: ignore[union-attr]
            reference.accuracy.update(ref_logits, labels)
            for cand in active:
                logits = cand.runner.run(images)  # type: ignore[union-attr]
                cand.accuracy.update(logits, labels)
                cand.agreement.update(ref_logits, logits)
                cand.paired.update(ref_logits, logits, labels)
        latency: dict[str, Any] = {}
        if config.measure_latency:
            for cand in [reference, *active]:
                say(f"latency of {cand.name}")
                fixed = cand.runner.input_spec.batch  # type: ignore[union-attr]
                bench_cfg = BenchConfig(
                    batch_sizes=(fixed or 1,),
                    warmup=config.latency.warmup,
                    measure=config.latency.measure,
                    seed=config.latency.seed,
                )
                latency[cand.name] = (benchmark(cand.runner, bench_cfg)[0], cand.runner.describe())  # type: ignore[arg-type]
        backends = {c.name: c.runner.backend for c in [reference, *active]}  # type: ignore[union-attr]

    ref_acc = reference.accuracy.result()
    classes = tuple(run.get("classes") or ())
    ref_p50 = latency[reference.name][0].p50_ms if reference.name in latency else None

    def row(c: _Candidate, is_reference: bool) -> VerifyRow:
        if c.runner is None:
            return VerifyRow(c.name, c.kind, c.precision, "-", "local", 0, size_bytes=_size(c.path), skipped=c.skipped)
        acc = c.accuracy.result()
        agree = c.agreement.result()
        stats = latency[c.name][0] if c.name in latency else None
        change = None if is_reference else c.paired.result(level=config.significance_level)
        per_class = (
            None
            if is_reference or not labelled
            else [x.to_dict() for x in c.paired.class_changes(classes, level=config.significance_level)]
        )
        return VerifyRow(
            name=c.name,
            kind=c.kind,
            precision=c.precision,
            backend=backends[c.name],
            origin="local",
            num_images=acc.num_images,
            top1=acc.top1 if labelled else None,
            top5=acc.top5 if labelled else None,
            delta_top1_pts=None if not labelled else 0.0 if is_reference else (acc.top1 - ref_acc.top1) * 100,
            top1_agreement=1.0 if is_reference else agree.top1_agreement,
            mean_kl=0.0 if is_reference else agree.mean_kl,
            max_abs_diff=0.0 if is_reference else agree.max_abs_diff,
            latency_batch=stats.batch_size if stats else None,
            latency_p50_ms=stats.p50_ms if stats else None,
            latency_p99_ms=stats.p99_ms if stats else None,
            size_bytes=_weights_bytes(c.path) if c.kind == "checkpoint" else _size(c.path),
            speedup=(ref_p50 / stats.p50_ms) if stats and ref_p50 and stats.batch_size == 1 else None,
            change=change.to_dict() if change else None,
            per_class=per_class,
            # the TensorRT runner times enqueue + sync (GPU work, no copies); a CPU backend's one timing is end to end
            gpu_compute=stats.to_dict() if stats and backends[c.name] == "tensorrt" else None,
            end_to_end=stats.to_dict() if stats and c.runner.device == "cpu" else None,  # type: ignore[union-attr]
        )

    rows = [row(reference, True), *(row(c, False) for c in candidates)]
    rows += read_deploy_results(run, reference_top1=ref_acc.top1, level=config.significance_level, classes=classes)
    failures = list(_gate(rows[1:], config))
    # What each engine says of its own layers (compile's layer report): a warning, and a failure under a gate.
    precision = engine_precision_findings(records) + deploy_precision_findings(run)
    for finding in precision:
        say(f"WARNING: {finding}")
    if config.max_accuracy_drop is not None or config.min_agreement is not None:
        failures += precision
    failures = tuple(failures)

    notes = [
        f"{ref_acc.num_images} "
        f"{'validation' if labelled else 'unlabelled calibration (no labelled data: agreement only)'} images, "
        f"preprocessing {prep.input_size}px; reference: `{reference.name}` ({backends[reference.name]}).",
        "Δ top-1 in points vs the reference; agreement = share of images with the reference's top-1 class; "
        "KL(reference || artifact) of the softmax outputs.",
        "Latency: p50/p99 at batch 1 on this machine (fixed-batch artifacts at their batch size); "
        "speed-up = reference p50 / artifact p50. Rows `@ host` were measured on that device (no local speed-up).",
        "Size: file size; for the PyTorch checkpoint the size of the model's tensors (without optimizer state).",
    ]
    notes += [
        f"latency of {name}: {w}" for name, (stats, _) in latency.items() for w in stats.warnings() if "noisy" in w
    ]
    detectable = images_needed_to_detect(ref_acc.num_images, level=config.significance_level)
    notes.append(
        f"Δ top-1 intervals: Tango's paired score interval at {(1 - config.significance_level) * 100:g}%; "
        f"distinguishable from noise = exact McNemar p < {config.significance_level:g}. "
        f"On {ref_acc.num_images} images one image "
        f"is {100 / ref_acc.num_images:.2f} pt, and a drop needs at least {detectable} images lost "
        f"({detectable * 100 / ref_acc.num_images:.2f} pt, none gained) to be distinguishable from noise."
    )
    if config.max_accuracy_drop is not None:
        notes.append(f"Gate: --max-accuracy-drop {config.max_accuracy_drop:g} pt, --gate {config.gate.value}.")
    notes += [f"engine layers: {finding}" for finding in precision]
    if config.max_class_drop is not None:
        notes.append(
            f"Gate: --max-class-drop {config.max_class_drop:g} pt of any class's recall, counted in whole images "
            f"of that class."
        )
    if labelled and any(r.per_class for r in rows):
        notes.append(
            "Per class: recall on that class's images; distinguishable from noise = exact McNemar on them, "
            f"Holm-corrected over the classes, below {config.significance_level:g}."
        )
    if failures:
        notes.append("GATE FAILED: " + "; ".join(failures))
    payload = {
        "created": now_iso(),
        "run": str(run.root),
        "reference": reference.name,
        "num_images": ref_acc.num_images,
        "gates": {
            "max_accuracy_drop_pts": config.max_accuracy_drop,
            "max_class_drop_pts": config.max_class_drop,
            "min_agreement": config.min_agreement,
            "gate": config.gate.value,
            "significance_level": config.significance_level,
        },
        "passed": not failures,
        "failures": list(failures),
        "rows": [r.to_dict() for r in rows],
        "latency_runners": {name: info for name, (_, info) in latency.items()},
        "latency_warnings": {name: stats.warnings() for name, (stats, _) in latency.items()},
        "environment": fingerprint(threads=config.threads),
    }
    title = f"edge-tl verify: {run.get('backbone', {}).get('name', 'model')} ({run.root.name})"
    paths = write_reports(run.path("verify"), rows=rows, payload=payload, title=title, notes=notes)
    run.add_artifact(
        REPORT_ARTIFACT,
        kind="report",
        path=paths["json"],
        stage=STAGE,
        details={"markdown": run.relpath(paths["markdown"]), "png": run.relpath(paths["png"])},
        metrics={"passed": not failures, "rows": len(rows)},
    )
    report = VerifyReport(run.root, tuple(rows), paths, failures, tuple(notes))
    if check:
        report.raise_for_gates()
    return report


def engine_precision_findings(records: list[Any]) -> list[str]:
    """The findings of each engine's per-layer report (``details.layer_report``, see edge_tl.trt.layers):
    INT8 work left outside INT8 beyond the recipe's limit, FP32 Conv/Gemm/MatMul work in an FP16/INT8 engine,
    and DLA layers on the GPU that the plan did not predict."""
    found = []
    for record in records:
        report = record.details.get("layer_report") if record.kind == "engine" else None
        for finding in (report or {}).get("findings", ()):
            found.append(f"{record.name}: {finding}")
    return found


def deploy_precision_findings(run: Run) -> list[str]:
    """The same findings for engines a device built (``layer_report`` of ``deploy/<host>/accuracy.json``)."""
    found = []
    for path in sorted(run.path("deploy").glob(f"*/{DEPLOY_RESULT_FILE}")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue  # read_deploy_results refuses it with the fix
        entries = data.get("results") if isinstance(data, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            report = entry.get("layer_report") if isinstance(entry, dict) else None
            host = str(data.get("host") or path.parent.name)
            for finding in (report or {}).get("findings", ()) if isinstance(report, dict) else ():
                found.append(f"{entry.get('artifact')} @ {host}: {finding}")
    return found


def _size(path: Path) -> int | None:
    return path.stat().st_size if path.is_file() else None


def _weights_bytes(path: Path) -> int:
    # A checkpoint file may also hold optimizer state; the model's own size is its tensors.
    from edge_tl.models.checkpoint import load_checkpoint

    return int(sum(t.numel() * t.element_size() for t in load_checkpoint(path)["model"].values()))


def _gate(rows: list[VerifyRow], config: VerifyConfig) -> list[str]:
    failures = []
    for r in rows:
        if r.skipped:
            continue
        label = r.label
        if (
            config.max_accuracy_drop is not None
            and r.delta_top1_pts is not None
            and _over_accuracy_budget(r, config.max_accuracy_drop)
        ):
            over = f"{label}: top-1 drop {-r.delta_top1_pts:.2f} pts > --max-accuracy-drop {config.max_accuracy_drop:g}"
            if config.gate is Gate.POINT:
                failures.append(over)
            elif r.change is None:
                # Without per-image outcomes nothing can be said about noise: judge the point estimate.
                failures.append(over + " (no paired data to test significance; point estimate judged)")
            elif r.change["significant"]:
                failures.append(f"{over}, {r.change['verdict']}")
        if config.max_class_drop is not None:
            failures += _class_failures(r, config.max_class_drop)
        if (
            config.min_agreement is not None
            and r.top1_agreement is not None
            and r.top1_agreement < config.min_agreement
        ):
            failures.append(
                f"{label}: top-1 agreement {r.top1_agreement:.4f} < --min-agreement {config.min_agreement:g}"
            )
    return failures


def _over_accuracy_budget(row: VerifyRow, budget: float) -> bool:
    """In whole images where the row has its paired counts; else the recorded top-1 change."""
    if row.change is not None and not row.change.get("bound"):
        change = row.change
        return over_budget(change["lost"] - change["gained"], change["total"], budget)
    return over_budget(round(-(row.delta_top1_pts or 0.0) * row.num_images / 100), row.num_images, budget)


def _class_failures(row: VerifyRow, budget: float) -> list[str]:
    if row.per_class is None:
        return [
            f"{row.label}: no per-class results to judge --max-class-drop {budget:g} (a device result of an older "
            "edge-tl has none); deploy again to measure them"
        ]
    return [
        f"{row.label}: class {c['name']!r} recall drop {-c['delta_pts']:.2f} pt ({c['lost'] - c['gained']} of "
        f"{c['images']} images; at most {allowed_images(budget, c['images'])} allowed) > --max-class-drop {budget:g}"
        for c in row.per_class
        if over_budget(c["lost"] - c["gained"], c["images"], budget)
    ]


def read_deploy_results(
    run: Run, *, reference_top1: float, level: float = DEFAULT_LEVEL, classes: tuple[str, ...] = ()
) -> list[VerifyRow]:
    """Rows from ``deploy/<host>/accuracy.json`` files written by the deploy stage (see docs/design.md)."""
    rows = []
    for path in sorted(run.path("deploy").glob(f"*/{DEPLOY_RESULT_FILE}")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RunError(f"{str(path)!r} is not readable JSON ({exc}); re-run deploy for {path.parent.name}") from exc
        entries = data.get("results") if isinstance(data, dict) and "results" in data else [data]
        for entry in entries if isinstance(entries, list) else []:
            rows.append(
                _deploy_row(
                    entry,
                    host=str(data.get("host") or path.parent.name),
                    path=path,
                    reference_top1=reference_top1,
                    level=level,
                    classes=classes,
                )
            )
    return rows


def _deploy_row(
    entry: Any, *, host: str, path: Path, reference_top1: float, level: float, classes: tuple[str, ...] = ()
) -> VerifyRow:
    from edge_tl.verify.deploy_records import entry_problem

    if not isinstance(entry, dict) or "artifact" not in entry or "top1" not in entry or "num_images" not in entry:
        raise RunError(f"{str(path)!r}: each result needs 'artifact', 'num_images' and 'top1' (see docs/design.md)")
    problem = entry_problem(entry)
    if problem is not None:
        # A gate is never judged on a number that is not one: one line, and the fix.
        raise RunError(f"{str(path)!r} is not a measurement ({problem}); re-run deploy for {path.parent.name}")
    latency = entry.get("latency_ms") or {}
    top1 = float(entry["top1"])
    # The device may have evaluated a subset: compare with the original on those same images when given.
    reference = entry.get("reference_top1")
    reference_top1 = float(reference) if reference is not None else reference_top1
    change = comparison_from_result(entry, top1 - reference_top1, level=level)
    counts = entry.get("class_counts")
    per_class = (
        [c.to_dict() for c in PairedCounter.from_class_counts(counts).class_changes(classes, level=level)]
        if counts is not None
        else None
    )
    return VerifyRow(
        name=str(entry["artifact"]),
        kind=str(entry.get("kind", "engine")),
        precision=entry.get("precision"),
        backend=str(entry.get("backend", "-")),
        origin=f"deploy:{entry.get('host', host)}",
        num_images=int(entry["num_images"]),
        top1=top1,
        top5=entry.get("top5"),
        delta_top1_pts=(top1 - reference_top1) * 100,
        top1_agreement=entry.get("top1_agreement"),
        mean_kl=entry.get("mean_kl"),
        max_abs_diff=entry.get("max_abs_diff"),
        latency_batch=latency.get("batch_size"),
        latency_p50_ms=latency.get("p50"),
        latency_p99_ms=latency.get("p99"),
        gpu_compute=entry.get("gpu_compute"),
        end_to_end=entry.get("end_to_end"),
        energy_mj_per_image=entry.get("energy_mj_per_image"),
        size_bytes=entry.get("size_bytes"),
        change=change.to_dict() if change else None,
        per_class=per_class,
    )
