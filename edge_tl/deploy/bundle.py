"""A bundle: everything a device needs to build, time and check one model, and nothing else.

Layout (``RUN/bundle/<target>-<precision>/``)::

    bundle.json                          manifest: schema, model, target, sha256 + size of every other file
    export/model.fp32.onnx               the ONNX for the precision, at its run-relative path
    quantize/<recipe>/...                the calibration cache, when the recipe uses one
    compile/<target>-<precision>/        build_engine.sh + build_plan.json (what the device runtime builds
                                         there: TensorRT's engine)
    labels.txt                           class names, one per line (line index = label)
    preprocessing.json                   the preprocessing contract
    target/<name>.toml                   the target profile
    eval/pack.json, eval/inputs-*.bin    the evaluation pack (see :mod:`edge_tl.deploy.evalpack`)
    triton/<model>/...                   with ``triton``: a Triton model repository (:mod:`edge_tl.deploy.triton`)

Run-relative paths are kept because the build plan is written to run from a run's
root: on the device the bundle root plays that role. The bundle's identity
(``digest``) is the sha256 of ``bundle.json``, which lists the checksum of every file.
Bundles are deterministic (no timestamps inside): the same run, target and precision
give the same digest, so re-deploying an unchanged bundle transfers nothing.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_tl import __version__
from edge_tl.compile.plan import DEFAULT_BATCH
from edge_tl.deploy.evalpack import DEFAULT_CHUNK, DEFAULT_IMAGES, write_eval_pack
from edge_tl.deploy.sync import check_relpath
from edge_tl.deploy.triton import model_name, write_triton
from edge_tl.device_runtime import Shipment
from edge_tl.errors import ConfigError, RunError
from edge_tl.runs import (
    Artifact,
    Run,
    atomic_write_json,
    atomic_write_text,
    disk_full,
    sha256_file,
)
from edge_tl.targets import Precision, Target, load_target

BUNDLE_FORMAT = "edge-tl-bundle"
BUNDLE_SCHEMA = 1
MANIFEST = "bundle.json"
STAGE = "bundle"
EVAL_DIR = "eval"


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: dict[str, Any]

    @property
    def digest(self) -> str:
        return sha256_file(self.root / MANIFEST)

    @property
    def files(self) -> dict[str, tuple[str, int]]:
        """Every file (``bundle.json`` included) as relative path -> (sha256, size)."""
        files = {k: (v["sha256"], int(v["size"])) for k, v in self.manifest["files"].items()}
        files[MANIFEST] = (self.digest, (self.root / MANIFEST).stat().st_size)
        return files

    @property
    def model(self) -> dict[str, Any]:
        return dict(self.manifest["model"])

    @property
    def target(self) -> Target:
        return load_target(self.root / self.manifest["target"]["profile"])

    @property
    def precision(self) -> Precision:
        return Precision(self.manifest["precision"])

    @property
    def build_plan(self) -> dict[str, Any] | None:
        plan = self.manifest.get("build_plan")
        return dict(plan) if plan else None

    @classmethod
    def load(cls, root: str | os.PathLike[str], *, verify: bool = True) -> Bundle:
        """Read a bundle; with ``verify`` every file's size and sha256 are checked."""
        root = Path(root)
        try:
            manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise RunError(
                f"{str(root)!r} has no {MANIFEST}: not a bundle (make one with `edge-tl bundle RUN`)"
            ) from exc
        except json.JSONDecodeError as exc:
            raise RunError(f"{str(root / MANIFEST)!r} is not valid JSON ({exc}); rebuild the bundle") from exc
        if manifest.get("format") != BUNDLE_FORMAT or manifest.get("schema_version") != BUNDLE_SCHEMA:
            raise RunError(
                f"{str(root / MANIFEST)!r} is {manifest.get('format')!r} schema {manifest.get('schema_version')!r}; "
                f"this edge-tl ({__version__}) reads {BUNDLE_FORMAT} schema {BUNDLE_SCHEMA}. Rebuild the bundle."
            )
        for name in manifest["files"]:
            check_relpath(name)
        bundle = cls(root, manifest)
        if verify:
            bad = [
                name
                for name, (sha, size) in bundle.files.items()
                if name != MANIFEST
                and (
                    not (root / name).is_file()
                    or (root / name).stat().st_size != size
                    or sha256_file(root / name) != sha
                )
            ]
            if bad:
                raise RunError(
                    f"bundle {str(root)!r}: {', '.join(bad)} missing or changed since it was made; rebuild it"
                )
        return bundle


