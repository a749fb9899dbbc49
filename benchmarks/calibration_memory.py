"""Peak memory of calibration with 256 vs 2,048 images: it must not grow with the count.

Each calibration runs in its own subprocess (so one run's allocations cannot hide
another's) and reports its peak resident set size (``ru_maxrss``). The calibration is
the heaviest recipe path: every float activation of the quickstart model observed
with a 2,048-bin histogram and the entropy search (the ``tensorrt-int8-cache``
recipe's settings), on a folder of generated images given as ``--calib-data``. A
16-image run gives the floor (libraries, model, session), so the growth above it is
reported too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from _digits_run import quickstart_run

COUNTS = (16, 256, 2048)

CHILD = """
import json, resource, sys, time
from pathlib import Path
from edge_tl.models import Preprocessing
from edge_tl.quantize import calibrate, graph, load_recipe
from edge_tl.runs import Run
import onnx

run = Run.open(sys.argv[1]); count = int(sys.argv[3])
recipe = load_recipe("tensorrt-int8-cache")
prep = Preprocessing.from_dict(run.require("preprocessing"))
model = graph.ensure_node_names(onnx.load(str(run.artifact_path("onnx-fp32"))))
tensors = graph.float_activations(model)
samples = calibrate.calibration_samples(run, calib_data=sys.argv[2], num_samples=count)
start = time.perf_counter()
obs = calibrate.collect(model, tensors, calibrate.image_batches(samples, prep, recipe.calibration.batch_size),
                        num_bins=recipe.calibration.num_bins)
ranges = obs.ranges(recipe.calibration.method)
print(json.dumps({"samples": len(samples), "tensors": len(tensors), "seconds": time.perf_counter() - start,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_images(folder: Path, count: int, size: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        cls = folder / str(i % 10)
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(cls / f"{i:05d}.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "calibration_memory.json")
    parser.add_argument("--run", type=Path, default=None, help="a quickstart run directory (default: fine-tune one)")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {"benchmark": "calibration_memory", "recipe": "tensorrt-int8-cache (entropy, 2048 bins)"}
    with tempfile.TemporaryDirectory(prefix="calib-mem-") as tmp:
        work = Path(tmp)
        run = quickstart_run(work, args.run)
        images = work / "images"
        make_images(images, max(COUNTS), 48)
        runs = {}
        for count in COUNTS:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(run), str(images), str(count)],
                capture_output=True,
                text=True,
                check=True,
            )
            runs[count] = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{count:5d} images: peak RSS {runs[count]['peak_rss_mib']:.1f} MiB in {runs[count]['seconds']:.1f} s",
                file=sys.stderr,
            )
    floor = runs[16]["peak_rss_mib"]
    results.update(
        {
            "runs": {str(k): v for k, v in runs.items()},
            "ratio_2048_to_256": runs[2048]["peak_rss_mib"] / runs[256]["peak_rss_mib"],
            "growth_above_16_images_mib": {str(k): runs[k]["peak_rss_mib"] - floor for k in (256, 2048)},
            "bound": 1.2,
        }
    )
    results["passed"] = results["ratio_2048_to_256"] <= results["bound"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"peak RSS 2048 / 256 images = {results['ratio_2048_to_256']:.3f} (bound 1.2: "
        f"{'ok' if results['passed'] else 'FAILED'}); growth above 16 images: "
        f"{results['growth_above_16_images_mib']['256']:.1f} / {results['growth_above_16_images_mib']['2048']:.1f} MiB"
    )
    print(f"wrote {args.out}")
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
