"""Typed errors. Every message says what was wrong, the value seen, and what to do."""

from __future__ import annotations


class EdgeTLError(Exception):
    """Base class of every error edge-tl raises on purpose for a user to read."""


class MissingDependency(EdgeTLError):
    """An optional library is needed for this step and is not installed."""


class ConfigError(EdgeTLError):
    """An option, a profile or a recipe is invalid."""


class DataError(EdgeTLError):
    """The images or labels given cannot be used."""


class RunError(EdgeTLError):
    """A run directory is missing, incomplete, or lacks the artifact a stage needs."""


class ToleranceError(EdgeTLError):
    """A measured quantity (parity, accuracy drop, agreement) is outside its allowed bound."""


class RemoteError(EdgeTLError):
    """A remote device could not be reached or did not do what was asked."""


class DiskFullError(EdgeTLError):
    """A local disk has no space left for what a stage writes (nothing was half-written)."""


class RunBusyError(RunError):
    """Another process is already writing this run (one ship and one finetune per run at a time)."""


class FleetIncomplete(RemoteError):
    """Some devices of a fleet were not deployed (the others were): each is in the table with its reason."""
