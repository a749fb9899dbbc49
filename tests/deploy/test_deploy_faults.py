"""Deploy under faults, concurrency and hostile input: nothing lost, nothing run twice, one clear line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_tl.cli.main import main
from edge_tl.deploy.device_lock import hold_device_folder
from edge_tl.deploy.fleet import load_inventory
from edge_tl.deploy.modes import _VENV, exported_logits, parse_device_result
from edge_tl.deploy.ssh import SshTransport, sh_script
from edge_tl.deploy.sync import MARKER, sync_bundle
from edge_tl.errors import ConfigError, RemoteError
from edge_tl.runs import Run

pytestmark = pytest.mark.ssh


@pytest.fixture
def run_copy(deployable_run, tmp_path) -> Path:
    return Path(shutil.copytree(deployable_run, tmp_path / "run"))


def _cli(capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    printed = capsys.readouterr()
    return info.value.code, printed.out + printed.err


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- never delete what edge-tl did not make


def test_bundle_out_refuses_the_run_its_parents_and_foreign_folders(run_copy, tmp_path, capsys, monkeypatch):
    before = _tree(run_copy)
    base = ["bundle", str(run_copy), "--target", "x86-64", "--precision", "fp32", "--eval-images", "8"]
    for out in (run_copy, run_copy.parent):
        code, printed = _cli(capsys, *base, "--out", str(out))
        assert code == 1 and "would delete the run" in printed and "Traceback" not in printed
    foreign = tmp_path / "mine"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "sub" / "notes.txt").write_text("keep me")
    code, printed = _cli(capsys, *base, "--out", str(foreign))
    assert code == 1 and "edge-tl did not make it" in printed
    monkeypatch.chdir(foreign)  # `--out .` in a folder of the user's
    code, printed = _cli(capsys, *base, "--out", ".")
    assert code == 1 and "edge-tl did not make it" in printed and "Traceback" not in printed
    assert (foreign / "sub" / "notes.txt").read_text() == "keep me" and _tree(run_copy) == before
    # A folder edge-tl made (its bundle.json lists what it holds) is replaced, and so is an empty one.
    made = tmp_path / "made"
    assert _cli(capsys, *base, "--out", str(made))[0] == 0
    (made / "bundle.json").write_text((made / "bundle.json").read_text().replace('"requested": 8', '"requested": 9'))
    assert _cli(capsys, *base, "--out", str(made))[0] == 0
    assert json.loads((made / "bundle.json").read_text())["eval"]["requested"] == 8


def test_a_smaller_existing_evaluation_pack_is_not_reused_for_a_larger_request(run_copy):
    from edge_tl.deploy.api import prepare_bundle
    from edge_tl.targets import Precision, load_target

    run = Run.open(run_copy)
    target = load_target("x86-64")
    assert prepare_bundle(run, target, Precision.FP32, eval_images=8, tensorrt=None).manifest["eval"]["num_images"] == 8
    assert (
        prepare_bundle(run, target, Precision.FP32, eval_images=24, tensorrt=None).manifest["eval"]["num_images"] == 24
    )


def test_remote_dir_not_made_by_edge_tl_is_refused_and_kept(sshd, ssh_lab, tmp_path):
    remote = tmp_path / "their folder"
    for rel in ("results/keep.txt", "releases/a/b.txt", "staging/x", "notes.md"):
        (remote / rel).parent.mkdir(parents=True, exist_ok=True)
        (remote / rel).write_text(rel)
    before = _tree(remote)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "f.txt").write_text("x")
    import hashlib

    files = {"f.txt": (hashlib.sha256(b"x").hexdigest(), 1)}
    with SshTransport(sshd.alias, ssh_lab.options()) as ssh:
        with pytest.raises(ConfigError, match="edge-tl did not make it"):
            sync_bundle(ssh, tmp_path / "b", files, digest="ab" * 8, remote_dir=str(remote))
        with pytest.raises(ConfigError, match="edge-tl did not make it"), hold_device_folder(ssh, str(remote)):
            pass
        # An empty folder, or one edge-tl marked, is taken.
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        sync_bundle(ssh, tmp_path / "b", files, digest="ab" * 8, remote_dir=str(fresh))
        assert (fresh / MARKER).is_file() and (fresh / "current" / "f.txt").read_text() == "x"
    assert _tree(remote) == before


# ---------------------------------------------------------------- one deploy at a time per device folder


def test_a_second_deploy_into_a_busy_device_folder_stops_with_a_clear_message(sshd, ssh_lab, tmp_path):
    remote = str(tmp_path / "dev")
    with SshTransport(sshd.alias, ssh_lab.options()) as one, SshTransport(sshd.alias, ssh_lab.options()) as two:
        with hold_device_folder(one, remote):
            with (
                pytest.raises(RemoteError, match="is in use \\(another deploy holds it\\)"),
                hold_device_folder(two, remote),
            ):
                pass
        with hold_device_folder(two, remote):  # released when the first one ended
            pass


def test_a_job_still_running_from_a_lost_deploy_keeps_the_folder_busy(sshd, ssh_lab, tmp_path):
    remote = tmp_path / "dev"
    job = remote / "jobs" / "20250101T000000Z-1-agent"
    job.mkdir(parents=True)
    (remote / MARKER).write_text("")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (job / "pid").write_text(f"{sleeper.pid}\n")
        with SshTransport(sshd.alias, ssh_lab.options()) as ssh:
            with pytest.raises(RemoteError, match="agent is still running there"), hold_device_folder(ssh, str(remote)):
                pass
            (job / "rc").write_text("0\n")  # it ended
            with hold_device_folder(ssh, str(remote)):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_second_process_deploying_the_same_name_is_refused_here(run_copy, tmp_path):
    from edge_tl.deploy import DeployConfig, deploy
    from edge_tl.errors import RunError

    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, time
            from edge_tl.runs import file_lock
            with file_lock(sys.argv[1]):
                print("held", flush=True)
                time.sleep(60)
        """), str(run_copy / "deploy" / ".dev1.lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        config = DeployConfig(target="x86-64", precision="fp32", eval_images=8, wheel=Path(__file__))
        with pytest.raises(RunError, match="another deploy of this run is writing"):
            deploy(run_copy, "127.0.0.1:1", config, name="dev1")
    finally:
        holder.kill()
        holder.wait()


def test_each_device_name_gets_its_own_device_folder():
    from edge_tl.deploy.api import default_remote_dir

    assert default_remote_dir("r1", "orin-a") != default_remote_dir("r1", "orin-b")
    assert default_remote_dir("r1", "orin-a") == "edge-tl/r1/orin-a"


# ---------------------------------------------------------------- bad input: one clear line


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[device]\nname = "a"\nhost = "h"\n', r"\[\[device\]\] table \(two brackets\)"),
        ('[[device]]\nname = "a"\nhost = "h"\nmode = "fast"\n', "mode = 'fast' is not one of auto, python, trtexec"),
        ('[[device]]\nname = "../../x"\nhost = "h"\n', "is not a device name"),
        ('[[device]]\nname = 3\nhost = "h"\n', "should be a string"),
        ('defaults = 3\n[[device]]\nhost = "h"\n', "defaults must be a table"),
        ('[[device]]\nhost = "h$(id)"\n', "is not a host"),
    ],
)
def test_bad_fleet_files_are_one_clear_error(tmp_path, text, message):
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_inventory(path)


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/b", "..", ".hidden", "a b"])
def test_device_names_that_would_leave_the_run_are_refused(run_copy, capsys, name):
    code, printed = _cli(capsys, "deploy", str(run_copy), "--host", "127.0.0.1:1", "--target", "x86-64",
                         "--precision", "fp32", "--name", name, "--wheel", __file__)  # fmt: skip
    assert code == 1 and "is not a device name" in printed and "Traceback" not in printed
    assert not (run_copy.parent / "x").exists() and sorted(p.name for p in (run_copy / "deploy").iterdir()
                                                          if not p.name.startswith(".")) == []  # fmt: skip


