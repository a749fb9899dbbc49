"""The device side of python mode: ``python -m edge_tl.deploy.remote_agent --bundle DIR --out DIR``.

Runs inside the virtual environment deploy creates on the device (the edge-tl wheel
on top of the system's numpy / TensorRT / ONNX Runtime). It verifies the bundle, lets
the target's device runtime (:mod:`edge_tl.device_runtime`) build what it needs (TensorRT:
the engine, with the bundle's build plan) and open its runner, runs the evaluation pack,
benchmarks, and writes JSON (plus the logits as ``.npy``) into ``--out``. It reads nothing
from the network and writes only JSON and ``.npy`` (never pickles); the workstation fetches
those files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

RESULT = "result.json"
BENCH = "bench.json"
LOGITS = "logits.npy"


def run_agent(
    bundle_dir: Path, out: Path, *, runtime: str, warmup: int, iterations: int, batch_size: int, threads: int | None
) -> dict[str, Any]:
    import numpy as np

    import edge_tl
    from edge_tl.bench import BenchConfig, Budget, benchmark, fingerprint
    from edge_tl.bench.api import BenchReport
    from edge_tl.bench.latency import latency_fields, time_end_to_end
    from edge_tl.deploy.bundle import Bundle
    from edge_tl.deploy.evalpack import EvalPack
    from edge_tl.device_runtime import get_runtime
    from edge_tl.runtime.base import CUDA_EVENT_CLOCK
    from edge_tl.verify.metrics import AccuracyAccumulator

    out.mkdir(parents=True, exist_ok=True)
    bundle = Bundle.load(bundle_dir, verify=True)  # every file checked on the device before use
    # The device runtime the bundle's target names decides what is built here and which runner opens.
    chosen = bundle.target.default_runtime.on_device() if runtime == "auto" else get_runtime(runtime)
    opened = chosen.open_runner(bundle, out, threads=threads)
    runner, artifact, kind = opened.runner, opened.artifact, opened.kind
    pack = EvalPack.load(bundle.root / bundle.manifest["eval"]["dir"])
    accuracy = AccuracyAccumulator()
    logits = []
    config = BenchConfig(
        batch_sizes=(batch_size,), warmup=Budget(iterations=warmup), measure=Budget(iterations=iterations)
    )
    with runner:
        for images, labels in pack.batches():
            batch_logits = runner.run(images)
            accuracy.update(batch_logits, labels)
            logits.append(batch_logits)
        stats = benchmark(runner, config)
        e2e = time_end_to_end(
            runner,
            images[:batch_size] if len(images) >= batch_size else images,
            warmup=min(warmup, 5),
            iterations=iterations,
        )
        described = runner.describe()
        described["input"] = runner.input_spec.to_dict()
    np.save(out / LOGITS, np.concatenate(logits).astype(np.float32), allow_pickle=False)
    # GPU compute only when CUDA events timed it; the host clock around enqueue + sync is named apart.
    on_gpu = chosen.gpu_compute and described.get("clock") == CUDA_EVENT_CLOCK
    host_timed = chosen.gpu_compute and not on_gpu
    report = BenchReport(
        target=f"{artifact} on the device",
        runner=described,
        config=config,
        results=tuple(stats),
        environment=fingerprint(threads=threads),
        gpu_compute=tuple(stats) if on_gpu else None,
        end_to_end=(e2e,),
    )
    report.write_json(out / BENCH)
    result = {
        "artifact": artifact,
        "kind": kind,
        "precision": bundle.precision.value,
        "backend": chosen.name,
        "bundle_digest": bundle.digest,
        "accuracy": accuracy.result().to_dict(),
        "latency": stats[0].to_dict(),
        **latency_fields(gpu_compute=stats[0] if on_gpu else None, end_to_end=e2e),
        "host_enqueue_sync": stats[0].to_dict() if host_timed else None,
        "edge_tl": {"version": edge_tl.__version__, "module": str(Path(edge_tl.__file__).parent)},
        "python": sys.executable,
    }
    (out / RESULT).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m edge_tl.deploy.remote_agent", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument(
        "--runtime",
        default="auto",
        help="auto (the bundle's target runtime, or its fallback where that cannot run here), or a device runtime: "
        "tensorrt, onnxruntime or module:object",
    )
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    os.umask(0o022)
    from edge_tl.errors import EdgeTLError

    try:
        result = run_agent(
            args.bundle,
            args.out,
            runtime=args.runtime,
            warmup=args.warmup,
            iterations=args.iterations,
            batch_size=args.batch_size,
            threads=args.threads,
        )
    except ModuleNotFoundError as exc:
        # One line the workstation shows as it is: which module, which interpreter, the fix.
        raise SystemExit(
            f"{exc.name!r} is not importable by {sys.executable} on the device: install it for that Python "
            f"(pip install {exc.name}), or deploy with --remote-python set to an interpreter that has it"
        ) from None
    except EdgeTLError as exc:
        raise SystemExit(" ".join(str(exc).split())) from None
    print(json.dumps({"ok": True, "out": str(args.out), "backend": result["backend"]}))


if __name__ == "__main__":
    main()
