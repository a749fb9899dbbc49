"""The edge-tl wheel python mode installs on a device, and the bundle tree that carries it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from edge_tl.deploy.config import WHEEL_DIR
from edge_tl.errors import ConfigError, RunError


def project_root() -> Path | None:
    """The source checkout edge-tl runs from, when it does (a wheel can be built from it)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "edge_tl").is_dir() else None


def build_wheel(dest: str | os.PathLike[str]) -> Path:
    """``pip wheel --no-deps`` of this checkout into ``dest``: the device installs it with no network."""
    root = project_root()
    if root is None:
        raise ConfigError(
            "edge-tl is not running from a source checkout, so no wheel can be built for the device; "
            "pass one with --wheel (pip download edge-tl --no-deps, or build it from the sources)"
        )
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    # No build isolation first: the installed setuptools is used, so no index is needed. A
    # setuptools too old to build wheels (a fresh venv's) falls back to pip's isolated build,
    # which fetches the build requirements from the index.
    wheels: list[Path] = []
    for isolation in (["--no-build-isolation"], []):
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "--quiet", "-w", str(dest), str(root)],
            capture_output=True,
            text=True,
            check=False,
        )
        wheels = sorted(dest.glob("edge_tl-*.whl"), key=lambda p: p.stat().st_mtime)
        if proc.returncode == 0 and wheels:
            break
    if proc.returncode != 0 or not wheels:
        raise RunError(
            f"building the edge-tl wheel failed (pip exit {proc.returncode}): {proc.stderr.strip()[-800:]} "
            "Install setuptools>=70.1 here, or pass --wheel"
        )
    return wheels[-1]


def staging_view(bundle_root: Path, wheel: Path | None) -> Path:
    """The bundle directory, or (with a wheel) a temporary tree of links to it plus the wheel."""
    if wheel is None:
        return bundle_root
    view = Path(tempfile.mkdtemp(prefix="etl-bundle-"))
    for path in bundle_root.rglob("*"):
        if path.is_file():
            dest = view / path.relative_to(bundle_root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, dest)
            except OSError:  # another file system: copy
                shutil.copyfile(path, dest)
    (view / WHEEL_DIR).mkdir()
    shutil.copyfile(wheel, view / WHEEL_DIR / wheel.name)
    return view
