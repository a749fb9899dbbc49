"""DDP on the CPU with gloo and two real processes, launched through torchrun's module API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from edge_tl.models import Weights, WeightsSource, build_model, load_run_model  # noqa: E402
from edge_tl.models.checkpoint import load_checkpoint  # noqa: E402
from edge_tl.runs import Run  # noqa: E402
from edge_tl.train import FinetuneConfig, finetune  # noqa: E402
from edge_tl.train.state import seed_everything  # noqa: E402

# BatchNorm normalises with the statistics of the batch it sees, and one process sees the
# global batch while each of two sees half of it, so BatchNorm in training mode makes 1 and
# 2 processes differ by design. --freeze-bn (BatchNorm in inference mode; SyncBatchNorm is
# CUDA-only) removes that difference; everything else (data order, augmentation, gradient
# averaging over the global batch, optimiser, schedule) must then agree.
SETTINGS = {
    "backbone": "timm:test_efficientnet",
    "weights": "none",
    "img_size": 32,
    "epochs": 1,
    "freeze_epochs": 0,
    "batch_size": 16,
    "lr": 0.01,
    "freeze_bn": True,
    "seed": 5,
}


def _cli_args(settings: dict) -> list[str]:
    args = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if key == "weights" and value == "none":
            args.append("--no-pretrained")
        elif isinstance(value, bool):
            if value:
                args.append(flag)
        else:
            args += [flag, str(value)]
    return args


def _edge_tl(*args: str, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run(
        [sys.executable, "-m", "edge_tl.cli.main", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_two_gloo_processes_equal_one_process(tmp_path: Path, digit_folder) -> None:
    # 8 training images per class x 10 classes = 80 = 5 global batches of 16: no padding.
    data = str(digit_folder(per_class=10))
    one = tmp_path / "one"
    finetune(FinetuneConfig(data=data, out=str(one), quiet=True, **SETTINGS))
    two = tmp_path / "two"
    proc = _edge_tl(
        "finetune", "--data", data, "--out", str(two), "--quiet", "--nproc-per-node", "2", *_cli_args(SETTINGS)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    run = Run.open(two)
    training = run.get("training")
    assert training["status"] == "complete" and training["world_size"] == 2 and training["backend"] == "gloo"
    assert training["steps_per_epoch"] == 5  # per process: 40 images in batches of 8
    assert run.get("data")["num_train"] == 80
    load_run_model(run)  # the run directory is complete and loads
    assert not any(p.name.startswith(".launch-config") for p in two.iterdir())

    a = load_checkpoint(one / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(two / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys()
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=1e-4, atol=1e-5, msg=key)
    # ...and the epoch did move the weights, so the agreement is not trivial.
    seed_everything(SETTINGS["seed"])
    start = build_model(SETTINGS["backbone"], 10, weights=Weights(WeightsSource.NONE)).state_dict()
    assert max(float((a[k].float() - start[k].float()).abs().max()) for k in start) > 1e-3
    # Sharded validation, all-reduced, gives the single-process numbers.
    m1, m2 = Run.open(one).get("metrics"), run.get("metrics")
    assert m1["val_top1"] == m2["val_top1"] and m1["val_top5"] == m2["val_top5"]
    assert m2["val_loss"] == pytest.approx(m1["val_loss"], rel=1e-5)


def test_a_launched_world_of_one_joins_a_process_group_and_equals_the_plain_run(tmp_path: Path, digit_folder) -> None:
    # One process through the launcher takes the multi-process path (process group, DDP
    # wrapper, collectives): this is what a one-GPU NCCL launch exercises on CUDA.
    data = str(digit_folder(per_class=6))
    plain, launched = tmp_path / "plain", tmp_path / "launched"
    finetune(FinetuneConfig(data=data, out=str(plain), quiet=True, **SETTINGS))
    proc = _edge_tl(
        "finetune", "--data", data, "--out", str(launched), "--quiet", "--nproc-per-node", "1", *_cli_args(SETTINGS)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    training = Run.open(launched).get("training")
    assert training["world_size"] == 1 and training["backend"] == "gloo"
    a = load_checkpoint(plain / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(launched / "checkpoints" / "last.pt")["model"]
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_a_failing_worker_fails_the_job_with_a_clear_message(tmp_path: Path, digit_folder) -> None:
    data = str(digit_folder(per_class=10))
    proc = _edge_tl(
        "finetune",
        "--data",
        data,
        "--out",
        str(tmp_path / "r"),
        "--quiet",
        "--nproc-per-node",
        "2",
        "--backbone",
        "no_such_backbone",
        timeout=120,
    )
    assert proc.returncode == 1
    assert "unknown backbone 'no_such_backbone'" in proc.stderr
    # Both workers fail on the backbone; torchrun may stop one (SIGTERM) before it gets there, so
    # which rank is named as failed is a race. Every rank is accounted for either way.
    told = (
        "rank 0 stopped with exit code 1; rank 1 stopped with exit code 1.",
        "rank 0 stopped with exit code 1. torchrun then stopped rank(s) 1.",
        "rank 1 stopped with exit code 1. torchrun then stopped rank(s) 0.",
    )
    assert sum(f"distributed fine-tuning failed: {t} The worker's own error" in proc.stderr for t in told) == 1, (
        proc.stderr
    )


def _worker_pids() -> dict[int, int]:
    """rank -> pid of the running edge-tl DDP workers (read from /proc: Linux)."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"edge_tl.train.ddp_entry" in cmdline:
            env = dict(item.split(b"=", 1) for item in environ if b"=" in item)
            if b"RANK" in env:
                found[int(env[b"RANK"])] = int(entry.name)
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds worker processes through /proc")
def test_a_killed_worker_stops_the_job_and_resume_finishes_it_like_an_uninterrupted_run(
    tmp_path: Path, digit_folder
) -> None:
    import signal
    import time

    data = str(digit_folder(per_class=20))
    settings = dict(SETTINGS, epochs=3)
    whole = tmp_path / "whole"
    proc = _edge_tl(
        "finetune", "--data", data, "--out", str(whole), "--quiet", "--nproc-per-node", "2", *_cli_args(settings)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    split = tmp_path / "split"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    job = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_tl.cli.main",
            "finetune",
            "--data",
            data,
            "--out",
            str(split),
            "--quiet",
            "--nproc-per-node",
            "2",
            *_cli_args(settings),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    last = split / "checkpoints" / "last.pt"  # written atomically after epoch 1's metrics line
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and job.poll() is None and not last.is_file():
        time.sleep(0.02)
    assert job.poll() is None, "the job ended before its first epoch was recorded: " + job.communicate()[1][-2000:]
    os.kill(_worker_pids()[1], signal.SIGKILL)  # rank 1 dies in epoch 2
    _, stderr = job.communicate(timeout=180)
    assert job.returncode == 1
    assert "distributed fine-tuning failed: rank 1 stopped with signal 9, SIGKILL" in stderr
    assert "torchrun then stopped rank(s) 0." in stderr
    assert Run.open(split).get("training")["status"] == "running"
    assert load_checkpoint(split / "checkpoints" / "last.pt")["epoch"] == 1  # what was saved is kept

    proc = _edge_tl(
        "finetune",
        "--data",
        data,
        "--out",
        str(split),
        "--quiet",
        "--nproc-per-node",
        "2",
        "--resume",
        *_cli_args(settings),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_checkpoint(whole / "checkpoints" / "last.pt")
    b = load_checkpoint(split / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert Run.open(split).get("metrics")["val_top1"] == Run.open(whole).get("metrics")["val_top1"]
    # The best-checkpoint state crossed the kill too: best top-1, its epoch, the early-stopping count,
    # and the best checkpoint itself (file and manifest record).
    assert (a["best_top1"], a["best_epoch"], a["bad_epochs"]) == (b["best_top1"], b["best_epoch"], b["bad_epochs"])
    best_a, best_b = (
        load_checkpoint(whole / "checkpoints" / "best.pt"),
        load_checkpoint(split / "checkpoints" / "best.pt"),
    )
    assert best_a["epoch"] == best_b["epoch"] == a["best_epoch"]
    assert Run.open(split).artifact("checkpoint-best").details["epoch"] == a["best_epoch"]
    assert Run.open(split).get("training")["best_epoch"] == Run.open(whole).get("training")["best_epoch"]
