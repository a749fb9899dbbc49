"""`edge-tl ship`: from a folder of images to a verified model on the device, in one call.

The stages are the stage commands themselves, called in this process with the options ship
gathered from them (:mod:`edge_tl.ship.options`): a stage does exactly what the same
`edge-tl <stage>` command line does, its target's calibration recipe included.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_tl.errors import ConfigError, ToleranceError
from edge_tl.ship.config import DATA_CONFIG_NAME, RUN_CONFIG_NAME, config_text
from edge_tl.ship.options import Passthrough, stage_command, stage_kwargs
from edge_tl.ship.stages import (
    STAGE_ORDER,
    Outcome,
    Pipeline,
    Stage,
    StageResult,
    file_fingerprint,
    folder_fingerprint,
    set_aside,
)
from edge_tl.targets import Precision, Target

#: The folder an imported model is made in before it moves into the run (import wants a new folder).
IMPORTING_DIR = ".importing"


@dataclass(frozen=True)
class ShipRequest:
    """Everything one `edge-tl ship` was asked: ship's own options and every stage option by ship's name."""

    data: Path
    out: Path
    target: str
    passthrough: Passthrough
    options: Mapping[str, Any]
    precision: str | None = None
    host: str | None = None
    fleet: Path | None = None
    max_accuracy_drop: float | None = None
    force: frozenset[str] = frozenset()
    quiet: bool = False
    explicit: frozenset[str] = frozenset()  # option names given on the command line or in a config file

    @property
    def import_kind(self) -> str | None:
        if self.options.get("onnx_file") is not None:
            return "onnx"
        if self.options.get("weights") is not None:
            return "pytorch"
        if self.options.get("imagenet"):
            return "pretrained"
        return None


@dataclass(frozen=True)
class ShipResult:
    out: Path
    target: str
    precision: Precision
    stages: tuple[StageResult, ...]
    notes: dict[str, str] = field(default_factory=dict)
    report: Path | None = None

    @property
    def gate_failures(self) -> list[str]:
        return [f"{r.name}: {r.gate}" for r in self.stages if r.gate]

    def table(self) -> str:
        rows = [("stage", "status", "seconds", "result")]
        for r in self.stages:
            status = ("incomplete" if r.name == "deploy" else "gate failed") if r.gate else r.outcome.value
            rows.append(
                (r.name, status, f"{r.seconds:.1f}" if r.outcome is Outcome.RAN else "-", self.notes.get(r.name, ""))
            )
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(row[:3], widths)), row[3]]).rstrip() for row in rows)

    def raise_for_gates(self) -> None:
        if self.gate_failures:
            raise ToleranceError("; ".join(self.gate_failures))


# --------------------------------------------------------------------------- the stages


def _invoke(stage: str, kwargs: dict[str, Any]) -> None:
    import click

    command = stage_command(stage)
    with click.Context(command, info_name=f"edge-tl {stage}") as ctx:
        ctx.invoke(command.callback, **kwargs)  # type: ignore[arg-type]


def _kwargs(request: ShipRequest, stage: str, fixed: dict[str, Any]) -> dict[str, Any]:
    return stage_kwargs(stage, request.passthrough, dict(request.options), fixed, explicit=request.explicit)


def _interrupted_finetune(run: Any) -> bool:
    return (run.get("training") or {}).get("status") == "running"


def _finetune_action(request: ShipRequest, kwargs: dict[str, Any]) -> Callable[[], None]:
    def action() -> None:
        from edge_tl.runs import Run

        resume = Run.exists(request.out) and _interrupted_finetune(Run.open(request.out))
        try:
            _invoke("finetune", {**kwargs, "resume": resume})
        except ConfigError as exc:
            if resume and "--resume must use" in str(exc):
                from edge_tl.ship.stages import resume_hint

                raise resume_hint(exc, request.out) from exc
            raise

    return action


def _import_action(request: ShipRequest, kwargs: dict[str, Any]) -> Callable[[], None]:
    def action() -> None:
        # import makes its run in a new folder; RUN may already hold ship.toml and earlier runs.
        staging = request.out / IMPORTING_DIR
        if staging.exists():
            shutil.rmtree(staging)  # ship's own folder, left by an interrupted import
        _invoke("import", {**kwargs, "out": staging})
        entries = sorted(staging.iterdir(), key=lambda p: p.name == "manifest.json")  # the manifest last
        # RUN has no manifest here (the pipeline set a finished run aside), so what it holds under
        # these names is what an import killed while moving left: set it aside, never merged into.
        left = [request.out / e.name for e in entries if os.path.lexists(request.out / e.name)]
        if left:
            kept = set_aside(request.out, left)
            if not request.quiet:
                print(f"files of an interrupted import are kept in {kept}", file=sys.stderr)
        for entry in entries:
            # One rename each, on one disk: a file or a whole folder arrives complete, never inside another.
            os.replace(entry, request.out / entry.name)
        staging.rmdir()

    return action


def _command_stage(request: ShipRequest, name: str, fixed: dict[str, Any], files: dict[str, str]) -> Stage:
    kwargs = _kwargs(request, name, fixed)
    return Stage(name=name, action=lambda: _invoke(name, kwargs), options=kwargs, files=files)


def _report_stage(request: ShipRequest, files: dict[str, str]) -> Stage:
    def action() -> None:
        from edge_tl.report import write_report

        write_report(request.out)

    return Stage(name="report", action=action, options={}, files=files, outputs=("report/index.html",))


def plan(request: ShipRequest, target: Target, precision: Precision) -> list[Stage]:
    """The stages this request runs, in order."""
    o = request.options
    out, quiet = request.out, request.quiet
    target_file = {"target": file_fingerprint(request.target)} if Path(request.target).is_file() else {}
    stages: list[Stage] = []
    kind = request.import_kind
    if kind is None:
        kwargs = _kwargs(
            request, "finetune", {"data": str(request.data), "out": str(out), "resume": False, "quiet": quiet}
        )
        files = {"data": folder_fingerprint(request.data, ignore=frozenset({DATA_CONFIG_NAME}))}
        for key in ("val_data", "finetune_weights"):
            if o.get(key) is not None and Path(str(o[key])).exists():
                files[key] = file_fingerprint(str(o[key]))
        stages.append(
            Stage(
                "finetune",
                _finetune_action(request, kwargs),
                kwargs,
                files,
                creates_run=True,
                continues=_interrupted_finetune,
            )
        )
    else:
        # The --data folder gives the imported model its validation and calibration images (README),
        # unless --val-data or --calib-data name others.
        fixed: dict[str, Any] = {"out": out, "quiet": quiet}
        for key in ("val_data", "calib_data"):
            if o.get(key) is None:
                fixed[key] = request.data
        kwargs = _kwargs(request, "import", fixed)
        files = {
            k: file_fingerprint(v)
            for k in ("weights", "onnx_file", "labels", "val_data", "calib_data")
            if (v := kwargs.get(k)) is not None
        }
        stages.append(
            Stage(
                "import",
                _import_action(request, kwargs),
                {k: v for k, v in kwargs.items() if k != "out"},
                files,
                creates_run=True,
            )
        )
    if kind != "onnx":
        opset = target.export_opset(o["opset"] if "opset" in request.explicit else None, tensorrt=o.get("tensorrt"))
        stages.append(_command_stage(request, "export", {"run_dir": out, "quiet": quiet, "opset": opset}, target_file))
    if precision is Precision.INT8:
        fixed = {
            "run_dir": out,
            "target": request.target,
            "precision": "int8",
            "max_accuracy_drop": request.max_accuracy_drop,
            "quiet": quiet,
        }
        calib = {"calib_data": file_fingerprint(o["calib_data"])} if o.get("calib_data") is not None else {}
        stages.append(_command_stage(request, "quantize", fixed, {**target_file, **calib}))
    device = {"run_dir": out, "target": request.target, "precision": precision.value}
    if target.default_runtime.builds_engine:
        stages.append(_command_stage(request, "compile", {**device, "quiet": quiet}, target_file))
    stages.append(_command_stage(request, "bundle", {**device, "out": None}, target_file))
    if request.host is not None or request.fleet is not None:
        fleet = {"fleet": file_fingerprint(request.fleet)} if request.fleet is not None else {}
        fixed = {**device, "host": request.host, "fleet": request.fleet, "quiet": quiet}
        stages.append(_command_stage(request, "deploy", fixed, {**target_file, **fleet}))
    fixed = {"run_dir": out, "max_accuracy_drop": request.max_accuracy_drop, "quiet": quiet}
    stages.append(_command_stage(request, "verify", fixed, {}))
    stages.append(_report_stage(request, {}))
    unknown = request.force - {s.name for s in stages}
    if unknown:
        ran = ", ".join(s.name for s in stages)
        raise ConfigError(f"--force {', '.join(sorted(unknown))}: this run has no such stage (it runs {ran})")
    return stages


# --------------------------------------------------------------------------- the run


def write_run_config(out: Path, values: Mapping[str, Any]) -> Path:
    """RUN/ship.toml: the resolved options, so `edge-tl ship --config RUN/ship.toml` repeats the run."""
    from edge_tl.runs import atomic_write_text

    path = out / RUN_CONFIG_NAME
    text = config_text(
        dict(values),
        header=(
            "The options of this run, as `edge-tl ship` resolved them (command line over config file over defaults).\n"
            f"Repeat the run with: edge-tl ship --config {path}"
        ),
    )
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)
    return path


def _notes(out: Path) -> dict[str, str]:
    """One line per stage for the summary, read from the run's manifest."""
    from edge_tl.runs import Run

    run = Run.open(out)
    notes: dict[str, str] = {}
    top1 = (run.get("metrics") or {}).get("val_top1")
    if top1 is not None:
        notes["finetune"] = f"validation top-1 {top1 * 100:.2f}%"
    if run.get("classes"):
        notes["import"] = f"{len(run.get('classes'))} classes"
    onnx = [a.name for a in run.artifacts(kind="onnx") if a.stage == "export"]
    if onnx:
        notes["export"] = ", ".join(onnx)
    for artifact in run.artifacts():
        m = artifact.metrics
        if artifact.stage == "quantize" and artifact.kind == "onnx" and m.get("accuracy_drop_points") is not None:
            budget = m.get("max_accuracy_drop_points")
            notes.setdefault(
                "quantize",
                f"{artifact.name}: top-1 drop {m['accuracy_drop_points']:.2f} pt"
                + (f" (budget {budget:g} pt)" if budget is not None else ""),
            )
        elif artifact.kind == "build-plan" or artifact.kind == "engine":
            notes["compile"] = f"{artifact.kind} {artifact.path}"
        elif artifact.kind == "bundle":
            notes["bundle"] = artifact.path
        elif artifact.kind == "deploy-result" and m.get("p50_ms") is not None:
            top = f", top-1 {m['top1'] * 100:.2f}%" if m.get("top1") is not None else ""
            notes["deploy"] = (notes.get("deploy", "") + "; " if "deploy" in notes else "") + (
                f"{artifact.name[len('deploy-') :]}: p50 {m['p50_ms']:.3f} ms{top}"
            )
    fleet = run.path("deploy", "fleet.json")
    if "fleet" in _deployed_by(run) and fleet.is_file():
        import json

        try:
            devices = json.loads(fleet.read_text(encoding="utf-8")).get("devices") or []
        except (OSError, ValueError, AttributeError):
            devices = []
        for device in devices:
            if isinstance(device, dict) and device.get("status") != "ok":
                reason = str(device.get("reason") or "?").splitlines()[0][:160]
                notes["deploy"] = (notes.get("deploy", "") + "; " if "deploy" in notes else "") + (
                    f"{device.get('label')}: MISSING ({reason})"
                )
    verify = run.path("verify", "report.md")
    if verify.is_file():
        notes["verify"] = str(verify)
    index = run.path("report", "index.html")
    if index.is_file():
        notes["report"] = str(index)
    return notes


def _deployed_by(run: Any) -> dict[str, Any]:
    """The options ship's deploy stage last ran with (``fleet`` set for a fleet)."""
    record = run.stage_record("deploy") or {}
    options = (record.get("inputs") or {}).get("options") or {}
    return {k: v for k, v in options.items() if v is not None} if isinstance(options, dict) else {}


def ship(
    request: ShipRequest, *, target: Target, precision: Precision, values: Mapping[str, Any], say: Callable[[str], None]
) -> ShipResult:
    """Run (or continue) every stage of ``request`` in ``request.out``.

    The pre-flight checks come first (see the CLI).
    """
    from edge_tl.runs import run_writer

    stages = plan(request, target, precision)
    pipeline = Pipeline(request.out, force=request.force, say=say)
    with run_writer(request.out, "ship"):  # held already when called from the command line
        write_run_config(request.out, values)
        results = pipeline.run(stages)
    index = request.out / "report" / "index.html"
    return ShipResult(
        out=request.out,
        target=target.name,
        precision=precision,
        stages=tuple(results),
        notes=_notes(request.out),
        report=index if index.is_file() else None,
    )


__all__ = ["STAGE_ORDER", "ShipRequest", "ShipResult", "plan", "ship", "write_run_config"]
