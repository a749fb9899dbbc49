"""SSH transport over the system's OpenSSH client.

Every remote operation is the user's own ``ssh`` binary, so ``~/.ssh/config``
aliases, ``ProxyJump``, keys and the agent behave exactly as they do in a terminal.
We add only what an unattended tool needs:

- ``BatchMode=yes``: never prompt (a prompt would hang a fleet run).
- ``StrictHostKeyChecking=yes`` by default: an unknown or changed host key stops the
  deploy with the key's fingerprint and the fix; ``accept-new`` must be asked for.
- ``ConnectTimeout`` and ``ServerAlive*`` so a dead link is noticed, and retries with
  exponential back-off for commands that are safe to repeat.
- Connection multiplexing (``ControlMaster``) in a private directory, so the many small
  commands of a deploy share one authenticated connection.

Remote commands are given as argument lists; each argument is quoted with
:func:`shlex.quote` before it reaches the remote shell, so spaces, quotes and ``;``
arrive as data, never as shell syntax.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from time import monotonic  # the capped reader's clock (time.sleep is the back-off's own)
from typing import IO

from edge_tl.errors import ConfigError, MissingDependency, RemoteError

log = logging.getLogger("edge_tl.deploy")

# ssh exits 255 for its own errors (connection, authentication, host key), and passes on
# the remote command's status otherwise, which may be 255 too. Every remote command ends by
# printing its status after this tag on stderr, so a command that exits 255 is told apart
# from a lost connection (no tag).
SSH_ERROR = 255
_EXIT_TAG = "@@edge-tl-exit"
_EXIT_TRAILER = f'; s=$?; printf "\\n{_EXIT_TAG} %d\\n" "$s" >&2; exit "$s"'
_EXIT_RE = re.compile(rf"\n?{_EXIT_TAG} (\d+)\n?$")

# What a remote command prints is read with a cap: the first and the last OUTPUT_KEEP bytes
# of each stream are kept (the end holds the exit tag, the summary of a log, the error), the
# middle is dropped and said to be. A device printing gigabytes must not take this process's
# memory (a fleet reads many devices at once). Commands whose output is data, not text, give
# ``limit`` instead: more than that many bytes is an error, never a silently cut file.
OUTPUT_KEEP = 256 * 1024
_CHUNK = 64 * 1024

# A Unix socket path holds at most 104 bytes (macOS; 108 on Linux), and ssh binds
# ControlPath plus a 17-character random suffix first. ``%C`` is 40 characters.
_SOCKET_PATH_MAX = 103
_CONTROL_SUFFIX = 1 + 40 + 17

# Only characters a host name, an ~/.ssh/config alias or a login name can hold: ssh expands
# %h into ProxyCommand, which older OpenSSH (< 9.6) runs in a shell, so `$()`, backticks,
# quotes and the like must never reach it. IPv6 goes in brackets.
_HOST_RE = re.compile(
    r"^(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@)?"
    r"(?P<host>\[[0-9A-Fa-f:.]+(?:%[A-Za-z0-9_.-]+)?\]|[A-Za-z0-9_][A-Za-z0-9._-]*)(?::(?P<port>\d+))?$"
)


class HostKeyPolicy(str, Enum):
    """How an unknown host key is treated. A *changed* key is always refused."""

    STRICT = "strict"  # the key must already be in known_hosts
    ACCEPT_NEW = "accept-new"  # add an unknown key to known_hosts on first contact


@dataclass(frozen=True)
class SshEndpoint:
    """``[user@]HOST[:PORT]``; HOST may be an alias from ``~/.ssh/config`` or ``[IPv6]``."""

    host: str
    user: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> SshEndpoint:
        match = _HOST_RE.match(text.strip())
        if not text.strip() or match is None or match.group("host").startswith("-"):
            raise ConfigError(
                f"{text!r} is not a host: give [user@]HOST[:PORT] with letters, digits, '.', '_' and '-' only "
                "(IPv6 in brackets), e.g. jetson, nvidia@10.0.0.5 or nvidia@orin.local:2222 (an alias from "
                "~/.ssh/config works too)"
            )
        port = match.group("port")
        if port is not None and not 0 < int(port) < 65536:
            raise ConfigError(f"port {port} in {text!r} is not in 1..65535; give [user@]HOST[:PORT]")
        host = match.group("host")
        if host.startswith("["):
            host = host[1:-1]
        return cls(host=host, user=match.group("user"), port=int(port) if port else None)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = f"{self.user}@{host}" if self.user else host
        return f"{text}:{self.port}" if self.port else text

    @property
    def label(self) -> str:
        """A file-system-safe name for this endpoint (used for ``deploy/<label>/``)."""
        text = self.host if self.port is None else f"{self.host}_{self.port}"
        return re.sub(r"[^A-Za-z0-9._-]", "_", text)


@dataclass(frozen=True)
class SshOptions:
    """How to connect. ``None`` leaves the setting to the user's ssh configuration."""

    host_key_policy: HostKeyPolicy = HostKeyPolicy.STRICT
    config_file: Path | None = None  # ssh -F
    identity_file: Path | None = None  # ssh -i
    known_hosts_file: Path | None = None  # UserKnownHostsFile
    connect_timeout_s: int = 10
    retries: int = 2  # extra attempts after a dropped or refused connection
    backoff_s: float = 1.0  # first wait; doubles after each failed attempt
    multiplex: bool = True

    def __post_init__(self) -> None:
        if self.connect_timeout_s < 1:
            raise ConfigError(f"connect timeout must be >= 1 s, got {self.connect_timeout_s}")
        if self.retries < 0 or self.backoff_s < 0:
            raise ConfigError(f"retries and back-off must be >= 0, got {self.retries} / {self.backoff_s}")
        for name in ("config_file", "identity_file", "known_hosts_file"):
            value = getattr(self, name)
            if value is not None and name != "known_hosts_file" and not Path(value).is_file():
                raise ConfigError(f"{name.replace('_', ' ')} {str(value)!r} does not exist")


