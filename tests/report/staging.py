"""Running `edge-tl` stages in the test process, as a user would type them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

# The deploy tests' loopback sshd lab and stand-in tools, loaded from their conftest by path.
_spec = importlib.util.spec_from_file_location("deploy_fixtures", Path(__file__).parents[1] / "deploy" / "conftest.py")
deploy_fixtures = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules["deploy_fixtures"] = deploy_fixtures  # its dataclasses look their module up there
_spec.loader.exec_module(deploy_fixtures)  # type: ignore[union-attr]


def cli(*args: object) -> None:
    """Run ``edge-tl ARGS`` in this process (so the run records the command line) and require success."""
    from edge_tl.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    assert exit_info.value.code == 0, f"edge-tl {' '.join(map(str, args))} exited {exit_info.value.code}"
