"""One deploy at a time per device folder: an flock held by a live SSH session.

The lock is taken on the device, where every deploy into a folder meets, whichever
workstation it comes from. It is held by a remote ``cat`` that waits for the end of
our input: closing the session (or losing it) releases it, so a crashed workstation
never leaves a stale lock behind. A job still running there from a deploy whose link
was lost keeps the folder busy too, so its results are never deleted under it.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
from collections.abc import Iterator

from edge_tl.deploy.ssh import SshTransport, remote_command, sh_script
from edge_tl.deploy.sync import MARKER, foreign_dir_error, read_only_error
from edge_tl.errors import RemoteError

log = logging.getLogger("edge_tl.deploy")

# $1 folder, $2 marker. First line: locked, busy, running JOB, foreign, readonly or noflock.
_LOCK = r"""
d="$1"; m="$2"
if [ -e "$d" ] && [ ! -f "$d/$m" ] && [ -n "$(ls -A -- "$d" 2>/dev/null)" ]; then echo foreign; exit 0; fi
mkdir -p -- "$d" && cd -- "$d" || exit 1
[ -w . ] || { echo readonly; exit 0; }
command -v flock >/dev/null 2>&1 || { echo noflock; exec cat > /dev/null; }
exec 9>>"$m"
flock -n 9 || { echo busy; exit 0; }
for j in jobs/*/; do
  [ -f "${j}pid" ] && [ ! -f "${j}rc" ] && kill -0 "$(cat "${j}pid")" 2>/dev/null && { echo "running ${j%/}"; exit 0; }
done
echo locked
exec cat > /dev/null
"""


@contextlib.contextmanager
def hold_device_folder(ssh: SshTransport, remote_dir: str) -> Iterator[None]:
    """Hold the device folder ``remote_dir`` for one deploy; refuse a busy or foreign folder."""
    argv = ssh.ssh_argv(remote_command(sh_script(_LOCK, remote_dir, MARKER)))
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        state = proc.stdout.readline(4096).decode("utf-8", errors="replace").split()  # a line, not a flood
        if state == ["foreign"]:
            raise foreign_dir_error(ssh.endpoint, remote_dir)
        if state == ["readonly"]:
            raise read_only_error(ssh.endpoint, remote_dir)
        if state == ["busy"] or state[:1] == ["running"]:
            what = "another deploy holds it" if state == ["busy"] else f"{remote_dir}/{state[1]} is still running there"
            raise RemoteError(
                f"{ssh.endpoint}: the device folder {remote_dir} is in use ({what}). Wait for it to end and deploy "
                "again, or deploy under another --name (each name has its own folder)."
            )
        if state == ["noflock"]:
            log.warning(
                "%s: flock is missing on the device; concurrent deploys into %s are not prevented",
                ssh.endpoint,
                remote_dir,
            )
        elif state != ["locked"]:
            proc.stdin.close()  # the script has ended; its first 8 KiB of stderr say why
            stderr = proc.stderr.read(8192).decode("utf-8", errors="replace").strip()  # type: ignore[union-attr]
            raise RemoteError(
                f"{ssh.endpoint}: cannot lock the device folder {remote_dir}: {stderr or 'connection lost'}"
            )
        yield
    finally:
        if proc.stdin is not None and not proc.stdin.closed:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
