"""The quickstart: the whole loop on the built-in digits, sized for a laptop CPU.

A linear sequence of stages, each a library call that reads and writes the run directory.
Later stages (export, quantize, verify...) append themselves here in flow order.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

#: Fine-tune settings measured to reach >= 97 % validation top-1 on digits in well under
#: four minutes on two CPU cores (see DEVELOPERS.md / the training helper's notes).
QUICKSTART_FINETUNE: dict[str, Any] = {
    "backbone": "efficientnet_lite0",
    "img_size": 32,
    "epochs": 6,
    "freeze_epochs": 1,
    "batch_size": 64,
    "lr": 0.01,
    "backbone_lr_mult": 0.3,
    "augment": False,
    "seed": 0,
}


@dataclass(frozen=True)
class QuickstartResult:
    run_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def run_quickstart(
    out: str | os.PathLike[str] = "edge-tl-quickstart",
    *,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
) -> QuickstartResult:
    """Fine-tune pretrained EfficientNet-Lite0 on digits in ``out``, evaluate it, summarise."""
    from edge_tl.export import ExportConfig, export_run
    from edge_tl.train import FinetuneConfig, evaluate_run, finetune
    from edge_tl.verify import VerifyConfig, verify_run

    out = Path(out)
    summary: dict[str, Any] = {}
    seconds: dict[str, float] = {}

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        if not quiet:
            echo(f"== {name}")
        started = time.perf_counter()
        value = fn()
        seconds[name] = time.perf_counter() - started
        return value

    trained = stage(
        "finetune",
        lambda: finetune(FinetuneConfig(data="digits", out=str(out), quiet=quiet, **QUICKSTART_FINETUNE)),
    )
    summary["best_val_top1"] = trained.best_val_top1
    summary["best_epoch"] = trained.best_epoch

    evaluation = stage("evaluate", lambda: evaluate_run(out))
    summary["eval_top1"] = evaluation.result.top1
    summary["eval_top5"] = evaluation.result.top5
    summary["confusion_matrix_png"] = str(evaluation.confusion_png)

    exported = stage("export (ONNX FP32, FP16)", lambda: export_run(out, config=ExportConfig(), progress=None if quiet else echo))
    for model in exported.models:
        summary[f"{model.name}_parity"] = model.parity.to_dict()

    from edge_tl.quantize import QuantizeConfig, quantize_run

    quantized = stage("quantize (INT8, onnxruntime-cpu-int8)", lambda: quantize_run(out, config=QuantizeConfig(), progress=None if quiet else echo))
    summary["int8_recipe"] = QuantizeConfig().recipe
    summary["int8_top1_drop_points"] = quantized.drop_points

    verified = stage("verify", lambda: verify_run(out, config=VerifyConfig(), progress=None if quiet else echo))
    summary["verify_report"] = str(verified.paths["markdown"])

    if not quiet:
        echo("")
        echo(f"run directory:        {out}")
        echo(f"validation top-1:     {evaluation.result.top1:.4f} ({evaluation.result.count} images)")
        echo(f"best checkpoint:      {out / 'checkpoints' / 'best.pt'}")
        echo(f"confusion matrix:     {evaluation.confusion_png}")
        echo(f"per-epoch metrics:    {out / 'metrics.jsonl'}")
        for model in exported.models:
            echo(
                f"{model.name + ':':<21} {model.path}  (max |Δlogit| {model.parity.max_abs_diff:.2e}, "
                f"top-1 agreement {model.parity.top1_agreement:.2%})"
            )
        echo(f"verification report:  {verified.paths['markdown']}")
        echo("time per stage:       " + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items()))
        echo("")
        echo(verified.table())
    return QuickstartResult(run_dir=out, summary=summary, seconds=seconds)
