"""Device runtimes: how a target's device runs a model, as one object per runtime.

A target profile names its runtime (``default_runtime = "tensorrt"``); :func:`get_runtime`
turns that name into a :class:`DeviceRuntime`, which every stage asks instead of branching
on the name: which artifact a bundle ships (:meth:`DeviceRuntime.shipment`), whether an
engine is built from it (:attr:`DeviceRuntime.builds_engine`: compile and ship ask), which
deploy modes apply and which one to pick (:attr:`~DeviceRuntime.modes`,
:meth:`~DeviceRuntime.auto_mode`), what the device probe must find
(:meth:`~DeviceRuntime.check_probe`) and which runner the device agent opens
(:meth:`~DeviceRuntime.open_runner`).

The runtimes edge-tl ships are listed in :data:`BUILTIN_RUNTIMES`. Any other one plugs in
without touching edge-tl: its profile names it as ``"module:object"``, an importable module
and a :class:`DeviceRuntime` instance in it (docs/design.md, "devruntime").

This module sits below the stages (it imports none of them): the built-in runtimes are
named here as ``module:object`` and imported on first use, the way a plug-in is.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_tl.errors import ConfigError

#: The device runtimes shipped with edge-tl, by the name a profile writes.
BUILTIN_RUNTIMES = {
    "tensorrt": "edge_tl.deploy.runtimes:TENSORRT",
    "onnxruntime": "edge_tl.deploy.runtimes:ONNXRUNTIME",
}


@dataclass(frozen=True)
class Shipment:
    """What a bundle carries for one runtime, besides the files every bundle has."""

    model: Any  # the run's ONNX Artifact the device runs, or builds its engine from
    calib_cache: Any = None  # the calibration cache Artifact the build reads, if any
    # (source file, bundle-relative path, executable) of what builds the model on the device
    build_files: tuple[tuple[Path, str, bool], ...] = ()
    build_plan: dict[str, Any] | None = None  # bundle.json's ``build_plan`` record (None: nothing to build)
    max_batch: int | None = None  # the most images one inference takes, when the ONNX leaves the batch open


@dataclass(frozen=True)
class DeviceRun:
    """What the device agent measures: an opened runner and the artifact it stands for."""

    runner: Any  # an edge_tl.runtime runner, not yet activated
    artifact: str  # the run artifact it runs (the ONNX, or the engine built from it)
    kind: str  # "onnx" or "engine"


class DeviceRuntime:
    """One way a device runs a model. Subclass it, set the attributes, implement the methods.

    The objects passed in are edge-tl's own: ``run`` an :class:`edge_tl.runs.Run`, ``target``
    an :class:`edge_tl.targets.Target`, ``precision`` an :class:`edge_tl.targets.Precision`,
    ``probe`` an :class:`edge_tl.deploy.probe.DeviceProbe`, ``bundle`` an
    :class:`edge_tl.deploy.bundle.Bundle`.
    """

    name: str = ""  # what a profile's default_runtime writes; the device result's "backend"
    label: str = ""  # for messages: "TensorRT", "ONNX Runtime"
    # True when the device runs a TensorRT engine built there from the ONNX (build plan, TensorRT
    # releases, release-dependent calibration); False when it runs the ONNX itself.
    builds_engine: bool = False
    modes: tuple[str, ...] = ("python",)  # the deploy modes that apply (edge_tl.deploy.config.Mode values)
    gpu_compute: bool = False  # the agent's runner times the GPU's work alone (no copies): bench's gpu_compute

    @property
    def value(self) -> str:
        """The name, as the ``Runtime`` enum this object replaced spelt it."""
        return self.name

    def shipment(self, run: Any, target: Any, precision: Any, *, tensorrt: str | None) -> Shipment:
        """The artifacts a bundle of ``run`` for ``target``/``precision`` carries (a RunError names what is missing)."""
        raise NotImplementedError

    def check_probe(self, probe: Any, target: Any) -> list[str]:
        """Every way the probed device cannot run this runtime for ``target`` (empty: it can)."""
        return []

    def auto_mode(self, probe: Any) -> str:
        """The deploy mode ``--mode auto`` picks on the probed device."""
        return self.modes[0]

    def on_device(self) -> DeviceRuntime:
        """The runtime the device agent uses when asked for ``auto`` where it runs (a fallback if this cannot)."""
        return self

    def open_runner(self, bundle: Any, out: Path, *, threads: int | None) -> DeviceRun:
        """On the device: build what the bundle needs (logs into ``out``) and open the runner to measure."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<device runtime {self.name!r}>"


_loaded: dict[str, DeviceRuntime] = {}


def get_runtime(name: str) -> DeviceRuntime:
    """The device runtime a profile names: a built-in name, or ``"module:object"`` of one outside edge-tl."""
    spec = BUILTIN_RUNTIMES.get(name, name)
    if spec in _loaded:
        return _loaded[spec]
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        close = difflib.get_close_matches(name, list(BUILTIN_RUNTIMES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"device runtime {name!r} is unknown{hint}: choose one of {', '.join(sorted(BUILTIN_RUNTIMES))}, "
            "or name your own as 'module:object'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"device runtime {name!r}: module {module_name!r} does not import ({exc}); install it for this Python "
            "or add its folder to PYTHONPATH"
        ) from exc
    runtime = getattr(module, attr, None)
    if not isinstance(runtime, DeviceRuntime):
        raise ConfigError(
            f"device runtime {name!r}: {module_name}.{attr} is {type(runtime).__name__}, not a DeviceRuntime "
            "instance (subclass edge_tl.device_runtime.DeviceRuntime)"
        )
    if spec not in BUILTIN_RUNTIMES.values() and runtime.name in BUILTIN_RUNTIMES:
        owner = "a runtime edge-tl ships"
    else:
        owner = next(
            (repr(s) for s, other in _loaded.items() if other.name == runtime.name and other is not runtime), ""
        )
    if owner:
        raise ConfigError(
            f"device runtime {name!r} calls itself {runtime.name!r}, the name of {owner}; give it another name"
        )
    _loaded[spec] = runtime
    return runtime
