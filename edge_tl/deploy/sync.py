"""Resumable, verified, all-or-nothing copy of a bundle to a device.

Remote layout under the deploy directory ``R`` (every write stays inside ``R``)::

    R/current -> releases/<digest>-<ns>      symlink to the complete, verified bundle
    R/releases/<digest>-<ns>/                immutable once published
    R/staging/<digest>/                      the copy in progress; ``*.part`` are partial files

One copy:

1. *Probe*: the device computes sha256 of every bundle file in ``staging/<digest>`` and
   ``current``, and the size of every ``*.part``.
2. A file already staged with the right checksum is skipped; one that ``current`` holds
   with the right checksum is copied on the device (no network); a partial upload is
   continued from its last byte; everything else is sent (small files together in one tar
   stream, large ones one by one through ``.part`` files, renamed only when all their
   bytes arrived).
3. *Verify*: the device checksums every staged file; a mismatch is sent again once.
4. *Publish*: ``staging/<digest>`` is renamed into ``releases/`` and ``current`` is
   switched with an atomic rename, so a reader sees the old bundle or the new one, never
   half of one. Older releases are then removed.

An interrupted copy leaves ``staging/<digest>`` behind; running the same deploy again
finishes it.
"""

from __future__ import annotations

import io
import logging
import os
import re
import tarfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from edge_tl.deploy.ssh import RemoteResult, SshTransport, sh_script
from edge_tl.errors import ConfigError, RemoteError

log = logging.getLogger("edge_tl.deploy")

# Marks a device folder as edge-tl's (only such a folder's releases/, staging/ and results/
# are ever replaced or deleted); it is also the file a deploy holds its flock on.
MARKER = ".edge-tl-deploy"

# Files up to this size are sent in one batch; larger ones one by one, resumable by byte.
BATCH_MAX_BYTES = 1 << 20
_SAFE_NAME = re.compile(r"^[^\x00-\x1f\\]+$")


def check_relpath(path: str) -> str:
    """A bundle path that cannot leave its directory: relative, no ``..``, no control characters."""
    pure = PurePosixPath(path)
    if (
        not path
        or pure.is_absolute()
        or ".." in pure.parts
        or path.startswith("~")
        or not _SAFE_NAME.match(path)
        or any(part in ("", ".") for part in path.split("/"))
    ):
        raise ConfigError(
            f"bundle file path {path!r} is not allowed: paths must be relative, without '..', '.', '~' or control "
            "characters, so that nothing is written outside the remote directory. Rebuild the bundle with "
            "`edge-tl bundle`."
        )
    return path


def check_remote_dir(path: str) -> str:
    """The remote deploy directory: relative to the login directory, or absolute; never ``/`` or ``..``."""
    text = path.removeprefix("~/")
    pure = PurePosixPath(text)
    if not text or str(pure) in ("/", ".") or ".." in pure.parts or not _SAFE_NAME.match(text) or text.startswith("-"):
        raise ConfigError(
            f"remote directory {path!r} is not allowed: give a directory such as edge-tl/my-run (relative to the "
            "login directory) or an absolute path other than '/', without '..'"
        )
    return str(pure)


@dataclass(frozen=True)
class SyncReport:
    remote_dir: str
    release: str
    up_to_date: bool = False
    sent: tuple[str, ...] = ()  # uploaded from the first byte
    resumed: tuple[str, ...] = ()  # a partial upload continued
    reused: tuple[str, ...] = ()  # copied on the device from the current release
    skipped: tuple[str, ...] = ()  # already staged and verified
    resent: tuple[str, ...] = ()  # found on the device with a wrong checksum, sent again
    bytes_sent: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    def summary(self) -> str:
        if self.up_to_date:
            return f"{self.remote_dir}: already up to date ({self.release})"
        return (
            f"{self.remote_dir}/current -> {self.release}: sent {len(self.sent)}, resumed {len(self.resumed)}, "
            f"re-sent {len(self.resent)}, reused {len(self.reused)}, skipped {len(self.skipped)} "
            f"({self.bytes_sent / 1e6:.1f} MB in {self.seconds:.1f} s)"
        )


@dataclass
class _Probe:
    current: str = ""  # release the `current` link points at
    staged: dict[str, str] = field(default_factory=dict)
    in_current: dict[str, str] = field(default_factory=dict)
    partial: dict[str, int] = field(default_factory=dict)


