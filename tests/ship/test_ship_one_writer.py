"""One `ship` and one `finetune` per run folder at a time: a second, started while the first trains, is
refused with the first one's pid and changes nothing (real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from shiplab import LATER, TRAIN, manifest, run_ship, write_digits

from edge_tl.runs import run_writer


def _training(run: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    """Wait until ``proc`` is fine-tuning into ``run`` (its manifest says so)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"ended ({proc.returncode}) before training"
        try:
            if manifest(run).get("training", {}).get("status") == "running":
                return
        except (OSError, json.JSONDecodeError):
            pass  # not written yet
        time.sleep(0.05)
    raise AssertionError("did not start training")


def _killed(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def test_a_second_ship_on_the_same_out_is_refused_with_the_first_ones_pid(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    data = write_digits(tmp_path / "images")
    run = tmp_path / "run"
    args = ["--data", str(data), "--target", "x86-64", *TRAIN, *LATER, "--out", str(run)]
    first = subprocess.Popen([sys.executable, "-m", "edge_tl", "ship", *args, "--epochs", "4"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _training(run, first)
        config = (run / "ship.toml").read_text()
        second = run_ship(*args, "--epochs", "1", "--seed", "2")
        assert second.returncode == 1
        assert second.stderr.splitlines()[-1] == f"Error: ship already running on {run} (pid {first.pid}); " + (
            "wait for it to finish or give another --out"
        )
        assert first.poll() is None and (run / "ship.toml").read_text() == config  # the first ship's options
        assert manifest(run)["training"]["config"]["epochs"] == 4
    finally:
        _killed(first)
    with run_writer(run, "ship"):  # the kernel released the killed ship's lock
        assert (run / ".run.lock").read_text() == f"{os.getpid()} ship\n"


def test_a_second_finetune_into_the_same_run_is_refused_with_the_first_ones_pid(tmp_path):
    pytest.importorskip("torch")
    run = tmp_path / "run"
    args = ["--data", "digits", "--img-size", "32", "--epochs", "3", "--batch-size", "32", "--workers", "0",
            "--no-augment", "--quiet", "--out", str(run)]  # fmt: skip
    first = subprocess.Popen([sys.executable, "-m", "edge_tl", "finetune", *args],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _training(run, first)
        for extra in ([], ["--resume"]):
            second = subprocess.run([sys.executable, "-m", "edge_tl", "finetune", *args, *extra],
                                    capture_output=True, text=True, timeout=600)  # fmt: skip
            assert second.returncode == 1
            assert second.stderr.strip() == f"Error: finetune already running on {run} (pid {first.pid}); " + (
                "wait for it to finish or give another --out"
            )
        assert first.poll() is None
    finally:
        _killed(first)
