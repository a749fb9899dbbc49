"""Find tests whose checks cannot fail on a realistic bug, by reading their source.

    python tools/weak_asserts.py            # the suite under tests/; exit 1 when something is found
    python tools/weak_asserts.py FILE...    # only these files or folders

A test pins a guarantee only if some bug makes it fail. These patterns are mechanical
signs that one does not (docs/testing.md, "Weak assertions"):

- ``no-check``: a test function with no ``assert``, no ``pytest.raises``/``warns``/``fail``,
  no ``assert_*`` call (``np.testing.assert_allclose``, ...) and no call to a helper in
  tests/ that checks something: it only shows that the code ran.
- ``broad-raises``: ``pytest.raises(Exception)`` or ``BaseException``: any bug that raises
  anything passes. Name the ``edge_tl.errors`` class and ``match=`` the message.
- ``raises-no-match``: ``pytest.raises(X)`` without ``match=`` and without reading the
  error it binds (``as info``): the wrong check (another option, another file) raising the
  same class passes, and for ``SystemExit`` any exit code passes. ``KeyboardInterrupt`` is
  exempt (a test raises it itself to stand for Ctrl-C; there is nothing more to read).
- ``only-not-none``, ``only-unit-range``, ``only-exists``, ``only-exit-0``, ``only-truthy``:
  every assert of the test is ``x is not None``, ``0 <= x <= 1``, ``path.exists()``,
  ``returncode == 0`` / ``exit_code == 0``, or a bare name/attribute: the artifact's
  content, the value and the output are never looked at.

A test that is right to check only one of these (a "does not raise" guarantee whose bug
is an exception) says so on its ``def`` line, with the reason:
``def test_x():  # weak-asserts: ok, <why a failure of this guarantee raises>``.

Reading a hit is the point: the fix is to pin the value the test is about, not to add
an assert that satisfies this script.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRAGMA = "# weak-asserts: ok"

#: Calls that check by themselves (``pytest.raises`` is handled apart, it needs a type).
_CHECK_CALLS = {"raises", "warns", "fail", "deprecated_call"}
_BROAD = {"Exception", "BaseException"}
#: Exceptions whose type is all there is to check (a test raises them itself to stand for Ctrl-C).
_NOTHING_TO_READ = {"KeyboardInterrupt"}


@dataclass(frozen=True)
class Hit:
    path: Path
    line: int
    test: str
    kind: str

    def __str__(self) -> str:
        try:
            where = self.path.resolve().relative_to(ROOT)
        except ValueError:
            where = self.path
        return f"{where}:{self.line}: {self.test}: {self.kind}"


def _name(node: ast.AST) -> str:
    """The last dotted part of a called name: ``np.testing.assert_allclose`` -> ``assert_allclose``."""
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return ""


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _direct_check(func: ast.AST) -> bool:
    for node in ast.walk(func):
        if isinstance(node, ast.Assert):
            return True
        if isinstance(node, ast.Call):
            name = _name(node.func)
            if name in _CHECK_CALLS or name.startswith("assert"):
                return True
        if isinstance(node, ast.Raise) and node.exc is not None and "Assertion" in ast.unparse(node.exc):
            return True
    return False


def _helper_bodies(trees: list[ast.AST]) -> dict[str, list[ast.AST]]:
    bodies: dict[str, list[ast.AST]] = {}
    for tree in trees:
        for func in _functions(tree):
            if not func.name.startswith("test_"):
                bodies.setdefault(func.name, []).append(func)
    return bodies


def _checking_helpers(bodies: dict[str, list[ast.AST]], known: frozenset[str] = frozenset()) -> set[str]:
    """Names of the functions in ``bodies`` that check, directly or through another (or one of ``known``)."""
    checking = set(known) | {name for name, funcs in bodies.items() if any(_direct_check(f) for f in funcs)}
    calls = {
        name: {_name(n.func) for f in funcs for n in ast.walk(f) if isinstance(n, ast.Call)}
        for name, funcs in bodies.items()
    }
    changed = True
    while changed:
        changed = False
        for name in bodies:
            if name not in checking and calls[name] & checking:
                checking.add(name)
                changed = True
    return checking


def _is_const(node: ast.AST, *values: float) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        return -node.operand.value in values if isinstance(node.operand.value, (int, float)) else False
    return isinstance(node, ast.Constant) and not isinstance(node.value, bool) and node.value in values


def _assert_kinds(test: ast.expr) -> set[str]:
    """What one assert's condition looks like: weak kinds, or ``{"real"}`` for any part that checks a value."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return set().union(*(_assert_kinds(part) for part in test.values))
    return {_assert_kind(test)}


