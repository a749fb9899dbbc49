"""`edge-tl deploy RUN --host [user@]HOST[:PORT]` or `--fleet inventory.toml`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from edge_tl.cli import options


def ssh_options(
    *,
    accept_new_host_key: bool,
    ssh_config: Path | None,
    identity_file: Path | None,
    known_hosts: Path | None,
    connect_timeout: int,
    retries: int,
) -> Any:
    """The deploy flags' SSH settings: an unknown host key is refused unless --accept-new-host-key.

    A plain function rather than part of the click command, so that mutation testing (which skips
    decorated functions) checks this decision too."""
    from edge_tl.deploy import HostKeyPolicy, SshOptions

    return SshOptions(
        host_key_policy=HostKeyPolicy.ACCEPT_NEW if accept_new_host_key else HostKeyPolicy.STRICT,
        config_file=ssh_config, identity_file=identity_file, known_hosts_file=known_hosts,
        connect_timeout_s=connect_timeout, retries=retries,
    )  # fmt: skip


@click.command()
@options.run_dir(exists=True)
@click.option("--host", default=None, help="[user@]HOST[:PORT] or an alias from ~/.ssh/config.")
@click.option(
    "--fleet",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Inventory TOML of many devices ([[device]] name, host, target, precision...).",
)
@options.target(help="Target profile name or TOML path (for --fleet: the default of devices that name none).")
@options.precision(help="Precision to deploy.")
@click.option(
    "--mode",
    type=click.Choice(["auto", "python", "trtexec"]),
    default="auto",
    show_default=True,
    help="auto: python when TensorRT's Python package imports on the device, trtexec when only trtexec "
    "is there, else python with ONNX Runtime.",
)
@click.option(
    "--name",
    default=None,
    help="Device name: its results folder deploy/<name>/ and its device folder (default: the host).",
)
@click.option(
    "--remote-dir",
    default=None,
    help="Directory on the device (default: edge-tl/<run name>/<name> in the login directory).",
)
@click.option("--remote-python", default="python3", show_default=True, help="Python on the device (python mode).")
@click.option(
    "--accept-new-host-key",
    is_flag=True,
    help="Add an unknown host key to known_hosts on first contact (a changed key is still refused).",
)
@click.option(
    "--ssh-config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="ssh_config file to use instead of ~/.ssh/config (ssh -F).",
)
@click.option(
    "--identity-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="Key (ssh -i)."
)
@click.option(
    "--known-hosts",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="known_hosts file to check against.",
)
@click.option("--connect-timeout", type=click.IntRange(min=1), default=10, show_default=True, help="Seconds.")
@click.option(
    "--retries", type=click.IntRange(min=0), default=2, show_default=True, help="Retries of dropped connections."
)
@click.option("--eval-images", type=click.IntRange(min=1), default=256, show_default=True, help="Evaluation pack size.")
@click.option("--iterations", type=click.IntRange(min=1), default=200, show_default=True, help="Timed iterations.")
@click.option("--warmup", type=click.IntRange(min=0), default=20, show_default=True, help="Warm-up iterations.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True, help="Batch size timed.")
@options.threads(help="ONNX Runtime CPU threads on the device.")
@options.tensorrt(help="TensorRT release to plan for (default: the target's default).")
@click.option(
    "--wheel",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="edge-tl wheel for python mode (default: built from this checkout).",
)
@click.option("--no-device-check", is_flag=True, help="Deploy even when the device does not match the target profile.")
@click.option("--lock-clocks", is_flag=True, help="Jetson: `sudo -n jetson_clocks` while timing, restored afterwards.")
@click.option("--no-tegrastats", is_flag=True, help="Do not sample power/temperature with tegrastats while measuring.")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=1),
    default=1800,
    show_default=True,
    help="Seconds each long device command (build, timing, evaluation) may run; it is then stopped there.",
)
@click.option(
    "--jobs", type=click.IntRange(min=1), default=4, show_default=True, help="Devices deployed at once (--fleet)."
)
@options.json_file()
@options.quiet("the result")
def deploy(run_dir: Path, host: str | None, fleet: Path | None, target: str | None, precision: str | None, mode: str,
           name: str | None, remote_dir: str | None, remote_python: str, accept_new_host_key: bool,
           ssh_config: Path | None, identity_file: Path | None, known_hosts: Path | None, connect_timeout: int,
           retries: int, eval_images: int, iterations: int, warmup: int, batch_size: int, threads: int | None,
           tensorrt: str | None, wheel: Path | None, no_device_check: bool, lock_clocks: bool, no_tegrastats: bool,
           timeout_s: float, jobs: int,
           json_path: Path | None, quiet: bool) -> None:  # fmt: skip
    """Deploy a run to a device (or a fleet) over SSH; build, time and check accuracy there."""
    from edge_tl.deploy import DeployConfig, Mode, deploy_fleet
    from edge_tl.deploy import deploy as deploy_one
    from edge_tl.runs import atomic_write_json

    if (host is None) == (fleet is None):
        raise click.UsageError("give exactly one of --host and --fleet")
    if not quiet:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
    say = (lambda _msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    ssh = ssh_options(accept_new_host_key=accept_new_host_key, ssh_config=ssh_config, identity_file=identity_file,
                      known_hosts=known_hosts, connect_timeout=connect_timeout, retries=retries)  # fmt: skip
    settings = dict(mode=Mode(mode), remote_dir=remote_dir, remote_python=remote_python, ssh=ssh,
                    eval_images=eval_images,
                    iterations=iterations, warmup=warmup, batch_size=batch_size, threads=threads, tensorrt=tensorrt,
                    wheel=wheel, check_device=not no_device_check, lock_clocks=lock_clocks,
                    tegrastats=not no_tegrastats, timeout_s=timeout_s)  # fmt: skip
    if fleet is not None:
        base = {k: v for k, v in settings.items() if k != "wheel"}
        base.update({k: v for k, v in (("target", target), ("precision", precision)) if v is not None})
        report = deploy_fleet(run_dir, fleet, base=base, jobs=jobs, wheel=wheel, say=say)
        click.echo(report.table())
        if json_path is not None:
            atomic_write_json(json_path, report.to_dict())
        report.raise_for_failures()
        return
    if target is None or precision is None:
        raise click.UsageError("--host needs --target and --precision")
    result = deploy_one(run_dir, host, DeployConfig(target=target, precision=precision, **settings), name=name, say=say)  # type: ignore[arg-type]
    delta = (
        f" ({result.delta_top1_pts:+.2f} pts vs the original {result.reference_top1 * 100:.2f}%)"
        if result.delta_top1_pts is not None
        else ""
    )
    click.echo(
        f"{result.label}: {result.mode} mode, {result.backend}; p50 {result.p50_ms:.3f} ms, "
        f"p99 {result.p99_ms:.3f} ms, {result.throughput_ips:.1f} img/s; top-1 {result.top1 * 100:.2f}%{delta}. "
        f"Results in {run_dir / result.result_dir}"
    )
    if json_path is not None:
        atomic_write_json(json_path, result.to_dict())
