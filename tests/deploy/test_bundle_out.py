"""`edge-tl bundle --out`: only a folder that is an edge-tl bundle, exactly as its bundle.json lists it, is replaced."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_tl.cli.main import main


@pytest.fixture
def run_copy(deployable_run, tmp_path) -> Path:
    return Path(shutil.copytree(deployable_run, tmp_path / "run"))


def _bundle(capsys, run: Path, out: Path) -> tuple[int, str]:
    args = ["bundle", str(run), "--target", "x86-64", "--precision", "fp32", "--eval-images", "8", "--out", str(out)]
    with pytest.raises(SystemExit) as info:
        main(args)
    printed = capsys.readouterr()
    return info.value.code, printed.out + printed.err


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_web_projects_own_bundle_json_does_not_make_its_folder_replaceable(run_copy, tmp_path, capsys):
    webapp = tmp_path / "webapp"
    (webapp / "src").mkdir(parents=True)
    (webapp / "bundle.json").write_text(json.dumps({"name": "my-webapp"}))
    (webapp / "src" / "main.js").write_text("console.log('keep me')\n")
    before = _tree(webapp)
    code, printed = _bundle(capsys, run_copy, webapp)
    assert code == 1 and "Traceback" not in printed
    assert "its bundle.json is not an edge-tl bundle's (format None, not 'edge-tl-bundle')" in printed
    assert _tree(webapp) == before


def test_an_edge_tl_bundle_holding_a_users_file_is_not_replaced(run_copy, tmp_path, capsys):
    made = tmp_path / "made"
    assert _bundle(capsys, run_copy, made)[0] == 0
    (made / "notes.txt").write_text("my measurements")
    code, printed = _bundle(capsys, run_copy, made)
    assert code == 1 and "it holds files its bundle.json does not list (notes.txt)" in printed
    assert (made / "notes.txt").read_text() == "my measurements"
    # A bundle.json that claims edge-tl's format but lists other files is not edge-tl's either.
    (made / "notes.txt").unlink()
    listed = json.loads((made / "bundle.json").read_text())
    listed["files"] = {"model.onnx": listed["files"][next(iter(listed["files"]))]}
    (made / "bundle.json").write_text(json.dumps(listed))
    before = _tree(made)
    code, printed = _bundle(capsys, run_copy, made)
    assert code == 1 and "does not list" in printed and _tree(made) == before


#: Killed (SIGKILL) as the old bundle's bundle.json is removed, while `bundle --out` replaces a bundle.
KILL_AT_UNLINK = textwrap.dedent("""
    import os, signal, sys

    unlink = os.unlink

    def killing(path, *args, **kwargs):
        if os.path.basename(path) == "bundle.json":
            os.kill(os.getpid(), signal.SIGKILL)
        return unlink(path, *args, **kwargs)

    os.unlink = os.remove = killing
    from edge_tl.cli.main import main
    main(sys.argv[1:])
""")


def test_a_bundle_replacement_killed_midway_leaves_a_whole_bundle(run_copy, tmp_path, capsys):
    from edge_tl.deploy.bundle import Bundle

    made = tmp_path / "made"
    assert _bundle(capsys, run_copy, made)[0] == 0
    args = ["bundle", str(run_copy), "--target", "x86-64", "--precision", "fp32", "--eval-images", "8"]
    killed = subprocess.run([sys.executable, "-c", KILL_AT_UNLINK, *args, "--out", str(made)], capture_output=True)
    assert killed.returncode == -9, killed.stderr
    assert Bundle.load(made).manifest["eval"]["num_images"] == 8  # whole: every file as its bundle.json lists it
    assert _bundle(capsys, run_copy, made)[0] == 0


def test_a_full_disk_under_bundle_out_is_one_line_naming_that_disk(run_copy, tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        code, printed = _bundle(capsys, run_copy, disk / "bundle")
        assert code == 1 and "Traceback" not in printed, printed
        line = f"Error: the disk holding {str(disk)!r} is full while writing '{disk / '.bundle.tmp-'}"
        assert printed.startswith(line) and len(printed.strip().splitlines()) == 1, printed
        assert "/export/model.fp32.onnx' (12.9 MiB needed, " in printed
        assert list(disk.iterdir()) == []  # nothing half-written left there
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)
