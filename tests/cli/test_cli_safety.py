"""The CLI's safety options, in process (``edge_tl.cli.main.main``): accuracy budgets decide the exit
code of verify and quantize, commands refuse to write over what exists, and the gates a user gives
are the gates that are checked (and recorded in the report).

The host-key default of ``edge-tl deploy`` needs an sshd: tests/deploy/test_deploy_cli_host_keys.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge_tl.cli.main import main
from edge_tl.runs import Run


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- verify


def _device_row(run: Path, *, top1: float, reference_top1: float, agreement: float) -> None:
    """What a deploy brings back: the engine's accuracy on the device against the original's."""
    host = run / "deploy" / "jetson-1"
    host.mkdir(parents=True)
    (host / "accuracy.json").write_text(json.dumps({"host": "jetson-1", "results": [{
        "artifact": "engine-orin-fp16", "kind": "engine", "precision": "fp16", "backend": "tensorrt",
        "num_images": 8, "top1": top1, "top5": 0.5, "top1_agreement": agreement, "reference_top1": reference_top1,
        "latency_ms": {"p50": 0.8, "p99": 1.1, "batch_size": 1},
    }]}))  # fmt: skip


VERIFY = [
    "--max-images",
    "8",
    "--no-latency",
    "--artifact",
    "onnx-fp32",
    "--quiet",
    "--device",
    "cpu",
    "--threads",
    "1",
]


def test_verify_exit_code_follows_max_accuracy_drop(run_copy: Path, capsys) -> None:
    _device_row(run_copy, top1=0.25, reference_top1=0.75, agreement=1.0)  # a 50-point drop
    code, out, err = _cli(capsys, "verify", str(run_copy), *VERIFY, "--max-accuracy-drop", "50")
    assert code == 0, err  # the drop must exceed the budget to fail
    assert "engine-orin-fp16" in out
    report = json.loads((run_copy / "verify" / "report.json").read_text())
    assert report["passed"] is True
    assert report["gates"] == {
        "max_accuracy_drop_pts": 50.0,
        "max_class_drop_pts": None,
        "min_agreement": None,
        "gate": "point",
        "significance_level": 0.05,
    }
    assert [r["name"] for r in report["rows"]][:2] == ["checkpoint-best", "onnx-fp32"] and report["num_images"] == 8

    code, out, err = _cli(capsys, "verify", str(run_copy), *VERIFY, "--max-accuracy-drop", "49.9")
    assert code == 1
    assert err.startswith(
        "Error: verification failed: engine-orin-fp16 @ jetson-1: top-1 drop 50.00 pts > --max-accuracy-drop 49.9."
    )
    assert json.loads((run_copy / "verify" / "report.json").read_text())["passed"] is False

    code, _, err = _cli(capsys, "verify", str(run_copy), *VERIFY)  # no budget: nothing to fail
    assert code == 0, err


def test_verify_exit_code_follows_min_agreement_and_the_significance_gate(run_copy: Path, capsys) -> None:
    _device_row(run_copy, top1=0.25, reference_top1=0.75, agreement=0.5)
    code, _, err = _cli(capsys, "verify", str(run_copy), *VERIFY, "--min-agreement", "0.5")
    assert code == 0, err
    code, _, err = _cli(capsys, "verify", str(run_copy), *VERIFY, "--min-agreement", "0.51")
    assert code == 1 and "engine-orin-fp16 @ jetson-1: top-1 agreement 0.5000 < --min-agreement 0.51" in err
    # 50 points over 8 images: over a 10-point budget, but at level 0.01 not told apart from noise.
    code, _, err = _cli(capsys, "verify", str(run_copy), *VERIFY, "--max-accuracy-drop", "10")
    assert code == 1 and "top-1 drop 50.00 pts > --max-accuracy-drop 10" in err
    code, _, err = _cli(capsys, "verify", str(run_copy), *VERIFY, "--max-accuracy-drop", "10", "--gate", "significant",
                        "--significance-level", "0.01")  # fmt: skip
    assert code == 0, err
    gates = json.loads((run_copy / "verify" / "report.json").read_text())["gates"]
    assert gates == {
        "max_accuracy_drop_pts": 10.0,
        "max_class_drop_pts": None,
        "min_agreement": None,
        "gate": "significant",
        "significance_level": 0.01,
    }
    code, _, err = _cli(capsys, "verify", str(run_copy), *VERIFY, "--max-accuracy-drop", "10", "--gate", "significant",
                        "--significance-level", "0.5")  # fmt: skip
    assert code == 1 and "distinguishable from noise on 8 images (exact McNemar p = 0.125)" in err  # p < 0.5


# --------------------------------------------------------------------------- quantize


@pytest.fixture
def harsh_recipe(tmp_path: Path) -> Path:
    """TensorRT placement with activations clipped at the 99th percentile: measurably lossy."""
    from importlib.resources import files

    text = (files("edge_tl.recipes") / "tensorrt-int8-qdq.toml").read_text()  # the shipped recipe
    assert 'name = "tensorrt-int8-qdq"' in text and "percentile = 99.99" in text
    path = tmp_path / "harsh.toml"
    path.write_text(
        text.replace('name = "tensorrt-int8-qdq"', 'name = "harsh"').replace("percentile = 99.99", "percentile = 99.0")
    )
    return path


def test_quantize_exit_code_follows_max_accuracy_drop(
    trained_run: Path, harsh_recipe: Path, tmp_path: Path, capsys
) -> None:
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    args = ["quantize", str(run), "--recipe", str(harsh_recipe), "--calib-samples", "32", "--max-float-layers", "0",
            "--threads", "1", "--quiet"]  # fmt: skip
    code, out, err = _cli(capsys, *args, "--max-accuracy-drop", "100")
    assert code == 0, err
    record = Run.open(run).artifact("onnx-int8-harsh")
    drop = record.metrics["accuracy_drop_points"]
    assert drop > 0, "the harsh recipe must cost this model some accuracy for the budget to be tested"
    assert record.details["status"] == "passing" and "(budget 100 pt)" in out

    code, out, err = _cli(capsys, *args, "--max-accuracy-drop", f"{drop - 0.01:.4f}")
    assert code == 1
    assert f"could not meet --max-accuracy-drop {drop - 0.01:.4f}".rstrip("0").rstrip(".") + " pt" in err
    assert "with 0 layer(s) in float after trying up to 0" in err  # --max-float-layers reached the search
    assert Run.open(run).artifact("onnx-int8-harsh").details["status"] == "failing"  # kept, marked

    code, out, err = _cli(capsys, *args, "--max-accuracy-drop", "-1")
    assert code == 2 and "--max-accuracy-drop" in err  # a usage error, before any work


def test_quantize_recipe_comes_from_the_target_unless_one_is_given(run_copy: Path, capsys) -> None:
    common = ["--calib-samples", "16", "--max-accuracy-drop", "100", "--threads", "1", "--quiet"]
    # A Jetson target quantizes for TensorRT (Q/DQ placement), recorded with the budget it met.
    code, out, err = _cli(
        capsys, "quantize", str(run_copy), "--target", "jetson-agx-orin-64gb", "--tensorrt", "10.3", *common
    )
    assert code == 0, err
    record = Run.open(run_copy).artifact("onnx-int8-tensorrt-int8-qdq")
    assert record.metrics["accuracy_budget_met"] is True and "(budget 100 pt)" in out
    # --recipe wins over the target's.
    code, out, err = _cli(capsys, "quantize", str(run_copy), "--target", "jetson-agx-orin-64gb", "--recipe",
                          "onnxruntime-cpu-int8", *common)  # fmt: skip
    assert code == 0, err
    assert "onnx-int8-onnxruntime-cpu-int8" in Run.open(run_copy).manifest["artifacts"]
    assert out.splitlines()[0] == "recorded onnx-int8-onnxruntime-cpu-int8"


# --------------------------------------------------------------------------- overwrite refusal


def test_finetune_refuses_an_existing_run_and_a_folder_of_someone_elses_files(
    run_copy: Path, tmp_path: Path, capsys
) -> None:
    before = _files(run_copy)
    base = [
        "finetune",
        "--data",
        "digits",
        "--backbone",
        "timm:test_efficientnet",
        "--no-pretrained",
        "--img-size",
        "16",
        "--epochs",
        "1",
        "--quiet",
    ]
    code, _, err = _cli(capsys, *base, "--out", str(run_copy))
    assert code == 1 and f"{str(run_copy)!r} already holds a run; choose another --out" in err
    assert _files(run_copy) == before
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "split.json").write_text("mine")
    code, _, err = _cli(capsys, *base, "--out", str(theirs))
    assert code == 1
    assert err.strip() == (f"Error: --out {str(theirs)!r} exists and is not an empty directory (it holds split.json); "
                           "give a new one (nothing there is touched)")  # fmt: skip
    assert _files(theirs) == {"split.json": b"mine"}


def test_import_refuses_an_existing_run(run_copy: Path, capsys) -> None:
    before = _files(run_copy)
    code, _, err = _cli(
        capsys, "import", "--out", str(run_copy), "--onnx", str(run_copy / "export" / "model.fp32.onnx")
    )
    assert code == 1 and "is already an edge-tl run; import into a new directory" in err
    assert _files(run_copy) == before


# --------------------------------------------------------------------------- every flag reaches its field


def test_every_verify_flag_reaches_its_field() -> None:
    """A flag dropped or swapped on its way to VerifyConfig would verify something other than asked."""
    from edge_tl.bench import BenchConfig, Budget
    from edge_tl.cli.verify import verify_config
    from edge_tl.runtime import Device
    from edge_tl.significance import Gate
    from edge_tl.verify import VerifyConfig

    config = verify_config(max_accuracy_drop=0.7, gate="significant", significance_level=0.01, min_agreement=0.97,
                           artifacts=("onnx-int8", "onnx-fp16"), reference="onnx-fp32", batch_size=5, max_images=40,
                           device="cpu", threads=3, latency_iterations=17, no_latency=True)  # fmt: skip
    assert config == VerifyConfig(
        reference="onnx-fp32", artifacts=("onnx-int8", "onnx-fp16"), batch_size=5, max_images=40, device=Device.CPU,
        threads=3, measure_latency=False,
        latency=BenchConfig(batch_sizes=(1,), warmup=Budget(iterations=10), measure=Budget(iterations=17)),
        max_accuracy_drop=0.7, min_agreement=0.97, gate=Gate.SIGNIFICANT, significance_level=0.01,
    )  # fmt: skip
    # No --artifact means every artifact (None), and latency is measured unless --no-latency.
    default = verify_config(max_accuracy_drop=None, gate="point", significance_level=0.05, min_agreement=None,
                            artifacts=(), reference=None, batch_size=32, max_images=None, device="auto", threads=None,
                            latency_iterations=100, no_latency=False)  # fmt: skip
    assert default == VerifyConfig()


def test_every_quantize_flag_reaches_its_field(tmp_path: Path) -> None:
    """A flag dropped or swapped on its way to QuantizeConfig would quantize differently than asked."""
    from edge_tl.cli.quantize import quantize_config
    from edge_tl.quantize import CalibMethod, QuantizeConfig, QuantPrecision

    calib = tmp_path / "calib"
    config = quantize_config(
        precision="int8",
        recipe="tensorrt-int8-cache",
        target="jetson-agx-xavier",
        tensorrt="8.5",
        cache_version=8502,
        calib_method="percentile",
        calib_samples=48,
        calib_data=calib,
        max_accuracy_drop=0.4,
        max_float_layers=3,
        seed=9,
        threads=2,
    )
    assert config == QuantizeConfig(
        precision=QuantPrecision.INT8, recipe="tensorrt-int8-cache", calib_method=CalibMethod.PERCENTILE,
        calib_samples=48, calib_data=calib, seed=9, max_accuracy_drop=0.4, max_float_layers=3, threads=2,
        target="jetson-agx-xavier", tensorrt="8.5", cache_version=8502,
    )  # fmt: skip
    # Nothing given: the CPU recipe and the recipe's own calibration settings.
    assert quantize_config(
        precision="fp16",
        recipe=None,
        target=None,
        tensorrt=None,
        cache_version=None,
        calib_method=None,
        calib_samples=None,
        calib_data=None,
        max_accuracy_drop=None,
        max_float_layers=16,
        seed=0,
        threads=None,
    ) == QuantizeConfig(precision=QuantPrecision.FP16)


def test_the_targets_recipe_follows_the_chosen_tensorrt_release(tmp_path: Path) -> None:
    """A cache-recipe device with a TensorRT 11 release: --tensorrt 11.x must choose the Q/DQ recipe
    (11.x has no implicit-quantization calibrator; see Target.calibration_recipe_for), the default
    release the cache. A user's own target TOML may be written so; no shipped target is."""
    from edge_tl.cli.quantize import quantize_config
    from edge_tl.targets import _shipped_files

    text = _shipped_files()["jetson-agx-orin-64gb"].read_text(encoding="utf-8")
    text = text.replace('calibration_recipe = "tensorrt-int8-qdq"', 'calibration_recipe = "tensorrt-int8-cache"')
    target = tmp_path / "my-orin.toml"
    target.write_text(text.replace('name = "jetson-agx-orin-64gb"', 'name = "my-orin"'))

    def recipe(tensorrt: str | None) -> str:
        return quantize_config(precision="int8", recipe=None, target=str(target), tensorrt=tensorrt, cache_version=None,
                               calib_method=None, calib_samples=None, calib_data=None, max_accuracy_drop=None,
                               max_float_layers=16, seed=0, threads=None).recipe  # fmt: skip

    assert (recipe(None), recipe("11.4.1"), recipe("8.5.2")) == (
        "tensorrt-int8-cache",
        "tensorrt-int8-qdq",
        "tensorrt-int8-cache",
    )
