"""The top-level Python API: every stage by name from `import edge_tl`, imported on first use."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
import textwrap

import pytest

import edge_tl
from edge_tl.cli.main import COMMANDS

#: Libraries a stage imports only when it runs: naming a stage's function must not import them.
HEAVY = ("torch", "torchvision", "timm", "onnx", "onnxruntime", "onnxslim", "tensorrt", "torch_tensorrt", "sklearn")

#: Each command's function at the top level. `ship` chains the commands (its request is the
#: command's own options), so from Python one calls the stages.
COMMAND_FUNCTIONS = {
    "quickstart": "run_quickstart",
    "backbones": "list_backbones",
    "finetune": "finetune",
    "import": "import_model",
    "evaluate": "evaluate_run",
    "export": "export_run",
    "quantize": "quantize_run",
    "targets": "list_targets",
    "compile": "compile_run",
    "bench": "bench_target",
    "verify": "verify_run",
    "bundle": "make_bundle",
    "deploy": "deploy_run",
    "report": "write_report",
}


def _python(code: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_naming_stage_functions_imports_no_heavy_library() -> None:
    result = _python(
        f"""
        import json, sys
        import edge_tl
        bare = sorted(m for m in ('numpy', 'click', *{HEAVY!r}) if m in sys.modules)
        submodules = sorted(m for m in sys.modules if m.startswith('edge_tl.'))
        print(edge_tl.finetune, edge_tl.export_run)
        print(json.dumps({{
            'bare': bare,
            'submodules': submodules,
            'heavy': sorted(m for m in {HEAVY!r} if m in sys.modules),
            'names': [edge_tl.finetune.__qualname__, edge_tl.export_run.__qualname__],
        }}))
        """
    )
    assert result["bare"] == []  # `import edge_tl` alone: not even numpy or click
    assert result["submodules"] == []  # nor any stage: each is imported when first named
    assert result["heavy"] == []
    assert result["names"] == ["finetune", "export_run"]


def test_every_public_name_resolves_to_the_object_users_import_today() -> None:
    """In a fresh process: a name reached through the package is the very object of its module."""
    result = _python(
        """
        import importlib, json
        import edge_tl
        wrong = {}
        for name in edge_tl.__all__:
            if name == '__version__':
                continue
            entry = edge_tl._API[name]
            if getattr(edge_tl, name) is not getattr(importlib.import_module(entry.module), entry.attribute):
                wrong[name] = entry.module
        # `from edge_tl import <subpackage>` asks the package first: its miss must be an AttributeError.
        from edge_tl import significance
        print(json.dumps({'wrong': wrong, 'dir': dir(edge_tl), 'all': edge_tl.__all__,
                          'subpackage': significance.__name__}))
        """
    )
    assert result["wrong"] == {}
    assert set(result["all"]) <= set(result["dir"])
    assert len(result["all"]) == len(set(result["all"])) > 25
    assert result["subpackage"] == "edge_tl.significance"


def test_every_command_has_its_function_at_the_top_level() -> None:
    assert set(COMMANDS) == {*COMMAND_FUNCTIONS, "ship"}
    for name in COMMAND_FUNCTIONS.values():
        assert name in edge_tl.__all__, name
        assert callable(getattr(edge_tl, name)), name


def test_dir_shows_the_api_without_the_module_helpers() -> None:
    listed = dir(edge_tl)
    assert {"finetune", "FinetuneConfig", "export_run", "ExportConfig", "quantize_run", "QuantizeConfig"} <= set(listed)
    assert not {"importlib", "ModuleType", "NamedTuple", "Any", "_Entry", "_unknown"} & set(listed)


def test_unknown_name_raises_attribute_error_naming_close_matches() -> None:
    with pytest.raises(AttributeError, match=r"no attribute 'expor_run'; did you mean export_run") as info:
        _ = edge_tl.expor_run
    assert info.value.name == "expor_run"
    with pytest.raises(AttributeError, match=r"did you mean .*ExportConfig"):
        _ = edge_tl.exportconfig
    # `deploy` is the subpackage; before it is imported the API's deploy names are offered.
    message = edge_tl._unknown("deploy")
    assert "deploy_run" in message and "DeployConfig" in message
    assert not hasattr(edge_tl, "no_such_thing")


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)]


@pytest.mark.parametrize("name", [n for n in edge_tl.__all__ if n != "__version__"])
def test_example_uses_its_name_with_real_parameters(name: str) -> None:
    """Each name's example parses, uses the name, and passes only parameters its callee has."""
    example = edge_tl._API[name].example
    tree = ast.parse(example)
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert name in used, example
    for call in _calls(tree):
        callee = getattr(edge_tl, call.func.id, None)
        if callee is None:
            continue  # Path, print...
        parameters = inspect.signature(callee).parameters
        for keyword in call.keywords:
            assert keyword.arg in parameters, f"{name}: {call.func.id}() has no parameter {keyword.arg!r}"
        positional = [p for p in parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        assert len(call.args) <= len(positional), f"{name}: too many positional arguments to {call.func.id}()"
    assert f"# {name}: {edge_tl._API[name].module}." in edge_tl.__doc__
