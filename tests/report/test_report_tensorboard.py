"""`edge-tl report RUN --tensorboard`: verify's table as a TensorBoard text summary, read back with
TensorBoard's EventAccumulator."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

from edge_tl.cli.main import main  # noqa: E402
from edge_tl.train.tensorboard import VERIFY_TAG  # noqa: E402


def _report(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(["report", *args])
    printed = capsys.readouterr()
    return info.value.code, printed.out, printed.err


def test_report_adds_the_verify_table_as_text(run_copy: Path, capsys) -> None:
    code, out, err = _report(capsys, str(run_copy), "--tensorboard")
    assert code == 0, err
    assert f"tensorboard: {run_copy / 'tensorboard'} (text {VERIFY_TAG})" in out
    events = event_accumulator.EventAccumulator(str(run_copy / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    # The text plugin stores the summary as a string tensor: verify's own Markdown, byte for byte.
    (text,) = events.Tensors(f"{VERIFY_TAG}/text_summary")
    epochs = len((run_copy / "metrics.jsonl").read_text().splitlines())
    assert text.step == epochs
    assert text.tensor_proto.string_val[0].decode() == (run_copy / "verify" / "report.md").read_text()


def test_report_without_a_verify_table_says_what_to_run(run_copy: Path, capsys) -> None:
    (run_copy / "verify" / "report.md").unlink()
    curves = sorted(p.name for p in (run_copy / "tensorboard").iterdir())  # finetune's event file
    assert len(curves) == 1
    code, out, err = _report(capsys, str(run_copy), "--tensorboard")
    assert code == 1 and "has no verify/report.md: run `edge-tl verify" in err
    assert sorted(p.name for p in (run_copy / "tensorboard").iterdir()) == curves
