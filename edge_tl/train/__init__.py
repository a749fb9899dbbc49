"""Transfer-learning fine-tuning: config, loop, evaluation, DDP under torchrun.

Importing this package imports no torch; the loop imports it when it runs.
"""

from edge_tl.train.config import Device, FinetuneConfig, Precision
from edge_tl.train.distributed import LaunchConfig, launch
from edge_tl.train.evaluate import EvalResult, RunEvaluation, evaluate_run
from edge_tl.train.loop import EpochRecord, FinetuneResult, finetune

__all__ = [
    "Device",
    "EpochRecord",
    "EvalResult",
    "FinetuneConfig",
    "FinetuneResult",
    "LaunchConfig",
    "Precision",
    "RunEvaluation",
    "evaluate_run",
    "finetune",
    "launch",
]
