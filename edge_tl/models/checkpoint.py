"""Checkpoint files and rebuilding a run's fine-tuned model.

A checkpoint is a plain dict of tensors and Python scalars saved with
``torch.save`` and read back with ``weights_only=True`` (no pickled objects):

    {"format": "edge-tl-checkpoint", "version": 1, "model": state_dict,
     "epoch": int, ...training state written by the trainer...}
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from edge_tl._lazy import lazy_import
from edge_tl.artifacts import CHECKPOINT_BEST, CHECKPOINT_LAST
from edge_tl.errors import RunError
from edge_tl.runs import Run, atomic_write_bytes

CHECKPOINT_FORMAT = "edge-tl-checkpoint"
CHECKPOINT_VERSION = 1
BEST = CHECKPOINT_BEST
LAST = CHECKPOINT_LAST


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Serialise ``payload`` (plus the format header) atomically."""
    torch = lazy_import("torch")
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    torch = lazy_import("torch")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise RunError(f"checkpoint {str(path)!r} does not exist") from exc
    except Exception as exc:
        raise RunError(
            f"checkpoint {str(path)!r} cannot be read ({type(exc).__name__}: {exc}); "
            "it may be truncated or not an edge-tl checkpoint"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"{str(path)!r} is not an edge-tl checkpoint (no format header)")
    return data


def load_run_model(run: Run, *, checkpoint: str = BEST) -> Any:
    """The run's fine-tuned model, on the CPU, in eval mode: the reference for every later stage."""
    from edge_tl.models.registry import Weights, WeightsSource, build_model

    backbone = run.require("backbone", stage="loading the model")
    classes = run.require("classes", stage="loading the model")
    model = build_model(backbone["name"], len(classes), weights=Weights(WeightsSource.NONE))
    state = load_checkpoint(run.artifact_path(checkpoint))
    model.load_state_dict(state["model"])
    return model.eval()