# A shell function, run in the deploy directory before anything there is deleted or written:
# edge-tl makes no symbolic link in its folders but `current` (to releases/<name>) and those
# inside venv/. Any other link in a folder deploy deletes from or writes into (planted, or left
# by a user) would send a `rm -rf` or a write through it, out of the device folder. Prints the
# first such link and fails.
NO_FOREIGN_LINKS = r"""
no_foreign_links() {
  for d in staging releases results jobs venv clocks.conf .current.new; do
    if [ -L "$d" ]; then printf '%s\n' "$d" >&2; return 4; fi
  done
  if [ -L current ]; then
    case "$(readlink current)" in releases/*/* | releases/ | releases/. | releases/..) ;; releases/*) t=ok ;; esac
    [ "${t:-}" = ok ] || { printf 'current\n' >&2; return 4; }
  elif [ -e current ]; then printf 'current\n' >&2; return 4
  fi
  for d in staging releases results jobs; do
    [ -d "$d" ] || continue
    l=$(find "$d" -type l 2>/dev/null | head -n 1)
    [ -z "$l" ] || { printf '%s\n' "$l" >&2; return 4; }
  done
  return 0
}
"""
# Exit status of a script that found such a link (its path is the last line of stderr).
FOREIGN_LINK = 4

# Exit status of a script that found the device folder not writable.
READ_ONLY = 5

# $1 dir, $2 marker: exit 3 for a non-empty folder that edge-tl did not make, 4 for a foreign link in
# it, 5 for a folder that cannot be written (a read-only file system: `test -w` sees that, even as root).
CLAIM = (
    NO_FOREIGN_LINKS
    + r"""
if [ -e "$1" ] && [ ! -f "$1/$2" ] && [ -n "$(ls -A -- "$1" 2>/dev/null)" ]; then exit 3; fi
if [ -d "$1" ] && [ ! -w "$1" ]; then exit 5; fi
mkdir -p -- "$1" && { [ -f "$1/$2" ] || : > "$1/$2"; } && cd -- "$1" || exit 1
no_foreign_links || exit 4
"""
)


def foreign_dir_error(host: object, remote_dir: str) -> ConfigError:
    return ConfigError(
        f"{host}: {remote_dir} is not empty and edge-tl did not make it (no {MARKER} file): deploy would replace its "
        "releases/, staging/ and results/. Give --remote-dir a new or empty folder."
    )


def read_only_error(host: object, remote_dir: str) -> RemoteError:
    return RemoteError(
        f"{host}: the device folder {remote_dir} cannot be written (a read-only file system, or not the login "
        "user's): deploy writes its releases/, results/ and jobs/ there. Remount it read-write, or give --remote-dir "
        "a writable folder."
    )


def foreign_link_error(host: object, remote_dir: str, stderr: str) -> ConfigError:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    link = lines[-1] if lines else "?"
    return ConfigError(
        f"{host}: {remote_dir}/{link} is a symbolic link edge-tl did not make: deploy deletes and writes there and "
        "would follow it out of the device folder. Nothing was changed; remove the link on the device (or give "
        "--remote-dir a new folder)."
    )


def check_remote_status(ssh: SshTransport, remote_dir: str, result: RemoteResult, *, what: str) -> None:
    """Raise the one-line error of a device script that refused (foreign link) or failed."""
    if result.returncode == FOREIGN_LINK:
        raise foreign_link_error(ssh.endpoint, remote_dir, result.stderr)
    if result.returncode != 0:
        raise RemoteError(f"{ssh.endpoint}: {what} failed (exit {result.returncode}): {result.stderr.strip()[-500:]}")


def claim_remote_dir(ssh: SshTransport, remote_dir: str) -> None:
    """Mark ``remote_dir`` as edge-tl's, refusing a non-empty folder that holds no marker, or a foreign link."""
    claimed = ssh.run(sh_script(CLAIM, remote_dir, MARKER), check=False, what="claim of the remote directory")
    if claimed.returncode == 3:
        raise foreign_dir_error(ssh.endpoint, remote_dir)
    if claimed.returncode == FOREIGN_LINK:
        raise foreign_link_error(ssh.endpoint, remote_dir, claimed.stderr)
    if claimed.returncode == READ_ONLY:
        raise read_only_error(ssh.endpoint, remote_dir)
    if claimed.returncode != 0:
        raise RemoteError(f"{ssh.endpoint}: cannot create {remote_dir}: {claimed.stderr.strip()}")


