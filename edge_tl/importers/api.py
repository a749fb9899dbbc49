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
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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
    classes, how, other = _classes(model, request)
    notes.append(how)
    val, skipped = _val_samples(request, classes, imagenet=model.class_names is not None)
    if model.check_with_data is not None and val:
        notes.extend(model.check_with_data(val, model.preprocessing))
    if val and model.predict is not None:
        say(f"scoring the reference on {len(val)} --val-data images")
        notes += _check_scores(model, request, val, classes, other)
    elif other is not None and request.class_order is None and model.class_order is None:
        raise _unknown_order(request, classes, other, None)
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


def _classes(model: SourceModel, request: ImportRequest) -> tuple[list[str], str, list[str] | None]:
    """The class names in output order, how they were found, and the folders' other order where the
    natural (timm) and plain sorted (torchvision) orders of the class folders differ."""
    n = model.num_classes
    if request.labels is not None:
        return read_labels(Path(request.labels), outputs=n), f"classes from {request.labels}", None
    if model.class_names is not None:
        return list(model.class_names), "classes: the names the source itself records", None
    if request.val_data is not None:
        from edge_tl.importers.scoring import ordered

        folders = _class_folders(Path(request.val_data))
        if len(folders) != n:
            raise ConfigError(
                f"the model's head has {n} outputs but --val-data {str(request.val_data)!r} has {len(folders)} class "
                "folders; give --labels FILE (one class name per line, in output order)"
            )
        natural = ordered(folders, NATURAL)
        if natural == folders:
            return folders, f"classes: the {n} --val-data folder names (natural and sorted order agree)", None
        order = request.class_order or model.class_order or SORTED
        chosen, other = (natural, folders) if order == NATURAL else (folders, natural)
        why = "--class-order" if request.class_order else f"as {model.tool} numbers class folders"
        return chosen, f"classes: the {n} --val-data folder names in {_ORDER_NAMES[order]} ({why})", other
    return [str(i) for i in range(n)], f"no --labels: the {n} classes are named by their output index", None


NATURAL, SORTED = "natural", "sorted"
_ORDER_NAMES = {NATURAL: "natural order (timm's ImageDataset)", SORTED: "sorted order (torchvision's ImageFolder)"}


def _order_of(classes: list[str]) -> str:
    from edge_tl.importers.scoring import ordered

    return NATURAL if classes == ordered(classes, NATURAL) else SORTED


def _unknown_order(request: ImportRequest, classes: list[str], other: list[str], scores: dict | None) -> ConfigError:
    from edge_tl.importers.scoring import ordered

    scored = " On --val-data: " + ", ".join(f"{o} {s}" for o, s in scores.items()) + "." if scores else ""
    return ConfigError(
        f"--val-data {str(request.val_data)!r}: the class folders number differently in natural order (timm: "
        f"{', '.join(ordered(classes, NATURAL)[:4])}, ...) and sorted order (torchvision: "
        f"{', '.join(ordered(classes, SORTED)[:4])}, ...) and the source does not say which tool made it; give "
        f"--class-order natural|sorted or --labels FILE.{scored}"
    )


def _check_scores(model: SourceModel, request: ImportRequest, val: list, classes: list[str], other) -> list[str]:
    """Score the reference (and the other candidate keys, and the other class order), then refuse
    what scores near chance; returns the notes that say what was scored."""
    import numpy as np

    from edge_tl.importers.scoring import near_chance, score, val_inputs

    predicts = {model.weights_key or "reference": model.predict, **model.alternatives}
    paths = [s.path for s in val]
    logits: dict[str, list] = {name: [] for name in predicts}
    for start in range(0, len(paths), 256):
        x = val_inputs(paths[start : start + 256], model.preprocessing)
        for name, predict in predicts.items():
            logits[name].append(predict(x))
    joined = {name: np.concatenate(parts) for name, parts in logits.items()}
    labels = np.asarray([s.label for s in val])
    used = next(iter(predicts))
    main = score(joined[used], labels)
    n = len(classes)
    notes = []
    order_scores: dict[str, Any] = {}
    if other is not None:
        index = {name: i for i, name in enumerate(other)}
        other_labels = np.asarray([index[classes[int(label)]] for label in labels])
        order_scores = {_order_of(classes): main, _order_of(other): score(joined[used], other_labels)}
        if request.class_order is None and model.class_order is None:
            raise _unknown_order(request, classes, other, order_scores)
        chosen, alternative = order_scores[_order_of(classes)], order_scores[_order_of(other)]
        notes.append(
            f"class order on --val-data: {_order_of(classes)} (used) {chosen}, {_order_of(other)} {alternative}"
        )
        if near_chance(chosen, n) and not near_chance(alternative, n):
            raise ConfigError(
                f"the {_order_of(classes)} class order scores {chosen} on --val-data, near chance "
                f"({100 / n:.1f}%), while the {_order_of(other)} order scores {alternative}; give --class-order "
                f"{_order_of(other)} (or --labels FILE)"
            )
    if len(predicts) > 1:
        table = "; ".join(
            f"{name} {score(joined[name], labels)}{' (used)' if name == used else ''}" for name in predicts
        )
        notes.append(f"checkpoint keys on --val-data: {table}")
    notes.append(f"reference top-1 on --val-data: {main} (chance {100 / n:.1f}%)")
    if near_chance(main, n) and not request.accept_low_accuracy:
        raise ConfigError(
            f"the reference scores {main} on --val-data, within 2 points of chance ({100 / n:.1f}%); checked: "
            + "; ".join(_causes(model, order_scores, {k: score(v, labels) for k, v in joined.items()}, used))
            + ". Fix the cause, or pass --accept-low-accuracy"
        )
    return notes


def _causes(model: SourceModel, order_scores: dict, key_scores: dict, used: str) -> list[str]:
    prep = model.preprocessing
    causes = []
    if order_scores:
        causes.append("class order " + ", ".join(f"{o} {s}" for o, s in order_scores.items()))
    else:
        causes.append("class order: natural and sorted agree (or --labels)")
    if len(key_scores) > 1:
        causes.append("checkpoint key " + ", ".join(f"{k} {s}" for k, s in key_scores.items()))
    else:
        causes.append(f"checkpoint key {used} (the only one)" if model.weights_key else "one model, no checkpoint keys")
    causes.append(
        f"mean {list(prep.mean)} / std {list(prep.std)} (a graph that normalises inside wants 0 / 1, see --mean/--std)"
    )
    causes.append(f"resize {prep.resize_size} px for a {prep.input_size} px crop (--resize-size)")
    return causes


def read_labels(path: Path, *, outputs: int | None = None) -> list[str]:
    """The class names of ``path`` (one a line), checked against a head of ``outputs`` classes.

    The cheap checks come first (the count, against the head), and the duplicate check counts
    once (linear): a labels file of a million lines is refused in about a second.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"--labels {str(path)!r} cannot be read ({exc}); give a UTF-8 text file, one class per line"
        ) from exc
    names = [line.strip() for line in lines if line.strip()]
    if outputs is not None and len(names) != outputs:
        raise ConfigError(
            f"the model's head has {outputs} outputs but --labels {str(path)!r} names {len(names)} classes; "
            "give the labels the model was trained with (one per line, in output order)"
        )
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
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
