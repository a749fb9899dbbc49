"""What a deploy is asked to do, and the names the workstation and the device agree on.

The lowest module of :mod:`edge_tl.deploy` besides the transport: the deploy steps
(:mod:`edge_tl.deploy.api`), the device modes (:mod:`edge_tl.deploy.modes`) and the wheel
staging (:mod:`edge_tl.deploy.wheel`) all read it, and it reads none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from edge_tl.deploy.evalpack import DEFAULT_IMAGES
from edge_tl.deploy.ssh import SshOptions
from edge_tl.deploy.sync import check_remote_dir
from edge_tl.errors import ConfigError

WHEEL_DIR = "tools"  # the bundle folder that carries the edge-tl wheel python mode installs
LOGITS = "logits.npy"  # the device's logits on the evaluation pack, as a results file


class Mode(str, Enum):
    AUTO = "auto"
    PYTHON = "python"
    TRTEXEC = "trtexec"


@dataclass(frozen=True)
class DeployConfig:
    """What to deploy and how to measure it (shared by every device of a fleet unless overridden)."""

    target: str
    precision: str
    mode: Mode = Mode.AUTO
    remote_dir: str | None = None  # default: edge-tl/<run name>/<device name>, relative to the login directory
    remote_python: str = "python3"
    ssh: SshOptions = SshOptions()
    eval_images: int = DEFAULT_IMAGES
    warmup: int = 20
    iterations: int = 200
    batch_size: int = 1
    threads: int | None = None
    tensorrt: str | None = None  # a TensorRT release the target lists (default: the target's default)
    wheel: Path | None = None  # python mode: an edge-tl wheel to install (default: built from this checkout)
    check_device: bool = True  # refuse a device that does not match the target profile
    lock_clocks: bool = False  # run `sudo -n jetson_clocks` before timing and restore afterwards
    tegrastats: bool = True  # sample power and temperature with tegrastats while measuring, where present
    timeout_s: float = 1800  # each long device command (build, timing, evaluation) is stopped after this

    def __post_init__(self) -> None:
        if not isinstance(self.mode, Mode):
            try:
                object.__setattr__(self, "mode", Mode(self.mode))
            except ValueError:
                raise ConfigError(f"mode {self.mode!r} is not one of {', '.join(m.value for m in Mode)}") from None
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout must be > 0 s, got {self.timeout_s}")
        if self.iterations < 1 or self.warmup < 0 or self.batch_size < 1 or self.eval_images < 1:
            raise ConfigError(
                f"iterations, batch size and evaluation images must be >= 1 and warm-up >= 0; got {self.iterations}, "
                f"{self.batch_size}, {self.eval_images}, {self.warmup}"
            )
        if self.remote_dir is not None:
            check_remote_dir(self.remote_dir)