def bundle_dir(run: Run, target: Target, precision: Precision) -> Path:
    return run.path("bundle", f"{target.name}-{precision.value}")


def bundle_artifact_name(target: Target, precision: Precision) -> str:
    return f"bundle-{target.name}-{precision.value}"


def _eval_chunk(onnx: Artifact, shipment: Shipment) -> int:
    """Images per evaluation chunk: what one inference of the model (or engine profile) takes."""
    batch = (onnx.details.get("input_shape") or ["batch"])[0]
    if isinstance(batch, int):
        return batch
    if shipment.max_batch is not None:
        return shipment.max_batch
    return DEFAULT_CHUNK


def make_bundle(
    run: Run | str | os.PathLike[str],
    *,
    target: str | Target,
    precision: str | Precision,
    out: str | os.PathLike[str] | None = None,
    eval_images: int = DEFAULT_IMAGES,
    tensorrt: str | None = None,
    tar: bool = False,
    triton: bool = False,
) -> Bundle:
    """Write the bundle of ``run`` for ``target``/``precision`` and record it in the run's manifest."""
    run = run if isinstance(run, Run) else Run.open(run)
    target = load_target(target)
    precision = target.check_precision(precision)
    # The target's device runtime says what the device needs: the ONNX, and what builds from it there.
    shipment = target.default_runtime.shipment(run, target, precision, tensorrt=tensorrt)
    onnx, cache = shipment.model, shipment.calib_cache
    final = (Path(out) if out is not None else bundle_dir(run, target, precision)).resolve()
    _check_replaceable(final, run.root)
    work = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:

        def ship(src: Path, rel: str) -> None:
            check_relpath(rel)
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copyfile(src, work / rel)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                # copyfile names its source in the error: say which disk is full, and for what.
                raise disk_full(work / rel, needed=src.stat().st_size) from exc

        ship(run.artifact_path(onnx.name), onnx.path)
        if cache is not None:
            ship(run.artifact_path(cache.name), cache.path)
        for source, rel, executable in shipment.build_files:
            ship(source, rel)
            if executable:
                (work / rel).chmod(0o755)
        classes = [str(c) for c in run.require("classes", stage="bundle")]
        atomic_write_text(work / "labels.txt", "".join(f"{c}\n" for c in classes))
        triton_record = None
        if triton:
            triton_record = write_triton(
                work,
                name=model_name(run.root.resolve().name),
                runtime=target.default_runtime.name,
                onnx_path=run.artifact_path(onnx.name),
                labels="".join(f"{c}\n" for c in classes),
                batch_range=(shipment.build_plan or {}).get("batch"),
                default_max=DEFAULT_BATCH.max,
                build_plan=shipment.build_plan,
            )
        atomic_write_json(work / "preprocessing.json", run.require("preprocessing", stage="bundle"))
        profile = f"target/{target.name}.toml"
        ship(Path(target.source), profile)
        pack = write_eval_pack(run, work / EVAL_DIR, max_images=eval_images, chunk_size=_eval_chunk(onnx, shipment))

        files = {}
        for path in sorted(p for p in work.rglob("*") if p.is_file()):
            rel = path.relative_to(work).as_posix()
            files[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
        manifest = {
            "format": BUNDLE_FORMAT,
            "schema_version": BUNDLE_SCHEMA,
            "edge_tl_version": __version__,
            "run": {"name": run.root.resolve().name, "backbone": run.get("backbone", {}).get("name")},
            "target": {
                "name": target.name,
                "runtime": target.default_runtime.name,
                "kind": target.kind.value,
                "profile": profile,
            },
            "precision": precision.value,
            "model": {
                "artifact": onnx.name,
                "path": onnx.path,
                "sha256": onnx.sha256,
                "input_name": onnx.details.get("input_name"),
                "output_name": onnx.details.get("output_name"),
                "input_shape": onnx.details.get("input_shape"),
                "calib_cache": cache.path if cache is not None else None,
            },
            "reference_metrics": dict(run.get("metrics") or {}),
            "build_plan": shipment.build_plan,
            "eval": {
                "dir": EVAL_DIR,
                "num_images": pack.num_images,
                "requested": eval_images,
                "chunk": pack.chunks[0].count,
                "classes": len(classes),
            },
            "files": files,
        }
        if triton_record is not None:  # only then: a bundle without it keeps its digest
            manifest["triton"] = triton_record
        atomic_write_json(work / MANIFEST, manifest)
        # Two renames, then the old bundle's removal: a kill at any point leaves the old bundle or
        # the new one whole at ``final`` (or nothing there, and the record's stage runs again), never
        # a half-deleted folder that its bundle.json no longer describes.
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if final.exists():
            os.replace(final, old)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(work, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    bundle = Bundle.load(final)
    details = {
        "target": target.name,
        "digest": bundle.digest,
        "files": len(bundle.files),
        "eval_images": pack.num_images,
        "model": onnx.name,
    }
    if tar:
        archive = final.with_name(final.name + ".tar.gz")
        tmp = archive.with_name(f".{archive.name}.tmp-{os.getpid()}")
        with tarfile.open(tmp, "w:gz") as fh:
            fh.add(final, arcname=final.name)
        os.replace(tmp, archive)
        details["tar"] = run.relpath(archive) if _inside(archive, run.root) else str(archive)
    if _inside(final, run.root):
        run.add_artifact(
            bundle_artifact_name(target, precision),
            kind="bundle",
            path=final,
            stage=STAGE,
            precision=precision.value,
            details=details,
        )
    return bundle


def _check_replaceable(final: Path, run_root: Path) -> None:
    """Refuse a bundle folder whose replacement would delete what edge-tl did not make."""
    root = run_root.resolve()
    if final == root or root.is_relative_to(final):
        raise ConfigError(
            f"bundle folder {str(final)!r} is the run folder {str(root)!r} or above it; writing the bundle there "
            "would delete the run. Give --out a new folder, e.g. RUN/bundle/<name> or a folder outside the run."
        )
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise ConfigError(f"bundle folder {str(final)!r} exists and is not a folder; give --out a new folder")
    if final.is_dir() and any(final.iterdir()):
        why = _not_a_bundle(final)
        if why:
            raise ConfigError(
                f"bundle folder {str(final)!r} is not empty and {why}, so edge-tl did not make it and will not "
                "replace it; give --out a new or empty folder"
            )


def _not_a_bundle(folder: Path) -> str | None:
    """Why ``folder`` is not a bundle edge-tl made (and may replace), or None.

    Other tools write a ``bundle.json`` too: only edge-tl's format field, with a file list that
    names every file the folder holds, marks the folder as edge-tl's own (so replacing it deletes
    nothing edge-tl did not write).
    """
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"holds no {MANIFEST}"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"its {MANIFEST} is not edge-tl's (not readable JSON)"
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        seen = manifest.get("format") if isinstance(manifest, dict) else None
        return f"its {MANIFEST} is not an edge-tl bundle's (format {seen!r}, not {BUNDLE_FORMAT!r})"
    listed = manifest.get("files")
    held = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()} - {MANIFEST}
    extra = sorted(held - set(listed)) if isinstance(listed, dict) else sorted(held)
    if extra:
        return f"it holds files its {MANIFEST} does not list ({', '.join(extra[:3])})"
    return None


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True
