"""Training throughput: edge-tl's training step against a minimal hand-written PyTorch loop.

Both train the same backbone (same weights, batch, input size, device, arithmetic and
memory format) on the same in-memory batches, in the same process. They are timed in
interleaved rounds, so load from elsewhere on the machine hits both alike; the result is
the median over rounds of the ratio of their images/s (edge-tl / plain). Data loading is left out of
both on purpose: this measures the step (forward, loss, backward, optimiser, schedule,
running statistics), which is where a training framework adds its overhead.

With ``--end-to-end``, it then fine-tunes the same backbone from a folder of real JPEG
photos (``_photos.py``) with ``edge-tl finetune``'s own code, and reports each epoch's
training img/s (what the loop records in ``metrics.jsonl``: loading, decoding, augmenting
and the step, validation excluded) as a ratio to the step-only img/s measured just before,
in the same process. That ratio is the headline: 1.0 means the data pipeline costs nothing.

    python benchmarks/finetune_throughput.py                      # CPU
    python benchmarks/finetune_throughput.py --device cuda --img-size 224 --batch-size 128
    python benchmarks/finetune_throughput.py --device cuda --img-size 224 --batch-size 128 --precision bf16 --end-to-end
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from edge_tl.bench import fingerprint
from edge_tl.models import Weights, WeightsSource, build_model
from edge_tl.runs import atomic_write_json
from edge_tl.train.config import TRAIN_PRECISIONS, Device, Precision
from edge_tl.train.loop import Phase, TrainStep, param_groups, resolve_hardware, set_phase
from edge_tl.train.state import warmup_cosine


def plain_loop(model, batches, *, lr: float, label_smoothing: float, amp_dtype, channels_last: bool, device):
    """The loop a PyTorch user writes by hand; returns a function running ``n`` steps."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)

    def run(n: int) -> None:
        for i in range(n):
            images, labels = batches[i % len(batches)]
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = criterion(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    return run


def edge_tl_loop(model, batches, *, lr: float, label_smoothing: float, hardware, steps_total: int):
    optimizer = torch.optim.AdamW(param_groups(model, lr=lr, backbone_lr_mult=0.3, weight_decay=0.01))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps_total, steps_total // 10))
    step = TrainStep(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler("cuda", enabled=hardware.use_scaler),
        criterion=torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing),
        hardware=hardware,
    )

    def run(n: int) -> None:
        for i in range(n):
            step(*batches[i % len(batches)])

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=[p.value for p in TRAIN_PRECISIONS], default="auto")
    parser.add_argument("--img-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per loop per round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per loop first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--end-to-end", action="store_true", help="also fine-tune from a JPEG folder and compare its epochs"
    )
    parser.add_argument("--photos-size", default="500x375", help="end-to-end: the photos' WIDTHxHEIGHT")
    parser.add_argument("--photos", type=int, default=1024, help="end-to-end: how many photos")
    parser.add_argument("--epochs", type=int, default=3, help="end-to-end: epochs (the first fills the decode cache)")
    parser.add_argument("--workers", type=int, default=None, help="end-to-end: loader workers (default: edge-tl's)")
    parser.add_argument(
        "--gpu-data", choices=["auto", "on", "off"], default="auto", help="end-to-end: edge-tl's --gpu-data"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "finetune_throughput.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    hardware = resolve_hardware(Device(args.device), Precision(args.precision))
    torch.manual_seed(0)
    base = build_model(args.backbone, args.num_classes, weights=Weights(WeightsSource.NONE))
    models = {}
    for name in ("plain", "edge-tl"):
        model = copy.deepcopy(base).to(hardware.device)
        if hardware.channels_last:
            model = model.to(memory_format=torch.channels_last)
        set_phase(model, Phase.FULL, freeze_bn=False)
        models[name] = model
    generator = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=generator),
            torch.randint(0, args.num_classes, (args.batch_size,), generator=generator),
        )
        for _ in range(4)
    ]
    if hardware.device.type == "cuda":
        batches = [(x.pin_memory(), y.pin_memory()) for x, y in batches]
    total_steps = (args.warmup + args.steps * args.rounds) * 2
    loops = {
        "plain": plain_loop(
            models["plain"],
            batches,
            lr=1e-3,
            label_smoothing=0.1,
            amp_dtype=hardware.amp_dtype,
            channels_last=hardware.channels_last,
            device=hardware.device,
        ),
        "edge-tl": edge_tl_loop(
            models["edge-tl"], batches, lr=1e-3, label_smoothing=0.1, hardware=hardware, steps_total=total_steps
        ),
    }

    def sync() -> None:
        if hardware.device.type == "cuda":
            torch.cuda.synchronize()

    for run in loops.values():
        run(args.warmup)
    sync()
    rates: dict[str, list[float]] = {name: [] for name in loops}
    for round_index in range(args.rounds):
        # Alternate which loop goes first, so a drift in machine load does not favour one.
        order = list(loops) if round_index % 2 == 0 else list(reversed(loops))
        for name in order:
            sync()
            started = time.perf_counter()
            loops[name](args.steps)
            sync()
            rates[name].append(args.steps * args.batch_size / (time.perf_counter() - started))
    medians = {name: statistics.median(r) for name, r in rates.items()}
    # Each round times both loops back to back: the median of the per-round ratios cancels
    # most of the load that other processes put on a shared machine.
    paired = [e / p for e, p in zip(rates["edge-tl"], rates["plain"])]
    ratio = statistics.median(paired)
    result = {
        "benchmark": "finetune_throughput",
        "backbone": args.backbone,
        "device": hardware.device.type,
        "precision": hardware.precision,
        "channels_last": hardware.channels_last,
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "images_per_s": {name: {"median": medians[name], "rounds": rates[name]} for name in rates},
        "ratio_edge_tl_over_plain": ratio,
        "ratio_per_round": paired,
        "ratio_of_medians": medians["edge-tl"] / medians["plain"],
        "environment": fingerprint(threads=torch.get_num_threads()),
    }
    print(
        f"{args.backbone} {hardware.device.type} {hardware.precision} {args.img_size}px batch {args.batch_size}: "
        f"plain {medians['plain']:.1f} img/s, edge-tl {medians['edge-tl']:.1f} img/s, ratio {ratio:.3f}"
    )
    if args.end_to_end:
        result["end_to_end"] = end_to_end(args, step_rate=medians["edge-tl"])
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


