"""`edge-tl ship` end to end: the whole loop to a loopback device, then make-like re-runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from shiplab import manifest, run_ship, stage_records

from edge_tl.runs import sha256_file

pytestmark = pytest.mark.ssh

LOCAL_STAGES = ("finetune", "export", "quantize", "bundle", "deploy", "verify", "report")
#: The model artifacts an interrupted and an uninterrupted run must give byte for byte.
MODELS = ("checkpoint-best", "onnx-fp32", "onnx-fp16", "onnx-int8-onnxruntime-cpu-int8")
#: The calibration table says when it was made ("created"); everything else in it must be equal.
CALIB_TABLE = "calib-table-onnxruntime-cpu-int8"


def tokens(run: Path) -> dict[str, str]:
    return {name: record["token"] for name, record in stage_records(run).items()}


def test_one_command_runs_the_whole_loop(shipped, sshd):
    records = stage_records(shipped.run)
    assert list(records) == list(LOCAL_STAGES)  # x86-64 runs ONNX Runtime: no TensorRT compile stage
    assert all(r["status"] == "done" and r["gate"] is None for r in records.values())
    artifacts = manifest(shipped.run)["artifacts"]
    for name in (*MODELS, CALIB_TABLE, "bundle-x86-64-int8", f"deploy-{sshd.alias}"):
        assert name in artifacts, f"{name} missing; the run has {sorted(artifacts)}"
        assert (shipped.run / artifacts[name]["path"]).exists()
    # The device measured the INT8 model and its accuracy there.
    device = artifacts[f"deploy-{sshd.alias}"]
    assert device["precision"] == "int8" and device["metrics"]["p50_ms"] > 0 and 0 <= device["metrics"]["top1"] <= 1
    accuracy = json.loads((shipped.run / "deploy" / sshd.alias / "accuracy.json").read_text())
    assert accuracy["results"][0]["num_images"] == 24
    assert (shipped.run / "verify" / "report.md").is_file() and (shipped.run / "report" / "index.html").is_file()
    # The stage options passed through: 32 px, three epochs, 48 calibration images.
    assert manifest(shipped.run)["preprocessing"]["input_size"] == 32
    assert len([ln for ln in (shipped.run / "metrics.jsonl").read_text().splitlines() if ln.strip()]) == 3
    assert records["quantize"]["inputs"]["options"]["calib_samples"] == 48
    assert records["quantize"]["inputs"]["options"]["recipe"] is None  # the CLI then takes x86-64's recipe
    assert artifacts["onnx-int8-onnxruntime-cpu-int8"]["details"]["recipe"]["name"] == "onnxruntime-cpu-int8"
    # One summary table (after what the stages print), every stage in it, then the report's path.
    lines = shipped.stdout.splitlines()
    heads = [i for i, ln in enumerate(lines) if ln.split() == ["stage", "status", "seconds", "result"]]
    assert len(heads) == 1
    table = lines[heads[0] + 1 : heads[0] + 8]
    assert [ln.split()[0] for ln in table] == list(LOCAL_STAGES) and all(" ran " in ln for ln in table)
    assert lines[heads[0] + 8] == f"report: {shipped.run / 'report' / 'index.html'}"
    assert (shipped.run / "ship.toml").is_file()
    print(f"full ship run: {shipped.seconds:.1f} s")


def test_the_same_command_again_runs_no_stage(shipped, run_copy):
    before = stage_records(run_copy)
    started = time.perf_counter()
    done = run_ship(*shipped.args, "--out", run_copy)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    assert stage_records(run_copy) == before  # no record, created time or token changed
    assert all("up to date" in ln for ln in done.stdout.splitlines()[1:8])
    print(f"no-op re-run: {seconds:.1f} s")


def test_a_new_budget_reruns_quantize_and_what_follows(shipped, run_copy):
    before = stage_records(run_copy)
    done = run_ship(*shipped.args_with(max_accuracy_drop="2"), "--out", run_copy)
    assert done.returncode == 0, done.stderr
    after = stage_records(run_copy)
    for stage in ("finetune", "export"):
        assert after[stage] == before[stage], stage
    for stage in ("quantize", "bundle", "deploy", "verify", "report"):
        assert (
            after[stage]["token"] != before[stage]["token"] and after[stage]["created"] >= before[stage]["created"]
        ), stage
    int8 = manifest(run_copy)["artifacts"]["onnx-int8-onnxruntime-cpu-int8"]
    assert int8["metrics"]["max_accuracy_drop_points"] == 2.0


def test_force_reruns_the_stage_and_the_ones_after_it(shipped, run_copy):
    before = tokens(run_copy)
    done = run_ship(*shipped.args, "--out", run_copy, "--force", "verify")
    assert done.returncode == 0, done.stderr
    after = tokens(run_copy)
    assert {s for s in after if after[s] != before[s]} == {"verify", "report"}
    # A stage this run does not have is refused by name.
    done = run_ship(*shipped.args, "--out", run_copy, "--force", "compile")
    assert done.returncode == 1 and "--force compile: this run has no such stage" in done.stderr
    assert tokens(run_copy) == after


def _wait_for_running(run: Path, stage: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"ship ended ({proc.returncode}) before {stage} started"
        try:
            if stage_records(run).get(stage, {}).get("status") == "running":
                return
        except (OSError, json.JSONDecodeError):
            pass  # between two writes
        time.sleep(0.02)
    raise AssertionError(f"{stage} did not start within {timeout} s")


def test_killed_during_quantize_then_continued_gives_the_same_artifacts(shipped, run_copy):
    # --force quantize: the copy's quantize runs again, and is killed while it runs.
    proc = subprocess.Popen([sys.executable, "-m", "edge_tl", "ship", *shipped.args, "--out", str(run_copy),
                             "--force", "quantize"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_for_running(run_copy, "quantize", proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert stage_records(run_copy)["quantize"]["status"] == "running"  # killed before it finished
    done = run_ship(*shipped.args, "--out", run_copy)  # no --force: it continues because quantize never finished
    assert done.returncode == 0, done.stderr
    records = stage_records(run_copy)
    assert all(r["status"] == "done" for r in records.values())
    assert "quantize  ran" in done.stdout and "finetune  up to date" in done.stdout
    for name in MODELS:
        path = manifest(run_copy)["artifacts"][name]["path"]
        assert sha256_file(run_copy / path) == sha256_file(shipped.run / path), name
    tables = [
        json.loads((run / manifest(run)["artifacts"][CALIB_TABLE]["path"]).read_text())
        for run in (run_copy, shipped.run)
    ]
    assert tables[0].pop("created") >= tables[1].pop("created") and tables[0] == tables[1]
    bundle = manifest(run_copy)["artifacts"]["bundle-x86-64-int8"]["details"]["digest"]
    assert bundle == manifest(shipped.run)["artifacts"]["bundle-x86-64-int8"]["details"]["digest"]


def test_ship_toml_repeats_the_run(shipped, run_copy):
    """RUN/ship.toml given back (and only --out changed) makes the same stages: nothing runs again."""
    before = tokens(run_copy)
    done = run_ship("--config", run_copy / "ship.toml", "--out", run_copy)
    assert done.returncode == 0, done.stderr
    assert tokens(run_copy) == before
    # What ship.toml holds is what the command line gave.
    text = (run_copy / "ship.toml").read_text()
    assert "max-accuracy-drop = 1.0" in text and "epochs = 3" in text and "calib-samples = 48" in text


def test_killed_during_finetune_then_continued_resumes_it(shipped, tmp_path):
    """The next `ship` resumes an interrupted fine-tune from its last checkpoint, as `finetune --resume` does."""
    torch = pytest.importorskip("torch")
    run = tmp_path / "run"
    # No --host: the fine-tune is what is compared (it does not depend on the device).
    local = [a for a in shipped.args]
    host = local.index("--host")
    del local[host : host + 2]
    proc = subprocess.Popen([sys.executable, "-m", "edge_tl", "ship", *local, "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while not (run / "checkpoints" / "last.pt").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert manifest(run)["training"]["status"] == "running" and "finetune" not in stage_records(run)
    done = run_ship(*local, "--out", run)
    assert done.returncode == 0, done.stderr
    assert "finetune  ran" in done.stdout and not (run / "superseded").exists()  # continued, not started anew
    epochs = [json.loads(ln)["epoch"] for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    assert epochs == sorted(set(epochs)) and len(epochs) == 3  # no epoch trained twice, none missing
    mine = torch.load(run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)["model"]
    theirs = torch.load(shipped.run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)["model"]
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key  # the same weights as the uninterrupted run


def test_images_the_run_was_trained_on_are_not_checked_again(shipped, tmp_path):
    """The pre-flight decodes the images only when they changed since the run's fine-tune read them."""
    import shutil

    from edge_tl.cli.ship import _image_fingerprints
    from edge_tl.ship.preflight import checked_before

    data = Path(shutil.copytree(shipped.data, tmp_path / "images"))  # the same names, sizes and times
    values = {"data": data, "val_data": None}
    assert checked_before(shipped.run, _image_fingerprints(values))
    (data / "digit1" / "extra.png").write_bytes(
        (data / "digit1").joinpath(sorted(p.name for p in (data / "digit1").iterdir())[0]).read_bytes()
    )
    assert not checked_before(shipped.run, _image_fingerprints(values))
    (data / "digit1" / "extra.png").unlink()
    (data / "edge-tl.toml").write_text("epochs = 3\n")  # options are not images
    assert checked_before(shipped.run, _image_fingerprints(values))
    assert not checked_before(shipped.run, _image_fingerprints({"data": data, "val_data": data}))
    assert not checked_before(tmp_path / "no-run", _image_fingerprints(values))


