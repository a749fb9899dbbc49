"""TensorRT runner: sidecar checks here; real FP16/INT8 engines where TensorRT and a GPU exist."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from edge_tl.compile import BuildMode, CompileRequest, compile_run
from edge_tl.errors import MissingDependency, RunError
from edge_tl.runs import Run
from edge_tl.runtime import open_runner
from edge_tl.runtime.tensorrt_runner import TensorRTRunner, check_engine_compatible
from edge_tl.targets import Precision
from edge_tl.trt.cuda import GpuInfo
from edge_tl.trt.sidecar import EngineMetadata, read_sidecar, write_sidecar


def _meta(**kw) -> EngineMetadata:
    base = dict(
        tensorrt_version="10.3.0",
        gpu_name="Orin",
        compute_capability="8.7",
        precision="int8",
        input_name="input",
        output_name="logits",
        chw=(3, 8, 8),
        batch={"min": 1, "opt": 1, "max": 8},
        source={"artifact": "x"},
        builder="trtexec",
        target="jetson-orin-nano-8gb",
    )
    base.update(kw)
    return EngineMetadata(**base)


def test_mismatched_tensorrt_or_gpu_is_refused_with_what_to_rebuild() -> None:
    orin = GpuInfo("Orin", "8.7")
    check_engine_compatible(_meta(), tensorrt_version="10.3.0.30", gpu=orin, engine="m.engine")  # patch level is fine
    with pytest.raises(
        RunError,
        match=r"built with TensorRT 10.3.0 but this machine has TensorRT 8.6.2.*"
        r"edge-tl compile RUN --target jetson-orin-nano-8gb --precision int8",
    ):
        check_engine_compatible(_meta(), tensorrt_version="8.6.2", gpu=orin, engine="m.engine")
    with pytest.raises(
        RunError,
        match=r"built for Orin \(compute capability 8.7\) but this GPU is NVIDIA A100 \(8.0\).*build_engine.sh",
    ):
        check_engine_compatible(
            _meta(), tensorrt_version="10.3.0", gpu=GpuInfo("NVIDIA A100", "8.0"), engine="m.engine"
        )
    with pytest.raises(RunError, match="needs a CUDA GPU"):
        check_engine_compatible(_meta(), tensorrt_version="10.3.0", gpu=None, engine="m.engine")


def test_engine_runs_through_the_registry_and_needs_its_sidecar(tmp_path: Path) -> None:
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plain")
    with pytest.raises(RunError, match="has no sidecar"):
        open_runner(engine)
    write_sidecar(engine, _meta())
    assert read_sidecar(engine) == _meta(created=read_sidecar(engine).created)
    runner = open_runner(engine)
    assert isinstance(runner, TensorRTRunner) and runner.input_spec.batch is None
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(MissingDependency, match="'tensorrt' is required for the TensorRT runner"):
            with runner:
                pass
    (tmp_path / "model.engine.json").write_text('{"format": "something-else"}')
    with pytest.raises(RunError, match="not an edge-tl engine sidecar"):
        open_runner(engine)


# --------------------------------------------------------------------------- on a TensorRT machine


def _local_profile(tmp_path: Path) -> Path:
    """A target profile for this machine's GPU and TensorRT: the user-TOML path, for real."""
    import tensorrt

    from edge_tl.trt.cuda import local_gpu

    gpu = local_gpu()
    assert gpu is not None
    version = ".".join(tensorrt.__version__.split(".")[:3])
    path = tmp_path / "local-gpu.toml"
    path.write_text(
        f'name = "local-gpu"\ndescription = "{gpu.name}"\nkind = "dgpu"\nmemory_gb = 8\ndefault_runtime = "tensorrt"\n'
        'max_opset = 17\ncalibration_recipe = "tensorrt-int8-qdq"\nworkspace_mib = 1024\n'
        'fast_precisions = ["fp32", "fp16", "int8"]\npower_notes = "test machine"\n\n'
        f'[gpu]\narch = "local"\ncompute_capability = "{gpu.compute_capability}"\ndla_cores = 0\n\n'
        f'[tensorrt]\ndefault = "{version}"\n\n[[tensorrt.releases]]\nversion = "{version}"\ncuda = "local"\n'
    )
    return path


@pytest.fixture(scope="module")
def trt_run(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    from edge_tl.export import ExportConfig, export_run
    from edge_tl.export import Precision as ExportPrecision
    from edge_tl.quantize.api import QuantizeConfig, quantize_run

    root = tmp_path_factory.mktemp("trt") / "run"
    shutil.copytree(digits_run, root)
    run = Run.open(root)
    if not (run.has_artifact("onnx-fp32") and run.has_artifact("onnx-fp16")):
        export_run(root, config=ExportConfig(precisions=(ExportPrecision.FP32, ExportPrecision.FP16)))
    if not Run.open(root).has_artifact("onnx-int8-tensorrt-int8-qdq"):
        quantize_run(root, config=QuantizeConfig(recipe="tensorrt-int8-qdq"))
    return Run.open(root)


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("precision, min_agreement", [("fp16", 0.98), ("int8", 0.95)])
def test_engine_top1_agrees_with_onnxruntime(
    trt_run: Run, tmp_path: Path, precision: str, min_agreement: float
) -> None:
    from edge_tl.data import iter_batches, split_from_run
    from edge_tl.models import Preprocessing

    result = compile_run(
        trt_run,
        target=_local_profile(tmp_path),
        request=CompileRequest(precision=Precision(precision)),
        mode=BuildMode.BUILD,
    )
    assert result.built
    engine = Run.open(trt_run.root).artifact_path(result.engine_artifact.name)
    assert engine.read_bytes()[:4] != b'{"fo'  # the engine is plain; metadata is beside it
    prep = Preprocessing.from_dict(trt_run.require("preprocessing"))
    samples = split_from_run(trt_run).val[:128]
    agree = total = 0
    with (
        open_runner(trt_run, artifact=result.engine_artifact.name) as trt_runner,
        open_runner(trt_run, artifact="onnx-fp32") as ort_runner,
    ):
        for images, _labels in iter_batches(samples, prep, 8):
            agree += int((trt_runner.run(images).argmax(1) == ort_runner.run(images).argmax(1)).sum())
            total += len(images)
    assert total > 0 and agree / total >= min_agreement, f"{precision}: top-1 agreement {agree}/{total}"
