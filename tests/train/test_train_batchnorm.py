"""BatchNorm running statistics re-estimated for the current weights (edge_tl.train.batchnorm)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from edge_tl.data import load_split  # noqa: E402
from edge_tl.data.torch_dataset import TorchImageDataset  # noqa: E402
from edge_tl.models import Preprocessing, load_run_model  # noqa: E402
from edge_tl.runs import Run  # noqa: E402
from edge_tl.train import FinetuneConfig, finetune  # noqa: E402
from edge_tl.train.batchnorm import BN_BATCHES, batchnorm_layers, reestimate, statistics_gap  # noqa: E402
from edge_tl.train.distributed import DistContext  # noqa: E402
from edge_tl.train.loop import _even_share  # noqa: E402

CPU = torch.device("cpu")


def _small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    nn = torch.nn
    # momentum 0.01, as torchvision's MobileNetV3: a few steps leave the statistics near 0 and 1.
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4, momentum=0.01),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        nn.BatchNorm2d(4, momentum=0.01),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(4, 3),
    )


def _batches(count: int = 5) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [3.0 + 2.0 * torch.randn(8, 3, 10, 10, generator=generator) for _ in range(count)]


def _statistics_seen(model: torch.nn.Module, batches: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per BatchNorm layer: the mean over batches of its input's batch mean and unbiased batch
    variance, with every layer normalising by batch statistics (what training computes)."""
    layers = batchnorm_layers(model)
    seen: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {i: [] for i in range(len(layers))}

    def hook(index: int):
        def record(_module, inputs):
            x = inputs[0].detach().double()
            seen[index].append((x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=True)))

        return record

    handles = [layer.register_forward_pre_hook(hook(i)) for i, layer in enumerate(layers)]
    copy = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        model.train()
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for handle in handles:
            handle.remove()
        model.load_state_dict(copy)
    return [
        (torch.stack([m for m, _ in seen[i]]).mean(0), torch.stack([v for _, v in seen[i]]).mean(0))
        for i in range(len(layers))
    ]


def test_stale_statistics_in_matching_statistics_out() -> None:
    model = _small_model()
    batches = _batches()
    # A few training-mode steps at momentum 0.01: the running statistics stay near their start.
    model.train()
    with torch.no_grad():
        for batch in batches[:3]:
            model(batch)
    expected = _statistics_seen(model, batches)
    layers = batchnorm_layers(model)
    assert not torch.allclose(layers[0].running_mean.double(), expected[0][0], atol=0.05)  # stale in
    model.eval()
    model[-1].train()  # a partly frozen model, as in a head-only epoch: its modes come back
    rng = torch.get_rng_state()
    assert reestimate(model, batches, device=CPU, ctx=DistContext()) is True
    for layer, (mean, var) in zip(layers, expected):
        torch.testing.assert_close(layer.running_mean.double(), mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.running_var.double(), var, rtol=1e-5, atol=1e-5)
        assert layer.momentum == 0.01 and int(layer.num_batches_tracked) == len(batches)
    assert [m.training for m in model] == [False] * 8 + [True]
    assert torch.equal(torch.get_rng_state(), rng)  # training continues as it would have


def test_statistics_gap_closes_after_reestimation_and_changes_nothing() -> None:
    model = _small_model()
    with torch.no_grad():
        model[-1].bias.zero_()  # so that the predicted class varies from image to image
    batches = _batches(4)
    # Labels the batch-statistics model predicts: top-1 with batch statistics is 1 by construction.
    model.eval()
    layers = batchnorm_layers(model)
    for layer in layers:
        layer.train()
        layer.track_running_stats = False
    with torch.no_grad():
        labels = [model(b).argmax(1) for b in batches]
    for layer in layers:
        layer.eval()
        layer.track_running_stats = True
    with torch.no_grad():  # statistics from somewhere else entirely
        for layer in layers:
            layer.running_mean.copy_(torch.tensor([5.0, -5.0, 5.0, -5.0]))
            layer.running_var.fill_(0.01)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stale = statistics_gap(model, list(zip(batches, labels)), device=CPU, ctx=DistContext())
    assert stale is not None and stale.batch_top1 == 1.0 and stale.count == 32
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # measuring moved no statistic
    reestimate(model, batches, device=CPU, ctx=DistContext())
    fresh = statistics_gap(model, list(zip(batches, labels)), device=CPU, ctx=DistContext())
    assert fresh is not None and fresh.batch_top1 == 1.0
    # Batches of 8 are noisy: the running statistics (their average) cannot match each exactly.
    assert stale.running_top1 <= 0.25 and fresh.running_top1 > 0.7


