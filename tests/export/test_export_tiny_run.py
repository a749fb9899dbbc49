"""export_run on a tiny trained run (seconds): every record it writes, its parity numbers, its refusals.

The numbers recorded are recomputed here from the files written (ONNX Runtime) and the
run's own model (PyTorch), so a wrong sample count, a swapped runner or a dropped field
fails; the larger model's export is in test_export_run.py.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from edge_tl.errors import RunError, ToleranceError  # noqa: E402
from edge_tl.export import ExportConfig, ParityTolerance, Precision, export_run  # noqa: E402
from edge_tl.export.onnx_export import graph_op_types  # noqa: E402
from edge_tl.runs import Run, sha256_file  # noqa: E402

IMAGES = 40  # not a multiple of the parity batch: the last batch is short


@pytest.fixture()
def run_dir(tiny_digits_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_digits_run, tmp_path / "run"))


def _reference(run_dir: Path, n: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, labels and PyTorch logits of the run's first ``n`` validation images."""
    import torch

    from edge_tl.data import iter_batches, split_from_run
    from edge_tl.models import Preprocessing, load_run_model

    run = Run.open(run_dir)
    samples = list(split_from_run(run).val)[:n]
    images, labels = zip(*iter_batches(samples, Preprocessing.from_dict(run.get("preprocessing")), 1000))
    model = load_run_model(run)
    with torch.inference_mode():
        logits = model(torch.from_numpy(images[0])).numpy()
    return images[0], labels[0], logits


