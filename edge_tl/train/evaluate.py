"""Classification metrics: top-1, top-5, per-class accuracy, confusion matrix.

Everything is derived from three sums (loss, top-5 hits, confusion matrix counts) so that
validation sharded over DDP processes gives exactly the single-process numbers once the
sums are all-reduced. :func:`evaluate_run` is the API twin of ``edge-tl evaluate RUN``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from edge_tl._lazy import lazy_import
from edge_tl.artifacts import ArtifactKind, reference_artifact
from edge_tl.runs import Run, atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    from edge_tl.train.distributed import DistContext

EVAL_DIR = "evaluate"


@dataclass(frozen=True)
class EvalResult:
    """Metrics of a model on a labelled set; ``top5`` is None with fewer than 5 classes."""

    top1: float
    top5: float | None
    loss: float
    count: int
    per_class: tuple[float | None, ...]
    confusion: tuple[tuple[int, ...], ...]  # rows: true class, columns: predicted class

    def summary(self) -> dict[str, Any]:
        return {"val_top1": self.top1, "val_top5": self.top5, "val_loss": self.loss, "num_val": self.count}


def accumulate(
    model: Any,
    batches: Iterable[tuple[Any, Any]],
    *,
    num_classes: int,
    device: Any,
    amp_dtype: Any = None,
    channels_last: bool = False,
) -> Any:
    """Run ``model`` (put in eval mode) over ``batches``; returns one float64 tensor of sums.

    Layout: ``[loss_sum, top5_hits, confusion (num_classes * num_classes, row-major)]``.
    Sums are exact integers except the loss, so an all-reduce over shards reproduces the
    single-process counts.
    """
    torch = lazy_import("torch")
    model.eval()

    def logits() -> Iterable[tuple[Any, Any]]:
        for images, labels in batches:
            images = torch.as_tensor(images).to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = model(images)
            yield out, labels  # outside autocast: the sums are taken in float32

    with torch.inference_mode():
        return accumulate_logits(logits(), num_classes=num_classes, device=device)


def accumulate_logits(batches: Iterable[tuple[Any, Any]], *, num_classes: int, device: Any) -> Any:
    """:func:`accumulate`'s sums from ``(logits, labels)`` batches, whatever computed the logits."""
    torch = lazy_import("torch")
    F = lazy_import("torch.nn.functional")
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    top5 = torch.zeros((), dtype=torch.float64, device=device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.float64, device=device)
    k = min(5, num_classes)
    for logits, labels in batches:
        logits = torch.as_tensor(logits).to(device).float()
        labels = torch.as_tensor(labels).to(device, non_blocking=True)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        topk = logits.topk(k, dim=1).indices
        top5 += (topk == labels[:, None]).any(dim=1).sum().double()
        confusion += torch.bincount(labels * num_classes + topk[:, 0], minlength=num_classes * num_classes).double()
    return torch.cat([loss_sum[None], top5[None], confusion])


def result_from_sums(sums: Any, num_classes: int) -> EvalResult:
    values = sums.detach().cpu().double().tolist()
    loss_sum, top5_hits = values[0], values[1]
    matrix = [
        [int(round(v)) for v in values[2 + r * num_classes : 2 + (r + 1) * num_classes]] for r in range(num_classes)
    ]
    count = sum(sum(row) for row in matrix)
    correct = sum(matrix[i][i] for i in range(num_classes))
    per_class = tuple((row[i] / sum(row)) if sum(row) else None for i, row in enumerate(matrix))
    return EvalResult(
        top1=correct / count if count else 0.0,
        top5=(top5_hits / count if count else 0.0) if num_classes >= 5 else None,
        loss=loss_sum / count if count else 0.0,
        count=count,
        per_class=per_class,
        confusion=tuple(tuple(row) for row in matrix),
    )


def evaluate_model(
    model: Any,
    batches: Iterable[tuple[Any, Any]],
    *,
    num_classes: int,
    device: Any,
    ctx: "DistContext | None" = None,
    amp_dtype: Any = None,
    channels_last: bool = False,
) -> EvalResult:
    """Metrics of ``model`` over ``batches`` (this process's shard, summed over all processes)."""
    from edge_tl.train.distributed import DistContext, all_reduce_sum

    sums = accumulate(
        model, batches, num_classes=num_classes, device=device, amp_dtype=amp_dtype, channels_last=channels_last
    )
    all_reduce_sum(sums, ctx or DistContext())
    return result_from_sums(sums, num_classes)


