"""BatchNorm running statistics that match the weights they normalise.

In eval mode BatchNorm normalises with its running statistics: an exponential average of the
batch statistics seen while training. With a small momentum (torchvision builds MobileNetV3
and EfficientNetV2 with 0.01: after 90 steps 40% of the average is still the initial 0 and 1)
or with weights that change fast, that average lags the weights, and the model in eval mode,
the one that is validated, exported, quantized and deployed, is not the model that was
trained. Before each validation (and so before the best checkpoint that export and
calibration load) fine-tuning re-estimates the statistics of the current weights on a fixed
subset of the training images with PyTorch's own ``torch.optim.swa_utils.update_bn``.

It runs at every validation of an epoch in which BatchNorm trained. Whether the statistics
are stale depends on the momentum, the steps and how far the weights moved, and only the last
is hard to bound; at about a quarter of an epoch on digits and a small fraction on a real data
set (``benchmarks/bn_reestimation.py``) always is cheaper than being wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import edge_tl.train.distributed as dist_util
from edge_tl._lazy import lazy_import

#: Training batches (of the run's batch size) the statistics are re-estimated on: 16 x 64
#: images average out the batch-to-batch noise of the means and variances, and stay cheap
#: next to an epoch of a real data set.
BN_BATCHES = 16

#: Validation batches the gap between batch and running statistics is measured on.
GAP_BATCHES = 4

#: A gap (batch-statistic minus running-statistic top-1) above this is a warning.
GAP_WARN = 0.10


def batchnorm_layers(model: Any) -> list[Any]:
    nn = lazy_import("torch.nn")
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def reestimate(
    model: Any,
    images: Iterable[Any],
    *,
    device: Any,
    ctx: dist_util.DistContext,
    amp_dtype: Any = None,
    channels_last: bool = False,
) -> bool:
    """Replace ``model``'s BatchNorm running statistics by those of ``images`` (batches of
    normalised image tensors, this process's shard); whether the model has any BatchNorm.

    Under DDP every process re-estimates on its shard and the statistics are then averaged
    over the processes, so every process ends with the same buffers. Only BatchNorm is in
    training mode meanwhile: dropout and stochastic depth (EfficientNet) stay off, so the
    statistics are those of the network that is evaluated, and no random number is drawn
    (training continues exactly as it would have without the re-estimation).
    """
    torch = lazy_import("torch")
    swa_utils = lazy_import("torch.optim.swa_utils")
    layers = batchnorm_layers(model)
    if not layers:
        return False
    was_training = {m: m.training for m in model.modules()}

    def inputs() -> Iterable[Any]:
        for batch in images:
            batch = torch.as_tensor(batch).to(device, non_blocking=True)
            yield batch.contiguous(memory_format=torch.channels_last) if channels_last else batch

    with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        swa_utils.update_bn(inputs(), _only_batchnorm_trains(model, layers))
    if ctx.distributed:
        means = torch.cat([torch.cat([m.running_mean, m.running_var]).double() for m in layers])
        counts = torch.stack([m.num_batches_tracked for m in layers]).double()
        dist_util.all_reduce_sum(means, ctx)
        dist_util.all_reduce_sum(counts, ctx)
        means /= ctx.world_size
        offset = 0
        for layer, count in zip(layers, counts.tolist()):
            size = layer.running_mean.numel()
            layer.running_mean.copy_(means[offset : offset + size])
            layer.running_var.copy_(means[offset + size : offset + 2 * size])
            layer.num_batches_tracked.fill_(int(round(count)))
            offset += 2 * size
    # The modes the caller had (a frozen backbone's BatchNorm in eval mode, say) come back.
    for module, mode in was_training.items():
        module.train(mode)
    return True


def _only_batchnorm_trains(model: Any, layers: list[Any]) -> Any:
    """``model`` behind a module whose ``train()`` (which ``update_bn`` calls) switches its
    BatchNorm layers only."""
    nn = lazy_import("torch.nn")

    class BatchNormTrains(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def train(self, mode: bool = True) -> Any:
            self.training = mode
            self.inner.eval()
            for layer in layers:
                layer.train(mode)
            return self

        def forward(self, images: Any) -> Any:
            return self.inner(images)

    return BatchNormTrains()


@dataclass(frozen=True)
class StatisticsGap:
    """Top-1 on the same validation images with batch and with running BatchNorm statistics."""

    batch_top1: float
    running_top1: float
    count: int

    @property
    def gap(self) -> float:
        return self.batch_top1 - self.running_top1


def statistics_gap(
    model: Any,
    batches: Iterable[tuple[Any, Any]],
    *,
    device: Any,
    ctx: dist_util.DistContext,
    amp_dtype: Any = None,
    channels_last: bool = False,
) -> StatisticsGap | None:
    """Top-1 of ``model`` on ``batches`` in eval mode, and again with every BatchNorm layer
    normalising with the statistics of the batch itself (None: no BatchNorm, or no batch of
    two images or more). Nothing in the model changes: running statistics are not updated."""
    torch = lazy_import("torch")
    layers = batchnorm_layers(model)
    if not layers:
        return None
    was_training = {m: m.training for m in model.modules()}
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # batch-stat hits, running-stat hits, images
    model.eval()
    try:
        with torch.inference_mode():
            for images, labels in batches:
                if len(labels) < 2:  # one image has no batch variance
                    continue
                images = torch.as_tensor(images).to(device, non_blocking=True)
                labels = torch.as_tensor(labels).to(device, non_blocking=True)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    running = model(images).argmax(dim=1)
                    # Training mode without tracking: BatchNorm uses the batch's statistics and
                    # leaves its buffers alone (PyTorch's _BatchNorm.forward).
                    for layer in layers:
                        layer.train()
                        layer.track_running_stats = False
                    try:
                        batch = model(images).argmax(dim=1)
                    finally:
                        for layer in layers:
                            layer.track_running_stats = True
                            layer.eval()
                sums[0] += (batch == labels).sum()
                sums[1] += (running == labels).sum()
                sums[2] += labels.shape[0]
    finally:
        for module, mode in was_training.items():
            module.train(mode)
    dist_util.all_reduce_sum(sums, ctx)
    batch_hits, running_hits, count = sums.tolist()
    if not count:
        return None
    return StatisticsGap(batch_hits / count, running_hits / count, int(count))


def gap_cause(*, freeze_bn: bool, head_phase: bool, images: int) -> str:
    """Why running statistics may score far below batch statistics, for the warning."""
    if freeze_bn:
        return (
            "--freeze-bn keeps the pretrained BatchNorm statistics, and they do not fit this data; "
            "drop --freeze-bn so that they are re-estimated"
        )
    if head_phase:
        return (
            "the backbone's BatchNorm keeps its pretrained statistics during the head-only epochs "
            "(--freeze-epochs); they are re-estimated once the backbone trains"
        )
    return (
        f"the statistics were re-estimated on {images} training images, so the validation images differ "
        "from the training images (another --val-data, or augmentation far from them), or the batches are "
        "too small for batch statistics"
    )
