"""The stand-in trtexec refuses what each TensorRT release refuses, and every plan edge-tl writes passes it.

The option lists in tests/compile/trtexec_options/ are extracted from NVIDIA/TensorRT ``release/X.Y``
``samples/common/sampleOptions.cpp`` (each file names its branch and commit); trtexec fails with
"Unknown option" on anything else (``samples/trtexec/trtexec.cpp``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_tl.compile import CompileRequest, make_plan
from edge_tl.compile.trtexec_flags import bench_command
from edge_tl.errors import ConfigError, RunError
from edge_tl.runs import Run
from edge_tl.targets import list_targets

HERE = Path(__file__).parent
OPTIONS = HERE / "trtexec_options"
STANDIN = HERE.parent / "deploy" / "standin_trtexec.py"
_spec = importlib.util.spec_from_file_location("standin_trtexec", STANDIN)
standin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(standin)


def _release(version) -> tuple[int, int]:
    return version.major, version.minor


def _run_standin(tmp_path: Path, banner: str, *args: str) -> subprocess.CompletedProcess:
    log = tmp_path / f"{banner}.log"
    log.write_text(f"[I] === Performance summary ===\n&&&& PASSED TensorRT.trtexec [TensorRT {banner}] # trtexec\n")
    env = {**os.environ, "STANDIN_TRTEXEC_LOG": str(log), "STANDIN_TRTEXEC_OPTIONS": str(OPTIONS)}
    return subprocess.run([sys.executable, str(STANDIN), *args], env=env, capture_output=True, text=True, timeout=60)


def test_option_lists_name_their_source_and_differ_where_tensorrt_changed() -> None:
    for path in OPTIONS.glob("trtexec-*.txt"):
        head = path.read_text().splitlines()[1]
        assert "NVIDIA/TensorRT branch release/" in head and "samples/common/sampleOptions.cpp, commit " in head
    known = {v: standin.known_options(v, str(OPTIONS)) for v in [(8, 2), (8, 4), (10, 3), (11, 0)]}
    assert "--workspace" in known[(8, 2)] and "--memPoolSize" not in known[(8, 2)]  # memPoolSize arrives in 8.4
    assert {"--workspace", "--memPoolSize"} <= known[(8, 4)]  # --workspace deprecated but still parsed
    assert "--workspace" not in known[(10, 3)] and "--stronglyTyped" in known[(10, 3)]
    assert not {"--fp16", "--int8", "--best", "--calib"} & known[(11, 0)]
    assert {"--includeDataTransfers", "--noCudaGraph", "--stronglyTyped"} <= known[(11, 0)]
    assert standin.options_file((11, 4), str(OPTIONS)).endswith("trtexec-11.1.txt")  # newest published 11.x list


@pytest.mark.parametrize(
    "banner, args, error",
    [
        ("v100300", ["--onnx=m.onnx", "--workspace=1024"], "Unknown option: --workspace 1024"),
        ("v110401", ["--onnx=m.onnx", "--fp16"], "Unknown option: --fp16"),
        ("v110401", ["--onnx=m.onnx", "--int8"], "Unknown option: --int8"),
        ("v110401", ["--onnx=m.onnx", "--calib=c.cache"], "Unknown option: --calib c.cache"),
        ("v8201", ["--onnx=m.onnx", "--memPoolSize=workspace:1024"], "Unknown option: --memPoolSize workspace:1024"),
        ("v100300", ["--onnx=m.onnx", "--memPoolSize=workspac:1024"], "Unknown memory pool: workspac"),
        # A boolean flag's value is read as true, whatever it is (argsToArgumentsMap splits at '=',
        # stringToValue<bool> returns true: release/10.3 samples/common/sampleOptions.cpp).
        ("v100300", ["--onnx=m.onnx", "--fp16=1"], None),
        ("v100300", ["--onnx=m.onnx", "--fp16=0", "--useSpinWait=false"], None),
        ("v110401", ["--onnx=m.onnx", "--fp16=1"], "Unknown option: --fp16 1"),  # unknown, with or without value
        ("v100300", ["--onnx=m.onnx", "--minShapes=input:1x3x8"], None),
        ("v100300", ["--loadEngine=missing.engine"], "Cannot open --loadEngine file"),
    ],
)
def test_standin_refuses_what_the_release_refuses(
    tmp_path: Path, monkeypatch, banner: str, args: list[str], error: str | None
) -> None:
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    (tmp_path / "c.cache").write_text("TRT-100300-EntropyCalibration2\n")
    monkeypatch.chdir(tmp_path)
    proc = _run_standin(tmp_path, banner, *args, "--saveEngine=e.engine")
    if error is None:
        assert proc.returncode == 0 and "&&&& PASSED" in proc.stdout
        assert (tmp_path / "e.engine").read_bytes() == b"onnx"  # built: the stand-in's engine is the ONNX
        return
    assert proc.returncode == 1, proc.stdout
    assert f"[E] {error}" in proc.stdout and f"&&&& FAILED TensorRT.trtexec [TensorRT {banner}]" in proc.stdout
    assert not (tmp_path / "e.engine").exists()


def test_help_prints_the_banner_first(tmp_path: Path) -> None:
    proc = _run_standin(tmp_path, "v8502", "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("&&&& RUNNING TensorRT.trtexec [TensorRT v8502]")


def _every_plan(run: Run):
    """Every plan edge-tl can write for the shipped targets: each release, precision and DLA choice."""
    cache = "quantize/tensorrt-int8-cache/calibration.cache"
    for target in list_targets():
        for release in target.releases:
            # the calibration cache quantize --target/--tensorrt would write for this release
            run.path(cache).write_text(f"TRT-{release.version.library_version}-EntropyCalibration2\n")
            for precision in target.fast_precisions:
                for dla in (False, True) if target.gpu and target.gpu.dla_cores else (False,):
                    try:
                        yield make_plan(
                            run, target, CompileRequest(precision=precision, dla=dla, tensorrt=release.version)
                        )
                    except (ConfigError, RunError):
                        continue  # a combination the release cannot build is refused by the plan itself


def test_every_generated_plan_passes_the_standin_of_its_release(tmp_path: Path, run_factory, monkeypatch) -> None:
    run = run_factory(tmp_path / "run", opset=13)  # opset 13: within what every release parses, 8.2 included
    checked = set()
    monkeypatch.chdir(run.root)
    for plan in _every_plan(run):
        version = plan.release.version
        problem = standin.refusal(plan.argv[1:], _release(version), str(OPTIONS))
        assert problem == "", f"{plan.target.name} {version} {plan.precision.value}: {problem}: {plan.argv}"
        bench = bench_command("x.onnx", version, input_name="input", chw=(3, 8, 8), batch=1, export_times="t.json")
        Path("x.onnx").write_bytes(b"e")
        assert standin.refusal(bench[1:], _release(version), str(OPTIONS)) == ""
        if version.major >= 11:
            assert not {"--fp16", "--int8", "--best"} & set(plan.argv) and not any(
                a.startswith("--calib") for a in plan.argv
            )
        checked.add((plan.target.name, str(version), plan.precision.value, plan.spec.dla_core is not None))
    majors = {v.split(".")[0] for _, v, _, _ in checked}
    assert majors == {"8", "10", "11"} and len(checked) >= 60
    assert ("jetson-agx-orin-64gb", "11.4.1", "int8", True) in checked and (
        "jetson-nano",
        "8.2.1",
        "fp16",
        False,
    ) in checked


def test_export_output_has_trtexecs_format_and_deploy_reads_it(tmp_path: Path) -> None:
    from edge_tl.deploy.modes import exported_logits

    logits = np.array([[1.23456789, -2.5e-7, 3.0], [0.1, 0.2, 123456.789]], dtype=np.float32)
    out = tmp_path / "out.json"
    standin.export_output(str(out), "logits", logits)
    text = out.read_text()
    assert text.startswith(
        '[\n  { "name" : "logits"\n  , "dimensions" : "2x3"\n  , "values" : [ 1.23457, -2.5e-07, 3, '
    )
    assert json.loads(text)[0]["dimensions"] == "2x3"
    back = exported_logits(text.encode(), output="logits", count=2, classes=3, where="out.json")
    np.testing.assert_allclose(back, logits, rtol=5e-6)


def _time_with_standin(tmp_path: Path, log: str, argv: list[str], **env: str) -> subprocess.CompletedProcess:
    environ = {
        **os.environ,
        "STANDIN_TRTEXEC_LOG": str(HERE / "fixtures" / log),
        "STANDIN_TRTEXEC_OPTIONS": str(OPTIONS),
    }
    return subprocess.run(
        [sys.executable, str(STANDIN), *argv[1:]], env={**environ, **env}, capture_output=True, text=True, timeout=60
    )


def test_cuda_graphs_under_dla_on_11_are_not_asked_for_and_a_failed_capture_is_seen(tmp_path: Path) -> None:
    from edge_tl.bench.trtexec import parse_log
    from edge_tl.targets import TrtVersion

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"e")
    args = dict(input_name="input", chw=(3, 8, 8), batch=None, export_times=str(tmp_path / "t.json"))
    # 11.x turns CUDA graphs off under --useDLACore with a warning (release/11.0 sampleOptions.cpp): the
    # bench command asks for none there (--noCudaGraph), and the stand-in, like trtexec, then warns of nothing.
    eleven = bench_command(str(engine), TrtVersion(11, 1, 0), dla_core=0, **args)
    assert "--noCudaGraph" in eleven
    asked = [a for a in eleven if a != "--noCudaGraph"]
    log = tmp_path / "v110100.log"
    log.write_text((HERE / "fixtures" / "trtexec-10.16-rtx6000-ada.log").read_text().replace("v101600", "v110100"))
    said = _time_with_standin(tmp_path, str(log), asked)
    assert "The CUDA graph option has been disabled" in said.stdout and parse_log(said.stdout).cuda_graph_dropped
    assert not parse_log(_time_with_standin(tmp_path, str(log), eleven).stdout).cuda_graph_dropped
    # 8.x/10.x try the capture; an engine that cannot be captured is timed without the graph
    # ("The specified --useCudaGraph flag has been ignored", release/8.4 and release/10.3 sampleInference.cpp).
    ten = bench_command(str(engine), TrtVersion(10, 16, 0), dla_core=0, **args)
    assert "--useCudaGraph" in ten
    ok = _time_with_standin(tmp_path, "trtexec-10.16-rtx6000-ada.log", ten)
    assert ok.returncode == 0 and not parse_log(ok.stdout).cuda_graph_dropped
    ignored = _time_with_standin(tmp_path, "trtexec-8.4-jetson-agx-xavier.log", ten, STANDIN_TRTEXEC_UNCAPTURABLE="1")
    assert "--useCudaGraph flag has been ignored" in ignored.stdout and parse_log(ignored.stdout).cuda_graph_dropped


def test_the_plans_timing_section_says_no_cuda_graph_for_dla_on_11(tmp_path: Path, run_factory, monkeypatch) -> None:
    run = run_factory(tmp_path / "run", opset=13)
    monkeypatch.chdir(run.root)
    seen = {}
    for plan in _every_plan(run):
        timing = plan.to_dict()["timing"]
        dla, major = plan.spec.dla_core is not None, plan.release.version.major
        seen[(major, dla)] = (timing["cuda_graph"], "--noCudaGraph" in timing["flags"])
    assert seen[(11, True)] == (False, True)  # release/11.0 sampleOptions.cpp: graphs and DLA never together
    assert seen[(11, False)] == (True, False) and seen[(10, True)] == (True, False) and seen[(8, True)] == (True, False)


@pytest.mark.parametrize("log, written, end_to_end", [
    ("trtexec-8.2-jetson-nano.log", 6, True),  # 8.2: whole trace, with endToEndMs
    ("trtexec-8.4-jetson-agx-xavier.log", 6, False),  # 8.4: whole trace, no endToEndMs
    ("trtexec-10.16-rtx6000-ada.log", 3, False),  # 8.5 on: trace.begin() + nbWarmups
])  # fmt: skip
def test_export_times_have_each_releases_format_and_the_warmups_are_dropped(
    tmp_path: Path, log: str, written: int, end_to_end: bool
) -> None:
    # release/8.2, 8.4, 8.5 and 10.3 samples/common/sampleReporting.cpp, exportJSONTrace
    from edge_tl.bench.trtexec import parse_log, to_bench_results, warmup_ms

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"e")
    times = tmp_path / "t.json"
    argv = ["trtexec", f"--loadEngine={engine}", "--warmUp=500", "--iterations=3", f"--exportTimes={times}"]
    proc = _time_with_standin(tmp_path, log, argv)
    records = json.loads(times.read_text())
    assert len(records) == written and ("endToEndMs" in records[0]) is end_to_end
    bench = to_bench_results(parse_log(proc.stdout), batch_size=1, times=records, warmup_ms=warmup_ms(argv))
    summary = parse_log(proc.stdout).gpu_compute
    assert bench["gpu_compute"].iterations == 3  # three cold warm-ups before 500 ms, dropped where written
    assert bench["gpu_compute"].max_ms == summary.max_ms and bench["gpu_compute"].p50_ms == summary.median_ms
