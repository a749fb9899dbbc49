"""Deployment to devices over SSH: bundles, the SSH transport, resumable copy, probes, fleets.

Light to import: each name below is imported from its module on first use, so that reading
a target profile (which resolves its device runtime, :mod:`edge_tl.deploy.runtimes`) does not
load the deploy machinery.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Bundle": "bundle",
    "DeployConfig": "config",
    "DeployResult": "api",
    "DeviceProbe": "probe",
    "EvalPack": "evalpack",
    "FleetReport": "fleet",
    "HostKeyPolicy": "ssh",
    "Mode": "config",
    "SshEndpoint": "ssh",
    "SshOptions": "ssh",
    "SshTransport": "ssh",
    "SyncReport": "sync",
    "build_wheel": "wheel",
    "deploy": "api",
    "deploy_fleet": "fleet",
    "deploy_host": "api",
    "load_inventory": "fleet",
    "make_bundle": "bundle",
    "probe_device": "probe",
    "sync_bundle": "sync",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
