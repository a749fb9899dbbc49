"""A device that is not to be trusted: planted symbolic links, a hostile or broken agent, a flood of
output, a deploy killed while it replaces its results, a publish killed on the device."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edge_tl.deploy.modes import parse_device_result
from edge_tl.deploy.record import DeviceValueError, check_logits
from edge_tl.deploy.ssh import SshTransport
from edge_tl.deploy.sync import MARKER, sync_bundle
from edge_tl.errors import ConfigError, RemoteError, RunError
from edge_tl.runs import Run
from edge_tl.verify.deploy_records import entry_problem

pytestmark = pytest.mark.ssh

QUICK = dict(eval_images=16, iterations=5, warmup=1, remote_python=sys.executable)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _bundle(folder: Path, text: str) -> tuple[Path, dict[str, tuple[str, int]], str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.bin").write_text(text)
    sha = hashlib.sha256(text.encode()).hexdigest()
    return folder, {"model.bin": (sha, len(text))}, sha[:16]


# ---------------------------------------------------------------- planted symbolic links


@pytest.mark.parametrize("link", ["staging", "releases", "results", "jobs", "jobs/old-job", "releases/old-1"])
def test_a_planted_link_in_the_device_folder_is_refused_naming_it_and_its_target_is_kept(sshd, ssh_lab, tmp_path, link):
    remote = tmp_path / "dev"
    theirs = tmp_path / "their photos"
    (theirs / "2024").mkdir(parents=True)
    (theirs / "2024" / "a.jpg").write_text("a photo")
    (theirs / "rc").write_text("0\n")  # looks like a finished job folder to a careless clean-up
    with SshTransport(sshd.alias, ssh_lab.options()) as ssh:
        root, files, digest = _bundle(tmp_path / "b1", "first")
        sync_bundle(ssh, root, files, digest=digest, remote_dir=str(remote))  # an edge-tl folder, published once
        planted = remote / link
        if planted.exists():
            shutil.rmtree(planted)
        planted.parent.mkdir(parents=True, exist_ok=True)
        planted.symlink_to(theirs, target_is_directory=True)
        before, device_before = _tree(theirs), sorted(p.name for p in remote.iterdir())
        root, files, digest = _bundle(tmp_path / "b2", "second")
        with pytest.raises(ConfigError) as info:
            sync_bundle(ssh, root, files, digest=digest, remote_dir=str(remote))
    message = str(info.value)
    assert f"{remote}/{link} is a symbolic link edge-tl did not make" in message and "\n" not in message
    assert _tree(theirs) == before and sorted(p.name for p in remote.iterdir()) == device_before
    if link != "releases":  # (replacing releases/ by the link took the published bundle away)
        assert (remote / "current" / "model.bin").read_text() == "first"  # the published bundle is still the old one


def test_a_current_link_pointing_out_of_the_folder_is_refused(sshd, ssh_lab, tmp_path):
    remote = tmp_path / "dev"
    remote.mkdir()
    (remote / MARKER).write_text("")
    (tmp_path / "elsewhere").mkdir()
    (remote / "current").symlink_to(tmp_path / "elsewhere")
    root, files, digest = _bundle(tmp_path / "b", "x")
    with SshTransport(sshd.alias, ssh_lab.options()) as ssh, pytest.raises(ConfigError, match="current is a symbolic"):
        sync_bundle(ssh, root, files, digest=digest, remote_dir=str(remote))


def test_publish_removes_only_the_folders_edge_tl_named(sshd, ssh_lab, tmp_path):
    remote = tmp_path / "dev"
    with SshTransport(sshd.alias, ssh_lab.options()) as ssh:
        root, files, digest = _bundle(tmp_path / "b1", "first")
        sync_bundle(ssh, root, files, digest=digest, remote_dir=str(remote))
        (remote / "releases" / "notes of mine").mkdir()
        (remote / "releases" / "notes of mine" / "n.txt").write_text("mine")
        root, files, digest = _bundle(tmp_path / "b2", "second")
        report = sync_bundle(ssh, root, files, digest=digest, remote_dir=str(remote))
    assert sorted(p.name for p in (remote / "releases").iterdir()) == sorted([report.release, "notes of mine"])
    assert (remote / "releases" / "notes of mine" / "n.txt").read_text() == "mine"


# ---------------------------------------------------------------- a kill inside publish, on the device

# In front of the device's `ln` (or `rm`): when the switch file lies beside it, the publish script
# that called it is killed (SIGKILL) at that very call, once.
_KILLER = """#!/bin/sh
here=$(dirname -- "$0")
if [ -f "$here/kill-at-{tool}" ] && [ "{guard}" ]; then rm -f "$here/kill-at-{tool}"; kill -9 $PPID; exit 137; fi
exec /bin/{tool} "$@"
"""


@pytest.mark.parametrize(
    ("tool", "guard", "current_after_kill"), [("ln", "1", "first"), ("rm", '$1" = "-rf', "second")]
)
def test_a_publish_killed_on_the_device_leaves_a_whole_bundle_current_and_the_next_deploy_finishes(
    sshd, ssh_lab, tmp_path, tool, guard, current_after_kill
):
    remote = tmp_path / "dev"
    wrapper = sshd.extra_path / tool
    wrapper.write_text(_KILLER.format(tool=tool, guard=guard))
    wrapper.chmod(0o755)
    try:
        with SshTransport(sshd.alias, ssh_lab.options()) as ssh:
            root, files, digest = _bundle(tmp_path / "b1", "first")
            sync_bundle(ssh, root, files, digest=digest, remote_dir=str(remote))
            (sshd.extra_path / f"kill-at-{tool}").write_text("")
            root, files, digest = _bundle(tmp_path / "b2", "second")
            with pytest.raises(RemoteError, match="publishing the bundle failed"):
                sync_bundle(ssh, root, files, digest=digest, remote_dir=str(remote))
            assert not (sshd.extra_path / f"kill-at-{tool}").exists()  # the kill did happen
            # Killed before the switch: the old bundle, whole; after it: the new one, whole.
            assert (remote / "current" / "model.bin").read_text() == current_after_kill
            again = sync_bundle(ssh, root, files, digest=digest, remote_dir=str(remote))
    finally:
        wrapper.unlink()
    assert (remote / "current" / "model.bin").read_text() == "second"
    if not again.up_to_date:
        assert (remote / "current").readlink() == Path("releases") / again.release
    assert len(list((remote / "releases").iterdir())) == 1 and not (remote / "staging").exists()


# ---------------------------------------------------------------- what the device sends back

GOOD_STATS = {"batch_size": 1, "iterations": 20, "mean_ms": 1.2, "std_ms": 0.1, "min_ms": 1.0, "p50_ms": 1.1,
              "p90_ms": 1.3, "p95_ms": 1.4, "p99_ms": 1.5, "max_ms": 1.6, "throughput_ips": 833.3,
              "cv": 0.08}  # fmt: skip
GOOD = {"artifact": "onnx-fp32", "kind": "onnx", "backend": "onnxruntime", "gpu_compute": None,
        "end_to_end": GOOD_STATS, "latency": {"p50_ms": 1.0, "p99_ms": 2.0, "throughput_ips": 900.0,
                                              "batch_size": 1}}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"latency": {**GOOD["latency"], "p50_ms": math.inf}}, "no valid 'p50_ms' \\(got inf"),
        ({"latency": {**GOOD["latency"], "throughput_ips": -math.inf}}, "no valid 'throughput_ips'"),
        ({"latency": {**GOOD["latency"], "p50_ms": 3.0}}, "p50_ms 3.0 above p99_ms 2.0"),
        ({"latency": {**GOOD["latency"], "batch_size": 1.5}}, "no valid 'batch_size'"),
        ({"end_to_end": {"p50_ms": 1.0}}, "end_to_end from the device has no valid 'batch_size'"),
        ({"end_to_end": {**GOOD_STATS, "max_ms": math.inf}}, "no valid 'max_ms'"),
        ({"gpu_compute": [1, 2]}, "gpu_compute from the device is not a latency record"),
        ({"gpu_compute": {**GOOD_STATS, "iterations": "20"}}, "no valid 'iterations'"),
        ({"backend": "x" * 500}, "no valid 'backend'"),
        ({"edge_tl": "v1"}, "'edge_tl' field"),
    ],
)
def test_device_results_with_a_number_that_is_not_one_are_refused(change, message):
    with pytest.raises(DeviceValueError, match=message) as info:
        parse_device_result({**GOOD, **change}, where="result.json")
    assert "\n" not in str(info.value) and isinstance(info.value, RemoteError)
    assert parse_device_result(GOOD, where="result.json") == GOOD


def test_a_trtexec_summary_record_with_unknown_spread_is_still_accepted():
    # trtexec's text summary prints no standard deviation: NaN there means "not known" (edge_tl.bench.trtexec).
    from edge_tl.deploy.record import latency_stats

    record = {**GOOD_STATS, "std_ms": math.nan, "cv": math.nan, "iterations": 0}
    assert latency_stats(record, where="x")["p50_ms"] == 1.1
    with pytest.raises(DeviceValueError, match="no valid 'std_ms' \\(got inf"):
        latency_stats({**record, "std_ms": math.inf}, where="x")


def test_non_finite_or_non_float_logits_are_a_device_failure():
    good = np.zeros((4, 3), dtype=np.float32)
    assert check_logits(good, classes=3, rows=4, where="d") is good
    nan = good.copy()
    nan[1, 2] = np.nan
    with pytest.raises(DeviceValueError, match="1 of 4 rows of the device's logits hold NaN or infinity"):
        check_logits(nan, classes=3, rows=4, where="d")
    with pytest.raises(DeviceValueError, match="4 of 4 rows"):
        check_logits(np.full((4, 3), np.inf, dtype=np.float32), classes=3, rows=4, where="d")
    with pytest.raises(DeviceValueError, match="logits of type int64"):
        check_logits(np.zeros((4, 3), dtype=np.int64), classes=3, rows=4, where="d")
    with pytest.raises(DeviceValueError, match="shape \\(3, 3\\); 4 x 3 expected"):
        check_logits(good[:3], classes=3, rows=4, where="d")


def test_trtexec_exported_logits_with_nan_are_refused():
    from edge_tl.deploy.modes import exported_logits

    data = json.dumps([{"name": "logits", "dimensions": "2x3", "values": [0, 1, 2, 3, float("nan"), 5]}]).encode()
    with pytest.raises(DeviceValueError, match="1 of 2 rows"):
        exported_logits(data, output="logits", count=2, classes=3, where="out.json")
    huge = json.dumps([{"name": "logits", "dimensions": "1x3", "values": [1e39, 0, 0]}]).encode()  # inf as float32
    with pytest.raises(DeviceValueError, match="NaN or infinity"):
        exported_logits(huge, output="logits", count=1, classes=3, where="out.json")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"latency_ms": {"p50": math.inf, "p99": 1.0, "batch_size": 1}}, "latency_ms.p50 is inf"),
        ({"top1": math.nan}, "'top1' is nan"),
        ({"mean_kl": math.nan}, "'mean_kl' is nan"),
        ({"end_to_end": {**GOOD_STATS, "p99_ms": math.inf}}, "end_to_end.p99_ms is inf"),
        ({"num_images": "64"}, "'num_images' is '64'"),
    ],
)
def test_verify_and_the_report_survive_a_stored_record_that_is_not_a_measurement(untrained_run, tmp_path, change,
                                                                                  problem):  # fmt: skip
    from edge_tl.report.collect import collect
    from edge_tl.verify.api import read_deploy_results

    run = Run.open(shutil.copytree(untrained_run, tmp_path / "run"))
    entry = {"artifact": "onnx-fp32", "kind": "onnx", "num_images": 64, "top1": 0.5, "reference_top1": 0.5,
             "latency_ms": {"p50": 1.0, "p99": 2.0, "batch_size": 1}}  # fmt: skip
    folder = run.path("deploy", "dev")
    folder.mkdir(parents=True)
    (folder / "accuracy.json").write_text(json.dumps({"host": "dev", "results": [{**entry, **change}]}))
    assert entry_problem(entry) is None and problem in (entry_problem({**entry, **change}) or "")
    with pytest.raises(RunError, match="is not a measurement") as info:
        read_deploy_results(run, reference_top1=0.5)
    assert problem in str(info.value) and "re-run deploy for dev" in str(info.value) and "\n" not in str(info.value)
    data = collect(run.root)
    assert [d.rows for d in data.devices if d.name == "dev"] in ([], [[]])
    assert any("Left out a result of dev" in line and problem in line for line in data.missing)


# ---------------------------------------------------------------- a hostile agent, end to end

# Installed beside the edge-tl wheel in the device's virtual environment (a .pth line runs at every
# start of its Python): after the real agent wrote its results, it rewrites them as the file
# `hostile-mode` next to it says. A tampered install, as a user's device may hold.
_HOSTILE = """
import atexit, json, os, sys
from pathlib import Path

