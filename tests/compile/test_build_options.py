"""The Jetson build options, one flag each, planned per release and refused where the release lacks the flag.

Each flag must be in the option list of the release it is planned for (tests/compile/trtexec_options/, extracted
from NVIDIA/TensorRT ``release/X.Y`` ``samples/common/sampleOptions.cpp``): ``--versionCompatible`` and
``--builderOptimizationLevel`` first appear in release/8.6; ``--buildOnly`` is 8.2 to 8.5's build-only flag, which
release/8.6 deprecates for ``--skipInference`` ("--buildOnly flag has been deprecated by --skipInference flag").
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from edge_tl.compile import CompileRequest, make_plan
from edge_tl.compile.trtexec_flags import build_option_flags
from edge_tl.errors import ConfigError
from edge_tl.runs import Run
from edge_tl.targets import Precision, TrtVersion, load_target

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("standin_trtexec", HERE.parent / "deploy" / "standin_trtexec.py")
standin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(standin)

# release -> (version-compatible, optimization level 1, build only): the flag planned, or None where refused
PLANNED = {
    "8.2.1": (None, None, ["--buildOnly"]),
    "8.4.0": (None, None, ["--buildOnly"]),
    "8.5.2": (None, None, ["--buildOnly"]),
    "8.6.2": (["--versionCompatible"], ["--builderOptimizationLevel=1"], ["--skipInference"]),
    "10.3.0": (["--versionCompatible"], ["--builderOptimizationLevel=1"], ["--skipInference"]),
    "11.4.1": (["--versionCompatible"], ["--builderOptimizationLevel=1"], ["--skipInference"]),
}


@pytest.mark.parametrize("release", sorted(PLANNED))
def test_each_option_is_planned_per_release_or_refused(release: str) -> None:
    version = TrtVersion.parse(release)
    known = standin.known_options((version.major, version.minor), str(HERE / "trtexec_options"))
    asks = (
        dict(version_compatible=True, builder_optimization_level=None, build_only=False),
        dict(version_compatible=False, builder_optimization_level=1, build_only=False),
        dict(version_compatible=False, builder_optimization_level=None, build_only=True),
    )
    for ask, expected in zip(asks, PLANNED[release]):
        if expected is None:
            with pytest.raises(ConfigError, match=f"TensorRT {release} .*arrives in 8.6"):
                build_option_flags(version, **ask)
            continue
        flags = build_option_flags(version, **ask)
        assert flags == expected
        assert all(flag.split("=")[0] in known for flag in flags)  # the release's own trtexec parses it


def test_the_optimization_level_is_0_to_5() -> None:
    # "Valid values include integers from 0 to the maximum optimization level, which is currently 5" (release/10.3)
    assert build_option_flags(TrtVersion(10, 3, 0), version_compatible=False, builder_optimization_level=0,
                              build_only=False) == ["--builderOptimizationLevel=0"]  # fmt: skip
    with pytest.raises(ConfigError, match="must be 0 to 5"):
        build_option_flags(TrtVersion(10, 3, 0), version_compatible=False, builder_optimization_level=6,
                           build_only=False)  # fmt: skip


def test_a_build_only_plan_times_nothing_and_records_its_options(plan_run: Run) -> None:
    orin = load_target("jetson-agx-orin-64gb")
    request = CompileRequest(precision=Precision.FP16, build_only=True, tensorrt="8.5.2")
    on85 = make_plan(plan_run, orin, request)
    assert "--buildOnly" in on85.argv and not any(a.startswith("--exportTimes") for a in on85.argv)
    assert on85.to_dict()["build_options"] == {
        "version_compatible": False,
        "builder_optimization_level": None,
        "build_only": True,
    }
    on86 = make_plan(
        plan_run,
        orin,
        CompileRequest(
            precision=Precision.FP16, build_only=True, version_compatible=True, builder_optimization_level=2,
            tensorrt="8.6.2",
        ),
    )  # fmt: skip
    # after the precision and DLA flags, before the timing cache and the layer report (which a build-only run keeps)
    options = on86.argv.index("--versionCompatible")
    assert on86.argv[options : options + 4][:3] == [
        "--versionCompatible",
        "--builderOptimizationLevel=2",
        "--skipInference",
    ]
    assert on86.argv[options + 3].startswith("--timingCacheFile=")
    assert on86.argv[-2:] == ["--profilingVerbosity=detailed", f"--exportLayerInfo={on86.directory}/layers.json"]
    with pytest.raises(ConfigError, match="TensorRT 8.5.2 cannot build version-compatible engines"):
        make_plan(plan_run, orin, CompileRequest(precision=Precision.FP16, version_compatible=True, tensorrt="8.5.2"))


def test_the_build_script_keeps_its_timing_cache_where_deploy_says_and_reuses_it(plan_run: Run, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from edge_tl.compile.plan import TIMING_CACHE_ENV, write_plan

    plan = make_plan(plan_run, load_target("jetson-agx-orin-64gb"), CompileRequest(precision=Precision.FP16))
    script = plan_run.path(write_plan(plan_run, plan).path)
    log = tmp_path / "replay.log"
    log.write_text(f"[I] built\n&&&& PASSED TensorRT.trtexec [TensorRT v{plan.release.version.library_version}]\n")
    trtexec = tmp_path / "trtexec"
    trtexec.write_text(f'#!/bin/sh\nexec {sys.executable} {HERE.parent / "deploy" / "standin_trtexec.py"} "$@"\n')
    trtexec.chmod(0o755)
    device = tmp_path / "device" / "timing-cache"  # a device folder outside releases/
    device.mkdir(parents=True)
    env = {**os.environ, "TRTEXEC": str(trtexec), "STANDIN_TRTEXEC_LOG": str(log),
           "STANDIN_TRTEXEC_OPTIONS": str(HERE / "trtexec_options"), TIMING_CACHE_ENV: str(device)}  # fmt: skip
    cache = device / "timing-jetson-agx-orin-64gb-trt10.3.0.cache"  # keyed by target and release
    assert plan.release.version == TrtVersion(10, 3, 0)
    first = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert f"Could not read timing cache from: {cache}" in first.stdout and cache.read_bytes().count(b"\n") == 1
    second = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert f"Loaded {cache.stat().st_size // 2} bytes of timing cache from {cache}" in second.stdout
    assert cache.read_bytes().count(b"\n") == 2 and not plan_run.path(plan.spec.timing_cache).exists()
    # without the variable (a user running the plan by hand) the cache stays in the run, as before
    del env[TIMING_CACHE_ENV]
    third = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0 and plan_run.path(plan.spec.timing_cache).is_file()