@dataclass(frozen=True)
class RemoteResult:
    returncode: int
    stdout: bytes
    stderr: str
    dropped: int = 0  # bytes of stdout left out between its head and its tail (see OUTPUT_KEEP)

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")


def dropped_note(count: int) -> bytes:
    """The line that stands where ``count`` bytes of a device's output were left out."""
    return f"\n[edge-tl: {count} bytes of the device's output were dropped here]\n".encode()


class _Capped:
    """Reads one pipe to its end, keeping its head and tail (or, with ``limit``, all of it up to the limit)."""

    def __init__(
        self, proc: subprocess.Popen[bytes], stream: IO[bytes], *, limit: int | None, sink: IO[bytes] | None = None
    ):
        self.limit = limit
        self.sink = sink
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0
        self.over = False
        self.thread = threading.Thread(target=self._read, args=(proc, stream), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen[bytes], stream: IO[bytes]) -> None:
        try:
            while chunk := stream.read1(_CHUNK):  # type: ignore[attr-defined]
                self.total += len(chunk)
                if self.limit is not None:
                    if self.total > self.limit and not self.over:
                        self.over = True
                        self.head.clear()
                        proc.kill()  # data past its limit: not worth receiving
                    if not self.over:
                        if self.sink is not None:
                            self.sink.write(chunk)
                        else:
                            self.head += chunk
                    continue
                room = OUTPUT_KEEP - len(self.head)
                if room > 0:
                    self.head += chunk[:room]
                    chunk = chunk[room:]
                if chunk:
                    self.tail += chunk
                    if len(self.tail) > 2 * OUTPUT_KEEP:
                        del self.tail[: len(self.tail) - OUTPUT_KEEP]
        finally:
            stream.close()

    def value(self) -> tuple[bytes, int]:
        """(the bytes kept, how many were dropped)."""
        tail = bytes(self.tail[-OUTPUT_KEEP:])
        dropped = self.total - len(self.head) - len(tail)
        if dropped <= 0 or self.limit is not None:
            return bytes(self.head) + tail, 0
        return bytes(self.head) + dropped_note(dropped) + tail, dropped


def _feed(stdin: IO[bytes], data: bytes) -> None:
    try:
        stdin.write(data)
    except OSError:
        pass  # the remote side stopped reading (a broken pipe): its exit status says why
    finally:
        try:
            stdin.close()
        except OSError:
            pass


