"""`import edge_tl` and every command's --help must work with only the core installed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from edge_tl.cli.main import COMMANDS

# Modules whose job is to drive a heavy library and that import it at module level.
HEAVY_MODULES: set[str] = set()

BLOCKED = ("torch", "torchvision", "timm", "onnx", "onnxruntime", "onnxslim", "tensorrt", "torch_tensorrt", "sklearn")

_BLOCKER = textwrap.dedent(
    f"""
    import sys, importlib.abc
    BLOCKED = {BLOCKED!r}
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in BLOCKED:
                raise ImportError(f'blocked for the light-import test: {{name}}')
            return None
    sys.meta_path.insert(0, Blocker())
    """
)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _BLOCKER + textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_every_light_module_imports_without_heavy_libraries() -> None:
    code = f"""
    import importlib, json, pkgutil, edge_tl
    heavy = {sorted(HEAVY_MODULES)!r}
    failed = {{}}
    names = []
    for info in pkgutil.walk_packages(edge_tl.__path__, 'edge_tl.'):
        if info.name in heavy or info.name == 'edge_tl.__main__':
            continue
        names.append(info.name)
        try:
            importlib.import_module(info.name)
        except Exception as exc:
            failed[info.name] = repr(exc)
    print(json.dumps({{'failed': failed, 'count': len(names)}}))
    """
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["failed"] == {}
    assert result["count"] >= 10


def _all_command_paths() -> list[tuple[str, ...]]:
    import click

    from edge_tl.cli.main import cli

    paths: list[tuple[str, ...]] = [()]
    ctx = click.Context(cli)
    for name in COMMANDS:
        paths.append((name,))
        command = cli.get_command(ctx, name)
        if isinstance(command, click.Group):
            paths.extend((name, sub) for sub in command.list_commands(ctx))
    return paths


@pytest.mark.parametrize("path", _all_command_paths(), ids=lambda p: " ".join(p) or "edge-tl")
def test_help_of_every_command_without_heavy_libraries(path: tuple[str, ...]) -> None:
    argv = [*path, "--help"]
    code = f"""
    import sys
    from edge_tl.cli.main import main
    sys.argv = ['edge-tl'] + {argv!r}
    main()
    """
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout


def test_missing_dependency_message_names_the_install_command() -> None:
    proc = _run(
        """
        from edge_tl._lazy import lazy_import
        from edge_tl.errors import MissingDependency
        try:
            lazy_import('onnxruntime', purpose='benchmarking')
        except MissingDependency as exc:
            print(exc)
        """
    )
    assert "pip install 'edge-tl[onnx]'" in proc.stdout
    assert "benchmarking" in proc.stdout


def test_report_runs_without_torch(tmp_path) -> None:
    """`edge-tl report` reads the run directory only: it works where torch cannot be imported."""
    pytest.importorskip("jinja2")
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(
        json.dumps(
            {
                "schema_version": 1,
                "backbone": {"name": "efficientnet_lite0"},
                "classes": ["a", "b"],
                "artifacts": {},
            }
        )
    )
    (run / "metrics.jsonl").write_text(
        json.dumps(
            {"epoch": 1, "phase": "head", "train_loss": 1.0, "val_loss": 0.9, "train_top1": 0.5, "val_top1": 0.6}
        )
        + "\n"
    )
    proc = _run(
        f"""
        import sys
        from edge_tl.cli.main import main
        sys.argv = ['edge-tl', 'report', {str(run)!r}]
        try:
            main()
        finally:
            print('torch imported' if 'torch' in sys.modules else 'no torch')
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "no torch" in proc.stdout and (run / "report" / "index.html").is_file()
    assert "data:image/png;base64," in (run / "report" / "index.html").read_text()  # the training curves
