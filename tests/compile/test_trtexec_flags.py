"""trtexec_flags at the release boundaries, and each refusal word for word (the message is the user's only fix).

The option lists are test data in tests/compile/trtexec_options/, each extracted from NVIDIA/TensorRT
``release/X.Y`` ``samples/common/sampleOptions.cpp`` (named on its first lines).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge_tl.compile.trtexec_flags import (
    BatchRange,
    BuildSpec,
    SourceKind,
    bench_command,
    build_command,
    precision_flags,
    timing_flags,
)
from edge_tl.errors import ConfigError
from edge_tl.targets import Precision, TrtVersion

OPTIONS = Path(__file__).parent / "trtexec_options"


def _options(release: str) -> set[str]:
    return {
        line.strip() for line in (OPTIONS / f"trtexec-{release}.txt").read_text().splitlines() if line.startswith("--")
    }


def _spec(precision: Precision = Precision.FP16, kind: SourceKind = SourceKind.FP32, **kw) -> BuildSpec:
    base = dict(
        onnx="m.onnx",
        engine="m.engine",
        precision=precision,
        source_kind=kind,
        input_name="x",
        chw=(3, 32, 64),
        workspace_mib=512,
        batch=BatchRange(1, 2, 4),
    )
    base.update(kw)
    return BuildSpec(**base)


def test_workspace_flag_changes_at_8_4() -> None:
    # release/8.2 sampleOptions.cpp has only --workspace; release/8.4 adds --memPoolSize and deprecates
    # --workspace; release/10.3 no longer has --workspace at all.
    assert "--memPoolSize" not in _options("8.2") and "--workspace" in _options("8.2")
    assert "--memPoolSize" in _options("8.4") and "--workspace" not in _options("10.3")
    assert "--workspace=512" in build_command(_spec(), TrtVersion(8, 2, 1))
    for version in (TrtVersion(8, 4, 0), TrtVersion(8, 5, 2)):
        argv = build_command(_spec(), version)
        assert "--memPoolSize=workspace:512" in argv and not any(a.startswith("--workspace") for a in argv)


def test_shapes_keep_height_and_width_apart() -> None:
    argv = build_command(_spec(), TrtVersion(10, 3, 0))
    assert argv[3:6] == ["--minShapes=x:1x3x32x64", "--optShapes=x:2x3x32x64", "--maxShapes=x:4x3x32x64"]
    assert "--shapes=x:2x3x32x64" in bench_command(
        "e", TrtVersion(10, 3, 0), input_name="x", chw=(3, 32, 64), batch=2, export_times="t.json"
    )


def test_bench_command_names_the_dla_core() -> None:
    argv = bench_command(
        "e", TrtVersion(8, 5, 2), input_name="x", chw=(3, 8, 8), batch=None, export_times="t.json", dla_core=0
    )
    assert argv[-2:] == ["--useDLACore=0", "--exportTimes=t.json"]
    assert "--useDLACore" in _options("8.5")


def test_timing_flags_flip_from_11_0() -> None:
    # release/11.0 samples/common/sampleOptions.cpp: copies excluded and CUDA graphs on by default, so edge-tl
    # asks for --includeDataTransfers and, without graphs, --noCudaGraph; both exist from 11.0 only.
    for flag in ("--includeDataTransfers", "--noCudaGraph"):
        assert flag in _options("11.0") and flag not in _options("10.13")
    meaning = {"data_transfers": True, "spin_wait": True, "cuda_graph": False}
    assert timing_flags(TrtVersion(11, 0, 0), cuda_graph=False) == (
        ["--includeDataTransfers", "--noCudaGraph"],
        meaning,
    )
    assert timing_flags(TrtVersion(10, 16, 0), cuda_graph=False) == (["--useSpinWait"], meaning)
    for release, version in (("10.13", TrtVersion(10, 13, 3)), ("11.0", TrtVersion(11, 0, 0))):
        for cuda_graph in (True, False):
            assert set(timing_flags(version, cuda_graph=cuda_graph)[0]) <= _options(release)


@pytest.mark.parametrize("text", ["1,a,8", "1,2", "", "0x4", "1,2,3,4"])
def test_batch_text_refused_whole(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        BatchRange.parse(text)
    assert str(err.value) == f"--batch {text!r}: give MIN,OPT,MAX (e.g. 1,1,8) or one batch size"


V103, V114 = TrtVersion(10, 3, 0), TrtVersion(11, 4, 1)


@pytest.mark.parametrize(
    "version, precision, source, calib, message",
    [
        (V103, Precision.FP32, SourceKind.QDQ, None, "an FP32 engine is built from the FP32 ONNX, not a qdq one"),
        (
            V114,
            Precision.FP16,
            SourceKind.FP32,
            None,
            "TensorRT 11.4.1 has no --fp16 flag: FP16 engines are built strongly typed from the FP16 ONNX (onnx-fp16); "
            "run `edge-tl export RUN --precision fp16`",
        ),
        (
            V103,
            Precision.FP16,
            SourceKind.FP16,
            None,
            "TensorRT 10.3.0 builds FP16 from the FP32 ONNX with --fp16, not from a fp16 ONNX",
        ),
        (
            V103,
            Precision.INT8,
            SourceKind.QDQ,
            "c.cache",
            "a Q/DQ ONNX carries its own scales: do not pass a calibration cache with it",
        ),
        (
            V114,
            Precision.INT8,
            SourceKind.FP32,
            "c.cache",
            "TensorRT 11.4.1 removed calibrators and --int8: build INT8 from the Q/DQ ONNX (recipe tensorrt-int8-qdq)",
        ),
        (
            V103,
            Precision.INT8,
            SourceKind.FP32,
            None,
            "INT8 from the FP32 ONNX needs a calibration cache (recipe tensorrt-int8-cache)",
        ),
        (
            V103,
            Precision.INT8,
            SourceKind.FP16,
            None,
            "INT8 engines are built from a Q/DQ ONNX or from the FP32 ONNX with a calibration cache",
        ),
        (
            V103,
            Precision.FP8,
            SourceKind.FP32,
            None,
            "trtexec builds fp32, fp16 or int8 engines; fp8 is not supported yet",
        ),
        (
            V103,
            Precision.FP4,
            SourceKind.FP32,
            None,
            "trtexec builds fp32, fp16 or int8 engines; fp4 is not supported yet",
        ),
        (
            TrtVersion(9, 3, 0),
            Precision.FP16,
            SourceKind.FP32,
            None,
            "TensorRT 9.3.0 is not supported: edge-tl writes build flags for TensorRT 8.x, 10.x, 11.x",
        ),
    ],
)
def test_precision_refusals_word_for_word(version, precision, source, calib, message) -> None:
    with pytest.raises(ConfigError) as err:
        precision_flags(version, precision, source, calib=calib)
    assert str(err.value) == message


def test_dla_refusals_word_for_word() -> None:
    with pytest.raises(ConfigError) as err:
        build_command(_spec(Precision.FP32, dla_core=0), V103)
    assert str(err.value) == "DLA runs FP16 and INT8 only: choose --precision fp16 or int8, or --no-dla"
    with pytest.raises(ConfigError) as err:
        build_command(_spec(dla_core=0), V103)
    assert str(err.value) == (
        "DLA has no dynamic shapes: min = opt = max is required, got --batch 1,2,4; "
        "give one batch size (e.g. --batch 2)"
    )
    assert re.search(
        r"--useDLACore=1 --allowGPUFallback",
        " ".join(build_command(_spec(dla_core=1, batch=BatchRange(2, 2, 2)), V103)),
    )
