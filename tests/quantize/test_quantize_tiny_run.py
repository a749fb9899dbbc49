"""quantize_run on a tiny trained run (seconds each): what it writes, records and refuses.

The accuracy it records is recomputed here from the written files (ONNX Runtime) and the
run's model (PyTorch); the float layers it chose are read back from the written graph.
The search's choice on given numbers is pinned in test_quantize_search.py; the larger
model's budget in test_quantize_budget.py.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from edge_tl.errors import ConfigError, DataError, ToleranceError  # noqa: E402
from edge_tl.quantize import (  # noqa: E402
    QuantizeConfig,
    api,
    quantize_run,
)
from edge_tl.quantize.api import Attempt, QuantPrecision  # noqa: E402
from edge_tl.quantize.qdq_tensorrt import check_tensorrt_qdq  # noqa: E402
from edge_tl.quantize.recipes import CalibMethod  # noqa: E402
from edge_tl.quantize.trt_cache import read_cache, target_cache_version  # noqa: E402
from edge_tl.runs import Run, sha256_file  # noqa: E402
from edge_tl.verify.metrics import mean_kl  # noqa: E402

# The shipped recipes as installed (the package data edge_tl.recipes), wherever the tests run from.
SHIPPED = resources.files("edge_tl.recipes")
# Entropy calibration of every tensor (the cache recipe's) takes long; the cache is written the same way.
MINMAX = CalibMethod.MINMAX
FAST = {"calib_samples": 32, "latency_iterations": 2, "threads": 1, "eval_batch_size": 128}


@pytest.fixture(scope="session")
def tiny_exported(tiny_digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_digits_run`` plus ``onnx-fp32``: copy it before writing into it."""
    from edge_tl.export import ExportConfig, Precision, export_run

    root = Path(shutil.copytree(tiny_digits_run, tmp_path_factory.mktemp("tiny-quantize") / "run"))
    export_run(root, config=ExportConfig(precisions=(Precision.FP32,), parity_images=16))
    return root


@pytest.fixture()
def run_dir(tiny_exported: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_exported, tmp_path / "run"))


@pytest.fixture()
def harsh_recipe(tmp_path: Path) -> Path:
    """TensorRT placement with activations clipped at the 90th percentile: the tiny model loses
    about 20 top-1 points, and floating its most sensitive layers wins some back."""
    text = (SHIPPED / "tensorrt-int8-qdq.toml").read_text()
    assert 'name = "tensorrt-int8-qdq"' in text and "percentile = 99.99" in text
    path = tmp_path / "harsh.toml"
    path.write_text(
        text.replace('name = "tensorrt-int8-qdq"', 'name = "harsh"').replace("percentile = 99.99", "percentile = 90.0")
    )
    return path


def _val(run_dir: Path):
    from edge_tl.data import iter_batches, split_from_run
    from edge_tl.models import Preprocessing

    run = Run.open(run_dir)
    samples = list(split_from_run(run).val)
    images, labels = zip(*iter_batches(samples, Preprocessing.from_dict(run.get("preprocessing")), 10_000))
    return images[0], labels[0]


def _onnx_top1(path: Path, run_dir: Path) -> float:
    from edge_tl.runtime.onnxruntime_runner import has_fp16_qdq

    images, labels = _val(run_dir)
    # A Q/DQ graph with float16 scales runs as written, as quantize runs it: ONNX Runtime's graph
    # rewrites compute such graphs differently on the CPU (see has_fp16_qdq).
    options = ort.SessionOptions()
    if has_fp16_qdq(str(path)):
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: images})[0]
    return float((logits.argmax(axis=1) == labels).mean())


def _torch_top1(run_dir: Path) -> float:
    import torch

    from edge_tl.models import load_run_model

    images, labels = _val(run_dir)
    with torch.inference_mode():
        logits = load_run_model(Run.open(run_dir))(torch.from_numpy(images)).numpy()
    return float((logits.argmax(axis=1) == labels).mean())


def _ops(model) -> dict[str, int]:
    types = [n.op_type for n in model.graph.node]
    return {op: types.count(op) for op in sorted(set(types))}


