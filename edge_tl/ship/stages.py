"""The stages of `edge-tl ship` and when each must run again, like make.

Each stage that finishes records in the run's manifest (``stages.<name>``) the inputs it was
made from: its options, the sha256 of the artifacts the stages before it made (which it
reads), a fingerprint of the images it read, and the token of the stage before it. The next
``ship`` runs a stage again only when those inputs differ, when ``--force`` names it, or when
it never finished: a stage marks itself ``running`` first and ``done`` last, in one atomic
manifest write each, so a stage that was interrupted is never taken for finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from edge_tl.errors import ConfigError, FleetIncomplete, RunError, ToleranceError
from edge_tl.runs import RUN_LOCK_NAME, SUPERSEDED_DIR, Run, _json_default, artifact_matches, now_iso, sha256_file

#: Every stage, in flow order (``import`` and ``finetune`` exclude each other).
STAGE_ORDER = ("import", "finetune", "export", "quantize", "compile", "bundle", "deploy", "verify", "report")
#: Options that are not what a stage is made from: what it prints, and where the run lies
#: (a run directory moved or copied elsewhere is still up to date).
NOT_INPUTS = frozenset({"quiet", "run_dir", "out", "resume"})
#: Where a replaced run's files go (inside the run, never deleted).


class Outcome(str, Enum):
    RAN = "ran"
    UP_TO_DATE = "up to date"


@dataclass(frozen=True)
class Stage:
    """One stage of a ship run: ``action()`` does it; ``options`` and ``files`` are what it is made from."""

    name: str
    action: Callable[[], None]
    options: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)  # input files/folders outside the run -> fingerprint
    creates_run: bool = False  # the stage makes the run directory (finetune, import)
    continues: Callable[[Run], bool] | None = None  # whether it can continue the unfinished run it finds
    outputs: tuple[str, ...] = ()  # files the stage writes that are not artifacts (the report page), by run path


@dataclass(frozen=True)
class StageResult:
    name: str
    outcome: Outcome
    seconds: float
    gate: str | None  # why a gate failed (quantize's budget, verify's), else None


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_json_default))


def folder_fingerprint(path: str | os.PathLike[str], *, ignore: frozenset[str] = frozenset()) -> str:
    """sha256 over every file's relative path, size and modification time (as make decides)."""
    root = Path(path).resolve()
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if rel in ignore:
                continue
            stat = full.stat()
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    path = Path(path)
    return folder_fingerprint(path) if path.is_dir() else sha256_file(path)


def artifact_hashes(run: Run, stages: set[str], seen: dict[tuple[str, int, int], str] | None = None) -> dict[str, str]:
    """name -> sha256 of the artifacts the given stages made, read from disk now.

    A folder artifact (a bundle) stands by the digest of its files recorded when it was made.
    ``seen``: hashes already read in this process, by path, size and modification time.
    """
    seen = {} if seen is None else seen
    out: dict[str, str] = {}
    for artifact in run.artifacts():
        if artifact.stage not in stages:
            continue
        try:
            full = run.confined(artifact.path, what=f"artifact {artifact.name!r}")
        except RunError:
            out[artifact.name] = "outside the run"
            continue
        if full.is_file():
            stat = full.stat()
            key = (str(full), stat.st_size, stat.st_mtime_ns)
            if key not in seen:
                seen[key] = sha256_file(full)
            out[artifact.name] = seen[key]
        elif full.is_dir():
            out[artifact.name] = str(artifact.details.get("digest", ""))
        else:
            out[artifact.name] = "missing"
    return out


def own_outputs_changed(run: Run, stage: Stage) -> str | None:
    """Why ``stage``'s own recorded outputs cannot be trusted (missing, changed, out of the run), or None.

    A record is trusted only with its files: a stage whose artifact was deleted or edited by
    hand runs again, rather than being "up to date" while the run describes a file it lacks.
    """
    from edge_tl.deploy.bundle import MANIFEST as BUNDLE_MANIFEST  # a folder artifact's own record

    for artifact in run.artifacts():
        if artifact.stage != stage.name:
            continue
        try:
            full = run.confined(artifact.path, what=f"artifact {artifact.name!r}")
        except RunError:
            return f"its {artifact.name} is recorded outside the run ({artifact.path})"
        if not full.exists():
            return f"its {artifact.name} ({artifact.path}) is missing"
        digest = artifact.details.get("digest")
        if (
            full.is_dir()
            and digest
            and (not (full / BUNDLE_MANIFEST).is_file() or sha256_file(full / BUNDLE_MANIFEST) != digest)
        ):
            return f"its {artifact.name} ({artifact.path}) changed since it was made"
        if not artifact_matches(full, artifact):
            return f"its {artifact.name} ({artifact.path}) changed since it was made"
    for rel in stage.outputs:
        if not run.path(rel).is_file():
            return f"its {rel} is missing"
    return None


