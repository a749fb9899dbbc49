"""Transfer learning vs training from scratch: validation top-1 against labelled images.

For each training-set size (a seeded, class-balanced subset of the digits training split)
the same backbone is fine-tuned twice through edge-tl's public API: from the bundled
ImageNet weights (head-only epoch, then the backbone at a lower learning rate) and from
random weights (everything trained at the full rate from the start). Both use the same
step budget and are validated on the same fixed validation images. Writes JSON and a PNG.

    python benchmarks/transfer_vs_scratch.py                 # a few minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path

from edge_tl.data import load_dataset, load_image
from edge_tl.runs import atomic_write_bytes, atomic_write_json
from edge_tl.train import FinetuneConfig, finetune


def write_folder(root: Path, samples, classes) -> Path:
    for i, sample in enumerate(samples):
        folder = root / classes[sample.label]
        folder.mkdir(parents=True, exist_ok=True)
        load_image(sample).save(folder / f"{i:05d}.png")
    return root


def balanced_subset(samples, n: int, num_classes: int, seed: int):
    rng = random.Random(seed)
    by_class = [[s for s in samples if s.label == c] for c in range(num_classes)]
    for members in by_class:
        rng.shuffle(members)
    picked, depth = [], 0
    while len(picked) < n:
        for members in by_class:
            if depth < len(members) and len(picked) < n:
                picked.append(members[depth])
        depth += 1
    return picked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--sizes", default="50,100,200,500,all")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=150, help="optimiser steps per run (at least 4 epochs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "transfer_vs_scratch.json")
    args = parser.parse_args(argv)

    split = load_dataset("digits", seed=args.seed)
    n_all = len(split.train)
    sizes = [n_all if s == "all" else min(int(s), n_all) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="edge-tl-tvs-") as tmp:
        tmp_path = Path(tmp)
        val_dir = write_folder(tmp_path / "val", split.val, split.classes)
        for n in sizes:
            train_dir = write_folder(
                tmp_path / f"train{n}", balanced_subset(split.train, n, len(split.classes), args.seed), split.classes
            )
            steps_per_epoch = math.ceil(n / args.batch_size)
            epochs = max(4, math.ceil(args.steps / steps_per_epoch))
            for mode in ("pretrained", "scratch"):
                pretrained = mode == "pretrained"
                started = time.perf_counter()
                result = finetune(
                    FinetuneConfig(
                        data=str(train_dir),
                        val_data=str(val_dir),
                        out=str(tmp_path / f"run-{n}-{mode}"),
                        backbone=args.backbone,
                        weights="imagenet" if pretrained else "none",
                        img_size=args.img_size,
                        epochs=epochs,
                        freeze_epochs=1 if pretrained else 0,
                        batch_size=args.batch_size,
                        lr=0.01,
                        backbone_lr_mult=0.3 if pretrained else 1.0,
                        augment=False,
                        seed=args.seed,
                        quiet=True,
                    )
                )
                row = {
                    "train_images": n,
                    "mode": mode,
                    "epochs": epochs,
                    "steps": epochs * steps_per_epoch,
                    "best_val_top1": result.best_val_top1,
                    "last_val_top1": result.history[-1].val_top1,
                    "seconds": time.perf_counter() - started,
                }
                rows.append(row)
                print(
                    f"{n:>5} images  {mode:<10}  best val top-1 {row['best_val_top1']:.4f}  "
                    f"last {row['last_val_top1']:.4f}  ({epochs} epochs, {row['seconds']:.0f}s)",
                    flush=True,
                )

    result = {
        "benchmark": "transfer_vs_scratch",
        "backbone": args.backbone,
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "num_val": len(split.val),
        "rows": rows,
    }
    atomic_write_json(args.out, result)
    png = args.out.with_suffix(".png")
    _plot(png, rows, args)
    print(f"wrote {args.out} and {png}")
    return 0


def _plot(path: Path, rows, args) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, style in (("pretrained", "o-"), ("scratch", "s--")):
        points = [(r["train_images"], r["best_val_top1"]) for r in rows if r["mode"] == mode]
        ax.plot([p[0] for p in points], [p[1] for p in points], style, label=f"{mode}")
    ax.set_xscale("log")
    ax.set_xlabel("labelled training images (digits)")
    ax.set_ylabel("validation top-1")
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{args.backbone} at {args.img_size}px: ImageNet-pretrained vs scratch")
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


if __name__ == "__main__":
    sys.exit(main())