def end_to_end(args: argparse.Namespace, *, step_rate: float) -> dict:
    """Fine-tune from a JPEG folder; each epoch's training img/s against ``step_rate``."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _photos import make_photo_folder

    from edge_tl.train import FinetuneConfig, finetune
    from edge_tl.train.loop import default_workers

    width, height = (int(v) for v in args.photos_size.lower().split("x"))
    photos = make_photo_folder(
        Path(tempfile.gettempdir()) / "edge-tl-bench-photos" / f"{width}x{height}-{args.photos}",
        size=(width, height),
        count=args.photos,
    )
    workers = args.workers if args.workers is not None else default_workers(1)
    with tempfile.TemporaryDirectory(prefix="edge-tl-e2e-") as tmp:
        config = FinetuneConfig(
            data=str(photos),
            out=str(Path(tmp) / "run"),
            backbone=args.backbone,
            weights="none",
            img_size=args.img_size,
            batch_size=args.batch_size,
            epochs=args.epochs,
            val_split=0.1,
            device=args.device,
            precision=args.precision,
            workers=workers,
            cache="disk",
            gpu_data=args.gpu_data,
            quiet=True,
        )
        os.environ["EDGE_TL_CACHE_DIR"] = str(Path(tmp) / "cache")  # a fresh cache: the first epoch fills it
        finetune(config)
        lines = (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()
    rates = [json.loads(line)["images_per_s"] for line in lines]
    ratios = [r / step_rate for r in rates]
    print(
        f"end to end from {args.photos} JPEGs {width}x{height}, {workers} workers: "
        + ", ".join(f"epoch {i + 1} {r:.0f} img/s ({q:.2f}x step)" for i, (r, q) in enumerate(zip(rates, ratios)))
    )
    return {
        "photos": args.photos,
        "photos_size": [width, height],
        "workers": workers,
        "gpu_data": args.gpu_data,
        "step_only_images_per_s": step_rate,
        "epoch_images_per_s": rates,
        "ratio_per_epoch": ratios,
        "ratio_last_epoch": ratios[-1],
    }


if __name__ == "__main__":
    sys.exit(main())
