"""GPU compute time in python mode: CUDA events on the runner's stream, as trtexec times it, against a stand-in
CUDA runtime; without events, the host-clock figure is named for what it is.

trtexec's GPU Compute Time is the time between two CUDA events recorded on the stream around the enqueue
(``cudaEventRecord`` / ``cudaEventElapsedTime``, NVIDIA/TensorRT release/10.3 samples/common/sampleInference.cpp
and sampleUtils); a host clock around enqueue + synchronize also counts the launch overhead and the wait.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from edge_tl.runtime.base import CUDA_EVENT_CLOCK, HOST_ENQUEUE_CLOCK
from edge_tl.runtime.tensorrt_runner import TensorRTRunner
from edge_tl.trt import cuda as cuda_module
from edge_tl.trt.sidecar import EngineMetadata, write_sidecar

GPU_MS = 2.5  # the simulated engine's time on the GPU
HOST_MS = 20.0  # what the host spends launching it (sleep), which a GPU clock must not count


class StandinCudart:
    """libcudart's stream and event calls as edge-tl makes them through ctypes, over a simulated GPU clock:
    work enqueued on the stream advances the GPU clock, an event records the clock where it is enqueued."""

    def __init__(self) -> None:
        self.gpu_ms = 0.0
        self.stamps: dict[int, float] = {}
        self.created = self.destroyed = 0

    def cudaStreamCreate(self, ref) -> int:
        ref._obj.value = 0x5000
        return 0

    def cudaStreamSynchronize(self, stream) -> int:
        return 0

    def cudaStreamDestroy(self, stream) -> int:
        return 0

    def cudaEventCreate(self, ref) -> int:
        self.created += 1
        ref._obj.value = 0x100 + self.created
        return 0

    def cudaEventRecord(self, event, stream) -> int:
        assert stream.value == 0x5000  # on the runner's own stream
        self.stamps[event.value] = self.gpu_ms
        return 0

    def cudaEventSynchronize(self, event) -> int:
        return 0

    def cudaEventElapsedTime(self, ref, start, end) -> int:
        ref._obj.value = self.stamps[end.value] - self.stamps[start.value]
        return 0

    def cudaEventDestroy(self, event) -> int:
        self.destroyed += 1
        return 0


class NoEvents(StandinCudart):
    """A CUDA runtime without the event calls."""

    def __getattribute__(self, name: str):
        if name.startswith("cudaEvent"):
            raise AttributeError(name)
        return super().__getattribute__(name)


class Context:
    def __init__(self, cudart: StandinCudart) -> None:
        self.cudart = cudart

    def execute_async_v3(self, stream: int) -> bool:
        time.sleep(HOST_MS / 1000)
        self.cudart.gpu_ms += GPU_MS
        return True


class Api:
    @staticmethod
    def get(obj, name: str):
        return getattr(obj, name)


def _runner(tmp_path: Path, cudart: StandinCudart, monkeypatch) -> TensorRTRunner:
    monkeypatch.setattr(cuda_module, "_load", lambda names, what: cudart)
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the ctypes path, as on a device without torch
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"e")
    write_sidecar(engine, EngineMetadata("10.3.0", "Orin", "8.7", "fp16", "input", "logits", (3, 8, 8), None,
                                         {"artifact": "onnx-fp32"}, "trtexec", "jetson-agx-orin-64gb"))  # fmt: skip
    runner = TensorRTRunner(engine)
    runner._open_stream()
    runner._api, runner._context = Api(), Context(cudart)
    return runner


def test_gpu_compute_is_timed_between_cuda_events_on_the_stream(tmp_path: Path, monkeypatch) -> None:
    cudart = StandinCudart()
    runner = _runner(tmp_path, cudart, monkeypatch)
    assert runner.clock == CUDA_EVENT_CLOCK
    assert [runner.time_once(None) for _ in range(3)] == [GPU_MS] * 3  # the GPU's time, not the host's 20 ms
    assert cudart.created == 2  # two events, made once and reused
    runner._buffers.close()
    assert cudart.destroyed == 2


def test_without_events_the_host_clock_is_used_and_named(tmp_path: Path, monkeypatch) -> None:
    runner = _runner(tmp_path, NoEvents(), monkeypatch)
    assert runner.clock == HOST_ENQUEUE_CLOCK and runner.describe()["clock"] == HOST_ENQUEUE_CLOCK
    assert runner.time_once(None) >= HOST_MS  # launch overhead included: not GPU compute
    assert np.isfinite(runner.time_once(None))
