"""The digits model the INT8 benchmarks measure, shared so both use the same one."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

# The quickstart's own fine-tuning settings, so "the quickstart model" here is the one
# `edge-tl quickstart` trains (training is seeded and deterministic on the CPU).
from edge_tl.quickstart import QUICKSTART_FINETUNE


def quickstart_run(work: Path, given: Path | None) -> Path:
    """A copy of ``given`` (or a freshly fine-tuned digits run) with an ``onnx-fp32`` export."""
    from edge_tl.export import ExportConfig, Precision, export_run
    from edge_tl.runs import Run

    if given is not None:
        root = Path(shutil.copytree(given, work / "quickstart"))
    else:
        from edge_tl.train import FinetuneConfig, finetune

        root = work / "quickstart"
        print("fine-tuning the quickstart digits model (no --run given)...", file=sys.stderr)
        finetune(FinetuneConfig(data="digits", out=str(root), quiet=True, **QUICKSTART_FINETUNE))
    if not Run.open(root).has_artifact("onnx-fp32"):
        export_run(root, config=ExportConfig(precisions=(Precision.FP32,), parity_images=64))
    return root
