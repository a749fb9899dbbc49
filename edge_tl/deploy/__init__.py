"""Deployment to devices over SSH: bundles, the SSH transport, resumable copy, probes, fleets.

Light to import: nothing heavy is imported until a deploy runs.
"""

from edge_tl.deploy.api import (
    DeployConfig,
    DeployResult,
    Mode,
    build_wheel,
    deploy,
    deploy_host,
)
from edge_tl.deploy.bundle import Bundle, make_bundle
from edge_tl.deploy.evalpack import EvalPack
from edge_tl.deploy.fleet import FleetReport, deploy_fleet, load_inventory
from edge_tl.deploy.probe import DeviceProbe, probe_device
from edge_tl.deploy.ssh import HostKeyPolicy, SshEndpoint, SshOptions, SshTransport
from edge_tl.deploy.sync import SyncReport, sync_bundle

__all__ = [
    "Bundle",
    "DeployConfig",
    "DeployResult",
    "DeviceProbe",
    "EvalPack",
    "FleetReport",
    "HostKeyPolicy",
    "Mode",
    "SshEndpoint",
    "SshOptions",
    "SshTransport",
    "SyncReport",
    "build_wheel",
    "deploy",
    "deploy_fleet",
    "deploy_host",
    "load_inventory",
    "make_bundle",
    "probe_device",
    "sync_bundle",
]
