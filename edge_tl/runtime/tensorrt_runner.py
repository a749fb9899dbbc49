"""TensorRT runner: loads a plain engine, checks its sidecar, runs with the name-based I/O API.

An engine only runs on the TensorRT version and GPU model that built it. The
sidecar (``<engine>.json``) says which; :meth:`TensorRTRunner.activate` compares it
with this machine and refuses a mismatch with the command that rebuilds it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from edge_tl._lazy import lazy_import
from edge_tl.errors import ConfigError, RunError
from edge_tl.runtime.base import CUDA_EVENT_CLOCK, HOST_ENQUEUE_CLOCK, InputSpec, Runner, RunnerOptions
from edge_tl.runtime.registry import ModelSource
from edge_tl.targets import TrtVersion
from edge_tl.trt.cuda import DeviceBuffers, GpuInfo, local_gpu
from edge_tl.trt.sidecar import EngineMetadata, read_sidecar
from edge_tl.trt.trt_api import TrtApi, make_logger


def check_engine_compatible(meta: EngineMetadata, *, tensorrt_version: str, gpu: GpuInfo | None, engine: str) -> None:
    """Refuse an engine built by another TensorRT release (major.minor.patch) or for another compute capability.

    A plan deserializes only on the TensorRT release that built it ("version numbers must match",
    TensorRT developer guide, engine compatibility), so the patch counts: 8.6.1 is not 8.6.2.
    """
    rebuild = (
        f"rebuild it here with `edge-tl compile RUN --target {meta.target} --precision {meta.precision}` "
        f"or on the device with the run's compile/{meta.target}-{meta.precision}/build_engine.sh"
    )
    built = TrtVersion.parse(meta.tensorrt_version)
    local = TrtVersion.parse(tensorrt_version)
    if built != local:
        raise RunError(
            f"engine {engine!r} was built with TensorRT {meta.tensorrt_version} but this machine has TensorRT "
            f"{tensorrt_version}; engines do not move between TensorRT versions: {rebuild}"
        )
    if gpu is None:
        raise RunError(f"engine {engine!r} needs a CUDA GPU and none was found (libcuda / cuInit failed)")
    if gpu.compute_capability != meta.compute_capability:
        raise RunError(
            f"engine {engine!r} was built for {meta.gpu_name} (compute capability {meta.compute_capability}) but this "
            f"GPU is {gpu.name} ({gpu.compute_capability}); {rebuild}"
        )


def open_tensorrt(source: ModelSource, options: RunnerOptions) -> "TensorRTRunner":
    """Opener for :func:`edge_tl.runtime.open_runner` (kind ``engine``)."""
    return TensorRTRunner(source.path, name=source.name, options=options)


class TensorRTRunner(Runner):
    backend = "tensorrt"

    @property
    def clock(self) -> str:  # type: ignore[override]
        """GPU compute from CUDA events on the stream (trtexec's definition); the host clock around the
        enqueue and the stream synchronisation where the CUDA runtime has no events (known once active)."""
        return self._clock

    def __init__(
        self, path: str | os.PathLike[str], *, name: str | None = None, options: RunnerOptions = RunnerOptions()
    ):
        self.path = Path(path)
        super().__init__(name=name or self.path.name)
        if not self.path.is_file():
            raise RunError(f"engine file {str(self.path)!r} does not exist")
        # A thread count is for CPU backends; bench and verify pass one option set to every
        # runner, so it is ignored here rather than refused.
        if options.fp16 or options.channels_last or options.cuda_graph:
            raise ConfigError(
                "fp16/channels_last/cuda_graph do not apply to a TensorRT engine: its precision is built in"
            )
        self.options = options
        self.meta = read_sidecar(self.path)
        self._api: TrtApi | None = None
        self._engine: Any = None
        self._context: Any = None
        self._buffers: DeviceBuffers | None = None
        self._inputs: dict[str, tuple[int, Any]] = {}
        self._outputs: dict[str, tuple[int, Any]] = {}
        self._max_batch = 1
        self._gpu: GpuInfo | None = None
        self._clock = CUDA_EVENT_CLOCK

    @property
    def input_spec(self) -> InputSpec:
        c, h, w = self.meta.chw
        return InputSpec(c, h, w, batch=None if self.meta.batch is not None else self._max_batch)

    @property
    def device(self) -> str:
        return "cuda"

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            path=str(self.path),
            tensorrt=self.meta.tensorrt_version,
            precision=self.meta.precision,
            gpu=self._gpu.name if self._gpu else self.meta.gpu_name,
            memory=self._buffers.backend if self._buffers else None,
        )
        return info

    def activate(self) -> None:
        trt = lazy_import("tensorrt", purpose="the TensorRT runner")
        api = TrtApi(trt)
        self._gpu = local_gpu()
        check_engine_compatible(self.meta, tensorrt_version=str(trt.__version__), gpu=self._gpu, engine=str(self.path))
        logger, _ = make_logger(api)
        runtime = api.mod("Runtime")(logger)
        if self.meta.dla_core is not None:
            # A DLA engine runs on the core the runtime names (IRuntime::setDLACore), default 0.
            runtime.DLA_core = int(self.meta.dla_core)
        engine = api.get(runtime, "deserialize_cuda_engine")(self.path.read_bytes())
        if engine is None:
            raise RunError(f"TensorRT {trt.__version__} refused to load {str(self.path)!r}; rebuild it on this machine")
        self._api, self._engine = api, engine
        self._context = api.get(engine, "create_execution_context")()
        self._open_stream()
        mode_input = api.enum("TensorIOMode", "INPUT")
        dtypes = {api.enum("DataType", "FLOAT"): np.float32, api.enum("DataType", "HALF"): np.float16}
        get_shape = api.get(engine, "get_tensor_shape")
        self._max_batch = self.meta.batch["max"] if self.meta.batch else int(get_shape(self.meta.input_name)[0])
        for i in range(api.get(engine, "num_io_tensors")):
            tensor = api.get(engine, "get_tensor_name")(i)
            dtype = dtypes.get(api.get(engine, "get_tensor_dtype")(tensor))
            if dtype is None:
                raise RunError(f"engine tensor {tensor!r} has a type edge-tl does not feed (only float32/float16)")
            shape = [self._max_batch if d < 0 else d for d in get_shape(tensor)]
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            ptr = self._buffers.alloc(nbytes)
            api.get(self._context, "set_tensor_address")(tensor, ptr)
            target = self._inputs if api.get(engine, "get_tensor_mode")(tensor) == mode_input else self._outputs
            target[tensor] = (ptr, dtype)
        if list(self._inputs) != [self.meta.input_name] or self.meta.output_name not in self._outputs:
            raise RunError(
                f"engine {str(self.path)!r} has inputs {list(self._inputs)} and outputs {list(self._outputs)}, but its "
                f"sidecar says {self.meta.input_name!r} -> {self.meta.output_name!r}; rebuild it"
            )

    def _open_stream(self) -> None:
        self._buffers = DeviceBuffers()
        self._clock = CUDA_EVENT_CLOCK if self._buffers.has_events else HOST_ENQUEUE_CLOCK

    def deactivate(self) -> None:
        if self._buffers is not None:
            for ptr, _ in [*self._inputs.values(), *self._outputs.values()]:
                self._buffers.free(ptr)
            self._buffers.close()
        self._inputs.clear()
        self._outputs.clear()
        self._context = self._engine = self._buffers = None

    def prepare(self, batch: np.ndarray) -> Any:
        self._require_active()
        if batch.shape[0] > self._max_batch:
            raise ConfigError(
                f"batch of {batch.shape[0]} is above the engine's maximum {self._max_batch}; "
                "rebuild with a larger --batch"
            )
        ptr, dtype = self._inputs[self.meta.input_name]
        self._buffers.to_device(ptr, np.ascontiguousarray(batch, dtype=dtype))
        if not self._api.get(self._context, "set_input_shape")(self.meta.input_name, tuple(batch.shape)):
            # TensorRT returns false for a shape outside the optimization profile and keeps the
            # previous one: running anyway would return stale output.
            profile = self.meta.batch or {"min": self._max_batch, "max": self._max_batch}
            raise ConfigError(
                f"input shape {tuple(batch.shape)} is outside engine {str(self.path)!r}'s profile (batch "
                f"{profile['min']}..{profile['max']}, {self.meta.chw}); rebuild with a matching --batch"
            )
        return int(batch.shape[0])

    def _enqueue(self) -> None:
        if not self._api.get(self._context, "execute_async_v3")(self._buffers.stream):
            raise RunError(f"TensorRT failed to run {str(self.path)!r}")

    def infer(self, prepared: Any) -> Any:
        self._enqueue()
        self._buffers.synchronize()
        return prepared

    def time_once(self, prepared: Any) -> float:
        """GPU milliseconds of one inference between CUDA events on the stream, or the host clock without them."""
        if self._buffers is None or not self._buffers.has_events:
            return super().time_once(prepared)
        return self._buffers.elapsed_ms(self._enqueue)

    def fetch(self, output: Any) -> np.ndarray:
        ptr, dtype = self._outputs[self.meta.output_name]
        shape = tuple(self._api.get(self._context, "get_tensor_shape")(self.meta.output_name))
        host = np.empty(shape, dtype=dtype)
        self._buffers.to_host(ptr, host)
        return host.astype(np.float32)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for any batch size: batches above the engine's profile maximum go in chunks."""
        batch = np.asarray(batch)
        if self.meta.batch is None or batch.ndim != 4 or batch.shape[0] <= self._max_batch:
            return super().run(batch)
        step = self._max_batch
        chunks = []
        for start in range(0, batch.shape[0], step):
            chunks.append(super().run(batch[start : start + step]))
        return np.concatenate(chunks)
