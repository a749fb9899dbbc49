"""benchmarks/gpu_suite.sh on a machine without a GPU: its arguments and the one JSON it writes.

The stages themselves need CUDA; ``--dry-run`` goes through everything else (argument
handling, stage selection, the JSON writer)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_suite.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)


def test_dry_run_writes_one_json_with_the_selected_stages(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "suite.json"
    done = _run("--dry-run", "--only", "tests,data", "--out", str(out))
    assert done.returncode == 0, done.stderr
    summary = json.loads(out.read_text())
    assert list(summary["stages"]) == ["tests", "data"]
    assert summary["stages"]["tests"]["status"] == "dry-run" and summary["all_ok"] is False
    assert "-m gpu" in summary["stages"]["tests"]["command"]
    assert "--device cuda" in summary["stages"]["data"]["command"]
    every = tmp_path / "all.json"
    assert _run("--dry-run", "--out", str(every)).returncode == 0
    assert list(json.loads(every.read_text())["stages"]) == ["tests", "finetune", "latency", "data"]


@pytest.mark.parametrize(
    "args,message",
    [(["--only", "tests,nope"], "unknown stage 'nope'"), (["--fast"], "unknown argument"), (["--out"], "--out needs")],
)
def test_bad_arguments_exit_2_with_a_message(args: list[str], message: str) -> None:
    done = _run(*args)
    assert done.returncode == 2 and message in done.stderr
