"""CPU inference latency: PyTorch eager FP32 vs ONNX Runtime FP32 vs ONNX Runtime FP16.

For each model (224x224, batch 1 and 8) the three runners are timed in the same
process, interleaved in rounds so that load from elsewhere on the machine hits all
of them alike; each is reported as a ratio of its p50 to PyTorch eager's p50.

ONNX models are made by edge-tl's own exporter (static "same" padding, onnxslim,
FP16 with float32 I/O). Weights: the bundled ImageNet weights for efficientnet_lite0
(offline), random ones for torchvision models unless --pretrained (latency does not
depend on the values).

    python benchmarks/cpu_inference.py --threads 2 --out benchmarks/results/cpu_inference.json
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_tl.bench import Budget, LatencyStats, fingerprint
from edge_tl.bench.api import time_loop
from edge_tl.export.onnx_export import convert_to_fp16, export_torch_to_onnx, save_model
from edge_tl.export.static_padding import make_same_padding_static
from edge_tl.models import Weights, WeightsSource, build_model, get_backbone
from edge_tl.runs import atomic_write_json
from edge_tl.runtime import Device, InputSpec, RunnerOptions
from edge_tl.runtime.onnxruntime_runner import OnnxRuntimeRunner
from edge_tl.runtime.torch_runner import TorchRunner

MODELS = ("efficientnet_lite0", "mobilenet_v3_large", "resnet18")
SIZE = 224


def _model(name: str, pretrained: bool):
    offline = get_backbone(name).source == "bundled"
    weights = Weights(WeightsSource.IMAGENET) if (pretrained or offline) else Weights(WeightsSource.NONE)
    return build_model(name, 1000, weights=weights).eval(), weights.source.value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per batch size")
    parser.add_argument("--seconds", type=float, default=1.0, help="measured seconds per runner per round")
    parser.add_argument("--min-iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=10, help="warm-up iterations per runner and batch size")
    parser.add_argument("--pretrained", action="store_true", help="ImageNet weights for torchvision models too")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cpu_inference.json")
    args = parser.parse_args(argv)

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    options = RunnerOptions(device=Device.CPU, threads=args.threads)
    measure = Budget(seconds=args.seconds, min_iterations=args.min_iterations)
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model, weights = _model(name, args.pretrained)
            static = copy.deepcopy(model)
            make_same_padding_static(static, SIZE)
            fp32_path = Path(tmp) / f"{name}.fp32.onnx"
            proto = export_torch_to_onnx(static, fp32_path, input_size=SIZE)
            fp16_path = save_model(convert_to_fp16(proto), Path(tmp) / f"{name}.fp16.onnx")
            runners = {
                "torch_eager_fp32": TorchRunner(model, input_spec=InputSpec(3, SIZE, SIZE), name=name, options=options),
                "ort_fp32": OnnxRuntimeRunner(fp32_path, options=options),
                "ort_fp16": OnnxRuntimeRunner(fp16_path, options=options),
            }
            for runner in runners.values():
                runner.__enter__()
            try:
                for batch_size in batch_sizes:
                    batch = rng.standard_normal((batch_size, 3, SIZE, SIZE), dtype=np.float32)
                    prepared = {key: r.prepare(batch) for key, r in runners.items()}
                    for key, r in runners.items():
                        time_loop(r, prepared[key], Budget(iterations=args.warmup))
                    samples: dict[str, list[float]] = {key: [] for key in runners}
                    for _ in range(args.rounds):
                        for key, r in runners.items():
                            samples[key] += time_loop(r, prepared[key], measure)
                    stats = {key: LatencyStats.from_samples(v, batch_size=batch_size) for key, v in samples.items()}
                    base = stats["torch_eager_fp32"].p50_ms
                    row = {
                        "model": name,
                        "weights": weights,
                        "batch_size": batch_size,
                        "threads": args.threads,
                        "stats": {key: s.to_dict() for key, s in stats.items()},
                        "ratio_p50_vs_eager": {key: s.p50_ms / base for key, s in stats.items()},
                    }
                    rows.append(row)
                    print(
                        f"{name:<20} b{batch_size:<2} p50 ms: eager {base:8.2f}  "
                        f"ort fp32 {stats['ort_fp32'].p50_ms:8.2f} ({row['ratio_p50_vs_eager']['ort_fp32']:.2f}x)  "
                        f"ort fp16 {stats['ort_fp16'].p50_ms:8.2f} ({row['ratio_p50_vs_eager']['ort_fp16']:.2f}x)  "
                        f"cv max {max(s.cv for s in stats.values()):.2f}",
                        flush=True,
                    )
            finally:
                for runner in runners.values():
                    runner.__exit__(None, None, None)
    result = {
        "benchmark": "cpu_inference",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "input_size": SIZE,
        "config": vars(args) | {"out": str(args.out)},
        "rows": rows,
        "environment": fingerprint(threads=args.threads),
    }
    atomic_write_json(args.out, result)
    lite = [r for r in rows if r["model"] == "efficientnet_lite0" and r["batch_size"] == 1]
    if lite:
        print(
            f"efficientnet_lite0 b1 {args.threads} threads: ORT FP32 p50 / eager p50 = "
            f"{lite[0]['ratio_p50_vs_eager']['ort_fp32']:.2f} (target <= 0.5)"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
