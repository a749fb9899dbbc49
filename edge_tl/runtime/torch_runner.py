"""PyTorch runner: CPU, or CUDA with optional FP16, channels-last and CUDA-graph replay."""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_tl._lazy import lazy_import
from edge_tl.errors import ConfigError
from edge_tl.runtime.base import Device, InputSpec, Runner, RunnerOptions

# Warm-up passes before capturing a CUDA graph: lets cuDNN pick its algorithms and
# the caching allocator settle, as the CUDA-graph documentation asks.
_CAPTURE_WARMUP = 3


class TorchRunner(Runner):
    """Runs a ``torch.nn.Module``.

    The module is kept on the CPU until :meth:`activate`, which moves a copy to the
    device (the caller's module is never changed). With ``cuda_graph`` the forward
    pass is captured once per batch size and replayed from a static input buffer:
    :meth:`prepare` copies the batch into that buffer, :meth:`infer` only replays.
    """

    backend = "torch"

    def __init__(
        self, model: Any, *, input_spec: InputSpec, name: str = "torch", options: RunnerOptions = RunnerOptions()
    ):
        super().__init__(name=name)
        self._source_model = model
        self._spec = input_spec
        self.options = options
        cuda_only = [flag for flag in ("fp16", "channels_last", "cuda_graph") if getattr(options, flag)]
        if options.device is Device.CPU and cuda_only:
            raise ConfigError(
                f"{', '.join(cuda_only)} need(s) the CUDA device in the PyTorch runner; "
                "drop the option or use --device cuda"
            )
        self._torch: Any = None
        self._model: Any = None
        self._device = "cpu"
        self._dtype: Any = None
        self._graphs: dict[tuple[int, ...], tuple[Any, Any, Any]] = {}
        self._saved_threads: int | None = None
        self._saved_tf32: tuple[bool, bool] | None = None

    @property
    def input_spec(self) -> InputSpec:
        return self._spec

    @property
    def device(self) -> str:
        return self._device

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            fp16=self.options.fp16, channels_last=self.options.channels_last, cuda_graph=self.options.cuda_graph
        )
        if self._device == "cuda" and self._torch is not None:
            info["gpu"] = self._torch.cuda.get_device_name()
        return info

    def activate(self) -> None:
        import copy

        torch = lazy_import("torch", purpose="the PyTorch runner")
        self._torch = torch
        wanted = self.options.device
        if wanted is Device.AUTO:
            wanted = Device.CUDA if torch.cuda.is_available() else Device.CPU
            if wanted is Device.CPU and (self.options.fp16 or self.options.channels_last or self.options.cuda_graph):
                raise ConfigError("fp16, channels_last and cuda_graph need CUDA, which this machine lacks; drop them")
        if wanted is Device.CUDA and not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked but torch.cuda.is_available() is False; use --device cpu")
        self._device = wanted.value
        self.clock = "cuda-event" if self._device == "cuda" else "perf_counter_ns"
        if self.options.threads is not None:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.options.threads)
        if self._device == "cuda" and not self.options.fp16:
            # FP32 means FP32: by default cuDNN runs float32 convolutions in TF32 (10-bit
            # mantissa), which moved the quickstart model's logits by 3e-2 on an H200 and
            # would make the verification reference itself inexact. Restored on exit.
            self._saved_tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        model = copy.deepcopy(self._source_model).eval()
        self._dtype = torch.float16 if self.options.fp16 else torch.float32
        model = model.to(device=self._device, dtype=self._dtype)
        if self.options.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self._model = model

    def deactivate(self) -> None:
        self._graphs.clear()
        self._model = None
        if self._device == "cuda" and self._torch is not None:
            self._torch.cuda.empty_cache()
        if self._saved_threads is not None and self._torch is not None:
            self._torch.set_num_threads(self._saved_threads)
            self._saved_threads = None
        if self._saved_tf32 is not None and self._torch is not None:
            self._torch.backends.cudnn.allow_tf32, self._torch.backends.cuda.matmul.allow_tf32 = self._saved_tf32
            self._saved_tf32 = None

    # ---- execution

    def _to_device(self, batch: np.ndarray) -> Any:
        torch = self._torch
        tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        tensor = tensor.to(device=self._device, dtype=self._dtype)
        if self.options.channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def prepare(self, batch: np.ndarray) -> Any:
        self._require_active()
        tensor = self._to_device(batch)
        if not self.options.cuda_graph:
            return tensor
        key = tuple(tensor.shape)
        if key not in self._graphs:
            self._graphs[key] = self._capture(tensor)
        static_in, _, _ = self._graphs[key]
        static_in.copy_(tensor)
        return key

    def _capture(self, example: Any) -> tuple[Any, Any, Any]:
        torch = self._torch
        static_in = example.clone()
        with torch.no_grad():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(_CAPTURE_WARMUP):
                    self._model(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._model(static_in)
        torch.cuda.synchronize()
        return static_in, graph, static_out

    def _launch(self, prepared: Any) -> Any:
        if self.options.cuda_graph:
            _, graph, static_out = self._graphs[prepared]
            graph.replay()
            return static_out
        with self._torch.no_grad():
            return self._model(prepared)

    def infer(self, prepared: Any) -> Any:
        out = self._launch(prepared)
        if self._device == "cuda":
            self._torch.cuda.synchronize()
        return out

    def fetch(self, output: Any) -> np.ndarray:
        return output.detach().float().cpu().numpy()

    def time_once(self, prepared: Any) -> float:
        if self._device != "cuda":
            return super().time_once(prepared)
        torch = self._torch
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        self._launch(prepared)
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
