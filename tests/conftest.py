"""Shared test configuration.

Tests marked ``gpu``, ``tensorrt`` or ``jetson`` are skipped with a reason where
the thing they need is missing, so the same suite runs here and on a device.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest


def _has_cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def _has_tensorrt() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def _is_jetson() -> bool:
    return os.path.exists("/etc/nv_tegra_release")


_REQUIREMENTS = {
    "gpu": (_has_cuda, "needs a CUDA GPU"),
    "tensorrt": (_has_tensorrt, "needs TensorRT's Python package (import tensorrt)"),
    "jetson": (_is_jetson, "needs a Jetson device (/etc/nv_tegra_release)"),
    "ssh": (lambda: shutil.which("sshd") is not None or os.path.exists("/usr/sbin/sshd"), "needs OpenSSH's sshd (apt install openssh-server)"),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cache: dict[str, bool] = {}
    for item in items:
        for marker, (check, reason) in _REQUIREMENTS.items():
            if marker in item.keywords:
                if marker not in cache:
                    cache[marker] = check()
                if not cache[marker]:
                    item.add_marker(pytest.mark.skip(reason=reason))
