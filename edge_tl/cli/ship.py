"""`edge-tl ship --data DIR --target T --out RUN [--host H | --fleet FILE]`: the whole loop, like make."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from edge_tl.cli import options
from edge_tl.ship.config import RUN_CONFIG_NAME, find_config, load_config
from edge_tl.ship.options import gather
from edge_tl.ship.stages import STAGE_ORDER

PASSTHROUGH = gather()
#: Options that name one invocation, not the run: left out of RUN/ship.toml.
NOT_RECORDED = frozenset({"config", "force"})


def _peek(args: list[str], option: str) -> str | None:
    """The value of ``option`` on the command line, before click parses it (a config file is read first)."""
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == option and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    return None


class ShipCommand(click.Command):
    """Reads ``--config FILE`` (or ``DATA/edge-tl.toml``) into the defaults, so the command line overrides it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        path = find_config(config=_peek(args, "--config"), data=_peek(args, "--data"))
        if path is not None:
            names = {p.name for p in self.params if p.name} - NOT_RECORDED
            paths = {p.name for p in self.params if p.name and isinstance(p.type, click.Path)}
            ctx.default_map = load_config(path, known=names, paths=paths)
            ctx.meta["edge_tl.ship.config"] = path
        return super().parse_args(ctx, args)


def _ship_params() -> list[click.Parameter]:
    own = [
        click.Option(["--data"], required=True, type=click.Path(file_okay=False, path_type=Path),
                     help="Your images: one subfolder per class. With a model (--weights/--onnx/--imagenet), "
                          "its validation and calibration images."),
        options.target(required=True).param(),
        click.Option(["--out"], required=True, type=click.Path(file_okay=False, path_type=Path),
                     help="Run directory: made, or continued where it stopped."),
        click.Option(["--host"], default=None,
                     help="Deploy to this device: [user@]HOST[:PORT] or an ssh_config alias."),
        click.Option(["--fleet"], default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Deploy to every device of this inventory TOML (devices that are down are listed, the "
                          "others shipped to; exit 1 when any is missing)."),
        click.Option(["--require-all-devices"], is_flag=True,
                     help="With --fleet: refuse in pre-flight when any device cannot be reached."),
        options.precision(help="Precision on the device (default: int8 where the target runs it fast, else fp16, "
                                "else fp32).").param(),
        click.Option(["--max-accuracy-drop"], type=click.FloatRange(min=0), default=None, metavar="PTS",
                     help="Top-1 points the shipped model may lose against the original: quantize's budget and "
                          "verify's gate."),
        click.Option(["--config"], default=None, type=click.Path(dir_okay=False, path_type=Path),
                     help="TOML file of options (default: DATA/edge-tl.toml when it exists); "
                          f"RUN/{RUN_CONFIG_NAME} repeats a run."),
        click.Option(["--force"], multiple=True, type=click.Choice(list(STAGE_ORDER)),
                     help="Run this stage (and the ones after it) again even if it is up to date; repeatable."),
        options.quiet("the summary").param(),
    ]  # fmt: skip
    return [*own, *PASSTHROUGH.params]


def _absolute(value: Any) -> Any:
    return value.expanduser().resolve() if isinstance(value, Path) else value


def _recorded(params: list[click.Parameter], values: dict[str, Any]) -> dict[str, Any]:
    """ship.toml's values: as a config file gives them back to the same options."""
    out: dict[str, Any] = {}
    for param in params:
        if param.name is None or param.name in NOT_RECORDED:
            continue
        value = values[param.name]
        if isinstance(value, tuple) and not getattr(param, "multiple", False) and param.nargs == 1:
            value = ",".join(str(v) for v in value)  # one option read as a list (import's --mean R,G,B)
        out[param.name] = str(value) if isinstance(value, Path) else value
    return out


def _image_fingerprints(values: dict[str, Any]) -> dict[str, str]:
    from edge_tl.ship.config import DATA_CONFIG_NAME
    from edge_tl.ship.stages import folder_fingerprint

    if not Path(values["data"]).is_dir():
        return {"data": ""}  # never recorded: the full check runs and names the problem
    out = {"data": folder_fingerprint(values["data"], ignore=frozenset({DATA_CONFIG_NAME}))}
    if values["val_data"] is not None:
        out["val_data"] = folder_fingerprint(values["val_data"])
    return out


def _preflight(values: dict[str, Any], *, import_kind: bool, say: Any) -> tuple[Any, Any]:
    """Each check fails with one line, before RUN is touched or anything is trained."""
    from edge_tl.ship import preflight

    target, precision = preflight.check_target(values["target"], values["precision"])
    if values["host"] is not None and values["fleet"] is not None:
        raise click.UsageError("give at most one of --host and --fleet")
    preflight.check_run_dir(values["out"])
    data = values["data"]
    if import_kind:
        preflight.check_labelled(str(data))
        data_bytes = 0
    elif preflight.checked_before(values["out"], _image_fingerprints(values)):
        data_bytes = 0  # the run's fine-tune read these very files: checked then, and its cache is made
    else:
        summary = preflight.check_data(str(data), val_data=values["val_data"] and str(values["val_data"]),
                                       val_split=values["val_split"], seed=values["seed"])  # fmt: skip
        data_bytes = summary.bytes
        if summary.skipped:
            say(f"warning: {len(summary.skipped)} file(s) do not decode and are left out (first: {summary.skipped[0]})")

    def check(host: str) -> None:
        preflight.check_host(
            host, ssh_config=values["ssh_config"], identity_file=values["identity_file"],
            known_hosts=values["known_hosts"], accept_new_host_key=values["accept_new_host_key"],
            connect_timeout=values["connect_timeout"],
        )  # fmt: skip

    if values["host"] is not None:
        check(values["host"])
    if values["fleet"] is not None:
        # One device switched off must not stop a fleet: it is listed here, and deploy tries it
        # again (it may be back by then) and reports it missing with its reason.
        devices = preflight.fleet_hosts(values["fleet"], target=values["target"], precision=precision)
        down = preflight.down_devices(devices, check)
        refusal = preflight.fleet_refusal(values["fleet"], down, total=len(devices),
                                          required=values["require_all_devices"])  # fmt: skip
        if refusal is not None:
            raise refusal
        for name, reason in down:
            say(f"warning: fleet device {name} is down ({reason}); shipping to the other {len(devices) - len(down)}")
    preflight.check_disk(values["out"], data_bytes=data_bytes)
    return target, precision


@click.pass_context
def _ship(ctx: click.Context, **values: Any) -> None:
    """Fine-tune (or import) -> export -> quantize -> compile -> bundle -> deploy -> verify -> report, in RUN.

    Every option of those stages passes through under its own name; where two stages share a
    name for different things, the later stage's takes its prefix (--deploy-batch-size,
    --verify-device, --finetune-precision). Options can also come from DATA/edge-tl.toml or
    --config FILE (keys are option names without the dashes); the command line wins, and the
    resolved options are written to RUN/ship.toml.

    Like make, a stage runs again only when what it is made from changed (its options, the
    artifacts it reads, the images), or with --force STAGE; an interrupted run continues at the
    stage that did not finish. Exits 1 when quantize's budget or verify's gate fails.
    """
    from edge_tl.ship.api import ShipRequest, ship

    started = time.perf_counter()
    say = (lambda _m: None) if values["quiet"] else (lambda m: click.echo(m, err=True))
    values = {k: _absolute(v) for k, v in values.items()}
    if Path(values["target"]).is_file():  # a profile TOML: ship.toml must find it from anywhere
        values["target"] = str(Path(values["target"]).resolve())
    params = ctx.command.params
    explicit = frozenset(
        name
        for name in values
        if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.DEFAULT_MAP)
    )
    options = {p.name: values[p.name] for p in PASSTHROUGH.params if p.name}
    request = ShipRequest(
        data=values["data"], out=values["out"], target=str(values["target"]), passthrough=PASSTHROUGH, options=options,
        precision=values["precision"], host=values["host"], fleet=values["fleet"],
        max_accuracy_drop=values["max_accuracy_drop"], force=frozenset(values["force"]), quiet=values["quiet"],
        explicit=explicit,
    )  # fmt: skip
    from edge_tl.runs import run_writer

    target, precision = _preflight(values, import_kind=request.import_kind is not None, say=say)
    # One ship per RUN at a time (pre-flight only reads): a second is refused with the first one's pid.
    with run_writer(values["out"], "ship"):
        config = ctx.meta.get("edge_tl.ship.config")
        say(f"ship: {values['data']} -> {target.name} ({precision.value}) in {values['out']}"
            + (f", options from {config}" if config else ""))  # fmt: skip
        result = ship(request, target=target, precision=precision, values=_recorded(params, values), say=say)
    click.echo(result.table())
    if result.report is not None:
        click.echo(f"report: {result.report}")
    click.echo(f"run: {result.out}  ({time.perf_counter() - started:.1f} s)")
    result.raise_for_gates()


ship = ShipCommand(
    name="ship", params=_ship_params(), callback=_ship, help=_ship.__doc__,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
)  # fmt: skip

__all__ = ["ship"]
