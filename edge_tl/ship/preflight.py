"""Checks `edge-tl ship` makes before anything expensive: each failure is one line, RUN untouched.

Nothing here imports torch: a wrong precision, an unreachable host or an empty class folder
is refused in seconds, not after a fine-tune.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_tl.errors import ConfigError, DataError, RemoteError, RunError
from edge_tl.targets import Precision, Target, load_target

#: Free space a run needs besides its images' decode cache: checkpoints, ONNX models,
#: bundles and results of a compact backbone take well under this.
MIN_FREE_BYTES = 1 << 30


@dataclass(frozen=True)
class DataSummary:
    classes: tuple[str, ...]
    num_train: int
    num_val: int
    skipped: tuple[str, ...]  # "path: reason" of files that do not decode (left out, as finetune does)
    bytes: int


def choose_precision(target: Target, precision: str | None) -> Precision:
    """``precision`` if the target runs it fast, else a one-line refusal; default: INT8, else FP16, else FP32."""
    if precision is not None:
        return target.check_precision(precision)
    for candidate in (Precision.INT8, Precision.FP16, Precision.FP32):
        if candidate in target.fast_precisions:
            return candidate
    raise ConfigError(
        f"target {target.name!r} lists no precision in fast_precisions ({target.source}); fix the profile"
    )


def check_target(target: str, precision: str | None) -> tuple[Target, Precision]:
    loaded = load_target(target)
    return loaded, choose_precision(loaded, precision)


def check_data(data: str, *, val_data: str | None, val_split: float, seed: int) -> DataSummary:
    """The checks fine-tuning makes on its images (folder layout, two classes, none empty, images decode)."""
    from edge_tl.data import load_dataset

    split = load_dataset(Path(data), val_source=val_data, val_split=val_split, seed=seed)
    size = sum(Path(s.path).stat().st_size for s in (*split.train, *split.val) if s.path)
    return DataSummary(
        classes=tuple(split.classes), num_train=len(split.train), num_val=len(split.val),
        skipped=tuple(f"{s.path}: {s.reason}" for s in split.skipped), bytes=size,
    )  # fmt: skip


def checked_before(out: Path, fingerprints: dict[str, str]) -> bool:
    """Whether the run's finished fine-tune read exactly these folders (unchanged since: no need to decode
    them again)."""
    from edge_tl.runs import Run

    if not Run.exists(out):
        return False
    record = Run.open(out).stage_record("finetune") or {}
    files = (record.get("inputs") or {}).get("files") or {}
    return record.get("status") == "done" and all(files.get(k) == v for k, v in fingerprints.items())


def check_labelled(data: str) -> None:
    """A folder given with an imported model: its layout and classes (images are read by import)."""
    from edge_tl.data.dataset import _scan_folder

    _scan_folder(Path(data).expanduser().resolve(), role="data")


def check_host(
    host: str,
    *,
    ssh_config: Path | None,
    identity_file: Path | None,
    known_hosts: Path | None,
    accept_new_host_key: bool,
    connect_timeout: int,
) -> None:
    """One `true` over ssh as deploy will connect: BatchMode, the host key checked, no retries."""
    from edge_tl.deploy.ssh import HostKeyPolicy, SshOptions, SshTransport

    options = SshOptions(
        host_key_policy=HostKeyPolicy.ACCEPT_NEW if accept_new_host_key else HostKeyPolicy.STRICT,
        config_file=ssh_config, identity_file=identity_file, known_hosts_file=known_hosts,
        connect_timeout_s=min(connect_timeout, 5), retries=0, multiplex=False,
    )  # fmt: skip
    SshTransport(host, options).run(["true"], timeout=15, what="the pre-flight check")


def fleet_hosts(fleet: Path, *, target: str, precision: Precision) -> list[tuple[str, str]]:
    """The inventory's (name, host), once each device's own target (or ``target``) is known to run its precision."""
    from edge_tl.deploy.fleet import load_inventory

    defaults, devices = load_inventory(fleet)
    for device in devices:
        settings = {**defaults, **device.settings}
        try:
            load_target(settings.get("target", target)).check_precision(settings.get("precision", precision))
        except ConfigError as exc:
            raise ConfigError(f"{fleet} device {device.name!r}: {exc}") from exc
    return [(d.name, d.host) for d in devices]


def down_devices(devices: list[tuple[str, str]], check: Callable[[str], None]) -> list[tuple[str, str]]:
    """(name, reason) of each fleet device ``check(host)`` cannot reach; every device is tried."""
    down = []
    for name, host in devices:
        try:
            check(host)
        except RemoteError as exc:
            down.append((name, " ".join(str(exc).split())))
    return down


def fleet_refusal(fleet: Path, down: list[tuple[str, str]], *, total: int, required: bool) -> RemoteError | None:
    """The pre-flight's refusal of a fleet with devices down: all of them down, or all required."""
    if not down or (len(down) < total and not required):
        return None
    listed = "; ".join(f"{name}: {reason}" for name, reason in down)
    why = "every device is down" if len(down) == total else "--require-all-devices, and"
    return RemoteError(f"{fleet}: {why} {len(down)} of {total} device(s) cannot be reached: {listed}")


def check_run_dir(out: Path) -> None:
    """RUN is new, empty, or a run ship made: never write into a folder of someone else's files."""
    if not out.exists():
        return
    if not out.is_dir():
        raise RunError(f"--out {str(out)!r} is a file; give a directory for the run")
    from edge_tl.runs import MANIFEST_NAME, PRE_RUN_NAMES
    from edge_tl.ship.config import RUN_CONFIG_NAME

    others = any(p.name not in PRE_RUN_NAMES for p in out.iterdir())
    if others and not (out / MANIFEST_NAME).is_file() and not (out / RUN_CONFIG_NAME).is_file():
        raise RunError(f"--out {str(out)!r} holds files that are not an edge-tl run; choose a new or empty folder")


def check_disk(out: Path, *, data_bytes: int) -> None:
    """Room for the run (and for the decoded images, which fine-tuning may cache on disk)."""
    probe = out
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = MIN_FREE_BYTES + 2 * data_bytes
    if free < need:
        raise DataError(
            f"only {free / 2**30:.1f} GiB free under {str(probe)!r}; the run needs about {need / 2**30:.1f} GiB. "
            "Free some space or choose another --out"
        )
