"""What the float16 floor of Q/DQ scales costs: float16's smallest subnormal (2^-24) vs its smallest normal (2^-14).

The FP16 float part of a Q/DQ model (``edge_tl.quantize.fp16_float``, for strongly typed TensorRT
builds) stores every scale in float16. A scale under 2^-24 would be 0, which TensorRT's parser
refuses; edge-tl raises only those (the source rule: onnx-tensorrt 10.0-GA ``onnxOpImporters.cpp``
needs scale > 0, ModelOpt replaces only values under the smallest subnormal). The stricter floor,
2^-14, also raises the subnormal scales and requantizes their channels to fewer INT8 levels.

Models, each quantized with the ``tensorrt-int8-qdq`` recipe, then given an FP16 float part under
each floor, run with ONNX Runtime on the CPU:

* the quickstart model (digits, efficientnet_lite0 at 32 px, ``--run DIR`` or fine-tuned here):
  top-1 on its validation split, and top-1 agreement with the FP32-float Q/DQ model;
* the bundled EfficientNet-Lite0 with its ImageNet head at 224 px, as ``edge-tl import --imagenet``
  brings it in: no ImageNet validation set offline, so top-1 agreement with the FP32 model and the
  FP32-float Q/DQ model on crops of scikit-image's photographs (as ``int8_cpu.py`` does).

Writes JSON (``--out``) and prints one line per model and floor.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from _digits_run import quickstart_run
from int8_cpu import lite0_imagenet_onnx, photo_crops, quantize_with_recipe

FLOORS = {"smallest_subnormal_2^-24": 2.0**-24, "smallest_normal_2^-14": 2.0**-14}


def fp16_variants(qdq: Any) -> dict[str, tuple[Any, dict[str, Any]]]:
    """The FP16 float part of ``qdq`` under each floor, with what the floor changed."""
    from onnx import ModelProto, numpy_helper

    from edge_tl.quantize.fp16_float import float_part_to_fp16, raise_small_scales

    out = {}
    for name, floor in FLOORS.items():
        model = ModelProto()
        model.CopyFrom(qdq)
        raised = raise_small_scales(model, floor=floor)
        inits = {i.name: i for i in model.graph.initializer}
        # INT8 levels left in the weight channels whose scale was raised (max |q| after requantization)
        levels = []
        for node in model.graph.node:
            if node.op_type == "DequantizeLinear" and node.input[1] in raised and node.input[0] in inits:
                q = numpy_helper.to_array(inits[node.input[0]]).astype(np.int32)
                scale = numpy_helper.to_array(inits[node.input[1]])
                per_channel = np.abs(q).reshape(q.shape[0], -1).max(axis=1) if scale.ndim else np.abs(q).max()[None]
                small = (scale <= floor).reshape(-1) if scale.ndim else np.array([True])
                levels += per_channel[small].tolist()
        half, _ = float_part_to_fp16(model)
        out[name] = (
            half,
            {
                "scale_entries_raised": int(sum(raised.values())),
                "scale_tensors_touched": len(raised),
                "raised_weight_channels_max_abs_int8": {
                    "median": float(np.median(levels)) if levels else None,
                    "max": int(max(levels)) if levels else None,
                },
            },
        )
    return out


def logits_of(model: Any, images: np.ndarray, batch: int = 32) -> np.ndarray:
    from edge_tl.runtime.base import RunnerOptions
    from edge_tl.runtime.onnxruntime_runner import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(model.SerializeToString(), name="m", options=RunnerOptions(threads=2))
    with runner:
        return np.concatenate([runner.run(images[i : i + batch]) for i in range(0, len(images), batch)])


def compare(variants: dict[str, tuple[Any, dict[str, Any]]], qdq_logits: np.ndarray, images: np.ndarray, **refs: Any):
    rows = {}
    for name, (model, changed) in variants.items():
        logits = logits_of(model, images)
        row = dict(changed)
        row["top1_agreement_with_fp32_float_qdq"] = float((logits.argmax(1) == qdq_logits.argmax(1)).mean())
        row["max_abs_logit_diff_to_fp32_float_qdq"] = float(np.abs(logits - qdq_logits).max())
        for ref_name, ref in refs.items():
            if ref_name == "labels":
                row["top1"] = float((logits.argmax(1) == ref).mean())
            else:
                row[f"top1_agreement_with_{ref_name}"] = float((logits.argmax(1) == ref.argmax(1)).mean())
        rows[name] = row
    return rows


def bench_quickstart(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import onnx

    from edge_tl.data import iter_batches, split_from_run
    from edge_tl.models import Preprocessing
    from edge_tl.quantize import QuantizeConfig, quantize_run
    from edge_tl.runs import Run

    root = quickstart_run(work, args.run)
    result = quantize_run(root, config=QuantizeConfig(recipe="tensorrt-int8-qdq", calib_samples=args.calib_samples))
    run = Run.open(root)
    prep = Preprocessing.from_dict(run.require("preprocessing"))
    val = list(split_from_run(run).val)
    images, labels = zip(*[(x, y) for x, y in iter_batches(val, prep, 64)])
    images, labels = np.concatenate(images), np.concatenate(labels)
    qdq = onnx.load(str(result.model_path))
    qdq_logits = logits_of(qdq, images)
    fp32 = logits_of(onnx.load(str(run.artifact_path("onnx-fp32"))), images)
    return {
        "model": "quickstart digits run (efficientnet_lite0 at 32 px), tensorrt-int8-qdq",
        "validation_images": len(images),
        "fp32_top1": float((fp32.argmax(1) == labels).mean()),
        "fp32_float_qdq_top1": float((qdq_logits.argmax(1) == labels).mean()),
        "floors": compare(fp16_variants(qdq), qdq_logits, images, labels=labels, fp32=fp32),
    }


def bench_lite0(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from edge_tl.data import preprocess
    from edge_tl.models import get_backbone

    prep = get_backbone("efficientnet_lite0").preprocessing
    fp32_model = lite0_imagenet_onnx(work / "lite0.fp32.onnx")
    calib = np.stack([preprocess(c, prep) for c in photo_crops(args.calib_images, seed=1)])
    images = np.stack([preprocess(c, prep) for c in photo_crops(args.eval_images, seed=2)])

    def batches() -> Iterator[np.ndarray]:
        for start in range(0, len(calib), 16):
            yield calib[start : start + 16]

    qdq = quantize_with_recipe(fp32_model, "tensorrt-int8-qdq", batches)
    qdq_logits = logits_of(qdq, images)
    fp32 = logits_of(fp32_model, images)
    return {
        "model": "bundled efficientnet_lite0, ImageNet head, 224 px (edge-tl import --imagenet), tensorrt-int8-qdq",
        "accuracy_note": "no ImageNet validation offline: top-1 agreement on crops of scikit-image photographs",
        "eval_images": len(images),
        "fp32_float_qdq_top1_agreement_with_fp32": float((qdq_logits.argmax(1) == fp32.argmax(1)).mean()),
        "floors": compare(fp16_variants(qdq), qdq_logits, images, fp32=fp32),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fp16_scale_floor.json")
    parser.add_argument("--run", type=Path, default=None, help="a quickstart run directory (default: fine-tune one)")
    parser.add_argument("--calib-samples", type=int, default=512)
    parser.add_argument("--calib-images", type=int, default=64, help="lite0-224 calibration crops")
    parser.add_argument("--eval-images", type=int, default=200, help="lite0-224 agreement crops")
    parser.add_argument("--skip", choices=("lite0", "quickstart"), action="append", default=[])
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="etl-fp16-floor-") as tmp:
        for name, bench in (("quickstart", bench_quickstart), ("lite0", bench_lite0)):
            if name in args.skip:
                continue
            results[name] = bench(Path(tmp), args)
            for floor, row in results[name]["floors"].items():
                print(f"{name} {floor}: {json.dumps(row)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
