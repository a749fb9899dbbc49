"""Everything the report shows, read from the run directory alone (JSON and numpy, never torch).

Each reader is tolerant: a file that a stage has not written yet, or a field an older or newer
edge-tl did not write, leaves its part of the page out (with a line saying what to run), and
never stops the report.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_tl.artifacts import CHECKPOINT_BEST, SOURCE_SECTION
from edge_tl.deploy.api import ACCURACY_FILE
from edge_tl.deploy.fleet import FLEET_FILE
from edge_tl.errors import RunError
from edge_tl.runs import MANIFEST_NAME, check_manifest_shape, confine
from edge_tl.significance import DEFAULT_LEVEL, comparison_from_result, wilson_interval
from edge_tl.verify.deploy_records import entry_problem

#: Kinds of artifacts that are models, compared side by side with the original.
MODEL_KINDS = ("checkpoint", "onnx", "engine")
# Named latency definitions a device result may carry beside ``latency_ms``.
DEVICE_LATENCIES = (
    ("latency_ms", "as measured"),
    ("gpu_compute", "GPU compute"),
    ("end_to_end", "end to end (H2D + compute + D2H)"),
)


def read_json(path: Path | None) -> Any:
    """The parsed file, or ``None`` when it is missing or not JSON (the report then leaves its part out)."""
    if path is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def in_run(run_dir: Path, rel: str | Path) -> Path | None:
    """The run's file ``rel`` (from a record or a fixed name), or ``None`` when it would lead out of the run.

    The page is mailed and attached to CI: it shows only files of the run itself, never one a
    record points at elsewhere (an absolute path, ``..`` or a symlink out).
    """
    try:
        return confine(run_dir, rel)
    except RunError:
        return None


#: The eight bytes every PNG file starts with (PNG specification, section 5.2).
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_png(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
    except OSError:
        return False


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


@dataclass
class ModelRow:
    """One model in the side-by-side table (local) or in a device section."""

    name: str
    kind: str
    precision: str
    size_bytes: int | None = None
    backend: str = "-"
    num_images: int | None = None
    top1: float | None = None
    top1_ci: tuple[float, float] | None = None
    change: dict[str, Any] | None = None  # PairedComparison.to_dict()
    per_class: list[dict[str, Any]] = field(default_factory=list)  # ClassChange.to_dict() per class (verify)
    agreement: float | None = None
    mean_kl: float | None = None
    max_abs_diff: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    latency_batch: int | None = None
    noisy: list[str] = field(default_factory=list)
    skipped: str | None = None
    is_reference: bool = False
    float_layers: list[dict[str, Any]] = field(default_factory=list)
    status: str | None = None  # e.g. an INT8 model that did not meet its budget
    is_device: bool = False  # measured on a device: its latency carries no local noise flag


def top1_interval(top1: float | None, n: int | None, level: float) -> tuple[float, float] | None:
    if top1 is None or not n:
        return None
    return wilson_interval(round(top1 * n), n, level=level)


def _why_float(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The layers an INT8 model kept in float, each with the measurement that put it there."""
    details, metrics = record.get("details") or {}, record.get("metrics") or {}
    layers = details.get("float_layers") or []
    sensitivity = {
        s.get("layer"): s.get("kl_with_layer_in_float") for s in metrics.get("sensitivity") or [] if isinstance(s, dict)
    }
    ranked = [s.get("layer") for s in metrics.get("sensitivity") or [] if isinstance(s, dict)]
    budget = metrics.get("max_accuracy_drop_points")
    attempts = [a for a in metrics.get("attempts") or [] if isinstance(a, dict)]
    first_drop = _num(attempts[0].get("drop_points")) if attempts else None
    out = []
    for layer in layers:
        why = []
        if first_drop is not None and budget is not None:
            why.append(f"fully quantized model dropped {first_drop:.2f} pt, over the {budget:g} pt budget")
        if layer in ranked:
            kl = sensitivity.get(layer)
            rank = ranked.index(layer) + 1
            why.append(
                f"sensitivity rank {rank} of {len(ranked)}"
                + (f" (KL {kl:.2e} with only this layer in float)" if _num(kl) is not None else "")
            )
        out.append({"layer": layer, "why": "; ".join(why) or "kept in float by the quantize recipe"})
    return out


