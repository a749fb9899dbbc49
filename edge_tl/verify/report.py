"""Verification rows and the three report files (Markdown, JSON, PNG)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from edge_tl._lazy import lazy_import
from edge_tl.runs import atomic_write_bytes, atomic_write_json, atomic_write_text


@dataclass(frozen=True)
class VerifyRow:
    """One model in the comparison. ``None`` means not measured (or not applicable)."""

    name: str
    kind: str
    precision: str | None
    backend: str
    origin: str  # "local", or "deploy:<host>" for results brought back from a device
    num_images: int
    top1: float | None = None
    top5: float | None = None
    delta_top1_pts: float | None = None
    top1_agreement: float | None = None
    mean_kl: float | None = None
    max_abs_diff: float | None = None
    latency_batch: int | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    size_bytes: int | None = None
    speedup: float | None = None
    skipped: str | None = None  # why this artifact could not be run here
    change: dict[str, Any] | None = None  # edge_tl.significance.PairedComparison.to_dict() against the original
    # The named latencies of edge_tl.bench.latency (latency-statistics dicts), where the backend knows them.
    gpu_compute: dict[str, Any] | None = None
    end_to_end: dict[str, Any] | None = None
    energy_mj_per_image: float | None = None
    # edge_tl.significance.ClassChange.to_dict() per class with validation images, against the original.
    per_class: list[dict[str, Any]] | None = None

    @property
    def label(self) -> str:
        return self.name if self.origin == "local" else f"{self.name} @ {self.origin.split(':', 1)[1]}"

    @property
    def per_class_worst(self) -> str | None:
        """The class whose recall fell most, in words (None without per-class data)."""
        if not self.per_class:
            return None
        worst = min(self.per_class, key=lambda c: (c["delta_pts"], c["gained"] - c["lost"]))
        return worst["text"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value * scale, spec)


COLUMNS = (
    ("artifact", lambda r: r.name if r.origin == "local" else f"{r.name} @ {r.origin.split(':', 1)[1]}"),
    ("kind", lambda r: r.kind),
    ("precision", lambda r: r.precision or "-"),
    ("backend", lambda r: r.backend),
    ("top-1 %", lambda r: _fmt(r.top1, ".2f", 100)),
    ("top-5 %", lambda r: _fmt(r.top5, ".2f", 100)),
    ("Δ top-1 pts", lambda r: _fmt(r.delta_top1_pts, "+.2f")),
    ("agree %", lambda r: _fmt(r.top1_agreement, ".2f", 100)),
    ("mean KL", lambda r: _fmt(r.mean_kl, ".2e")),
    ("max |Δlogit|", lambda r: _fmt(r.max_abs_diff, ".2e")),
    ("p50 ms", lambda r: _fmt(r.latency_p50_ms, ".3f")),
    ("p99 ms", lambda r: _fmt(r.latency_p99_ms, ".3f")),
    ("size MB", lambda r: _fmt(None if r.size_bytes is None else r.size_bytes / 1e6, ".2f")),
    ("speed-up", lambda r: _fmt(r.speedup, ".2f") + ("x" if r.speedup is not None else "")),
)


def _cells(rows: Sequence[VerifyRow]) -> list[list[str]]:
    return [[fn(r) for _, fn in COLUMNS] for r in rows]


def format_table(rows: Sequence[VerifyRow], notes: Sequence[str] = ()) -> str:
    """A plain-text table for the terminal."""
    header = [name for name, _ in COLUMNS]
    body = _cells(rows)
    widths = [max(len(header[i]), *(len(row[i]) for row in body)) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body]
    lines += [f"skipped {r.name}: {r.skipped}" for r in rows if r.skipped]
    lines += change_lines(rows)
    lines += [f"note: {note}" for note in notes if "noisy" in note or note.startswith(("GATE", "Gate"))]
    return "\n".join(lines)


def change_lines(rows: Sequence[VerifyRow]) -> list[str]:
    """One line per compared artifact: its top-1 change, interval and whether it is distinguishable from
    noise; and its worst class (the largest recall drop)."""
    lines = [f"Δ top-1 {r.label}: {r.change['text']}" for r in rows if r.change]
    lines += [f"worst class of {r.label}: {r.per_class_worst}" for r in rows if r.per_class]
    return lines


def class_table(row: VerifyRow) -> list[str]:
    """Markdown: one line per class of ``row``, a change distinguishable from noise (Holm-corrected
    exact McNemar) marked in bold."""
    out = [
        f"### Per class: {row.label}",
        "",
        "| class | images | recall original % | recall % | Δ pts | lost | gained | 95% CI pts | Holm p | |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in row.per_class or []:
        mark = "**distinguishable from noise**" if c["significant"] else ""
        out.append(
            f"| {c['name']} | {c['images']} | {100 * c['reference_recall']:.2f} | {100 * c['recall']:.2f} | "
            f"{c['delta_pts']:+.2f} | {c['lost']} | {c['gained']} | {c['ci_low_pts']:+.2f} to {c['ci_high_pts']:+.2f} "
            f"| {c['p_holm']:.3g} | {mark} |"
        )
    return out


def markdown(rows: Sequence[VerifyRow], *, title: str, notes: Sequence[str]) -> str:
    header = [name for name, _ in COLUMNS]
    out = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in _cells(rows)]
    out.append("")
    out += [f"- {note}" for note in notes]
    out += [f"- {line}" for line in change_lines(rows)]
    out += [f"- skipped `{r.name}`: {r.skipped}" for r in rows if r.skipped]
    for r in rows:
        if r.per_class:
            out += ["", *class_table(r)]
    return "\n".join(out) + "\n"


def write_reports(
    out_dir: Path, *, rows: Sequence[VerifyRow], payload: dict[str, Any], title: str, notes: Sequence[str]
) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": atomic_write_json(out_dir / "report.json", payload),
        "markdown": atomic_write_text(out_dir / "report.md", markdown(rows, title=title, notes=notes)),
        "png": plot(out_dir / "report.png", rows, title=title),
    }
    return paths


def plot(path: Path, rows: Sequence[VerifyRow], *, title: str) -> Path:
    """Accuracy against latency, one labelled point per measured model."""
    import io

    matplotlib = lazy_import("matplotlib", purpose="the verification plot")
    matplotlib.use("Agg")
    plt = lazy_import("matplotlib.pyplot")
    points = [r for r in rows if r.top1 is not None and r.latency_p50_ms is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        for r in points:
            marker = "o" if r.origin == "local" else "s"
            ax.scatter(r.latency_p50_ms, r.top1 * 100, marker=marker, s=40)
            label = r.name if r.origin == "local" else f"{r.name} @ {r.origin.split(':', 1)[1]}"
            ax.annotate(label, (r.latency_p50_ms, r.top1 * 100), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlabel("latency p50 at batch 1 (ms)")
        ax.set_ylabel("validation top-1 (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        if points:
            ax.set_xlim(left=0, right=max(r.latency_p50_ms for r in points) * 1.3)  # type: ignore[type-var]
        buffer = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())
