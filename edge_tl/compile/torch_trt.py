"""``--via torch-tensorrt``: compile the fine-tuned PyTorch model directly, no ONNX.

For desktop and datacenter targets whose GPU is this machine's. torch-tensorrt's
engine-conversion API returns a plain serialized TensorRT engine, saved like any
other (same sidecar), so ``bench`` and ``verify`` treat both paths alike; building
the same target both ways cross-checks the ONNX path.

The torch-tensorrt names called here are listed in :data:`TORCH_TRT_CALLS`; a test
checks them against the Python sources of the release the ``tensorrt`` extra pins.
"""

from __future__ import annotations

from pathlib import Path

from edge_tl._lazy import lazy_import
from edge_tl.compile.trt_builder import BuildOutcome
from edge_tl.compile.trtexec_flags import BatchRange
from edge_tl.errors import ConfigError
from edge_tl.runs import Run, atomic_write_bytes
from edge_tl.targets import Precision

# name -> (module file inside the wheel, keyword arguments we pass)
TORCH_TRT_CALLS: dict[str, tuple[str, tuple[str, ...]]] = {
    "convert_method_to_trt_engine": (
        "torch_tensorrt/_compile.py",
        ("method_name", "inputs", "ir", "enabled_precisions"),
    ),
    "Input": ("torch_tensorrt/_Input.py", ("min_shape", "opt_shape", "max_shape", "dtype")),
}


def check_torch_tensorrt_matches(torch_version: str, torch_tensorrt_version: str) -> None:
    """torch-tensorrt 2.N is built against torch 2.N only (its wheels pin ``torch>=2.N,<2.N+1``)."""

    def series(version: str) -> tuple[int, int]:
        major, minor = version.split("+")[0].split(".")[:2]
        return int(major), int(minor)

    if series(torch_version) != series(torch_tensorrt_version):
        want = "{}.{}".format(*series(torch_version))
        raise ConfigError(
            f"torch-tensorrt {torch_tensorrt_version} is built for torch "
            f"{'{}.{}'.format(*series(torch_tensorrt_version))} "
            f'but torch is {torch_version}: install the matching one, pip install "torch-tensorrt=={want}.*" '
            "(on a Jetson, from NVIDIA's Jetson index; --via torch-tensorrt builds on a workstation GPU anyway)"
        )


def build_with_torch_tensorrt(
    run: Run, *, precision: Precision, chw: tuple[int, int, int], batch: BatchRange, engine: Path
) -> BuildOutcome:
    if precision is Precision.INT8:
        raise ConfigError("--via torch-tensorrt builds fp32 or fp16 here; INT8 needs the Q/DQ ONNX: use --via onnx")
    torch = lazy_import("torch", purpose="--via torch-tensorrt")
    torch_tensorrt = lazy_import("torch_tensorrt", purpose="--via torch-tensorrt")
    trt = lazy_import("tensorrt", purpose="--via torch-tensorrt")
    check_torch_tensorrt_matches(str(torch.__version__), str(torch_tensorrt.__version__))
    from edge_tl.models import load_run_model

    model = load_run_model(run).cuda().eval()
    c, h, w = chw
    lo, opt, hi = batch.min, batch.opt, batch.max
    spec = torch_tensorrt.Input(
        min_shape=(lo, c, h, w), opt_shape=(opt, c, h, w), max_shape=(hi, c, h, w), dtype=torch.float32
    )
    precisions = {torch.float32} if precision is Precision.FP32 else {torch.float16, torch.float32}
    serialized = torch_tensorrt.convert_method_to_trt_engine(
        model, method_name="forward", inputs=[spec], ir="dynamo", enabled_precisions=precisions
    )
    atomic_write_bytes(engine, bytes(serialized))
    flags = (f"torch-tensorrt={torch_tensorrt.__version__}", f"precisions={sorted(str(p) for p in precisions)}")
    return BuildOutcome(
        engine=engine,
        tensorrt_version=str(trt.__version__),
        flags=flags,
        log=(),
        io_names=_io_names(trt, bytes(serialized)),
    )


def _io_names(trt: object, serialized: bytes) -> tuple[str, str]:
    """torch-tensorrt names the engine's tensors itself: read them back for the sidecar."""
    from edge_tl.trt.trt_api import TrtApi, make_logger

    api = TrtApi(trt)  # type: ignore[arg-type]
    logger, _ = make_logger(api)
    engine = api.get(api.mod("Runtime")(logger), "deserialize_cuda_engine")(serialized)
    names = [api.get(engine, "get_tensor_name")(i) for i in range(api.get(engine, "num_io_tensors"))]
    mode_input = api.enum("TensorIOMode", "INPUT")
    inputs = [n for n in names if api.get(engine, "get_tensor_mode")(n) == mode_input]
    outputs = [n for n in names if n not in inputs]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ConfigError(
            f"torch-tensorrt made an engine with inputs {inputs} and outputs {outputs}; expected one of each"
        )
    return inputs[0], outputs[0]