def test_int8_without_a_budget_records_the_model_its_accuracy_and_its_calibration(run_dir: Path) -> None:
    from edge_tl.quantize import graph, qdq_onnxruntime
    from edge_tl.quantize.recipes import load_recipe

    said: list[str] = []
    result = quantize_run(run_dir, config=QuantizeConfig(**FAST), progress=said.append)
    run = Run.open(run_dir)
    fp32 = onnx.load(str(run.artifact_path("onnx-fp32")))
    recipe = load_recipe("onnxruntime-cpu-int8")
    images, _ = _val(run_dir)
    n_val = images.shape[0]
    assert said == [
        f"calibrating {len(graph.float_activations(fp32))} tensors on 32 images ({recipe.calibration.method.value})",
        f"measuring the original model and INT8 on {n_val} validation images",
    ]

    out = run_dir / "quantize" / "onnxruntime-cpu-int8"
    assert result.artifacts == ("onnx-int8-onnxruntime-cpu-int8", "calib-table-onnxruntime-cpu-int8")
    assert (result.run_dir, result.recipe, result.precision) == (
        run_dir.resolve(),
        "onnxruntime-cpu-int8",
        QuantPrecision.INT8,
    )
    assert (result.model_path, result.table_path, result.cache_path) == (
        out / "model.int8.onnx",
        out / "calibration_table.json",
        None,
    )
    reference, top1 = _torch_top1(run_dir), _onnx_top1(out / "model.int8.onnx", run_dir)
    assert result.reference_top1 == reference > 0.9 and result.top1 == top1 > 0.9
    assert result.drop_points == pytest.approx((reference - top1) * 100)
    assert (result.budget_points, result.budget_met, result.float_layers, result.sensitivity) == (None, None, (), ())
    assert result.attempts == (Attempt((), top1, result.drop_points),) and result.notes == ()
    assert set(result.latency_p50_ms) == {"fp32", "int8_all_layers", "int8_final"}
    assert all(v > 0 for v in result.latency_p50_ms.values())
    assert (
        result.latency_p50_ms["int8_final"] == result.latency_p50_ms["int8_all_layers"]
    )  # the same model: measured once

    record = run.artifact("onnx-int8-onnxruntime-cpu-int8")
    written = onnx.load(str(run.artifact_path(record.name)))
    assert (record.kind, record.stage, record.precision, record.path) == (
        "onnx",
        "quantize",
        "int8",
        "quantize/onnxruntime-cpu-int8/model.int8.onnx",
    )
    details = dict(record.details)
    assert set(details.pop("tool_versions")) >= {"onnx", "onnxruntime"}
    source = dict(run.artifact("onnx-fp32").details)
    source.pop("tool_versions")
    calibration = {
        "method": recipe.calibration.method.value,
        "percentile": None,
        "num_bins": recipe.calibration.num_bins,
        "num_samples": 32,
        "requested_samples": 32,
        "data": "run training split",
        "seed": 0,
    }
    assert details == {
        **source,
        "source": "onnx-fp32",
        "recipe": recipe.to_dict(),
        "calibration": calibration,
        "quantized_layers": len(qdq_onnxruntime.quantizable_layers(fp32, recipe)[0]),
        "float_layers": [],
        "status": "no-budget",
        "ops": _ops(written),
    }
    assert details["ops"]["QuantizeLinear"] > 0
    latency = record.metrics.pop("latency_p50_ms_onnxruntime_cpu_b1")
    assert latency == result.latency_p50_ms
    assert record.metrics == {
        "val_top1": top1,
        "reference_top1": reference,
        "accuracy_drop_points": result.drop_points,
        "max_accuracy_drop_points": None,
        "max_class_drop_points": None,
        "accuracy_budget_met": None,
        "num_val_images": n_val,
        "attempts": [{"float_layers": [], "top1": top1, "drop_points": result.drop_points}],
        "sensitivity": [],
        "latency_cost_of_float_layers": 1.0,
        "latency_batch": 1,  # a dynamic-batch model is timed at batch 1
    }

    table = json.loads((out / "calibration_table.json").read_text())
    assert table.pop("created")
    tensors = table.pop("tensors")
    assert table == {
        "format": "edge-tl-calibration-table",
        "version": 1,
        "recipe": "onnxruntime-cpu-int8",
        "model": "export/model.fp32.onnx",
        "model_sha256": sha256_file(run_dir / "export" / "model.fp32.onnx"),
        "calibration": calibration,
    }
    assert set(tensors) == set(graph.float_activations(fp32)) and all(t["amax"] > 0 for t in tensors.values())
    table_record = run.artifact("calib-table-onnxruntime-cpu-int8")
    assert (table_record.kind, table_record.stage, table_record.path) == (
        "calibration-table",
        "quantize",
        "quantize/onnxruntime-cpu-int8/calibration_table.json",
    )
    assert table_record.details == {
        "recipe": "onnxruntime-cpu-int8",
        "source": "onnx-fp32",
        "calibration": calibration,
        "num_tensors": len(tensors),
    }