def _tamper():
    if "--out" not in sys.argv:
        return
    out = Path(sys.argv[sys.argv.index("--out") + 1])
    mode = Path(__file__).with_name("hostile-mode")
    if not mode.is_file() or not (out / "result.json").is_file():
        return
    how = mode.read_text().strip()
    result = json.loads((out / "result.json").read_text())
    if how == "inf":
        result["latency"]["p50_ms"] = float("inf")
    elif how == "gpu_compute":
        result["gpu_compute"] = {"p50_ms": 1.0}
    elif how == "nan-logits":
        import numpy as np
        logits = np.load(out / "logits.npy")
        np.save(out / "logits.npy", np.full_like(logits, np.nan))
    (out / "result.json").write_text(json.dumps(result))

atexit.register(_tamper)
"""


def test_a_hostile_agent_is_refused_in_one_line_and_replaces_nothing(
    deployable_run, sshd, ssh_lab, edge_tl_wheel, tmp_path, capsys
):
    from edge_tl.cli.main import main
    from edge_tl.deploy import DeployConfig, deploy

    run_dir = Path(shutil.copytree(deployable_run, tmp_path / "run"))
    remote = tmp_path / "dev"
    config = DeployConfig(target="x86-64", precision="fp32", ssh=ssh_lab.options(), remote_dir=str(remote),
                          wheel=edge_tl_wheel, **QUICK)  # fmt: skip
    assert deploy(run_dir, sshd.alias, config, name="dev").ok
    site = next((remote / "venv" / "lib").glob("python3*/site-packages"))
    (site / "etl_hostile.py").write_text(_HOSTILE)
    (site / "etl_hostile.pth").write_text("import etl_hostile\n")
    out = run_dir / "deploy" / "dev"
    kept = {n: (out / n).read_bytes() for n in ("result.json", "bench.json", "logits.npy", "accuracy.json")}
    manifest = (run_dir / "manifest.json").read_bytes()
    for how, message in (
        ("inf", "no valid 'p50_ms' \\(got inf"),
        ("gpu_compute", "gpu_compute from the device has no valid 'batch_size'"),
        ("nan-logits", "16 of 16 rows of the device's logits hold NaN or infinity"),
    ):
        (site / "hostile-mode").write_text(how)
        with pytest.raises(DeviceValueError, match=message) as info:
            deploy(run_dir, sshd.alias, config, name="dev")
        assert "\n" not in str(info.value)
        assert {n: (out / n).read_bytes() for n in kept} == kept and (
            run_dir / "manifest.json"
        ).read_bytes() == manifest
        assert (out / "failed" / "result.json").is_file()  # what the device sent is kept apart, for diagnosis
    # verify and the report still read the good results.
    for command in (["verify", str(run_dir), "--no-latency", "--max-images", "16"], ["report", str(run_dir)]):
        with pytest.raises(SystemExit) as exit_info:
            main(command)
        printed = capsys.readouterr()
        assert exit_info.value.code == 0, printed.err
        assert "Traceback" not in printed.err and "Infinity" not in printed.out


# ---------------------------------------------------------------- a flood of output

# In a fresh process: the peak RSS after a small device job, then after jobs and commands that
# print 200 MB. Each prints one line of JSON.
_FLOOD = textwrap.dedent("""
    import json, resource, sys
    from edge_tl.deploy.jobs import run_job
    from edge_tl.deploy.ssh import SshOptions, SshTransport
    config, remote, host = sys.argv[1], sys.argv[2], sys.argv[3]
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # MB (Linux: KiB)
    flood = "head -c 200000000 /dev/zero | tr '\\\\0' x"
    with SshTransport(host, SshOptions(config_file=config, retries=0)) as ssh:
        small = run_job(ssh, remote, "small", ["sh", "-c", "echo hello; echo oops >&2"], timeout=60, what="a job")
        usual = peak()
        job = run_job(ssh, remote, "flood", ["sh", "-c", flood + "; " + flood + " >&2"], timeout=120, what="flood")
        direct = ssh.run(["sh", "-c", flood], what="a flood")
        note = lambda text: [ln for ln in text.splitlines() if ln.startswith("[edge-tl:")]
        print(json.dumps({"usual_mb": usual, "peak_mb": peak(), "small": [small.text, small.stderr],
                          "job": [len(job.stdout), note(job.text), job.text[-3:], len(job.stderr), note(job.stderr)],
                          "direct": [len(direct.stdout), getattr(direct, "dropped", 0), direct.text[:3],
                                     direct.text[-3:]]}))
