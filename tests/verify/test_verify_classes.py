"""No class left behind: per-class recall changes, Holm-corrected McNemar, whole-image budgets, --max-class-drop."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_tl.significance import PairedCounter, allowed_images, holm, mcnemar_exact, over_budget

stats = pytest.importorskip("scipy.stats")


def test_budgets_are_compared_in_whole_images() -> None:
    # The float comparison the issue names: 2 images of 200 lost at budget 1.0 read as over it.
    assert (0.535 - 0.525) * 100 > 1.0
    assert allowed_images(1.0, 200) == 2 and not over_budget(2, 200, 1.0) and over_budget(3, 200, 1.0)
    assert allowed_images(0.3, 1000) == 3  # 0.3 is read as the decimal 3/10, not 0.29999...
    assert allowed_images(1.0, 199) == 1 and over_budget(2, 199, 1.0)
    assert allowed_images(0.0, 500) == 0 and over_budget(1, 500, 0.0) and not over_budget(0, 500, 0.0)
    assert not over_budget(-3, 100, 0.0)  # a net gain is never over budget


def test_holm_adjusted_p_values_by_hand() -> None:
    # Sorted 0.01, 0.03, 0.04 of m = 3: 3 x 0.01 = 0.03; 2 x 0.03 = 0.06; 1 x 0.04 = 0.04, raised to 0.06.
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_per_class_counts_recall_mcnemar_and_the_worst_class() -> None:
    eye = np.eye(3, dtype=np.float32)
    labels = np.array([0] * 10 + [1] * 10 + [2] * 10)
    reference = eye[labels]  # right on every image
    predicted = labels.copy()
    predicted[20:28] = 0  # the artifact loses 8 of the 10 images of class 2
    predicted[0] = 1  # and 1 of class 0
    counter = PairedCounter()
    counter.update(reference[:15], eye[predicted[:15]], labels[:15])
    counter.update(reference[15:], eye[predicted[15:]], labels[15:])
    changes = counter.class_changes(["zero", "one", "two"])
    assert [(c.name, c.images, c.lost, c.gained, c.correct) for c in changes] == [
        ("zero", 10, 1, 0, 9),
        ("one", 10, 0, 0, 10),
        ("two", 10, 8, 0, 2),
    ]
    p = [stats.binomtest(c.lost, c.lost + c.gained).pvalue if c.lost + c.gained else 1.0 for c in changes]
    assert [c.p_value for c in changes] == pytest.approx(p)
    # 8 of 8 discordant: 2 / 256 = 0.0078, times 3 classes = 0.0234 < 0.05 after Holm.
    assert changes[2].p_holm == pytest.approx(3 * mcnemar_exact(8, 0)) and changes[2].significant
    assert not changes[0].significant and changes[1].p_holm == 1.0
    worst = changes[2]
    assert worst.delta_pts == pytest.approx(-80.0) and worst.recall == 0.2
    assert worst.ci_low_pts < -80.0 < worst.ci_high_pts < 0
    assert "class 'two' recall 1.0000 -> 0.2000 (-80.00 pt: 8 of 10 images lost, 0 gained" in worst.describe()
    from edge_tl.verify.report import VerifyRow

    row = VerifyRow("m", "onnx", "int8", "onnxruntime", "local", 30, per_class=[c.to_dict() for c in changes])
    assert row.per_class_worst == worst.describe()  # the largest recall drop


def test_classes_without_validation_images_are_left_out() -> None:
    counter = PairedCounter()
    eye = np.eye(4)
    counter.update(eye[[0, 1]], eye[[0, 1]], np.array([0, 1]))
    assert [c.index for c in counter.class_changes(["a", "b", "c", "d"])] == [0, 1]


# --------------------------------------------------------------------------- through verify


@pytest.fixture()
def broken_class_run(digits_run, tmp_path) -> tuple[Path, int]:
    """The digits run with its FP32 ONNX and a copy of it that never predicts class 3: a bias of
    -1e4 on that logit, added to the graph's output. Every other class keeps its recall."""
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import helper, numpy_helper

    from edge_tl.export import ExportConfig, Precision, export_run
    from edge_tl.runs import Run

    root = Path(shutil.copytree(digits_run, tmp_path / "run"))
    export_run(root, config=ExportConfig(precisions=(Precision.FP32,), parity_images=16))
    run = Run.open(root)
    model = onnx.load(str(run.artifact_path("onnx-fp32")))
    output = model.graph.output[0]
    bias = np.zeros((1, 10), dtype=np.float32)
    bias[0, 3] = -1e4
    model.graph.initializer.append(numpy_helper.from_array(bias, "class3_bias"))
    for node in model.graph.node:
        node.output[:] = [f"{output.name}_raw" if o == output.name else o for o in node.output]
    model.graph.node.append(helper.make_node("Add", [f"{output.name}_raw", "class3_bias"], [output.name]))
    broken = root / "quantize" / "broken" / "model.onnx"
    broken.parent.mkdir(parents=True)
    onnx.save(model, str(broken))
    run.add_artifact("onnx-int8-broken", kind="onnx", path=broken, stage="quantize", precision="int8")
    return root, 3


