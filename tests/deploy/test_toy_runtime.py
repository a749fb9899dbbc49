"""Adding a device runtime: a TOY one outside edge-tl (tests/deploy/toy_runtime.py) named by a TOY
profile (tests/deploy/toy/toy-cpu.toml), taken through the bundle, the device agent's real entry
point in its own process, and every deploy decision, with no change to edge-tl."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_tl.deploy.api import choose_mode, compute_reference
from edge_tl.deploy.bundle import make_bundle
from edge_tl.deploy.config import Mode
from edge_tl.deploy.evalpack import EvalPack
from edge_tl.deploy.modes import parse_device_result
from edge_tl.deploy.probe import check_probe, parse_probe
from edge_tl.errors import ConfigError
from edge_tl.runs import Run
from edge_tl.targets import load_target

HERE = Path(__file__).resolve().parent
TOY_PROFILE = HERE / "toy" / "toy-cpu.toml"

# What the probe script prints on an x86-64 Linux box with ONNX Runtime ({providers} filled in).
_PROBE = """@@arch
x86_64
@@tegra
@@trtexec
{trtexec}
@@mem
MemTotal:       16000000 kB
MemAvailable:    8000000 kB
@@disk
/dev/sda1 100000000 50000000 40000000 50% /
@@python
{{"python": "3.11.2", "modules": {{"numpy": "1.26.0", "onnxruntime": "1.17.0", "pip": "23.0", "venv": "yes",
"tensorrt": null}}, "onnxruntime_providers": {providers}}}
@@end
"""


def _probe(*, providers: list[str], trtexec: str = ""):
    text = _PROBE.format(providers=json.dumps(providers), trtexec=trtexec).replace(",\n", ", ")
    return parse_probe(text, host="toybox")


@pytest.fixture
def toy_on_path(monkeypatch):
    """The toy runtime's folder on the import path, as a user's installed runtime package would be."""
    monkeypatch.syspath_prepend(str(HERE))
    return HERE


def test_the_toy_runtime_runs_end_to_end_through_the_bundle_and_the_device_agent(toy_on_path, untrained_run, tmp_path):
    import toy_runtime

    target = load_target(TOY_PROFILE)
    assert target.default_runtime is toy_runtime.TOY
    run = Run.open(shutil.copytree(untrained_run, tmp_path / "run"))

    bundle = make_bundle(run, target=str(TOY_PROFILE), precision="fp32", eval_images=24)
    # The bundle carries what the toy runtime ships: the FP32 ONNX and its settings, no build plan.
    assert bundle.manifest["target"] == {"name": "toy-cpu", "runtime": "toy-ort", "kind": "cpu",
                                         "profile": "target/toy-cpu.toml"}  # fmt: skip
    assert bundle.build_plan is None and bundle.model["artifact"] == "onnx-fp32"
    assert {"toy/settings.json", "export/model.fp32.onnx", "target/toy-cpu.toml"} <= set(bundle.files)
    assert json.loads((bundle.root / "toy" / "settings.json").read_text()) == {"threads": 1, "optimization": "disabled"}

    # The device side: the agent's real entry point, in a process of its own, as python mode starts it.
    out = tmp_path / "device results"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)}
    argv = [sys.executable, "-m", "edge_tl.deploy.remote_agent", "--bundle", str(bundle.root), "--out", str(out),
            "--warmup", "1", "--iterations", "3"]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"ok": True, "out": str(out), "backend": "toy-ort"}
    result = parse_device_result(json.loads((out / "result.json").read_text()), where="result.json")
    assert (result["backend"], result["kind"], result["artifact"]) == ("toy-ort", "onnx", "onnx-fp32")
    assert result["gpu_compute"] is None and result["end_to_end"]["iterations"] == 3
    # The runner the toy opened on the device, with the settings it shipped.
    runner = json.loads((out / "bench.json").read_text())["runner"]
    assert (runner["name"], runner["backend"], runner["graph_optimization"], runner["threads"]) == (
        "toy:onnx-fp32", "onnxruntime", "disabled", 1,
    )  # fmt: skip

    # What came back scores as deploy scores it: the same logits as ONNX Runtime here, image by image.
    logits = np.load(out / "logits.npy", allow_pickle=False)
    local = compute_reference(run, bundle).local
    assert logits.shape == local.shape == (24, 10)
    np.testing.assert_allclose(logits, local, rtol=1e-4, atol=1e-4)
    labels = np.asarray(EvalPack.load(bundle.root / "eval").labels)
    assert result["accuracy"]["top1"] == pytest.approx(float(np.mean(local.argmax(axis=1) == labels)))

    # compile asks the runtime too: nothing to build for it.
    from edge_tl.compile import CompileRequest, compile_run

    with pytest.raises(ConfigError, match="runs Toy ONNX Runtime on the CPU: there is no engine to compile"):
        compile_run(run, target=str(TOY_PROFILE), request=CompileRequest(precision="fp32"))


def test_deploy_modes_and_the_probe_check_ask_the_toy_runtime(toy_on_path):
    target = load_target(TOY_PROFILE)
    fits = _probe(providers=["CPUExecutionProvider"], trtexec="/usr/bin/trtexec")
    assert check_probe(fits, target, need_mb=100, python=True) == []
    # A device with trtexec still runs the toy in python mode; trtexec mode does not apply to it.
    assert choose_mode(Mode.AUTO, fits, target) is Mode.PYTHON
    with pytest.raises(ConfigError, match="runs Toy ONNX Runtime: trtexec mode does not apply; use --mode python"):
        choose_mode(Mode.TRTEXEC, fits, target)
    bare = _probe(providers=[])
    assert check_probe(bare, target, need_mb=100) == [
        "toybox has no ONNX Runtime CPU provider, which the toy runtime runs on"
    ]


@pytest.mark.parametrize(
    ("runtime", "message"),
    [
        ("tensorrtt", "device runtime 'tensorrtt' is unknown (did you mean 'tensorrt'?)"),
        ("toy_runtime:NOPE", "toy_runtime.NOPE is NoneType, not a DeviceRuntime instance"),
        ("toy_runtime:SETTINGS", "toy_runtime.SETTINGS is str, not a DeviceRuntime instance"),
        ("no_such_runtime_module:X", "module 'no_such_runtime_module' does not import"),
        ("impostor_runtime:IMPOSTOR", "calls itself 'onnxruntime', the name of a runtime edge-tl ships"),
        ("tensorrt", "of a cpu target must run the ONNX itself (e.g. 'onnxruntime'), got 'tensorrt'"),
    ],
)
def test_a_profile_naming_no_usable_runtime_is_refused_naming_the_field(toy_on_path, tmp_path, monkeypatch, runtime,
                                                                        message):  # fmt: skip
    (tmp_path / "impostor_runtime.py").write_text(
        "from toy_runtime import ToyRuntime\n\nclass Impostor(ToyRuntime):\n    name = 'onnxruntime'\n\n"
        "IMPOSTOR = Impostor()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    profile = tmp_path / "toy-cpu.toml"
    profile.write_text(TOY_PROFILE.read_text().replace('"toy_runtime:TOY"', f'"{runtime}"'))
    with pytest.raises(ConfigError) as info:
        load_target(profile)
    assert f"{profile}: field 'default_runtime'" in str(info.value) and message in str(info.value)
