"""``write_report``: ``RUN/report/index.html`` (and ``fleet.html`` after a fleet deploy).

Each page is one self-contained file: its images are PNG data URIs and its style is inline,
so it can be mailed, attached to a CI job or opened offline, and it needs no JavaScript.
"""

from __future__ import annotations

import base64
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import edge_tl.report.plots as plots
from edge_tl import __version__
from edge_tl._lazy import lazy_import
from edge_tl.deploy.fleet import FLEET_FILE
from edge_tl.errors import RunError
from edge_tl.report.collect import Device, ModelRow, RunData, collect
from edge_tl.runs import MANIFEST_NAME, atomic_write_text, now_iso
from edge_tl.significance import images_needed_to_detect

REPORT_DIR = "report"
INDEX = "index.html"
FLEET = "fleet.html"
TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class ReportResult:
    index: Path
    fleet: Path | None


def _data_uri(png: bytes | None) -> str | None:
    return None if png is None else "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _missing(value: Any) -> bool:
    # Anything but a number (None, a field an older edge-tl did not write) shows as "-".
    return isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value)


def _pct(value: Any) -> str:
    return "-" if _missing(value) else f"{value * 100:.2f}%"


def _pts(value: Any) -> str:
    return "-" if _missing(value) else f"{value:+.2f} pt"


def _ms(value: Any) -> str:
    return "-" if _missing(value) else f"{value:.3f}"


def _sci(value: Any) -> str:
    return "-" if _missing(value) else f"{value:.2e}"


def _size(value: Any) -> str:
    if _missing(value):
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value} B"


def _environment() -> Any:
    jinja2 = lazy_import("jinja2", purpose="the HTML report")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        # Result files are read tolerantly: a field missing from one renders as empty, never an error.
        undefined=jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(pct=_pct, pts=_pts, ms=_ms, sci=_sci, size=_size)
    return env


def _headline(data: RunData) -> str:
    backbone = (data.manifest.get("backbone") or {}).get("name") or "model"
    source = (data.manifest.get("data") or {}).get("source")
    where = f" on {Path(str(source)).name}" if source else ""
    return f"{backbone}{where}"