def run_capped(
    argv: list[str],
    *,
    stdin: bytes | IO[bytes] | None,
    timeout: float | None,
    limit: int | None = None,
    sink: IO[bytes] | None = None,
) -> tuple[int, bytes, int, bytes, bool]:
    """Run ``argv`` locally; (returncode, stdout, stdout bytes dropped, stderr, stdout over ``limit``).

    ``subprocess.run(capture_output=True)`` with bounded memory (see OUTPUT_KEEP); with ``sink``
    (and ``limit``) stdout is written there instead of kept. Raises ``subprocess.TimeoutExpired``
    past ``timeout``, the process killed first.
    """
    if sink is not None and limit is None:
        raise ValueError("a sink needs a limit")
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if isinstance(stdin, bytes) else (stdin if stdin is not None else subprocess.DEVNULL),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    readers = [_Capped(proc, proc.stdout, limit=limit, sink=sink), _Capped(proc, proc.stderr, limit=None)]  # type: ignore[arg-type]
    feeder = None
    if isinstance(stdin, bytes):
        feeder = threading.Thread(target=_feed, args=(proc.stdin, stdin), daemon=True)
        feeder.start()
    deadline = None if timeout is None else monotonic() + timeout
    try:
        for reader in readers:
            reader.thread.join(None if deadline is None else max(0.0, deadline - monotonic()))
        proc.wait(None if deadline is None else max(0.0, deadline - monotonic()))
        if any(r.thread.is_alive() for r in readers):  # a child of ssh keeps the pipe open past the deadline
            raise subprocess.TimeoutExpired(argv, timeout or 0)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if feeder is not None:
            feeder.join(5)
    stdout, dropped = readers[0].value()
    stderr, _ = readers[1].value()
    return proc.returncode, stdout, dropped, stderr, readers[0].over


def remote_command(argv: Sequence[str]) -> str:
    """One remote shell command line in which every argument is a single, literal word."""
    if not argv:
        raise ValueError("empty remote command")
    return " ".join(shlex.quote(str(a)) for a in argv)


def sh_script(script: str, *args: str) -> list[str]:
    """argv running a POSIX ``sh`` script remotely with ``args`` as ``$1``, ``$2``... (quoted, never interpolated)."""
    return ["sh", "-c", script, "sh", *args]


class _Failure(Enum):
    UNKNOWN_KEY = "unknown host key"
    CHANGED_KEY = "changed host key"
    AUTH = "authentication"
    UNREACHABLE = "unreachable"
    DROPPED = "connection lost"


def _classify(stderr: str) -> _Failure:
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr or "has changed and you have requested strict" in stderr:
        return _Failure.CHANGED_KEY
    if "host key is known" in stderr or "Host key verification failed" in stderr:
        return _Failure.UNKNOWN_KEY
    if "Permission denied" in stderr or "Too many authentication failures" in stderr:
        return _Failure.AUTH
    if re.search(
        r"Connection refused|timed out|No route to host|Could not resolve|Name or service not known|"
        r"Network is unreachable|kex_exchange_identification|Connection closed by .* port \d+$",
        stderr,
        re.MULTILINE,
    ):
        return _Failure.UNREACHABLE
    return _Failure.DROPPED


_RETRYABLE = (_Failure.UNREACHABLE, _Failure.DROPPED)


