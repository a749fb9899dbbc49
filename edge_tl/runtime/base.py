"""The one interface every backend implements.

A runner is a context manager: constructing it is cheap and touches no device;
``__enter__`` loads the model and allocates device memory, ``__exit__`` frees it.
Inside the ``with`` block, :meth:`Runner.run` maps an NCHW float32 batch to float32
logits.

For timing, the work is split in three so that a benchmark times only the model:
:meth:`Runner.prepare` (host -> device copy, dtype and layout conversion; outside
the timed region), :meth:`Runner.infer` (the model, complete when it returns) and
:meth:`Runner.fetch` (device -> host). :meth:`Runner.time_once` times one ``infer``
with the clock that fits the device: ``perf_counter_ns`` on the CPU, CUDA events
on a GPU (a GPU runner overrides it).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_tl.errors import ConfigError, RunError
from edge_tl.vocab import Device

#: The clock of a GPU compute time measured between CUDA events on the stream (trtexec's definition).
CUDA_EVENT_CLOCK = "cuda-event"
#: The host clock around an enqueue and the stream synchronisation, where there are no CUDA events.
HOST_ENQUEUE_CLOCK = "perf_counter_ns (enqueue + stream sync)"


@dataclass(frozen=True)
class InputSpec:
    """What a runner accepts: ``batch`` is ``None`` when any batch size works."""

    channels: int
    height: int
    width: int
    batch: int | None = None

    def shape(self, batch_size: int) -> tuple[int, int, int, int]:
        return (batch_size, self.channels, self.height, self.width)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch if self.batch is not None else "dynamic",
            "chw": [self.channels, self.height, self.width],
        }


@dataclass(frozen=True)
class RunnerOptions:
    """Options a backend may use; each backend reads the ones that apply to it.

    ``threads``: intra-op CPU threads (``None`` = library default).
    ``fp16``/``channels_last``/``cuda_graph``: PyTorch on CUDA only.
    """

    device: Device = Device.AUTO
    threads: int | None = None
    fp16: bool = False
    channels_last: bool = False
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        try:
            # frozen dataclass: normalise "cpu" to Device.CPU once, here
            object.__setattr__(self, "device", Device(self.device))
        except ValueError as exc:
            raise ConfigError(f"device {self.device!r} is not one of {[d.value for d in Device]}") from exc
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}; leave it unset for the library default")


class Runner(ABC):
    """Base class of all runners (see the module docstring for the contract)."""

    #: backend name as used by :func:`edge_tl.runtime.open_runner` (e.g. "torch", "onnxruntime")
    backend: str = ""
    #: the clock :meth:`time_once` uses, recorded with every benchmark
    clock: str = "perf_counter_ns"

    def __init__(self, *, name: str) -> None:
        self.name = name
        self._active = False

    # ---- lifetime

    def __enter__(self) -> "Runner":
        if self._active:
            raise RunError(f"runner {self.name!r} is already active; enter it once")
        self.activate()
        self._active = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._active:
            self._active = False
            self.deactivate()

    @abstractmethod
    def activate(self) -> None:
        """Load the model and allocate device resources."""

    @abstractmethod
    def deactivate(self) -> None:
        """Release everything :meth:`activate` allocated."""

    def _require_active(self) -> None:
        if not self._active:
            raise RunError(f"runner {self.name!r} is not active: use it inside a `with` block")

    # ---- description

    @property
    @abstractmethod
    def input_spec(self) -> InputSpec:
        """Input shape (valid after activation)."""

    @property
    def device(self) -> str:
        return "cpu"

    def describe(self) -> dict[str, Any]:
        """What was run and how, for benchmark and verification records."""
        return {"name": self.name, "backend": self.backend, "device": self.device, "clock": self.clock}

    # ---- execution

    def prepare(self, batch: np.ndarray) -> Any:
        """Make ``batch`` ready for :meth:`infer` (copy to device, convert dtype/layout)."""
        return np.ascontiguousarray(batch, dtype=np.float32)

    @abstractmethod
    def infer(self, prepared: Any) -> Any:
        """Run the model on a prepared batch; the work is complete when this returns."""

    def fetch(self, output: Any) -> np.ndarray:
        """Bring :meth:`infer`'s output to the host as float32."""
        return np.asarray(output, dtype=np.float32)

    def time_once(self, prepared: Any) -> float:
        """Milliseconds one :meth:`infer` takes."""
        start = time.perf_counter_ns()
        self.infer(prepared)
        return (time.perf_counter_ns() - start) / 1e6

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for an NCHW float32 batch of any size.

        A runner with a fixed batch size gets the batch in chunks of that size, the
        last one padded with zeros whose outputs are dropped.
        """
        self._require_active()
        batch = np.asarray(batch)
        spec = self.input_spec
        if batch.ndim != 4 or tuple(batch.shape[1:]) != (spec.channels, spec.height, spec.width):
            raise ConfigError(
                f"runner {self.name!r} takes NCHW batches of shape (N, {spec.channels}, {spec.height}, {spec.width}); "
                f"got {tuple(batch.shape)}. Preprocess with the run's preprocessing contract."
            )
        fixed = spec.batch
        if fixed is None or batch.shape[0] == fixed:
            return self.fetch(self.infer(self.prepare(batch)))
        outputs = []
        for start in range(0, batch.shape[0], fixed):
            chunk = batch[start : start + fixed]
            real = chunk.shape[0]
            if real < fixed:
                pad = np.zeros((fixed - real, *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            outputs.append(self.fetch(self.infer(self.prepare(chunk)))[:real])
        return np.concatenate(outputs)
