"""Distributed data-parallel plumbing: the process context, collectives, and the launcher.

A fine-tune is always run by :func:`edge_tl.train.loop.finetune`; this module only tells it
who it is (``DistContext``) and starts several copies of it through PyTorch's own elastic
launcher (``torch.distributed.run``, the module behind ``torchrun``). A process started by
``torchrun`` (ours or the user's) finds ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` in its
environment and joins the process group: gloo on the CPU, NCCL on CUDA.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_tl._lazy import lazy_import
from edge_tl.errors import ConfigError, EdgeTLError

if TYPE_CHECKING:
    from edge_tl.train.config import FinetuneConfig

#: The module every worker runs (also usable under a user's own ``torchrun -m``).
ENTRY_MODULE = "edge_tl.train.ddp_entry"

#: How long a collective may wait for a peer before the job fails instead of hanging.
DEFAULT_TIMEOUT_S = 600


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job. A plain run is rank 0 of a world of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        """In a process group (any launched job, also a world of 1): DDP, sampler and collectives on."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def under_launcher() -> bool:
    """True inside a process started by torchrun (ours or the user's)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env(device_type: str, *, timeout_s: int = DEFAULT_TIMEOUT_S) -> DistContext:
    """Join the process group torchrun prepared, or return the single-process context."""
    if not under_launcher():
        return DistContext()
    world_size = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ["LOCAL_RANK"])
    # A launched world of 1 still joins a process group: it runs the very path a multi-GPU
    # job runs (NCCL, DDP wrapper, collectives), so a one-GPU launch checks that path.
    dist = lazy_import("torch.distributed", purpose="distributed fine-tuning")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if not dist.is_available() or (backend == "nccl" and not dist.is_nccl_available()):
        raise ConfigError(
            f"this PyTorch build has no {backend} backend for distributed training; use --device cpu (gloo)"
        )
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend, "timeout": _dt.timedelta(seconds=timeout_s)}
        if backend == "nccl":
            torch = lazy_import("torch")
            torch.cuda.set_device(local_rank)
            kwargs["device_id"] = torch.device("cuda", local_rank)
        dist.init_process_group(**kwargs)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed:
        dist = lazy_import("torch.distributed")
        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        lazy_import("torch.distributed").barrier()


def all_reduce_sum(tensor: Any, ctx: DistContext) -> Any:
    """Sum ``tensor`` over all processes in place (identity in a single process)."""
    if ctx.distributed:
        dist = lazy_import("torch.distributed")
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


# --------------------------------------------------------------------------- the launcher


@dataclass(frozen=True)
class LaunchConfig:
    """How torchrun starts the workers. Without an endpoint or a master address the job
    is single-node (``--standalone``: a local rendezvous on a free port)."""

    nproc_per_node: int
    nnodes: str = "1"
    node_rank: int = 0
    rdzv_endpoint: str | None = None
    rdzv_id: str = "edge-tl"
    master_addr: str | None = None
    master_port: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.nproc_per_node, int) or self.nproc_per_node < 1:
            raise ConfigError(f"--nproc-per-node must be a positive integer, got {self.nproc_per_node!r}")
        if self.rdzv_endpoint and self.master_addr:
            raise ConfigError("give either --rdzv-endpoint or --master-addr/--master-port, not both")

    @property
    def single_node(self) -> bool:
        return str(self.nnodes) == "1" and not self.rdzv_endpoint and not self.master_addr

    def torchrun_args(self) -> list[str]:
        args = ["--nproc-per-node", str(self.nproc_per_node), "--max-restarts", "0"]
        if self.single_node:
            return ["--standalone", *args]
        args += ["--nnodes", str(self.nnodes), "--node-rank", str(self.node_rank)]
        if self.rdzv_endpoint:
            args += ["--rdzv-backend", "c10d", "--rdzv-endpoint", self.rdzv_endpoint, "--rdzv-id", self.rdzv_id]
        else:
            args += ["--master-addr", self.master_addr or "127.0.0.1", "--master-port", str(self.master_port or 29500)]
        return args


def launch(config: "FinetuneConfig", launch_config: LaunchConfig) -> Path:
    """Run ``config`` on ``nproc_per_node`` processes (per node) through torchrun; returns the run dir.

    The config travels as a JSON file in the output directory (every node must see the same
    path, as it must for the checkpoints). A failed or crashed worker makes torchrun stop
    the others; that becomes one :class:`EdgeTLError` naming the rank and its exit code.
    """
    from edge_tl.runs import atomic_write_json, run_writer

    run_mod = lazy_import("torch.distributed.run", purpose="distributed fine-tuning")
    errors = lazy_import("torch.distributed.elastic.multiprocessing.errors")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    config_file = out / f".launch-config.node{launch_config.node_rank}.json"
    argv = [*launch_config.torchrun_args(), "-m", ENTRY_MODULE, "--config", str(config_file)]
    # The workers run under torchrun and leave the run's writer lock to this process.
    with run_writer(out, "finetune"):
        atomic_write_json(config_file, config.to_dict())
        try:
            run_mod.main(argv)
        except errors.ChildFailedError as exc:
            raise EdgeTLError(f"distributed fine-tuning failed: {_describe_failures(exc)}") from None
        finally:
            config_file.unlink(missing_ok=True)
    return out


def _describe_failures(exc: Any) -> str:
    """Which rank failed and how. torchrun stops the surviving workers with SIGTERM, so
    ranks that ended by SIGTERM while another failed otherwise are reported as stopped."""
    import signal

    def reason(code: int) -> str:
        if code >= 0:
            return f"exit code {code}"
        try:
            name = f", {signal.Signals(-code).name}"
        except ValueError:
            name = ""
        hint = " (killed from outside: often the out-of-memory killer)" if -code == signal.SIGKILL else ""
        return f"signal {-code}{name}{hint}"

    failures = sorted(getattr(exc, "failures", {}).items())
    if not failures:
        return f"{exc}. The worker's own error is printed above."
    causes = [(r, f) for r, f in failures if f.exitcode != -signal.SIGTERM] or failures
    stopped = [r for r, _ in failures if all(r != c for c, _ in causes)]
    detail = "; ".join(f"rank {rank} stopped with {reason(f.exitcode)}" for rank, f in causes)
    others = f" torchrun then stopped rank(s) {', '.join(map(str, stopped))}." if stopped else ""
    return (
        f"{detail}.{others} The worker's own error, if it printed one, is above; "
        "the last checkpoint is kept (--resume)."
    )