_PROBE = r"""
cd -- "$1" 2>/dev/null || exit 0
stage="staging/$2"; shift 2
printf 'current\t%s\n' "$(readlink current 2>/dev/null)"
for f in "$@"; do
  if [ -f "$stage/$f" ]; then s=$(sha256sum < "$stage/$f") && printf 'staged\t%s\t%s\n' "${s%% *}" "$f"
  elif [ -f "$stage/$f.part" ]; then printf 'part\t%s\t%s\n' "$(wc -c < "$stage/$f.part" | tr -d ' ')" "$f"; fi
  if [ -f "current/$f" ]; then s=$(sha256sum < "current/$f") && printf 'current\t%s\t%s\n' "${s%% *}" "$f"; fi
done
"""

# $1 dir, $2 final path, $3 expected size: append stdin, publish only a complete file.
_UPLOAD = r"""
mkdir -p -- "$1" && cd -- "$1" && mkdir -p -- "$(dirname -- "$2")" && cat >> "$2.part" || exit 1
size=$(wc -c < "$2.part" | tr -d ' ')
[ "$size" = "$3" ] || { echo "incomplete: $size of $3 bytes" >&2; exit 3; }
mv -f -- "$2.part" "$2"
"""

_REUSE = r"""
cd -- "$1" && stage="staging/$2" && shift 2 || exit 1
for f in "$@"; do mkdir -p -- "$(dirname -- "$stage/$f")" && cp -- "current/$f" "$stage/$f" || exit 1; done
"""

_DROP = r"""
cd -- "$1" && shift && for f in "$@"; do rm -f -- "$f" "$f.part"; done
"""

_VERIFY = r"""
cd -- "$1" || exit 1; shift
for f in "$@"; do s=$(sha256sum < "$f") && printf '%s\t%s\n' "${s%% *}" "$f" || printf 'missing\t%s\n' "$f"; done
"""

# Removes every release but $1 and every staging folder; only folders named as edge-tl names them
# (releases/<hex>-<digits>, staging/<hex>), never through a link.
_TIDY = r"""
tidy() {
  for d in releases/* staging/*; do
    [ "$d" = "releases/$1" ] || [ ! -d "$d" ] || [ -L "$d" ] && continue
    case "${d#*/}" in *[!0-9a-f-]* | -* | "") continue ;; esac
    rm -rf -- "$d"
  done
  rmdir staging 2>/dev/null
  return 0
}
"""

# Safe to send again (a retry after a dropped link): a rename already done is not redone.
_PUBLISH = (
    NO_FOREIGN_LINKS
    + _TIDY
    + r"""
cd -- "$1" && no_foreign_links || exit $?
mkdir -p releases || exit 1
if [ -d "staging/$2" ]; then mv -T -- "staging/$2" "releases/$3" || exit 1
elif [ ! -d "releases/$3" ]; then echo "staging/$2 is missing: nothing to publish" >&2; exit 1; fi
ln -sfn -- "releases/$3" .current.new && mv -Tf -- .current.new current || exit 1
tidy "$3"
"""
)

# An up-to-date device may still hold what a publish killed in its clean-up left: the old releases.
_TIDY_ONLY = (
    NO_FOREIGN_LINKS
    + _TIDY
    + r"""
cd -- "$1" && no_foreign_links || exit $?
tidy "$2"
"""
)


def _listing_limit(names: list[str], *, lines: int) -> int:
    """The most bytes a per-file listing of ``names`` prints (a sha256, a tab, the name, per line):
    read whole, never cut like text output (a cut listing would look like missing files)."""
    return 4096 + lines * sum(80 + len(n.encode()) for n in names)


