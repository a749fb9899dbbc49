"""Fleets: one run deployed to many devices in parallel, one table of results.

Inventory (TOML)::

    [defaults]                    # optional; any deploy setting, overridden per device
    target = "jetson-orin-nano-8gb"
    precision = "fp16"

    [[device]]
    name = "orin-1"               # the folder deploy/<name>/ and the row label
    host = "nvidia@10.0.0.5"      # [user@]HOST[:PORT] or an ~/.ssh/config alias
    precision = "int8"            # any setting of [defaults] may be overridden here

Every device is deployed by its own thread (at most ``jobs`` at a time); a device that
fails is reported with its reason and does not stop the others.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_tl import tomlfile
from edge_tl.deploy.api import (
    DeployConfig,
    DeployResult,
    Mode,
    Reference,
    build_wheel,
    check_device_name,
    compute_reference,
    deploy_host,
    prepare_bundle,
)
from edge_tl.deploy.bundle import Bundle
from edge_tl.deploy.ssh import SshEndpoint
from edge_tl.errors import ConfigError, EdgeTLError, FleetIncomplete
from edge_tl.runs import Run, atomic_write_json, now_iso
from edge_tl.targets import load_target
from edge_tl.tomlfile import Table

# Settings an inventory may give (in [defaults] or per device), with their types.
_SETTINGS: dict[str, type] = {
    "target": str,
    "precision": str,
    "mode": str,
    "remote_dir": str,
    "remote_python": str,
    "tensorrt": str,
    "eval_images": int,
    "warmup": int,
    "iterations": int,
    "batch_size": int,
    "threads": int,
    "check_device": bool,
    "lock_clocks": bool,
    "tegrastats": bool,
}
FLEET_FILE = "fleet.json"


@dataclass(frozen=True)
class Device:
    name: str
    host: str
    settings: dict[str, Any]


def _settings(table: Table) -> dict[str, Any]:
    out = {}
    for key, kind in _SETTINGS.items():
        if key == "mode" and key in table and table.data[key] not in {m.value for m in Mode}:
            choices = ", ".join(m.value for m in Mode)
            raise table.fail(key, f"mode = {table.data[key]!r} is not one of {choices}")
        value = table.get(key, kind, None)
        if value is not None:
            out[key] = Mode(value) if key == "mode" else value
    return out


def load_inventory(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[Device]]:
    """([defaults], devices) of an inventory TOML, every field checked (:mod:`edge_tl.tomlfile`)."""
    path = Path(path)
    source = str(path)
    data = tomlfile.read(path, what="inventory")
    if not isinstance(data.get("defaults", {}), dict):
        raise ConfigError(f"{source}: defaults must be a table ([defaults])")
    entries = data.get("device", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"{source}: each device is a [[device]] table (two brackets), not [device]")
    top = Table(data, source=source, known=("defaults", "device"))
    defaults = _settings(top.table("defaults", _SETTINGS, required=False))
    devices: list[Device] = []
    for i, table in enumerate(top.tables("device", ("name", "host", *_SETTINGS), [])):
        entry = table.data
        where = f"{path} [[device]] #{i + 1}"
        if not isinstance(entry.get("host"), str):
            raise ConfigError(f'{where}: needs host = "[user@]HOST[:PORT]"')
        SshEndpoint.parse(entry["host"])
        if "name" in entry and not isinstance(entry["name"], str):
            raise ConfigError(f"{where}: name = {entry['name']!r} should be a string")
        name = check_device_name(entry.get("name") or SshEndpoint.parse(entry["host"]).label, where=f"{where}: name")
        if name in {d.name for d in devices}:
            raise ConfigError(f"{where}: name {name!r} is used twice; names label deploy/<name>/ and must be unique")
        devices.append(Device(name, entry["host"], _settings(table)))
    if not devices:
        raise ConfigError(f"{source} lists no devices: add [[device]] tables with name and host")
    return defaults, devices


@dataclass(frozen=True)
class FleetReport:
    results: tuple[DeployResult, ...]

    @property
    def failures(self) -> list[DeployResult]:
        return [r for r in self.results if not r.ok]

    def to_dict(self) -> dict[str, Any]:
        return {"created": now_iso(), "devices": [r.to_dict() for r in self.results]}

    def table(self) -> str:
        def num(value: float | None, fmt: str) -> str:
            return "-" if value is None else format(value, fmt)

        head = (
            "device",
            "target",
            "JetPack",
            "TensorRT",
            "prec",
            "p50 ms",
            "p99 ms",
            "img/s",
            "top-1",
            "Δ pts",
            "status",
        )
        rows = [head]
        for r in self.results:
            rows.append(
                (
                    r.label,
                    r.target,
                    r.jetpack or "-",
                    r.tensorrt or "-",
                    r.precision,
                    num(r.p50_ms, ".3f"),
                    num(r.p99_ms, ".3f"),
                    num(r.throughput_ips, ".1f"),
                    num(None if r.top1 is None else r.top1 * 100, ".2f"),
                    num(r.delta_top1_pts, "+.2f"),
                    r.status,
                )
            )
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
        lines += [f"{r.label}: {r.reason}" for r in self.failures]
        return "\n".join(lines)

    def raise_for_failures(self) -> None:
        if self.failures:
            names = ", ".join(r.label for r in self.failures)
            raise FleetIncomplete(
                f"{len(self.failures)} of {len(self.results)} device(s) failed (see the table): {names}"
            )


def deploy_fleet(
    run: Run | str | os.PathLike[str],
    inventory: str | os.PathLike[str],
    *,
    base: dict[str, Any],
    jobs: int = 4,
    wheel: Path | None = None,
    say: Callable[[str], None] = lambda _msg: None,
) -> FleetReport:
    """Deploy ``run`` to every device of ``inventory``. ``base`` holds settings under the inventory's own.

    Returns one result per device (failed ones with their reason) and writes ``deploy/fleet.json``.
    """
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    run = run if isinstance(run, Run) else Run.open(run)
    defaults, devices = load_inventory(inventory)
    plans: list[tuple[Device, DeployConfig | None, str]] = []
    for device in devices:
        merged = {**base, **defaults, **device.settings}
        try:
            if "target" not in merged or "precision" not in merged:
                raise ConfigError(
                    f"device {device.name!r} has no target/precision: give them per device, in [defaults] "
                    "or with --target/--precision"
                )
            plans.append((device, DeployConfig(**merged), ""))
        except EdgeTLError as exc:
            plans.append((device, None, str(exc)))

    # Shared work first: one bundle and one reference per target+precision, one wheel.
    bundles: dict[tuple[str, str, str | None, int], tuple[Bundle, Reference] | str] = {}
    for _, config, _ in plans:
        if config is None:
            continue
        key = (config.target, config.precision, config.tensorrt, config.eval_images)
        if key in bundles:
            continue
        try:
            target = load_target(config.target)
            bundle = prepare_bundle(
                run,
                target,
                target.check_precision(config.precision),
                eval_images=config.eval_images,
                tensorrt=config.tensorrt,
            )
            bundles[key] = (bundle, compute_reference(run, bundle))
        except EdgeTLError as exc:
            bundles[key] = f"bundle for {config.target}/{config.precision}: {exc}"
    needs_wheel = any(c is not None and c.mode is not Mode.TRTEXEC for _, c, _ in plans)
    with tempfile.TemporaryDirectory(prefix="etl-wheel-") as wheel_dir:
        the_wheel = wheel if wheel is not None else (build_wheel(wheel_dir) if needs_wheel else None)

        def one(item: tuple[Device, DeployConfig | None, str]) -> DeployResult:
            device, config, problem = item
            target = config.target if config else str(device.settings.get("target", "?"))
            precision = config.precision if config else str(device.settings.get("precision", "?"))
            if config is None:
                return DeployResult(device.host, device.name, target, precision, "failed", problem)
            prepared = bundles[(config.target, config.precision, config.tensorrt, config.eval_images)]
            if isinstance(prepared, str):
                return DeployResult(device.host, device.name, target, precision, "failed", prepared)
            try:
                result = deploy_host(
                    run,
                    device.host,
                    config,
                    bundle=prepared[0],
                    reference=prepared[1],
                    wheel=the_wheel,
                    name=device.name,
                    say=lambda msg: say(f"[{device.name}] {msg}"),
                    replan_for_device=False,  # the bundle is shared with the fleet's other devices
                )
            except Exception as exc:  # noqa: BLE001 - one device's failure, whatever it is, must not stop the others
                reason = str(exc) if isinstance(exc, EdgeTLError) else f"{type(exc).__name__}: {exc}"
                say(f"[{device.name}] failed: {reason.splitlines()[0]}")
                return DeployResult(device.host, device.name, target, precision, "failed", reason)
            say(f"[{device.name}] done")
            return result

        with ThreadPoolExecutor(max_workers=min(jobs, len(plans))) as pool:
            results = tuple(pool.map(one, plans))
    report = FleetReport(results)
    atomic_write_json(run.path("deploy", FLEET_FILE), report.to_dict())
    return report
