"""Calibration data and statistics collection.

Images come from ``--calib-data DIR`` or, by default, the run's *training* split
(the validation split judges the result, so it must not also shape it). They are
chosen seeded and class-balanced, streamed through exactly the run's preprocessing
(:func:`edge_tl.data.preprocess` via :func:`edge_tl.data.iter_batches`) one batch at
a time, run through the FP32 ONNX with the wanted activations exposed as extra
outputs, and folded into streaming observers: memory stays flat whatever the number
of samples.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_tl._lazy import lazy_import
from edge_tl.data.dataset import UNLABELED
from edge_tl.errors import DataError
from edge_tl.quantize.observers import ObserverSet

if TYPE_CHECKING:
    import numpy as np

    from edge_tl.data import Sample
    from edge_tl.models import Preprocessing
    from edge_tl.runs import Run


def balanced_subset(samples: Sequence[Sample], num_samples: int, *, seed: int = 0) -> list[Sample]:
    """Up to ``num_samples`` samples, seeded, taking classes in turn so each is equally represented.

    Unlabelled samples (label -1) form one group, i.e. a plain seeded random pick.
    """
    rng = random.Random(seed)
    groups: dict[int, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(sample.label, []).append(sample)
    queues = []
    for label in sorted(groups):
        members = list(groups[label])
        rng.shuffle(members)
        queues.append(members)
    chosen: list[Sample] = []
    depth = 0
    while len(chosen) < num_samples and any(depth < len(q) for q in queues):
        for queue in queues:
            if depth < len(queue) and len(chosen) < num_samples:
                chosen.append(queue[depth])
        depth += 1
    return chosen


def samples_from_dir(root: str | os.PathLike[str], classes: Sequence[str]) -> list[Sample]:
    """Images under ``root``: labelled by subfolder when the subfolders are the run's classes,
    otherwise every image found (recursively) unlabelled."""
    from edge_tl.data import Sample, is_image_file

    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"--calib-data {str(root)!r} is not a directory; give a folder of images "
            "(optionally one subfolder per class)"
        )
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    labelled = bool(subdirs) and set(subdirs) <= set(classes)
    index = {c: i for i, c in enumerate(classes)}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root).parts
        label = index[rel[0]] if labelled and rel else UNLABELED
        for name in sorted(filenames):
            if is_image_file(name) and not name.startswith("."):
                out.append(Sample(label=label, path=os.path.join(dirpath, name)))
    if not out:
        raise DataError(f"--calib-data {str(root)!r} holds no images (searched recursively)")
    return out


def calibration_samples(
    run: Run, *, calib_data: str | os.PathLike[str] | None, num_samples: int, seed: int = 0
) -> list[Sample]:
    """The calibration images: from ``calib_data`` or the run's training split (never validation)."""
    from edge_tl.data import split_from_run

    if num_samples < 1:
        raise DataError(f"--calib-samples must be >= 1, got {num_samples}")
    # An imported run has no training split; `edge-tl import --calib-data` recorded its folder instead.
    calib_data = calib_data if calib_data is not None else (run.get("data") or {}).get("calib_source")
    if calib_data is not None:
        pool = samples_from_dir(calib_data, run.require("classes", stage="calibration"))
        return _decodable_subset(pool, num_samples, seed=seed, folder=calib_data)
    pool = list(split_from_run(run).train)
    if not pool:
        raise DataError(f"run {str(run.root)!r} has no training images to calibrate with; pass --calib-data DIR")
    return balanced_subset(pool, num_samples, seed=seed)


def _decodable_subset(
    pool: list[Sample], num_samples: int, *, seed: int, folder: str | os.PathLike[str]
) -> list[Sample]:
    """:func:`balanced_subset` of the files that decode, drawn again without the ones that do not.

    A folder's files were never checked (a training split's were, when it was made): a truncated
    file or a decompression bomb among them is left out, as fine-tuning leaves it out, instead of
    stopping quantize. Only the files drawn are decoded here; calibration decodes them anyway.
    """
    from edge_tl.data import open_image

    verdicts: dict[str, bool] = {}
    while True:
        chosen = balanced_subset([s for s in pool if verdicts.get(s.path, True)], num_samples, seed=seed)
        for sample in chosen:
            if sample.path not in verdicts:
                try:
                    open_image(sample.path)
                    verdicts[sample.path] = True
                except DataError:
                    verdicts[sample.path] = False
        if all(verdicts[s.path] for s in chosen):
            break
    if not chosen:
        raise DataError(f"--calib-data {str(folder)!r} holds no image that decodes; give a folder of readable images")
    return chosen


def image_batches(
    samples: Sequence[Sample], prep: Preprocessing, batch_size: int
) -> Callable[[], Iterator[np.ndarray]]:
    """A re-iterable source of preprocessed image batches (labels dropped)."""
    from edge_tl.data import iter_batches

    def batches() -> Iterator[np.ndarray]:
        for images, _ in iter_batches(list(samples), prep, batch_size):
            yield images

    return batches


class OrtCalibrationReader:
    """onnxruntime.quantization's ``CalibrationDataReader`` protocol over :func:`image_batches`."""

    def __init__(self, batches: Callable[[], Iterator[np.ndarray]], input_name: str):
        self._batches = batches
        self._input_name = input_name
        self._iter: Iterator[np.ndarray] | None = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._iter is None:
            self._iter = self._batches()
        batch = next(self._iter, None)
        return None if batch is None else {self._input_name: batch}

    def rewind(self) -> None:
        self._iter = None

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.rewind()
        while (item := self.get_next()) is not None:
            yield item


def collect(
    model: Any,
    tensors: Sequence[str],
    batches: Callable[[], Iterator[np.ndarray]],
    *,
    num_bins: int = 2048,
    histogram: bool = True,
    threads: int | None = None,
) -> ObserverSet:
    """Run ``model`` (an FP32 ``ModelProto``) on every batch and observe ``tensors``."""
    import numpy as np

    from edge_tl.input_contract import layout_of, to_model_input

    onnx = lazy_import("onnx", purpose="calibration")
    ort = lazy_import("onnxruntime", purpose="calibration")
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    existing = {o.name for o in augmented.graph.output}
    for name in tensors:
        if name not in existing:
            augmented.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    observers = ObserverSet(list(tensors), num_bins=num_bins, histogram=histogram)
    options = ort.SessionOptions()
    # Basic optimizations only: fusions could remove the very tensors being observed.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if threads is not None:
        options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="edge-tl-calib-") as tmp:
        path = Path(tmp) / "augmented.onnx"
        onnx.save(augmented, str(path))
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    graph_input = session.get_inputs()[0]
    input_name = graph_input.name
    # The model's own input type and layout (edge_tl.input_contract): a uint8 or NHWC graph is fed so.
    layout = layout_of(graph_input.shape)
    dtype = np.uint8 if graph_input.type == "tensor(uint8)" else np.float32
    fixed = graph_input.shape[0]
    step = fixed if isinstance(fixed, int) and fixed > 0 else None  # a static-batch export takes its own batch size
    names = list(tensors)
    seen = 0
    for batch in batches():
        for start in range(0, batch.shape[0], step or batch.shape[0]):
            chunk = batch[start : start + step] if step else batch
            if step and chunk.shape[0] < step:
                break  # a partial chunk cannot be fed to a static batch; its images are dropped
            values = session.run(names, {input_name: to_model_input(chunk, layout=layout, dtype=dtype)})
            observers.update(dict(zip(names, values)))
            seen += chunk.shape[0]
    if seen == 0:
        raise DataError("no calibration images were read; check --calib-data / the run's training split")
    return observers