def _probe(ssh: SshTransport, remote_dir: str, digest: str, names: list[str]) -> _Probe:
    out = ssh.run(
        sh_script(_PROBE, remote_dir, digest, *names), what="checksum probe", limit=_listing_limit(names, lines=2)
    ).text
    probe = _Probe()
    for line in out.splitlines():
        parts = line.split("\t")
        if parts[0] == "current" and len(parts) == 2:
            probe.current = PurePosixPath(parts[1]).name
        elif parts[0] == "staged" and len(parts) == 3:
            probe.staged[parts[2]] = parts[1]
        elif parts[0] == "current" and len(parts) == 3:
            probe.in_current[parts[2]] = parts[1]
        elif parts[0] == "part" and len(parts) == 3 and parts[1].isdigit():
            probe.partial[parts[2]] = int(parts[1])
    return probe


def _upload(ssh: SshTransport, local: Path, remote_dir: str, remote_path: str, size: int, offset: int) -> int:
    """Append ``local[offset:]`` to the remote ``.part`` file; retried from the new remote size on a drop."""
    sent = 0
    delay = ssh.options.backoff_s
    for attempt in range(ssh.options.retries + 1):
        with open(local, "rb") as fh:
            fh.seek(offset)
            try:
                result = ssh.run(
                    sh_script(_UPLOAD, remote_dir, remote_path, str(size)),
                    stdin=fh,
                    check=False,
                    idempotent=False,
                    what=f"upload of {remote_path}",
                    timeout=None,
                )
            except RemoteError:  # the link dropped (ssh exit 255): find out below how far it got
                result = None
        if result is not None and result.returncode == 0:
            return sent + size - offset
        if result is not None and "incomplete" not in result.stderr:
            raise RemoteError(f"{ssh.endpoint}: writing {remote_path} failed: {result.stderr.strip()}")
        if attempt == ssh.options.retries:
            break
        time.sleep(delay)
        delay *= 2
        # Where did the bytes stop? Continue from there (the probe is retried itself).
        try:
            probe_line = ssh.run(
                sh_script('cd -- "$1" && wc -c < "$2.part" 2>/dev/null || echo 0', remote_dir, remote_path),
                what="resume probe",
            ).text.strip()
        except RemoteError as exc:
            raise _lost(ssh, remote_path, offset, size) from exc
        new_offset = int(probe_line) if probe_line.isdigit() else 0
        sent += max(0, new_offset - offset)
        offset = new_offset if new_offset <= size else 0
    raise _lost(ssh, remote_path, offset, size)


def _lost(ssh: SshTransport, remote_path: str, offset: int, size: int) -> RemoteError:
    return RemoteError(
        f"{ssh.endpoint}: connection lost while sending {remote_path} (at least {offset} of {size} bytes are on the "
        "device). Re-run the same command: the copy resumes where it stopped."
    )


