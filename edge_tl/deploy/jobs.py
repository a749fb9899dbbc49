"""Long device commands (engine builds, timing, evaluation) that run exactly once.

A command that takes minutes must not be tied to one SSH connection: when the link
drops, re-sending it would run it a second time beside the first, and a local timeout
would leave it running unseen. So each long command is a *job*:

- started detached under ``setsid`` (its own session and process group, so it outlives
  the connection and can be stopped as a whole), with its pid, output and exit status
  in ``jobs/<name>/`` of the deploy directory;
- started at most once: ``mkdir jobs/<name>`` is the start's guard, so a start that is
  re-sent after a drop attaches to the running job instead;
- waited for by short polls, each safe to repeat; after a drop the next poll reattaches;
- stopped (the whole process group) when the local timeout passes.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence

from edge_tl.deploy.ssh import OUTPUT_KEEP, RemoteResult, SshTransport, sh_script
from edge_tl.errors import RemoteError

log = logging.getLogger("edge_tl.deploy")

JOBS_DIR = "jobs"
POLL_S = 20  # longest single wait on the device; each poll is one short, repeatable command

# $1 deploy dir, $2 job dir, then the argv. Prints "started" or "attached".
_START = r"""
cd -- "$1" || exit 1; j="$2"; shift 2
command -v setsid >/dev/null 2>&1 || { echo "setsid is missing on the device (install util-linux)" >&2; exit 2; }
mkdir -p -- "$(dirname -- "$j")" || exit 1
mkdir -- "$j" 2>/dev/null || { echo attached; exit 0; }
setsid sh -c 'echo $$ > "$0/pid"; "$@" > "$0/out" 2> "$0/err" < /dev/null
  echo $? > "$0/rc.new"; mv -f "$0/rc.new" "$0/rc"' \
  "$j" "$@" < /dev/null > /dev/null 2>&1 &
echo started
"""

# $1 job dir, $2 seconds to wait at most. Prints "done N", "running", "vanished" or "missing".
# The wait is counted in sleeps, not read from the device's clock: a clock that jumps back (NTP
# correcting a Jetson without an RTC battery) or stands still must not hold a poll past its end.
_WAIT = r"""
cd -- "$1" 2>/dev/null || { echo missing; exit 0; }
if sleep 0.2 2>/dev/null; then step=0.2; n=$(( $2 * 5 )); else step=1; n=$2; fi
i=0
while :; do
  if [ -f rc ]; then echo "done $(cat rc)"; exit 0; fi
  if [ -f pid ] && ! kill -0 "$(cat pid)" 2>/dev/null; then
    [ -f rc ] && continue
    echo vanished; exit 0
  fi
  [ "$i" -lt "$n" ] || { echo running; exit 0; }
  sleep "$step"; i=$((i + 1))
done
"""

# $1 job dir: stop the whole process group (TERM, then KILL), record 137 when it left no status.
_STOP = r"""
cd -- "$1" 2>/dev/null || exit 0
p=$(cat pid 2>/dev/null) || exit 0
kill -TERM "-$p" 2>/dev/null
i=0; while kill -0 "$p" 2>/dev/null && [ $i -lt 20 ]; do sleep 0.25 2>/dev/null || sleep 1; i=$((i+1)); done
kill -KILL "-$p" 2>/dev/null
[ -f rc ] || echo 137 > rc
"""

# $1 job dir, $2 bytes kept at each end: a job's output, its middle left out past twice that (the
# device's disk holds all of it; only what is read back is capped, see edge_tl.deploy.ssh.OUTPUT_KEEP).
_COLLECT = r"""
cd -- "$1" || exit 1; k=$2
show() {
  n=$(wc -c < "$1" | tr -d ' ') || return 1
  if [ "$n" -le $((2 * k)) ]; then cat -- "$1"; return; fi
  head -c "$k" -- "$1"
  printf '\n[edge-tl: %d bytes of the device'"'"'s output were dropped here]\n' $((n - 2 * k))
  tail -c "$k" -- "$1"
}
show out && show err >&2
"""


def job_name(*parts: str) -> str:
    """A job folder name from its parts (letters, digits, '.', '_' and '-' only)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(parts)).strip("-")


def run_job(
    ssh: SshTransport, remote_dir: str, name: str, argv: Sequence[str], *, timeout: float, what: str
) -> RemoteResult:
    """Run ``argv`` once on the device (cwd ``remote_dir``) and return its status, stdout and stderr.

    A dropped connection is retried by reattaching to the job, never by starting it again.
    Past ``timeout`` seconds the job is stopped on the device and :class:`RemoteError` raised.
    """
    job = f"{remote_dir}/{JOBS_DIR}/{name}"
    started = ssh.run(sh_script(_START, remote_dir, f"{JOBS_DIR}/{name}", *argv), what=f"start of {what}").text.strip()
    log.debug("%s: %s %s (%s)", ssh.endpoint, what, started, job)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            stop_job(ssh, job)
            raise RemoteError(
                f"{ssh.endpoint}: {what} did not finish within {timeout:.0f} s and was stopped on the device "
                f"(its output is in {job}); the device may be overloaded, or the limit too short for it "
                "(deploy --timeout, in seconds)."
            )
        wait = max(1, min(POLL_S, int(left)))
        try:
            state = ssh.run(
                sh_script(_WAIT, job, str(wait)),
                what=f"waiting for {what}",
                timeout=wait + ssh.options.connect_timeout_s + 30,
            ).text.split()
        except RemoteError as exc:
            raise RemoteError(
                f"{ssh.endpoint}: connection lost while {what} was running; it keeps running on the device "
                f"({job}) and a deploy into that folder waits for it to end. ({exc})"
            ) from exc
        if state[:1] == ["done"] and len(state) == 2 and state[1].isdigit():
            # Half of what ssh.run keeps at each end, so that the note of what was left out arrives whole.
            out = ssh.run(sh_script(_COLLECT, job, str(OUTPUT_KEEP // 2)), what=f"output of {what}")
            return RemoteResult(int(state[1]), out.stdout, out.stderr, out.dropped)
        if state[:1] in (["vanished"], ["missing"]):
            raise RemoteError(
                f"{ssh.endpoint}: {what} ended on the device without an exit status ({' '.join(state)}: killed, "
                f"or the device restarted); see {job}"
            )


def stop_job(ssh: SshTransport, job: str) -> None:
    try:
        ssh.run(sh_script(_STOP, job), what="stopping the job", timeout=60)
    except RemoteError as exc:
        log.warning(
            "%s: could not stop %s (%s); stop it on the device: kill -TERM -$(cat %s/pid)", ssh.endpoint, job, exc, job
        )