def test_budget_met_after_floating_the_most_sensitive_layers(run_dir: Path, harsh_recipe: Path) -> None:
    said: list[str] = []
    budget = 15.0  # all INT8 drops about 20 pt; one layer in float about 14
    result = quantize_run(
        run_dir,
        config=QuantizeConfig(
            recipe=str(harsh_recipe), max_accuracy_drop=budget, max_float_layers=3, sensitivity_images=8, **FAST
        ),
        progress=said.append,
    )
    first, *rest = result.attempts
    assert first.float_layers == () and first.drop_points > budget and rest
    assert all(a.drop_points > budget for a in result.attempts[:-1]) and result.attempts[-1].drop_points <= budget
    assert result.budget_met is True and result.budget_points == budget
    ranked = [name for name, _ in result.sensitivity]
    k = len(result.float_layers)
    assert list(result.float_layers) == ranked[:k] and [a.float_layers for a in rest] == [
        tuple(ranked[:i]) for i in range(1, k + 1)
    ]
    scores = [score for _, score in result.sensitivity]
    assert scores == sorted(scores) and scores[0] > 0 and len(scores) == len(set(scores))
    assert said[2:4] == [
        f"drop {first.drop_points:.2f} pt > budget 15.00 pt",
        f"ranking {len(ranked)} layers by sensitivity",
    ]
    assert "measuring the original model and INT8 on" in said[1] and said[4].startswith("  1 float layer(s) (")

    run = Run.open(run_dir)
    path = run.artifact_path("onnx-int8-harsh")
    assert path == result.model_path
    written = onnx.load(str(path))
    assert check_tensorrt_qdq(written, float_layers=result.float_layers) == []  # exactly the chosen layers in float
    assert _onnx_top1(path, run_dir) == result.top1 == result.attempts[-1].top1
    assert result.top1 == pytest.approx(result.reference_top1 - result.drop_points / 100)
    record = run.artifact("onnx-int8-harsh")
    assert record.details["status"] == "passing" and record.details["float_layers"] == list(result.float_layers)
    assert record.details["quantized_layers"] == len(ranked) - k
    assert record.metrics["attempts"] == [a.to_dict() for a in result.attempts]
    assert record.metrics["sensitivity"] == [{"layer": n, "kl_with_layer_in_float": s} for n, s in result.sensitivity]
    assert (record.metrics["accuracy_budget_met"], record.metrics["max_accuracy_drop_points"]) == (True, budget)
    latency = record.metrics["latency_p50_ms_onnxruntime_cpu_b1"]
    assert record.metrics["latency_cost_of_float_layers"] == latency["int8_final"] / latency["int8_all_layers"] != 1.0

    # The FP16-float-part variant for strongly typed builds (no --target: TensorRT 11 may build it).
    assert result.artifacts == ("onnx-int8-harsh", "onnx-int8-harsh-fp16", "calib-table-harsh")
    variant = run.artifact("onnx-int8-harsh-fp16")
    variant_path = run.artifact_path(variant.name)
    assert variant.path == "quantize/harsh/model.int8.fp16.onnx" and variant.precision == "int8"
    top1 = _onnx_top1(variant_path, run_dir)
    assert variant.metrics == {
        "val_top1": top1,
        "reference_top1": result.reference_top1,
        "accuracy_drop_points": pytest.approx((result.reference_top1 - top1) * 100),
        "num_val_images": _val(run_dir)[0].shape[0],
        "accuracy_budget_met": (result.reference_top1 - top1) * 100 <= budget,
    }
    from edge_tl.quantize.fp16_float import FP16_OPSET

    details = dict(variant.details)
    kept, raised = details.pop("kept_fp32"), details.pop("scales_raised_to_fp16_min")
    assert set(kept) >= {"input", "logits"} and isinstance(raised, dict)  # float32 graph I/O kept
    assert details == {
        **record.details,
        "source": "onnx-int8-harsh",
        "opset": FP16_OPSET,
        "float_part": "float16",
        "onnxruntime_graph_optimization": "disabled (see runtime.onnxruntime_runner.has_fp16_qdq)",
        "for": "strongly typed TensorRT builds (11.x): layers outside Q/DQ pairs run FP16",
        "ops": _ops(onnx.load(str(variant_path))),
    }
    assert (
        said[-1] == f"FP16 float part for strongly typed TensorRT: top-1 {top1:.4f} "
        f"(drop {(result.reference_top1 - top1) * 100:.2f} pt)"
    )


