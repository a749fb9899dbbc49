"""ONNX Runtime runner: execution providers chosen from what this onnxruntime build has."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from edge_tl._lazy import lazy_import
from edge_tl.errors import ConfigError, RunError
from edge_tl.input_contract import Layout, layout_of, to_model_input
from edge_tl.runtime.base import Device, InputSpec, Runner, RunnerOptions

# Preference order: the fastest provider first; ONNX Runtime falls back along the
# list for operators a provider cannot run.
_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
_CPU_PROVIDER = "CPUExecutionProvider"

_NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
}


def choose_providers(device: Device, available: list[str]) -> list[str]:
    """Providers for ``device`` among ``available``, best first (CPU always last)."""
    gpu = [p for p in _GPU_PROVIDERS if p in available]
    if device is Device.CPU:
        return [_CPU_PROVIDER]
    if device is Device.CUDA and not gpu:
        raise ConfigError(
            f"--device cuda was asked but this onnxruntime has no GPU provider (it has {available}). "
            "Install onnxruntime-gpu, or use --device cpu."
        )
    return [*gpu, _CPU_PROVIDER]


class GraphOptimization(str, Enum):
    """ONNX Runtime's graph optimisation level.

    ``all`` (the default, what a deployment runs) adds layout transformations
    (NCHWc) whose kernels round differently: about 1e-4 on logits of magnitude 15.
    ``basic`` (constant folding, redundant node removal) computes the graph as
    written, which is what an export parity check wants to see.
    """

    DISABLED = "disabled"
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"


_ORT_LEVELS = {
    GraphOptimization.DISABLED: "ORT_DISABLE_ALL",
    GraphOptimization.BASIC: "ORT_ENABLE_BASIC",
    GraphOptimization.EXTENDED: "ORT_ENABLE_EXTENDED",
    GraphOptimization.ALL: "ORT_ENABLE_ALL",
}


def has_fp16_qdq(model: Any) -> bool:
    """Whether an ONNX model (a path, its serialized bytes or a ``ModelProto``) quantizes with float16 scales.

    ONNX Runtime 1.32's graph rewrites (already at the basic level) compute such a graph wrongly
    on the CPU: the FP16 float part of edge-tl's TensorRT Q/DQ model scored 18% top-1 with them
    and 98% (as its FP32 twin) without, on the quickstart model. Such a model is therefore run as
    written. Without the ``onnx`` package (a lean device) the check cannot look and says no.
    """
    try:
        import onnx
    except ImportError:
        return False
    if isinstance(model, bytes):
        from google.protobuf.message import DecodeError

        try:
            model = onnx.load_model_from_string(model)
        except DecodeError:
            return False  # not a model: ONNX Runtime says so, naming it, when the runner opens it
    elif not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    half = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    return any(
        n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 1 and n.input[1] in half
        for n in model.graph.node
    )


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX model with an ``InferenceSession`` created in :meth:`activate`.

    The model is a file, or its serialized bytes for a graph that lives only in memory (a
    candidate quantize measures before it writes one), as Polygraphy's ``SessionFromOnnx``
    takes a path or bytes (NVIDIA/TensorRT, ``tools/Polygraphy/polygraphy/backend/onnxrt/loader.py``).
    The runner takes the canonical NCHW float32 batch whatever the graph's input is
    (:mod:`edge_tl.input_contract`): an FP16 model whose inputs are float16 is fed float16, a uint8
    input whole pixels, an NHWC input the batch transposed (all in :meth:`prepare`); outputs are
    always returned as float32.
    """

    backend = "onnxruntime"

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        *,
        name: str | None = None,
        options: RunnerOptions = RunnerOptions(),
        optimization: GraphOptimization = GraphOptimization.ALL,
    ):
        self.model_bytes = model if isinstance(model, bytes) else None
        self.path = None if isinstance(model, bytes) else Path(model)
        if self.path is None:
            super().__init__(name=name or "in-memory model")
            self._where = f"in-memory ONNX model {self.name!r}"
        else:
            super().__init__(name=name or self.path.name)
            self._where = repr(str(self.path))
            if not self.path.is_file():
                raise RunError(f"ONNX file {str(self.path)!r} does not exist")
        optimization = GraphOptimization(optimization)
        self.optimization = GraphOptimization.DISABLED if has_fp16_qdq(model) else optimization
        if options.fp16 or options.channels_last or options.cuda_graph:
            raise ConfigError(
                "fp16/channels_last/cuda_graph are PyTorch runner options; an ONNX model's precision is in the file "
                "(export onnx-fp16 for FP16)"
            )
        self.options = options
        self._session: Any = None
        self._spec: InputSpec | None = None
        self._input_name = ""
        self._input_dtype: Any = np.float32
        self._layout = Layout.NCHW
        self.providers: list[str] = []

    @property
    def input_spec(self) -> InputSpec:
        if self._spec is None:
            raise RunError(f"runner {self.name!r} is not active: its input is known once entered")
        return self._spec

    @property
    def device(self) -> str:
        return "cpu" if self.providers[:1] == [_CPU_PROVIDER] or not self.providers else "cuda"

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            providers=list(self.providers),
            threads=self.options.threads,
            path=str(self.path) if self.path is not None else None,
            graph_optimization=self.optimization.value,
        )
        return info

    def activate(self) -> None:
        ort = lazy_import("onnxruntime", purpose="the ONNX Runtime runner")
        providers = choose_providers(self.options.device, list(ort.get_available_providers()))
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _ORT_LEVELS[self.optimization])
        if self.options.threads is not None:
            so.intra_op_num_threads = self.options.threads
            # One model, one request at a time: parallelism lives inside operators.
            so.inter_op_num_threads = 1
        try:
            model = self.model_bytes if self.model_bytes is not None else str(self.path)
            session = ort.InferenceSession(model, sess_options=so, providers=providers)
        except Exception as exc:
            raise RunError(f"ONNX Runtime cannot load {self._where} ({type(exc).__name__}: {exc})") from exc
        inputs = session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ConfigError(
                f"{self._where} has inputs {[(i.name, i.shape) for i in inputs]}; edge-tl runs image classifiers "
                "with one NCHW input"
            )
        shape = inputs[0].shape
        if not all(isinstance(d, int) for d in shape[1:]):
            raise ConfigError(f"{self._where} has a dynamic image size {shape}; export it with a fixed input size")
        self._layout = layout_of(shape)
        channels, height, width = (shape[3], shape[1], shape[2]) if self._layout is Layout.NHWC else shape[1:]
        self._spec = InputSpec(channels, height, width, batch=shape[0] if isinstance(shape[0], int) else None)
        self._input_name = inputs[0].name
        self._input_dtype = _NP_TYPES.get(inputs[0].type, np.float32)
        self.providers = list(session.get_providers())
        self._session = session

    def deactivate(self) -> None:
        self._session = None

    def prepare(self, batch: np.ndarray) -> Any:
        self._require_active()
        return {self._input_name: to_model_input(np.asarray(batch), layout=self._layout, dtype=self._input_dtype)}

    def infer(self, prepared: Any) -> Any:
        return self._session.run(None, prepared)[0]