# --------------------------------------------------------------------------- a run's report


@dataclass(frozen=True)
class RunEvaluation:
    result: EvalResult
    classes: tuple[str, ...]
    metrics_path: Path
    confusion_json: Path
    confusion_png: Path


def evaluate_run(
    run: Run | str | os.PathLike[str],
    *,
    checkpoint: str | None = None,
    batch_size: int = 128,
) -> RunEvaluation:
    """Evaluate a run's model on its validation split (CPU, fp32, the shared preprocessing).

    ``checkpoint``: an artifact of the run; ``None`` is the reference the manifest names (the
    fine-tuned or imported checkpoint, or an imported ONNX model), run by its kind's backend.

    Writes ``evaluate/metrics.json``, ``evaluate/confusion_matrix.json`` and
    ``evaluate/confusion_matrix.png`` and records the numbers in the manifest's
    ``evaluation`` section.
    """
    torch = lazy_import("torch", purpose="evaluation")
    from edge_tl.data import iter_batches, split_from_run
    from edge_tl.models import Preprocessing, load_run_model

    run = run if isinstance(run, Run) else Run.open(run)
    classes = tuple(run.require("classes", stage="evaluate"))
    prep = Preprocessing.from_dict(run.require("preprocessing", stage="evaluate"))
    split = split_from_run(run)
    checkpoint = checkpoint or reference_artifact(run)
    cpu = torch.device("cpu")
    if run.artifact(checkpoint).kind == ArtifactKind.CHECKPOINT:
        model = load_run_model(run, checkpoint=checkpoint)
        result = evaluate_model(model, iter_batches(split.val, prep, batch_size), num_classes=len(classes), device=cpu)
    else:
        from edge_tl.runtime.base import Device, RunnerOptions
        from edge_tl.runtime.registry import open_runner

        with open_runner(run, artifact=checkpoint, options=RunnerOptions(device=Device.CPU)) as runner:
            logits = ((runner.run(images), labels) for images, labels in iter_batches(split.val, prep, batch_size))
            result = result_from_sums(accumulate_logits(logits, num_classes=len(classes), device=cpu), len(classes))
    out = run.path(EVAL_DIR)
    metrics = {
        "checkpoint": checkpoint,
        "num_val": result.count,
        "top1": result.top1,
        "top5": result.top5,
        "loss": result.loss,
        "per_class_accuracy": {c: a for c, a in zip(classes, result.per_class)},
    }
    metrics_path = atomic_write_json(out / "metrics.json", metrics)
    confusion_json = atomic_write_json(
        out / "confusion_matrix.json",
        {
            "classes": list(classes),
            "rows": "true class",
            "columns": "predicted class",
            "matrix": [list(r) for r in result.confusion],
        },
    )
    confusion_png = _plot_confusion(out / "confusion_matrix.png", result, classes)
    run.update(
        evaluation={
            **{k: v for k, v in metrics.items() if k != "per_class_accuracy"},
            "metrics": run.relpath(metrics_path),
            "confusion_matrix": run.relpath(confusion_json),
            "confusion_matrix_png": run.relpath(confusion_png),
        }
    )
    return RunEvaluation(result, classes, metrics_path, confusion_json, confusion_png)


def _plot_confusion(path: Path, result: EvalResult, classes: tuple[str, ...]) -> Path:
    import io

    matplotlib = lazy_import("matplotlib", purpose="the confusion-matrix plot")
    matplotlib.use("Agg")  # no display needed (servers, CI)
    plt = lazy_import("matplotlib.pyplot")
    np = lazy_import("numpy")
    matrix = np.asarray(result.confusion, dtype=np.int64)
    n = len(classes)
    side = min(16.0, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side, side))
    try:
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(n), labels=list(classes), rotation=90 if n > 10 else 0)
        ax.set_yticks(range(n), labels=list(classes))
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(f"confusion matrix (top-1 {result.top1:.2%}, {result.count} images)")
        if n <= 30:
            threshold = matrix.max() / 2 if matrix.size else 0
            for i in range(n):
                for j in range(n):
                    if matrix[i, j]:
                        ax.text(
                            j,
                            i,
                            str(matrix[i, j]),
                            ha="center",
                            va="center",
                            fontsize=8,
                            color="white" if matrix[i, j] > threshold else "black",
                        )
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())
