"""Runners: lifetime, PyTorch vs ONNX Runtime on the same tiny model, fixed batches, the factory."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from edge_tl.errors import ConfigError, RunError  # noqa: E402
from edge_tl.export.onnx_export import convert_to_fp16, export_torch_to_onnx, save_model  # noqa: E402
from edge_tl.runtime import Device, InputSpec, RunnerOptions, open_runner  # noqa: E402
from edge_tl.runtime.onnxruntime_runner import OnnxRuntimeRunner, choose_providers  # noqa: E402
from edge_tl.runtime.torch_runner import TorchRunner  # noqa: E402

SIZE = 16


def tiny_model() -> "torch.nn.Module":
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU6(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 5),
    ).eval()


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("runners")
    model = tiny_model()
    dynamic = export_torch_to_onnx(model, root / "dyn.onnx", input_size=SIZE)
    export_torch_to_onnx(model, root / "static2.onnx", input_size=SIZE, dynamic_batch=False, batch_size=2)
    save_model(convert_to_fp16(dynamic, keep_io_types=False), root / "fp16io.onnx")
    return model, root


def batch(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 3, SIZE, SIZE), dtype=np.float32)


def test_torch_runner_matches_the_module_and_needs_the_with_block() -> None:
    model = tiny_model()
    runner = TorchRunner(
        model, input_spec=InputSpec(3, SIZE, SIZE), options=RunnerOptions(device=Device.CPU, threads=1)
    )
    x = batch(3)
    with pytest.raises(RunError, match="with"):
        runner.run(x)
    before = torch.get_num_threads()
    with runner:
        assert torch.get_num_threads() == 1
        out = runner.run(x)
        assert runner.time_once(runner.prepare(x)) > 0
    assert torch.get_num_threads() == before
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    assert out.dtype == np.float32


def test_torch_runner_refuses_cuda_options_on_cpu() -> None:
    with pytest.raises(ConfigError, match="CUDA"):
        TorchRunner(
            tiny_model(), input_spec=InputSpec(3, SIZE, SIZE), options=RunnerOptions(device=Device.CPU, cuda_graph=True)
        )


def test_onnxruntime_runner_matches_torch_and_describes_itself(onnx_files) -> None:
    model, root = onnx_files
    x = batch(5)
    with OnnxRuntimeRunner(root / "dyn.onnx", options=RunnerOptions(device=Device.CPU, threads=1)) as runner:
        assert runner.input_spec == InputSpec(3, SIZE, SIZE, batch=None)
        out = runner.run(x)
        info = runner.describe()
    with torch.no_grad():
        np.testing.assert_allclose(out, model(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)
    assert info["providers"] == ["CPUExecutionProvider"] and info["threads"] == 1 and info["backend"] == "onnxruntime"


def test_fixed_batch_is_fed_in_padded_chunks(onnx_files) -> None:
    _, root = onnx_files
    x = batch(5)
    with OnnxRuntimeRunner(root / "dyn.onnx", options=RunnerOptions(device=Device.CPU)) as dyn:
        expected = dyn.run(x)
    with OnnxRuntimeRunner(root / "static2.onnx", options=RunnerOptions(device=Device.CPU)) as fixed:
        assert fixed.input_spec.batch == 2
        out = fixed.run(x)
        with pytest.raises(ConfigError, match="NCHW"):
            fixed.run(x[:, :, :8])
    assert out.shape == (5, 5)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_float16_io_model_is_fed_float16_and_returns_float32(onnx_files) -> None:
    _, root = onnx_files
    x = batch(4)
    with OnnxRuntimeRunner(root / "dyn.onnx", options=RunnerOptions(device=Device.CPU)) as ref:
        expected = ref.run(x)
    with OnnxRuntimeRunner(root / "fp16io.onnx", options=RunnerOptions(device=Device.CPU)) as half:
        out = half.run(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=2e-2)


def test_provider_choice() -> None:
    everything = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(Device.AUTO, everything) == everything
    assert choose_providers(Device.CPU, everything) == ["CPUExecutionProvider"]
    assert choose_providers(Device.AUTO, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers(Device.CUDA, ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    with pytest.raises(ConfigError, match="onnxruntime-gpu"):
        choose_providers(Device.CUDA, ["CPUExecutionProvider"])


def test_open_runner_picks_the_backend_by_kind(onnx_files, tmp_path) -> None:
    _, root = onnx_files
    runner = open_runner(root / "dyn.onnx", options=RunnerOptions(device=Device.CPU))
    assert isinstance(runner, OnnxRuntimeRunner)
    with pytest.raises(ConfigError, match="cannot run"):
        open_runner(root / "dyn.onnx", backend="torch")
    with pytest.raises(ConfigError, match="Known"):
        open_runner(root / "dyn.onnx", backend="onnxrun")
    odd = tmp_path / "model.bin"
    odd.write_bytes(b"x")
    with pytest.raises(ConfigError, match="cannot tell"):
        open_runner(odd)
    with pytest.raises(ConfigError, match="fp16"):
        open_runner(root / "dyn.onnx", options=RunnerOptions(fp16=True))


def test_backend_registry_refuses_duplicates_and_second_defaults() -> None:
    from edge_tl.runtime import Backend, register_backend
    from edge_tl.runtime.registry import default_backend_name

    with pytest.raises(ConfigError, match="already registered"):
        register_backend(Backend("torch", kinds=("checkpoint",), opener="x:y"))
    with pytest.raises(ConfigError, match="already has the default backend 'onnxruntime'"):
        register_backend(Backend("another-onnx", kinds=("onnx",), opener="x:y", default_for=("onnx",)))
    assert default_backend_name("onnx") == "onnxruntime"
    with pytest.raises(ConfigError, match="no backend runs models of kind 'weird'"):
        default_backend_name("weird")


@pytest.mark.gpu
def test_torch_cuda_graph_fp16_channels_last_matches_cpu() -> None:
    model = tiny_model()
    x = batch(4)
    with TorchRunner(model, input_spec=InputSpec(3, SIZE, SIZE), options=RunnerOptions(device=Device.CPU)) as cpu:
        expected = cpu.run(x)
    options = RunnerOptions(device=Device.CUDA, fp16=True, channels_last=True, cuda_graph=True)
    with TorchRunner(model, input_spec=InputSpec(3, SIZE, SIZE), options=options) as gpu:
        assert gpu.clock == "cuda-event"
        out = gpu.run(x)
        again = gpu.run(x[::-1].copy())  # the same captured graph, new input through the static buffer
        assert gpu.time_once(gpu.prepare(x)) > 0
    np.testing.assert_allclose(out, expected, atol=2e-2)
    np.testing.assert_allclose(again, expected[::-1], atol=2e-2)


@pytest.mark.gpu
def test_torch_cuda_fp32_is_true_fp32_and_restores_tf32_settings() -> None:
    import torch

    model = tiny_model()
    x = batch(4)
    with TorchRunner(model, input_spec=InputSpec(3, SIZE, SIZE), options=RunnerOptions(device=Device.CPU)) as cpu:
        expected = cpu.run(x)
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    with TorchRunner(model, input_spec=InputSpec(3, SIZE, SIZE), options=RunnerOptions(device=Device.CUDA)) as gpu:
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        out = gpu.run(x)
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
