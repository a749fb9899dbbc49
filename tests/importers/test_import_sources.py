"""Import sources and their checks, in-process: the registry, ONNX input refusals, labels and folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_tl.errors import ConfigError, DataError
from edge_tl.importers import ImportRequest, PreprocessingOptions, SourceKind, get_source, import_model, register_source

PREP = PreprocessingOptions(img_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def test_registry_refuses_duplicates_and_names_close_matches() -> None:
    with pytest.raises(ConfigError, match="already registered"):
        register_source(SourceKind("onnx", opener="edge_tl.importers.onnx:open_onnx", reference="onnx-fp32"))
    with pytest.raises(ConfigError, match="Did you mean onnx"):
        get_source("onx")
    assert get_source("onnx").reference == "onnx-fp32"
    assert get_source("pytorch").reference == get_source("pretrained").reference == "checkpoint-best"


def _export(module, path: Path, inputs, names) -> Path:
    import torch

    torch.onnx.export(module.eval(), inputs, str(path), input_names=names, opset_version=17, dynamo=False)
    return path


def _digit_folder(root: Path, names: list[str], per_class: int = 2) -> Path:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for k, index in enumerate(np.flatnonzero(digits.target == i % 10)[:per_class]):
            Image.fromarray((digits.images[index] * 15).astype(np.uint8), mode="L").save(root / name / f"{k}.png")
    return root


def test_onnx_with_two_inputs_is_refused(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")

    class Two(torch.nn.Module):
        def forward(self, image, scale):
            return image.mean(dim=(2, 3)) * scale

    path = _export(Two(), tmp_path / "two.onnx", (torch.zeros(1, 3, 32, 32), torch.ones(1, 3)), ["image", "scale"])
    with pytest.raises(ConfigError, match=r"has 2 inputs \(image, scale\)"):
        import_model(ImportRequest(kind="onnx", out=tmp_path / "run", onnx=path, preprocessing=PREP))
    assert not (tmp_path / "run").exists()


def test_onnx_with_a_non_image_input_is_refused(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")

    class Vector(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(16, 4)

        def forward(self, x):
            return self.fc(x)

    path = _export(Vector(), tmp_path / "vec.onnx", (torch.zeros(1, 16),), ["features"])
    with pytest.raises(ConfigError, match=r"input 'features' is FLOAT of shape \[1, 16\], not an image"):
        import_model(ImportRequest(kind="onnx", out=tmp_path / "run", onnx=path, preprocessing=PREP))


def test_onnx_graph_size_must_match_img_size(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import torchvision

    path = _export(
        torchvision.models.resnet18(weights=None, num_classes=3),
        tmp_path / "r.onnx",
        (torch.zeros(1, 3, 48, 48),),
        ["x"],
    )
    with pytest.raises(ConfigError, match="input height is 48 but --img-size is 32; give --img-size 48"):
        import_model(ImportRequest(kind="onnx", out=tmp_path / "run", onnx=path, preprocessing=PREP))


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    path = tmp_path_factory.mktemp("weights") / "r18-3.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None, num_classes=3).state_dict(), path)
    return path


def _request(tmp_path: Path, weights: Path, **kwargs) -> ImportRequest:
    return ImportRequest(
        kind="pytorch",
        out=tmp_path / "run",
        backbone="resnet18",
        weights=weights,
        preprocessing=PreprocessingOptions(img_size=32),
        accept_low_accuracy=True,  # random weights: the sanity line would stop them, rightly
        **kwargs,
    )


def test_val_folders_match_classes_by_name_or_index(small_weights: Path, tmp_path: Path) -> None:
    from edge_tl.data import split_from_run
    from edge_tl.runs import Run

    (tmp_path / "labels.txt").write_text("zero\none\ntwo\n")
    val = _digit_folder(tmp_path / "val", ["zero", "1", "two"])
    result = import_model(_request(tmp_path, small_weights, labels=tmp_path / "labels.txt", val_data=val))
    assert result.classes == ("zero", "one", "two")
    split = split_from_run(Run.open(result.run_dir))
    assert sorted((Path(s.path).parent.name, s.label) for s in split.val) == [
        ("1", 1),
        ("1", 1),
        ("two", 2),
        ("two", 2),
        ("zero", 0),
        ("zero", 0),
    ]
    # The preprocessing is resnet18's published contract with only the size replaced.
    prep = Run.open(result.run_dir).get("preprocessing")
    assert (
        prep["input_size"] == 32
        and prep["mean"] == [0.485, 0.456, 0.406]
        and prep["crop_pct"] == pytest.approx(224 / 256)
    )


def test_an_unknown_val_folder_is_refused_with_close_names(small_weights: Path, tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("zero\none\ntwo\n")
    val = _digit_folder(tmp_path / "val", ["zero", "onne", "3"])
    with pytest.raises(DataError, match=r"'3' \(close: none\), 'onne' \(close: one\)"):
        import_model(_request(tmp_path, small_weights, labels=tmp_path / "labels.txt", val_data=val))
    assert not (tmp_path / "run").exists()


def test_without_labels_the_val_folders_name_the_classes_in_sorted_order(small_weights: Path, tmp_path: Path) -> None:
    val = _digit_folder(tmp_path / "val", ["b-cls", "a-cls", "c-cls"])
    result = import_model(_request(tmp_path, small_weights, val_data=val))
    assert result.classes == ("a-cls", "b-cls", "c-cls")
    assert any("sorted order" in note for note in result.notes)


def test_without_labels_or_data_classes_are_indices_said_plainly(small_weights: Path, tmp_path: Path) -> None:
    result = import_model(_request(tmp_path, small_weights))
    assert result.classes == ("0", "1", "2") and result.num_val == 0
    assert any("named by their output index" in note for note in result.notes)


def test_a_non_empty_out_directory_is_left_untouched(small_weights: Path, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "mine.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not an empty directory"):
        import_model(_request(tmp_path, small_weights))
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["mine.txt"]


def test_a_pickled_model_object_is_not_loaded(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), path)  # a whole module: needs unpickling arbitrary classes
    with pytest.raises(ConfigError, match="weights_only=True") as refused:
        import_model(_request(tmp_path, path))
    # the one line that turns it into what edge-tl reads
    assert f'torch.save(torch.load("{path}", weights_only=False).state_dict(), "state_dict.pt")' in str(refused.value)


def test_imagenet_folders_answer_to_index_name_synonym_and_wordnet_id(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    from edge_tl.importers.pytorch import imagenet_aliases, imagenet_class_names

    names, note = imagenet_class_names()
    assert names is not None and note == ""
    assert len(set(names)) == 1000 and names[134] == "crane (134)" and names[517] == "crane (517)"
    aliases = imagenet_aliases(names)
    assert aliases["espresso"] == 967 and aliases["tabby cat"] == 281 and aliases["n07920052"] == 967
    assert "crane" not in aliases  # two classes: ambiguous, so only the index names them


def test_without_labelled_data_export_and_verify_compare_by_agreement(small_weights: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from edge_tl.export import ExportConfig, Precision, export_run
    from edge_tl.verify import VerifyConfig, verify_run

    calib = tmp_path / "calib"
    _digit_folder(tmp_path / "digits", ["a", "b"], per_class=3)
    calib.mkdir()
    for image in sorted((tmp_path / "digits").rglob("*.png")):
        image.rename(calib / f"{image.parent.name}-{image.name}")
    result = import_model(_request(tmp_path, small_weights, calib_data=calib))

    exported = export_run(result.run_dir, config=ExportConfig(precisions=(Precision.FP32,)))
    assert exported.models[0].parity.num_images == 6 and exported.models[0].metrics()["parity_val_top1"] is None

    with pytest.raises(ConfigError, match="--max-accuracy-drop needs labelled images"):
        verify_run(result.run_dir, config=VerifyConfig(measure_latency=False, max_accuracy_drop=1.0))
    report = verify_run(result.run_dir, config=VerifyConfig(measure_latency=False, min_agreement=0.99))
    row = report.row("onnx-fp32")
    assert row.num_images == 6 and row.top1 is None and row.delta_top1_pts is None and row.top1_agreement == 1.0
    assert "agreement only" in report.notes[0] and "agreement only" in report.paths["markdown"].read_text()


def test_without_any_images_verify_says_what_to_add(small_weights: Path, tmp_path: Path) -> None:
    from edge_tl.verify import VerifyConfig, verify_run

    result = import_model(_request(tmp_path, small_weights))
    with pytest.raises(DataError, match="import with --val-data DIR or --calib-data DIR"):
        verify_run(result.run_dir, config=VerifyConfig(measure_latency=False))


def test_a_timm_architecture_with_wrapped_keys_keeps_timms_contract(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    from edge_tl.models import load_run_model
    from edge_tl.runs import Run

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=4).eval()
    # DDP around a torch.compile'd model
    torch.save({f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}, tmp_path / "w.pth")
    result = import_model(
        ImportRequest(
            kind="pytorch",
            out=tmp_path / "run",
            backbone="timm:test_resnet",
            weights=tmp_path / "w.pth",
            preprocessing=PreprocessingOptions(img_size=64),
        )
    )
    run = Run.open(result.run_dir)
    assert run.get("source")["stripped_prefixes"] == ["module.", "_orig_mod."]
    # timm's pretrained config for test_resnet, with only the size replaced
    assert run.get("preprocessing") == {
        "input_size": 64,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "interpolation": "bilinear",
        "crop_pct": 0.95,
        "resize_size": 67,
    }
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(load_run_model(run)(x), model(x))
