"""The bundled EfficientNet-Lite0 imported as it is, with its ImageNet head, judged on photographs.

scikit-image ships real photographs: ``coffee`` (a cup of espresso) and ``chelsea`` (a
tabby cat). The validation folders are named by ImageNet class name (``espresso``) and by
index (``282``, tiger cat, which Lite0 ranks first for chelsea); the calibration folder
holds other scikit-image photographs, unlabelled.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ESPRESSO = 967
CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def edge(*args: object) -> str:
    from click.testing import CliRunner

    from edge_tl.cli.main import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = pytest.importorskip("skimage.data")
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    for folder, name in (("val/espresso", "coffee"), ("val/282", "chelsea")):
        (root / folder).mkdir(parents=True)
        Image.fromarray(getattr(data, name)()).save(root / folder / f"{name}.png")
    (root / "calib").mkdir()
    for name in ("astronaut", "rocket", "camera", "coins", "moon", "page", "coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()).convert("RGB").save(root / "calib" / f"{name}.png")
    return root


def test_lite0_imagenet_ranks_espresso_and_a_cat_first_in_fp32_fp16_and_int8(photos: Path, tmp_path: Path) -> None:
    pytest.importorskip("timm")
    pytest.importorskip("onnxruntime")
    from edge_tl.data import split_from_run
    from edge_tl.data.dataset import iter_batches
    from edge_tl.models import Preprocessing
    from edge_tl.runs import Run
    from edge_tl.runtime import open_runner

    run = tmp_path / "lite0"
    out = edge(
        "import",
        "--out",
        run,
        "--backbone",
        "efficientnet_lite0",
        "--imagenet",
        "--val-data",
        photos / "val",
        "--calib-data",
        photos / "calib",
    )
    assert "1000 classes, 2 validation images" in out
    opened = Run.open(run)
    classes = opened.get("classes")
    assert classes[ESPRESSO] == "espresso" and classes[281] == "tabby, tabby cat"
    assert opened.get("source")["kind"] == "pretrained"
    # Lite0's published contract (timm's tf_efficientnet_lite0 config), as finetune writes it.
    assert opened.get("preprocessing") == {
        "input_size": 224,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "interpolation": "bicubic",
        "crop_pct": 0.875,
        "resize_size": 256,
    }
    assert sorted(s.label for s in split_from_run(opened).val) == [282, ESPRESSO]

    edge("export", run, "--quiet")
    edge("quantize", run, "--recipe", "tensorrt-int8-qdq", "--quiet")
    edge("verify", run, "--no-latency", "--quiet")

    report = json.loads((run / "verify" / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    wanted = ["checkpoint-best", "onnx-fp32", "onnx-fp16", "onnx-int8-tensorrt-int8-qdq"]
    assert set(wanted) <= set(rows)
    prep = Preprocessing.from_dict(opened.get("preprocessing"))
    samples = sorted(split_from_run(opened).val, key=lambda s: s.label)  # chelsea, coffee
    images, _ = next(iter_batches(samples, prep, 2))
    for name in wanted:
        assert rows[name]["top1"] == 1.0 and rows[name]["top1_agreement"] == 1.0, rows[name]
        with open_runner(Run.open(run), artifact=name) as runner:
            chelsea, coffee = runner.run(images).argmax(axis=1)
        assert coffee == ESPRESSO and chelsea in CATS, (name, classes[coffee], classes[chelsea])
    print({name: {k: rows[name][k] for k in ("top1", "top1_agreement", "mean_kl", "max_abs_diff")} for name in wanted})