""")


def test_200_mb_of_device_output_keeps_the_local_process_within_50_mb_of_its_usual_size(sshd, ssh_lab, tmp_path):
    remote = tmp_path / "dev"
    remote.mkdir()
    proc = subprocess.run([sys.executable, "-c", _FLOOD, str(ssh_lab.client_config), str(remote), sshd.alias],
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["small"] == ["hello\n", "oops\n"]
    assert seen["peak_mb"] - seen["usual_mb"] < 50, seen
    # A job's output is cut on the device (OUTPUT_KEEP / 2 kept at each end), a command's here (OUTPUT_KEEP).
    note = "[edge-tl: {} bytes of the device's output were dropped here]"
    stdout_len, stdout_note, stdout_tail, stderr_len, stderr_note = seen["job"]
    assert stdout_note == stderr_note == [note.format(200_000_000 - 256 * 1024)] and stdout_tail == "xxx"
    assert stdout_len < 300_000 and stderr_len < 300_000
    direct_len, direct_dropped, head, tail = seen["direct"]
    assert direct_dropped == 200_000_000 - 2 * 256 * 1024 and head == tail == "xxx" and direct_len < 600_000


# ---------------------------------------------------------------- a kill while the results are replaced

# A deploy in its own process, killed (SIGKILL) at its chosen `os.replace` into deploy/<name>/ while
# the results of a good measurement replace the previous ones.
_KILLED_DEPLOY = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    import edge_tl.deploy.api as api
    from edge_tl.deploy import DeployConfig, deploy
    from edge_tl.deploy.ssh import SshOptions
    run_dir, host, remote, wheel, config_file, kill_at = sys.argv[1:7]
    out = Path(run_dir) / "deploy" / "dev"
    calls = []

    class KillingOs:
        def __getattr__(self, name):
            return getattr(os, name)

        def replace(self, src, dst):
            if Path(dst).parent == out and Path(dst).name != "failed":
                calls.append(Path(dst).name)
                if len(calls) == int(kill_at):
                    os.kill(os.getpid(), signal.SIGKILL)
            return os.replace(src, dst)

    api.os = KillingOs()
    config = DeployConfig(target="x86-64", precision="fp32", ssh=SshOptions(config_file=config_file, retries=0),
                          remote_dir=remote, wheel=Path(wheel), eval_images=16, iterations=5, warmup=1,
                          remote_python=sys.executable)
    deploy(run_dir, host, config, name="dev")
""")