def _ddp_worker(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        model = _small_model()
        shard = _batches(4)[rank::2]  # each process sees other images
        reestimate(model, shard, device=CPU, ctx=DistContext(rank=rank, world_size=2, backend="gloo"))
        torch.save({k: v for k, v in model.state_dict().items() if "running" in k or "tracked" in k}, out)
    finally:
        dist.destroy_process_group()


def test_every_ddp_process_ends_with_the_same_averaged_statistics(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'store'}"
    outs = [str(tmp_path / f"rank{r}.pt") for r in range(2)]
    contexts = [mp.get_context("spawn").Process(target=_ddp_worker, args=(r, init, outs[r])) for r in range(2)]
    for process in contexts:
        process.start()
    for process in contexts:
        process.join(120)
        assert process.exitcode == 0
    states = [torch.load(path, weights_only=True) for path in outs]
    model = _small_model()
    shards = [_statistics_seen(model, _batches(4)[r::2]) for r in range(2)]
    for index, name in enumerate(("1", "4")):
        for key in ("running_mean", "running_var"):
            assert torch.equal(states[0][f"{name}.{key}"], states[1][f"{name}.{key}"]), key
        torch.testing.assert_close(
            states[0][f"{name}.running_mean"].double(),
            (shards[0][index][0] + shards[1][index][0]) / 2,
            atol=1e-5,
            rtol=1e-5,
        )
        assert int(states[0][f"{name}.num_batches_tracked"]) == 4


def test_finetune_saves_statistics_of_the_trained_weights(tmp_path: Path, digit_folder) -> None:
    """torchvision's MobileNetV3 (momentum 0.01) for 5 steps: without re-estimation the saved
    running means are about 5% of the true ones."""
    out = tmp_path / "r"
    finetune(
        FinetuneConfig(
            data=str(digit_folder(per_class=10)),
            out=str(out),
            backbone="mobilenet_v3_small",
            weights="none",
            img_size=32,
            epochs=1,
            batch_size=16,
            augment=False,
            quiet=True,
            seed=2,
        )
    )
    run = Run.open(out)
    model = load_run_model(run)
    prep = Preprocessing.from_dict(run.get("preprocessing"))
    samples = load_split(out / "split.json").train[: BN_BATCHES * 16]
    dataset = TorchImageDataset(samples, prep, train=False)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    expected = _statistics_seen(model, list(images.split(16)))
    for layer, (mean, var) in zip(batchnorm_layers(model), expected):
        torch.testing.assert_close(layer.running_mean.double(), mean, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(layer.running_var.double(), var, rtol=1e-3, atol=1e-4)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert history[0]["bn_reestimated"] is True and history[0]["bn_seconds"] > 0
    assert 0 <= history[0]["bn_running_top1"] <= 1 and 0 <= history[0]["bn_batch_top1"] <= 1
    assert 0 <= history[0]["bn_stale_top1"] <= 1


def test_freeze_bn_keeps_the_statistics_it_started_with(tmp_path: Path, digit_folder) -> None:
    out = tmp_path / "r"
    finetune(
        FinetuneConfig(
            data=str(digit_folder(per_class=10)),
            out=str(out),
            backbone="mobilenet_v3_small",
            weights="none",
            img_size=32,
            epochs=1,
            batch_size=16,
            freeze_bn=True,
            quiet=True,
            seed=2,
        )
    )
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert history[0]["bn_reestimated"] is False and history[0]["bn_seconds"] == 0.0
    for layer in batchnorm_layers(load_run_model(Run.open(out))):
        assert torch.equal(layer.running_mean, torch.zeros_like(layer.running_mean))
        assert torch.equal(layer.running_var, torch.ones_like(layer.running_var))


@pytest.mark.parametrize(
    ("available", "world", "taken"),
    [(1437, 1, 1024), (80, 1, 64), (100, 2, 64), (30, 4, 28), (3, 4, 0), (2000, 4, 1024)],
)
def test_every_process_gets_the_same_number_of_batches(available: int, world: int, taken: int) -> None:
    # 16 global batches of 64 at most; whole global batches, else a multiple of the processes.
    assert _even_share(available, 16, 64, world) == taken
