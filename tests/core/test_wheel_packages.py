"""Every package of edge_tl is in the wheel's package list, and the list names nothing that is not there.

``[tool.setuptools] packages`` is an explicit list (it also maps ``targets/`` and ``calibration/`` into
``edge_tl.profiles`` / ``edge_tl.recipes``), so a subpackage left out of it installs without its code:
``pip install .`` works and ``import edge_tl.<it>`` fails on the user's machine only.
"""

from __future__ import annotations

from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def _package_dir(package: str, mapping: dict[str, str]) -> Path:
    return ROOT / mapping[package] if package in mapping else ROOT.joinpath(*package.split("."))


def test_every_package_directory_is_in_the_package_list() -> None:
    listed = set(_setuptools()["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "edge_tl").rglob("__init__.py")}
    assert {"edge_tl.importers", "edge_tl.ship", "edge_tl.trt"} <= found  # the scan sees the tree
    missing = sorted(found - listed)
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml, or the wheel lacks them: {missing}"


def test_every_listed_package_exists_and_the_data_packages_hold_their_files() -> None:
    config = _setuptools()
    mapping = config.get("package-dir", {})
    for package in config["packages"]:
        folder = _package_dir(package, mapping)
        assert folder.is_dir(), f"{package} is listed but {folder} does not exist"
        if package not in mapping:
            assert (folder / "__init__.py").is_file(), f"{package} is listed but has no __init__.py"
    for package, patterns in config["package-data"].items():
        assert package in config["packages"], f"package-data for {package}, which is not a listed package"
        for pattern in patterns:
            assert list(_package_dir(package, mapping).glob(pattern)), f"{package}: nothing matches {pattern!r}"
    assert mapping == {"edge_tl.profiles": "targets", "edge_tl.recipes": "calibration"}