GOOD = {"artifact": "onnx-fp32", "kind": "onnx", "backend": "onnxruntime",
        "latency": {"p50_ms": 1.0, "p99_ms": 2.0, "throughput_ips": 900.0, "batch_size": 1}}  # fmt: skip


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "not a JSON object"),
        ({k: v for k, v in GOOD.items() if k != "backend"}, "no 'backend'"),
        ({**GOOD, "latency": {"p50_ms": 1.0}}, "no valid 'p99_ms'"),
        ({**GOOD, "latency": {**GOOD["latency"], "p50_ms": "fast"}}, "no valid 'p50_ms'"),
        ({**GOOD, "latency": {**GOOD["latency"], "p50_ms": float("nan")}}, "no valid 'p50_ms'"),
    ],
)
def test_device_result_without_what_deploy_reads_is_a_remote_error(data, message):
    with pytest.raises(RemoteError, match=message):
        parse_device_result(data, where="result.json")
    assert parse_device_result(GOOD, where="result.json") == GOOD


def test_exported_logits_are_checked_against_the_class_count():
    good = json.dumps([{"name": "logits", "dimensions": "2x3", "values": list(range(6))}]).encode()
    assert exported_logits(good, output="logits", count=2, classes=3, where="x").shape == (2, 3)
    with pytest.raises(RemoteError, match="6 values are not 2 rows of 4 class logits"):
        exported_logits(good, output="logits", count=2, classes=4, where="x")  # a model with another head
    for bad in (b"not json", b"\xff\xfe", b'{"a": 1}', b"[]"):
        with pytest.raises(RemoteError, match="is not trtexec --exportOutput JSON"):
            exported_logits(bad, output="logits", count=2, classes=3, where="x")