def _assert_kind(test: ast.expr) -> str:
    if isinstance(test, ast.Compare):
        ops, comps = test.ops, [test.left, *test.comparators]
        if (
            len(ops) == 1
            and isinstance(ops[0], ast.IsNot)
            and isinstance(comps[1], ast.Constant)
            and comps[1].value is None
        ):
            return "only-not-none"
        if (
            len(ops) == 2
            and all(isinstance(o, (ast.LtE, ast.Lt)) for o in ops)
            and _is_const(comps[0], 0)
            and _is_const(comps[2], 1)
        ):
            return "only-unit-range"
        if (
            len(ops) == 1
            and isinstance(ops[0], ast.Eq)
            and _name(comps[0]) in {"returncode", "exit_code"}
            and _is_const(comps[1], 0)
        ):
            return "only-exit-0"
        return "real"
    if isinstance(test, ast.Call) and not test.args and _name(test.func) in {"exists", "is_file", "is_dir"}:
        return "only-exists"
    if (
        isinstance(test, ast.Call)
        and _name(test.func) in {"exists", "isfile", "isdir"}
        and isinstance(test.func, ast.Attribute)
        and _name(test.func.value) == "path"
    ):
        return "only-exists"
    if isinstance(test, (ast.Name, ast.Attribute)):
        return "only-truthy"
    return "real"


def _raises_type(call: ast.Call) -> ast.expr | None:
    if _name(call.func) != "raises":
        return None
    if call.args:
        return call.args[0]
    for kw in call.keywords:
        if kw.arg == "expected_exception":
            return kw.value
    return None


def _type_names(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Tuple):
        return [n for elt in node.elts for n in _type_names(elt)]
    return [_name(node)]


def check_file(path: Path, tree: ast.AST, source: str, helpers: set[str]) -> list[Hit]:
    hits: list[Hit] = []
    lines = source.splitlines()
    for func in _functions(tree):
        if not func.name.startswith("test_"):
            continue
        if PRAGMA in lines[func.lineno - 1] or any(PRAGMA in lines[d.lineno - 1] for d in func.decorator_list):
            continue

        def hit(kind: str, line: int = func.lineno, test: str = func.name) -> None:
            hits.append(Hit(path, line, test, kind))

        # ``with pytest.raises(X) as info:`` followed by checks of ``info`` reads the message.
        bound = {
            id(item.context_expr): item.optional_vars.id
            for node in ast.walk(func)
            if isinstance(node, ast.With)
            for item in node.items
            if isinstance(item.optional_vars, ast.Name)
        }
        loaded = {n.id for n in ast.walk(func) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        for node in ast.walk(func):
            if isinstance(node, ast.Call) and (kind := _raises_type(node)) is not None:
                names = _type_names(kind)
                if _BROAD & set(names):
                    hit("broad-raises", node.lineno)
                elif (
                    not set(names) <= _NOTHING_TO_READ
                    and not any(kw.arg == "match" for kw in node.keywords)
                    and bound.get(id(node)) not in loaded
                ):
                    hit("raises-no-match", node.lineno)

        asserts = [n for n in ast.walk(func) if isinstance(n, ast.Assert)]
        calls = {_name(n.func) for n in ast.walk(func) if isinstance(n, ast.Call)}
        other_checks = any(c in _CHECK_CALLS or c.startswith("assert") for c in calls) or bool(calls & helpers)
        if not asserts and not other_checks:
            hit("no-check")
            continue
        if asserts and not other_checks:
            kinds = set().union(*(_assert_kinds(a.test) for a in asserts))
            if "real" not in kinds:
                hit(" + ".join(sorted(kinds)))
    return hits


def scan(paths: list[Path]) -> list[Hit]:
    """Every hit in the test files under ``paths``."""
    files: list[Path] = []
    for given in paths:
        files += sorted(given.rglob("test_*.py")) if given.is_dir() else [given]
    sources = {p: p.read_text("utf-8") for p in {*sorted((ROOT / "tests").rglob("*.py")), *files}}
    parsed = {p: ast.parse(text, filename=str(p)) for p, text in sources.items()}
    # A test reaches the helpers of its own file and of the shared modules (conftest.py,
    # stand-ins): a same-named helper in another test file is not the one it calls.
    shared = frozenset(
        _checking_helpers(_helper_bodies([t for p, t in parsed.items() if not p.name.startswith("test_")]))
    )
    hits: list[Hit] = []
    for path in files:
        helpers = _checking_helpers(_helper_bodies([parsed[path]]), shared)
        hits += check_file(path, parsed[path], sources[path], helpers)
    return hits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="test files or folders (default: tests/)")
    args = parser.parse_args(argv)
    hits = scan([p.resolve() for p in args.paths] or [ROOT / "tests"])
    for h in hits:
        print(h)
    sys.stdout.flush()
    print(f"{len(hits)} weak test(s) found" if hits else "no weak tests found", file=sys.stderr)
    return 1 if hits else 0


if __name__ == "__main__":
    sys.exit(main())