class SshTransport:
    """Runs commands on one host. Use as a context manager (closes the shared connection)."""

    def __init__(self, endpoint: SshEndpoint | str, options: SshOptions = SshOptions()):
        self.endpoint = endpoint if isinstance(endpoint, SshEndpoint) else SshEndpoint.parse(endpoint)
        self.options = options
        self._ssh = shutil.which("ssh")
        if self._ssh is None:
            raise MissingDependency("the OpenSSH client `ssh` is not on PATH; install it (apt install openssh-client)")
        self._control_dir: str | None = None

    # ---- lifetime

    def __enter__(self) -> SshTransport:
        if self.options.multiplex and self._control_dir is None:
            self._control_dir = _control_dir()
            if self._control_dir is None:
                log.info("no temporary folder short enough for ssh's control socket: one connection per command")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._control_dir is None:
            return
        try:
            subprocess.run(
                [*self._base_argv(), "-O", "exit", "--", self.endpoint.host], capture_output=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            pass  # nothing to close, or the master is already gone
        shutil.rmtree(self._control_dir, ignore_errors=True)
        self._control_dir = None

    # ---- argv

    def _base_argv(self) -> list[str]:
        o = self.options
        argv = [self._ssh or "ssh"]
        if o.config_file is not None:
            argv += ["-F", str(o.config_file)]
        argv += [
            "-o",
            "BatchMode=yes",
            "-o",
            f"StrictHostKeyChecking={'accept-new' if o.host_key_policy is HostKeyPolicy.ACCEPT_NEW else 'yes'}",
            "-o",
            f"ConnectTimeout={o.connect_timeout_s}",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=3",
        ]
        if o.known_hosts_file is not None:
            argv += ["-o", f"UserKnownHostsFile={_ssh_quote(str(o.known_hosts_file))}"]
        if o.identity_file is not None:
            argv += ["-i", str(o.identity_file), "-o", "IdentitiesOnly=yes"]
        if self._control_dir is not None:
            argv += [
                "-o",
                "ControlMaster=auto",
                "-o",
                f"ControlPath={_ssh_quote(self._control_dir)}/%C",
                "-o",
                "ControlPersist=120",
            ]
        if self.endpoint.port is not None:
            argv += ["-p", str(self.endpoint.port)]
        if self.endpoint.user is not None:
            argv += ["-l", self.endpoint.user]
        return argv

    def ssh_argv(self, command: str) -> list[str]:
        return [*self._base_argv(), "--", self.endpoint.host, command]

    # ---- running

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | IO[bytes] | None = None,
        timeout: float | None = 600,
        check: bool = True,
        idempotent: bool = True,
        what: str = "",
        limit: int | None = None,
        sink: IO[bytes] | None = None,
    ) -> RemoteResult:
        """Run ``argv`` remotely (each argument quoted). Retries dropped connections when ``idempotent``.

        ``check``: a non-zero exit of the remote command raises :class:`RemoteError`.
        ``stdin`` as a file object is streamed and never retried (its position moved).
        Output is read with a cap (:data:`OUTPUT_KEEP`, head and tail); ``limit``: stdout is data,
        and more than ``limit`` bytes of it is a :class:`RemoteError`; ``sink``: stdout is written to
        this file (emptied before each attempt) instead of kept in memory.
        """
        command = remote_command(argv) + _EXIT_TRAILER
        label = what or argv[0]
        attempts = 1 + (self.options.retries if idempotent and not hasattr(stdin, "read") else 0)
        delay = self.options.backoff_s
        for attempt in range(1, attempts + 1):
            log.debug("ssh %s (%s) attempt %d: %s", self.endpoint, label, attempt, command[:300])
            if sink is not None:
                sink.seek(0)
                sink.truncate()
            try:
                returncode, stdout, dropped, raw_stderr, over = run_capped(
                    self.ssh_argv(command), stdin=stdin, timeout=timeout, limit=limit, sink=sink
                )
            except subprocess.TimeoutExpired as exc:
                raise RemoteError(
                    f"{self.endpoint}: {label} did not finish within {timeout:.0f} s; the device may be overloaded or "
                    "the link stalled. Re-run the same command: finished steps are kept."
                ) from exc
            if over:
                raise RemoteError(
                    f"{self.endpoint}: {label} sent more than {limit} bytes, far more than it should; "
                    "the device's files are not what edge-tl wrote there"
                )
            stderr = raw_stderr.decode("utf-8", errors="replace")
            tagged = _EXIT_RE.search(stderr)
            if tagged is not None or returncode != SSH_ERROR:
                status = int(tagged.group(1)) if tagged is not None else returncode
                stderr = stderr[: tagged.start()] if tagged is not None else stderr
                result = RemoteResult(status, stdout, stderr, dropped)
                if check and status != 0:
                    raise RemoteError(
                        f"{self.endpoint}: {label} failed with exit status {status}: {_tail(stderr or result.text)}"
                    )
                return result
            failure = _classify(stderr)
            if failure not in _RETRYABLE or attempt == attempts:
                raise self._connection_error(failure, stderr, attempts=attempt)
            log.warning("%s: %s (%s); retrying in %.1f s", self.endpoint, failure.value, _tail(stderr, 1), delay)
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")  # the loop returns or raises

    # ---- errors

    def _connection_error(self, failure: _Failure, stderr: str, *, attempts: int) -> RemoteError:
        who = str(self.endpoint)
        kh = f" ({self.options.known_hosts_file})" if self.options.known_hosts_file else ""
        if failure is _Failure.CHANGED_KEY:
            fp = re.search(r"SHA256:[A-Za-z0-9+/=]+", stderr)
            return RemoteError(
                f"{who}: the host key CHANGED (device now offers {fp.group(0) if fp else 'an unknown key'}); "
                f"this is refused even with --accept-new-host-key. If the device was re-flashed, remove the old key "
                f"with `{self.forget_key_command()}` and connect again; otherwise someone may be intercepting the "
                "connection."
            )
        if failure is _Failure.UNKNOWN_KEY:
            fps = self.offered_fingerprints()
            shown = ", ".join(fps) if fps else "fingerprint unavailable (ssh-keyscan failed)"
            return RemoteError(
                f"{who}: host key is not in known_hosts{kh}: the device offers {shown}. Compare it with "
                "`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` run on the device, then either connect once with "
                "`ssh` and accept it, or re-run with --accept-new-host-key (unknown keys are added; changed keys are "
                "still refused)."
            )
        if failure is _Failure.AUTH:
            return RemoteError(
                f"{who}: authentication failed ({_tail(stderr, 1)}). Check the user and key: "
                "`ssh -o BatchMode=yes <host> true` must work without a password prompt "
                "(add the key with ssh-copy-id, or pass --identity-file)."
            )
        if failure is _Failure.UNREACHABLE:
            return RemoteError(
                f"{who}: host unreachable after {attempts} attempt(s) ({_tail(stderr, 1)}). Check that the device is "
                "on, on the network, and that sshd listens on that port."
            )
        return RemoteError(
            f"{who}: connection lost after {attempts} attempt(s) ({_tail(stderr, 1) or 'ssh exit 255'}). "
            "Re-run the same command: a copy resumes where it stopped."
        )

    def forget_key_command(self) -> str:
        """The ``ssh-keygen -R`` line that removes this host's known_hosts entry (``[host]:port`` off port 22)."""
        conf = self.resolved()
        host = conf.get("hostname", self.endpoint.host)
        port = conf.get("port", str(self.endpoint.port or 22))
        entry = host if port == "22" else f"[{host}]:{port}"
        known = self.options.known_hosts_file
        return f"ssh-keygen -R {shlex.quote(entry)}" + (f" -f {shlex.quote(str(known))}" if known is not None else "")

    def resolved(self) -> dict[str, str]:
        """The effective ssh settings for this host (``ssh -G``), resolving aliases."""
        argv = self._base_argv()
        try:
            proc = subprocess.run([*argv, "-G", "--", self.endpoint.host], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return {}
        out = {}
        for line in proc.stdout.splitlines():
            key, _, value = line.partition(" ")
            out.setdefault(key, value)
        return out

    def offered_fingerprints(self) -> list[str]:
        """SHA256 fingerprints of the host keys the device offers (ssh-keyscan)."""
        conf = self.resolved()
        keyscan, keygen = shutil.which("ssh-keyscan"), shutil.which("ssh-keygen")
        if not conf or keyscan is None or keygen is None:
            return []
        try:
            scan = subprocess.run(
                [
                    keyscan,
                    "-T",
                    str(self.options.connect_timeout_s),
                    "-p",
                    conf.get("port", "22"),
                    conf.get("hostname", self.endpoint.host),
                ],
                capture_output=True,
                timeout=self.options.connect_timeout_s + 5,
            )
            fps = subprocess.run([keygen, "-lf", "-"], input=scan.stdout, capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return []
        found = []
        for line in fps.stdout.decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2:
                found.append(f"{parts[1]} ({parts[-1].strip('()')})")
        return found


def _ssh_quote(value: str) -> str:
    """A value for ``ssh -o KEY=VALUE``: double-quoted (spaces), with ``%`` escaped from ssh's token expansion."""
    if '"' in value:
        raise ConfigError(f"ssh cannot be given a path holding a double quote: {value!r}")
    return '"' + value.replace("%", "%%") + '"'


def _control_dir() -> str | None:
    """A private folder for ssh's control socket whose path fits a Unix socket, or None."""
    for base in dict.fromkeys((tempfile.gettempdir(), "/tmp")):
        if len(base) + len("/etl-xxxxxxxx") + _CONTROL_SUFFIX > _SOCKET_PATH_MAX or '"' in base:
            continue
        try:
            # Private (0700): the control socket grants access to the connection.
            return tempfile.mkdtemp(prefix="etl-", dir=base)
        except OSError:
            continue
    return None


def _tail(text: str, lines: int = 3) -> str:
    kept = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("@@@")]
    return " | ".join(kept[-lines:])