# ---------------------------------------------------------------- a device Python in a virtual environment


def test_a_venv_python_on_the_device_is_used_with_its_own_packages(sshd, ssh_lab, tmp_path, edge_tl_wheel):
    # The user's venv (no system packages) holds a module the base interpreter lacks.
    user_venv = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(user_venv)], check=True)
    site = subprocess.run([str(user_venv / "bin" / "python"), "-c", "import site; print(site.getsitepackages()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    Path(site, "etl_only_in_user_venv.py").write_text("VALUE = 42\n")
    remote = tmp_path / "dev"
    (remote / "current").mkdir(parents=True)
    shutil.copy(edge_tl_wheel, remote / "current" / edge_tl_wheel.name)
    import hashlib

    sha = hashlib.sha256(edge_tl_wheel.read_bytes()).hexdigest()
    with SshTransport(sshd.alias, ssh_lab.options()) as ssh:
        ssh.run(sh_script(_VENV, str(remote), str(user_venv / "bin" / "python"), f"current/{edge_tl_wheel.name}", sha),
                timeout=300)  # fmt: skip
        seen = ssh.run(
            [str(remote / "venv" / "bin" / "python"), "-c", "import etl_only_in_user_venv as m; print(m.VALUE)"],
            check=False,
        )
    assert (seen.returncode, seen.text) == (0, "42\n"), seen.stderr


# ---------------------------------------------------------------- the CLI's safety defaults


def test_deploy_refuses_an_unknown_host_key_unless_asked(run_copy, ssh_lab, tmp_path, capsys):
    server = ssh_lab.start(trust=False)
    try:
        known = tmp_path / "known_hosts"
        known.write_text("")
        foreign = tmp_path / "theirs"  # stops the deploy right after the connection, before any copy
        foreign.mkdir()
        (foreign / "data.txt").write_text("theirs")
        base = ["deploy", str(run_copy), "--host", server.alias, "--target", "x86-64", "--precision", "fp32",
                "--ssh-config", str(ssh_lab.client_config), "--known-hosts", str(known), "--remote-dir", str(foreign),
                "--wheel", __file__, "--retries", "0", "--eval-images", "8"]  # fmt: skip
        code, printed = _cli(capsys, *base)
        assert code == 1 and "host key is not in known_hosts" in printed
        assert known.read_text() == ""  # by default nothing is trusted on first sight
        code, printed = _cli(capsys, *base, "--accept-new-host-key")
        assert code == 1 and "edge-tl did not make it" in printed  # connected: the key was accepted ...
        assert f"[127.0.0.1]:{server.port}" in known.read_text()  # ... and recorded
        assert (foreign / "data.txt").read_text() == "theirs" and sorted(p.name for p in foreign.iterdir()) == [
            "data.txt"
        ]
    finally:
        server.stop()


# ---------------------------------------------------------------- what a failed device step leaves behind

REPO = Path(__file__).resolve().parents[2]

# In front of the stand-in trtexec on a test device: a fault on demand, chosen by a file
# beside it (a build that fails, one that never ends, a timing run the test can cut).
_FAULTY_TRTEXEC = r"""#!/bin/sh
here=$(dirname -- "$0")
case " $* " in
  *" --onnx="*)
    if [ -f "$here/build-fails" ]; then
      echo "[E] [TRT] 4: [network.cpp::validate::3005] Error Code 4: Internal Error (layer 12 has no implementation)"
      echo "&&&& FAILED TensorRT.trtexec"; exit 1
    fi
    if [ -f "$here/build-hangs" ]; then echo "[I] [TRT] building layer 3 of 41"; sleep 300; fi ;;
  *" --loadInputs="*) ;;
  *" --loadEngine="*) if [ -f "$here/timing-slow" ]; then touch "$here/timing-started"; sleep 3; fi ;;
esac
exec "$here/trtexec-standin" "$@"
"""

# A Jetson's clocks as a state file: `jetson_clocks` locks them, --store saves them, --restore
# puts saved ones back (and fails while a file restore-fails lies beside it).
_JETSON_CLOCKS = r"""#!/bin/sh
here=$(dirname -- "$0")
case "$1" in
  --store) cat "$here/clocks-state" > "$2" ;;
  --restore)
    if [ -f "$here/restore-fails" ]; then echo "jetson_clocks: cannot write /sys/devices/gpu.0/devfreq" >&2; exit 1; fi
    cat "$2" > "$here/clocks-state" ;;
  "") echo locked > "$here/clocks-state" ;;
esac
"""

_SUDO = '#!/bin/sh\n[ "$1" = -n ] && shift\nexec "$@"\n'

# tegrastats --stop that reports a failure on stdout only (the sampler is stopped all the same,
# so that nothing of the test keeps running).
_FAILING_STOP_TEGRASTATS = r"""#!/bin/sh
here=$(dirname -- "$0")
if [ "$1" = --stop ] && [ -f "$here/stop-fails" ]; then
  "$here/tegrastats-standin" --stop; echo "tegrastats: could not stop the running instance"; exit 1
fi
exec "$here/tegrastats-standin" "$@"
"""


def _script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def _faulty_jetson(ssh_lab, standin_trtexec, standin_tegrastats):
    """A loopback 'Jetson': stand-in trtexec and tegrastats behind fault switches, jetson_clocks, sudo."""
    server = ssh_lab.start()
    bin_dir = server.extra_path
    standin_trtexec(server, REPO / "tests" / "compile" / "fixtures" / "trtexec-8.4-jetson-agx-xavier.log").rename(
        bin_dir / "trtexec-standin"
    )
    standin_tegrastats(server).rename(bin_dir / "tegrastats-standin")
    _script(bin_dir / "trtexec", _FAULTY_TRTEXEC)
    _script(bin_dir / "tegrastats", _FAILING_STOP_TEGRASTATS)
    _script(bin_dir / "jetson_clocks", _JETSON_CLOCKS)
    _script(bin_dir / "sudo", _SUDO)
    (bin_dir / "clocks-state").write_text("normal\n")
    return server


def _standin_config(tmp_path: Path, ssh_lab, remote: Path, **overrides):
    """trtexec mode on a Xavier profile that lists TensorRT 8.4, the release of the replayed trtexec log."""
    from edge_tl.deploy import DeployConfig

    text = (REPO / "targets" / "jetson-agx-xavier.toml").read_text()
    text = text.replace('name = "jetson-agx-xavier"', 'name = "standin-xavier-trt84"').replace(
        'default = "8.5.2"', 'default = "8.4.0"'
    )
    target = tmp_path / "standin-xavier-trt84.toml"
    target.write_text(text + '\n[[tensorrt.releases]]\njetpack = "5.0"\nversion = "8.4.0"\ncuda = "11.4"\n')
    settings = dict(target=str(target), precision="fp32", mode="trtexec", ssh=ssh_lab.options(), remote_dir=str(remote),
                    eval_images=8, iterations=5, warmup=0, check_device=False, timeout_s=60)  # fmt: skip
    return DeployConfig(**{**settings, **overrides})


def test_a_failed_or_stopped_engine_build_brings_its_log_back_and_replaces_nothing(
    run_copy, ssh_lab, standin_trtexec, standin_tegrastats, tmp_path
):
    from dataclasses import replace

    from edge_tl.deploy import deploy

    server = _faulty_jetson(ssh_lab, standin_trtexec, standin_tegrastats)
    remote = tmp_path / "remote"
    config = _standin_config(tmp_path, ssh_lab, remote, tegrastats=False)
    out = run_copy / "deploy" / server.alias
    try:
        assert deploy(run_copy, server.alias, config).ok
        good = {name: (out / name).read_bytes() for name in ("build.log", "accuracy.json", "bench.json", "logits.npy")}
        (server.extra_path / "build-fails").write_text("")
        with pytest.raises(RemoteError, match="the engine build failed \\(exit 1\\)") as info:
            deploy(run_copy, server.alias, config)
        assert f"log in {out / 'failed' / 'build.log'}" in str(info.value) and "Error Code 4" in str(info.value)
        assert "Error Code 4: Internal Error (layer 12" in (out / "failed" / "build.log").read_text()
        # The failed build's log did not take the place of the good one, nor anything else.
        assert {name: (out / name).read_bytes() for name in good} == good
        (server.extra_path / "build-fails").unlink()
        (server.extra_path / "build-hangs").write_text("")
        with pytest.raises(RemoteError, match="engine build did not finish within 3 s") as info:
            deploy(run_copy, server.alias, replace(config, timeout_s=3))
        assert str(out / "failed" / "build.log") in str(info.value)
        assert "building layer 3 of 41" in (out / "failed" / "build.log").read_text()
        assert {name: (out / name).read_bytes() for name in good} == good
    finally:
        server.stop()


def test_tegrastats_stop_and_clock_restore_failures_are_said(run_copy, ssh_lab, standin_trtexec, standin_tegrastats,
                                                               tmp_path, caplog):  # fmt: skip
    from edge_tl.deploy import deploy

    server = _faulty_jetson(ssh_lab, standin_trtexec, standin_tegrastats)
    remote = tmp_path / "remote"
    for switch in ("stop-fails", "restore-fails"):
        (server.extra_path / switch).write_text("")
    try:
        with caplog.at_level("WARNING", logger="edge_tl.deploy"):
            result = deploy(run_copy, server.alias, _standin_config(tmp_path, ssh_lab, remote, lock_clocks=True))
    finally:
        server.stop()
    assert result.ok and result.clocks_locked
    said = "\n".join(result.warnings)
    assert len(result.warnings) == 2 and all(w in caplog.text for w in result.warnings)  # logged as well as recorded
    assert "tegrastats may still run on the device (exit 1: tegrastats: could not stop" in said
    assert "clocks were NOT restored" in said and "cannot write /sys/devices/gpu.0/devfreq" in said
    assert f"sudo jetson_clocks --restore {remote}/clocks.conf" in said
    assert (remote / "clocks.conf").read_text() == "normal\n"  # the settings to restore are still there
    assert (server.extra_path / "clocks-state").read_text() == "locked\n"


def test_clocks_left_locked_by_a_cut_link_are_said_kept_and_restored_by_the_next_lock(
    run_copy, ssh_lab, standin_trtexec, standin_tegrastats, tmp_path, caplog, cut_link
):
    import threading
    import time
    from dataclasses import replace

    from edge_tl.deploy import deploy

    server = _faulty_jetson(ssh_lab, standin_trtexec, standin_tegrastats)
    control, proxied = cut_link(server)
    remote = tmp_path / "remote"
    config = _standin_config(tmp_path, ssh_lab, remote, lock_clocks=True,
                             ssh=ssh_lab.options(config_file=proxied, retries=1, backoff_s=0.2))  # fmt: skip
    state = server.extra_path / "clocks-state"
    (server.extra_path / "timing-slow").write_text("")

    def cut_while_timing() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (server.extra_path / "timing-started").exists():
            time.sleep(0.02)
        (control / "down").write_text("")  # and it stays down until the deploy gave up

    cutter = threading.Thread(target=cut_while_timing, daemon=True)
    cutter.start()
    try:
        with caplog.at_level("WARNING", logger="edge_tl.deploy"), pytest.raises(RemoteError, match="connection lost"):
            deploy(run_copy, server.alias, config)
        cutter.join()
        said = "\n".join(r.getMessage() for r in caplog.records)
        # The deploy failed on the lost link, and still said what it left behind on the device.
        assert "tegrastats may still run on the device" in said and "tegrastats --stop" in said
        assert "clocks were NOT restored" in said and f"sudo jetson_clocks --restore {remote}/clocks.conf" in said
        assert state.read_text() == "locked\n" and (remote / "clocks.conf").read_text() == "normal\n"
        (control / "down").unlink()
        (server.extra_path / "timing-slow").unlink()
        for _ in range(300):  # the timing job goes on without us; the device folder is busy until it ends
            if list(remote.glob("jobs/*-timing/rc")):
                break
            time.sleep(0.1)
        subprocess.run([server.extra_path / "tegrastats", "--stop"], check=True)  # as the warning advised
        # A deploy that does not lock the clocks clears the old results, not the saved settings ...
        assert deploy(run_copy, server.alias, replace(config, lock_clocks=False)).ok
        assert (remote / "clocks.conf").read_text() == "normal\n"
        # ... and the next one that locks them keeps those settings (the clocks are locked now:
        # saving them again would make the locked clocks the ones to restore) and restores them.
        assert deploy(run_copy, server.alias, config).clocks_locked
    finally:
        (control / "down").unlink(missing_ok=True)
        subprocess.run([server.extra_path / "tegrastats", "--stop"], check=False)  # no sampler outlives a failed test
        server.stop()
    assert state.read_text() == "normal\n" and not (remote / "clocks.conf").exists()
