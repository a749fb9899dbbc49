"""Long device commands run once: a real sshd, a link cut mid-command, a local timeout."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from edge_tl.deploy.jobs import run_job
from edge_tl.deploy.ssh import SshTransport
from edge_tl.errors import RemoteError

pytestmark = pytest.mark.ssh


# Counts its starts, then works for a while: a second start would show as a second line.
_LONG = 'echo started >> ran; sleep "$1"; echo "finished after $1 s"; echo note >&2; exit 7'


def test_dropped_link_during_a_long_command_reattaches_and_it_runs_once(sshd, ssh_lab, tmp_path, cut_link):
    control, config = cut_link(sshd)
    remote = tmp_path / "remote"
    remote.mkdir()

    def cut_while_running() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (remote / "ran").exists():
            time.sleep(0.02)
        (control / "down").write_text("")  # live connections drop, new ones fail ...
        time.sleep(1.5)
        (control / "down").unlink()  # ... until the link comes back

    cutter = threading.Thread(target=cut_while_running)
    cutter.start()
    with SshTransport(sshd.alias, ssh_lab.options(config_file=config, retries=4, backoff_s=0.4)) as ssh:
        result = run_job(ssh, str(remote), "long", ["sh", "-c", _LONG, "sh", "3"], timeout=60, what="long job")
    cutter.join()
    assert (result.returncode, result.text, result.stderr) == (7, "finished after 3 s\n", "note\n")
    assert (remote / "ran").read_text() == "started\n"  # exactly one run on the device
    assert (remote / "jobs" / "long" / "rc").read_text().strip() == "7"


def test_a_start_sent_again_attaches_to_the_running_job(sshd, ssh_lab, tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    with SshTransport(sshd.alias, ssh_lab.options()) as ssh:
        first = run_job(ssh, str(remote), "once", ["sh", "-c", _LONG, "sh", "0"], timeout=30, what="job")
        again = run_job(ssh, str(remote), "once", ["sh", "-c", _LONG, "sh", "0"], timeout=30, what="job")
    assert first == again and (remote / "ran").read_text() == "started\n"


def test_local_timeout_stops_the_whole_job_on_the_device(sshd, ssh_lab, tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    # A child that would outlive a kill of its parent alone: the whole process group must go.
    script = "sleep 300 & echo $! > child; wait"
    with SshTransport(sshd.alias, ssh_lab.options()) as ssh, pytest.raises(RemoteError) as info:
        run_job(ssh, str(remote), "slow", ["sh", "-c", script], timeout=2, what="engine build")
    message = str(info.value)
    assert "did not finish within 2 s and was stopped on the device" in message and "Re-run" not in message
    job = remote / "jobs" / "slow"
    for pid in (int((job / "pid").read_text()), int((remote / "child").read_text())):
        assert not _alive(pid), pid
    assert (job / "rc").read_text().strip() == "137"


def _alive(pid: int) -> bool:
    """Running (a killed process that nobody has reaped yet is a zombie: not running)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"
