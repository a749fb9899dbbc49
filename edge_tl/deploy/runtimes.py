"""The device runtimes edge-tl ships: TensorRT (an engine built on the device) and ONNX Runtime.

Each is one :class:`~edge_tl.device_runtime.DeviceRuntime`, named in
:data:`edge_tl.device_runtime.BUILTIN_RUNTIMES`; every stage asks these objects instead of
branching on the runtime's name.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from edge_tl.artifacts import onnx_int8
from edge_tl.device_runtime import DeviceRun, DeviceRuntime, Shipment
from edge_tl.errors import ConfigError, RunError
from edge_tl.targets import Precision, TrtVersion

BUILD_LOG = "build.log"
LAYERS_FILE = "layers.json"  # the engine's layer information (trtexec --exportLayerInfo), brought back


class OnnxRuntimeRuntime(DeviceRuntime):
    """The device runs the run's ONNX for the precision with ONNX Runtime: nothing is built there."""

    name = "onnxruntime"
    label = "ONNX Runtime"

    def shipment(self, run: Any, target: Any, precision: Any, *, tensorrt: str | None) -> Shipment:
        if precision is Precision.INT8:
            name = onnx_int8(target.calibration_recipe.value)
            how = f"edge-tl quantize {run.root} --recipe {target.calibration_recipe.value}"
        else:
            name = f"onnx-{precision.value}"
            how = f"edge-tl export {run.root} --precision {precision.value}"
        if not run.has_artifact(name):
            raise RunError(
                f"run {str(run.root)!r} has no {name!r} for {precision.value} on {target.name!r}; first run: {how}"
            )
        return Shipment(model=run.artifact(name))

    def open_runner(self, bundle: Any, out: Path, *, threads: int | None) -> DeviceRun:
        from edge_tl.runtime.base import RunnerOptions
        from edge_tl.runtime.onnxruntime_runner import OnnxRuntimeRunner

        artifact = bundle.model["artifact"]
        runner = OnnxRuntimeRunner(
            bundle.root / bundle.model["path"], name=artifact, options=RunnerOptions(threads=threads)
        )
        return DeviceRun(runner=runner, artifact=artifact, kind="onnx")


class TensorRTRuntime(DeviceRuntime):
    """The device builds a TensorRT engine from the ONNX with the bundle's build plan, and runs it.

    Deploy runs it in python mode (TensorRT's Python package, or ONNX Runtime where that is
    missing) or in trtexec mode (the build plan's trtexec, which also times and evaluates).
    """

    name = "tensorrt"
    label = "TensorRT"
    builds_engine = True
    modes = ("python", "trtexec")
    gpu_compute = True  # the TensorRT runner times the engine between CUDA events on its stream, no copies

    def shipment(self, run: Any, target: Any, precision: Any, *, tensorrt: str | None) -> Shipment:
        from edge_tl.compile import CompileRequest, make_plan, write_plan
        from edge_tl.compile.plan import PLAN_NAME, SCRIPT_NAME

        # Build-only: deploy times the engine in its own trtexec run, so the build's timing run would only
        # cost device time (--buildOnly up to 8.5, --skipInference from 8.6).
        plan = make_plan(run, target, CompileRequest(precision=precision, tensorrt=tensorrt, build_only=True))
        write_plan(run, plan)
        return Shipment(
            model=plan.source.onnx,
            calib_cache=plan.source.calib_cache,
            build_files=tuple(
                (run.path(plan.directory, name), f"{plan.directory}/{name}", name == SCRIPT_NAME)
                for name in (SCRIPT_NAME, PLAN_NAME)
            ),
            build_plan={
                "script": f"{plan.directory}/{SCRIPT_NAME}",
                "plan": f"{plan.directory}/{PLAN_NAME}",
                "engine": plan.spec.engine,
                "tensorrt": str(plan.release.version),
                "jetpack": plan.release.jetpack,
                "batch": plan.spec.batch.to_dict() if plan.spec.batch else None,
                "dla_core": plan.spec.dla_core,
                # what the engine's per-layer report is read from and judged against (edge_tl.trt.layers)
                "layers": plan.spec.export_layer_info,
                "precision": plan.precision.value,
                "recipe": plan.source.recipe.value if plan.source.recipe else None,
                "kept_float": list(plan.source.onnx.details.get("float_layers") or ()),
                "gpu_fallback_ops": plan.dla_gpu_fallback,
            },
            max_batch=plan.spec.batch.max if plan.spec.batch is not None else None,
        )

    def check_probe(self, probe: Any, target: Any) -> list[str]:
        problems = []
        if probe.tensorrt:
            seen = TrtVersion.parse(probe.tensorrt)
            listed = [r.version for r in target.releases]
            if seen not in listed:
                problems.append(
                    f"{probe.host} has TensorRT {probe.tensorrt}, which target {target.name!r} does not list "
                    f"({', '.join(str(v) for v in listed)}); add a [[tensorrt.releases]] entry to the profile or use "
                    "a device with a listed JetPack"
                )
        elif not probe.trtexec and not probe.tensorrt_python:
            problems.append(
                f"{probe.host} has neither trtexec nor TensorRT's Python package; install TensorRT "
                "(JetPack: apt install nvidia-tensorrt) or deploy to a CPU target"
            )
        if target.gpu is not None and probe.compute_capability and probe.compute_capability != target.gpu.sm:
            problems.append(
                f"{probe.host}'s GPU {probe.gpu_name} is sm {probe.compute_capability} but target {target.name!r} "
                f"is sm {target.gpu.sm}: an engine built for one does not fit the other"
            )
        return problems

    def auto_mode(self, probe: Any) -> str:
        if probe.tensorrt_python:
            return "python"
        if probe.trtexec:
            return "trtexec"
        return "python"  # where the agent runs the ONNX with ONNX Runtime (on_device)

    def on_device(self) -> DeviceRuntime:
        from edge_tl._lazy import is_available

        return self if is_available("tensorrt") else ONNXRUNTIME

    def open_runner(self, bundle: Any, out: Path, *, threads: int | None) -> DeviceRun:
        from edge_tl.runtime.tensorrt_runner import TensorRTRunner

        if bundle.build_plan is None:
            raise ConfigError(
                f"this bundle's target runs {bundle.target.default_runtime.label}: it has no build plan for TensorRT"
            )
        name = f"engine-{bundle.manifest['target']['name']}-{bundle.precision.value}"
        runner = TensorRTRunner(_build_engine(bundle, out), name=name)
        return DeviceRun(runner=runner, artifact=runner.name, kind="engine")


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
        raise RunError(f"engine build failed (exit {proc.returncode}); see {out / BUILD_LOG}")
    layers = bundle.root / plan["layers"] if plan.get("layers") else None
    if layers is not None and layers.is_file() and not layers.is_symlink():
        shutil.copyfile(layers, out / LAYERS_FILE)  # the engine's per-layer report comes back with the results
    return engine


TENSORRT = TensorRTRuntime()
ONNXRUNTIME = OnnxRuntimeRuntime()
