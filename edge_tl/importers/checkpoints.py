"""What a weights file says of itself: the tool that wrote it, its candidate weights, the network it names.

Every layout is recognised by its keys, and each names the weights its own tool evaluates:

* timm's ``train.py`` (``timm/utils/checkpoint_saver.py``): ``state_dict``, plus
  ``state_dict_ema`` when it trained an EMA copy, and ``args`` whose ``model`` is the timm
  name. timm's ``validate.py`` scores ``state_dict`` unless given ``--use-ema``, so that is
  the default here, although timm's ``load_checkpoint`` prefers the EMA copy.
* torchvision's reference scripts (``references/classification/train.py``): ``model``,
  ``model_ema`` when trained with ``--model-ema``, and ``args``. Their ``utils.py``
  ``ExponentialMovingAverage`` is a ``torch.optim.swa_utils.AveragedModel``, whose state holds
  an ``n_averaged`` counter beside the network under ``module.``.
* Lightning (``pytorch-lightning_version``): one ``state_dict`` of the whole LightningModule,
  the network under the attribute that holds it, next to whatever else the module keeps (a
  loss's class weights, a second network, an EMA copy); its ``hyper_parameters`` may name
  the network.
* an edge-tl checkpoint (``format``: ``edge-tl-checkpoint``) and a plain state dict.

Both timm and torchvision store an ``argparse.Namespace`` of plain values; it is the one
class allowed beyond tensors when the file is read with ``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge_tl._lazy import lazy_import
from edge_tl.errors import ConfigError

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: keys under which other layouts keep a state dict, in the order they are offered
GENERIC_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema")
#: the counter ``torch.optim.swa_utils.AveragedModel`` keeps beside the averaged network
AVERAGED_COUNTER = "n_averaged"
#: Lightning hyper-parameters that commonly name the network
HPARAM_NAMES = ("backbone", "model_name", "arch", "architecture", "model")


class Tool:
    TIMM = "timm"
    TORCHVISION = "torchvision"
    LIGHTNING = "lightning"
    EDGE_TL = "edge-tl"
    UNKNOWN = "unknown"


#: how each tool numbers class folders: timm's ImageDataset by natural key, torchvision's
#: ImageFolder (and so Lightning's usual data modules and edge-tl's finetune) by plain sort
CLASS_ORDER = {Tool.TIMM: "natural", Tool.TORCHVISION: "sorted", Tool.LIGHTNING: "sorted", Tool.EDGE_TL: "sorted"}
#: what each tool's own evaluation calls the weights it scores
DEFAULT_KEY_WHY = {
    Tool.TIMM: "timm's validate.py scores state_dict unless given --use-ema",
    Tool.TORCHVISION: "torchvision's reference train.py evaluates model; model_ema is its EMA copy",
    Tool.EDGE_TL: "an edge-tl checkpoint",
}
EMA_KEYS = ("state_dict_ema", "model_ema")


@dataclass(frozen=True)
class Checkpoint:
    tool: str
    #: candidate weights by the name ``--weights-key`` takes, each a state dict with wrappers removed
    candidates: dict[str, dict[str, Any]]
    #: the candidate the tool's own evaluation uses, or None when the file does not say
    default: str | None
    #: the network the file names (timm or torchvision name), and where that was read
    arch: str | None = None
    arch_from: str = ""
    #: the training arguments, when the tool stores them (plain values)
    args: dict[str, Any] = field(default_factory=dict)
    #: Lightning keys that belong to no candidate
    leftovers: tuple[str, ...] = ()
    #: what the file itself says of its class names (an edge-tl checkpoint)
    classes: tuple[str, ...] | None = None


def is_state(obj: Any) -> bool:
    torch = lazy_import("torch")
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def strip_wrappers(state: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Remove DDP / torch.compile / AveragedModel prefixes, however nested (``module._orig_mod.``...)."""
    stripped: list[str] = []
    if AVERAGED_COUNTER in state and all(k.startswith("module.") for k in state if k != AVERAGED_COUNTER):
        state = {k: v for k, v in state.items() if k != AVERAGED_COUNTER}
        stripped.append(AVERAGED_COUNTER)
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped.append(prefix)
                changed = True
    return state, stripped


