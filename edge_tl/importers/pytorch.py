"""PyTorch sources: a backbone plus a local weights file, or a pretrained backbone as it is.

Both become an edge-tl checkpoint (``checkpoint-best``), so ``load_run_model`` and every
stage after it read an imported run exactly like a fine-tuned one.

Weights files are read with ``weights_only=True``. The training scripts people use
write these layouts, and each is recognised by its keys:

* a plain state dict (``torch.save(model.state_dict(), PATH)``);
* timm's ``train.py`` (``state_dict``, and ``state_dict_ema`` when it trained an EMA
  copy; timm's ``train.py`` validates and picks the best checkpoint on the EMA weights
  then, so those are taken), https://github.com/huggingface/pytorch-image-models
  ``timm/utils/checkpoint_saver.py``;
* torchvision's reference scripts (``model``), https://github.com/pytorch/vision
  ``references/classification/train.py``;
* Lightning (``state_dict``, every key prefixed by the LightningModule attribute that
  holds the network, usually ``model.``).

Both timm and torchvision also store their ``argparse.Namespace`` of arguments; it holds
only plain values and is the one class allowed beyond tensors. DDP's ``module.`` and
torch.compile's ``_orig_mod.`` prefixes are removed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edge_tl._lazy import lazy_import
from edge_tl.artifacts import CHECKPOINT_BEST, ArtifactKind
from edge_tl.errors import ConfigError
from edge_tl.importers.base import STAGE, ImportRequest, SourceModel, require_file
from edge_tl.runs import Artifact, Run, sha256_file

#: Where a checkpoint layout keeps its model weights, in the order they are preferred.
STATE_KEYS = ("state_dict_ema", "state_dict", "model", "model_state_dict")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
CHECKPOINT_PATH = ("checkpoints", "best.pt")


def open_weights(request: ImportRequest) -> SourceModel:
    from edge_tl.models.registry import Weights, WeightsSource, build_model, classifier_name, get_backbone

    if not request.backbone:
        raise ConfigError("--weights needs --backbone NAME: the architecture the weights belong to")
    path = require_file(request.weights, flag="--weights")
    spec = get_backbone(request.backbone)
    raw = _load(path)
    key, state = _state_dict(raw, origin=str(path))
    state, stripped = _strip_wrappers(state)

    probe = build_model(spec.name, 2, weights=Weights(WeightsSource.NONE))
    head = classifier_name(probe)
    state, prefix = _strip_common_prefix(state, set(probe.state_dict()))
    if prefix:
        stripped.append(prefix)
    head_key = f"{head}.weight"
    if head_key not in state:
        raise ConfigError(
            f"weights in {str(path)!r} have no classifier {head_key!r} for backbone {spec.name!r}; "
            f"first keys: {list(state)[:4]}. Check --backbone (`edge-tl backbones list`, or timm:<name>)."
        )
    num_classes = int(state[head_key].shape[0])
    model = build_model(spec.name, num_classes, weights=Weights(WeightsSource.NONE))
    _fit(model, state, origin=str(path), backbone=spec.name)
    model.eval()

    details = {
        "weights": str(path.resolve()),
        "weights_sha256": sha256_file(path),
        "weights_key": key,
        "stripped_prefixes": stripped,
    }
    return SourceModel(
        kind=request.kind,
        num_classes=num_classes,
        preprocessing=request.preprocessing.over(spec.preprocessing),
        class_names=None,
        backbone={"name": spec.name, "source": spec.source, "arch": spec.arch, "weights": str(path.resolve())},
        details=details,
        write=lambda run: _write_checkpoint(run, model, details),
    )


def open_pretrained(request: ImportRequest) -> SourceModel:
    from edge_tl.models.registry import build_pretrained, classifier_name, get_backbone

    if not request.backbone:
        raise ConfigError("--imagenet needs --backbone NAME (e.g. efficientnet_lite0, which works offline)")
    spec = get_backbone(request.backbone)
    model = build_pretrained(spec.name).eval()
    head = model.get_submodule(classifier_name(model))
    num_classes = int(head.out_features)
    names, note = imagenet_class_names() if num_classes == IMAGENET_CLASSES else (None, "")
    details = {"weights": "imagenet"}
    return SourceModel(
        kind=request.kind,
        num_classes=num_classes,
        preprocessing=request.preprocessing.over(spec.preprocessing),
        class_names=names,
        backbone={"name": spec.name, "source": spec.source, "arch": spec.arch, "weights": "imagenet"},
        details=details,
        write=lambda run: _write_checkpoint(run, model, details),
        notes=(note,) if note else (),
    )


# --------------------------------------------------------------------------- ImageNet names

IMAGENET_CLASSES = 1000


def imagenet_class_names() -> tuple[tuple[str, ...] | None, str]:
    """The 1000 ImageNet class names from timm's bundled class info, or ``None`` and why not.

    Names are WordNet descriptions ("tabby, tabby cat"); the two that are spelled alike
    ("crane" the bird, 134, and the machine, 517) get their index appended.
    """
    from edge_tl._lazy import is_available

    if not is_available("timm"):
        return None, "timm is not installed, so the ImageNet classes are named by their index"
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    names = [info.index_to_description(i) for i in range(IMAGENET_CLASSES)]
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return tuple(f"{n} ({i})" if counts[n] > 1 else n for i, n in enumerate(names)), ""


def imagenet_aliases(names: tuple[str, ...]) -> dict[str, int]:
    """Extra folder names an ImageNet class answers to: its WordNet id and each unique synonym."""
    from edge_tl._lazy import is_available

    aliases: dict[str, int] = {}
    seen: dict[str, int] = {}
    for name in names:
        for synonym in (s.strip() for s in name.split(",")):
            seen[synonym] = seen.get(synonym, 0) + 1
    for i, name in enumerate(names):
        for synonym in (s.strip() for s in name.split(",")):
            if seen[synonym] == 1:
                aliases[synonym] = i
    if is_available("timm"):
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        aliases.update({info.index_to_label_name(i): i for i in range(len(names))})
    return aliases


# --------------------------------------------------------------------------- weights files


def _load(path: Path) -> Any:
    torch = lazy_import("torch", purpose="reading PyTorch weights")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(
            f"cannot read weights from {str(path)!r} ({type(exc).__name__}: {first}). edge-tl loads only tensors "
            "(weights_only=True): save a state dict, e.g. torch.save(model.state_dict(), PATH), not a pickled model."
        ) from exc


def _is_state(obj: Any) -> bool:
    torch = lazy_import("torch")
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _state_dict(obj: Any, *, origin: str) -> tuple[str, dict[str, Any]]:
    """``(where it was found, the state dict)``: a checkpoint's entry, or the file itself."""
    if isinstance(obj, dict):
        for key in STATE_KEYS:
            if _is_state(obj.get(key)):
                return key, dict(obj[key])
        if _is_state(obj):
            return "(plain state dict)", dict(obj)
    found = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise ConfigError(
        f"{origin!r} holds no state dict: expected a dict of tensors or a checkpoint with one of "
        f"{', '.join(STATE_KEYS)}; found {found}"
    )


