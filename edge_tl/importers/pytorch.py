"""PyTorch sources: a backbone plus a local weights file, or a pretrained backbone as it is.

Both become an edge-tl checkpoint (``checkpoint-best``), so ``load_run_model`` and every
stage after it read an imported run exactly like a fine-tuned one.

Weights files are read with ``weights_only=True``; ``edge_tl.importers.checkpoints`` tells
which tool wrote one, which weights that tool evaluates, and which network it names. The
import follows that tool: its default weights key (stated, with every other key the file
holds), its class-folder order, its resize rounding (timm's ``floor(size / crop_pct)``,
torchvision's explicit resize size) and its network, or refuses in one line.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Any

from edge_tl._lazy import lazy_import
from edge_tl.artifacts import CHECKPOINT_BEST, ArtifactKind
from edge_tl.errors import ConfigError
from edge_tl.importers.base import STAGE, ImportRequest, SourceModel, require_file
from edge_tl.importers.checkpoints import CLASS_ORDER, DEFAULT_KEY_WHY, EMA_KEYS, Checkpoint, Tool, read_checkpoint
from edge_tl.runs import Artifact, Run, sha256_file

CHECKPOINT_PATH = ("checkpoints", "best.pt")
#: edge-tl names that build one of several timm networks with the same keys and shapes
AMBIGUOUS = {"efficientnet_lite0": ("tf_efficientnet_lite0", "efficientnet_lite0")}


def open_weights(request: ImportRequest) -> SourceModel:
    from edge_tl.models.registry import Weights, WeightsSource, build_model, classifier_name, get_backbone

    if not request.backbone:
        raise ConfigError("--weights needs --backbone NAME: the architecture the weights belong to")
    path = require_file(request.weights, flag="--weights")
    spec = get_backbone(request.backbone)
    probe = build_model(spec.name, 2, weights=Weights(WeightsSource.NONE))
    head = classifier_name(probe)
    checkpoint, stripped = read_checkpoint(_load(path), origin=str(path), model_keys=set(probe.state_dict()))
    _check_arch(checkpoint, spec, request.backbone)
    key = _choose_key(checkpoint, request.weights_key, origin=str(path))
    notes = [_key_note(checkpoint, key)]
    if checkpoint.leftovers:
        notes.append(
            f"ignored {len(checkpoint.leftovers)} Lightning key(s) outside the network (they fit no copy of "
            f"{spec.name!r}): {', '.join(checkpoint.leftovers)}"
        )

    models: dict[str, Any] = {}
    for name, state in checkpoint.candidates.items():
        head_key = f"{head}.weight"
        if head_key not in state:
            raise ConfigError(
                f"weights {name!r} in {str(path)!r} have no classifier {head_key!r} for backbone {spec.name!r}; "
                f"first keys: {list(state)[:4]}. Check --backbone (`edge-tl backbones list`, or timm:<name>)."
            )
        model = build_model(spec.name, int(state[head_key].shape[0]), weights=Weights(WeightsSource.NONE))
        _fit(model, state, origin=f"{path} [{name}]", backbone=spec.name)
        models[name] = model.eval()
    model = models[key]
    num_classes = int(model.state_dict()[f"{head}.weight"].shape[0])
    prep, prep_note = _preprocessing(request, spec, checkpoint)
    notes.append(prep_note)

    from edge_tl.importers.scoring import torch_predict

    details = {
        "weights": str(path.resolve()),
        "weights_sha256": sha256_file(path),
        "weights_key": key,
        "weights_keys_in_file": list(checkpoint.candidates),
        "tool": checkpoint.tool,
        "stripped_prefixes": stripped.get(key, []),
    }
    if checkpoint.arch:
        details["arch_named"] = checkpoint.arch
    if checkpoint.leftovers:
        details["ignored_keys"] = list(checkpoint.leftovers)
    return SourceModel(
        kind=request.kind,
        num_classes=num_classes,
        preprocessing=prep,
        class_names=checkpoint.classes if checkpoint.classes and len(checkpoint.classes) == num_classes else None,
        backbone={"name": spec.name, "source": spec.source, "arch": spec.arch, "weights": str(path.resolve())},
        details=details,
        write=lambda run: _write_checkpoint(run, model, details),
        notes=tuple(notes),
        predict=torch_predict(model),
        weights_key=key,
        alternatives={
            name: torch_predict(other)
            for name, other in models.items()
            if name != key and other.state_dict()[f"{head}.weight"].shape[0] == num_classes
        },
        class_order=CLASS_ORDER.get(checkpoint.tool),
        tool=checkpoint.tool,
    )


def _choose_key(checkpoint: Checkpoint, wanted: str | None, *, origin: str) -> str:
    keys = list(checkpoint.candidates)
    if wanted is not None:
        if wanted not in checkpoint.candidates:
            raise ConfigError(
                f"--weights-key {wanted!r} is not in {origin!r}; the weights it holds: {', '.join(keys) or 'none'}"
            )
        return wanted
    if not keys:
        raise ConfigError(
            f"{origin!r} ({checkpoint.tool} checkpoint) holds no weights whose keys are the network's; "
            "check --backbone against the architecture that was trained"
        )
    if checkpoint.default is None:
        raise ConfigError(
            f"{origin!r} holds several weights ({', '.join(keys)}) and does not say which its tool evaluates; "
            f"choose one with --weights-key (e.g. --weights-key {keys[0]})"
        )
    return checkpoint.default


def _key_note(checkpoint: Checkpoint, key: str) -> str:
    others = [k for k in checkpoint.candidates if k != key]
    why = DEFAULT_KEY_WHY.get(checkpoint.tool, f"a {checkpoint.tool} checkpoint")
    text = f"weights: {key!r} ({why})"
    if others:
        text += f"; the file also holds {', '.join(repr(k) for k in others)}"
        ema = [k for k in others if k in EMA_KEYS]
        if ema:
            text += f"; the EMA weights: --weights-key {ema[0]}"
    return text


def _built_arch(spec: Any) -> tuple[str, str]:
    """(library, name) of the network a backbone spec builds."""
    return ("timm" if spec.source in ("timm", "bundled") else spec.source), spec.arch


def _check_arch(checkpoint: Checkpoint, spec: Any, requested: str) -> None:
    """Refuse a --backbone that builds another network than the checkpoint names, even when keys fit."""
    library, built = _built_arch(spec)
    if checkpoint.tool == Tool.EDGE_TL:
        if checkpoint.arch and checkpoint.arch != spec.name:
            raise ConfigError(
                f"the edge-tl checkpoint was fine-tuned as {checkpoint.arch!r} but --backbone is {requested!r}; "
                f"give --backbone {checkpoint.arch}"
            )
        return
    if checkpoint.arch is None:
        if spec.name in AMBIGUOUS:
            options = " or ".join(f"--backbone timm:{a}" for a in AMBIGUOUS[spec.name])
            raise ConfigError(
                f"--backbone {requested} builds timm's {built!r}, but timm's {', '.join(AMBIGUOUS[spec.name])} have "
                f"the same keys and shapes and nothing in the file names one; give {options}"
            )
        return
    named = checkpoint.arch.removeprefix("timm:").split(".", 1)[0]  # a timm pretrained tag is not the network
    named_library = {Tool.TIMM: "timm", Tool.TORCHVISION: "torchvision"}.get(checkpoint.tool, library)
    if (named_library, named) != (library, built):
        fix = f"timm:{named}" if named_library == "timm" else named
        raise ConfigError(
            f"the checkpoint names its network {named_library}'s {named!r} ({checkpoint.arch_from}) but --backbone "
            f"{requested} builds {library}'s {built!r}, a different network even where keys fit; "
            f"give --backbone {fix}"
        )


def _preprocessing(request: ImportRequest, spec: Any, checkpoint: Checkpoint) -> tuple[Any, str]:
    """The backbone's contract as the checkpoint's tool evaluates it, explicit flags over both."""
    from edge_tl.importers.base import PreprocessingOptions

    given = request.preprocessing
    args = checkpoint.args
    how = ""
    if checkpoint.tool == Tool.TORCHVISION and isinstance(args.get("val_crop_size"), int):
        # the reference scripts' ClassificationPresetEval(crop_size, resize_size, interpolation)
        given = PreprocessingOptions(
            img_size=given.img_size or args["val_crop_size"],
            mean=given.mean,
            std=given.std,
            interpolation=given.interpolation
            or (args.get("interpolation") if args.get("interpolation") in ("bilinear", "bicubic") else None),
            crop_pct=given.crop_pct,
            resize_size=given.resize_size
            or (args.get("val_resize_size") if isinstance(args.get("val_resize_size"), int) else None),
        )
        how = " (torchvision reference train.py's args.val_crop_size / val_resize_size)"
    prep = given.over(spec.preprocessing)
    if given.resize_size is not None:
        return (
            prep,
            f"resize: {prep.resize_size} px, then a {prep.input_size} px centre crop{how or ' (--resize-size)'}",
        )
    if _built_arch(spec)[0] == "timm":
        prep = prep.with_floor_resize()
        return prep, (
            f"resize: {prep.resize_size} px = floor({prep.input_size} / {prep.crop_pct:g}) as timm's eval transform "
            "rounds, then the centre crop; --resize-size overrides"
        )
    return prep, (
        f"resize: {prep.resize_size} px = round({prep.input_size} / {prep.crop_pct:g}), then the centre crop; "
        "give --resize-size N if the model was evaluated at another resize size (torchvision weights name theirs)"
    )


def open_pretrained(request: ImportRequest) -> SourceModel:
    from edge_tl.importers.scoring import torch_predict
    from edge_tl.models.registry import build_pretrained, classifier_name, get_backbone

    if not request.backbone:
        raise ConfigError("--imagenet needs --backbone NAME (e.g. efficientnet_lite0, which works offline)")
    spec = get_backbone(request.backbone)
    model = build_pretrained(spec.name).eval()
    head = model.get_submodule(classifier_name(model))
    num_classes = int(head.out_features)
    names, note = imagenet_class_names() if num_classes == IMAGENET_CLASSES else (None, "")
    prep, prep_note = _preprocessing(request, spec, Checkpoint(Tool.UNKNOWN, {}, None))
    details = {"weights": "imagenet"}
    return SourceModel(
        kind=request.kind,
        num_classes=num_classes,
        preprocessing=prep,
        class_names=names,
        backbone={"name": spec.name, "source": spec.source, "arch": spec.arch, "weights": "imagenet"},
        details=details,
        write=lambda run: _write_checkpoint(run, model, details),
        notes=(note, prep_note) if note else (prep_note,),
        predict=torch_predict(model),
        weights_key="imagenet",
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
    from edge_tl.importers.programs import archive_kind, refuse_program

    torch = lazy_import("torch", purpose="reading PyTorch weights")
    refuse_program(path, archive_kind(path), flag="--weights")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if isinstance(exc, pickle.UnpicklingError) and "GLOBAL torch.nn.modules" in str(exc):
            raise ConfigError(
                f"{str(path)!r} is a whole pickled model, which edge-tl does not unpickle (weights_only=True); "
                "where you trust the file, "
                f'convert it once to a state dict: torch.save(torch.load("{path}", weights_only=False).state_dict(), '
                '"state_dict.pt"), then give --weights state_dict.pt'
            ) from exc
        raise ConfigError(
            f"cannot read weights from {str(path)!r} ({type(exc).__name__}: {first}); give a state dict saved with "
            "torch.save(model.state_dict(), PATH) or a training checkpoint"
        ) from exc


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
