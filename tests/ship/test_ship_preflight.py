"""`edge-tl ship` refuses what cannot work in seconds, before any training, leaving RUN as it was."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest
from shiplab import run_ship, write_digits

#: The issue's acceptance bound for each refusal (a fresh Python process included).
REFUSAL_SECONDS = 5.0


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    pytest.importorskip("sklearn")
    return write_digits(tmp_path_factory.mktemp("preflight") / "images", classes=(0, 1), per_class=6)


def _refused(*args: object) -> tuple[str, float]:
    started = time.perf_counter()
    done = run_ship(*args, "--epochs", "1", "--img-size", "32", timeout=60)
    seconds = time.perf_counter() - started
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr  # one clear line
    assert "stage" not in done.stdout  # no summary: nothing ran
    return lines[0], seconds


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends: nothing listens there


def test_int8_on_jetson_nano_is_refused(images, tmp_path):
    line, seconds = _refused(
        "--data", images, "--target", "jetson-nano", "--precision", "int8", "--out", tmp_path / "run"
    )
    assert "'jetson-nano'" in line and "no fast INT8" in line and "--precision fp16" in line
    assert seconds < REFUSAL_SECONDS and not (tmp_path / "run").exists()
    print(f"INT8 on jetson-nano refused in {seconds:.2f} s")


def test_an_unreachable_host_is_refused(images, tmp_path):
    port = _closed_port()
    line, seconds = _refused("--data", images, "--target", "x86-64", "--host", f"127.0.0.1:{port}",
                             "--known-hosts", tmp_path / "known_hosts", "--out", tmp_path / "run")  # fmt: skip
    assert f"127.0.0.1:{port}" in line and "unreachable" in line
    assert seconds < REFUSAL_SECONDS and not (tmp_path / "run").exists()
    print(f"unreachable host refused in {seconds:.2f} s")


def test_an_unknown_host_key_is_refused(images, sshd, ssh_lab, tmp_path):
    """The device answers, but its key is not in the known_hosts given: refused, as deploy would."""
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    line, seconds = _refused(
        "--data",
        images,
        "--target",
        "x86-64",
        "--host",
        f"127.0.0.1:{sshd.port}",
        "--known-hosts",
        empty,
        "--identity-file",
        ssh_lab.user_key,
        "--out",
        tmp_path / "run",
    )
    assert "host key is not in known_hosts" in line and "SHA256:" in line  # the fingerprint to compare
    assert not (tmp_path / "run").exists()
    print(f"unknown host key refused in {seconds:.2f} s (with the ssh-keyscan of its fingerprint)")


def test_an_empty_class_is_refused(images, tmp_path):
    data = Path(shutil.copytree(images, tmp_path / "images"))
    (data / "digit7").mkdir()
    line, seconds = _refused("--data", data, "--target", "x86-64", "--out", tmp_path / "run")
    assert "empty classes: 'digit7' (no image files)" in line
    assert seconds < REFUSAL_SECONDS and not (tmp_path / "run").exists()
    print(f"empty class refused in {seconds:.2f} s")


def test_a_corrupt_only_class_and_a_single_class_are_refused(images, tmp_path):
    data = Path(shutil.copytree(images, tmp_path / "images"))
    (data / "digit5").mkdir()
    (data / "digit5" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    line, _ = _refused("--data", data, "--target", "x86-64", "--out", tmp_path / "run")
    assert "'digit5' (1 unreadable files)" in line
    shutil.rmtree(data / "digit5")
    shutil.rmtree(data / "digit1")
    line, _ = _refused("--data", data, "--target", "x86-64", "--out", tmp_path / "run")
    assert "single class ('digit0')" in line and not (tmp_path / "run").exists()


def test_a_refusal_leaves_an_existing_run_as_it_was(images, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    line, _ = _refused("--data", images, "--target", "x86-64", "--out", run)
    assert "not an edge-tl run" in line and [p.name for p in run.iterdir()] == ["notes.txt"]


def test_unknown_config_keys_are_refused_by_name(images, tmp_path):
    config = tmp_path / "ship.toml"
    config.write_text('target = "x86-64"\nepoch = 3\nmax_accuracy_drop = 1\n')
    line, seconds = _refused("--config", config, "--data", images, "--out", tmp_path / "run")
    assert "unknown option(s) 'epoch'" in line and str(config) in line
    assert not (tmp_path / "run").exists()


def test_a_fleet_device_that_cannot_run_its_precision_is_refused(images, tmp_path):
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        '[[device]]\nname = "nano"\nhost = "user@nano.local"\ntarget = "jetson-nano"\nprecision = "int8"\n'
    )
    line, _ = _refused("--data", images, "--target", "x86-64", "--fleet", fleet, "--out", tmp_path / "run")
    assert "device 'nano'" in line and "no fast INT8" in line and not (tmp_path / "run").exists()
