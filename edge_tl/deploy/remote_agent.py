"""The device side of python mode: ``python -m edge_tl.deploy.remote_agent --bundle DIR --out DIR``.

Runs inside the virtual environment deploy creates on the device (the edge-tl wheel
on top of the system's numpy / TensorRT / ONNX Runtime). It verifies the bundle,
builds the engine with the bundle's build plan when TensorRT is used, runs the
evaluation pack, benchmarks, and writes JSON (plus the logits as ``.npy``) into
``--out``. It reads nothing from the network and writes only JSON and ``.npy``
(never pickles); the workstation fetches those files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULT = "result.json"
BENCH = "bench.json"
LOGITS = "logits.npy"
BUILD_LOG = "build.log"


def _runtime(choice: str, *, uses_tensorrt: bool) -> str:
    from edge_tl._lazy import is_available

    if choice == "auto":
        return "tensorrt" if uses_tensorrt and is_available("tensorrt") else "onnxruntime"
    return choice


def _build_engine(bundle: Any, out: Path) -> Path:
    """Run the bundle's build plan (trtexec) unless an engine built from this ONNX is already there."""
    plan = bundle.build_plan
    engine = bundle.root / plan["engine"]
    sidecar = engine.with_name(engine.name + ".json")
    if engine.is_file() and sidecar.is_file():
        recorded = json.loads(sidecar.read_text(encoding="utf-8")).get("source", {}).get("sha256")
        if recorded == bundle.model["sha256"]:
            (out / BUILD_LOG).write_text(
                f"engine {plan['engine']} already built from this ONNX; reused\n", encoding="utf-8"
            )
            return engine
    with open(out / BUILD_LOG, "wb") as log:
        proc = subprocess.run(
            ["bash", plan["script"]], cwd=bundle.root, stdout=log, stderr=subprocess.STDOUT, check=False
        )
    if proc.returncode != 0:
        raise SystemExit(f"engine build failed (exit {proc.returncode}); see {out / BUILD_LOG}")
    return engine


def run_agent(bundle_dir: Path, out: Path, *, runtime: str, warmup: int, iterations: int, batch_size: int,
              threads: int | None) -> dict[str, Any]:  # fmt: skip
    import numpy as np

    import edge_tl
    from edge_tl.bench import BenchConfig, Budget, benchmark, fingerprint
    from edge_tl.bench.api import BenchReport
    from edge_tl.bench.latency import latency_fields, time_end_to_end
    from edge_tl.deploy.bundle import Bundle
    from edge_tl.deploy.evalpack import EvalPack
    from edge_tl.runtime.base import RunnerOptions
    from edge_tl.verify.metrics import AccuracyAccumulator

    out.mkdir(parents=True, exist_ok=True)
    bundle = Bundle.load(bundle_dir, verify=True)  # every file checked on the device before use
    chosen = _runtime(runtime, uses_tensorrt=bundle.build_plan is not None)
    if chosen == "tensorrt":
        from edge_tl.runtime.tensorrt_runner import TensorRTRunner

        if bundle.build_plan is None:
            raise SystemExit("this bundle's target runs ONNX Runtime: it has no build plan for TensorRT")
        runner: Any = TensorRTRunner(
            _build_engine(bundle, out), name=f"engine-{bundle.manifest['target']['name']}-{bundle.precision.value}"
        )
        artifact, kind = runner.name, "engine"
    else:
        from edge_tl.runtime.onnxruntime_runner import OnnxRuntimeRunner

        artifact, kind = bundle.model["artifact"], "onnx"
        runner = OnnxRuntimeRunner(
            bundle.root / bundle.model["path"], name=artifact, options=RunnerOptions(threads=threads)
        )
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
    on_gpu = chosen == "tensorrt"  # the TensorRT runner times enqueue + sync: the GPU's work, no copies
    report = BenchReport(target=f"{artifact} on the device", runner=described, config=config, results=tuple(stats),
                         environment=fingerprint(threads=threads), gpu_compute=tuple(stats) if on_gpu else None,
                         end_to_end=(e2e,))  # fmt: skip
    report.write_json(out / BENCH)
    result = {
        "artifact": artifact,
        "kind": kind,
        "precision": bundle.precision.value,
        "backend": chosen,
        "bundle_digest": bundle.digest,
        "accuracy": accuracy.result().to_dict(),
        "latency": stats[0].to_dict(),
        **latency_fields(gpu_compute=stats[0] if on_gpu else None, end_to_end=e2e),
        "edge_tl": {"version": edge_tl.__version__, "module": str(Path(edge_tl.__file__).parent)},
        "python": sys.executable,
    }
    (out / RESULT).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m edge_tl.deploy.remote_agent", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--runtime", choices=("auto", "tensorrt", "onnxruntime"), default="auto")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    os.umask(0o022)
    from edge_tl.errors import EdgeTLError

    try:
        result = run_agent(args.bundle, args.out, runtime=args.runtime, warmup=args.warmup, iterations=args.iterations,
                           batch_size=args.batch_size, threads=args.threads)  # fmt: skip
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
