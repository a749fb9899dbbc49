"""The report's figures, drawn with matplotlib (Agg) into PNG bytes."""

from __future__ import annotations

import io
from typing import Any, Sequence

from edge_tl._lazy import lazy_import
from edge_tl.report.collect import ModelRow

# Colour-blind-safe palette (Okabe & Ito, "Color Universal Design", 2008).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _pyplot() -> Any:
    matplotlib = lazy_import("matplotlib", purpose="the report's plots")
    matplotlib.use("Agg")
    return lazy_import("matplotlib.pyplot")


def _png(fig: Any) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=110)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def training_curves(curves: Sequence[dict[str, Any]]) -> bytes | None:
    """Loss and top-1 per epoch, train and validation."""
    if not curves:
        return None
    plt = _pyplot()
    epochs = [c.get("epoch") for c in curves]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.2))
    for key, label, style in (("train_loss", "train", "-o"), ("val_loss", "validation", "-s")):
        loss_ax.plot(epochs, [c.get(key) for c in curves], style, label=label, markersize=4)
    for key, label, style in (("train_top1", "train", "-o"), ("val_top1", "validation", "-s")):
        acc_ax.plot(
            epochs, [None if c.get(key) is None else c[key] * 100 for c in curves], style, label=label, markersize=4
        )
    # Mark where the backbone was unfrozen: the curves change slope there for a reason.
    phases = [c.get("phase") for c in curves]
    for i in range(1, len(phases)):
        if phases[i] != phases[i - 1]:
            for ax in (loss_ax, acc_ax):
                ax.axvline(epochs[i] - 0.5, color="grey", linestyle=":", linewidth=1)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="top-1 (%)", title="top-1")
    for ax in (loss_ax, acc_ax):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _png(fig)


def accuracy_latency(rows: Sequence[ModelRow], *, title: str, confidence: str) -> bytes | None:
    """Top-1 (with its interval) against p50 latency. Points are told apart by colour and marker
    in a legend rather than by text beside them, so close points never print over each other."""
    points = [r for r in rows if r.top1 is not None and r.p50_ms is not None]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, r in enumerate(points):
        low, high = r.top1_ci if r.top1_ci else (r.top1, r.top1)
        ax.errorbar(
            r.p50_ms,
            r.top1 * 100,
            yerr=[[(r.top1 - low) * 100], [(high - r.top1) * 100]],
            fmt=MARKERS[i % len(MARKERS)],
            color=PALETTE[i % len(PALETTE)],
            markersize=8,
            capsize=3,
            label=f"{r.name} ({r.precision})",
        )
    ax.set_xlabel("latency p50 (ms)")
    ax.set_ylabel(f"top-1 (%), {confidence} interval")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    fastest, slowest = min(r.p50_ms for r in points), max(r.p50_ms for r in points)  # type: ignore[type-var]
    if fastest > 0 and slowest / fastest > 10:
        # A CPU checkpoint at 100 ms beside INT8 at 1 ms: on a linear axis the fast ones sit on the axis.
        ax.set_xscale("log")
        ax.set_xlim(fastest / 1.5, slowest * 1.5)
        ax.set_xlabel("latency p50 (ms, log scale)")
    else:
        ax.set_xlim(left=0, right=slowest * 1.15)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _png(fig)


#: One colour per precision in the precision-mix picture, the same on every page.
PRECISION_COLOURS = {"int8": PALETTE[2], "fp16": PALETTE[0], "bf16": PALETTE[4], "fp8": PALETTE[3], "fp32": PALETTE[5]}


def precision_mix(engines: Sequence[dict[str, Any]]) -> bytes | None:
    """Per engine, the share of its Conv/Gemm/MatMul MACs (or layers, where shapes are unknown) at each precision."""
    bars = []
    for engine in engines:
        report = engine.get("report") or {}
        mix = report.get("compute_macs") or report.get("compute_layers") or {}
        total = sum(mix.values())
        if total:
            unit = "MACs" if report.get("compute_macs") else "layers"
            bars.append((f"{engine['name']} ({unit})", {k: v / total for k, v in mix.items()}))
    if not bars:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.5 * len(bars)))
    order = [p for p in PRECISION_COLOURS if any(p in shares for _, shares in bars)]
    order += sorted({p for _, shares in bars for p in shares} - set(order))
    for i, (_, shares) in enumerate(bars):
        left = 0.0
        for precision in order:
            width = shares.get(precision, 0.0) * 100
            if width:
                colour = PRECISION_COLOURS.get(precision, PALETTE[7])
                ax.barh(
                    i,
                    width,
                    left=left,
                    color=colour,
                    label=precision,  # the legend below keeps one entry per precision
                )
                left += width
    ax.set_yticks(range(len(bars)), [label for label, _ in bars], fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of Conv/Gemm/MatMul work (%)")
    ax.set_title("precision mix, from each engine's own layer report", fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.invert_yaxis()
    return _png(fig)