def test_budget_not_met_keeps_the_best_attempt_labelled_failing(run_dir: Path, harsh_recipe: Path) -> None:
    said: list[str] = []
    with pytest.raises(ToleranceError) as info:
        quantize_run(
            run_dir,
            config=QuantizeConfig(
                recipe=str(harsh_recipe),
                max_accuracy_drop=0.0,
                max_float_layers=2,
                sensitivity_images=8,
                target="jetson-orin-nano-8gb",
                **FAST,
            ),
            progress=said.append,
        )
    run = Run.open(run_dir)
    record = run.artifact("onnx-int8-harsh")
    attempts = [Attempt(tuple(a["float_layers"]), a["top1"], a["drop_points"]) for a in record.metrics["attempts"]]
    assert len(attempts) == 3 and all(a.drop_points > 0 for a in attempts)
    best = min(attempts, key=lambda a: a.drop_points)
    assert record.details["status"] == "failing" and record.metrics["accuracy_budget_met"] is False
    assert record.details["float_layers"] == list(best.float_layers)
    assert (record.metrics["val_top1"], record.metrics["accuracy_drop_points"]) == (best.top1, best.drop_points)
    path = run.artifact_path("onnx-int8-harsh")
    assert check_tensorrt_qdq(onnx.load(str(path)), float_layers=best.float_layers) == []
    assert _onnx_top1(path, run_dir) == best.top1
    reference = record.metrics["reference_top1"]
    assert str(info.value) == (
        f"INT8 (harsh) could not meet --max-accuracy-drop 0 pt: "
        f"the best of 3 attempts drops {best.drop_points:.2f} pt (top-1 {best.top1:.4f} vs {reference:.4f}) "
        f"with {len(best.float_layers)} layer(s) in float after trying up to 2. "
        f"It is kept at {str(path)!r}, recorded as 'onnx-int8-harsh' with status 'failing'. "
        "Try more calibration images, "
        "another --calib-method, a larger --max-float-layers, or FP16."
    )
    # A TensorRT 10 target builds the FP32 Q/DQ model weakly typed: no FP16-float-part variant.
    assert (
        not run.has_artifact("onnx-int8-harsh-fp16")
        and not (run_dir / "quantize" / "harsh" / "model.int8.fp16.onnx").exists()
    )
    assert said[2] == f"drop {attempts[0].drop_points:.2f} pt > budget 0.00 pt"