def _upload_batch(ssh: SshTransport, local_root: Path, remote_dir: str, stage: str, names: list[str]) -> int:
    """Send ``names`` in one uncompressed tar stream, unpacked into the staging directory.

    An interrupted batch can leave a truncated file under its final name; the checksum
    probe and the verification step find it and send it again.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            info = tar.gettarinfo(str(local_root / name), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644 | (info.mode & 0o111)
            with open(local_root / name, "rb") as fh:
                tar.addfile(info, fh)
    data = buffer.getvalue()
    ssh.run(
        sh_script('mkdir -p -- "$1/$2" && cd -- "$1/$2" && tar -x -f -', remote_dir, stage),
        stdin=data,
        what=f"upload of {len(names)} small files",
    )
    return sum((local_root / n).stat().st_size for n in names)


def sync_bundle(
    ssh: SshTransport,
    local_root: str | os.PathLike[str],
    files: Mapping[str, tuple[str, int]],
    *,
    digest: str,
    remote_dir: str,
) -> SyncReport:
    """Make ``remote_dir/current`` hold exactly ``files`` (relative path -> (sha256, size)) from ``local_root``."""
    start = time.monotonic()
    local_root = Path(local_root)
    remote_dir = check_remote_dir(remote_dir)
    if not re.fullmatch(r"[0-9a-f]{8,64}", digest):
        raise ConfigError(f"bundle digest {digest!r} is not a hex string")
    names = [check_relpath(n) for n in sorted(files)]
    for name in names:
        path = local_root / name
        if path.is_symlink() or not path.is_file():
            raise ConfigError(f"bundle file {str(path)!r} is missing or not a regular file; rebuild the bundle")
    stage = f"staging/{digest}"
    claim_remote_dir(ssh, remote_dir)

    probe = _probe(ssh, remote_dir, digest, names)
    current_ok = probe.current.startswith(digest + "-") and all(probe.in_current.get(n) == files[n][0] for n in names)
    if current_ok:
        tidied = ssh.run(sh_script(_TIDY_ONLY, remote_dir, probe.current), check=False, what="clean-up of old releases")
        check_remote_status(ssh, remote_dir, tidied, what="clean-up of old releases")
        return SyncReport(remote_dir, probe.current, up_to_date=True, seconds=time.monotonic() - start)

    sent: list[str] = []
    resumed: list[str] = []
    reused: list[str] = []
    skipped: list[str] = []
    resent: list[str] = []
    bytes_sent = 0
    for name in names:
        sha, size = files[name]
        if probe.staged.get(name) == sha:
            skipped.append(name)
        elif probe.in_current.get(name) == sha:
            reused.append(name)
    if reused:
        ssh.run(sh_script(_REUSE, remote_dir, digest, *reused), what="copy of unchanged files on the device")
    wrong = [n for n in names if n in probe.staged and probe.staged[n] != files[n][0]]
    wrong += [
        n
        for n in names
        if probe.current.startswith(digest + "-") and n in probe.in_current and probe.in_current[n] != files[n][0]
    ]
    if wrong:
        log.warning(
            "%s: %s on the device had wrong checksums; sending them again", ssh.endpoint, ", ".join(sorted(set(wrong)))
        )
        ssh.run(sh_script(_DROP, remote_dir, *(f"{stage}/{n}" for n in wrong)), what="removal of damaged files")
    pending = [n for n in names if n not in skipped and n not in reused]
    # Small files that start from zero travel together in one tar stream (one round trip);
    # the rest go one by one, each resumable from its last byte.
    small = [n for n in pending if files[n][1] <= BATCH_MAX_BYTES and not probe.partial.get(n)]
    if small:
        bytes_sent += _upload_batch(ssh, local_root, remote_dir, stage, small)
        for name in small:
            (resent if name in wrong else sent).append(name)
    for name in pending:
        if name in small:
            continue
        sha, size = files[name]
        offset = probe.partial.get(name, 0) if name not in wrong else 0
        if offset > size:
            offset = 0
            ssh.run(sh_script(_DROP, remote_dir, f"{stage}/{name}"), what="removal of an oversized partial file")
        bytes_sent += _upload(ssh, local_root / name, remote_dir, f"{stage}/{name}", size, offset)
        (resent if name in wrong else resumed if offset else sent).append(name)

    # Verify everything staged on the device itself, then publish.
    for attempt in range(2):
        out = ssh.run(
            sh_script(_VERIFY, f"{remote_dir}/{stage}", *names),
            what="checksum verification",
            limit=_listing_limit(names, lines=1),
        ).text
        got = dict(reversed(line.split("\t", 1)) for line in out.splitlines() if "\t" in line)
        bad = [n for n in names if got.get(n) != files[n][0]]
        if not bad:
            break
        if attempt == 1:
            raise RemoteError(
                f"{ssh.endpoint}: {', '.join(bad)} still fail(s) the checksum on the device after being sent again: "
                "check the device's storage (dmesg, df) and re-run."
            )
        log.warning("%s: %s failed verification on the device; sending again", ssh.endpoint, ", ".join(bad))
        ssh.run(sh_script(_DROP, remote_dir, *(f"{stage}/{n}" for n in bad)), what="removal of damaged files")
        for name in bad:
            bytes_sent += _upload(ssh, local_root / name, remote_dir, f"{stage}/{name}", files[name][1], 0)
            resent.append(name)
    release = f"{digest}-{time.time_ns()}"
    published = ssh.run(sh_script(_PUBLISH, remote_dir, digest, release), check=False, what="publishing the bundle")
    check_remote_status(ssh, remote_dir, published, what="publishing the bundle")
    return SyncReport(
        remote_dir,
        release,
        sent=tuple(sent),
        resumed=tuple(resumed),
        reused=tuple(reused),
        skipped=tuple(skipped),
        resent=tuple(dict.fromkeys(resent)),
        bytes_sent=bytes_sent,
        seconds=time.monotonic() - start,
    )
