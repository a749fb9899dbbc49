"""Training-loader throughput: edge-tl's loader against torchvision ImageFolder + transforms.v2.

Both read the same folder of real JPEG photos (made from scikit-image's photographs by
``_photos.py``, 500x375 and 4000x3000) and deliver normalised float32 batches at the same
input size, batch, worker count and augmentation: random resized crop (scale 0.6-1, ratio
3/4-4/3), horizontal flip, colour jitter 0.2 (brightness, contrast, saturation), normalise.

* torchvision: ``ImageFolder`` + ``v2.Compose([RandomResizedCrop, RandomHorizontalFlip,
  ColorJitter, ToImage, ToDtype(float32, scale=True), Normalize])`` in a plain
  ``DataLoader(shuffle=True, num_workers=W)``, as its reference scripts build it.
* edge-tl: what ``edge-tl finetune`` builds (:func:`edge_tl.train.loop.make_loader`, the
  uint8 dataset, batches normalised by :class:`~edge_tl.data.torch_dataset.BatchNormalizer`:
  in the workers on the CPU, on the GPU with CUDA), with a fresh disk cache: the *first
  epoch* includes opening the cache and filling it, the *cached epoch* is the next one.
  Its workers persist across epochs (as in training); torchvision's loader, as commonly
  written, starts its workers for every epoch, and that start is part of its epoch time.

Every repetition times a torchvision epoch and edge-tl's first and cached epochs, one
after another in this process (which goes first alternates); the ratios are per
repetition, and the headline is their median, so load from other processes on a shared
machine hits both alike.
With ``--device cuda`` it also times edge-tl's GPU data path (nvJPEG decoding, batched
augmentation on the GPU) against the same torchvision epoch.

    python benchmarks/data_pipeline.py                          # CPU, 2 workers, 224 px
    python benchmarks/data_pipeline.py --device cuda --workers 15 --batch-size 128
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from _photos import make_photo_folder

from edge_tl.bench import fingerprint
from edge_tl.data import AugmentConfig, load_dataset
from edge_tl.data.cache import CacheMode, open_cache
from edge_tl.data.gpu import EncodedDataset, GpuAugmenter, collate_encoded
from edge_tl.data.torch_dataset import BatchNormalizer, NormalizingCollate, TorchImageDataset
from edge_tl.models import Preprocessing
from edge_tl.runs import atomic_write_json
from edge_tl.train.distributed import DistContext
from edge_tl.train.loop import make_loader

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def torchvision_loader(root: Path, *, img_size: int, batch_size: int, workers: int, jitter: float, seed: int):
    from torchvision import datasets
    from torchvision.transforms import v2

    transform = v2.Compose(
        [
            v2.RandomResizedCrop(img_size, scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )
    dataset = datasets.ImageFolder(str(root), transform=transform)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, generator=torch.Generator().manual_seed(seed)
    )


def timed_epoch(loader, finish, device) -> tuple[float, int]:
    """Seconds for one pass (from creating the iterator to the last finished batch) and images seen."""
    started = time.perf_counter()
    count = 0
    for images, labels in loader:
        out = finish(images)
        count += labels.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    del out
    return time.perf_counter() - started, count


def measure(root: Path, args, device) -> dict:
    split = load_dataset(str(root), val_split=0.1, seed=0)
    samples = split.train + split.val  # every file, as the torchvision ImageFolder reads them
    prep = Preprocessing(input_size=args.img_size, mean=MEAN, std=STD, interpolation="bilinear")
    augment = AugmentConfig(color_jitter=args.jitter)
    ctx = DistContext()
    tv_loader = torchvision_loader(
        root, img_size=args.img_size, batch_size=args.batch_size, workers=args.workers, jitter=args.jitter, seed=0
    )
    normalise = BatchNormalizer(prep, device, channels_last=device.type == "cuda")
    tv_finish = (lambda x: x.to(device, non_blocking=True)) if device.type == "cuda" else (lambda x: x)
    series: dict[str, list[float]] = {"torchvision": [], "edge-tl first epoch": [], "edge-tl cached epoch": []}
    gpu = device.type == "cuda" and not args.no_gpu_data
    if gpu:
        series["edge-tl GPU data path"] = []
        gpu_ds = EncodedDataset(samples, augment=augment, seed=0)
        gpu_loader = make_loader(
            gpu_ds,
            batch_size=args.batch_size,
            train=True,
            seed=0,
            ctx=ctx,
            workers=args.workers,
            pin_memory=True,
            collate_fn=collate_encoded,
        )
        gpu_finish = GpuAugmenter(prep, device, channels_last=True)
        timed_epoch(gpu_loader, gpu_finish, device)  # warm-up: nvJPEG and kernels initialise once

    def torchvision_epoch() -> None:
        seconds, n = timed_epoch(tv_loader, tv_finish, device)
        series["torchvision"].append(n / seconds)

    for rep in range(args.reps):
        # Alternate which goes first, so a drift in machine load does not favour one.
        if rep % 2 == 0:
            torchvision_epoch()
        with tempfile.TemporaryDirectory(prefix="edge-tl-cache-") as cache_root:
            started = time.perf_counter()
            plain = TorchImageDataset(samples, prep, train=True, augment=augment, seed=rep, dtype="uint8")
            cache = open_cache(samples, plain.spec, CacheMode.DISK, root=cache_root)
            dataset = TorchImageDataset(
                samples, prep, train=True, augment=augment, seed=rep, cache=cache, dtype="uint8"
            )
            # As the fine-tune loop builds it: on the CPU, batches are normalised in the workers.
            collate = NormalizingCollate(prep) if device.type == "cpu" and args.workers > 0 else None
            loader = make_loader(
                dataset,
                batch_size=args.batch_size,
                train=True,
                seed=rep,
                ctx=ctx,
                workers=args.workers,
                pin_memory=device.type == "cuda",
                collate_fn=collate,
            )
            opened = time.perf_counter() - started
            loader.sampler.set_epoch(0)
            seconds, n = timed_epoch(loader, normalise, device)
            series["edge-tl first epoch"].append(n / (seconds + opened))
            loader.sampler.set_epoch(1)
            seconds, n = timed_epoch(loader, normalise, device)
            series["edge-tl cached epoch"].append(n / seconds)
            del loader
        if rep % 2 == 1:
            torchvision_epoch()
        if gpu:
            gpu_loader.sampler.set_epoch(rep + 1)
            seconds, n = timed_epoch(gpu_loader, gpu_finish, device)
            series["edge-tl GPU data path"].append(n / seconds)
        print(
            f"  rep {rep + 1}/{args.reps}: " + ", ".join(f"{k} {v[-1]:.3g}" for k, v in series.items()) + " img/s",
            flush=True,
        )
    ratios = {
        name: statistics.median(e / t for e, t in zip(series[name], series["torchvision"]))
        for name in series
        if name != "torchvision"
    }
    return {
        "images": len(samples),
        "images_per_s": {k: {"median": statistics.median(v), "reps": v} for k, v in series.items()},
        "ratio_over_torchvision": ratios,
    }


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a size is WIDTHxHEIGHT, e.g. 500x375; got {text!r}") from None
    return (w, h)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=[(500, 375), (4000, 3000)])
    parser.add_argument(
        "--images", type=int, nargs="+", default=[240, 48], help="photos per size (one number per --sizes)"
    )
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--jitter", type=float, default=0.2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--no-gpu-data", action="store_true", help="with --device cuda, skip the GPU data path")
    parser.add_argument("--photos", type=Path, default=Path(tempfile.gettempdir()) / "edge-tl-bench-photos")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "data_pipeline.json")
    args = parser.parse_args(argv)
    if len(args.images) != len(args.sizes):
        parser.error(f"--images needs one count per size ({len(args.sizes)}), got {len(args.images)}")
    device = torch.device(args.device)
    results = {}
    for (width, height), count in zip(args.sizes, args.images):
        root = make_photo_folder(args.photos / f"{width}x{height}-{count}", size=(width, height), count=count)
        print(
            f"{count} JPEG photos {width}x{height} -> {args.img_size} px, batch {args.batch_size}, "
            f"{args.workers} workers, {args.device}"
        )
        results[f"{width}x{height}"] = measure(root, args, device)
        for name, ratio in results[f"{width}x{height}"]["ratio_over_torchvision"].items():
            print(f"  {name} / torchvision: {ratio:.2f}x")
    result = {
        "benchmark": "data_pipeline",
        "device": args.device,
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "reps": args.reps,
        "results": results,
        "environment": fingerprint(threads=torch.get_num_threads()),
    }
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
