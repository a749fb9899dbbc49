"""Mutation testing of the modules that carry edge-tl's guarantees, one module at a time.

    python tools/mutation.py                 # list the modules
    python tools/mutation.py verify-metrics  # mutate one module, run only its tests
    python tools/mutation.py all             # every module in turn (long)
    python tools/mutation.py verify-metrics --survivors   # print each survivor's diff
    python tools/mutation.py quantize-api --tests tests/quantize   # another test selection

The tool is mutmut (https://github.com/boxed/mutmut, a dev dependency). mutmut reads
its settings from the ``pyproject.toml`` of the directory it runs in and copies the
package into ``mutants/`` there, so each module gets its own work directory under
``build/mutation/<module>/`` holding links to the checkout and a generated
``pyproject.toml`` that names the one file to mutate and only the tests that cover
it. The stats and results stay there between runs: a second run only tests mutants
whose source changed. ``--fresh`` starts over.

edge-tl is installed editable, and ``edge_tl.profiles``/``edge_tl.recipes`` are
mapped to the top-level ``targets/``/``calibration/`` folders by the editable
finder. mutmut puts ``mutants/`` first on ``sys.path``, so ``edge_tl`` itself comes
from the mutated copy while those two data packages still resolve to the checkout.
Tests that start ``sys.executable -m edge_tl`` in another directory get the mutated
copy too, through ``PYTHONPATH``; the mutant to activate reaches them in mutmut's
``MUTANT_UNDER_TEST`` environment variable.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "mutation"

#: module key -> (file to mutate, the tests that cover it). Keep the test list to the
#: files that exercise the module: mutmut runs them all twice (clean run, coverage)
#: before it tests any mutant, then only the tests that reached each mutated function.
MODULES: dict[str, tuple[str, list[str]]] = {
    "quantize-api": (
        "edge_tl/quantize/api.py",
        ["tests/quantize/test_quantize_search.py", "tests/quantize/test_quantize_tiny_run.py"],
    ),
    "quantize-trt-cache": ("edge_tl/quantize/trt_cache.py", ["tests/quantize/test_quantize_trt_cache.py"]),
    "quantize-qdq-tensorrt": ("edge_tl/quantize/qdq_tensorrt.py", ["tests/quantize/test_qdq_tensorrt_guards.py"]),
    "export-api": (
        "edge_tl/export/api.py",
        ["tests/export/test_export_parity.py", "tests/export/test_export_tiny_run.py"],
    ),
    "verify-metrics": ("edge_tl/verify/metrics.py", ["tests/verify/test_verify_metrics.py"]),
    "runtime-trtexec": (
        "edge_tl/bench/trtexec.py",
        [
            "tests/compile/test_trtexec_parse.py",
            "tests/compile/test_trt_releases.py",
            "tests/runtime/test_trtexec_runner.py",
        ],
    ),
    "compile-plan": (
        "edge_tl/compile/plan.py",
        [
            "tests/compile/test_plan_golden.py",
            "tests/compile/test_compile_plan.py",
            "tests/compile/test_trt_releases.py",
        ],
    ),
    "compile-trtexec-flags": (
        "edge_tl/compile/trtexec_flags.py",
        [
            "tests/compile/test_trtexec_flags.py",
            "tests/compile/test_compile_plan.py",
            "tests/compile/test_trt_releases.py",
        ],
    ),
    "deploy-ssh": ("edge_tl/deploy/ssh.py", ["tests/deploy/test_ssh_transport.py"]),
    "train-loop": ("edge_tl/train/loop.py", ["tests/train/test_train_resume.py"]),
    "cli": ("edge_tl/cli/*.py", ["tests/deploy/test_deploy_cli_host_keys.py", "tests/cli/test_cli_safety.py"]),
}

#: module key -> the functions whose mutants are run and scored, where only part of a file
#: carries the guarantee: globs over mutmut's mutant names (``<module>.x_<function>`` and
#: ``<module>.xǁ<Class>ǁ<method>``, then ``__mutmut_<n>``). mutmut still generates every
#: mutant of the file, but only these are tested and counted. Decorated functions (click
#: commands) are never mutated by mutmut, so the CLI's decisions live in plain functions.
FUNCTIONS: dict[str, list[str]] = {
    "train-loop": [
        "edge_tl.train.loop.xǁTrainingProgressǁ*",
        "edge_tl.train.loop.xǁ_Trainerǁ_check_out*",
        "edge_tl.train.loop.xǁ_Trainerǁ_restore*",
        "edge_tl.train.loop.xǁ_Trainerǁ_payload*",
        "edge_tl.train.loop.xǁ_Trainerǁ_save*",
        "edge_tl.train.loop.x__read_history*",
    ],
    "cli": [
        "edge_tl.cli.deploy.x_ssh_options*",
        "edge_tl.cli.verify.x_verify_config*",
        "edge_tl.cli.quantize.x_quantize_config*",
    ],
}

#: Linked into each work directory; mutmut copies what it needs into ``mutants/``.
_LINKED = ["edge_tl", "tests", "targets", "calibration"]


def _pyproject(source: str, tests: list[str]) -> str:
    """The work directory's pyproject: the checkout's pytest settings plus mutmut's."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    pytest_options = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"]["pytest"]["ini_options"]
    lines = ["[tool.pytest.ini_options]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in pytest_options.items() if key != "testpaths"]
    lines += [
        "",
        "[tool.mutmut]",
        'source_paths = ["edge_tl"]',
        f"only_mutate = {json.dumps([source])}",
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
        # pytest's own -p no:cacheprovider keeps the checkout's .pytest_cache untouched
        'pytest_add_cli_args = ["-p", "no:cacheprovider"]',
        "use_git_change_detection = false",
    ]
    return "\n".join(lines) + "\n"


def _prepare(key: str, fresh: bool, tests: list[str]) -> Path:
    source = MODULES[key][0]
    work = WORK / key
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for name in _LINKED:
        link = work / name
        if not link.is_symlink():
            link.symlink_to(ROOT / name, target_is_directory=True)
    (work / "pyproject.toml").write_text(_pyproject(source, tests), "utf-8")
    return work


def _results(work: Path, functions: list[str]) -> dict[str, list[str]]:
    """mutant names by status, read from mutmut's per-file ``.meta`` records (only ``functions``' when given)."""
    from fnmatch import fnmatchcase

    from mutmut.stats import status_by_exit_code

    by_status: dict[str, list[str]] = {}
    for meta in sorted((work / "mutants").rglob("*.meta")):
        data = json.loads(meta.read_text("utf-8"))
        for name, code in data.get("exit_code_by_key", {}).items():
            if functions and not any(fnmatchcase(name, pattern) for pattern in functions):
                continue
            status = status_by_exit_code[code]
            by_status.setdefault(status, []).append(name)
    return by_status


def run(
    key: str,
    *,
    fresh: bool,
    children: int,
    survivors: bool,
    tests: list[str] | None = None,
    only: list[str] | None = None,
) -> dict[str, list[str]]:
    tests = tests or MODULES[key][1]
    work = _prepare(key, fresh, tests)
    # Exists before Python starts: a PYTHONPATH entry missing at startup is cached as
    # "nothing here" and the mutated copy would never be imported.
    (work / "mutants").mkdir(exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(work / "mutants"), env.get("PYTHONPATH", "")) if p)
    # torch's thread pools do not survive mutmut's fork per mutant; one thread each is
    # also what two shared cores can give.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    mutmut = [sys.executable, "-c", "import sys; from mutmut.__main__ import cli; sys.exit(cli())"]
    log = work / "mutmut.log"
    functions = only or FUNCTIONS.get(key, [])
    scope = f" (functions: {' '.join(functions)})" if functions else ""
    print(f"{key}: mutating {MODULES[key][0]}{scope} with {' '.join(tests)} (log: {log})", flush=True)
    with log.open("w") as out:
        done = subprocess.run(
            [*mutmut, "run", "--max-children", str(children), *functions],
            cwd=work,
            env=env,
            check=False,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if done.returncode != 0:
        print(log.read_text("utf-8", errors="replace")[-4000:])
        raise SystemExit(f"{key}: mutmut failed (exit {done.returncode}); its log is {log}")
    by_status = _results(work, functions)
    total = sum(len(v) for v in by_status.values())
    killed = len(by_status.get("killed", [])) + len(by_status.get("timeout", []))
    score = f"{100 * killed / total:.0f}%" if total else "n/a"
    print(f"\n{key}: {MODULES[key][0]}: {killed}/{total} killed ({score})")
    for status, names in sorted(by_status.items()):
        print(f"  {status}: {len(names)}")
    untested: dict[str, int] = {}
    for name in by_status.get("no tests", []):
        function = name.rsplit("__mutmut_", 1)[0]
        untested[function] = untested.get(function, 0) + 1
    for function, count in sorted(untested.items(), key=lambda item: -item[1]):
        print(f"    no tests reach {function}: {count} mutants")
    for status in ("survived", "suspicious", "not checked"):
        for name in by_status.get(status, []):
            print(f"    {status}: {name}")
            if survivors:
                subprocess.run([*mutmut, "show", name], cwd=work, env=env, check=False)
    return by_status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", nargs="?", help="a module key, or 'all'")
    parser.add_argument("--fresh", action="store_true", help="discard earlier results of this module")
    parser.add_argument("--children", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("--survivors", action="store_true", help="print the diff of each survivor")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="MUTANT",
        help="test only these mutants (names or globs, e.g. an earlier run's survivors after new tests)",
    )
    parser.add_argument(
        "--tests",
        nargs="+",
        metavar="PATH",
        help="run these tests instead of the module's list (e.g. add the slow end-to-end ones)",
    )
    args = parser.parse_args()
    if args.module is None:
        for key, (source, tests) in MODULES.items():
            print(f"{key:24} {source:36} {' '.join(tests)}")
        return 0
    keys = list(MODULES) if args.module == "all" else [args.module]
    unknown = [k for k in keys if k not in MODULES]
    if unknown:
        parser.error(f"unknown module {unknown[0]!r}; run without arguments to list them")
    for key in keys:
        run(key, fresh=args.fresh, children=args.children, survivors=args.survivors, tests=args.tests, only=args.only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