def _per_class_counts(run_dir: Path, classes: list[str], split_file: str) -> list[dict[str, Any]]:
    split = read_json(in_run(run_dir, split_file)) or {}
    counts = {
        part: Counter(e[1] for e in split.get(part) or [] if isinstance(e, list) and len(e) == 2)
        for part in ("train", "val")
    }
    if not counts["train"] and not counts["val"]:
        return []
    return [
        {"name": name, "train": counts["train"].get(i, 0), "val": counts["val"].get(i, 0)}
        for i, name in enumerate(classes)
    ]


def _worst_classes(run_dir: Path, evaluation: dict[str, Any], limit: int = 5) -> list[dict[str, Any]]:
    confusion = read_json(in_run(run_dir, str(evaluation.get("confusion_matrix", "evaluate/confusion_matrix.json"))))
    confusion = confusion or {}
    classes, matrix = confusion.get("classes") or [], confusion.get("matrix") or []
    rows = []
    for i, (name, counts) in enumerate(zip(classes, matrix)):
        total = sum(counts)
        if not total:
            continue
        errors = [(c, classes[j]) for j, c in enumerate(counts) if j != i and c]
        worst = max(errors) if errors else None
        rows.append(
            {
                "name": name,
                "images": total,
                "correct": counts[i],
                "accuracy": counts[i] / total,
                "confused_with": f"{worst[1]} ({worst[0]} image{'s' if worst[0] != 1 else ''})" if worst else "-",
            }
        )
    rows.sort(key=lambda r: (r["accuracy"], -r["images"]))
    return rows[:limit]


