"""The little CUDA a TensorRT runner needs, without pycuda.

Device memory, copies, a stream and the CUDA events that time work on it come from
torch when it is installed with CUDA (it already holds a CUDA context), else from
ctypes over ``libcudart`` (the runtime API, as Polygraphy does). The GPU's name and
compute capability come from the driver API (``libcuda``), which every CUDA machine has.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_tl.errors import MissingDependency, RunError

_CUDART_NAMES = ("cudart", "libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0")
_CUDA_MEMCPY_HOST_TO_DEVICE = 1
_CUDA_MEMCPY_DEVICE_TO_HOST = 2
_CU_ATTR_CC_MAJOR = 75
_CU_ATTR_CC_MINOR = 76
_EVENT_CALLS = (
    "cudaEventCreate",
    "cudaEventRecord",
    "cudaEventSynchronize",
    "cudaEventElapsedTime",
    "cudaEventDestroy",
)


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.7"


def _load(names: tuple[str, ...], what: str) -> ctypes.CDLL:
    for name in names:
        path = ctypes.util.find_library(name) if "." not in name else name
        if not path:
            continue
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    raise MissingDependency(
        f"{what} could not be loaded (tried {', '.join(names)}); install the CUDA runtime or torch with CUDA"
    )


def local_gpu(device: int = 0) -> GpuInfo | None:
    """Name and compute capability of GPU ``device``, or ``None`` without a usable driver."""
    try:
        cuda = _load(("cuda", "libcuda.so.1"), "the CUDA driver (libcuda)")
    except MissingDependency:
        return None
    if cuda.cuInit(0) != 0:
        return None
    handle = ctypes.c_int()
    if cuda.cuDeviceGet(ctypes.byref(handle), device) != 0:
        return None
    name = ctypes.create_string_buffer(256)
    major, minor = ctypes.c_int(), ctypes.c_int()
    if (
        cuda.cuDeviceGetName(name, 256, handle) != 0
        or cuda.cuDeviceGetAttribute(ctypes.byref(major), _CU_ATTR_CC_MAJOR, handle) != 0
        or cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CU_ATTR_CC_MINOR, handle) != 0
    ):
        return None
    return GpuInfo(name=name.value.decode(errors="replace"), compute_capability=f"{major.value}.{minor.value}")


class DeviceBuffers:
    """Device memory and one stream; ``torch`` when available with CUDA, else libcudart."""

    def __init__(self) -> None:
        self._torch: Any = None
        try:
            import torch

            if torch.cuda.is_available():
                self._torch = torch
        except ImportError:
            pass
        self._cudart: ctypes.CDLL | None = None
        self._tensors: dict[int, Any] = {}
        if self._torch is not None:
            self._stream_obj = self._torch.cuda.Stream()
            self.stream = int(self._stream_obj.cuda_stream)
        else:
            self._cudart = _load(_CUDART_NAMES, "the CUDA runtime (libcudart)")
            stream = ctypes.c_void_p()
            self._check(self._cudart.cudaStreamCreate(ctypes.byref(stream)), "cudaStreamCreate")
            self.stream = int(stream.value or 0)
        self.backend = "torch" if self._torch is not None else "cudart"
        self._events: tuple[Any, Any] | None = None
        self.has_events = self._torch is not None or all(hasattr(self._cudart, call) for call in _EVENT_CALLS)

    def elapsed_ms(self, launch: Any) -> float:
        """Milliseconds of GPU time between two CUDA events recorded on the stream around ``launch()``.

        What trtexec calls GPU compute time: ``cudaEventRecord`` on the stream before and after the
        enqueue, ``cudaEventElapsedTime`` between them (samples/common/sampleInference.cpp), so
        host-side enqueue overhead and the wait for the stream are not counted.
        """
        if self._torch is not None:
            torch = self._torch
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(self._stream_obj)
            launch()
            end.record(self._stream_obj)
            end.synchronize()
            return float(start.elapsed_time(end))
        rt = self._rt
        if self._events is None:
            start, end = ctypes.c_void_p(), ctypes.c_void_p()
            self._check(rt.cudaEventCreate(ctypes.byref(start)), "cudaEventCreate")
            self._check(rt.cudaEventCreate(ctypes.byref(end)), "cudaEventCreate")
            self._events = (start, end)
        start, end = self._events
        stream = ctypes.c_void_p(self.stream)
        self._check(rt.cudaEventRecord(start, stream), "cudaEventRecord")
        launch()
        self._check(rt.cudaEventRecord(end, stream), "cudaEventRecord")
        self._check(rt.cudaEventSynchronize(end), "cudaEventSynchronize")
        ms = ctypes.c_float()
        self._check(rt.cudaEventElapsedTime(ctypes.byref(ms), start, end), "cudaEventElapsedTime")
        return float(ms.value)

    @property
    def _rt(self) -> ctypes.CDLL:
        if self._cudart is None:
            raise RuntimeError("libcudart is not loaded: this DeviceBuffers uses torch")
        return self._cudart

    def _check(self, status: int, call: str) -> None:
        if status != 0:
            raise RunError(f"{call} failed with CUDA error {status}")

    def alloc(self, nbytes: int) -> int:
        if self._torch is not None:
            tensor = self._torch.empty(max(nbytes, 1), dtype=self._torch.uint8, device="cuda")
            self._tensors[int(tensor.data_ptr())] = tensor
            return int(tensor.data_ptr())
        ptr = ctypes.c_void_p()
        self._check(self._rt.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(nbytes, 1))), "cudaMalloc")
        return int(ptr.value or 0)

    def free(self, ptr: int) -> None:
        if self._torch is not None:
            self._tensors.pop(ptr, None)
        elif self._cudart is not None:
            self._cudart.cudaFree(ctypes.c_void_p(ptr))

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        self._copy(ptr, array.ctypes.data, array.nbytes, _CUDA_MEMCPY_HOST_TO_DEVICE)

    def to_host(self, ptr: int, array: np.ndarray) -> None:
        self._copy(array.ctypes.data, ptr, array.nbytes, _CUDA_MEMCPY_DEVICE_TO_HOST)

    def _copy(self, dst: int, src: int, nbytes: int, kind: int) -> None:
        if self._torch is not None:
            # Wrap the raw pointers as byte tensors and copy on our stream.
            torch = self._torch
            with torch.cuda.stream(self._stream_obj):
                if kind == _CUDA_MEMCPY_HOST_TO_DEVICE:
                    host = torch.frombuffer((ctypes.c_char * nbytes).from_address(src), dtype=torch.uint8)
                    self._tensors[dst][:nbytes].copy_(host, non_blocking=False)
                else:
                    host = torch.frombuffer((ctypes.c_char * nbytes).from_address(dst), dtype=torch.uint8)
                    host.copy_(self._tensors[src][:nbytes], non_blocking=False)
            return
        self._check(
            self._rt.cudaMemcpyAsync(
                ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes), kind, ctypes.c_void_p(self.stream)
            ),
            "cudaMemcpyAsync",
        )
        self.synchronize()

    def synchronize(self) -> None:
        if self._torch is not None:
            self._stream_obj.synchronize()
        elif self._cudart is not None:
            self._check(self._cudart.cudaStreamSynchronize(ctypes.c_void_p(self.stream)), "cudaStreamSynchronize")

    def close(self) -> None:
        if self._torch is None and self._cudart is not None:
            for event in self._events or ():
                self._cudart.cudaEventDestroy(event)
            self._events = None
            self._cudart.cudaStreamDestroy(ctypes.c_void_p(self.stream))
        self._tensors.clear()
