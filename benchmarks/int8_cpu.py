"""INT8 on the CPU: ONNX Runtime FP32 vs each INT8 recipe, batch 1, p50 ratios in one run.

Models:

* ``efficientnet_lite0`` at 224 with its ImageNet weights (bundled, offline). There is
  no ImageNet validation set offline, so its "top-1 drop" is reported as top-1
  *agreement with FP32* on crops of scikit-image's sample photographs (calibration
  uses other crops of the same photographs) - labelled as such in the JSON.
* the quickstart model: a digits run (``--run DIR`` with an ``onnx-fp32`` artifact, or
  one fine-tuned here with the shared test settings). Its INT8 models come from
  ``quantize_run`` itself, so the top-1 drop is the real one on the run's validation
  split against the original PyTorch model.

Peer: onnxruntime's ``quantize_static`` with its default settings (QDQ, S8S8,
per-tensor weights, MinMax) on the same calibration images.

Latency: one ``InferenceSession`` per model (ORT_ENABLE_ALL, ``--threads`` intra-op
threads, 1 inter-op), batch 1, the models timed in interleaved rounds so that load
changes on a shared machine hit all of them alike; p50 over all rounds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from _digits_run import quickstart_run

RECIPES = ("onnxruntime-cpu-int8", "tensorrt-int8-qdq")
PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)


# --------------------------------------------------------------------------- timing


def session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def p50_interleaved(
    paths: dict[str, Path], shape: tuple[int, ...], *, threads: int, rounds: int, per_round: int
) -> dict[str, float]:
    sessions = {name: session(p, threads) for name, p in paths.items()}
    x = np.random.default_rng(0).standard_normal((1, *shape[1:]), dtype=np.float32)
    times: dict[str, list[float]] = {name: [] for name in paths}
    for s in sessions.values():
        for _ in range(10):
            s.run(None, {"input": x})
    for _ in range(rounds):
        for name, s in sessions.items():
            for _ in range(per_round):
                start = time.perf_counter_ns()
                s.run(None, {"input": x})
                times[name].append((time.perf_counter_ns() - start) / 1e6)
    return {name: float(np.median(t)) for name, t in times.items()}


# --------------------------------------------------------------------------- lite0 at 224 (ImageNet weights)


def photo_crops(count: int, seed: int, size: int = 224) -> list[Any]:
    """Random crops (scale 0.3-1, any position, random flips) of the bundled sample photographs."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = []
    for name in PHOTOS:
        try:
            array = getattr(skimage.data, name)()
        except Exception:  # noqa: BLE001 - a photo that needs a download is skipped
            continue
        photos.append(Image.fromarray(array).convert("RGB"))
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        side = int(min(w, h) * rng.uniform(0.3, 1.0))
        left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = photo.crop((left, top, left + side, top + side))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crops.append(crop)
    return crops