def _ort_logits(path: Path, images: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # as export's parity
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    feed = images.astype(np.float16) if inp.type == "tensor(float16)" else images
    return np.asarray(session.run(None, {inp.name: feed})[0], dtype=np.float64)


def _onnx_records(run_dir: Path) -> dict:
    return {k: v for k, v in Run.open(run_dir).manifest["artifacts"].items() if v["kind"] == "onnx"}


def test_both_precisions_recorded_with_parity_recomputed_from_the_files(run_dir: Path) -> None:
    said: list[str] = []
    result = export_run(run_dir, config=ExportConfig(parity_images=IMAGES, parity_batch_size=16), progress=said.append)
    assert said == ["exporting timm:test_efficientnet at 16px (opset 17)", f"parity on {IMAGES} validation images"]
    assert result.run_dir == run_dir and result.static_padding_layers == 0
    assert [(m.name, m.precision, m.passed, m.failures) for m in result.models] == [
        ("onnx-fp32", Precision.FP32, True, ()),
        ("onnx-fp16", Precision.FP16, True, ()),
    ]
    assert [m.path for m in result.models] == [
        run_dir / "export" / "model.fp32.onnx",
        run_dir / "export" / "model.fp16.onnx",
    ]
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == ["model.fp16.onnx", "model.fp32.onnx"]

    run = Run.open(run_dir)
    images, labels, torch_logits = _reference(run_dir, IMAGES)
    for name, precision, source in (("onnx-fp32", "fp32", "checkpoint-best"), ("onnx-fp16", "fp16", "onnx-fp32")):
        art = run.artifact(name)
        path = run.artifact_path(name)
        assert (art.kind, art.stage, art.precision, art.path) == (
            "onnx",
            "export",
            precision,
            f"export/model.{precision}.onnx",
        )
        assert art.sha256 == sha256_file(path)
        details = dict(art.details)
        versions = details.pop("tool_versions")
        assert set(versions) == {"edge-tl", "torch", "timm", "onnx", "onnxruntime", "onnxslim"}
        assert details == {
            "input_name": "input",
            "output_name": "logits",
            "input_shape": ["batch", 3, 16, 16],
            "input_dtype": "float32",
            "output_dtype": "float32",
            "opset": 17,
            "dynamic_batch": True,
            "source": source,
            "exporter": "torchscript",
            "simplifier": "onnxslim",
            "static_padding_layers": 0,
            "num_classes": 10,
            "preprocessing": run.get("preprocessing"),
            "ops": graph_op_types(onnx.load(str(path))),
        }
        logits = _ort_logits(path, images)
        diff = np.abs(logits - torch_logits)
        metrics = art.metrics
        assert metrics["parity_num_images"] == IMAGES
        # (FP32 differences are last-bit noise that depends on the batch: same order of magnitude)
        rel = 0.05 if precision == "fp16" else 0.75
        assert metrics["parity_max_abs_diff"] == pytest.approx(diff.max(), rel=rel)
        assert metrics["parity_mean_abs_diff"] == pytest.approx(diff.mean(), rel=rel)
        assert metrics["parity_top1_agreement"] == 1.0
        # top-1 of the exported model on these labelled images, not of another set or runner
        assert metrics["parity_val_top1"] == float((logits.argmax(axis=1) == labels).mean()) > 0.5
        assert (
            metrics["parity_runtime"] == "onnxruntime CPU, basic graph optimizations, vs PyTorch eager FP32 on the CPU"
        )
    fp32, fp16 = run.artifact("onnx-fp32").metrics, run.artifact("onnx-fp16").metrics
    assert 0 < fp32["parity_max_abs_diff"] <= 1e-4 < fp16["parity_max_abs_diff"]
    # FP16 has no element-wise limit: its differences are counted against atol 0, and do not refuse it
    assert fp32["parity_num_outside_tolerance"] == 0 < fp16["parity_num_outside_tolerance"]
    assert fp32["parity_tolerance"] == {"atol": 1e-4, "rtol": 1e-3, "min_agreement": 0.99}
    assert fp16["parity_tolerance"] == {"atol": None, "rtol": 0.0, "min_agreement": 0.98}
    assert 0 < fp32["parity_mean_kl"] < fp16["parity_mean_kl"] < 1e-3


def test_static_batch_fp32_only_and_float16_io(run_dir: Path) -> None:
    result = export_run(
        run_dir,
        config=ExportConfig(
            precisions=(Precision.FP32,), dynamic_batch=False, batch_size=3, parity_images=None, opset=18
        ),
    )
    assert [m.name for m in result.models] == ["onnx-fp32"]
    art = Run.open(run_dir).artifact("onnx-fp32")
    assert (art.details["input_shape"], art.details["dynamic_batch"], art.details["opset"]) == (
        [3, 3, 16, 16],
        False,
        18,
    )
    model = onnx.load(str(run_dir / art.path))
    assert model.opset_import[0].version == 18
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [3, 3, 16, 16]
    # parity_images=None: the whole validation split
    from edge_tl.data import split_from_run

    assert art.metrics["parity_num_images"] == len(split_from_run(Run.open(run_dir)).val) > 300
    assert not (run_dir / "export" / "model.fp16.onnx").exists()

    fp16 = export_run(run_dir, config=ExportConfig(precisions=(Precision.FP16,), fp16_io=True, parity_images=8))
    assert [m.name for m in fp16.models] == ["onnx-fp16"]
    art = Run.open(run_dir).artifact("onnx-fp16")
    assert (art.details["input_dtype"], art.details["output_dtype"]) == ("float16", "float16")
    assert art.details["source"] == "checkpoint-best"  # FP32 was not exported alongside
    assert art.details["input_shape"] == ["batch", 3, 16, 16] and art.metrics["parity_num_images"] == 8


def test_a_refused_fp32_is_named_with_its_numbers_and_the_fp16_is_kept(run_dir: Path) -> None:
    exact = ParityTolerance(atol=0.0, rtol=0.0, min_agreement=0.99)  # FP32 kernels differ in the last bits
    with pytest.raises(ToleranceError) as info:
        export_run(run_dir, config=ExportConfig(parity_images=IMAGES, fp32_tolerance=exact))
    number = r"[0-9.e+-]+"
    assert re.fullmatch(
        rf"export refused onnx-fp32 \(nothing written for it\): "
        rf"onnx-fp32: [1-9][0-9]* logits outside \|diff\| <= 0 \+ 0\*\|ref\| "
        rf"\(max abs diff {number}\) on {IMAGES} images \(max abs diff {number}, mean {number}, agreement 1\.0000\)\. "
        r"Recorded: onnx-fp16\. Check the model for export-unfriendly layers, "
        r"or loosen the tolerance if the difference is expected\.",
        str(info.value),
    ), str(info.value)
    assert set(_onnx_records(run_dir)) == {"onnx-fp16"}
    assert Run.open(run_dir).artifact("onnx-fp16").details["source"] == "checkpoint-best"  # no FP32 was recorded
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == ["model.fp16.onnx"]


def test_both_refused_writes_nothing_and_says_nothing_was_recorded(run_dir: Path) -> None:
    exact = ParityTolerance(atol=0.0, rtol=0.0, min_agreement=0.5)
    with pytest.raises(ToleranceError) as info:
        export_run(run_dir, config=ExportConfig(parity_images=8, fp32_tolerance=exact, fp16_tolerance=exact))
    message = str(info.value)
    assert message.startswith("export refused onnx-fp32, onnx-fp16 (nothing written for it): onnx-fp32: ")
    assert "; onnx-fp16: " in message and " on 8 images " in message
    assert message.endswith("images (max abs diff " + message.split("(max abs diff ")[-1])
    assert "Recorded" not in message and message.endswith("loosen the tolerance if the difference is expected.")
    assert _onnx_records(run_dir) == {}
    assert list((run_dir / "export").iterdir()) == []


def test_a_refused_run_or_checkpoint_names_the_stage_and_the_missing_part(run_dir: Path) -> None:
    from edge_tl.errors import EdgeTLError

    with pytest.raises(EdgeTLError, match="checkpoint-missing"):
        export_run(run_dir, config=ExportConfig(checkpoint="checkpoint-missing", parity_images=4))
    run = Run.open(run_dir)
    for key in ("classes", "preprocessing"):
        manifest = json.loads((run_dir / "manifest.json").read_text())
        saved = manifest.pop(key)
        (run_dir / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(EdgeTLError) as info:
            export_run(run_dir, config=ExportConfig(parity_images=4))
        assert key in str(info.value) and "export" in str(info.value)
        manifest[key] = saved
        (run_dir / "manifest.json").write_text(json.dumps(manifest))
    assert _onnx_records(run_dir) == {} and run.get("classes")


@pytest.mark.parametrize("labelled", [True, False])
def test_an_imported_onnx_model_is_kept_and_its_fp16_is_held_to_it(
    tiny_digits_run: Path, tiny_digits_folder: Path, tmp_path: Path, labelled: bool
) -> None:
    from edge_tl.importers import ImportRequest, PreprocessingOptions, import_model

    source = Path(shutil.copytree(tiny_digits_run, tmp_path / "source"))
    export_run(source, config=ExportConfig(precisions=(Precision.FP32,), parity_images=4))
    prep = Run.open(source).get("preprocessing")
    images = tiny_digits_folder
    request = ImportRequest(
        kind="onnx",
        out=tmp_path / "run",
        onnx=source / "export" / "model.fp32.onnx",
        labels=None,
        **({"val_data": images} if labelled else {"calib_data": images}),
        preprocessing=PreprocessingOptions(img_size=16, mean=tuple(prep["mean"]), std=tuple(prep["std"])),
    )
    if not labelled:
        (tmp_path / "labels.txt").write_text("\n".join(str(d) for d in range(10)) + "\n")
        request = ImportRequest(**{**request.__dict__, "labels": tmp_path / "labels.txt"})
    import_model(request)
    run_dir = tmp_path / "run"
    reference = Run.open(run_dir).artifact("onnx-fp32")

    said: list[str] = []
    assert export_run(run_dir, config=ExportConfig(precisions=(Precision.FP32,)), progress=said.append).models == ()
    assert said == ["onnx-fp32 is the imported ONNX model: kept as it is (opset 17)"]
    assert set(_onnx_records(run_dir)) == {"onnx-fp32"}

    said.clear()
    result = export_run(run_dir, config=ExportConfig(parity_images=20, parity_batch_size=8), progress=said.append)
    assert said == [
        "onnx-fp32 is the imported ONNX model: kept as it is (opset 17)",
        "FP16 parity on 20 validation images",
    ]
    (model,) = result.models
    path = run_dir / "export" / "model.fp16.onnx"
    assert (model.name, model.precision, model.path, model.failures, result.static_padding_layers) == (
        "onnx-fp16",
        Precision.FP16,
        path,
        (),
        0,
    )
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == ["model.fp16.onnx", Path(reference.path).name]
    run = Run.open(run_dir)
    assert run.artifact("onnx-fp32").sha256 == reference.sha256  # kept as it is
    art = run.artifact("onnx-fp16")
    assert (art.kind, art.stage, art.precision, art.path) == ("onnx", "export", "fp16", "export/model.fp16.onnx")
    assert art.sha256 == sha256_file(path)
    details = dict(art.details)
    assert set(details.pop("tool_versions")) == {"edge-tl", "onnx", "onnxruntime"}
    expected = {k: v for k, v in reference.details.items() if k != "tool_versions"}
    assert details == {
        **expected,
        "input_dtype": "float32",
        "output_dtype": "float32",
        "source": "onnx-fp32",
        "ops": graph_op_types(onnx.load(str(path))),
    }
    from edge_tl.data import iter_batches, split_from_run, unlabelled_samples
    from edge_tl.models import Preprocessing

    samples = (list(split_from_run(run).val) if labelled else unlabelled_samples(run, stage="export"))[:20]
    ((batch, labels),) = list(iter_batches(samples, Preprocessing.from_dict(run.get("preprocessing")), 100))
    fp32_logits, fp16_logits = _ort_logits(run_dir / reference.path, batch), _ort_logits(path, batch)
    metrics = art.metrics
    assert metrics["parity_num_images"] == 20 and metrics["parity_top1_agreement"] == 1.0
    assert metrics["parity_max_abs_diff"] == pytest.approx(
        np.abs(fp16_logits - fp32_logits).max(), rel=0.5
    )  # batch-dependent
    assert metrics["parity_tolerance"] == {"atol": None, "rtol": 0.0, "min_agreement": 0.98}
    assert metrics["parity_runtime"] == "onnxruntime CPU, basic graph optimizations, vs the imported ONNX FP32"
    assert metrics["parity_val_top1"] == (float((fp16_logits.argmax(axis=1) == labels).mean()) if labelled else None)

    # held to the FP16 tolerance against the imported model: refused, nothing written
    (run_dir / "export" / "model.fp16.onnx").unlink()
    strict = ParityTolerance(atol=0.0, rtol=0.0, min_agreement=0.5)
    with pytest.raises(ToleranceError) as info:
        export_run(run_dir, config=ExportConfig(parity_images=6, fp16_tolerance=strict))
    assert re.fullmatch(
        r"export refused onnx-fp16 \(nothing written for it\): [1-9][0-9]* logits outside \|diff\| <= 0 \+ 0\*\|ref\| "
        r"\(max abs diff [0-9.e+-]+\) on 6 images against the imported onnx-fp32",
        str(info.value),
    ), str(info.value)
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == [Path(reference.path).name]

    # the imported model changed after import: refused, not converted
    changed = onnx.load(str(run_dir / reference.path))
    changed.doc_string = "edited by hand"
    onnx.save(changed, str(run_dir / reference.path))
    with pytest.raises(
        RunError,
        match="^" + re.escape(f"artifact 'onnx-fp32' at {str(run_dir / reference.path)!r} does not match the sha256"),
    ):
        export_run(run_dir, config=ExportConfig(parity_images=6))
