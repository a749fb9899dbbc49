"""Datasets: image folders and built-in sets, checked, split, recorded and streamed.

``load_dataset`` does all the checking before any training starts: every file is
decoded once, unreadable ones are skipped and listed with the reason, and a dataset that
cannot train (missing directory, no classes, an empty class, a single class, no images,
validation classes that differ from the training ones, a class left without a validation
image) stops with a :class:`~edge_tl.errors.DataError` that says what to change.

The split is written to ``split.json`` in the run directory (:func:`save_split`) so every
later stage rebuilds exactly the same training and validation sets (:func:`split_from_run`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from edge_tl._lazy import lazy_import
from edge_tl.data.images import IMAGE_EXTENSIONS, is_image_file, open_image
from edge_tl.data.preprocess import preprocess
from edge_tl.errors import ConfigError, DataError

log = logging.getLogger("edge_tl.data")

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image as PILImage

    from edge_tl.models.preprocessing import Preprocessing
    from edge_tl.runs import Run

#: Names accepted by :func:`load_dataset` as built-in datasets (a folder of the same
#: name is given as ``./digits``).
BUILTIN_DATASETS: tuple[str, ...] = ("digits",)

SPLIT_FILE = "split.json"
SPLIT_FORMAT = 1
#: the label of an image whose class is not known (calibration images)
UNLABELED = -1

#: ``progress(done, total)``: files checked so far out of the folder's total.
Progress = Callable[[int, int], None]


def _default_threads() -> int:
    # Pillow releases the GIL while decoding and resizing, so threads overlap real work.
    return max(1, min(4, os.cpu_count() or 1))


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Sample:
    """One labelled image: a file (``path``, absolute) or an in-memory built-in image
    (``builtin`` name and ``index`` into it)."""

    label: int
    path: str | None = None
    index: int | None = None
    builtin: str | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.index is None):
            raise ValueError(f"a Sample has either a path or a built-in index, got {self!r}")
        if self.index is not None and self.builtin not in BUILTIN_DATASETS:
            raise ValueError(f"a Sample with an index needs a built-in dataset name, got {self.builtin!r}")


@dataclass(frozen=True)
class SkippedFile:
    """A file left out of the dataset because it could not be decoded."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class DatasetSplit:
    """Classes (index = label), training and validation samples, and the files skipped."""

    classes: tuple[str, ...]
    train: tuple[Sample, ...]
    val: tuple[Sample, ...]
    skipped: tuple[SkippedFile, ...] = ()
    source: str = ""
    val_source: str | None = None
    val_split: float | None = None
    seed: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_counts(self, which: str = "train") -> dict[str, int]:
        samples = {"train": self.train, "val": self.val}[which]
        counts = dict.fromkeys(self.classes, 0)
        for sample in samples:
            counts[self.classes[sample.label]] += 1
        return counts

    def manifest_section(self, *, split_file: str = SPLIT_FILE) -> dict[str, Any]:
        """The run manifest's ``data`` section (see docs/design.md)."""
        return {
            "source": self.source,
            "val_source": self.val_source,
            "val_split": self.val_split,
            "seed": self.seed,
            "num_train": len(self.train),
            "num_val": len(self.val),
            "skipped": [s.to_dict() for s in self.skipped],
            "split_file": split_file,
        }


# --------------------------------------------------------------------------- built-in data


@functools.lru_cache(maxsize=None)
def _digits() -> tuple["np.ndarray", "np.ndarray"]:
    """scikit-learn's 1797 handwritten digits as uint8 8x8 images (0..16 scaled to 0..255)."""
    np = lazy_import("numpy")
    datasets = lazy_import("sklearn.datasets", purpose="the built-in digits dataset")
    bunch = datasets.load_digits()
    images = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images.setflags(write=False)
    labels = np.asarray(bunch.target, dtype=np.int64)
    return images, labels


