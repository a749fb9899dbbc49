"""Records are trusted only with their files, paths from records stay in the run, one writer per run,
and a manifest, a labels file or a disk that is not what edge-tl expects gives one typed line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_tl.cli.main import main
from edge_tl.errors import ConfigError, DiskFullError, RunBusyError, RunError
from edge_tl.runs import MANIFEST_NAME, Run, atomic_write_bytes, run_writer


def _cli(capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    printed = capsys.readouterr()
    return info.value.code, printed.out + printed.err


# ---------------------------------------------------------------- a manifest of the wrong shape


def _valid_manifest(root: Path) -> dict:
    run = Run.create(root, backbone={"name": "resnet18"}, classes=["a", "b"], preprocessing={"input_size": 32})
    (root / "m.onnx").write_bytes(b"onnx")
    run.add_artifact("onnx-fp32", kind="onnx", path=root / "m.onnx", stage="export")
    return json.loads((root / MANIFEST_NAME).read_text())


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda m: [m], "the top level is list"),
        (lambda m: {**m, "artifacts": list(m["artifacts"].values())}, "section 'artifacts' is list"),
        (lambda m: {**m, "backbone": "resnet18"}, "section 'backbone' is str \"resnet18\", expected an object"),
        (lambda m: {**m, "classes": ["a", 2]}, "a class name in 'classes' is int 2"),
        (lambda m: {**m, "stages": {"export": "done"}}, "stages['export'] is str"),
        (
            lambda m: {**m, "artifacts": {"onnx-fp32": {**m["artifacts"]["onnx-fp32"], "path": 7}}},
            "artifacts['onnx-fp32'].path is int 7, expected a string",
        ),
    ],
)
def test_a_manifest_of_valid_json_but_the_wrong_shape_is_refused_in_one_line(tmp_path, capsys, change, where):
    root = tmp_path / "run"
    text = json.dumps(change(_valid_manifest(root)))
    (root / MANIFEST_NAME).write_text(text)
    with pytest.raises(RunError, match="is not an edge-tl manifest: " + where.replace("[", r"\[").replace("(", r"\(")):
        Run.open(root)
    # Every reader refuses it the same way: the report, verify and quantize commands.
    for command in (["report", str(root)], ["verify", str(root)], ["quantize", str(root), "--target", "x86-64"]):
        code, printed = _cli(capsys, *command)
        assert code == 1 and printed.startswith("Error: ") and "is not an edge-tl manifest" in printed, printed
        assert len(printed.strip().splitlines()) == 1, printed
    assert (root / MANIFEST_NAME).read_text() == text  # nothing replaced


# ---------------------------------------------------------------- paths from records stay in the run


def test_a_recorded_path_out_of_the_run_is_refused(tmp_path):
    root = tmp_path / "run"
    _valid_manifest(root)
    secret = tmp_path / "id_ed25519"
    secret.write_text("PRIVATE KEY")
    (root / "link.onnx").symlink_to(secret)
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    for path in (str(secret), "../id_ed25519", "link.onnx"):
        manifest["artifacts"]["onnx-fp32"]["path"] = path
        (root / MANIFEST_NAME).write_text(json.dumps(manifest))
        with pytest.raises(RunError, match="onnx-fp32' is recorded as .*(relative to the run|leads out of the run)"):
            Run.open(root).artifact_path("onnx-fp32")
    # A symlink that stays inside the run is the run's own file.
    (root / "inside.onnx").symlink_to(root / "m.onnx")
    manifest["artifacts"]["onnx-fp32"]["path"] = "inside.onnx"
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert Run.open(root).artifact_path("onnx-fp32") == root.resolve() / "m.onnx"


# ---------------------------------------------------------------- records trusted only with their files


def test_an_artifact_is_read_only_as_its_record_describes_it(tmp_path, monkeypatch):
    from edge_tl import runs

    root = tmp_path / "run"
    _valid_manifest(root)
    model = root / "m.onnx"
    record = Run.open(root).artifact("onnx-fp32")
    assert (record.size, record.mtime_ns) == (4, model.stat().st_mtime_ns)
    # Same size, other bytes, mtime put back as recorded and the record made long after it: the
    # cheap check trusts it (as make does); with any other mtime the sha256 decides and refuses.
    old = record.mtime_ns - 10**10
    os.utime(model, ns=(old, old))
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    manifest["artifacts"]["onnx-fp32"]["mtime_ns"] = old
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    hashed: list[Path] = []
    real = runs.sha256_file
    monkeypatch.setattr(runs, "sha256_file", lambda p, **k: hashed.append(Path(p)) or real(p, **k))
    assert Run.open(root).artifact_path("onnx-fp32") == model.resolve() and hashed == []
    model.write_bytes(b"ONNX")
    with pytest.raises(RunError, match="does not match the sha256 in the manifest; it was changed after export"):
        Run.open(root).artifact_path("onnx-fp32")
    assert hashed == [model.resolve()]
    model.write_bytes(b"onnx")  # the same bytes again, newer mtime: the hash says it is the recorded file
    assert Run.open(root).artifact_path("onnx-fp32") == model.resolve()
    model.unlink()
    with pytest.raises(RunError, match="the file is missing; re-run its stage \\(export\\)"):
        Run.open(root).artifact_path("onnx-fp32")


# ---------------------------------------------------------------- one writer per run


def test_a_second_writer_of_a_run_is_refused_with_the_first_ones_pid(tmp_path):
    root = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from edge_tl.runs import run_writer
            with run_writer({str(root)!r}, "ship"):
                print("held", flush=True)
                time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunBusyError, match=f"^ship already running on {root} \\(pid {holder.pid}\\); wait"):
            with run_writer(root, "finetune"):
                pass
    finally:
        holder.kill()
        holder.wait()
    # The kernel drops the lock with its process: a killed ship never leaves the run locked.
    with run_writer(root, "finetune"):
        with run_writer(root, "finetune"):  # ship runs finetune in its own process: the lock it holds covers it
            assert (root / ".run.lock").read_text() == f"{os.getpid()} finetune\n"


# ---------------------------------------------------------------- a full local disk


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 256 KiB tmpfs (needs the right to mount, as root in CI's container)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_is_one_line_naming_the_disk_and_the_space_needed(tiny_disk):
    root = tiny_disk / "run"
    Run.create(root, classes=["a", "b"])
    manifest = (root / MANIFEST_NAME).read_bytes()
    (tiny_disk / "filler").write_bytes(b"\0" * (200 << 10))
    with pytest.raises(DiskFullError) as info:
        atomic_write_bytes(root / "big.bin", b"x" * (100 << 10))
    assert str(info.value).startswith(
        f"the disk holding {str(tiny_disk)!r} is full while writing {str(root / 'big.bin')!r} (100.0 KiB needed, "
    )
    assert sorted(p.name for p in root.iterdir()) == [".manifest.lock", MANIFEST_NAME]  # nothing half-written
    # The command line says it in one line, where it gave an OSError traceback.
    (root / "report").mkdir()
    (root / "report" / "index.html").write_text("old page")
    with open(tiny_disk / "more", "wb", buffering=0) as fh, pytest.raises(OSError, match="No space left"):
        while True:  # the rest of the disk, to the last block
            fh.write(b"\0" * 4096)
    done = subprocess.run([sys.executable, "-m", "edge_tl", "report", str(root)], capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"Error: the disk holding {str(tiny_disk)!r} is full while writing ")
    assert len(done.stderr.strip().splitlines()) == 1
    assert (root / "report" / "index.html").read_text() == "old page"
    assert (root / MANIFEST_NAME).read_bytes() == manifest


# ---------------------------------------------------------------- a labels file of a million lines


def test_a_labels_file_of_a_million_lines_is_checked_in_linear_time(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class-{i}\n" for i in range(10**6)))
    # The quadratic check took hours on a million lines; a bound of 120 s is only ever met by a linear one.
    script = textwrap.dedent(f"""
        from pathlib import Path
        from edge_tl.errors import ConfigError
        from edge_tl.importers.api import read_labels
        try:
            read_labels(Path({str(labels)!r}), outputs=10)
        except ConfigError as exc:
            print(exc)
        print(len(read_labels(Path({str(labels)!r}), outputs=10**6)))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"the model's head has 10 outputs but --labels {str(labels)!r} names 1000000 classes; "
        "give the labels the model was trained with (one per line, in output order)",
        "1000000",
    ]
    from edge_tl.importers.api import read_labels

    labels.write_text("a\nb\na\nc\nb\n")
    with pytest.raises(ConfigError, match=r"names these classes more than once: \['a', 'b'\]"):
        read_labels(labels, outputs=5)


# ---------------------------------------------------------------- a kill inside the manifest write


def test_a_kill_inside_the_manifest_write_leaves_the_manifest_as_it_was(tmp_path):
    root = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from edge_tl.runs import Run

        root = Path({str(root)!r})
        run = Run.create(root, classes=["a", "b"])
        (root / "one.txt").write_text("1")
        run.add_artifact("one", kind="report", path=root / "one.txt", stage="verify")
        (root / "two.txt").write_text("2")
        replace = os.replace

        def killing(src, dst):
            if os.path.basename(dst) == "manifest.json":  # written and synced, not yet in place
                os.kill(os.getpid(), signal.SIGKILL)
            return replace(src, dst)

        os.replace = killing
        run.add_artifact("two", kind="report", path=root / "two.txt", stage="verify")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == -9, done.stderr
    run = Run.open(root)
    assert sorted(a.name for a in run.artifacts()) == ["one"]
    assert run.artifact_path("one") == (root / "one.txt").resolve()
    run.add_artifact("two", kind="report", path=root / "two.txt", stage="verify")
    assert sorted(a.name for a in Run.open(root).artifacts()) == ["one", "two"]
