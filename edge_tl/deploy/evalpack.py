"""The evaluation pack: validation images already preprocessed, with their labels.

It lets a device measure accuracy with nothing but the runtime: no image decoding,
no preprocessing code, no pickles. Layout (inside a bundle's ``eval/`` folder)::

    pack.json          header: format, dtype, layout, byte order, image shape, labels, chunks
    inputs-000.bin     raw float32, little-endian, NCHW: ``count`` images of the header's shape
    inputs-001.bin     ...

Each chunk is exactly what ``trtexec --loadInputs=<input name>:inputs-000.bin`` reads
for a batch of ``count``, so the same files serve the Python runtime and trtexec.
Reading needs numpy only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_tl.errors import ConfigError, DataError

if TYPE_CHECKING:
    import numpy as np

    from edge_tl.runs import Run

PACK_FORMAT = "edge-tl-evalpack"
PACK_VERSION = 1
HEADER = "pack.json"
DEFAULT_IMAGES = 256
DEFAULT_CHUNK = 32
#: the stored element types, little-endian
PACK_DTYPES = {"float32": "<f4", "uint8": "u1"}


@dataclass(frozen=True)
class Chunk:
    file: str
    first: int  # index of its first image in the pack
    count: int


@dataclass(frozen=True)
class EvalPack:
    root: Path
    image_shape: tuple[int, int, int]
    labels: tuple[int, ...]
    classes: tuple[str, ...]
    chunks: tuple[Chunk, ...]
    dtype: str = "float32"  # of the stored images, as the model takes them
    layout: str = "NCHW"

    @property
    def num_images(self) -> int:
        return len(self.labels)

    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> EvalPack:
        root = Path(root)
        try:
            header = json.loads((root / HEADER).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise DataError(
                f"{str(root)!r} has no {HEADER}: not an evaluation pack (make one with `edge-tl bundle`)"
            ) from exc
        if header.get("format") != PACK_FORMAT or header.get("version") != PACK_VERSION:
            raise DataError(
                f"{str(root / HEADER)!r} is format {header.get('format')!r} v{header.get('version')!r}; "
                f"this edge-tl reads {PACK_FORMAT} v{PACK_VERSION}"
            )
        if (
            header.get("dtype") not in PACK_DTYPES
            or header.get("byte_order") != "little"
            or header.get("layout") not in ("NCHW", "NHWC")
        ):
            raise DataError(
                f"{str(root / HEADER)!r}: packs are little-endian float32 or uint8, NCHW or NHWC; got "
                f"{header.get('dtype')!r} {header.get('layout')!r} {header.get('byte_order')!r}"
            )
        chunks = tuple(Chunk(c["file"], int(c["first"]), int(c["count"])) for c in header["chunks"])
        for c in chunks:
            if "/" in c.file or c.file.startswith("."):
                raise DataError(f"evaluation pack chunk name {c.file!r} must be a plain file name")
        return cls(
            root=root,
            image_shape=tuple(int(v) for v in header["image_shape"]),  # type: ignore[arg-type]
            labels=tuple(int(v) for v in header["labels"]),
            classes=tuple(header.get("classes", ())),
            chunks=chunks,
            dtype=str(header["dtype"]),
            layout=str(header["layout"]),
        )

    def read_chunk(self, chunk: Chunk) -> np.ndarray:
        import numpy as np

        data = np.fromfile(self.root / chunk.file, dtype=PACK_DTYPES[self.dtype])
        expected = chunk.count * int(np.prod(self.image_shape))
        if data.size != expected:
            raise DataError(
                f"{str(self.root / chunk.file)!r} holds {data.size} values, expected {expected} "
                f"({chunk.count} images of {self.image_shape}); the pack is damaged: rebuild the bundle"
            )
        return data.reshape(chunk.count, *self.image_shape)

    def content_digest(self) -> str:
        """sha256 of the images (in order, independent of the chunking) and the labels."""
        import hashlib

        digest = hashlib.sha256(json.dumps([list(self.image_shape), list(self.labels)]).encode())
        for chunk in self.chunks:
            with open(self.root / chunk.file, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()

    def batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(images NCHW float32, labels int64) per chunk, in order: the canonical batch (a uint8 pack's
        pixels as floats 0..255, which the run's preprocessing also makes)."""
        import numpy as np

        for chunk in self.chunks:
            labels = np.asarray(self.labels[chunk.first : chunk.first + chunk.count], dtype=np.int64)
            images = self.read_chunk(chunk)
            if self.layout == "NHWC":
                images = images.transpose(0, 3, 1, 2)
            yield np.ascontiguousarray(images, dtype=np.float32), labels


def balanced_subset(labels: list[int], limit: int) -> list[int]:
    """Indices of up to ``limit`` samples, taken round-robin over classes (order kept within a class)."""
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    picked: list[int] = []
    depth = 0
    while len(picked) < limit and any(depth < len(v) for v in by_class.values()):
        for label in sorted(by_class):
            if depth < len(by_class[label]) and len(picked) < limit:
                picked.append(by_class[label][depth])
        depth += 1
    return sorted(picked)


def write_eval_pack(
    run: Run, out_dir: str | os.PathLike[str], *, max_images: int = DEFAULT_IMAGES, chunk_size: int = DEFAULT_CHUNK
) -> EvalPack:
    """Preprocess up to ``max_images`` validation images of ``run`` into ``out_dir``.

    Images come from the run's own validation split (class-balanced when trimmed) and are
    preprocessed with :func:`edge_tl.data.preprocess` and the run's contract, so the pack
    is the exact input the model was validated on.
    """
    import numpy as np

    from edge_tl.data import load_image, preprocess, split_from_run
    from edge_tl.input_contract import contract_of
    from edge_tl.models import Preprocessing
    from edge_tl.runs import atomic_write_bytes, atomic_write_json

    if max_images < 1 or chunk_size < 1:
        raise ConfigError(f"evaluation images and chunk size must be >= 1, got {max_images} / {chunk_size}")
    prep = Preprocessing.from_dict(run.require("preprocessing", stage="the evaluation pack"))
    contract = contract_of(run)
    split = split_from_run(run)
    if not split.val:
        raise DataError(f"run {str(run.root)!r} has no validation images to build an evaluation pack from")
    picked = [split.val[i] for i in balanced_subset([s.label for s in split.val], max_images)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chunks = []
    for first in range(0, len(picked), chunk_size):
        group = picked[first : first + chunk_size]
        array = contract.to_model(np.stack([preprocess(load_image(s), prep) for s in group]))
        array = array.astype(PACK_DTYPES[contract.dtype.value], copy=False)
        name = f"inputs-{len(chunks):03d}.bin"
        atomic_write_bytes(out / name, np.ascontiguousarray(array).tobytes())
        chunks.append({"file": name, "first": first, "count": len(group)})
    header: dict[str, Any] = {
        "format": PACK_FORMAT,
        "version": PACK_VERSION,
        "dtype": contract.dtype.value,
        "byte_order": "little",
        "layout": contract.layout.value,
        "image_shape": contract.model_shape(0, prep.input_size, prep.input_size)[1:],
        "input_contract": contract.to_dict(),
        "num_images": len(picked),
        "labels": [s.label for s in picked],
        "classes": list(split.classes),
        "chunks": chunks,
        "preprocessing": prep.to_dict(),
    }
    atomic_write_json(out / HEADER, header)
    return EvalPack.load(out)
