"""The environment fingerprint recorded with every measurement."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from typing import Any

_LIBRARIES = ("numpy", "torch", "torchvision", "timm", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "edge-tl")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _command(*argv: str) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _gpus() -> list[dict[str, str]]:
    out = _command("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader")
    if out:
        gpus = []
        for line in out.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) >= 2:
                gpus.append({"name": parts[0], "driver": parts[1], "memory": parts[2] if len(parts) > 2 else ""})
        return gpus
    # A Jetson has no nvidia-smi; ask torch only when something already imported it.
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return [{"name": torch.cuda.get_device_name(), "driver": "", "cuda": str(torch.version.cuda)}]
    return []


def library_versions() -> dict[str, str]:
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def fingerprint(*, threads: int | None = None) -> dict[str, Any]:
    """CPU, cores, GPU and driver, library versions and, on a Jetson, the power mode."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "threads_requested": threads,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpus": _gpus(),
        "libraries": library_versions(),
    }
    if os.path.exists("/etc/nv_tegra_release"):
        with open("/etc/nv_tegra_release", encoding="utf-8", errors="replace") as fh:
            info["jetson_release"] = fh.readline().strip()
        info["jetson_power_mode"] = _command("nvpmodel", "-q")
    return info