def _strip_wrappers(state: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Remove DDP / torch.compile prefixes, however nested (``module._orig_mod.``...)."""
    stripped: list[str] = []
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped.append(prefix)
                changed = True
    return state, stripped


def _strip_common_prefix(state: dict[str, Any], own: set[str]) -> tuple[dict[str, Any], str]:
    """Lightning keeps the network under an attribute (``model.``): drop a first segment that
    every key shares when that makes the keys the model's own, never otherwise."""
    if set(state) & own:
        return state, ""
    firsts = {k.split(".", 1)[0] for k in state}
    if len(firsts) != 1 or not all("." in k for k in state):
        return state, ""
    prefix = firsts.pop() + "."
    candidate = {k[len(prefix) :]: v for k, v in state.items()}
    return (candidate, prefix) if set(candidate) & own else (state, "")


def _fit(model: Any, state: dict[str, Any], *, origin: str, backbone: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) {_few(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es) (file vs model) {_few(shapes)}")
    if problems:
        raise ConfigError(
            f"weights in {origin!r} do not fit backbone {backbone!r}: {'; '.join(problems)}. "
            "Check --backbone against the architecture that was trained; nothing is loaded partially."
        )
    model.load_state_dict(state, strict=False)


def _few(items: list[str], n: int = 4) -> str:
    return "[" + ", ".join(items[:n]) + (", ..." if len(items) > n else "") + "]"


def _write_checkpoint(run: Run, model: Any, details: dict[str, Any]) -> Artifact:
    from edge_tl.models.checkpoint import save_checkpoint

    path = save_checkpoint(run.path(*CHECKPOINT_PATH), {"model": model.state_dict(), "imported": details})
    return run.add_artifact(
        CHECKPOINT_BEST,
        kind=ArtifactKind.CHECKPOINT.value,
        path=path,
        stage=STAGE,
        precision="fp32",
        details={"imported": details},
    )
