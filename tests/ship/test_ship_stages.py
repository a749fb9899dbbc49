"""The make-like engine of `edge-tl ship` on a real run directory, with stages that write real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_tl.runs import Run
from edge_tl.ship.stages import Outcome, Pipeline, Stage, folder_fingerprint


class Boom(Exception):
    pass


def writer(run_dir: Path, stage: str, name: str, text: str, calls: list[str], *, fail: bool = False):
    """A stage that writes ``text`` to ``stage/name.txt`` and records it as an artifact of ``stage``."""

    def action() -> None:
        calls.append(stage)
        path = run_dir / stage / f"{name}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        if fail:
            raise Boom(stage)
        Run.open(run_dir).add_artifact(name, kind="report", path=path, stage=stage)

    return action


@pytest.fixture
def run_dir(tmp_path) -> Path:
    Run.create(tmp_path / "run")
    return tmp_path / "run"


def chain(run_dir: Path, calls: list[str], *, a: str = "1", b: str = "1", fail: str | None = None) -> list[Stage]:
    return [
        Stage("first", writer(run_dir, "first", "one", a, calls, fail=fail == "first"), {"a": a}),
        Stage("second", writer(run_dir, "second", "two", "x", calls, fail=fail == "second"), {"b": b, "quiet": False}),
        Stage("third", writer(run_dir, "third", "three", "y", calls, fail=fail == "third"), {}),
    ]


def outcomes(results) -> list[str]:
    return [r.outcome.value for r in results]


def test_up_to_date_stages_are_skipped_and_changes_run_what_follows(run_dir):
    calls: list[str] = []
    say = lambda _m: None  # noqa: E731
    assert outcomes(Pipeline(run_dir, force=frozenset(), say=say).run(chain(run_dir, calls))) == ["ran"] * 3
    first = Run.open(run_dir).stage_record("first")
    assert first["status"] == "done" and first["inputs"]["options"] == {"a": "1"}
    assert outcomes(Pipeline(run_dir, force=frozenset(), say=say).run(chain(run_dir, calls))) == ["up to date"] * 3
    assert calls == ["first", "second", "third"]
    # A new option of the second stage: it and the third run, not the first.
    results = Pipeline(run_dir, force=frozenset(), say=say).run(chain(run_dir, calls, b="2"))
    assert outcomes(results) == ["up to date", "ran", "ran"]
    # What is printed is not an input.
    stages = chain(run_dir, calls, b="2")
    stages[1] = Stage("second", stages[1].action, {"b": "2", "quiet": True})
    assert outcomes(Pipeline(run_dir, force=frozenset(), say=say).run(stages)) == ["up to date"] * 3
    # --force first runs everything after it too.
    assert (
        outcomes(Pipeline(run_dir, force=frozenset({"first"}), say=say).run(chain(run_dir, calls, b="2")))
        == ["ran"] * 3
    )


def test_a_changed_artifact_runs_its_stage_and_the_stages_that_read_it(run_dir):
    calls: list[str] = []
    said: list[str] = []
    Pipeline(run_dir, force=frozenset(), say=said.append).run(chain(run_dir, calls))
    (run_dir / "first" / "one.txt").write_text("edited by hand")
    results = Pipeline(run_dir, force=frozenset(), say=said.append).run(chain(run_dir, calls))
    # The first stage's options did not change, but its own artifact did: it is made again, and says why.
    assert outcomes(results) == ["ran", "ran", "ran"]
    assert said[3] == "== first (again: its one (first/one.txt) changed since it was made)"
    assert (run_dir / "first" / "one.txt").read_text() == "1"


def test_a_stage_that_did_not_finish_runs_again(run_dir):
    calls: list[str] = []
    say = lambda _m: None  # noqa: E731
    with pytest.raises(Boom, match="^second$"):
        Pipeline(run_dir, force=frozenset(), say=say).run(chain(run_dir, calls, fail="second"))
    run = Run.open(run_dir)
    assert run.stage_record("first")["status"] == "done" and run.stage_record("second")["status"] == "running"
    assert run.stage_record("third") is None
    results = Pipeline(run_dir, force=frozenset(), say=say).run(chain(run_dir, calls))
    assert outcomes(results) == ["up to date", "ran", "ran"]
    # A finished stage that fails when run again is not left marked done with its old inputs.
    with pytest.raises(Boom, match="^third$"):
        Pipeline(run_dir, force=frozenset({"third"}), say=say).run(chain(run_dir, calls, fail="third"))
    assert Run.open(run_dir).stage_record("third")["status"] == "running"
    assert outcomes(Pipeline(run_dir, force=frozenset(), say=say).run(chain(run_dir, calls)))[2] == Outcome.RAN.value


def test_folder_fingerprint_follows_names_sizes_and_times(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"123")
    (tmp_path / "edge-tl.toml").write_text("epochs = 1\n")
    before = folder_fingerprint(tmp_path, ignore=frozenset({"edge-tl.toml"}))
    (tmp_path / "edge-tl.toml").write_text("epochs = 2\n")
    assert folder_fingerprint(tmp_path, ignore=frozenset({"edge-tl.toml"})) == before
    (tmp_path / "a" / "x.png").write_bytes(b"1234")
    assert folder_fingerprint(tmp_path, ignore=frozenset({"edge-tl.toml"})) != before
    (tmp_path / "a" / "x.png").rename(tmp_path / "a" / "y.png")
    changed = folder_fingerprint(tmp_path, ignore=frozenset({"edge-tl.toml"}))
    (tmp_path / "a" / "y.png").rename(tmp_path / "a" / "x.png")
    assert changed != folder_fingerprint(tmp_path, ignore=frozenset({"edge-tl.toml"}))


def test_a_failed_gate_is_the_stages_result_and_later_stages_still_run(run_dir):
    from edge_tl.errors import ToleranceError

    calls: list[str] = []

    def over_budget() -> None:
        calls.append("quantize")
        raise ToleranceError("INT8 loses 3.1 pt, over the 1 pt budget")

    def stages() -> list[Stage]:
        return [Stage("quantize", over_budget, {}), Stage("third", writer(run_dir, "third", "three", "y", calls), {})]

    results = Pipeline(run_dir, force=frozenset(), say=lambda _m: None).run(stages())
    assert [r.gate for r in results] == ["INT8 loses 3.1 pt, over the 1 pt budget", None] and calls == [
        "quantize",
        "third",
    ]
    # Unchanged, the verdict is repeated without running the stage again.
    results = Pipeline(run_dir, force=frozenset(), say=lambda _m: None).run(stages())
    assert outcomes(results) == ["up to date", "up to date"] and results[0].gate and calls == ["quantize", "third"]
    # Only quantize's budget and verify's gate are gates: elsewhere the error stops ship.
    with pytest.raises(ToleranceError, match="over the 1 pt budget"):
        Pipeline(run_dir, force=frozenset(), say=lambda _m: None).run([Stage("export", over_budget, {})])


def test_a_new_first_stage_moves_the_finished_run_aside(tmp_path):
    """Fine-tuning again over a finished run keeps the old run's files under superseded/: nothing is deleted."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "ship.toml").write_text("epochs = 1\n")

    def make(text: str):
        def action() -> None:
            run = Run.create(run_dir)
            (run_dir / "model.txt").write_text(text)
            run.add_artifact("model", kind="checkpoint", path=run_dir / "model.txt", stage="finetune")

        return action

    def first(text: str) -> Stage:
        return Stage("finetune", make(text), {"epochs": text}, creates_run=True, continues=lambda run: False)

    say = lambda _m: None  # noqa: E731
    Pipeline(run_dir, force=frozenset(), say=say).run([first("1")])
    assert outcomes(Pipeline(run_dir, force=frozenset(), say=say).run([first("1")])) == ["up to date"]
    Pipeline(run_dir, force=frozenset(), say=say).run([first("2")])
    assert (run_dir / "model.txt").read_text() == "2" and (run_dir / "ship.toml").is_file()
    kept = list((run_dir / "superseded").iterdir())
    assert len(kept) == 1 and (kept[0] / "model.txt").read_text() == "1" and (kept[0] / "manifest.json").is_file()
    assert Run.open(run_dir).stage_record("finetune")["inputs"]["options"] == {"epochs": "2"}
    # An unfinished first stage that can continue its run is continued, not moved aside.
    Run.open(run_dir).set_stage_record("finetune", {"status": "running"})
    Pipeline(run_dir, force=frozenset(), say=say).run(
        [Stage("finetune", lambda: None, {"epochs": "2"}, creates_run=True, continues=lambda run: True)]
    )
    assert len(list((run_dir / "superseded").iterdir())) == 1


