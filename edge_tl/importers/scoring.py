"""Scoring an imported model on ``--val-data`` before anything is written.

An import is checked the way a user moving a model would check it: the reference is scored
on the labelled images with the run's own preprocessing, under every candidate checkpoint
key and both class orders, and a reference that scores near chance stops the import with
what was checked (``--accept-low-accuracy`` lets it through).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from edge_tl._lazy import lazy_import

if TYPE_CHECKING:
    import numpy as np

    from edge_tl.models.preprocessing import Preprocessing

#: points above chance a reference must score on labelled data
CHANCE_MARGIN_PTS = 2.0
BATCH = 64

Predict = Callable[["np.ndarray"], "np.ndarray"]


def natural_key(name: str) -> list[Any]:
    """Case-insensitive order with digit runs compared as numbers (``class2`` before ``class10``): the
    order timm's ``ImageDataset`` numbers class folders in."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.lower())]


def ordered(folders: Sequence[str], order: str) -> list[str]:
    return sorted(folders, key=natural_key) if order == "natural" else sorted(folders)


def val_inputs(paths: Sequence[str], prep: "Preprocessing") -> "np.ndarray":
    """The preprocessed ``--val-data`` images, in the order given (the one preprocessing every stage uses)."""
    np = lazy_import("numpy")
    from edge_tl.data import open_image, preprocess

    return np.stack([preprocess(open_image(p), prep) for p in paths]).astype(np.float32)


def torch_predict(model: Any) -> Predict:
    """Logits of a CPU torch module in eval mode, batch by batch."""
    torch = lazy_import("torch")
    np = lazy_import("numpy")

    def run(x: "np.ndarray") -> "np.ndarray":
        out = []
        with torch.inference_mode():
            for start in range(0, len(x), BATCH):
                out.append(model(torch.from_numpy(x[start : start + BATCH])).float().numpy())
        return np.concatenate(out)

    return run


@dataclass(frozen=True)
class Score:
    correct: int
    total: int

    @property
    def pct(self) -> float:
        return 100.0 * self.correct / self.total

    def __str__(self) -> str:
        return f"{self.correct}/{self.total} ({self.pct:.1f}%)"


def score(logits: "np.ndarray", labels: "np.ndarray") -> Score:
    return Score(int((logits.argmax(1) == labels).sum()), int(len(labels)))


def near_chance(s: Score, num_classes: int) -> bool:
    return s.pct <= 100.0 / num_classes + CHANCE_MARGIN_PTS
