"""Where trtexec is installed: on PATH, else where JetPack and NVIDIA's packages put it."""

from __future__ import annotations

import os
import shutil

from edge_tl.errors import ConfigError


def find_trtexec() -> str:
    found = shutil.which("trtexec") or next(
        (p for p in ("/usr/src/tensorrt/bin/trtexec", "/usr/local/tensorrt/bin/trtexec") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise ConfigError("trtexec not found on PATH or in /usr/src/tensorrt/bin: install TensorRT (JetPack ships it)")
    return found