def test_a_stage_whose_own_files_are_gone_runs_again_and_says_why(tmp_path):
    """rm checkpoints/best.pt, verify/report.json or report/index.html: that stage is made again, not "up to date"."""
    run_dir = tmp_path / "run"
    calls: list[str] = []

    def finetune() -> None:
        calls.append("finetune")
        run = Run.create(run_dir)
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / "best.pt").write_text("weights")
        run.add_artifact("checkpoint-best", kind="checkpoint", path=run_dir / "checkpoints/best.pt", stage="finetune")

    def page() -> None:
        calls.append("report")
        (run_dir / "report").mkdir(exist_ok=True)
        (run_dir / "report" / "index.html").write_text("<html>")

    def stages() -> list[Stage]:
        return [
            Stage("finetune", finetune, {}, creates_run=True, continues=lambda run: False),
            Stage("verify", writer(run_dir, "verify", "report", "rows", calls), {}),
            Stage("report", page, {}, outputs=("report/index.html",)),
        ]

    said: list[str] = []
    Pipeline(run_dir, force=frozenset(), say=said.append).run(stages())
    assert calls == ["finetune", "verify", "report"]
    (run_dir / "report" / "index.html").unlink()
    results = Pipeline(run_dir, force=frozenset(), say=said.append).run(stages())
    assert outcomes(results) == ["up to date", "up to date", "ran"]
    assert said[-1] == "== report (again: its report/index.html is missing)"
    (run_dir / "verify" / "report.txt").unlink()
    results = Pipeline(run_dir, force=frozenset(), say=said.append).run(stages())
    assert outcomes(results) == ["up to date", "ran", "ran"]
    assert said[-2] == "== verify (again: its report (verify/report.txt) is missing)"
    (run_dir / "checkpoints" / "best.pt").unlink()
    results = Pipeline(run_dir, force=frozenset(), say=said.append).run(stages())
    assert outcomes(results) == ["ran", "ran", "ran"]
    assert said[-4] == "== finetune (again: its checkpoint-best (checkpoints/best.pt) is missing)"
    assert said[-3].startswith(f"the run's earlier files are kept in {run_dir / 'superseded'}")
    assert (run_dir / "checkpoints" / "best.pt").read_text() == "weights"
    assert calls == ["finetune", "verify", "report", "report", "verify", "report", "finetune", "verify", "report"]
