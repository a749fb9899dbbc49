"""``import_model``: a model trained elsewhere becomes a run directory every later stage accepts.

The run gets what ``finetune`` writes (``backbone``, ``preprocessing``, ``classes``,
``data`` with ``split.json``) plus a ``source`` section naming the source kind and the
reference artifact (``edge_tl.artifacts.reference_artifact``). The validation split is
the labelled ``--val-data`` folder; there is no training split, and ``--calib-data`` is
recorded as the folder quantize calibrates on.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edge_tl.artifacts import SOURCE_SECTION
from edge_tl.errors import ConfigError, DataError
from edge_tl.importers.base import STAGE, ImportRequest, SourceModel
from edge_tl.importers.registry import get_source
from edge_tl.input_contract import SECTION as CONTRACT_SECTION
from edge_tl.runs import Artifact, Run, now_iso


@dataclass(frozen=True)
class ImportResult:
    run_dir: Path
    kind: str
    reference: Artifact
    classes: tuple[str, ...]
    num_val: int
    notes: tuple[str, ...]


def import_model(request: ImportRequest, *, progress: Callable[[str], None] | None = None) -> ImportResult:
    """Check the source, the labels and the data, then write the run (nothing is written on a failed check)."""
    say = progress or (lambda _msg: None)
    out = Path(request.out).expanduser()
    if Run.exists(out):
        raise ConfigError(f"--out {str(out)!r} is already an edge-tl run; import into a new directory")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(
            f"--out {str(out)!r} exists and is not an empty directory; give a new one (nothing there is touched)"
        )
    kind = get_source(request.kind)
    say(f"reading the {kind.name} source")
    model = kind.load_opener()(request)
    notes = list(model.notes)
    classes, how = _classes(model, request)
    notes.append(how)
    val, skipped = _val_samples(request, classes, imagenet=model.class_names is not None)
    if model.check_with_data is not None and val:
        notes.extend(model.check_with_data(val, model.preprocessing))
    if request.calib_data is not None:
        _check_calib(Path(request.calib_data))
    if request.val_data is None:
        notes.append(
            "no --val-data: export and verify compare with the reference by agreement on the --calib-data "
            "images; top-1, quantize's accuracy and the device evaluation pack need labelled images"
        )

    from edge_tl.data.dataset import SPLIT_FILE, DatasetSplit, save_split

    made = not out.exists()
    try:
        root = str(Path(request.val_data).resolve()) if request.val_data else str(out.resolve())
        split = DatasetSplit(tuple(classes), (), tuple(val), tuple(skipped), root, None, None, 0)
        data = split.manifest_section()
        data["calib_source"] = str(Path(request.calib_data).resolve()) if request.calib_data else None
        run = Run.create(
            out,
            **{
                SOURCE_SECTION: {"kind": kind.name, "reference": kind.reference, "imported": now_iso(), **model.details}
            },
            backbone=model.backbone,
            preprocessing=model.preprocessing.to_dict(),
            **{CONTRACT_SECTION: model.contract.to_dict()},
            classes=list(classes),
            data=data,
        )
        save_split(split, run.path(SPLIT_FILE))
        say(f"writing the reference model ({kind.reference})")
        reference = model.write(run)
    except BaseException:
        if made and out.exists():
            shutil.rmtree(out)
        raise
    return ImportResult(run.root, kind.name, reference, tuple(classes), len(val), tuple(n for n in notes if n))


# --------------------------------------------------------------------------- classes


def _classes(model: SourceModel, request: ImportRequest) -> tuple[list[str], str]:
    n = model.num_classes
    if request.labels is not None:
        names = read_labels(Path(request.labels))
        if len(names) != n:
            raise ConfigError(
                f"the model's head has {n} outputs but --labels {str(request.labels)!r} names {len(names)} classes; "
                "give the labels the model was trained with (one per line, in output order)"
            )
        return names, f"classes from {request.labels}"
    if model.class_names is not None:
        return list(model.class_names), "classes: the ImageNet class names (timm's ImageNet info)"
    if request.val_data is not None:
        folders = _class_folders(Path(request.val_data))
        if len(folders) == n:
            return folders, (
                f"classes: the {n} --val-data folder names in sorted order, as torchvision's "
                "ImageFolder and timm number them; give --labels if the model was trained otherwise"
            )
        raise ConfigError(
            f"the model's head has {n} outputs but --val-data {str(request.val_data)!r} has {len(folders)} class "
            "folders; give --labels FILE (one class name per line, in output order)"
        )
    return [str(i) for i in range(n)], f"no --labels: the {n} classes are named by their output index"


def read_labels(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"--labels {str(path)!r} cannot be read ({exc}); give a UTF-8 text file, one class per line"
        ) from exc
    names = [line.strip() for line in lines if line.strip()]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"--labels {str(path)!r} names these classes more than once: {repeated[:5]}")
    if len(names) < 2:
        raise ConfigError(f"--labels {str(path)!r} names {len(names)} class(es); a classifier has at least 2")
    return names


# --------------------------------------------------------------------------- data


def _class_folders(root: Path) -> list[str]:
    from edge_tl.data.dataset import _scan_folder

    return list(_scan_folder(root.expanduser().resolve(), role="--val-data")[0])


def _val_samples(request: ImportRequest, classes: list[str], *, imagenet: bool) -> tuple[list, list]:
    """Labelled samples of ``--val-data``: folders named by class name or by index (or, for
    ImageNet, by WordNet id or a synonym)."""
    from edge_tl.data.dataset import Sample, SkippedFile, _default_threads, _scan_folder, _verify

    if request.val_data is None:
        return [], []
    root = Path(request.val_data).expanduser().resolve()
    folders, files = _scan_folder(root, role="--val-data")
    index = {name: i for i, name in enumerate(classes)}
    if imagenet:
        from edge_tl.importers.pytorch import imagenet_aliases

        index = {**imagenet_aliases(tuple(classes)), **index}
    labels, unknown = {}, []
    for folder in folders:
        if folder in index:
            labels[folder] = index[folder]
        elif folder.isdigit() and int(folder) < len(classes):
            labels[folder] = int(folder)
        else:
            unknown.append(folder)
    if unknown:
        import difflib

        hints = [
            f"{u!r} (close: {', '.join(difflib.get_close_matches(u, list(index), n=3)) or 'none'})" for u in unknown[:3]
        ]
        raise DataError(
            f"--val-data {str(root)!r}: class folder(s) {', '.join(hints)} are neither a class name nor an index "
            f"below {len(classes)}; rename them to the model's classes (see --labels)"
        )
    paths = [p for folder in folders for p in files[folder]]
    verdicts = _verify(paths, _default_threads(), None)
    samples = [Sample(label=labels[f], path=p) for f in folders for p in files[f] if verdicts[p] is None]
    skipped = [
        SkippedFile(path=os.path.relpath(p, root), reason=str(verdicts[p])) for p in paths if verdicts[p] is not None
    ]
    if not samples:
        raise DataError(f"--val-data {str(root)!r} has no readable images")
    return samples, skipped


def _check_calib(root: Path) -> None:
    from edge_tl.data import is_image_file

    if not root.is_dir():
        raise DataError(f"--calib-data {str(root)!r} is not a directory of images")
    if not any(is_image_file(f) for _, _, names in os.walk(root) for f in names):
        raise DataError(f"--calib-data {str(root)!r} holds no images (searched recursively)")


__all__ = ["ImportResult", "import_model", "read_labels", "STAGE"]