def read_checkpoint(obj: Any, *, origin: str, model_keys: set[str]) -> tuple[Checkpoint, dict[str, list[str]]]:
    """The checkpoint and, per candidate, the prefixes removed from its keys.

    ``model_keys`` are the keys of the network ``--backbone`` builds; they pick the
    LightningModule attribute that holds it.
    """
    if not isinstance(obj, dict):
        raise ConfigError(f"{origin!r} holds a {type(obj).__name__}, not a state dict or a training checkpoint")
    args = _args(obj.get("args"))
    stripped: dict[str, list[str]] = {}

    def take(keys: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        found = {}
        for key in keys:
            if is_state(obj.get(key)):
                found[key], stripped[key] = strip_wrappers(dict(obj[key]))
        return found

    if obj.get("format") == "edge-tl-checkpoint" and is_state(obj.get("model")):
        classes = obj.get("classes")
        return Checkpoint(
            Tool.EDGE_TL,
            take(("model",)),
            "model",
            arch=obj.get("backbone") if isinstance(obj.get("backbone"), str) else None,
            arch_from="the edge-tl checkpoint's backbone",
            classes=tuple(classes) if isinstance(classes, list) else None,
        ), stripped
    if "pytorch-lightning_version" in obj and is_state(obj.get("state_dict")):
        return _lightning(obj, model_keys, stripped)
    if is_state(obj.get("state_dict")) and ("arch" in obj or "saver" in obj or "args" in obj):
        model = args.get("model")
        return Checkpoint(
            Tool.TIMM,
            take(("state_dict", "state_dict_ema")),
            "state_dict",
            arch=model if isinstance(model, str) else None,
            arch_from="timm train.py's args.model",
            args=args,
        ), stripped
    if is_state(obj.get("model")) and ("args" in obj or "lr_scheduler" in obj):
        model = args.get("model")
        return Checkpoint(
            Tool.TORCHVISION,
            take(("model", "model_ema")),
            "model",
            arch=model if isinstance(model, str) else None,
            arch_from="torchvision reference train.py's args.model",
            args=args,
        ), stripped
    found = take(GENERIC_KEYS)
    if found:
        return Checkpoint(Tool.UNKNOWN, found, next(iter(found)) if len(found) == 1 else None), stripped
    if is_state(obj):
        state, stripped["(plain state dict)"] = strip_wrappers(dict(obj))
        return Checkpoint(Tool.UNKNOWN, {"(plain state dict)": state}, "(plain state dict)"), stripped
    raise ConfigError(
        f"{origin!r} holds no state dict: expected a dict of tensors or a checkpoint with one of "
        f"{', '.join(GENERIC_KEYS)}; found {sorted(obj)[:8]}"
    )


def _args(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    return dict(getattr(value, "__dict__", {}))


def _lightning(
    obj: dict[str, Any], model_keys: set[str], stripped: dict[str, list[str]]
) -> tuple[Checkpoint, dict[str, list[str]]]:
    """The LightningModule attributes whose keys are exactly the network's are the candidates
    (``state_dict:model``); every other key is a leftover, named by the caller."""
    state = dict(obj["state_dict"])
    wanted = {k for k in model_keys if not k.endswith("num_batches_tracked")}
    groups: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        first, _, rest = key.partition(".")
        groups.setdefault(first, {})[rest] = value
    candidates: dict[str, dict[str, Any]] = {}
    for first, group in groups.items():
        inner, removed = strip_wrappers(group)
        if wanted <= set(inner) <= set(model_keys):
            name = f"state_dict:{first}"
            candidates[name], stripped[name] = inner, [f"{first}.", *removed]
    taken = {n.split(":", 1)[1] for n in candidates}
    leftovers = tuple(k for k in state if k.partition(".")[0] not in taken)
    hparams = obj.get("hyper_parameters") if isinstance(obj.get("hyper_parameters"), dict) else {}
    arch, where = None, ""
    for name in HPARAM_NAMES:
        if isinstance(hparams.get(name), str):
            arch, where = hparams[name], f"Lightning's hyper_parameters[{name!r}]"
            break
    return Checkpoint(
        Tool.LIGHTNING,
        candidates,
        next(iter(candidates)) if len(candidates) == 1 else None,
        arch=arch,
        arch_from=where,
        args=dict(hparams),
        leftovers=leftovers,
    ), stripped