def _builtin(name: str) -> tuple[tuple[str, ...], list[Sample]]:
    if name == "digits":
        _, labels = _digits()
        classes = tuple(str(d) for d in range(10))
        return classes, [Sample(label=int(y), index=i, builtin="digits") for i, y in enumerate(labels)]
    raise ConfigError(f"unknown built-in dataset {name!r}; known: {', '.join(BUILTIN_DATASETS)}")


def load_image(sample: Sample) -> "PILImage.Image":
    """The sample's image as upright 8-bit RGB (raises :class:`DataError` when unreadable)."""
    if sample.path is not None:
        return open_image(sample.path)
    Image = lazy_import("PIL.Image", purpose="reading images")
    if sample.builtin == "digits":
        images, _ = _digits()
        return Image.fromarray(images[sample.index], mode="L").convert("RGB")
    raise ConfigError(f"unknown built-in dataset {sample.builtin!r}; known: {', '.join(BUILTIN_DATASETS)}")


# --------------------------------------------------------------------------- folders


def _scan_folder(root: Path, *, role: str) -> tuple[tuple[str, ...], dict[str, list[str]]]:
    """Class names (sorted) and each class's image files (sorted, absolute), unverified."""
    if not root.exists():
        raise DataError(f"{role} directory {str(root)!r} does not exist; give a folder with one subfolder per class")
    if not root.is_dir():
        raise DataError(f"{role} {str(root)!r} is not a directory; give a folder with one subfolder per class")
    entries = sorted((e for e in os.scandir(root) if not e.name.startswith(".")), key=lambda e: e.name)
    class_dirs = [e for e in entries if e.is_dir()]
    # Class names become lines of labels.txt and keys everywhere: a control character (a
    # newline shifts every later label) cannot be carried safely.
    bad = [e.name for e in class_dirs if any(ord(c) < 32 or ord(c) == 127 for c in e.name)]
    if bad:
        raise DataError(
            f"{role} directory {str(root)!r} has class folder(s) {', '.join(repr(b) for b in bad)} whose names hold "
            "control characters (a newline, a tab...); rename them"
        )
    folded: dict[str, list[str]] = {}
    for e in class_dirs:
        folded.setdefault(e.name.casefold(), []).append(e.name)
    for same in (names for names in folded.values() if len(names) > 1):
        log.warning("class folders %s of %s differ only in case: they are kept as different classes", same, root)
    if not class_dirs:
        loose = sum(1 for e in entries if e.is_file() and is_image_file(e.name))
        hint = f" (it holds {loose} images directly: move them into one subfolder per class)" if loose else ""
        raise DataError(
            f"{role} directory {str(root)!r} has no class subfolders{hint}; expected the ImageFolder layout "
            f"{root}/<class>/<image>"
        )
    files: dict[str, list[str]] = {}
    for entry in class_dirs:
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(entry.path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_image_file(f))
        files[entry.name] = sorted(os.path.abspath(p) for p in found)
    classes = tuple(sorted(files))
    if sum(len(v) for v in files.values()) == 0:
        raise DataError(
            f"{role} directory {str(root)!r} has class subfolders ({', '.join(classes)}) but no images in them "
            f"(recognised extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return classes, files


def _verify(paths: Sequence[str], threads: int, progress: Progress | None) -> dict[str, str | None]:
    """path -> None when the file decodes, else the reason it does not."""

    def check(path: str) -> str | None:
        try:
            open_image(path)
        except DataError as exc:
            return str(exc).replace(repr(path), "file").strip()
        return None

    verdicts: dict[str, str | None] = {}
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for path, verdict in zip(paths, pool.map(check, paths)):
            verdicts[path] = verdict
            if progress is not None:
                progress(len(verdicts), len(paths))
    return verdicts


def _load_folder(
    root: Path, *, role: str, threads: int, progress: Progress | None, classes: tuple[str, ...] | None = None
) -> tuple[tuple[str, ...], dict[str, list[str]], list[SkippedFile]]:
    found_classes, files = _scan_folder(root, role=role)
    if classes is not None and found_classes != classes:
        missing = sorted(set(classes) - set(found_classes))
        extra = sorted(set(found_classes) - set(classes))
        raise DataError(
            f"the classes of {role} directory {str(root)!r} do not match the training classes: "
            f"missing {missing or 'none'}, extra {extra or 'none'}. Give both folders the same class subfolders."
        )
    if classes is None and len(found_classes) < 2:
        raise DataError(
            f"{role} directory {str(root)!r} has a single class ({found_classes[0]!r}); a classifier needs at "
            "least two class subfolders"
        )
    # Cheap checks first: an empty folder is reported before minutes of decoding.
    _raise_for_empty(root, role, [c for c in found_classes if not files[c]], files)
    verdicts = _verify([p for ps in files.values() for p in ps], threads, progress)
    skipped = [SkippedFile(path=p, reason=r) for p, r in verdicts.items() if r is not None]
    good = {c: [p for p in ps if verdicts[p] is None] for c, ps in files.items()}
    if sum(len(v) for v in good.values()) == 0:
        raise DataError(
            f"{role} directory {str(root)!r}: none of its {len(verdicts)} image files could be read "
            f"(first: {skipped[0].path}: {skipped[0].reason})"
        )
    _raise_for_empty(root, role, [c for c in found_classes if not good[c]], files)
    return found_classes, good, skipped


def _raise_for_empty(root: Path, role: str, empty: list[str], files: dict[str, list[str]]) -> None:
    if empty:
        details = ", ".join(
            f"{c!r} ({len(files[c])} unreadable files)" if files[c] else f"{c!r} (no image files)" for c in empty
        )
        raise DataError(
            f"{role} directory {str(root)!r} has empty classes: {details}. Add images to them or remove the folders."
        )


def _stratified_split(
    classes: tuple[str, ...], by_class: dict[int, list[Sample]], val_split: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    rng = random.Random(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    for label, name in enumerate(classes):
        members = list(by_class.get(label, []))
        rng.shuffle(members)
        n_val = int(round(len(members) * val_split))
        if n_val == 0 or n_val == len(members):
            side = "validation" if n_val == 0 else "training"
            raise DataError(
                f"class {name!r} has {len(members)} images, and val_split={val_split} leaves it no {side} image. "
                "Add images to it, change --val-split, or give a separate --val-data folder."
            )
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return _mixed(train, rng), _mixed(val, rng)


def _mixed(samples: list[Sample], rng: random.Random) -> list[Sample]:
    """Samples in a seeded random order, so that any prefix (a quick parity check on the first
    N validation images) holds every class rather than only the first ones."""
    samples = list(samples)
    rng.shuffle(samples)
    return samples


def load_dataset(
    source: str | os.PathLike[str],
    *,
    val_source: str | os.PathLike[str] | None = None,
    val_split: float = 0.2,
    seed: int = 0,
    threads: int | None = None,
    progress: Progress | None = None,
) -> DatasetSplit:
    """Load, check and split a dataset.

    ``source`` is a built-in name (``"digits"``, given as a ``str``) or a folder in
    ImageFolder layout (one subfolder per class; images found recursively by extension;
    hidden files and folders ignored). A folder named like a built-in is given as
    ``./digits`` or as a ``Path``. Without ``val_source`` the validation set is a seeded,
    stratified ``val_split`` fraction of each class. ``progress(done, total)`` is called as
    each file of a folder has been decoded (for a progress bar; the check can take a while).
    """
    threads = threads or _default_threads()
    if val_source is None and not 0.0 < float(val_split) < 1.0:
        raise ConfigError(f"val_split must be between 0 and 1 (exclusive), got {val_split!r}")
    if isinstance(source, str) and source in BUILTIN_DATASETS:
        if val_source is not None:
            raise ConfigError(
                f"the built-in dataset {source!r} has no separate validation folder; drop --val-data "
                "and use --val-split"
            )
        classes, samples = _builtin(source)
        by_class: dict[int, list[Sample]] = {}
        for s in samples:
            by_class.setdefault(s.label, []).append(s)
        train, val = _stratified_split(classes, by_class, float(val_split), seed)
        return DatasetSplit(classes, tuple(train), tuple(val), (), source, None, float(val_split), seed)

    root = Path(source).expanduser().resolve()
    classes, good, skipped = _load_folder(root, role="data", threads=threads, progress=progress)
    index = {c: i for i, c in enumerate(classes)}
    samples_by_class = {index[c]: [Sample(label=index[c], path=p) for p in ps] for c, ps in good.items()}
    if val_source is None:
        train, val = _stratified_split(classes, samples_by_class, float(val_split), seed)
        return DatasetSplit(classes, tuple(train), tuple(val), tuple(skipped), str(root), None, float(val_split), seed)

    val_root = Path(val_source).expanduser().resolve()
    _, val_good, val_skipped = _load_folder(
        val_root, role="validation", threads=threads, progress=progress, classes=classes
    )
    rng = random.Random(seed)
    train = _mixed([s for c in classes for s in samples_by_class[index[c]]], rng)
    val = _mixed([Sample(label=index[c], path=p) for c in classes for p in val_good[c]], rng)
    return DatasetSplit(
        classes, tuple(train), tuple(val), tuple(skipped + val_skipped), str(root), str(val_root), None, seed
    )


# --------------------------------------------------------------------------- split.json


def _entries(samples: Iterable[Sample], root: str) -> list[list[Any]]:
    out: list[list[Any]] = []
    for s in samples:
        if s.path is None:
            out.append([s.index, s.label])
        else:
            out.append([Path(os.path.relpath(s.path, root)).as_posix(), s.label])
    return out


def split_to_dict(split: DatasetSplit) -> dict[str, Any]:
    """The JSON form of a split: sources, parameters, and samples relative to their folder."""
    val_root = split.val_source or split.source
    return {
        "format": SPLIT_FORMAT,
        "source": split.source,
        "val_source": split.val_source,
        "val_split": split.val_split,
        "seed": split.seed,
        "classes": list(split.classes),
        "train": _entries(split.train, split.source),
        "val": _entries(split.val, val_root),
        "skipped": [s.to_dict() for s in split.skipped],
    }


def save_split(split: DatasetSplit, path: str | os.PathLike[str]) -> Path:
    """Write ``split.json`` atomically (relative paths, or indices for built-in data)."""
    from edge_tl.runs import atomic_write_text

    data = split_to_dict(split)
    # One sample per line: readable and diffable, a third of the size of fully indented JSON.
    parts = []
    for key, value in data.items():
        if key in ("train", "val"):
            body = ",\n    ".join(json.dumps(entry) for entry in value)
            text = f"[\n    {body}\n  ]" if value else "[]"
        else:
            text = json.dumps(value, indent=2).replace("\n", "\n  ")
        parts.append(f"  {json.dumps(key)}: {text}")
    return atomic_write_text(path, "{\n" + ",\n".join(parts) + "\n}\n")


def _samples_from(
    entries: list[list[Any]], *, root: str, builtin: str | None, num_classes: int, where: str
) -> list[Sample]:
    samples = []
    for ref, label in entries:
        if not isinstance(label, int) or not 0 <= label < num_classes:
            raise DataError(f"{where}: label {label!r} of {ref!r} is not a class index below {num_classes}")
        if builtin is not None:
            samples.append(Sample(label=label, index=int(ref), builtin=builtin))
        else:
            samples.append(Sample(label=label, path=os.path.join(root, *str(ref).split("/"))))
    return samples


def load_split(
    path: str | os.PathLike[str],
    *,
    data_root: str | os.PathLike[str] | None = None,
    val_root: str | os.PathLike[str] | None = None,
) -> DatasetSplit:
    """Rebuild the split written by :func:`save_split`.

    ``data_root`` / ``val_root`` replace the recorded folders when the data has moved
    (e.g. onto a device); the relative paths inside are kept. Missing files are reported
    here, not halfway through an evaluation.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"split file {str(path)!r} does not exist; was the run made by `edge-tl finetune`?") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"split file {str(path)!r} is not valid JSON ({exc})") from exc
    if data.get("format") != SPLIT_FORMAT:
        raise DataError(
            f"split file {str(path)!r} has format {data.get('format')!r}; this edge-tl reads {SPLIT_FORMAT}"
        )
    classes = tuple(data["classes"])
    source = str(data["source"])
    builtin = source if source in BUILTIN_DATASETS else None
    root = str(Path(data_root).resolve()) if data_root is not None else source
    recorded_val = data.get("val_source")
    if recorded_val is None:  # validation images came out of the training folder
        vroot = root
    else:
        vroot = str(Path(val_root).resolve()) if val_root is not None else str(recorded_val)
    where = str(path)
    train = _samples_from(data["train"], root=root, builtin=builtin, num_classes=len(classes), where=where)
    val = _samples_from(data["val"], root=vroot, builtin=builtin, num_classes=len(classes), where=where)
    if builtin is None:
        missing = [s.path for s in (*train, *val) if not os.path.isfile(s.path)]  # type: ignore[arg-type]
        if missing:
            raise DataError(
                f"{len(missing)} images recorded in {where} are missing (first: {missing[0]!r}); restore the data "
                "folder or pass its new location (data_root / val_root)"
            )
    skipped = tuple(SkippedFile(path=s["path"], reason=s["reason"]) for s in data.get("skipped", []))
    return DatasetSplit(
        classes,
        tuple(train),
        tuple(val),
        skipped,
        root if builtin is None else source,
        None if recorded_val is None else vroot,
        data.get("val_split"),
        int(data.get("seed", 0)),
    )


def split_from_run(
    run: "Run | str | os.PathLike[str]",
    *,
    data_root: str | os.PathLike[str] | None = None,
    val_root: str | os.PathLike[str] | None = None,
) -> DatasetSplit:
    """Exactly the split a run was trained with, from the file its manifest names.

    ``data_root`` / ``val_root`` point at the data where it lives now, as in :func:`load_split`.
    """
    from edge_tl.runs import Run

    if not isinstance(run, Run):
        run = Run.open(run)
    data = run.require("data", stage="rebuilding the dataset split")
    split_file = run.confined(str(data.get("split_file") or SPLIT_FILE), what="data.split_file")
    return load_split(split_file, data_root=data_root, val_root=val_root)


def unlabelled_samples(run: "Run", *, stage: str) -> list[Sample]:
    """The images of a run imported without labelled data: its calibration folder, unlabelled
    (``UNLABELED``), so that models can still be compared by agreement with the reference."""
    folder = (run.get("data") or {}).get("calib_source")
    if not folder or not Path(folder).is_dir():
        raise DataError(
            f"run {str(run.root)!r} has no validation images, which {stage} needs; it compares on labelled images, "
            "or on calibration images by agreement alone: import with --val-data DIR or --calib-data DIR"
        )
    paths = sorted(
        os.path.join(d, f)
        for d, _, names in os.walk(folder)
        for f in names
        if is_image_file(f) and not f.startswith(".")
    )
    return [Sample(label=UNLABELED, path=p) for p in paths]


# --------------------------------------------------------------------------- batches


def iter_batches(
    samples: Sequence[Sample],
    prep: "Preprocessing",
    batch_size: int,
    *,
    threads: int | None = None,
) -> Iterator[tuple["np.ndarray", "np.ndarray"]]:
    """Stream ``(images (N,3,H,W) float32, labels (N,) int64)`` in order, through :func:`preprocess`.

    Only one batch is held in memory at a time; the last batch may be smaller.
    """
    np = lazy_import("numpy")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    threads = threads or _default_threads()

    def one(sample: Sample) -> "np.ndarray":
        return preprocess(load_image(sample), prep)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            images = np.stack(list(pool.map(one, chunk)))
            labels = np.fromiter((s.label for s in chunk), dtype=np.int64, count=len(chunk))
            yield images, labels


__all__ = [
    "BUILTIN_DATASETS",
    "SPLIT_FILE",
    "DatasetSplit",
    "Sample",
    "SkippedFile",
    "iter_batches",
    "load_dataset",
    "load_image",
    "load_split",
    "save_split",
    "split_from_run",
    "split_to_dict",
]
