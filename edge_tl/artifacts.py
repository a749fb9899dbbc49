"""The name of every artifact kind and every artifact, in one place.

Stages ask this module for a name instead of building the string themselves, so that
a reader of the manifest, a stage that looks an artifact up and the stage that wrote
it can never disagree on a spelling. The table in docs/design.md lists them.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_tl.runs import Run


class ArtifactKind(str, Enum):
    CHECKPOINT = "checkpoint"
    ONNX = "onnx"
    ENGINE = "engine"
    CALIBRATION_TABLE = "calibration-table"
    CALIBRATION_CACHE = "calibration-cache"
    BUILD_PLAN = "build-plan"
    REPORT = "report"
    BUNDLE = "bundle"
    DEPLOY_RESULT = "deploy-result"


CHECKPOINT_BEST = "checkpoint-best"
CHECKPOINT_LAST = "checkpoint-last"
ONNX_FP32 = "onnx-fp32"
ONNX_FP16 = "onnx-fp16"
VERIFY_REPORT = "verify-report"


def onnx_int8(recipe: str) -> str:
    return f"onnx-int8-{recipe}"


def calib_table(recipe: str) -> str:
    return f"calib-table-{recipe}"


def calib_cache(recipe: str) -> str:
    return f"calib-cache-{recipe}"


def engine(target: str, precision: str) -> str:
    return f"engine-{target}-{precision}"


def build_plan(target: str, precision: str) -> str:
    return f"build-plan-{target}-{precision}"


# --------------------------------------------------------------------------- the reference

#: The manifest section that says where a run's model came from (written by ``edge-tl import``;
#: a run made by ``edge-tl finetune`` has none and is of kind ``finetune``).
SOURCE_SECTION = "source"
FINETUNE_SOURCE = "finetune"


def source_kind(run: "Run") -> str:
    """Where the run's model came from: ``finetune`` or an import source kind (``pytorch``, ``onnx``...)."""
    return str((run.get(SOURCE_SECTION) or {}).get("kind", FINETUNE_SOURCE))


def reference_artifact(run: "Run") -> str:
    """The artifact every later one is compared with: the fine-tuned or imported PyTorch
    checkpoint, or for an ONNX import the imported ONNX FP32 model itself."""
    return str((run.get(SOURCE_SECTION) or {}).get("reference", CHECKPOINT_BEST))
