"""Folder and built-in datasets: checks before training, splits, split.json, batches."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edge_tl.data import (
    DatasetSplit,
    iter_batches,
    load_dataset,
    load_image,
    load_split,
    preprocess,
    save_split,
    split_from_run,
)
from edge_tl.errors import ConfigError, DataError
from edge_tl.models import Preprocessing
from edge_tl.runs import Run

PREP = Preprocessing(input_size=16, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


# --------------------------------------------------------------------------- folders


def test_folder_with_broken_files_skips_and_lists_them(image_folder, make_truncated_jpeg, tmp_path: Path) -> None:
    root = image_folder({"cat": 6, "dog": 5, "eel": 5})
    make_truncated_jpeg(root / "cat" / "cut.jpg")
    (root / "dog" / "zero.png").write_bytes(b"")
    (root / "eel" / "readme.png").write_text("not an image")
    (root / "eel" / ".hidden.png").write_text("hidden files are not data")
    (root / "eel" / "notes.txt").write_text("other extensions are ignored")
    (root / ".git").mkdir()  # hidden folder: not a class
    nested = root / "dog" / "more"
    nested.mkdir()
    shutil.copy(root / "dog" / "img000.jpg", nested / "again.JPG")

    seen: list[tuple[int, int]] = []
    split = load_dataset(root, val_split=0.2, seed=3, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (20, 20) and [d for d, _ in seen] == list(range(1, 21))

    assert split.classes == ("cat", "dog", "eel")
    assert sorted(Path(s.path).name for s in split.skipped) == ["cut.jpg", "readme.png", "zero.png"]
    reasons = {Path(s.path).name: s.reason for s in split.skipped}
    assert "truncated" in reasons["cut.jpg"]
    assert "empty" in reasons["zero.png"]
    assert "not an image" in reasons["readme.png"]
    every = {s.path for s in split.train + split.val}
    assert len(every) == 6 + 6 + 5  # the nested copy counts, the broken and hidden files do not
    assert str((nested / "again.JPG").resolve()) in every
    assert split.class_counts("val") == {"cat": 1, "dog": 1, "eel": 1}
    section = split.manifest_section()
    assert section["num_train"] == 14 and section["num_val"] == 3
    assert section["split_file"] == "split.json"
    assert {Path(s["path"]).name for s in section["skipped"]} == {"cut.jpg", "readme.png", "zero.png"}


def test_split_is_seeded_and_stratified(image_folder) -> None:
    root = image_folder({"a": 10, "b": 20, "c": 5})
    first = load_dataset(root, val_split=0.2, seed=7)
    again = load_dataset(root, val_split=0.2, seed=7)
    other = load_dataset(root, val_split=0.2, seed=8)
    assert first == again
    assert {s.path for s in first.val} != {s.path for s in other.val}
    assert first.class_counts("val") == {"a": 2, "b": 4, "c": 1}
    assert first.class_counts("train") == {"a": 8, "b": 16, "c": 4}
    assert not {s.path for s in first.val} & {s.path for s in first.train}
    for s in first.train + first.val:
        assert Path(s.path).parent.name == first.classes[s.label]
    # The order is mixed, so the first few validation images already span the classes.
    assert len({s.label for s in first.val[:4]}) >= 2


def test_prefix_of_digits_validation_covers_the_classes() -> None:
    split = load_dataset("digits", seed=0)
    assert len({s.label for s in split.val[:100]}) == 10
    assert len({s.label for s in split.train[:100]}) == 10


def test_separate_validation_folder(image_folder) -> None:
    train_root = image_folder({"a": 3, "b": 3}, name="train")
    val_root = image_folder({"a": 2, "b": 1}, name="val", seed=1)
    split = load_dataset(train_root, val_source=val_root)
    assert len(split.train) == 6 and len(split.val) == 3
    assert all(Path(s.path).is_relative_to(val_root) for s in split.val)
    assert split.val_source == str(val_root.resolve()) and split.val_split is None
    assert split == load_dataset(train_root, val_source=val_root)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"only": 4}, "single class"),
        ({"a": 3, "b": 0, "c": 2}, "empty classes: 'b' \\(no image files\\)"),
        ({"a": 0, "b": 0}, "no images in them"),
    ],
)
def test_unusable_folders_stop_with_a_clear_error(image_folder, layout: dict[str, int], message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_dataset(image_folder(layout))


def test_class_of_only_broken_files_is_named(image_folder, make_truncated_jpeg) -> None:
    root = image_folder({"good": 3, "bad": 0})
    make_truncated_jpeg(root / "bad" / "x.jpg")
    (root / "bad" / "y.png").write_bytes(b"")
    with pytest.raises(DataError, match="'bad' \\(2 unreadable files\\)"):
        load_dataset(root)


def test_folder_where_nothing_decodes(image_folder) -> None:
    root = image_folder({"a": 0, "b": 0})
    (root / "a" / "x.png").write_text("x")
    (root / "b" / "y.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="none of its 2 image files could be read"):
        load_dataset(root)


def test_missing_and_flat_directories(tmp_path: Path, make_image) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")
    make_image(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match="no class subfolders \\(it holds 1 images directly"):
        load_dataset(tmp_path / "flat")
    with pytest.raises(DataError, match="not a directory"):
        load_dataset(tmp_path / "flat" / "a.png")
    (tmp_path / "void").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        load_dataset(tmp_path / "void")


def test_validation_classes_must_match(image_folder) -> None:
    train_root = image_folder({"a": 2, "b": 2}, name="train")
    val_root = image_folder({"a": 1, "c": 1}, name="val")
    with pytest.raises(DataError, match=r"missing \['b'\], extra \['c'\]"):
        load_dataset(train_root, val_source=val_root)
    half_empty = image_folder({"a": 1, "b": 0}, name="val2")
    with pytest.raises(DataError, match="validation directory .* empty classes: 'b'"):
        load_dataset(train_root, val_source=half_empty)


def test_val_split_that_leaves_a_class_without_validation(image_folder) -> None:
    root = image_folder({"a": 10, "b": 2})
    with pytest.raises(DataError, match="class 'b' has 2 images.*no validation image"):
        load_dataset(root, val_split=0.2)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_val_split_out_of_range(image_folder, bad: float) -> None:
    with pytest.raises(ConfigError, match="val_split"):
        load_dataset(image_folder({"a": 2, "b": 2}), val_split=bad)


# --------------------------------------------------------------------------- digits


def test_builtin_digits() -> None:
    split = load_dataset("digits", val_split=0.2, seed=0)
    assert split.classes == tuple("0123456789")
    assert len(split.train) + len(split.val) == 1797
    assert len(split.skipped) == 0
    counts = split.class_counts("val")
    assert sum(counts.values()) == len(split.val) and min(counts.values()) >= 35
    assert len({s.index for s in split.train + split.val}) == 1797
    image = load_image(split.train[0])
    assert image.mode == "RGB" and image.size == (8, 8)
    pixels = np.asarray(image)
    assert pixels.max() == 255 and pixels.min() == 0  # 0..16 ink mapped to the full 8-bit range
    from sklearn.datasets import load_digits

    raw = load_digits().images[split.train[0].index]
    np.testing.assert_array_equal(pixels[..., 1], np.rint(raw * 255 / 16).astype(np.uint8))
    with pytest.raises(ConfigError, match="no separate validation folder"):
        load_dataset("digits", val_source="elsewhere")


def test_folder_named_like_a_builtin_is_reachable(image_folder, monkeypatch: pytest.MonkeyPatch) -> None:
    root = image_folder({"a": 2, "b": 2}, name="digits")
    monkeypatch.chdir(root.parent)
    split = load_dataset(Path("digits"), val_split=0.5)
    assert split.classes == ("a", "b") and split.source == str(root.resolve())


# --------------------------------------------------------------------------- split.json


def test_split_round_trip_through_a_run(image_folder, make_truncated_jpeg, tmp_path: Path) -> None:
    root = image_folder({"a": 5, "b": 5})
    make_truncated_jpeg(root / "a" / "bad.jpg")
    split = load_dataset(root, val_split=0.4, seed=11)
    run = Run.create(tmp_path / "run", data=split.manifest_section(), classes=list(split.classes))
    save_split(split, run.path("split.json"))
    rebuilt = split_from_run(tmp_path / "run")
    assert rebuilt == split
    assert split_from_run(run) == split
    data = json.loads(run.path("split.json").read_text())
    assert data["source"] == str(root.resolve())
    assert all(not Path(ref).is_absolute() and label in (0, 1) for ref, label in data["train"] + data["val"])
    assert [Path(s["path"]).name for s in data["skipped"]] == ["bad.jpg"]


def test_split_follows_moved_data_and_reports_missing_files(image_folder, tmp_path: Path) -> None:
    root = image_folder({"a": 3, "b": 3})
    split = load_dataset(root, val_split=0.34)
    save_split(split, tmp_path / "split.json")
    moved = tmp_path / "moved"
    shutil.move(str(root), moved)
    with pytest.raises(DataError, match="6 images recorded .* are missing"):
        load_split(tmp_path / "split.json")
    relocated = load_split(tmp_path / "split.json", data_root=moved)
    assert [Path(s.path).relative_to(moved) for s in relocated.train] == [
        Path(s.path).relative_to(root) for s in split.train
    ]


def test_split_with_validation_folder_round_trip(image_folder, tmp_path: Path) -> None:
    split = load_dataset(image_folder({"a": 2, "b": 2}, name="t"), val_source=image_folder({"a": 1, "b": 1}, name="v"))
    save_split(split, tmp_path / "split.json")
    assert load_split(tmp_path / "split.json") == split
    shutil.move(split.val_source, tmp_path / "v2")
    moved = load_split(tmp_path / "split.json", val_root=tmp_path / "v2")
    assert moved.val_source == str(tmp_path / "v2") and all(os.path.isfile(s.path) for s in moved.val)
    assert moved.train == split.train


def test_digits_split_round_trip(tmp_path: Path) -> None:
    split = load_dataset("digits", seed=5)
    save_split(split, tmp_path / "split.json")
    rebuilt = load_split(tmp_path / "split.json")
    assert rebuilt == split
    assert (tmp_path / "split.json").stat().st_size < 30_000  # indices, not pixels


def test_run_without_data_section(tmp_path: Path) -> None:
    from edge_tl.errors import RunError

    Run.create(tmp_path / "r")
    with pytest.raises(RunError, match="'data'"):
        split_from_run(tmp_path / "r")
    Run.create(tmp_path / "s", data={"split_file": "split.json"})
    with pytest.raises(DataError, match="does not exist"):
        split_from_run(tmp_path / "s")


# --------------------------------------------------------------------------- batches


def test_iter_batches_streams_preprocessed_batches(image_folder) -> None:
    split = load_dataset(image_folder({"a": 4, "b": 3}), val_split=0.3)
    samples = split.train + split.val
    batches = list(iter_batches(samples, PREP, 3))
    assert [len(b[1]) for b in batches] == [3, 3, 1]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    assert images.dtype == np.float32 and images.shape == (7, 3, 16, 16)
    assert labels.dtype == np.int64 and labels.tolist() == [s.label for s in samples]
    for i in (0, 6):
        np.testing.assert_array_equal(images[i], preprocess(load_image(samples[i]), PREP))


def test_iter_batches_is_lazy(image_folder) -> None:
    split = load_dataset(image_folder({"a": 2, "b": 2}), val_split=0.5)
    samples = list(split.train + split.val)
    os.unlink(samples[-1].path)  # removed after the split was made
    batches = iter_batches(samples, PREP, 2)
    first, _ = next(batches)  # only the first batch is decoded
    assert first.shape[0] == 2
    with pytest.raises(DataError, match="cannot read"):
        next(batches)


def test_iter_batches_over_digits() -> None:
    split: DatasetSplit = load_dataset("digits")
    seen = Counter()
    for images, labels in iter_batches(split.val, PREP, 128):
        assert images.shape[1:] == (3, 16, 16)
        seen.update(labels.tolist())
    assert sum(seen.values()) == len(split.val) and set(seen) == set(range(10))


def test_bad_batch_size(image_folder) -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        next(iter_batches([], PREP, 0))


@pytest.mark.parametrize("bad", ["cat\ndog", "tab\there", "bell\x07"])
def test_class_folder_with_control_characters_is_refused(image_folder, bad: str) -> None:
    # A newline in a class name would shift every later line of labels.txt (line index = label).
    root = image_folder({"a": 2, bad: 2})
    with pytest.raises(DataError, match="control characters") as info:
        load_dataset(root)
    assert repr(bad) in str(info.value) and "\n" not in str(info.value)


def test_class_folders_differing_only_in_case_are_kept_with_a_warning(image_folder, caplog) -> None:
    root = image_folder({"Cat": 5, "cat": 5, "dog": 5})
    with caplog.at_level("WARNING", logger="edge_tl.data"):
        split = load_dataset(root)
    assert split.classes == ("Cat", "cat", "dog")
    assert any("differ only in case" in r.getMessage() and "'Cat'" in r.getMessage() for r in caplog.records)
