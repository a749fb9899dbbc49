"""BatchNorm re-estimation: what it costs next to an epoch, and what it recovers.

Fine-tunes each of ``--backbones`` (default torchvision's MobileNetV3-Large from random
weights, whose BatchNorm momentum is 0.01) on digits and reads each epoch's record: the
seconds the re-estimation took as a ratio of the epoch's (training and validation), and
top-1 on the first validation batches with the running statistics training left (before the
re-estimation), after it, and with batch statistics. After the run the best checkpoint is
evaluated on the whole validation split with running and with batch statistics
(``edge_tl.train.batchnorm.statistics_gap``, batches of the run's size), so the gap the
issue's done-when names is measured on every validation image.

    python benchmarks/bn_reestimation.py                          # about 4 minutes on 2 CPU cores
    python benchmarks/bn_reestimation.py --epochs 2 --backbones efficientnet_b0,mobilenet_v2,...
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from edge_tl.runs import atomic_write_json
from edge_tl.train import FinetuneConfig, finetune


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="mobilenet_v3_large", help="comma-separated")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bn_reestimation.json")
    args = parser.parse_args(argv)
    results = [_measure(backbone, args) for backbone in args.backbones.split(",")]
    atomic_write_json(args.out, {"runs": results})
    for result in results:
        whole = result["best_checkpoint"]
        for e in result["per_epoch"]:
            print(
                f"{result['backbone']} epoch {e['epoch']}: val top-1 {e['val_top1']:.4f}; first val batches: "
                f"before re-estimation {e['stale_top1']}, after {e['gap_running_top1']:.4f}, "
                f"batch statistics {e['gap_batch_top1']:.4f}; re-estimation {e['bn_seconds']:.2f} s "
                f"= {e['cost_ratio']:.3f} of the epoch's {e['epoch_seconds']:.1f} s"
            )
        print(
            f"{result['backbone']} best checkpoint on {whole['val_images']} validation images: running statistics "
            f"{whole['running_stat_top1']:.4f}, batch statistics {whole['batch_stat_top1']:.4f} "
            f"(gap {whole['gap_pt']:+.1f} pt); mean cost ratio {result['mean_cost_ratio']:.3f}"
        )
    print(f"written to {args.out}", file=sys.stderr)
    return 0


def _measure(backbone: str, args: argparse.Namespace) -> dict:
    import torch

    from edge_tl.data import iter_batches, split_from_run
    from edge_tl.models import Preprocessing, load_run_model
    from edge_tl.runs import Run
    from edge_tl.train.batchnorm import statistics_gap
    from edge_tl.train.distributed import DistContext

    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "run"
        finetune(
            FinetuneConfig(
                data="digits",
                out=str(out),
                backbone=backbone,
                weights=args.weights,
                img_size=args.img_size,
                epochs=args.epochs,
                batch_size=args.batch_size,
                seed=args.seed,
                device="cpu",
            )
        )
        history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        run = Run.open(out)
        prep = Preprocessing.from_dict(run.get("preprocessing"))
        split = split_from_run(run)
        whole = statistics_gap(
            load_run_model(run),
            iter_batches(split.val, prep, args.batch_size),
            device=torch.device("cpu"),
            ctx=DistContext(),
        )
    if whole is None:
        raise SystemExit(f"{backbone} has no BatchNorm layer: nothing to re-estimate")
    epochs = [
        {
            "epoch": h["epoch"],
            "val_top1": h["val_top1"],
            "bn_reestimated": h["bn_reestimated"],
            "bn_seconds": h["bn_seconds"],
            "epoch_seconds": h["seconds"],
            "cost_ratio": h["bn_seconds"] / h["seconds"],
            "gap_batch_top1": h["bn_batch_top1"],
            "gap_running_top1": h["bn_running_top1"],
            "stale_top1": h["bn_stale_top1"],
        }
        for h in history
    ]
    result = {
        "backbone": backbone,
        "weights": args.weights,
        "img_size": args.img_size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "per_epoch": epochs,
        "mean_cost_ratio": sum(e["cost_ratio"] for e in epochs) / len(epochs),
        "best_checkpoint": {
            "val_images": whole.count,
            "running_stat_top1": whole.running_top1,
            "batch_stat_top1": whole.batch_top1,
            "gap_pt": 100 * whole.gap,
        },
    }
    return result


if __name__ == "__main__":
    raise SystemExit(main())