def _curves(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    path = in_run(run_dir, "metrics.jsonl")
    try:
        lines = path.read_text(encoding="utf-8").splitlines() if path is not None else []
    except OSError:
        return out
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "epoch" in record:
            out.append(record)
    return out


def _model_rows(manifest: dict[str, Any], verify: dict[str, Any] | None, run_dir: Path, level: float) -> list[ModelRow]:
    artifacts = manifest.get("artifacts") or {}
    verified = {
        r.get("name"): r for r in (verify or {}).get("rows") or [] if isinstance(r, dict) and r.get("origin") == "local"
    }
    warnings = (verify or {}).get("latency_warnings") or {}
    reference_name = (
        (verify or {}).get("reference") or (manifest.get(SOURCE_SECTION) or {}).get("reference") or CHECKPOINT_BEST
    )
    names = [reference_name] if reference_name in artifacts else []
    names += [
        n
        for n, a in artifacts.items()
        if a.get("kind") in MODEL_KINDS and n != reference_name and a.get("kind") != "checkpoint"
    ]
    rows = []
    for name in names:
        record = artifacts[name]
        v = verified.get(name) or {}
        path = in_run(run_dir, str(record.get("path", "")))
        n = v.get("num_images") or None
        top1 = _num(v.get("top1"))
        row = ModelRow(
            name=name,
            kind=str(record.get("kind")),
            precision=str(record.get("precision") or v.get("precision") or "-"),
            size_bytes=v.get("size_bytes")
            if v.get("size_bytes") is not None
            else (path.stat().st_size if path is not None and path.is_file() else None),
            backend=str(v.get("backend") or "-"),
            num_images=n,
            top1=top1,
            top1_ci=top1_interval(top1, n, level),
            change=v.get("change"),
            per_class=[c for c in v.get("per_class") or [] if isinstance(c, dict)],
            agreement=_num(v.get("top1_agreement")),
            mean_kl=_num(v.get("mean_kl")),
            max_abs_diff=_num(v.get("max_abs_diff")),
            p50_ms=_num(v.get("latency_p50_ms")),
            p99_ms=_num(v.get("latency_p99_ms")),
            latency_batch=v.get("latency_batch"),
            noisy=[w for w in warnings.get(name) or [] if "noisy" in w],
            skipped=v.get("skipped")
            or (None if v or name == reference_name else "not verified yet: run `edge-tl verify RUN`"),
            is_reference=name == reference_name,
            float_layers=_why_float(record) if record.get("precision") == "int8" else [],
            status=(record.get("details") or {}).get("status"),
        )
        rows.append(row)
    return rows


def _latency_block(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        return None
    pick = {k: _num(value.get(k, value.get(f"{k}_ms"))) for k in ("p50", "p99", "mean")}
    if all(v is None for v in pick.values()):
        return None
    return {**pick, "batch_size": value.get("batch_size")}


def _energy(entry: dict[str, Any], power: dict[str, Any] | None) -> dict[str, Any] | None:
    keyed = {k: v for k, v in entry.items() if "energy" in k and _num(v) is not None}
    mean_mw = _num(entry.get("power_mean_mw"))
    if not keyed and mean_mw is None and not power:
        return None
    return {
        "fields": keyed,
        "power_mean_mw": mean_mw,
        "hottest_c": _num(entry.get("hottest_c")),
        "samples": (power or {}).get("samples"),
    }


@dataclass
class Device:
    name: str
    probe: dict[str, Any] | None
    results: list[dict[str, Any]]
    rows: list[ModelRow]
    power: dict[str, Any] | None
    files: list[str]


def _devices(run_dir: Path, reference_top1: float | None, level: float, problems: list[str]) -> list[Device]:
    """The device sections; an entry of accuracy.json that is not a measurement is left out, said in ``problems``."""
    deploy = run_dir / "deploy"
    devices = []
    for folder in sorted(p for p in deploy.glob("*") if p.is_dir() and not p.name.startswith(".")):
        if in_run(run_dir, f"deploy/{folder.name}") is None:
            continue  # a symlink out of the run: not the run's device results
        data = read_json(in_run(run_dir, f"deploy/{folder.name}/{ACCURACY_FILE}"))
        entries = (
            data.get("results")
            if isinstance(data, dict) and "results" in data
            else ([data] if isinstance(data, dict) else [])
        )
        results, rows = [], []
        for entry in entries if isinstance(entries, list) else []:
            problem = entry_problem(entry)
            if problem is not None:
                problems.append(
                    f"Left out a result of {folder.name}: {folder / ACCURACY_FILE} is not a measurement ({problem}); "
                    f"deploy to {folder.name} again."
                )
                continue
            n = entry.get("num_images") if isinstance(entry.get("num_images"), int) else None
            top1 = _num(entry.get("top1"))
            ref = _num(entry.get("reference_top1"))
            ref = ref if ref is not None else reference_top1
            change = (
                comparison_from_result(entry, top1 - ref, level=level) if top1 is not None and ref is not None else None
            )
            latencies = [(label, _latency_block(entry.get(key))) for key, label in DEVICE_LATENCIES]
            results.append(
                {
                    "entry": entry,
                    "latencies": [(label, block) for label, block in latencies if block],
                    "energy": _energy(entry, read_json(in_run(run_dir, f"deploy/{folder.name}/tegrastats.json"))),
                    "reference_top1": ref,
                    "build": entry.get("build") if isinstance(entry.get("build"), dict) else None,
                }
            )
            lat = _latency_block(entry.get("latency_ms")) or next((b for _, b in latencies if b), None) or {}
            rows.append(
                ModelRow(
                    name=str(entry["artifact"]),
                    kind=str(entry.get("kind") or "engine"),
                    precision=str(entry.get("precision") or "-"),
                    size_bytes=entry.get("size_bytes"),
                    backend=str(entry.get("backend") or "-"),
                    num_images=n,
                    top1=top1,
                    top1_ci=top1_interval(top1, n, level),
                    change=change.to_dict() if change else None,
                    agreement=_num(entry.get("top1_agreement")),
                    mean_kl=_num(entry.get("mean_kl")),
                    max_abs_diff=_num(entry.get("max_abs_diff")),
                    p50_ms=lat.get("p50"),
                    p99_ms=lat.get("p99"),
                    latency_batch=lat.get("batch_size"),
                    is_device=True,
                )
            )
        probe = read_json(in_run(run_dir, f"deploy/{folder.name}/probe.json"))
        if not results and not isinstance(probe, dict):
            continue
        files = sorted(p.name for p in folder.iterdir() if p.is_file())
        devices.append(
            Device(
                folder.name,
                probe if isinstance(probe, dict) else None,
                results,
                rows,
                read_json(in_run(run_dir, f"deploy/{folder.name}/tegrastats.json")),
                files,
            )
        )
    return devices


@dataclass
class RunData:
    """What the run page shows."""

    root: Path
    manifest: dict[str, Any]
    level: float
    curves: list[dict[str, Any]]
    per_class: list[dict[str, Any]]
    worst_classes: list[dict[str, Any]]
    confusion_png: Path | None
    verify: dict[str, Any] | None
    models: list[ModelRow]
    devices: list[Device]
    fleet: dict[str, Any] | None
    commands: list[dict[str, Any]]
    missing: list[str]
    engines: list[dict[str, Any]] = field(default_factory=list)  # per-layer reports (see _engine_layers)


def _engine_layers(manifest: dict[str, Any], run_dir: Path) -> list[dict[str, Any]]:
    """Each engine's own layer report: the summary from its manifest record and, when its layer information
    file is in the run (``layers.json`` beside the engine, not a symlink), the per-layer table."""
    from edge_tl.errors import RunError
    from edge_tl.trt.layers import parse_layer_info

    root = run_dir.resolve()
    engines = []
    for name, record in (manifest.get("artifacts") or {}).items():
        if not isinstance(record, dict) or record.get("kind") != "engine":
            continue
        report = (record.get("details") or {}).get("layer_report")
        if not isinstance(report, dict):
            continue
        info = (run_dir / str(record.get("path", ""))).parent / "layers.json"
        layers: list[dict[str, Any]] = []
        if info.is_file() and not info.is_symlink() and info.resolve().is_relative_to(root):
            try:
                layers = [x.to_dict() for x in parse_layer_info(info.read_text(encoding="utf-8"), where=str(info))]
            except (RunError, OSError):
                layers = []
        engines.append({"name": name, "precision": record.get("precision"), "report": report, "layers": layers})
    return engines


def collect(run_dir: Path, *, level: float = DEFAULT_LEVEL) -> RunData:
    manifest = read_json(in_run(run_dir, MANIFEST_NAME))
    if manifest is None:
        raise ValueError(f"{str(run_dir / MANIFEST_NAME)!r} is missing or not JSON")
    check_manifest_shape(manifest, run_dir / MANIFEST_NAME)  # the one shape check every reader relies on
    verify = read_json(in_run(run_dir, "verify/report.json"))
    verify = verify if isinstance(verify, dict) else None
    if verify and isinstance((verify.get("gates") or {}).get("significance_level"), float):
        level = verify["gates"]["significance_level"]
    classes = [str(c) for c in manifest.get("classes") or []]
    data = manifest.get("data") or {}
    evaluation = manifest.get("evaluation") or {}
    png_path = str(evaluation.get("confusion_matrix_png", "evaluate/confusion_matrix.png"))
    confusion_png = in_run(run_dir, png_path)
    models = _model_rows(manifest, verify, run_dir, level)
    reference_top1 = next((m.top1 for m in models if m.is_reference), None)
    fleet = read_json(in_run(run_dir, f"deploy/{FLEET_FILE}"))
    commands = [
        {
            "name": name,
            "kind": a.get("kind"),
            "stage": a.get("stage"),
            "created": a.get("created"),
            "path": a.get("path"),
            "sha256": (a.get("sha256") or "")[:12],
            "command": a.get("command"),
        }
        for name, a in (manifest.get("artifacts") or {}).items()
        if isinstance(a, dict)
    ]
    problems: list[str] = []
    devices = _devices(run_dir, reference_top1, level, problems)
    missing = []
    if in_run(run_dir, "metrics.jsonl") is None or not (run_dir / "metrics.jsonl").is_file():
        missing.append("No training curves: metrics.jsonl is written by `edge-tl finetune`.")
    if confusion_png is None:
        missing.append(f"No confusion matrix: the manifest records it at {png_path!r}, outside the run.")
    elif not confusion_png.is_file():
        missing.append("No confusion matrix: run `edge-tl evaluate RUN`.")
    elif not is_png(confusion_png):
        missing.append(f"No confusion matrix: {png_path!r} is not a PNG image; run `edge-tl evaluate RUN`.")
        confusion_png = None
    if verify is None:
        missing.append("No comparison with the original yet: run `edge-tl verify RUN`.")
    missing += problems
    return RunData(
        root=run_dir,
        manifest=manifest,
        level=level,
        curves=_curves(run_dir),
        per_class=_per_class_counts(run_dir, classes, str(data.get("split_file") or "split.json")),
        worst_classes=_worst_classes(run_dir, evaluation),
        confusion_png=confusion_png if confusion_png is not None and confusion_png.is_file() else None,
        verify=verify,
        models=models,
        devices=devices,
        fleet=fleet if isinstance(fleet, dict) else None,
        commands=commands,
        missing=missing,
        engines=_engine_layers(manifest, run_dir),
    )