def test_an_interrupted_fine_tune_with_other_settings_is_refused_by_name(shipped, run_copy):
    """A fine-tune stopped mid-way (its state as a kill leaves it) is continued only with its own settings."""
    state = manifest(run_copy)
    state["training"]["status"] = "running"
    del state["stages"]["finetune"]
    (run_copy / "manifest.json").write_text(json.dumps(state))
    done = run_ship(*shipped.args_with(lr="0.02"), "--out", run_copy)
    assert done.returncode == 1
    # (finetune also names --out: the copy lies elsewhere than the run it interrupted)
    assert (
        "holds an interrupted fine-tune made with other settings (" in done.stderr and "lr: 0.01 -> 0.02" in done.stderr
    )
    assert "--force finetune" in done.stderr and not (run_copy / "superseded").exists()


def test_a_stage_whose_own_files_were_deleted_or_edited_runs_again(shipped, run_copy):
    """rm report/index.html, rm verify/report.json, a hand-edited model.int8.onnx: that stage (and what
    reads it) runs again and says why, where each was "up to date" with the file gone."""
    import onnx

    (run_copy / "report" / "index.html").unlink()
    done = run_ship(*shipped.args, "--out", run_copy)
    assert done.returncode == 0, done.stderr
    assert "== report (again: its report/index.html is missing)" in done.stderr.splitlines()
    assert "report    ran" in done.stdout and "verify    up to date" in done.stdout
    assert (run_copy / "report" / "index.html").is_file()

    before = tokens(run_copy)
    (run_copy / "verify" / "report.json").unlink()
    done = run_ship(*shipped.args, "--out", run_copy)
    assert done.returncode == 0, done.stderr
    assert "== verify (again: its verify-report (verify/report.json) is missing)" in done.stderr.splitlines()
    after = tokens(run_copy)
    assert {s for s in after if after[s] != before[s]} == {"verify", "report"}
    assert "No comparison with the original yet" not in (run_copy / "report" / "index.html").read_text()

    record = manifest(run_copy)["artifacts"]["onnx-int8-onnxruntime-cpu-int8"]
    model = onnx.load(str(run_copy / record["path"]))
    model.producer_name = "edited by hand"
    onnx.save(model, str(run_copy / record["path"]))
    before = tokens(run_copy)
    done = run_ship(*shipped.args, "--out", run_copy)
    assert done.returncode == 0, done.stderr
    assert (
        f"== quantize (again: its onnx-int8-onnxruntime-cpu-int8 ({record['path']}) changed since it was made)"
        in done.stderr.splitlines()
    )
    after = tokens(run_copy)
    assert {s for s in after if after[s] != before[s]} == {"quantize", "bundle", "deploy", "verify", "report"}
    again = manifest(run_copy)["artifacts"]["onnx-int8-onnxruntime-cpu-int8"]
    assert sha256_file(run_copy / again["path"]) == again["sha256"] == record["sha256"]  # made again, same bytes
