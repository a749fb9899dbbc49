"""Turn TensorFlow-style "SAME" padding into fixed padding for a known input size.

timm's ``tf_*`` models (``tf_efficientnet_lite0`` among them) pad strided
convolutions "SAME" the TensorFlow way: the amount depends on the input size and is
computed in ``forward`` (``pad_same``). Exported as is, the graph carries that
arithmetic (Shape -> Gather -> Sub/Div/Ceil -> Concat -> Pad) for every such layer,
which TensorRT and graph optimisers handle poorly. The export input size is fixed by
the run's preprocessing, so each amount is a constant: measure the input size every
such layer sees, and swap the layer for a constant pad followed by the plain
operator. Numerically the model is unchanged at that input size.
"""

from __future__ import annotations

import importlib
from typing import Any

from edge_tl._lazy import lazy_import


def _same_pad(size: int, kernel: int, stride: int, dilation: int) -> int:
    # TensorFlow's SAME: output = ceil(size / stride); pad what the kernel needs for it.
    out = -(-size // stride)
    return max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


def _timm_same_classes() -> tuple[type, ...]:
    try:
        conv = importlib.import_module("timm.layers.conv2d_same")
        pool = importlib.import_module("timm.layers.pool2d_same")
    except ImportError:  # no timm: no timm layers to rewrite
        return ()
    return tuple(
        cls
        for cls in (
            getattr(conv, "Conv2dSame", None),
            getattr(conv, "Conv2dSameExport", None),
            getattr(pool, "MaxPool2dSame", None),
            getattr(pool, "AvgPool2dSame", None),
        )
        if cls is not None
    )


def _pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value), int(value))


def make_same_padding_static(model: Any, input_size: int, *, channels: int = 3) -> int:
    """Replace dynamic "SAME" padding layers of ``model`` in place; returns how many.

    ``model`` must be in eval mode; parameters are shared with the new layers.
    """
    torch = lazy_import("torch", purpose="export")
    nn = torch.nn
    classes = _timm_same_classes()
    targets = {name: module for name, module in model.named_modules() if classes and isinstance(module, classes)}
    if not targets:
        return 0
    seen: dict[str, tuple[int, int]] = {}
    hooks = [
        module.register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, tuple(args[0].shape[-2:])))
        for name, module in targets.items()
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, input_size, input_size))
    finally:
        for hook in hooks:
            hook.remove()

    for name, module in targets.items():
        height, width = seen[name]
        kernel, stride = _pair(module.kernel_size), _pair(module.stride)
        dilation = _pair(getattr(module, "dilation", 1))
        pad_h = _same_pad(height, kernel[0], stride[0], dilation[0])
        pad_w = _same_pad(width, kernel[1], stride[1], dilation[1])
        # TensorFlow puts the odd pixel at the end (right/bottom).
        pad = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        if isinstance(module, nn.Conv2d):
            plain: Any = nn.Conv2d(
                module.in_channels,
                module.out_channels,
                kernel,
                stride,
                0,
                dilation,
                module.groups,
                module.bias is not None,
            )
            plain.weight = module.weight
            plain.bias = module.bias
            value = 0.0
        elif isinstance(module, nn.MaxPool2d):
            plain = nn.MaxPool2d(kernel, stride, 0, dilation, ceil_mode=module.ceil_mode)
            value = float("-inf")
        else:
            plain = nn.AvgPool2d(
                kernel, stride, 0, ceil_mode=module.ceil_mode, count_include_pad=module.count_include_pad
            )
            value = 0.0
        replacement = nn.Sequential(nn.ConstantPad2d(pad, value), plain) if any(pad) else plain
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, replacement.eval())
    return len(targets)
