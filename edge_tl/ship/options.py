"""The options of `edge-tl ship`: the stage commands' own options, gathered once.

Each stage command (`edge-tl finetune`, `export`, `quantize`...) defines its options; ship
copies those definitions rather than restating them, so a stage's new option reaches ship
with its name, type, default and help. Where two stages use one name for different things
(`--batch-size` is the training batch of finetune and the timed batch of deploy), the first
stage in :data:`STAGES` keeps the plain name and the later ones take their stage's prefix
(`--deploy-batch-size`). Names in :data:`SHARED` mean the same in every stage and take one value.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

#: Stage name -> (module, attribute) of its command. Order: who keeps a contested name.
STAGE_COMMANDS: dict[str, tuple[str, str]] = {
    "import": ("edge_tl.cli.import_", "import_"),
    "finetune": ("edge_tl.cli.finetune", "finetune"),
    "export": ("edge_tl.cli.export", "export"),
    "quantize": ("edge_tl.cli.quantize", "quantize"),
    "compile": ("edge_tl.cli.compile", "compile"),
    "bundle": ("edge_tl.cli.bundle", "bundle"),
    "deploy": ("edge_tl.cli.deploy", "deploy"),
    "verify": ("edge_tl.cli.verify", "verify"),
}

#: One value for every stage that takes it: they mean the same thing everywhere.
SHARED = frozenset({
    "backbone", "img_size", "val_data", "calib_data", "target", "tensorrt", "eval_images", "max_accuracy_drop",
    "max_class_drop", "seed", "threads", "quiet",
})  # fmt: skip

#: Parameters ship sets itself for each stage (from its own options or its run directory).
SET_BY_SHIP: dict[str, frozenset[str]] = {
    "import": frozenset({"out", "quiet"}),
    "finetune": frozenset({"data", "out", "resume", "quiet"}),
    "export": frozenset({"run_dir", "quiet"}),
    "quantize": frozenset({"run_dir", "target", "precision", "max_accuracy_drop", "quiet"}),
    "compile": frozenset({"run_dir", "target", "precision", "quiet"}),
    "bundle": frozenset({"run_dir", "target", "precision", "out"}),
    "deploy": frozenset({"run_dir", "host", "fleet", "target", "precision", "quiet"}),
    "verify": frozenset({"run_dir", "max_accuracy_drop", "quiet"}),
}

#: ship's own option names (a stage option of the same name takes its stage's prefix).
SHIP_OWN = frozenset(
    {"data", "out", "target", "precision", "host", "fleet", "max_accuracy_drop", "config", "force", "quiet"}
)


def stage_command(stage: str) -> click.Command:
    module, attr = STAGE_COMMANDS[stage]
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Passthrough:
    """Where each stage parameter's value comes from: stage -> {stage param name: ship param name}."""

    sources: dict[str, dict[str, str]]
    params: tuple[click.Parameter, ...]  # ship's copies, in first-seen order

    def ship_names(self) -> frozenset[str]:
        return frozenset(p.name for p in self.params if p.name)

    def options_of(self, stage: str) -> dict[str, str]:
        return dict(self.sources[stage])


def _prefixed(param: click.Option, stage: str) -> click.Option:
    clone = copy.copy(param)
    clone.name = f"{stage}_{param.name}"
    clone.opts = [f"--{stage}-{o.lstrip('-')}" for o in param.opts]
    clone.secondary_opts = [
        f"--no-{stage}-{o[len('--no-') :]}" if o.startswith("--no-") else f"--{stage}-{o.lstrip('-')}"
        for o in param.secondary_opts
    ]
    return clone


def gather() -> Passthrough:
    """Every option of every stage command, named as `edge-tl ship` takes it."""
    name_owner: dict[str, str] = {name: "ship" for name in SHIP_OWN}  # parameter name -> stage that owns it
    flag_owner: dict[str, str] = {f"--{name.replace('_', '-')}": "ship" for name in SHIP_OWN}
    sources: dict[str, dict[str, str]] = {}
    params: list[click.Parameter] = []
    for stage in STAGE_COMMANDS:
        sources[stage] = {}
        for param in stage_command(stage).params:
            if not isinstance(param, click.Option) or param.name is None or param.name in SET_BY_SHIP[stage]:
                continue
            if param.name in SHARED and param.name in name_owner:
                sources[stage][param.name] = param.name  # the first definition serves every stage
                continue
            flags = (*param.opts, *param.secondary_opts)
            # A stage may write one parameter from two flags (compile's --plan-only / --build).
            clash = name_owner.get(param.name, stage) != stage or any(flag_owner.get(f, stage) != stage for f in flags)
            mine = _prefixed(param, stage) if clash else copy.copy(param)
            name_owner[mine.name] = stage  # type: ignore[index]
            flag_owner.update({f: stage for f in (*mine.opts, *mine.secondary_opts)})
            params.append(mine)
            sources[stage][param.name] = mine.name  # type: ignore[assignment]
    return Passthrough(sources=sources, params=tuple(params))


def stage_default(command: click.Command, param: click.Parameter) -> Any:
    """``param``'s value when its stage command is given no value for it."""
    ctx = click.Context(command)
    value = param.get_default(ctx)
    if value is None or value is getattr(click.core, "UNSET", None):  # click >= 8.3 marks "no default" so
        return () if getattr(param, "multiple", False) else None
    return param.type_cast_value(ctx, value)


def stage_kwargs(
    stage: str, passthrough: Passthrough, values: dict[str, Any], fixed: dict[str, Any], *, explicit: frozenset[str]
) -> dict[str, Any]:
    """Keyword arguments of ``stage``'s command: ``fixed``, then what the user gave under ship's names.

    An option the user did not give takes the stage's own default (a shared option's first
    definition may default differently: import's --backbone has none, finetune's has one).
    """
    command = stage_command(stage)
    out: dict[str, Any] = {}
    for param in command.params:
        if param.name is None:
            continue
        if param.name in fixed:
            out[param.name] = fixed[param.name]
            continue
        name = passthrough.sources[stage].get(param.name)
        if name is None:
            raise KeyError(f"ship sets no value for {stage}'s {param.name!r}")  # SET_BY_SHIP and fixed disagree
        value = values[name] if name in explicit else stage_default(command, param)
        if isinstance(value, Path) and isinstance(param.type, click.types.StringParamType):
            value = str(value)  # a folder option of one stage is a plain string in another (finetune's --val-data)
        out[param.name] = value
    return out