def test_a_cache_recipe_writes_the_cache_for_the_targets_tensorrt(run_dir: Path) -> None:
    from edge_tl.quantize.recipes import load_recipe

    recipe = load_recipe("tensorrt-int8-cache")
    result = quantize_run(
        run_dir,
        config=QuantizeConfig(
            recipe="tensorrt-int8-cache", target="jetson-orin-nano-8gb", tensorrt="8.6.2", calib_method=MINMAX, **FAST
        ),
    )
    out = run_dir.resolve() / "quantize" / "tensorrt-int8-cache"
    assert result.artifacts == ("calib-cache-tensorrt-int8-cache", "calib-table-tensorrt-int8-cache")
    assert (result.cache_path, result.table_path, result.model_path) == (
        out / "calibration.cache",
        out / "calibration_table.json",
        None,
    )
    assert result.notes == (
        "implicit quantization: accuracy is measured on the engine TensorRT builds from this cache",
    )
    assert (result.recipe, result.precision, result.top1, result.attempts) == (
        "tensorrt-int8-cache",
        QuantPrecision.INT8,
        None,
        (),
    )
    run = Run.open(run_dir)
    cache = read_cache(run.artifact_path("calib-cache-tensorrt-int8-cache"))
    assert (cache.version, cache.algorithm) == (8602, "EntropyCalibration2")
    table = json.loads((out / "calibration_table.json").read_text())
    assert list(cache.scales) == list(table["tensors"])
    for name, entry in table["tensors"].items():
        assert cache.amax(name) == pytest.approx(entry["amax"], rel=1e-6)
    record = run.artifact("calib-cache-tensorrt-int8-cache")
    assert (record.kind, record.stage, record.precision, record.path) == (
        "calibration-cache",
        "quantize",
        "int8",
        "quantize/tensorrt-int8-cache/calibration.cache",
    )
    assert record.details == {
        "recipe": recipe.to_dict(),
        "source": "onnx-fp32",
        "calibration": table["calibration"],
        "header": "TRT-8602-EntropyCalibration2",
        "num_tensors": len(cache.scales),
        "cache_version_from": "target jetson-orin-nano-8gb",
        "note": "use with the onnx-fp32 artifact; TensorRT 8.5-10.x implicit quantization reads it "
        "(trtexec --int8 --calib=FILE); its accuracy is measured on the built engine",
    }
    # --cache-version wins over the target's; without either, the recipe's.
    quantize_run(
        run_dir,
        config=QuantizeConfig(
            recipe="tensorrt-int8-cache",
            target="jetson-orin-nano-8gb",
            cache_version=100300,
            calib_method=MINMAX,
            **FAST,
        ),
    )
    record = Run.open(run_dir).artifact("calib-cache-tensorrt-int8-cache")
    assert (record.details["header"], record.details["cache_version_from"]) == (
        "TRT-100300-EntropyCalibration2",
        "--cache-version",
    )
    quantize_run(run_dir, config=QuantizeConfig(recipe="tensorrt-int8-cache", calib_method=MINMAX, **FAST))
    record = Run.open(run_dir).artifact("calib-cache-tensorrt-int8-cache")
    assert (record.details["header"], record.details["cache_version_from"]) == (
        "TRT-8502-EntropyCalibration2",
        "recipe",
    )
    assert read_cache(Run.open(run_dir).artifact_path(record.name)).version == 8502
    # --seed picks other calibration images (32 of the training split): other ranges
    seeded = quantize_run(
        run_dir, config=QuantizeConfig(recipe="tensorrt-int8-cache", calib_method=MINMAX, seed=1, **FAST)
    )
    assert json.loads(seeded.table_path.read_text())["calibration"]["seed"] == 1
    assert read_cache(seeded.cache_path).scales != cache.scales