def test_max_class_drop_fails_a_model_with_one_class_broken_while_top1_holds(broken_class_run, capsys) -> None:
    from edge_tl.cli.main import main

    root, broken = broken_class_run
    base = ["verify", str(root), "--no-latency", "--artifact", "onnx-int8-broken", "--quiet"]
    # Top-1 loses about a tenth (one class of ten): a 15 pt top-1 budget holds ...
    with pytest.raises(SystemExit) as info:
        main(base + ["--max-accuracy-drop", "15"])
    assert info.value.code == 0, capsys.readouterr().err
    capsys.readouterr()
    report = json.loads((root / "verify" / "report.json").read_text())
    row = next(r for r in report["rows"] if r["name"] == "onnx-int8-broken")
    assert -15 < row["delta_top1_pts"] < -5
    classes = {c["index"]: c for c in row["per_class"]}
    assert classes[broken]["recall"] == 0.0 and classes[broken]["significant"]
    assert all(c["lost"] == 0 for i, c in classes.items() if i != broken)
    # ... and --max-class-drop fails it, naming the class.
    with pytest.raises(SystemExit) as info:
        main(base + ["--max-accuracy-drop", "15", "--max-class-drop", "5"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    lost = classes[broken]["lost"]
    assert f"onnx-int8-broken: class '3' recall drop {100 * lost / classes[broken]['images']:.2f} pt" in err
    assert f"({lost} of {classes[broken]['images']} images; at most" in err
    markdown = (root / "verify" / "report.md").read_text()
    assert "### Per class: onnx-int8-broken" in markdown and "**distinguishable from noise**" in markdown
    assert "worst class of onnx-int8-broken: class '3' recall" in markdown
    # The run's HTML page shows the same table, the broken class marked.
    from edge_tl.report import write_report

    html = write_report(root).index.read_text()
    table = html.split("Per class: <code>onnx-int8-broken</code> against the original", 1)[1].split("</table>", 1)[0]
    row = next(r for r in table.split("<tr>") if r.startswith(f"<td>{broken}</td>"))
    assert "distinguishable from noise" in row and f"{lost} / 0" in row
    assert sum("distinguishable from noise" in r for r in table.split("<tr>")) == 1


def test_max_class_drop_judges_a_device_row_by_its_stored_per_class_counts(broken_class_run, capsys) -> None:
    """A device's result carries its paired counts per class (deploy counts them from the device's
    logits): verify judges that row as it judges a local one, and refuses counts that do not add up."""
    from edge_tl.cli.main import main
    from edge_tl.data import split_from_run
    from edge_tl.runs import Run

    root, broken = broken_class_run
    labels = np.asarray([s.label for s in split_from_run(Run.open(root)).val])
    images = np.bincount(labels, minlength=10)
    # As if the device got every image the original got, except class 3's, all lost.
    right = images.copy()
    right[broken] = 0
    counts = [images.tolist(), images.tolist(), right.tolist(), (images - right).tolist(), [0] * 10]
    n = int(images.sum())
    entry = {"artifact": "onnx-fp32", "num_images": n, "top1": float(right.sum() / n), "reference_top1": 1.0,
             "lost": int(images[broken]), "gained": 0, "class_counts": counts}  # fmt: skip
    device = root / "deploy" / "jetson"
    device.mkdir(parents=True)
    (device / "accuracy.json").write_text(json.dumps({"host": "jetson", "results": [entry]}))
    base = ["verify", str(root), "--no-latency", "--artifact", "onnx-fp32", "--quiet", "--max-accuracy-drop", "15"]
    with pytest.raises(SystemExit) as info:
        main(base + ["--max-class-drop", "5"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert f"class '3' recall drop 100.00 pt ({images[broken]} of {images[broken]} images; at most" in err
    assert "no per-class results" not in err
    # Counts that do not add up to the entry's images are a bad record, refused in one line.
    entry["class_counts"][0][0] += 1
    (device / "accuracy.json").write_text(json.dumps({"host": "jetson", "results": [entry]}))
    with pytest.raises(SystemExit) as info:
        main(base)
    assert info.value.code == 1
    assert "'class_counts' is not five rows of per-class image counts" in capsys.readouterr().err


def test_unlabelled_images_count_in_no_class() -> None:
    counter = PairedCounter()
    eye = np.eye(3)
    counter.update(eye[[0, 1, 2]], eye[[0, 2, 2]], np.array([0, 1, -1]))
    assert counter.per_class[0].tolist() == [1, 1, 0] and counter.per_class[3].tolist() == [0, 1, 0]
