"""What the device's answers are compared with: the original model and the shipped ONNX, run here."""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_tl.artifacts import ArtifactKind, reference_artifact
from edge_tl.deploy.bundle import Bundle
from edge_tl.deploy.evalpack import EvalPack
from edge_tl.errors import EdgeTLError
from edge_tl.runs import Run, atomic_write_bytes

log = logging.getLogger("edge_tl.deploy")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Reference:
    """Logits of the original model and of the bundle's ONNX (ONNX Runtime, here) on the evaluation pack."""

    original: Any | None  # np.ndarray
    local: Any | None


def _run_pack(runner: Any, pack: EvalPack) -> Any:
    import numpy as np

    with runner:
        return np.concatenate([runner.run(images) for images, _ in pack.batches()])


def compute_reference(run: Run, bundle: Bundle) -> Reference:
    """Run the original model and (where ONNX Runtime can) the shipped ONNX on the evaluation pack, here."""
    import numpy as np

    from edge_tl._lazy import is_available
    from edge_tl.runtime import open_runner
    from edge_tl.runtime.onnxruntime_runner import OnnxRuntimeRunner

    pack = EvalPack.load(bundle.root / bundle.manifest["eval"]["dir"])
    reference = reference_artifact(run)
    has_original = run.has_artifact(reference)
    checkpoint = run.artifact(reference).sha256 if has_original else ""
    images = pack.content_digest()
    # Cached per (images, model): a fleet, another target or a re-deploy does not run the models again.
    cache = run.path("deploy", ".reference")

    def cached(name: str, compute: Callable[[], Any]) -> Any:
        path = (
            cache
            / f"{name}-{sha256_text(images + (checkpoint if name == 'original' else bundle.model['sha256']))[:20]}.npy"
        )
        if path.is_file():
            return np.load(path, allow_pickle=False)
        value = compute()
        if value is not None:
            cache.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(value, dtype=np.float32), allow_pickle=False)
            atomic_write_bytes(path, buffer.getvalue())
        return value

    def original() -> Any:
        runs_here = has_original and is_available(
            "torch" if run.artifact(reference).kind == ArtifactKind.CHECKPOINT else "onnxruntime"
        )
        if runs_here:
            return _run_pack(open_runner(run, artifact=reference), pack)
        log.warning("the original model cannot run here (needs %s and its runtime): no accuracy delta", reference)
        return None

    def local() -> Any:
        if not is_available("onnxruntime"):
            return None
        try:
            return _run_pack(OnnxRuntimeRunner(bundle.root / bundle.model["path"]), pack)
        except EdgeTLError as exc:  # e.g. an FP16 or Q/DQ graph this ONNX Runtime cannot load
            log.warning("the bundle's ONNX does not run in ONNX Runtime here (%s)", exc)
            return None

    return Reference(cached("original", original), cached("local-onnxruntime", local))
