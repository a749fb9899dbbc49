"""A TOY device runtime, defined outside edge-tl the way a user's own runtime is.

It runs the bundle's ONNX with ONNX Runtime, but with its own settings: the workstation
writes them into the bundle (``toy/settings.json``, its "build" step) and the device agent
reads them back to open the runner. The profile tests/deploy/toy/toy-cpu.toml names it as
``default_runtime = "toy_runtime:TOY"``; tests/deploy/test_toy_runtime.py takes it end to end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge_tl.device_runtime import DeviceRun, DeviceRuntime, Shipment
from edge_tl.errors import RunError
from edge_tl.runs import atomic_write_json

SETTINGS = "toy/settings.json"


class ToyRuntime(DeviceRuntime):
    name = "toy-ort"
    label = "Toy ONNX Runtime"

    def shipment(self, run: Any, target: Any, precision: Any, *, tensorrt: str | None) -> Shipment:
        name = f"onnx-{precision.value}"
        if not run.has_artifact(name):
            raise RunError(f"run {str(run.root)!r} has no {name!r}; the toy runtime runs exported float ONNX only")
        settings = run.path("toy", "settings.json")
        settings.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(settings, {"threads": 1, "optimization": "disabled"})
        return Shipment(model=run.artifact(name), build_files=((settings, SETTINGS, False),))

    def check_probe(self, probe: Any, target: Any) -> list[str]:
        if "CPUExecutionProvider" not in probe.onnxruntime_providers:
            return [f"{probe.host} has no ONNX Runtime CPU provider, which the toy runtime runs on"]
        return []

    def open_runner(self, bundle: Any, out: Path, *, threads: int | None) -> DeviceRun:
        from edge_tl.runtime.base import RunnerOptions
        from edge_tl.runtime.onnxruntime_runner import GraphOptimization, OnnxRuntimeRunner

        settings = json.loads((bundle.root / SETTINGS).read_text(encoding="utf-8"))
        artifact = bundle.model["artifact"]
        runner = OnnxRuntimeRunner(
            bundle.root / bundle.model["path"],
            name=f"toy:{artifact}",
            options=RunnerOptions(threads=settings["threads"]),
            optimization=GraphOptimization(settings["optimization"]),
        )
        return DeviceRun(runner=runner, artifact=artifact, kind="onnx")


TOY = ToyRuntime()
