"""The TensorRT (and torch-tensorrt) names our code uses exist in the real releases, read without importing them.

TensorRT's Python bindings wheels hold the real pybind11 module; every attribute it
defines is a NUL-terminated C string in the ``.so``. The wheels are fetched once with
pip into a cache (``$XDG_CACHE_HOME/edge-tl/wheels``) and the test is skipped, with
the reason, only when pip cannot get them.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edge_tl.compile.torch_trt import TORCH_TRT_CALLS
from edge_tl.errors import ConfigError
from edge_tl.targets import TrtVersion
from edge_tl.trt.trt_api import TRT_ABSENT, TRT_NAMES, ApiPath, TrtApi, api_path

# One release per code path: the version JetPack 6.0 / desktops ship, JetPack 6.1/6.2's, JetPack 7.2's.
BINDINGS = {
    ApiPath.TRT8: ("tensorrt-bindings", "8.6.1"),
    ApiPath.TRT10: ("tensorrt-cu12-bindings", "10.3.0"),
    ApiPath.TRT11: ("tensorrt-cu13-bindings", "11.4.0.106"),
}
# The release the `tensorrt` extra's torch-tensorrt pin names (report to pyproject).
TORCH_TRT = ("torch-tensorrt", "2.14.0")

CODE_USING_TRT = (
    "edge_tl/trt/trt_api.py",
    "edge_tl/compile/trt_builder.py",
    "edge_tl/runtime/tensorrt_runner.py",
    "edge_tl/compile/torch_trt.py",
)


def _cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    path = base / "edge-tl" / "wheels"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _wheel(package: str, version: str) -> Path:
    """The wheel for CPython 3.11 on x86-64 Linux (fixed, so the bytes checked do not depend on this machine)."""
    stem = package.replace("-", "_")
    cache = _cache_dir()
    found = sorted(cache.glob(f"{stem}-{version}-*.whl"))
    if found:
        return found[0]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "--platform",
        "manylinux_2_28_x86_64",
        "--platform",
        "manylinux_2_17_x86_64",
        "-d",
        str(cache),
        f"{package}=={version}",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip could not fetch {package}=={version} within 10 minutes")
    found = sorted(cache.glob(f"{stem}-{version}-*.whl"))
    if proc.returncode != 0 or not found:
        pytest.skip(f"pip could not fetch {package}=={version}: {proc.stderr.strip().splitlines()[-1:]}")
    return found[0]


def _module_bytes(path: ApiPath) -> bytes:
    package, version = BINDINGS[path]
    with zipfile.ZipFile(_wheel(package, version)) as wheel:
        so = [n for n in wheel.namelist() if n.startswith("tensorrt_bindings/tensorrt") and n.endswith(".so")]
        assert so, f"no tensorrt extension module in {package} {version}"
        return wheel.read(so[0]) + wheel.read("tensorrt_bindings/__init__.py")


def _token(blob: bytes, name: str) -> bool:
    """``name`` is one whole NUL-terminated C string of the module (pybind11's attribute names)."""
    return b"\0" + name.encode() + b"\0" in blob


def _word(blob: bytes, name: str) -> bool:
    """``name`` as a whole identifier anywhere in the module's text (its docstrings and signatures)."""
    return re.search(rb"(?<![A-Za-z0-9_])" + re.escape(name.encode()) + rb"(?![A-Za-z0-9_])", blob) is not None


# The linker stores a string that ends another one only once ("INT8" is the tail of "UINT8\0"), so
# some names exist in the bytes only as a tail. Those are accepted from NVIDIA's Python API reference
# (docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Engine.html#tensorrt.TensorIOMode),
# and still must be a tail of some string here.
TAIL_ONLY = {"INPUT"}


def _defined(blob: bytes, name: str) -> bool:
    """Whole names only: ``INT8`` does not count because ``UINT8`` exists; a docstring or signature
    that names it as a whole word (``DataType.INT8``) does."""
    if _token(blob, name) or _word(blob, name):
        return True
    return name in TAIL_ONLY and name.encode() + b"\0" in blob


def test_only_whole_names_count() -> None:
    blob = b"\x7fELF\0UINT8\0kFP16\0int8_calibrator\0CONDITIONAL_INPUT\0"
    assert not _defined(blob, "INT8") and not _defined(blob, "FP16") and not _defined(blob, "calibrator")
    assert _defined(blob, "UINT8") and _defined(blob, "int8_calibrator") and _defined(blob, "INPUT")
    assert _defined(blob + b"Scale for `DataType.INT8` data\0", "INT8")
    assert not _token(blob, "INT8") and not _token(blob + b"a FP16 layer\0", "FP16")


@pytest.mark.network
@pytest.mark.parametrize("path", list(ApiPath), ids=lambda p: p.value)
def test_every_name_of_the_code_path_exists_in_that_release(path: ApiPath) -> None:
    blob = _module_bytes(path)
    missing = sorted(n for n in TRT_NAMES[path] if not _defined(blob, n))
    assert not missing, f"{BINDINGS[path]} lacks {missing}: fix the {path.value} code path"
    present = sorted(n for n in TRT_ABSENT[path] if _token(blob, n))
    assert not present, f"{BINDINGS[path]} still has {present}: TRT_ABSENT is wrong"


@pytest.mark.network
def test_the_check_can_fail() -> None:
    # int8_calibrator is in 10.3 and gone in 11.4 (calibrators removed): the byte check sees the difference.
    assert _token(_module_bytes(ApiPath.TRT10), "int8_calibrator")
    assert not _defined(_module_bytes(ApiPath.TRT11), "int8_calibrator")
    assert _token(_module_bytes(ApiPath.TRT10), "FP16") and not _token(_module_bytes(ApiPath.TRT11), "FP16")
    assert not _defined(_module_bytes(ApiPath.TRT10), "no_such_tensorrt_attribute")


def _string_args(tree: ast.AST) -> set[str]:
    """Names passed to TrtApi.get/set/mod/enum: the attributes the code really reaches for."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("get", "set", "mod", "enum")
        ):
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    names.add(arg.value)
    return names


def test_code_reaches_tensorrt_only_through_declared_names() -> None:
    root = Path(__file__).resolve().parents[2]
    declared = set().union(*TRT_NAMES.values())
    used: set[str] = set()
    for rel in CODE_USING_TRT:
        used |= _string_args(ast.parse((root / rel).read_text()))
    assert used, "the AST scan found nothing: it is not looking at the TensorRT code"
    assert used <= declared, f"undeclared TensorRT names: {sorted(used - declared)}"


def test_trtapi_refuses_undeclared_names_and_old_versions() -> None:
    class FakeTrt:
        __version__ = "11.4.0"
        BuilderFlag = type("BuilderFlag", (), {"FP16": 1})

    api = TrtApi(FakeTrt)  # type: ignore[arg-type]
    assert api.path is ApiPath.TRT11
    with pytest.raises(RuntimeError, match="FP16.*trt11"):
        api.enum("BuilderFlag", "FP16")  # FP16 builder flag is not part of the 11.x path
    assert api_path(TrtVersion(8, 6)) is ApiPath.TRT8
    with pytest.raises(ConfigError, match="8.5/8.6, 10.x and 11.x"):
        api_path(TrtVersion(8, 2))


def test_torch_tensorrt_extra_follows_the_installed_torch() -> None:
    torch = pytest.importorskip("torch")

    root = Path(__file__).resolve().parents[2]
    pin = re.search(
        r'^torch-tensorrt = \["torch-tensorrt==(\d+)\.(\d+)\.\*"\]', (root / "pyproject.toml").read_text(), re.M
    )
    assert pin, "the torch-tensorrt extra must pin one torch-tensorrt series (2.N.*), the one of torch 2.N"
    series = tuple(int(v) for v in pin.groups())
    assert series == tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    assert tuple(int(v) for v in TORCH_TRT[1].split(".")[:2]) == series  # the sources checked below are that series'
    from edge_tl.compile.torch_trt import check_torch_tensorrt_matches

    check_torch_tensorrt_matches("2.14.1", "2.14.0")
    with pytest.raises(
        ConfigError, match=r"torch-tensorrt 2.9.0 is built for torch 2.9 but torch is 2.14.1.*torch-tensorrt==2.14.\*"
    ):
        check_torch_tensorrt_matches("2.14.1+cu128", "2.9.0")


@pytest.mark.network
def test_torch_tensorrt_functions_exist_in_the_pinned_release() -> None:
    package, version = TORCH_TRT
    with zipfile.ZipFile(_wheel(package, version)) as wheel:
        init = wheel.read("torch_tensorrt/__init__.py").decode()
        for name, (module, keywords) in TORCH_TRT_CALLS.items():
            tree = ast.parse(wheel.read(module).decode())
            defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name]
            assert defs, f"{package} {version}: {module} defines no {name}"
            node = defs[0]
            if isinstance(node, ast.FunctionDef):
                params = {a.arg for a in node.args.args + node.args.kwonlyargs}
                assert set(keywords) <= params, f"{name} lacks parameters {set(keywords) - params}"
            else:  # a class: its constructor takes **kwargs; the keywords must be documented/handled in the source
                source = wheel.read(module).decode()
                assert all(f'"{k}"' in source for k in keywords), f"{name} does not read {keywords}"
            # Reachable as torch_tensorrt.<name>: re-exported from its module by the package's __init__.
            stem = module.rsplit("/", 1)[1][: -len(".py")]
            assert f"from torch_tensorrt.{stem} import" in init, f"{name} is not exported by torch_tensorrt"
