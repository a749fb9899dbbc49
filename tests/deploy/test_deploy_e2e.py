"""Deploying a real run to loopback sshd devices: python mode with ONNX Runtime, trtexec mode with a
stand-in trtexec, fleets, bundles, and the security properties."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_tl.cli.main import main
from edge_tl.deploy import (
    Bundle,
    DeployConfig,
    EvalPack,
    deploy,
    make_bundle,
)
from edge_tl.errors import RemoteError, RunError
from edge_tl.runs import Run

pytestmark = pytest.mark.ssh

REPO = Path(__file__).resolve().parents[2]
# The loopback device's Python is the one under test, named explicitly: whatever `python3`
# the login shell finds first (a pyenv shim, another venv) may lack onnxruntime.
QUICK = dict(eval_images=64, iterations=20, warmup=2, remote_python=sys.executable)
NASTY = 'run dir; it\'s "x" $(id)'


@pytest.fixture
def run_copy(deployable_run, tmp_path) -> Path:
    """A writable copy of the run whose path has spaces, quotes, ';' and '$(...)'."""
    return Path(shutil.copytree(deployable_run, tmp_path / NASTY))


def _secrets(ssh_lab) -> list[str]:
    """Lines of the private key: none may appear in anything deploy writes."""
    return [ln for ln in ssh_lab.user_key.read_text().splitlines() if ln and "PRIVATE KEY" not in ln]


def _assert_no_secrets(root: Path, ssh_lab) -> None:
    secrets = _secrets(ssh_lab)
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(s.encode() in data for s in secrets), f"private key material in {path}"


def test_bundle_contents_and_tar(run_copy, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bundle", str(run_copy), "--target", "x86-64", "--precision", "fp32", "--eval-images", "24", "--tar"])
    assert exit_info.value.code == 0 and "evaluation pack of 24 images" in capsys.readouterr().out
    bundle = Bundle.load(run_copy / "bundle" / "x86-64-fp32")
    # Deterministic: the same run, target and precision give the same bundle.
    assert make_bundle(run_copy, target="x86-64", precision="fp32", eval_images=24).digest == bundle.digest
    assert bundle.root == run_copy / "bundle" / "x86-64-fp32"
    assert {"bundle.json", "export/model.fp32.onnx", "labels.txt", "preprocessing.json", "target/x86-64.toml",
            "eval/pack.json"} <= set(bundle.files)  # fmt: skip
    assert Bundle.load(bundle.root).digest == bundle.digest
    assert (bundle.root.parent / "x86-64-fp32.tar.gz").is_file()
    pack = EvalPack.load(bundle.root / "eval")
    assert pack.num_images == 24 and sum(c.count for c in pack.chunks) == 24
    assert len(set(pack.labels)) == 10  # class-balanced
    # The pack is the run's preprocessing applied to its validation images, as raw float32.
    from edge_tl.data import load_image, preprocess, split_from_run
    from edge_tl.deploy.evalpack import balanced_subset
    from edge_tl.models import Preprocessing

    run = Run.open(run_copy)
    split = split_from_run(run)
    first = split.val[balanced_subset([s.label for s in split.val], 24)[0]]
    images, labels = next(pack.batches())
    np.testing.assert_array_equal(
        images[0], preprocess(load_image(first), Preprocessing.from_dict(run.get("preprocessing")))
    )
    assert labels[0] == first.label
    assert run.artifact("bundle-x86-64-fp32").details["digest"] == bundle.digest
    # Tampering is detected.
    (bundle.root / "labels.txt").write_text("changed\n")
    with pytest.raises(RunError, match="labels.txt missing or changed since it was made; rebuild it"):
        Bundle.load(bundle.root)


def test_python_mode_end_to_end(run_copy, sshd, ssh_lab, edge_tl_wheel, tmp_path, capsys):
    """The quickstart-style run on a loopback device: accuracy there == ONNX Runtime here."""
    remote = tmp_path / "remote; 'dir' $(touch pwned)"
    args = [
        "deploy", str(run_copy), "--host", sshd.alias, "--target", "x86-64", "--precision", "fp32",
        "--ssh-config", str(ssh_lab.client_config), "--remote-dir", str(remote), "--wheel", str(edge_tl_wheel),
        "--eval-images", "64", "--iterations", "20", "--warmup", "2", "--json", str(tmp_path / "out.json"),
        "--remote-python", sys.executable,
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    printed = capsys.readouterr()
    assert exit_info.value.code == 0, printed.err
    assert "python mode, onnxruntime" in printed.out and "top-1" in printed.out
    assert not any(secret in printed.out + printed.err for secret in _secrets(ssh_lab))
    out = run_copy / "deploy" / sshd.alias
    probe = json.loads((out / "probe.json").read_text())
    assert probe["is_jetson"] is False and probe["arch"] == "x86_64" and probe["modules"]["onnxruntime"]
    bench = json.loads((out / "bench.json").read_text())
    assert bench["runner"]["backend"] == "onnxruntime" and bench["results"][0]["iterations"] == 20
    device = json.loads((out / "result.json").read_text())
    # The device ran the wheel installed in its virtual environment, not this checkout.
    assert device["edge_tl"]["module"].startswith(str(remote / "venv"))
    entry = json.loads((out / "accuracy.json").read_text())["results"][0]
    assert entry["num_images"] == 64
    # python mode on a CPU: no GPU compute time, one end-to-end timing under the shared name
    assert entry["gpu_compute"] is None and entry["end_to_end"]["iterations"] == 20
    assert entry["end_to_end"]["batch_size"] == bench["results"][0]["batch_size"]
    assert entry["top1"] == entry["local_onnxruntime_top1"]
    assert entry["local_onnxruntime_agreement"] == 1.0
    # The original model's top-1 on the same images: where the two agree on an image, it counts
    # the same for both, so they differ by at most the share of images where they disagree.
    assert entry["top1_agreement"] >= 0.95
    assert abs(entry["top1"] - entry["reference_top1"]) <= 1 - entry["top1_agreement"] + 1e-12
    logits = np.load(out / "logits.npy", allow_pickle=False)
    assert logits.shape == (64, 10)
    # The run's manifest records it; verify reads it as a device row.
    run = Run.open(run_copy)
    record = run.artifact(f"deploy-{sshd.alias}")
    assert record.kind == "deploy-result" and record.metrics["top1"] == entry["top1"]
    from edge_tl.verify import read_deploy_results

    rows = read_deploy_results(run, reference_top1=entry["reference_top1"], classes=tuple(run.get("classes")))
    assert [(r.name, r.origin) for r in rows] == [("onnx-fp32", f"deploy:{sshd.alias}")]
    # The paired counts against the original, per class, are the device's logits' own: recounted here
    # from logits.npy on the evaluation pack's labels.
    labels = np.asarray(EvalPack.load(run_copy / "bundle" / "x86-64-fp32" / "eval").labels)
    images, ref_right, right, lost, gained = (np.asarray(row) for row in entry["class_counts"])
    np.testing.assert_array_equal(images, np.bincount(labels, minlength=10))
    np.testing.assert_array_equal(right, np.bincount(labels[logits.argmax(axis=1) == labels], minlength=10))
    assert int(ref_right.sum()) == round(entry["reference_top1"] * 64)
    assert (entry["lost"], entry["gained"]) == (int(lost.sum()), int(gained.sum()))
    assert (rows[0].change["lost"], rows[0].change["gained"]) == (entry["lost"], entry["gained"])
    assert [(c["images"], c["correct"]) for c in rows[0].per_class] == [
        (int(i), int(r)) for i, r in zip(images, right) if i
    ]
    assert rows[0].delta_top1_pts == pytest.approx((entry["top1"] - entry["reference_top1"]) * 100)
    # verify shows the same named latencies as the deploy record
    assert rows[0].end_to_end == entry["end_to_end"] and rows[0].gpu_compute is None
    # Quoting: the odd paths arrived as literal names, nothing was executed from them.
    assert (remote / "current" / "bundle.json").is_file()
    assert not (Path.home() / "pwned").exists() and not (remote / "pwned").exists()
    # Remote writes stayed inside the remote directory.
    # (the marker that makes the folder edge-tl's, and the finished device jobs' status and output)
    assert sorted(p.name for p in remote.iterdir()) == [
        ".edge-tl-deploy",
        "current",
        "jobs",
        "releases",
        "results",
        "venv",
    ]
    _assert_no_secrets(run_copy, ssh_lab)
    _assert_no_secrets(remote, ssh_lab)

    # Deploying again changes nothing on the device and measures again.
    config = DeployConfig(target="x86-64", precision="fp32", ssh=ssh_lab.options(), remote_dir=str(remote),
                          wheel=edge_tl_wheel, **QUICK)  # fmt: skip
    again = deploy(run_copy, sshd.alias, config)
    assert again.sync["up_to_date"] and again.top1 == entry["top1"]


def test_trtexec_mode_with_standin_trtexec(
    run_copy, ssh_lab, standin_trtexec, standin_tegrastats, tmp_path, xavier_profile
):
    """trtexec mode orchestration against a STAND-IN trtexec that replays a real trtexec log."""
    server = ssh_lab.start()
    try:
        standin_trtexec(server, REPO / "tests" / "compile" / "fixtures" / "trtexec-8.4-jetson-agx-xavier.log")
        standin_tegrastats(server)
        # The device's TensorRT as JetPack's packages name it (dpkg-query -W -f='${Package} ${Version}\n').
        dpkg = server.extra_path / "dpkg-query"
        dpkg.write_text('#!/bin/sh\ncase "$*" in *libnvinfer*) echo "libnvinfer8 8.4.0-1+cuda11.4" ;; esac\n')
        dpkg.chmod(0o755)
        # The profile's default release is 8.5.2 (JetPack 5.1); the device runs 8.4.0, which it also lists: the
        # engine is planned for the device's release, and deploy says so in one line.
        (tmp_path / "default-852").mkdir()
        target = tmp_path / "default-852" / xavier_profile.name
        target.write_text(xavier_profile.read_text().replace('default = "8.4.0"', 'default = "8.5.2"'))
        remote = tmp_path / "remote"
        config = DeployConfig(
            target=str(target), precision="fp32", ssh=ssh_lab.options(), remote_dir=str(remote), **QUICK
        )
        # The profile is a Jetson; this device is not: refused with the reasons, unless overridden.
        with pytest.raises(RemoteError, match="is a Jetson but"):
            deploy(run_copy, server.alias, config)
        said: list[str] = []
        result = deploy(
            run_copy, server.alias, DeployConfig(**{**config.__dict__, "check_device": False}), say=said.append
        )
    finally:
        server.stop()
    assert result.mode == "trtexec" and result.tensorrt == "8.4.0"
    assert (
        f"{server.alias} has TensorRT 8.4.0, not the profile's default 8.5.2: the engine is planned for 8.4.0" in said
    )
    # The timing cache lives in the device folder, outside releases/, keyed by target and release.
    cache = remote / "timing-cache" / "timing-standin-xavier-trt84-trt8.4.0.cache"
    assert cache.read_bytes() == b"tactics timed for model.fp32.onnx\n"
    assert not list((remote / "releases").rglob("*.cache"))
    out = run_copy / "deploy" / server.alias
    bench = json.loads((out / "bench.json").read_text())
    # The stand-in writes --exportTimes as TensorRT 8.4 does: three cold warm-ups first (8.4's
    # exportJSONTrace writes the whole trace; release/8.5 starts after the warm-ups, release/8.4
    # samples/common/sampleReporting.cpp), then 20 queries cycling through the replayed Xavier log's
    # (min, median, max). Deploy drops the warm-ups by the command's --warmUp, as trtexec's summary does.
    gpu_cycle, e2e_cycle = (0.375977, 0.388443, 0.403564), (0.387207, 0.401947, 0.447357)
    times = json.loads((out / "trtexec_times.json").read_text())
    assert len(times) == 23 and sum(r["startComputeMs"] < 500 for r in times) == 3
    assert bench["source"] == "exportTimes" and bench["gpu_compute"]["iterations"] == 20
    gpu_mean = sum(gpu_cycle[k % 3] for k in range(20)) / 20
    e2e_mean = sum(e2e_cycle[k % 3] for k in range(20)) / 20
    # results are GPU compute time, as in `bench --backend trtexec`; end-to-end (H2D + compute + D2H) apart.
    assert bench["results"][0]["p50_ms"] == pytest.approx(0.388443)
    assert bench["gpu_compute"]["mean_ms"] == pytest.approx(gpu_mean) and bench["gpu_compute"]["max_ms"] == 0.403564
    assert bench["end_to_end"]["p50_ms"] == pytest.approx(0.401947)
    assert bench["end_to_end"]["p99_ms"] == pytest.approx(0.447357)
    assert bench["end_to_end"]["mean_ms"] == pytest.approx(e2e_mean)
    assert bench["trtexec"]["tensorrt_version"] == "8.4.0"
    assert bench["runner"]["timing"] == {"data_transfers": True, "spin_wait": True, "cuda_graph": True}
    assert "PASSED" in (out / "build.log").read_text()
    # The build is build-only (8.4's --buildOnly, release/8.4 sampleOptions.cpp): deploy times the engine apart.
    built = next(line for line in (out / "build.log").read_text().splitlines() if "&&&& RUNNING" in line)
    assert "--buildOnly" in built.split() and not any(a.startswith("--exportTimes") for a in built.split())
    entry = json.loads((out / "accuracy.json").read_text())["results"][0]
    # The device-built engine's own layer report (the stand-in's --exportLayerInfo in 8.4's format) came back:
    # one FP32 layer per Conv/Gemm of the ONNX, and the MACs its layer dimensions give equal ONNX's shapes'.
    import onnx

    from edge_tl.trt.layers import onnx_compute_nodes

    model = onnx.load(str(Run.open(run_copy).artifact_path("onnx-fp32")))
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    layers = json.loads((out / "layers.json").read_text())["Layers"]
    assert len(layers) == len(model.graph.node) and layers[0]["Inputs"][0]["Format/Datatype"] == "Row major linear FP32"
    report = entry["layer_report"]
    assert report["compute_layers"] == {"fp32": len(convs)} and report["findings"] == []
    macs = sum(m for _, op, m in onnx_compute_nodes(model) if op in ("Conv", "Gemm", "MatMul"))
    assert report["compute_macs"] == {"fp32": macs}
    assert entry["artifact"] == "engine-standin-xavier-trt84-fp32" and entry["mode"] == "trtexec"
    assert entry["top1"] == entry["local_onnxruntime_top1"] and entry["local_onnxruntime_agreement"] == 1.0
    # tegrastats was sampled while measuring (stand-in: VDD_IN alternates 5000/7000 mW) and stopped;
    # the summary is the mean and the peak of every VDD_IN sample of the log that came back.
    power = json.loads((out / "tegrastats.json").read_text())
    vin = [int(v) for v in re.findall(r"VDD_IN (\d+)mW/", (out / "tegrastats.log").read_text())]
    assert vin[:2] == [5000, 7000][: len(vin)] and power["samples"] == len(vin) >= 1
    assert power["total_power_mean_mw"] == sum(vin) / len(vin) and power["power"]["VDD_IN"]["max_mw"] == max(vin)
    assert entry["hottest_c"] == 47.5 and entry["power_mean_mw"] == power["total_power_mean_mw"]
    assert entry["gpu_compute"]["p50_ms"] == pytest.approx(0.388443) and entry["end_to_end"][
        "mean_ms"
    ] == pytest.approx(e2e_mean)
    # energy per image: mean power (mW) x end-to-end mean (ms) / batch = uJ; / 1000 = mJ
    assert entry["energy_mj_per_image"] == pytest.approx(power["total_power_mean_mw"] * e2e_mean / 1 / 1000)
    # The engine and its sidecar were written by the build plan inside the remote release.
    assert (remote / "current" / "compile" / "standin-xavier-trt84-fp32" / "model.engine.json").is_file()


def test_fleet_with_one_device_down(run_copy, sshd, ssh_lab, edge_tl_wheel, tmp_path, capsys):
    second = ssh_lab.start()
    stopped = ssh_lab.start()
    stopped.stop()
    try:
        inventory = tmp_path / "fleet.toml"
        lines = [
            '[defaults]\ntarget = "x86-64"\nprecision = "fp32"\neval_images = 64\niterations = 20\nwarmup = 2\n'
            f'remote_python = "{sys.executable}"\n'
        ]
        for i, server in enumerate((sshd, second, stopped)):
            lines.append(f'[[device]]\nname = "dev{i}"\nhost = "{server.alias}"\nremote_dir = "{tmp_path}/remote{i}"\n')
        inventory.write_text("\n".join(lines))
        with pytest.raises(SystemExit) as exit_info:
            main(["deploy", str(run_copy), "--fleet", str(inventory), "--ssh-config", str(ssh_lab.client_config),
                  "--retries", "0", "--jobs", "3", "--wheel", str(edge_tl_wheel), "--quiet"])  # fmt: skip
    finally:
        second.stop()
    printed = capsys.readouterr()
    assert exit_info.value.code == 1 and "1 of 3 device(s) failed" in printed.err
    table = printed.out
    assert "dev2" in table and "failed" in table and "unreachable" in table and "x86-64" in table
    data = json.loads((run_copy / "deploy" / "fleet.json").read_text())
    by_name = {d["label"]: d for d in data["devices"]}
    assert [d["status"] for d in data["devices"]] == ["ok", "ok", "failed"]
    assert "unreachable" in by_name["dev2"]["reason"]
    assert by_name["dev0"]["top1"] == by_name["dev1"]["top1"] == by_name["dev0"]["local_top1"]
    # The same run's original model on the same images: one reference for both devices.
    assert by_name["dev0"]["reference_top1"] == by_name["dev1"]["reference_top1"]
    assert by_name["dev0"]["delta_top1_pts"] == pytest.approx(
        (by_name["dev0"]["top1"] - by_name["dev0"]["reference_top1"]) * 100
    )
    assert by_name["dev0"]["p50_ms"] > 0
    assert {a.name for a in Run.open(run_copy).artifacts(kind="deploy-result")} == {"deploy-dev0", "deploy-dev1"}


def test_tegrastats_summary_both_layouts():
    from edge_tl.deploy.tegrastats import summarize

    jetpack6 = (
        "RAM 2344/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) CPU [2%@729,1%@729] EMC_FREQ 0% "
        "GR3D_FREQ 0% cpu@45.5C gpu@44.9C tj@45.5C VDD_IN 4855mW/4855mW VDD_SOC 1443mW/1443mW"
    )
    jetpack4 = (
        "RAM 1500/3964MB (lfb 100x4MB) SWAP 0/1982MB (cached 0MB) CPU [3%@102,off] EMC_FREQ 0% GR3D_FREQ 0% "
        "PLL@20C CPU@23.5C GPU@21.5C POM_5V_IN 2000/2000 POM_5V_GPU 0/0"
    )
    six = summarize(f"{jetpack6}\n{jetpack6.replace('4855mW/4855mW', '5855mW/5000mW')}\n")
    assert six["samples"] == 2 and six["total_power_mean_mw"] == 5355 and six["power"]["VDD_IN"]["max_mw"] == 5855
    assert six["hottest_c"] == 45.5 and "RAM" not in six["power"] and "SWAP" not in six["power"]
    four = summarize(jetpack4)
    assert four["total_power_mean_mw"] == 2000 and four["max_temperature_c"]["CPU"] == 23.5


_SLOW_AGENT = """
import time
with open({counter!r}, "a") as fh:
    fh.write("run\\n")
