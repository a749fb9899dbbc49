"""CUDA batch-1 latency of the PyTorch runner, cross-checked by an independent measurement.

Times efficientnet_lite0 (or --model) at 224x224 on the GPU two ways in one process:

1. ``edge-tl bench``'s path: :class:`TorchRunner` (``--fp16 --channels-last --cuda-graph``)
   driven by :func:`edge_tl.bench.benchmark`;
2. a hand-written loop that shares no code with edge-tl's runner: its own half-precision,
   channels-last copy of the model, its own CUDA-graph capture, and one pair of CUDA events
   per replay.

It reports both p50s and their ratio (they should agree within a few percent) beside the
eager FP32 batch-1 p50 measured the same way, and writes JSON. Needs a CUDA GPU.

    python benchmarks/cuda_latency.py --out benchmarks/results/cuda_latency.json
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

from edge_tl.bench import BenchConfig, Budget, LatencyStats, benchmark, fingerprint
from edge_tl.models import Weights, WeightsSource, build_model
from edge_tl.runs import atomic_write_json
from edge_tl.runtime import Device, InputSpec, RunnerOptions
from edge_tl.runtime.torch_runner import TorchRunner


def independent_graph_p50(model, size: int, *, warmup: int, iterations: int) -> LatencyStats:
    import torch

    net = copy.deepcopy(model).eval().cuda().half().to(memory_format=torch.channels_last)
    static_in = torch.randn(1, 3, size, size, device="cuda").half().contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                net(static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            net(static_in)
    for _ in range(warmup):
        graph.replay()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
    for start, end in zip(starts, ends):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
    return LatencyStats.from_samples([s.elapsed_time(e) for s, e in zip(starts, ends)], batch_size=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cuda_latency.json")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    model = build_model(args.model, 1000, weights=Weights(WeightsSource.NONE)).eval()
    spec = InputSpec(3, args.size, args.size)
    config = BenchConfig(
        batch_sizes=(1,), warmup=Budget(iterations=args.warmup), measure=Budget(iterations=args.iterations)
    )
    results = {}
    for label, options in {
        "torch_cuda_eager_fp32": RunnerOptions(device=Device.CUDA),
        "torch_cuda_fp16_channels_last_graph": RunnerOptions(
            device=Device.CUDA, fp16=True, channels_last=True, cuda_graph=True
        ),
    }.items():
        with TorchRunner(model, input_spec=spec, name=args.model, options=options) as runner:
            results[label] = benchmark(runner, config)[0]
    results["independent_fp16_channels_last_graph"] = independent_graph_p50(
        model, args.size, warmup=args.warmup, iterations=args.iterations
    )
    edge = results["torch_cuda_fp16_channels_last_graph"].p50_ms
    independent = results["independent_fp16_channels_last_graph"].p50_ms
    for label, stats in results.items():
        print(f"{label:<40} p50 {stats.p50_ms:7.3f} ms  p99 {stats.p99_ms:7.3f} ms  cv {stats.cv:.2f}")
    print(f"edge-tl runner p50 / independent p50 = {edge / independent:.3f}")
    atomic_write_json(
        args.out,
        {
            "benchmark": "cuda_latency",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": args.model,
            "input_size": args.size,
            "results": {k: v.to_dict() for k, v in results.items()},
            "ratio_runner_vs_independent_p50": edge / independent,
            "environment": fingerprint(),
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
