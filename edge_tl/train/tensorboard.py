"""Training curves in TensorBoard: one event file series under ``RUN/tensorboard/``.

Written with PyTorch's own ``torch.utils.tensorboard.SummaryWriter`` (the writer TensorBoard
users already know), one point per epoch, from the same :class:`EpochRecord` that becomes a
line of ``metrics.jsonl``, so the curves and the metrics file cannot disagree. TensorBoard is
optional: without it one line says how to get it and training goes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from edge_tl.errors import RunError

TENSORBOARD_DIR = "tensorboard"
MISSING = (
    "TensorBoard curves are off: the tensorboard package is not installed "
    "(pip install tensorboard, or pip install 'edge-tl[train]'); training goes on"
)

MISSING_TORCH = "TensorBoard summaries are written with torch.utils.tensorboard: pip install 'edge-tl[train]'"
# metrics.jsonl key -> TensorBoard tag. The learning rates are one per parameter group
# (edge_tl.train.loop.param_groups: the new head and the backbone).
SCALARS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_top1": "top1/train",
    "val_top1": "top1/val",
    "val_top5": "top5/val",
    "lr_head": "lr/head",
    "lr_backbone": "lr/backbone",
    "images_per_s": "speed/images_per_s",
    "bn_batch_top1": "batchnorm/batch_stat_top1",
    "bn_running_top1": "batchnorm/running_stat_top1",
    "bn_stale_top1": "batchnorm/running_stat_top1_before_reestimation",
}
# Batch- minus running-statistics top-1 on the same validation images (what the loop warns on).
GAP_TAG = "batchnorm/gap"


VERIFY_TAG = "verify/table"
VERIFY_MARKDOWN = "verify/report.md"


def writer_class(say: Callable[[str], None]) -> Any:
    """torch.utils.tensorboard's SummaryWriter, or None (after the one line) without tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch.utils.tensorboard raises it when the tensorboard package is absent
        say(MISSING_TORCH if exc.name == "torch" else MISSING)
        return None
    return SummaryWriter


def _folder(run_dir: Path) -> Path:
    folder = run_dir / TENSORBOARD_DIR
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise RunError(
            f"{str(folder)!r} is not a folder of this run (a link or a file); move it away to write the "
            "TensorBoard curves there"
        )
    return folder


def add_verify_table(run_dir: Path, *, say: Callable[[str], None]) -> Path | None:
    """The run's verify table (verify's own ``report.md``, Markdown, which TensorBoard's text tab
    renders) as a text summary beside the curves; its step is the number of epochs trained."""
    source = run_dir / VERIFY_MARKDOWN
    if source.is_symlink() or not source.is_file():
        raise RunError(f"{str(run_dir)!r} has no {VERIFY_MARKDOWN}: run `edge-tl verify {run_dir}` first")
    writer_type = writer_class(say)
    if writer_type is None:
        return None
    folder = _folder(run_dir)
    metrics = run_dir / "metrics.jsonl"
    epochs = len(metrics.read_text(encoding="utf-8").splitlines()) if metrics.is_file() else 0
    with writer_type(log_dir=str(folder)) as writer:
        writer.add_text(VERIFY_TAG, source.read_text(encoding="utf-8"), global_step=epochs)
    return folder


class TensorBoardLog:
    """The run's TensorBoard writer; :meth:`open` gives None when tensorboard is not installed."""

    def __init__(self, writer: Any) -> None:
        self._writer = writer

    @classmethod
    def open(cls, run_dir: Path, *, say: Callable[[str], None]) -> TensorBoardLog | None:
        """A writer that adds to the run's curves (a resumed run writes a new event file beside the old).

        The loop writes an epoch's points after its checkpoint, so a resumed run, which starts
        after its last checkpoint, never writes an epoch's points twice.
        """
        writer_type = writer_class(say)
        return None if writer_type is None else cls(writer_type(log_dir=str(_folder(run_dir))))

    def epoch(self, record: Any) -> None:
        values = record.to_dict()
        for key, tag in SCALARS.items():
            if values.get(key) is not None:
                self._writer.add_scalar(tag, values[key], global_step=record.epoch)
        if record.bn_batch_top1 is not None and record.bn_running_top1 is not None:
            self._writer.add_scalar(GAP_TAG, record.bn_batch_top1 - record.bn_running_top1, global_step=record.epoch)
        self._writer.flush()  # a stopped run keeps its curves up to the last epoch

    def close(self) -> None:
        self._writer.close()
