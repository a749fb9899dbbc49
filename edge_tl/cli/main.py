"""Entry point of the `edge-tl` command.

Subcommands live in their own modules and are imported only when invoked (or
when their help is shown), so `edge-tl --help` needs nothing but the core.
"""

from __future__ import annotations

import errno
import importlib
import shlex
import sys
from pathlib import Path

import click

from edge_tl import __version__
from edge_tl.errors import EdgeTLError

# command name -> (module, attribute, one-line help shown by `edge-tl --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "quickstart": ("edge_tl.cli.quickstart", "quickstart", "Run the whole loop on the built-in digits data."),
    "backbones": ("edge_tl.cli.backbones", "backbones", "List the available backbones."),
    "finetune": ("edge_tl.cli.finetune", "finetune", "Fine-tune a pretrained backbone on your images."),
    "import": (
        "edge_tl.cli.import_",
        "import_",
        "Turn a model trained elsewhere (weights, pretrained, ONNX) into a run.",
    ),
    "evaluate": ("edge_tl.cli.evaluate", "evaluate", "Evaluate a run's best checkpoint on its validation set."),
    "export": ("edge_tl.cli.export", "export", "Export a run's model to ONNX (FP32 and FP16) with a parity check."),
    "quantize": ("edge_tl.cli.quantize", "quantize", "Calibrate and quantize a run's ONNX model to INT8 (or FP16)."),
    "targets": ("edge_tl.cli.targets", "targets", "List and show device target profiles."),
    "compile": ("edge_tl.cli.compile", "compile", "Build a TensorRT engine, or an exact on-device build plan."),
    "bench": ("edge_tl.cli.bench", "bench", "Measure latency and throughput of a model or a run's artifacts."),
    "verify": ("edge_tl.cli.verify", "verify", "Compare every artifact of a run against the original model."),
    "bundle": ("edge_tl.cli.bundle", "bundle", "Pack a run for a device: model, build plan, evaluation pack."),
    "deploy": ("edge_tl.cli.deploy", "deploy", "Deploy to a device (or a fleet) over SSH and measure it there."),
    "report": ("edge_tl.cli.report", "report", "Write one self-contained HTML report of a run (and its fleet)."),
    "ship": (
        "edge_tl.cli.ship",
        "ship",
        "Your images to a verified model on the device: every stage, skipping what is done.",
    ),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module = importlib.import_module(entry[0])
        return getattr(module, entry[1])

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help from the table above: listing commands must not import them.
        rows = [(name, entry[2]) for name, entry in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-tl")
def cli() -> None:
    """edge-tl: fine-tune a compact image backbone and ship it to an edge GPU, measured honestly.

    Typical flow: finetune -> export -> quantize -> compile -> deploy -> verify.
    Every stage reads and writes a run directory (see its manifest.json).
    """


def _refresh_reports(args: list[str]) -> None:
    """Every stage that finishes (or fails after writing results) refreshes the run's report, if it has one.

    The one place for it: stages need not know the report exists. Run directories are found
    among the command's arguments; ``edge-tl report`` itself is left alone.
    """
    if not args or args[0] == "report" or args[0] not in COMMANDS:
        return
    paths = {arg: Path(arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg) for arg in args[1:]}
    # Only runs that have a report: a command that failed early (a refusal) stays quick.
    paths = {arg: path for arg, path in paths.items() if (path / "report" / "index.html").is_file()}
    if not paths:
        return
    from edge_tl.report import refresh_report

    for arg, path in paths.items():
        try:
            refresh_report(path)
        except Exception as exc:  # noqa: BLE001 - the stage's own outcome (and its error) must come through untouched
            click.echo(
                f"warning: the report of {arg} was not refreshed ({type(exc).__name__}: {exc}); "
                f"run `edge-tl report {arg}`",
                err=True,
            )


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: user errors become one clear line and exit code 1."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        from edge_tl.runs import record_invocation

        record_invocation(shlex.join(["edge-tl", *args]))
        try:
            cli.main(args=args, prog_name="edge-tl", standalone_mode=False)
        finally:
            # main() may be called in a process that goes on using the library (tests, notebooks).
            record_invocation(None)
            _refresh_reports(args)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EdgeTLError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        # A full disk under a write edge-tl does not make itself (onnx.save, a temporary folder): the same one line.
        from edge_tl.runs import disk_full

        click.echo(f"Error: {disk_full(exc.filename or Path.cwd())}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted; everything saved so far is kept.", err=True)
        sys.exit(130)
    else:
        sys.exit(0)


if __name__ == "__main__":
    main()
