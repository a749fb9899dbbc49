"""``python -m edge_tl.train.ddp_entry`` given ``edge-tl finetune`` options (not ``--config``) is that command.

Launch scripts written as ``torchrun -m edge_tl.train.ddp_entry --data DIR ...`` rely on it; the worker
module runs the command as a program (it does not import the CLI, which sits above the training package).
"""

from __future__ import annotations

import subprocess
import sys


def _entry(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_tl.train.ddp_entry", *args], capture_output=True, text=True, timeout=120
    )


def test_options_run_the_finetune_command() -> None:
    proc = _entry("--help")
    assert proc.returncode == 0, proc.stderr
    assert "Fine-tune a pretrained backbone" in proc.stdout
    assert "--nproc-per-node" in proc.stdout


def test_the_commands_exit_status_and_message_come_through() -> None:
    proc = _entry("--no-such-option")
    assert proc.returncode == 2
    assert "Error: No such option '--no-such-option'" in proc.stderr
    assert "Usage: edge-tl finetune" in proc.stderr
