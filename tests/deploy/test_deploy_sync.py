"""Resumable, verified, atomic bundle copy against a real loopback sshd."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from edge_tl.deploy.ssh import SshTransport
from edge_tl.deploy.sync import MARKER, check_relpath, check_remote_dir, sync_bundle
from edge_tl.errors import ConfigError, RemoteError

pytestmark = pytest.mark.ssh


def _make_files(root: Path, spec: dict[str, bytes]) -> dict[str, tuple[str, int]]:
    files = {}
    for name, data in spec.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files[name] = (hashlib.sha256(data).hexdigest(), len(data))
    return files


def _digest(files) -> str:
    return hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest()[:16]


def _remote_tree(remote: Path) -> dict[str, bytes]:
    cur = remote / "current"
    return {p.relative_to(cur).as_posix(): p.read_bytes() for p in cur.rglob("*") if p.is_file()}


@pytest.fixture
def local_bundle(tmp_path):
    spec = {"model.onnx": os.urandom(300_000), "eval/inputs-000.bin": os.urandom(50_000), "labels.txt": b"a\nb\n"}
    root = tmp_path / "bundle"
    return root, spec, _make_files(root, spec)


def test_copy_skip_reuse_and_corruption(sshd, ssh_lab, tmp_path, local_bundle):
    root, spec, files = local_bundle
    remote = tmp_path / 'remote dir; it\'s "quoted"'
    with SshTransport(sshd.alias, ssh_lab.options()) as ssh:
        first = sync_bundle(ssh, root, files, digest=_digest(files), remote_dir=str(remote))
        assert sorted(first.sent) == sorted(files) and first.bytes_sent == sum(s for _, s in files.values())
        assert _remote_tree(remote) == spec
        assert sync_bundle(ssh, root, files, digest=_digest(files), remote_dir=str(remote)).up_to_date

        # A file damaged on the device is found by its checksum and sent again.
        victim = remote / "current" / "model.onnx"
        data = victim.read_bytes()
        victim.write_bytes(
            bytes([data[0] ^ 0xFF]) + data[1:]
        )  # always a change (a zero byte was 1 in 256 random files)
        fixed = sync_bundle(ssh, root, files, digest=_digest(files), remote_dir=str(remote))
        assert fixed.resent == ("model.onnx",) and set(fixed.reused) == set(files) - {"model.onnx"}
        assert _remote_tree(remote) == spec

        # A new bundle that changes one file sends only that file; the old release is gone.
        spec["labels.txt"] = b"a\nb\nc\n"
        files = _make_files(root, spec)
        changed = sync_bundle(ssh, root, files, digest=_digest(files), remote_dir=str(remote))
        assert changed.sent == ("labels.txt",) and changed.bytes_sent == len(spec["labels.txt"])
        assert _remote_tree(remote) == spec
        assert [p.name for p in (remote / "releases").iterdir()] == [changed.release]
        assert not (remote / "staging").exists()


def test_paths_stay_inside_the_remote_directory(sshd, ssh_lab, tmp_path):
    for bad in ["../escape", "/etc/passwd", "a/../../b", "~/x", "a\nb", "./x", "a//b"]:
        with pytest.raises(ConfigError, match="not allowed"):
            check_relpath(bad)
    for bad in ["/", "", "..", "a/../..", "-rf"]:
        with pytest.raises(ConfigError, match="not allowed"):
            check_remote_dir(bad)
    assert check_remote_dir("~/edge-tl/r1") == "edge-tl/r1"
    # A tampered file list is refused before anything is written remotely.
    remote = tmp_path / "remote"
    (tmp_path / "b").mkdir()
    with SshTransport(sshd.alias, ssh_lab.options()) as ssh, pytest.raises(ConfigError, match="'..'"):
        sync_bundle(ssh, tmp_path / "b", {"../outside": ("0" * 64, 1)}, digest="ab" * 8, remote_dir=str(remote))
    assert not remote.exists()


def test_connection_cut_mid_copy_then_rerun_resumes(sshd, ssh_lab, tmp_path, cut_link):
    control, config = cut_link(sshd)
    (control / "rate").write_text("2000000")  # 2 MB/s: a 3 MB file takes 1.5 s
    spec = {"big.bin": os.urandom(3_000_000), "small.txt": b"x"}
    root = tmp_path / "bundle"
    files = _make_files(root, spec)
    remote = tmp_path / "remote"
    part = remote / "staging" / _digest(files) / "big.bin.part"
    options = ssh_lab.options(config_file=config, retries=1, backoff_s=0.1)

    def cut_when_started() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (part.exists() and part.stat().st_size > 200_000):
            time.sleep(0.02)
        (control / "down").write_text("")

    cutter = threading.Thread(target=cut_when_started)
    cutter.start()
    with SshTransport(sshd.alias, options) as ssh, pytest.raises(RemoteError, match="Re-run the same command"):
        sync_bundle(ssh, root, files, digest=_digest(files), remote_dir=str(remote))
    cutter.join()
    kept = part.stat().st_size
    assert 200_000 < kept < len(spec["big.bin"]) and not (remote / "current").exists()

    (control / "down").unlink()
    (control / "rate").unlink()
    with SshTransport(sshd.alias, options) as ssh:
        report = sync_bundle(ssh, root, files, digest=_digest(files), remote_dir=str(remote))
    assert "big.bin" in report.resumed
    assert report.bytes_sent == len(spec["big.bin"]) - kept + ("small.txt" not in report.skipped)
    assert _remote_tree(remote) == spec


def test_damaged_partial_upload_is_caught_by_verification(sshd, ssh_lab, tmp_path, local_bundle):
    root, spec, files = local_bundle
    remote = tmp_path / "remote"
    stage = remote / "staging" / _digest(files)
    stage.mkdir(parents=True)
    (remote / MARKER).write_text("")  # left by an earlier edge-tl copy into this folder
    # A leftover partial file whose bytes are wrong: resuming it cannot produce the right file.
    (stage / "model.onnx.part").write_bytes(b"garbage" * 100)
    with SshTransport(sshd.alias, ssh_lab.options()) as ssh:
        report = sync_bundle(ssh, root, files, digest=_digest(files), remote_dir=str(remote))
    assert "model.onnx" in report.resumed
    assert "model.onnx" in report.resent
    assert _remote_tree(remote) == spec


def test_dropped_link_is_retried_and_resumed_in_the_same_command(sshd, ssh_lab, tmp_path, cut_link):
    control, config = cut_link(sshd)
    spec = {"big.bin": os.urandom(3_000_000)}
    root = tmp_path / "bundle"
    files = _make_files(root, spec)
    remote = tmp_path / "remote"
    with SshTransport(sshd.alias, ssh_lab.options(config_file=config, retries=2, backoff_s=0.1)) as ssh:
        ssh.run(["true"])  # the shared connection is up; the next one to carry 1 MB is cut
        (control / "drop-once").write_text("1000000")
        report = sync_bundle(ssh, root, files, digest=_digest(files), remote_dir=str(remote))
    assert not (control / "drop-once").exists()  # the link really dropped once
    assert report.sent == ("big.bin",) and report.bytes_sent == len(spec["big.bin"])  # nothing sent twice
    assert _remote_tree(remote) == spec


def test_publish_sent_again_after_its_rename_still_succeeds(sshd, ssh_lab, tmp_path, local_bundle):
    """A publish retried after a dropped link finds its rename done and finishes (it used to fail)."""
    from edge_tl.deploy.ssh import sh_script
    from edge_tl.deploy.sync import _PUBLISH

    root, spec, files = local_bundle
    remote = tmp_path / "remote"
    (remote / "staging" / "abcd1234").mkdir(parents=True)
    (remote / "staging" / "abcd1234" / "f").write_text("x")
    with SshTransport(sshd.alias, ssh_lab.options()) as ssh:
        for _ in range(2):  # the first run renamed, then "the link dropped", and it is sent again
            ssh.run(sh_script(_PUBLISH, str(remote), "abcd1234", "abcd1234-1"))
        with pytest.raises(RemoteError, match="nothing to publish"):
            ssh.run(sh_script(_PUBLISH, str(remote), "ffff0000", "ffff0000-2"))
    assert os.readlink(remote / "current") == "releases/abcd1234-1" and (remote / "current" / "f").read_text() == "x"
