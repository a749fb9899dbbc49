"""tools/weak_asserts.py: it finds each weak pattern, and the suite has none of them."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("weak_asserts", ROOT / "tools" / "weak_asserts.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["weak_asserts"] = module  # dataclasses resolve the module by name
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


SAMPLE = """
import subprocess
import pytest
from edge_tl.errors import ConfigError


def _check(x):
    assert x == 1


def test_only_runs():
    f()

def test_broad():
    with pytest.raises(Exception):
        f()

def test_broad_in_tuple():
    with pytest.raises((ValueError, BaseException)):
        f()

def test_typed_without_match():
    with pytest.raises(ConfigError):
        f()

def test_typed_binding_never_read():
    with pytest.raises(ConfigError) as info:
        f()

def test_exit_code_never_read():
    with pytest.raises(SystemExit):
        main(["report"])

def test_ctrl_c_has_nothing_more_to_read():
    with pytest.raises(KeyboardInterrupt):
        train()
    assert saved() == 3

def test_not_none():
    assert f() is not None

def test_unit_range():
    assert 0 <= f() <= 1.0

def test_exists(tmp_path):
    assert (tmp_path / "x").exists()

def test_exit_0_and_truthy():
    done = subprocess.run(["true"])
    assert done.returncode == 0
    assert done

def test_weak_parts_joined():
    assert f() is not None and (tmp / "x").exists()

def test_one_part_pinned():
    assert f() is not None and f().size == 3

def test_value_pinned():
    assert f() == 3

def test_typed_with_match():
    with pytest.raises(ConfigError, match="workspace_mib"):
        f()

def test_message_read():
    with pytest.raises(ConfigError) as info:
        f()
    assert "workspace_mib" in str(info.value)

def test_through_a_helper():
    _check(f())

def test_weak_but_explained():  # weak-asserts: ok, a failure of this guarantee is an exception
    f()
"""


def test_each_pattern_is_found_and_pinned_tests_are_not(tmp_path: Path) -> None:
    path = tmp_path / "test_sample.py"
    path.write_text(textwrap.dedent(SAMPLE))
    found = {(h.test, h.kind) for h in _tool().scan([path])}
    assert found == {
        ("test_only_runs", "no-check"),
        ("test_broad", "broad-raises"),
        ("test_broad_in_tuple", "broad-raises"),
        ("test_typed_without_match", "raises-no-match"),
        ("test_typed_binding_never_read", "raises-no-match"),
        ("test_exit_code_never_read", "raises-no-match"),
        ("test_not_none", "only-not-none"),
        ("test_unit_range", "only-unit-range"),
        ("test_exists", "only-exists"),
        ("test_exit_0_and_truthy", "only-exit-0 + only-truthy"),
        ("test_weak_parts_joined", "only-exists + only-not-none"),
    }


def test_the_suite_has_no_weak_tests(capsys) -> None:
    code = _tool().main([])
    out = capsys.readouterr()
    assert (code, out.out) == (0, ""), out.out
    assert "no weak tests found" in out.err