def _probe_facts(probe: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    # Whether jetson_clocks held the clocks is a fact of the measurement, recorded with each result.
    clocks = next((r["entry"]["clocks_locked"] for r in results if r["entry"].get("clocks_locked") is not None), None)
    return {
        "host": probe.get("host"),
        "model": probe.get("model") or probe.get("gpu_name"),
        "JetPack": probe.get("jetpack"),
        "L4T": probe.get("l4t"),
        "TensorRT": probe.get("tensorrt"),
        "trtexec": probe.get("trtexec"),
        "GPU": probe.get("gpu_name"),
        "compute capability": probe.get("compute_capability"),
        "DLA cores": probe.get("dla_cores"),
        "power mode": probe.get("power_mode") or "not reported (nvpmodel absent)",
        "clocks locked": "yes" if clocks else ("no" if clocks is not None else "not recorded"),
        "arch / kernel": " / ".join(str(v) for v in (probe.get("arch"), probe.get("kernel")) if v),
        "Python": probe.get("python"),
        "memory (MB total / available)": " / ".join(str(probe.get(k)) for k in ("mem_total_mb", "mem_available_mb"))
        if probe.get("mem_total_mb")
        else None,
        "probed": probe.get("probed"),
    }


def _device_view(device: Device, confidence: str) -> dict[str, Any]:
    rows = list(device.rows)
    return {
        "name": device.name,
        "probe": device.probe,
        "probe_facts": _probe_facts(device.probe, device.results) if device.probe else {},
        "results": device.results,
        "rows": rows,
        "files": device.files,
        "plot": _data_uri(
            plots.accuracy_latency(rows, title=f"{device.name}: top-1 against latency", confidence=confidence)
        ),
    }


def _labelled(row: ModelRow, origin: str | None = None) -> dict[str, Any]:
    return {"label": row.name if origin is None else f"{row.name} @ {origin}", "change": row.change}


def render_run(data: RunData, *, fleet_page: str | None) -> str:
    confidence = f"{(1 - data.level) * 100:g}%"
    manifest = data.manifest
    backbone = manifest.get("backbone") or {}
    training = manifest.get("training") or {}
    dataset = manifest.get("data") or {}
    prep = manifest.get("preprocessing") or {}
    reference = next((m for m in data.models if m.is_reference and m.top1 is not None), None)
    changes = [_labelled(m) for m in data.models if m.change]
    changes += [_labelled(r, d.name) for d in data.devices for r in d.rows if r.change]
    verify = data.verify
    gate_line = None
    if verify:
        gates = verify.get("gates") or {}
        given = []
        if gates.get("max_accuracy_drop_pts") is not None:
            given.append(f"--max-accuracy-drop {gates['max_accuracy_drop_pts']:g} --gate {gates.get('gate', 'point')}")
        if gates.get("min_agreement") is not None:
            given.append(f"--min-agreement {gates['min_agreement']:g}")
        if given:
            verdict = (
                "Gates passed" if verify.get("passed") else "Gates FAILED: " + "; ".join(verify.get("failures") or [])
            )
            gate_line = f"{verdict} ({', '.join(given)})"
    detectable = None
    if reference is not None and reference.num_images:
        n = reference.num_images
        k = images_needed_to_detect(n, level=data.level)
        detectable = f"What {n} images can tell: one image is {100 / n:.2f} pt; " + (
            f"a drop is distinguishable from noise (exact McNemar, level {data.level:g}) only from {k} images lost "
            f"and none gained ({k * 100 / n:.2f} pt)."
            if k <= n
            else f"no drop can be distinguishable from noise (exact McNemar, level {data.level:g}) on so few images."
        )
    context = {
        "version": __version__,
        "generated": now_iso(),
        "run_name": data.root.resolve().name,
        "headline": _headline(data),
        "manifest": manifest,
        "level": data.level,
        "confidence": confidence,
        "reference": reference,
        "changes": changes,
        "verify": verify,
        "gate_line": gate_line,
        "detectable": detectable,
        "missing": data.missing,
        "models": data.models,
        "int8": [m for m in data.models if m.precision == "int8" and m.kind == "onnx"],
        "plot_accuracy_latency": _data_uri(
            plots.accuracy_latency(
                data.models, title="top-1 against p50 latency at batch 1, this machine", confidence=confidence
            )
        ),
        "plot_curves": _data_uri(plots.training_curves(data.curves)),
        "engines": data.engines,
        "plot_precision_mix": _data_uri(plots.precision_mix(data.engines)),
        "best_epoch": training.get("best_epoch"),
        "confusion": _data_uri(data.confusion_png.read_bytes()) if data.confusion_png else None,
        "worst_classes": data.worst_classes,
        "per_class": data.per_class,
        "skipped": [s for s in dataset.get("skipped") or [] if isinstance(s, dict)],
        "model_facts": {
            "backbone": backbone.get("name"),
            "source / architecture": " / ".join(str(v) for v in (backbone.get("source"), backbone.get("arch")) if v)
            or None,
            "weights": backbone.get("weights"),
            "input size": prep.get("input_size"),
            "classes": len(manifest.get("classes") or []) or None,
            "epochs run": training.get("epochs_run"),
            "best epoch": training.get("best_epoch"),
            "device / AMP": " / ".join(str(training.get(k)) for k in ("device", "amp") if training.get(k) is not None)
            or None,
            "best validation top-1": _pct((manifest.get("metrics") or {}).get("val_top1")),
        },
        "data_facts": {
            "source": dataset.get("source"),
            "validation source": dataset.get("val_source"),
            "validation split": dataset.get("val_split"),
            "seed": dataset.get("seed"),
            "training images": dataset.get("num_train"),
            "validation images": dataset.get("num_val"),
        },
        "devices": [_device_view(d, confidence) for d in data.devices],
        "fleet_page": fleet_page,
        "commands": data.commands,
    }
    return _environment().get_template("run.html.j2").render(**context)


def render_fleet(data: RunData) -> str:
    fleet = data.fleet or {}
    by_name = {d.name: d for d in data.devices}
    devices = []
    points = []
    for entry in fleet.get("devices") or []:
        if not isinstance(entry, dict):
            continue
        device = by_name.get(str(entry.get("label")))
        row = next((r for r in device.rows if r.precision == entry.get("precision")), None) if device else None
        devices.append(
            {
                **{
                    k: entry.get(k)
                    for k in (
                        "label",
                        "host",
                        "precision",
                        "jetpack",
                        "tensorrt",
                        "p50_ms",
                        "p99_ms",
                        "throughput_ips",
                        "top1",
                        "delta_top1_pts",
                        "status",
                        "reason",
                    )
                },
                # A device that failed before its profile was read shows the profile as given (a name or a TOML path).
                "target": Path(str(entry.get("target"))).stem
                if str(entry.get("target")).endswith(".toml")
                else entry.get("target"),
                "change": row.change if row and entry.get("status") == "ok" else None,
            }
        )
        if row is not None and entry.get("status") == "ok":
            points.append(
                ModelRow(
                    name=str(entry.get("label")),
                    kind=row.kind,
                    precision=row.precision,
                    top1=row.top1,
                    top1_ci=row.top1_ci,
                    p50_ms=row.p50_ms,
                )
            )
    confidence = f"{(1 - data.level) * 100:g}%"
    context = {
        "version": __version__,
        "generated": now_iso(),
        "run_name": data.root.resolve().name,
        "headline": _headline(data),
        "fleet": fleet,
        "devices": devices,
        "ok_count": sum(1 for d in devices if d["status"] == "ok"),
        "failed_count": sum(1 for d in devices if d["status"] != "ok"),
        "plot": _data_uri(
            plots.accuracy_latency(points, title="top-1 against latency per device", confidence=confidence)
        ),
    }
    return _environment().get_template("fleet.html.j2").render(**context)


def write_report(run_dir: str | os.PathLike[str]) -> ReportResult:
    """Write ``RUN/report/index.html`` (and ``fleet.html`` when a fleet deploy ran) from the run directory alone."""
    root = Path(run_dir)
    if not (root / MANIFEST_NAME).is_file():
        raise RunError(
            f"{str(root)!r} is not a run directory (no {MANIFEST_NAME}); pass the directory finetune created"
        )
    try:
        data = collect(root)
    except ValueError as exc:
        raise RunError(f"cannot report on {str(root)!r}: {exc}") from exc
    out = root / REPORT_DIR
    fleet = atomic_write_text(out / FLEET, render_fleet(data)) if data.fleet else None
    index = atomic_write_text(out / INDEX, render_run(data, fleet_page=FLEET if fleet else None))
    return ReportResult(index=index, fleet=fleet)


def refresh_report(run_dir: str | os.PathLike[str]) -> ReportResult | None:
    """Rewrite the report of ``run_dir`` if it has one and a stage recorded something since; else do nothing.

    Every stage records what it made in the manifest (a fleet deploy also writes ``fleet.json``,
    even when every device failed), so either being newer than the page means it is out of date.
    """
    root = Path(run_dir)
    index, manifest = root / REPORT_DIR / INDEX, root / MANIFEST_NAME
    if not index.is_file() or not manifest.is_file():
        return None
    sources = [p.stat().st_mtime_ns for p in (manifest, root / "deploy" / FLEET_FILE) if p.is_file()]
    if max(sources) <= index.stat().st_mtime_ns:
        return None
    return write_report(root)
