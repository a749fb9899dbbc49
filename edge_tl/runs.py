"""The run directory and its ``manifest.json``: the contract between stages.

Every stage reads a run directory and writes its artifacts back into it. Each
artifact gets a record in the manifest: what it is, how it was made, its sha256
and the metrics measured on it. A stage never guesses what an earlier stage
did; it reads the manifest.

Layout of a run directory::

    manifest.json            the contract (schema below)
    metrics.jsonl            one JSON line per training epoch
    tensorboard/             the same epochs as TensorBoard scalars (when tensorboard is installed)
    checkpoints/best.pt      best checkpoint by the validation metric
    checkpoints/last.pt      last checkpoint (used by --resume)
    export/                  ONNX files
    quantize/                INT8 models, calibration tables and caches
    compile/                 engines, sidecars and on-device build plans
    verify/                  reports
    deploy/<host>/           results brought back from devices
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import errno
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from edge_tl import __version__
from edge_tl.errors import DiskFullError, RunBusyError, RunError

MANIFEST_NAME = "manifest.json"
# Taken (flock) around every read-change-write of the manifest, by every process and thread.
MANIFEST_LOCK_NAME = ".manifest.lock"
#: Held (flock) by the one `ship` or `finetune` writing the run; it holds that process's pid and command.
RUN_LOCK_NAME = ".run.lock"
#: `edge-tl ship`'s files in a run folder: its resolved options, written before the first stage,
#: and the earlier run it moved aside before fine-tuning anew (never deleted).
SHIP_CONFIG_NAME = "ship.toml"
SUPERSEDED_DIR = "superseded"
#: What edge-tl itself may have put in a run folder before the run's manifest exists (besides the
#: DDP launcher's ``.launch-config.*`` files): a new run may start there, nothing of a user's is there.
PRE_RUN_NAMES = frozenset({SHIP_CONFIG_NAME, SUPERSEDED_DIR, RUN_LOCK_NAME})
SCHEMA_VERSION = 1


# --------------------------------------------------------------------------- atomic writes


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` so that a reader sees the old or the new file, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; give the result the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise disk_full(path, needed=len(data)) from exc
        raise
    return path


def disk_full(path: str | os.PathLike[str], *, needed: int | None = None) -> DiskFullError:
    """The one line for a full local disk: which disk, what was being written, the space needed and free."""
    path = Path(path)
    folder = next((p for p in (path, *path.parents) if p.is_dir()), Path("/"))
    mount = folder.resolve()
    while not mount.is_mount():
        mount = mount.parent
    try:
        free = f"{_size(shutil.disk_usage(folder).free)} free"
    except OSError:
        free = "free space unknown"
    need = f"{_size(needed)} needed" if needed is not None else "more space needed"
    return DiskFullError(
        f"the disk holding {str(mount)!r} is full while writing {str(path)!r} ({need}, {free}); "
        "free space there (or choose another folder) and run the command again: nothing was half-written"
    )


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which would race with
# files created by other threads later on.
_UMASK = _read_umask()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "value"):  # Enums
        return obj.value
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


# The command line of this process when it is the `edge-tl` command, recorded with every
# artifact so that a report can say exactly how each one was made.
_INVOCATION: str | None = None


def record_invocation(command: str | None) -> None:
    global _INVOCATION
    _INVOCATION = command


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Artifact:
    """One artifact of a run as recorded in the manifest.

    ``kind`` is one of: checkpoint, onnx, engine, calibration-table,
    calibration-cache, build-plan, report, bundle, deploy-result.
    ``path`` is relative to the run directory.
    """

    name: str
    kind: str
    path: str
    sha256: str
    created: str
    stage: str
    precision: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    # The file's size and modification time when it was recorded: a reader that finds both
    # unchanged trusts the sha256 without reading the file again (as make decides).
    size: int | None = None
    mtime_ns: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "path": self.path,
            "sha256": self.sha256,
            "created": self.created,
            "stage": self.stage,
            "precision": self.precision,
            "details": copy.deepcopy(self.details),
            "metrics": copy.deepcopy(self.metrics),
            "size": self.size,
            "mtime_ns": self.mtime_ns,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Artifact":
        return cls(
            name=data["name"],
            kind=data["kind"],
            path=data["path"],
            sha256=data["sha256"],
            created=data.get("created", ""),
            stage=data.get("stage", ""),
            precision=data.get("precision"),
            details=dict(data.get("details") or {}),
            metrics=dict(data.get("metrics") or {}),
            size=data.get("size"),
            mtime_ns=data.get("mtime_ns"),
        )


def tool_versions(*names: str) -> dict[str, str]:
    """Versions of the named distributions that are installed (absent ones are left out)."""
    from importlib import metadata

    out = {"edge-tl": __version__}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


# --------------------------------------------------------------------------- the run

# flock is advisory and per open file: a lock file opened anew by each writer excludes
# other processes and other threads alike. Windows has no fcntl; there only threads are excluded.
try:
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - Windows
    _fcntl = None  # type: ignore[assignment]
_THREAD_LOCK = threading.RLock()


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing); yields False when busy and not ``blocking``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if _fcntl is None:
            yield True
            return
        try:
            _fcntl.flock(fd, _fcntl.LOCK_EX | (0 if blocking else _fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            _fcntl.flock(fd, _fcntl.LOCK_UN)
    finally:
        os.close(fd)


#: The manifest's sections and the JSON type each must have when present (every reader relies on them).
_SECTION_TYPES: dict[str, type | tuple[type, ...]] = {
    "created": str,
    "updated": str,
    "edge_tl_version": str,
    "artifacts": dict,
    "stages": dict,
    "backbone": dict,
    "preprocessing": dict,
    "classes": list,
    "data": dict,
    "training": dict,
    "metrics": dict,
    "evaluation": dict,
    "source": dict,
}
#: Fields of an artifact record and their JSON types (``None`` allowed where the field is optional).
_ARTIFACT_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "name": (str, True),
    "kind": (str, True),
    "path": (str, True),
    "sha256": (str, True),
    "created": (str, False),
    "stage": (str, False),
    "precision": (str, False),
    "details": (dict, False),
    "metrics": (dict, False),
    "size": (int, False),
    "mtime_ns": (int, False),
}
_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer"}


def check_manifest_shape(manifest: Any, path: Path) -> None:
    """Refuse, in one line, a manifest that is JSON but not shaped as edge-tl writes it."""

    def refuse(where: str, seen: Any, want: type | tuple[type, ...]) -> RunError:
        wanted = _TYPE_NAMES.get(want, want.__name__) if isinstance(want, type) else "a number"
        return RunError(
            f"{str(path)!r} is not an edge-tl manifest: {where} is {type(seen).__name__} {_short(seen)}, "
            f"expected {wanted}; restore it from a backup or re-run the stage that wrote it"
        )

    if not isinstance(manifest, dict):
        raise refuse("the top level", manifest, dict)
    for key, want in _SECTION_TYPES.items():
        if key in manifest and not isinstance(manifest[key], want):
            raise refuse(f"section {key!r}", manifest[key], want)
    for key in ("artifacts", "stages"):
        for name, record in (manifest.get(key) or {}).items():
            if not isinstance(record, dict):
                raise refuse(f"{key}[{name!r}]", record, dict)
    for name, record in (manifest.get("artifacts") or {}).items():
        for fld, (want, required) in _ARTIFACT_FIELDS.items():
            value = record.get(fld)
            missing = value is None and required
            wrong = value is not None and (not isinstance(value, want) or (want is int and isinstance(value, bool)))
            if missing or wrong:
                raise refuse(f"artifacts[{name!r}].{fld}", value, want)
    odd = [c for c in manifest.get("classes") or [] if not isinstance(c, str)]
    if odd:
        raise refuse("a class name in 'classes'", odd[0], str)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


class Run:
    """A run directory. Create with :meth:`create` (finetune) or :meth:`open` (every later stage)."""

    def __init__(self, root: Path, manifest: dict[str, Any]):
        # Resolved, so that run.path(...) given back to add_artifact is never joined twice.
        self.root = Path(root).resolve()
        self._manifest = manifest

    # ---- construction

    @classmethod
    def create(cls, root: str | os.PathLike[str], **sections: Any) -> "Run":
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        manifest: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "created": now_iso(),
            "edge_tl_version": __version__,
            "artifacts": {},
        }
        manifest.update(sections)
        run = cls(root, manifest)
        with run._locked():
            run._write()
        return run

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> "Run":
        return cls(Path(root), cls._read(Path(root)))

    @staticmethod
    def _read(root: Path) -> dict[str, Any]:
        path = root / MANIFEST_NAME
        if not root.is_dir():
            raise RunError(
                f"run directory {str(root)!r} does not exist. Create one with "
                "`edge-tl finetune --out DIR` or `edge-tl quickstart --out DIR`."
            )
        if not path.is_file():
            raise RunError(
                f"{str(path)!r} is missing: {str(root)!r} is not an edge-tl run directory. "
                "Point at the directory given to `edge-tl finetune --out`."
            )
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise RunError(
                f"{str(path)!r} is not valid JSON ({exc}); restore it from a backup or re-run finetune."
            ) from exc
        if not isinstance(manifest, dict):
            check_manifest_shape(manifest, path)
        version = manifest.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise RunError(
                f"{str(path)!r} has schema_version {version!r}; this edge-tl ({__version__}) reads up to "
                f"{SCHEMA_VERSION}. Upgrade edge-tl."
            )
        check_manifest_shape(manifest, path)
        manifest.setdefault("artifacts", {})
        return manifest

    @staticmethod
    def exists(root: str | os.PathLike[str]) -> bool:
        return (Path(root) / MANIFEST_NAME).is_file()

    # ---- manifest access

    @property
    def manifest(self) -> dict[str, Any]:
        """A deep copy: change the manifest through :meth:`update` and :meth:`add_artifact`."""
        return copy.deepcopy(self._manifest)

    def get(self, key: str, default: Any = None) -> Any:
        return copy.deepcopy(self._manifest.get(key, default))

    def require(self, key: str, *, stage: str = "this stage") -> Any:
        if key not in self._manifest:
            raise RunError(
                f"the manifest of {str(self.root)!r} has no {key!r} section, which {stage} needs. "
                "Was the run made by `edge-tl finetune` and did it finish?"
            )
        return copy.deepcopy(self._manifest[key])

    def update(self, **sections: Any) -> None:
        """Set top-level sections and save atomically."""
        for key in sections:
            if key in ("artifacts", "schema_version"):
                raise ValueError(f"use add_artifact to change {key!r}")

        def change(manifest: dict[str, Any]) -> None:
            for key, value in sections.items():
                manifest[key] = copy.deepcopy(value)

        self._change(change)

    def save(self) -> None:
        """Write this object's sections and artifacts over what another process saved meanwhile (merged)."""
        mine = copy.deepcopy(self._manifest)

        def change(manifest: dict[str, Any]) -> None:
            artifacts = {**manifest.get("artifacts", {}), **mine.get("artifacts", {})}
            manifest.update(mine)
            manifest["artifacts"] = artifacts

        self._change(change)

    def reload(self) -> None:
        with self._locked():
            self._manifest = Run._read(self.root)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with _THREAD_LOCK, file_lock(self.root / MANIFEST_LOCK_NAME):
            yield

    def _write(self) -> None:
        self._manifest["updated"] = now_iso()
        atomic_write_json(self.root / MANIFEST_NAME, self._manifest)

    def _change(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Reload the manifest, apply ``change`` and write it, all under the run's lock.

        Two processes (two quantize recipes, two deploys) that each add a record then both
        keep theirs: each change is applied to the manifest as the other left it.
        """
        with self._locked():
            self._manifest = Run._read(self.root) if (self.root / MANIFEST_NAME).is_file() else self._manifest
            change(self._manifest)
            self._write()

    # ---- stage records (what `edge-tl ship` ran, from which inputs)

    def stage_record(self, name: str) -> dict[str, Any] | None:
        """The record ``edge-tl ship`` keeps of stage ``name`` in the manifest's ``stages`` section."""
        return copy.deepcopy((self._manifest.get("stages") or {}).get(name))

    def set_stage_record(self, name: str, record: dict[str, Any]) -> None:
        """Replace stage ``name``'s record (saved atomically under the run's lock, with the other sections)."""
        self._change(lambda manifest: manifest.setdefault("stages", {}).__setitem__(name, copy.deepcopy(record)))

    # ---- paths

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def confined(self, relpath: str | os.PathLike[str], *, what: str = "a path") -> Path:
        """``relpath`` (read from a record) as a path inside the run: refused if it leaves the run.

        Absolute paths, ``..`` and symlinks that resolve outside the run are all refused, so a
        hand-edited or hostile manifest cannot make a stage read, embed or delete another file.
        """
        return confine(self.root, relpath, what=what)

    def relpath(self, path: str | os.PathLike[str]) -> str:
        p = Path(path).resolve()
        try:
            return p.relative_to(self.root.resolve()).as_posix()
        except ValueError as exc:
            raise RunError(f"{str(p)!r} is outside the run directory {str(self.root)!r}") from exc

    # ---- artifacts

    def add_artifact(
        self,
        name: str,
        *,
        kind: str,
        path: str | os.PathLike[str],
        stage: str,
        precision: str | None = None,
        details: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> Artifact:
        """Record (or replace) an artifact that already lies inside the run directory."""
        full = Path(path)
        if not full.is_absolute():
            full = self.root / full
        if not full.exists():
            raise RunError(f"cannot record artifact {name!r}: {str(full)!r} does not exist")
        stat = full.stat() if full.is_file() else None
        artifact = Artifact(
            name=name,
            kind=kind,
            path=self.relpath(full),
            sha256=_hash_once(full, stat) if stat is not None else "",
            created=now_iso(),
            stage=stage,
            precision=precision,
            details=dict(details or {}),
            metrics=dict(metrics or {}),
            size=stat.st_size if stat is not None else None,
            mtime_ns=stat.st_mtime_ns if stat is not None else None,
        )
        record = artifact.to_dict()
        if _INVOCATION is not None:
            record["command"] = _INVOCATION
        self._change(lambda manifest: manifest["artifacts"].__setitem__(name, record))
        return artifact

    def artifact(self, name: str) -> Artifact:
        record = self._manifest["artifacts"].get(name)
        if record is None:
            known = ", ".join(sorted(self._manifest["artifacts"])) or "none"
            raise RunError(
                f"run {str(self.root)!r} has no artifact {name!r} (it has: {known}). Run the stage that makes it first."
            )
        return Artifact.from_dict(record)

    def has_artifact(self, name: str) -> bool:
        return name in self._manifest["artifacts"]

    def artifacts(self, *, kind: str | None = None) -> Iterator[Artifact]:
        for record in self._manifest["artifacts"].values():
            if kind is None or record["kind"] == kind:
                yield Artifact.from_dict(record)

    def artifact_path(self, name: str) -> Path:
        """The file of artifact ``name``, inside the run and as its record describes it, or a one-line refusal.

        Every stage reads artifacts through here: a missing file, a path out of the run, or a
        file changed since its stage recorded it (size and mtime first, then the sha256) is
        refused with the stage to run again, so no stage works from a file its record does not describe.
        """
        art = self.artifact(name)
        full = self.confined(art.path, what=f"artifact {name!r}")
        if not full.exists():
            raise RunError(
                f"artifact {name!r} is recorded at {str(full)!r} but the file is missing; "
                f"re-run its stage ({art.stage})."
            )
        if not artifact_matches(full, art):
            raise RunError(
                f"artifact {name!r} at {str(full)!r} does not match the sha256 in the manifest; "
                f"it was changed after {art.stage} wrote it. Re-run {art.stage}."
            )
        return full


def confine(root: str | os.PathLike[str], relpath: str | os.PathLike[str], *, what: str = "a path") -> Path:
    """``relpath`` from a record of the run at ``root``, resolved, or :class:`RunError` if it leaves the run."""
    base = Path(root).resolve()
    text = os.fspath(relpath)
    if not text or "\0" in text or Path(text).is_absolute():
        raise RunError(
            f"{what} is recorded as {text!r} in {str(base / MANIFEST_NAME)!r}; edge-tl reads only paths relative "
            "to the run. Restore the manifest or re-run the stage that wrote it."
        )
    full = (base / text).resolve()
    if not full.is_relative_to(base):
        raise RunError(
            f"{what} is recorded as {text!r} in {str(base / MANIFEST_NAME)!r}, which leads out of the run "
            f"(to {str(full)!r}); edge-tl reads only files inside the run. Restore the manifest or re-run the stage."
        )
    return full


# sha256 already read in this process, by path, size and modification time: every stage reads
# the earlier ones' artifacts, and a file is hashed once while it stays the same.
_HASHES: dict[tuple[str, int, int], str] = {}
# A file rewritten within the same clock tick keeps its mtime (file times are coarse, on some disks
# to the second): size and mtime only vouch for a file older than this when they were taken (git's
# "racy" rule).
_RACY_S = 2.0


def _hash_once(path: Path, stat: os.stat_result) -> str:
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _HASHES:
        return _HASHES[key]
    digest = sha256_file(path)
    if _dt.datetime.now().timestamp() - stat.st_mtime_ns / 1e9 >= _RACY_S:
        _HASHES[key] = digest
    return digest


def artifact_matches(path: Path, art: Artifact) -> bool:
    """Whether ``path`` is the file ``art`` records: same size and mtime (not racy), or else the same sha256."""
    if not art.sha256 or not path.is_file():
        return path.exists()  # a folder artifact (a bundle) stands by the digest of its own files
    stat = path.stat()
    if art.size == stat.st_size and art.mtime_ns == stat.st_mtime_ns:
        try:
            recorded = _dt.datetime.fromisoformat(art.created).timestamp()
        except ValueError:
            recorded = 0.0
        if recorded - stat.st_mtime_ns / 1e9 >= _RACY_S:
            return True
    return _hash_once(path, stat) == art.sha256


# --------------------------------------------------------------------------- one writer per run

# Run folders whose writer lock this process holds: ship runs finetune in the same process.
_WRITING: dict[str, str] = {}


@contextlib.contextmanager
def run_writer(root: str | os.PathLike[str], command: str) -> Iterator[None]:
    """Hold the run's writer lock for ``command`` (ship, finetune), or refuse: one writer per run at a time.

    Stages that only add records (quantize, compile, deploy...) keep to the manifest lock, so
    two of them can run at once; a ship or a finetune moves and replaces whole runs, so a second
    one on the same folder is refused with the pid of the first. The lock is an ``flock``: the
    kernel drops it when its process dies, so a killed run never leaves the folder locked.
    """
    root = Path(root).resolve()
    if str(root) in _WRITING:
        yield
        return
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / RUN_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if _fcntl is not None:
            try:
                _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
                pid, other = (holder + ["?", "another edge-tl command"])[:2] if holder else ("?", "edge-tl")
                raise RunBusyError(
                    f"{other} already running on {root} (pid {pid}); wait for it to finish or give another --out"
                ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
        _WRITING[str(root)] = command
        try:
            yield
        finally:
            del _WRITING[str(root)]
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)