time.sleep(3)  # the link is cut meanwhile
from edge_tl.deploy.remote_agent_real import main
main()
"""

_BAD_RESULT_AGENT = """
import json, sys
from pathlib import Path
import numpy as np
out = Path(sys.argv[sys.argv.index("--out") + 1])
out.mkdir(parents=True, exist_ok=True)
(out / "result.json").write_text(json.dumps({"artifact": "onnx-fp32"}))
(out / "bench.json").write_text("{}")
np.save(out / "logits.npy", np.zeros((64, 10), dtype=np.float32))
"""

_NO_NUMPY_AGENT = """
import sys
sys.modules["numpy"] = None  # as on a device whose interpreter has no numpy
from edge_tl.deploy.remote_agent_real import main
main()
"""


def test_python_mode_under_a_cut_link_and_a_misbehaving_device(
    run_copy, sshd, ssh_lab, edge_tl_wheel, tmp_path, cut_link
):
    """A cut link mid-measurement: one run on the device, the deploy finishes. A bad answer: one line, nothing
    replaced."""
    import threading
    import time

    control, proxied = cut_link(sshd)
    remote = tmp_path / "remote"
    options = ssh_lab.options(config_file=proxied, retries=4, backoff_s=0.4)
    config = DeployConfig(
        target="x86-64", precision="fp32", ssh=options, remote_dir=str(remote), wheel=edge_tl_wheel, **QUICK
    )
    first = deploy(run_copy, sshd.alias, config)
    agent = next(remote.glob("venv/lib/python*/site-packages/edge_tl/deploy/remote_agent.py"))
    shutil.copy(agent, agent.with_name("remote_agent_real.py"))

    counter = tmp_path / "agent-runs"
    agent.write_text(_SLOW_AGENT.format(counter=str(counter)))

    def cut_while_measuring() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not counter.exists():
            time.sleep(0.02)
        (control / "down").write_text("")
        time.sleep(1.5)
        (control / "down").unlink()

    cutter = threading.Thread(target=cut_while_measuring)
    cutter.start()
    again = deploy(run_copy, sshd.alias, config)
    cutter.join()
    assert counter.read_text() == "run\n"  # measured once on the device, not once per connection
    assert again.ok and again.top1 == first.top1 and again.num_images == 64

    out = run_copy / "deploy" / sshd.alias
    kept = {name: (out / name).read_bytes() for name in ("result.json", "bench.json", "logits.npy", "accuracy.json")}
    agent.write_text(_BAD_RESULT_AGENT)
    with pytest.raises(RemoteError, match="result.json from the device has no 'kind'"):
        deploy(run_copy, sshd.alias, config)
    agent.write_text(_NO_NUMPY_AGENT)
    with pytest.raises(RemoteError) as info:
        deploy(run_copy, sshd.alias, config)
    message = str(info.value)
    assert "'numpy' is not importable by" in message and "pip install numpy" in message
    assert "Traceback" not in message and "\n" not in message
    # Neither failure replaced the last good result.
    assert {name: (out / name).read_bytes() for name in kept} == kept
    assert not list(out.glob(".incoming-*"))
