"""`edge-tl ship --weights W --data D`: the folder gives the imported model its validation and calibration
images, and a ship killed while it moves the imported run into RUN never leaves RUN holding another model."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from shiplab import manifest, write_digits

#: The move that would have put the manifest in place: everything else of the import is in RUN by then.
KILL_AT_MANIFEST = textwrap.dedent("""
    import os, shutil, signal, sys

    def killing(move):
        def wrapped(src, dst, *args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__")
            if caller == "edge_tl.ship.api" and os.path.basename(dst) == "manifest.json":
                os.kill(os.getpid(), signal.SIGKILL)
            return move(src, dst, *args, **kwargs)
        return wrapped

    shutil.move, os.replace = killing(shutil.move), killing(os.replace)
    from edge_tl.cli.main import main
    main(sys.argv[1:])
""")


def _weights(path: Path, seed: int) -> dict:
    import torch
    import torchvision

    torch.manual_seed(seed)
    state = torchvision.models.resnet18(weights=None, num_classes=3).state_dict()
    torch.save(state, path)
    return state


def _ship(*args: object, kill: bool = False) -> subprocess.CompletedProcess:
    head = [sys.executable, "-c", KILL_AT_MANIFEST] if kill else [sys.executable, "-m", "edge_tl"]
    return subprocess.run([*head, "ship", *map(str, args)], capture_output=True, text=True, timeout=900)


def test_a_ship_killed_while_moving_its_import_is_shipped_again_with_the_new_weights(tmp_path):
    pytest.importorskip("torchvision")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("sklearn")
    import numpy as np
    import onnx
    from onnx import numpy_helper

    data = write_digits(tmp_path / "images")
    w1, w2 = _weights(tmp_path / "w1.pt", 1), _weights(tmp_path / "w2.pt", 2)
    run = tmp_path / "run"
    # Untrained weights score near chance: the import's sanity line is told so (this test is about the kill).
    common = ["--data", data, "--out", run, "--backbone", "resnet18", "--img-size", "32", "--target", "x86-64",
              "--threads", "1", "--calib-samples", "24", "--parity-images", "8", "--eval-images", "24",
              "--accept-low-accuracy", "--quiet"]  # fmt: skip
    killed = _ship(*common, "--weights", tmp_path / "w1.pt", kill=True)
    assert killed.returncode == -9, killed.stderr
    assert (run / "checkpoints" / "best.pt").is_file() and not (run / "manifest.json").exists()

    # No --calib-data: an INT8 target calibrates on the --data folder, as README says.
    done = _ship(*common, "--weights", tmp_path / "w2.pt")
    assert done.returncode == 0, done.stdout + done.stderr
    m = manifest(run)
    best = m["artifacts"]["checkpoint-best"]
    assert not (run / "checkpoints" / "checkpoints").exists()
    assert hashlib.sha256((run / best["path"]).read_bytes()).hexdigest() == best["sha256"]
    assert m["backbone"]["weights"] == str((tmp_path / "w2.pt").resolve())
    # The exported model is w2's, not the killed attempt's w1.
    onnx_model = onnx.load(str(run / m["artifacts"]["onnx-fp32"]["path"]))
    heads = [numpy_helper.to_array(t) for t in onnx_model.graph.initializer if tuple(t.dims) == (3, 512)]
    assert len(heads) == 1
    np.testing.assert_array_equal(heads[0], w2["fc.weight"].numpy())
    assert not np.array_equal(heads[0], w1["fc.weight"].numpy())
    assert m["data"]["calib_source"] == str(data.resolve())
    assert m["stages"]["quantize"]["status"] == "done"
    assert any(a["stage"] == "quantize" and a["kind"] == "onnx" for a in m["artifacts"].values())
    # The killed attempt's files are kept aside, never merged into the new run.
    kept = list((run / "superseded").iterdir())
    assert len(kept) == 1 and (kept[0] / "checkpoints" / "best.pt").is_file()
    assert not (kept[0] / "manifest.json").exists()
