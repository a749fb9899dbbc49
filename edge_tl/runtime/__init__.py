"""Runners: one interface to run a model on a batch, whatever the backend (light to import)."""

from edge_tl.runtime.base import Device, InputSpec, Runner, RunnerOptions
from edge_tl.runtime.registry import (
    Backend,
    ModelSource,
    get_backend,
    list_backends,
    open_runner,
    register_backend,
    resolve_source,
)

__all__ = [
    "Backend",
    "Device",
    "InputSpec",
    "ModelSource",
    "Runner",
    "RunnerOptions",
    "get_backend",
    "list_backends",
    "open_runner",
    "register_backend",
    "resolve_source",
]