def lite0_imagenet_onnx(path: Path) -> Any:
    import timm
    import torch

    from edge_tl.export.onnx_export import export_torch_to_onnx
    from edge_tl.export.static_padding import make_same_padding_static
    from edge_tl.models.registry import bundled_lite0_weights_path, map_by_position

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(bundled_lite0_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(map_by_position(state, model.state_dict()))
    model.eval()
    make_same_padding_static(model, 224)
    return export_torch_to_onnx(model, path, input_size=224)


def quantize_with_recipe(model: Any, recipe_name: str, batches: Callable[[], Iterator[np.ndarray]]) -> Any:
    """The library's calibrate + write steps for a model that is not in a run."""
    from edge_tl.quantize import (
        calibrate,
        graph,
        load_recipe,
        qdq_onnxruntime,
        qdq_tensorrt,
    )
    from edge_tl.quantize.recipes import CalibMethod, OutputFormat

    recipe = load_recipe(recipe_name)
    model = graph.ensure_node_names(model)
    if recipe.output is OutputFormat.QDQ_TENSORRT:
        placement = qdq_tensorrt.plan(model, recipe)
        tensors = list(placement.activation_tensors)
    else:
        tensors = graph.float_activations(model)
    method = recipe.calibration.method
    obs = calibrate.collect(
        model, tensors, batches, num_bins=recipe.calibration.num_bins, histogram=method is not CalibMethod.MINMAX
    )
    ranges = obs.ranges(method, percentile=recipe.calibration.percentile)
    if recipe.output is OutputFormat.QDQ_TENSORRT:
        return qdq_tensorrt.write(model, ranges, placement)
    return qdq_onnxruntime.write(model, ranges, recipe)


def ort_default_peer(src: Path, dst: Path, batches: Callable[[], Iterator[np.ndarray]]) -> None:
    from onnxruntime.quantization import quantize_static

    from edge_tl.quantize.calibrate import OrtCalibrationReader

    quantize_static(str(src), str(dst), OrtCalibrationReader(batches, "input"))


def bench_lite0(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import onnx

    from edge_tl.data import preprocess
    from edge_tl.models import get_backbone

    prep = get_backbone("efficientnet_lite0").preprocessing
    fp32_path = work / "lite0.fp32.onnx"
    fp32 = lite0_imagenet_onnx(fp32_path)
    calib = np.stack([preprocess(c, prep) for c in photo_crops(args.calib_images, seed=1)])
    evals = np.stack([preprocess(c, prep) for c in photo_crops(args.eval_images, seed=2)])

    def batches() -> Iterator[np.ndarray]:
        for start in range(0, len(calib), 16):
            yield calib[start : start + 16]

    paths = {"fp32": fp32_path}
    for name in RECIPES:
        paths[name] = work / f"lite0.{name}.onnx"
        onnx.save(quantize_with_recipe(fp32, name, batches), str(paths[name]))
    paths["ort-quantize_static-default"] = work / "lite0.ort-default.onnx"
    ort_default_peer(fp32_path, paths["ort-quantize_static-default"], batches)

    logits = {name: session(p, args.threads).run(None, {"input": evals})[0] for name, p in paths.items()}
    preds = {name: value.argmax(1) for name, value in logits.items()}
    # Crops of textures and text have no clear ImageNet class; agreement on the crops FP32 is
    # confident about (softmax max > 0.5) says more about the quantization itself.
    z = logits["fp32"] - logits["fp32"].max(axis=1, keepdims=True)
    confident = (np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)).max(axis=1) > 0.5
    p50 = p50_interleaved(paths, (1, 3, 224, 224), threads=args.threads, rounds=args.rounds, per_round=args.per_round)
    return {
        "model": "efficientnet_lite0 (ImageNet weights) at 224",
        "accuracy_note": (
            "no ImageNet validation offline: top1_agreement_with_fp32 on crops of scikit-image photographs"
        ),
        "calibration_images": len(calib),
        "eval_images": len(evals),
        "confident_eval_images": int(confident.sum()),
        "variants": {
            name: {
                "p50_ms": p50[name],
                "p50_ratio_to_fp32": p50[name] / p50["fp32"],
                "top1_agreement_with_fp32": float((preds[name] == preds["fp32"]).mean()),
                "top1_agreement_with_fp32_confident": float((preds[name] == preds["fp32"])[confident].mean()),
            }
            for name in paths
        },
    }


# --------------------------------------------------------------------------- the quickstart model


def bench_quickstart(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from edge_tl.data import split_from_run
    from edge_tl.models import Preprocessing
    from edge_tl.quantize import QuantizeConfig, calibrate, quantize_run
    from edge_tl.quickstart import QUICKSTART_INT8_BUDGET_POINTS
    from edge_tl.runs import Run

    root = quickstart_run(work, args.run)
    run = Run.open(root)
    prep = Preprocessing.from_dict(run.require("preprocessing"))
    paths = {"fp32": run.artifact_path("onnx-fp32")}
    drops: dict[str, dict[str, float]] = {}
    for name in RECIPES:
        result = quantize_run(root, config=QuantizeConfig(recipe=name, calib_samples=args.calib_samples))
        # A copy: a later quantize with the same recipe rewrites the run's file.
        paths[name] = work / f"quickstart.{name}.onnx"
        shutil.copyfile(result.model_path, paths[name])
        drops[name] = {
            "top1": result.top1,
            "reference_top1": result.reference_top1,
            "top1_drop_points": result.drop_points,
        }
    # What the quickstart ships: the CPU recipe held to the quickstart's accuracy budget
    # (layers return to float only when the fully quantized model is over it).
    budgeted = f"onnxruntime-cpu-int8-budget-{QUICKSTART_INT8_BUDGET_POINTS:g}pt"
    result = quantize_run(
        root, config=QuantizeConfig(calib_samples=args.calib_samples, max_accuracy_drop=QUICKSTART_INT8_BUDGET_POINTS)
    )
    paths[budgeted] = work / f"quickstart.{budgeted}.onnx"
    shutil.copyfile(result.model_path, paths[budgeted])
    drops[budgeted] = {
        "top1": result.top1,
        "reference_top1": result.reference_top1,
        "top1_drop_points": result.drop_points,
        "float_layers": list(result.float_layers),
    }
    samples = calibrate.calibration_samples(run, calib_data=None, num_samples=args.calib_samples)
    batches = calibrate.image_batches(samples, prep, 16)
    paths["ort-quantize_static-default"] = work / "quickstart.ort-default.onnx"
    ort_default_peer(paths["fp32"], paths["ort-quantize_static-default"], batches)
    from edge_tl.data import iter_batches

    val = list(split_from_run(run).val)
    reference = drops[RECIPES[0]]["reference_top1"]
    for name in ("fp32", "ort-quantize_static-default"):
        s = session(paths[name], args.threads)
        correct = sum(int((s.run(None, {"input": x})[0].argmax(1) == y).sum()) for x, y in iter_batches(val, prep, 64))
        drops[name] = {
            "top1": correct / len(val),
            "reference_top1": reference,
            "top1_drop_points": (reference - correct / len(val)) * 100,
        }
    size = prep.input_size
    p50 = p50_interleaved(paths, (1, 3, size, size), threads=args.threads, rounds=args.rounds, per_round=args.per_round)
    return {
        "model": f"quickstart digits run ({run.get('backbone', {}).get('name')} at {size}px)",
        "validation_images": len(val),
        "calibration_images": args.calib_samples,
        "variants": {
            name: {"p50_ms": p50[name], "p50_ratio_to_fp32": p50[name] / p50["fp32"], **drops[name]} for name in paths
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "int8_cpu.json")
    parser.add_argument("--run", type=Path, default=None, help="a quickstart run directory (default: fine-tune one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=20)
    parser.add_argument("--calib-samples", type=int, default=512)
    parser.add_argument("--calib-images", type=int, default=64, help="lite0-224 calibration crops")
    parser.add_argument("--eval-images", type=int, default=200, help="lite0-224 agreement crops")
    parser.add_argument("--skip", choices=("lite0", "quickstart"), action="append", default=[])
    args = parser.parse_args(argv)

    from edge_tl.bench.env import fingerprint

    results: dict[str, Any] = {
        "benchmark": "int8_cpu",
        "batch_size": 1,
        "threads": args.threads,
        "environment": fingerprint(threads=args.threads),
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="int8-cpu-") as tmp:
        work = Path(tmp)
        if "lite0" not in args.skip:
            results["models"]["efficientnet_lite0_224"] = bench_lite0(work, args)
        if "quickstart" not in args.skip:
            results["models"]["quickstart"] = bench_quickstart(work, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for model, entry in results["models"].items():
        print(f"{model}: {entry['model']}")
        for name, v in entry["variants"].items():
            acc = (
                f"top-1 drop {v['top1_drop_points']:+.2f} pt"
                if "top1_drop_points" in v
                else f"top-1 agreement with FP32 {v['top1_agreement_with_fp32'] * 100:.1f}% "
                f"({v['top1_agreement_with_fp32_confident'] * 100:.1f}% where FP32 is confident)"
            )
            print(f"  {name:30s} p50 {v['p50_ms']:7.3f} ms  x{v['p50_ratio_to_fp32']:.2f} of FP32  {acc}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