def test_a_tensorrt_11_target_is_refused_a_cache_before_any_work(run_dir: Path) -> None:
    before = (run_dir / "manifest.json").read_text()
    with pytest.raises(ConfigError) as info:
        quantize_run(run_dir, config=QuantizeConfig(recipe="tensorrt-int8-cache", target="jetson-agx-thor", **FAST))
    assert str(info.value) == (
        "target 'jetson-agx-thor' builds with TensorRT 11.4.1, which cannot read a calibration cache (calibrators were "
        "removed in TensorRT 11): use --recipe tensorrt-int8-qdq, or a TensorRT 10 release of the target (--tensorrt)"
    )
    assert (run_dir / "manifest.json").read_text() == before and not (run_dir / "quantize").exists()
    # that target's TensorRT 10 release reads one
    assert target_cache_version("jetson-agx-thor", "10.13.3") == 101303
    assert target_cache_version(None) is None


def test_fp16_comes_from_export_and_is_made_once(run_dir: Path) -> None:
    said: list[str] = []
    result = quantize_run(run_dir, config=QuantizeConfig(precision=QuantPrecision.FP16), progress=said.append)
    path = run_dir.resolve() / "export" / "model.fp16.onnx"
    assert (result.recipe, result.precision, result.artifacts, result.model_path, result.notes) == (
        "fp16",
        QuantPrecision.FP16,
        ("onnx-fp16",),
        path,
        (),
    )
    n_val = _val(run_dir)[0].shape[0]  # export's default parity set (up to 1000 images): all of them
    assert said == [
        "producing onnx-fp16 with export's FP16 conversion and parity check",
        "exporting timm:test_efficientnet at 16px (opset 17)",
        f"parity on {n_val} validation images",
    ]
    record = Run.open(run_dir).artifact("onnx-fp16")
    assert record.stage == "export" and record.metrics["parity_top1_agreement"] >= 0.98
    sha = record.sha256
    said.clear()
    again = quantize_run(run_dir, config=QuantizeConfig(precision=QuantPrecision.FP16), progress=said.append)
    assert said == ["onnx-fp16 already exists (made by export); nothing to do"]
    assert (again.recipe, again.precision, again.artifacts, again.model_path, again.notes) == (
        "fp16",
        QuantPrecision.FP16,
        ("onnx-fp16",),
        path,
        ("already produced by export",),
    )
    assert Run.open(run_dir).artifact("onnx-fp16").sha256 == sha


def test_an_imported_onnx_run_is_judged_against_its_onnx_model(
    tiny_exported: Path, tiny_digits_folder: Path, tmp_path: Path
) -> None:
    from edge_tl.importers import ImportRequest, PreprocessingOptions, import_model

    prep = Run.open(tiny_exported).get("preprocessing")
    options = PreprocessingOptions(img_size=16, mean=tuple(prep["mean"]), std=tuple(prep["std"]))
    import_model(
        ImportRequest(
            kind="onnx",
            out=tmp_path / "run",
            onnx=tiny_exported / "export" / "model.fp32.onnx",
            val_data=tiny_digits_folder,
            calib_data=tiny_digits_folder,
            preprocessing=options,
        )
    )
    run_dir = tmp_path / "run"
    result = quantize_run(run_dir, config=QuantizeConfig(**FAST))
    # the reference is the imported ONNX model on the imported validation images
    assert result.reference_top1 == _onnx_top1(run_dir / Run.open(run_dir).artifact("onnx-fp32").path, run_dir)
    assert result.top1 == _onnx_top1(result.model_path, run_dir)
    assert Run.open(run_dir).artifact("onnx-int8-onnxruntime-cpu-int8").metrics["num_val_images"] == 30
    # calibrated on the folder given at import, and recorded so
    assert (
        json.loads(result.table_path.read_text())["calibration"]["data"]
        == Run.open(run_dir).get("data")["calib_source"]
    )
    assert Path(Run.open(run_dir).get("data")["calib_source"]).resolve() == tiny_digits_folder.resolve()

    # imported without labelled images: INT8 accuracy cannot be measured, and is not made up
    import_model(
        ImportRequest(
            kind="onnx",
            out=tmp_path / "unlabelled",
            onnx=tiny_exported / "export" / "model.fp32.onnx",
            calib_data=tiny_digits_folder,
            labels=_labels(tmp_path),
            preprocessing=options,
        )
    )
    with pytest.raises(DataError) as info:
        quantize_run(tmp_path / "unlabelled", config=QuantizeConfig(**FAST))
    assert str(info.value) == (
        f"run {str((tmp_path / 'unlabelled').resolve())!r} has no validation images; INT8 accuracy is "
        "measured on them (for an imported run: import again with --val-data DIR)"
    )
    assert not Run.open(tmp_path / "unlabelled").has_artifact("onnx-int8-onnxruntime-cpu-int8")