def _consistent(run_dir: Path) -> tuple[float, float, float]:
    """(p50 of result.json, of accuracy.json, of the manifest record) of deploy/dev."""
    out = run_dir / "deploy" / "dev"
    device = json.loads((out / "result.json").read_text())
    entry = json.loads((out / "accuracy.json").read_text())["results"][0]
    record = Run.open(run_dir).artifact("deploy-dev")
    return device["latency"]["p50_ms"], entry["latency_ms"]["p50"], record.metrics["p50_ms"]


def test_a_deploy_killed_while_it_replaces_its_results_is_finished_by_the_next_one(
    deployable_run, sshd, ssh_lab, edge_tl_wheel, tmp_path
):
    from edge_tl.deploy import DeployConfig, deploy

    run_dir = Path(shutil.copytree(deployable_run, tmp_path / "run"))
    remote = tmp_path / "dev"
    config = DeployConfig(target="x86-64", precision="fp32", ssh=ssh_lab.options(), remote_dir=str(remote),
                          wheel=edge_tl_wheel, **QUICK)  # fmt: skip
    deploy(run_dir, sshd.alias, config, name="dev")
    old = _consistent(run_dir)
    killed = subprocess.run([sys.executable, "-c", _KILLED_DEPLOY, str(run_dir), sshd.alias, str(remote),
                             str(edge_tl_wheel), str(ssh_lab.client_config), "2"],
                            capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    out = run_dir / "deploy" / "dev"
    # Killed after result.json moved in, before bench.json, logits.npy and accuracy.json did.
    assert json.loads((out / "result.json").read_text())["latency"]["p50_ms"] != old[0]
    # The next deploy of that name finishes the replacement first, even one that then fails (here the
    # device is unreachable): the folder holds the killed deploy's measurement, whole.
    with pytest.raises(RemoteError, match="unreachable"):
        deploy(run_dir, "127.0.0.1:1", replace_ssh(config, ssh_lab), name="dev")
    new = _consistent(run_dir)
    assert new[0] == new[1] == new[2] != old[0]
    assert not list(out.glob(".incoming-*")) and not (out / ".settle.json").exists()
    logits = np.load(out / "logits.npy", allow_pickle=False)
    assert logits.shape == (16, 10) and np.isfinite(logits).all()


def replace_ssh(config, ssh_lab):
    from dataclasses import replace

    return replace(config, ssh=ssh_lab.options(retries=0))


# ---------------------------------------------------------------- a device clock that lies, a read-only folder

_STUCK_DATE = '#!/bin/sh\n[ "$1" = "+%s" ] && { echo 1000000000; exit 0; }\nexec /bin/date "$@"\n'


def test_a_device_clock_that_stands_still_does_not_hold_a_job_past_its_time_limit(sshd, ssh_lab, tmp_path):
    import time

    from edge_tl.deploy.jobs import run_job

    remote = tmp_path / "dev"
    remote.mkdir()
    fake = sshd.extra_path / "date"
    fake.write_text(_STUCK_DATE)  # the device's clock reads 2001-09-09 and stands still (or jumped back)
    fake.chmod(0o755)
    started = time.monotonic()
    try:
        with SshTransport(sshd.alias, ssh_lab.options()) as ssh:
            with pytest.raises(RemoteError, match="did not finish within 3 s and was stopped on the device"):
                run_job(ssh, str(remote), "slow", ["sleep", "60"], timeout=3, what="a slow job")
    finally:
        fake.unlink()
    assert time.monotonic() - started < 25  # the poll ended by its count of sleeps, not by the device's clock
    assert (remote / "jobs" / "slow" / "rc").read_text().strip() == "137"  # and the job was stopped there


@pytest.fixture
def read_only(tmp_path):
    """``make(folder)``: the folder bind-mounted read-only over itself (root only), unmounted at the end."""
    mounted = []

    def make(folder: Path) -> None:
        for argv in (["mount", "--bind", str(folder), str(folder)], ["mount", "-o", "remount,ro,bind", str(folder)]):
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                pytest.skip(f"cannot mount a read-only folder here ({done.stderr.strip()})")
            if argv[1] == "--bind":
                mounted.append(folder)

    yield make
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_device_folder_is_one_clear_line_and_keeps_its_bundle(sshd, ssh_lab, tmp_path, read_only):
    from edge_tl.deploy.device_lock import hold_device_folder

    remote = tmp_path / "dev"
    with SshTransport(sshd.alias, ssh_lab.options()) as ssh:
        root, files, digest = _bundle(tmp_path / "b1", "first")
        sync_bundle(ssh, root, files, digest=digest, remote_dir=str(remote))
        read_only(remote)
        root, files, digest = _bundle(tmp_path / "b2", "second")
        for attempt in (
            lambda: sync_bundle(ssh, root, files, digest=digest, remote_dir=str(remote)),
            lambda: hold_device_folder(ssh, str(remote)).__enter__(),
        ):
            with pytest.raises(RemoteError) as info:
                attempt()
            assert f"the device folder {remote} cannot be written (a read-only file system" in str(info.value)
            assert "--remote-dir a writable folder" in str(info.value) and "\n" not in str(info.value)
    assert (remote / "current" / "model.bin").read_text() == "first"