class Pipeline:
    """Runs the stages in order on the run directory ``out``; skips those that are up to date."""

    def __init__(self, out: Path, *, force: frozenset[str], say: Callable[[str], None]):
        self.out = out
        self.force = force
        self.say = say
        self.results: list[StageResult] = []
        self._seen: dict[
            tuple[str, int, int], str
        ] = {}  # every stage reads the earlier ones' artifacts: hash each once

    def inputs(self, run: Run | None, stage: Stage, before: list[str]) -> dict[str, Any]:
        previous = before[-1] if before else None
        record = run.stage_record(previous) if run is not None and previous else None
        return {
            "options": jsonable({k: v for k, v in stage.options.items() if k not in NOT_INPUTS}),
            "files": dict(stage.files),
            "artifacts": artifact_hashes(run, set(before), self._seen) if run is not None else {},
            "after": {previous: record.get("token") if record else None} if previous else {},
        }

    def run(self, stages: list[Stage]) -> list[StageResult]:
        before: list[str] = []
        for stage in stages:
            self.results.append(self._one(stage, before))
            before.append(stage.name)
        return self.results

    def _one(self, stage: Stage, before: list[str]) -> StageResult:
        run = Run.open(self.out) if Run.exists(self.out) else None
        inputs = self.inputs(run, stage, before)
        record = run.stage_record(stage.name) if run is not None else None
        done = record is not None and record.get("status") == "done" and not record.get("incomplete")
        changed = own_outputs_changed(run, stage) if done and run is not None else None
        if done and record.get("inputs") == inputs and stage.name not in self.force and changed is None:
            return StageResult(stage.name, Outcome.UP_TO_DATE, 0.0, record.get("gate"))
        self.say(f"== {stage.name}" + (f" (again: {changed})" if changed else ""))
        if run is not None:
            finished = record is not None and record.get("status") == "done"
            resumable = stage.continues is not None and stage.continues(run)
            if stage.creates_run and (finished or stage.name in self.force or not resumable):
                self._supersede(run)
                run = None
            else:
                run.set_stage_record(stage.name, {"status": "running", "started": now_iso()})
        started = time.perf_counter()
        gate = None
        incomplete = False
        try:
            stage.action()
        except FleetIncomplete as exc:
            # The devices that were reached are deployed; later stages still run on them, ship exits
            # non-zero at the end, and the next ship deploys again (the missing ones may be back).
            gate, incomplete = str(exc), True
            self.say(f"deploy incomplete: {gate}")
        except ToleranceError as exc:
            if stage.name not in ("quantize", "verify"):
                raise
            # The gate's verdict is the stage's result: later stages still run, so the user
            # sees the device and the comparison, and ship exits non-zero at the end.
            gate = str(exc)
            self.say(f"gate failed: {gate}")
        seconds = time.perf_counter() - started
        run = Run.open(self.out)
        # Inputs again, now that the stage made the run (finetune, import) or changed it.
        inputs = self.inputs(run, stage, before)
        run.set_stage_record(stage.name, {
            "status": "done", "inputs": inputs, "token": uuid.uuid4().hex, "created": now_iso(),
            "seconds": round(seconds, 3), "gate": gate, **({"incomplete": True} if incomplete else {}),
        })  # fmt: skip
        return StageResult(stage.name, Outcome.RAN, seconds, gate)

    def _supersede(self, run: Run) -> None:
        """Move a finished (or changed) run's files aside before its first stage runs again: nothing is lost."""
        from edge_tl.ship.config import RUN_CONFIG_NAME

        keep = {RUN_CONFIG_NAME, SUPERSEDED_DIR, RUN_LOCK_NAME}  # the lock this ship holds stays in place
        target = set_aside(run.root, [e for e in run.root.iterdir() if e.name not in keep])
        self.say(f"the run's earlier files are kept in {target}")


def set_aside(root: Path, entries: list[Path]) -> Path:
    """Move ``entries`` of the run folder ``root`` into a new ``superseded/<time>/`` folder (never deleted)."""
    target = root / SUPERSEDED_DIR / now_iso().replace(":", "")
    suffix = 0
    while target.exists():
        suffix += 1
        target = target.with_name(f"{target.name.split('.')[0]}.{suffix}")
    target.mkdir(parents=True)
    for entry in sorted(entries, key=lambda p: p.name == "manifest.json"):  # the manifest last
        shutil.move(str(entry), str(target / entry.name))
    return target


def resume_hint(exc: ConfigError, out: Path) -> ConfigError:
    """finetune's --resume refusal, said as ship's user would fix it."""
    return ConfigError(
        f"{out} holds an interrupted fine-tune made with other settings ({str(exc).split('(', 1)[-1].split(')')[0]}); "
        "repeat its settings to continue it, or add --force finetune to start it again"
    )