def _labels(tmp_path: Path) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text("".join(f"{d}\n" for d in range(10)))
    return path


# --------------------------------------------------------------------------- the helpers, on small graphs


def _scale_model(batch: int | str, factor: float = 2.0):
    """y = factor * x for x of shape (batch, 3, 1, 1): a graph with a fixed or a free batch."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 1, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3, 1, 1])
    k = helper.make_tensor("k", TensorProto.FLOAT, [], [factor])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "scale", [x], [y], [k])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_logits_runs_a_fixed_batch_model_in_padded_chunks() -> None:
    # quantize runs its in-memory candidates with the ONNX Runtime runner, from bytes
    images = np.arange(30, dtype=np.float32).reshape(10, 3, 1, 1)
    with api._runner(_scale_model(4), None) as fixed:
        out = fixed.run(images)
        assert out.dtype == np.float32 and out.shape == (10, 3, 1, 1)
        np.testing.assert_array_equal(out, images * 2)  # 4 + 4 + 2 (padded, then cut)
        np.testing.assert_array_equal(fixed.run(images[:4]), images[:4] * 2)
        assert fixed.input_spec.batch == 4
    with api._runner(_scale_model("batch"), None) as free:
        np.testing.assert_array_equal(free.run(images), images * 2)
        assert free.input_spec.batch is None


def test_session_threads_and_latency() -> None:
    with api._runner(_scale_model("batch"), threads=1) as runner:
        options = runner._session.get_session_options()
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
        assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        assert runner.providers == ["CPUExecutionProvider"]  # the CPU, whatever providers this onnxruntime has
    with api._runner(_scale_model("batch"), None) as default:
        assert default._session.get_session_options().intra_op_num_threads == 0  # the library default
    p50 = api._p50_ms(_scale_model("batch"), 7, 1)
    assert isinstance(p50, float) and 0 < p50 < 1000


def test_kl_is_from_the_reference_to_the_candidate_per_image_averaged() -> None:
    reference = np.log(np.array([[0.5, 0.5], [0.9, 0.1]]))
    candidate = np.log(np.array([[0.9, 0.1], [0.9, 0.1]]))
    kl_first = 0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1)
    assert mean_kl(reference, candidate) == pytest.approx(kl_first / 2, rel=1e-12)
    assert mean_kl(reference + 7.0, candidate - 3.0) == pytest.approx(
        kl_first / 2, rel=1e-12
    )  # logits, not probabilities
    assert mean_kl(candidate, reference) != pytest.approx(mean_kl(reference, candidate))
    big = np.array([[1000.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    assert mean_kl(big, big) == 0.0  # no overflow on large logits, each image shifted by its own maximum


def test_attempt_record() -> None:
    assert Attempt(("a", "b"), 0.5, 1.25).to_dict() == {"float_layers": ["a", "b"], "top1": 0.5, "drop_points": 1.25}


def test_the_fp16_float_part_variant_is_made_for_strongly_typed_tensorrt_only() -> None:
    # TensorRT 11 builds strongly typed only; 8.x/10.x build the FP32 Q/DQ model with --int8 --fp16
    assert api._builds_strongly_typed(QuantizeConfig()) is True  # no target: TensorRT 11 may build it
    assert api._builds_strongly_typed(QuantizeConfig(target="jetson-agx-thor")) is True  # default 11.4.1
    assert api._builds_strongly_typed(QuantizeConfig(target="jetson-agx-thor", tensorrt="10.13.3")) is False
    assert api._builds_strongly_typed(QuantizeConfig(target="jetson-orin-nano-8gb")) is False  # 10.3.0
