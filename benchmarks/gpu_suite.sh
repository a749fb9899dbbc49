#!/usr/bin/env bash
# Every GPU figure edge-tl claims, refreshed in one call on a lent CUDA machine (~6 min on an
# H100/H200), written as one JSON.
#
#   bash benchmarks/gpu_suite.sh                      # all stages -> benchmarks/results/gpu_suite.json
#   bash benchmarks/gpu_suite.sh --only tests,latency --out "$OUT/gpu_suite.json"
#   bash benchmarks/gpu_suite.sh --dry-run            # print the stages' commands, run nothing
#
# Stages (each under its own time limit, so one that hangs cannot eat the machine's time):
#   tests       the gpu-marked tests                                   (pytest -m gpu)
#   finetune    training step vs a hand-written loop, and end to end from 1,024 JPEGs at 224 px,
#               bf16, channels-last                                    (finetune_throughput.py)
#   latency     PyTorch runner b1 latency vs an independent CUDA loop   (cuda_latency.py)
#   data        the GPU data path and the CPU loader vs torchvision     (data_pipeline.py)
# Data is generated on the machine (scikit-image photographs, built-in digits) into
# $TMPDIR/edge-tl-bench-photos, shared by the finetune and data stages; nothing is downloaded. Python is $PYTHON (default: .venv/bin/python if present, else python3); the
# repository root goes on PYTHONPATH, so the machine needs only the dependencies installed.
set -uo pipefail

usage() {
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_JSON="$ROOT/benchmarks/results/gpu_suite.json"
ONLY="tests,finetune,latency,data"
DRY_RUN=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || { echo "gpu_suite.sh: --out needs a file name" >&2; exit 2; }; OUT_JSON="$2"; shift 2 ;;
        --only) [ $# -ge 2 ] || { echo "gpu_suite.sh: --only needs stage names" >&2; exit 2; }; ONLY="$2"; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "gpu_suite.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
for stage in ${ONLY//,/ }; do
    case "$stage" in
        tests|finetune|latency|data) ;;
        *) echo "gpu_suite.sh: unknown stage '$stage'; stages: tests, finetune, latency, data" >&2; exit 2 ;;
    esac
done

if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
CORES="$("$PYTHON" -c 'import os; print(len(os.sched_getaffinity(0)))' 2>/dev/null || echo 2)"
WORKERS=$(( CORES > 1 ? CORES - 1 : 1 ))
WORK="$(mktemp -d "${TMPDIR:-/tmp}/edge-tl-gpu-suite.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT" || exit 1

# name, time limit (s), result JSON the command writes (or -), command
STAGES=(
    "tests|150|$WORK/tests.xml|$PYTHON -m pytest -q -m gpu -p no:cacheprovider --junitxml=$WORK/tests.xml tests"
    "finetune|170|$WORK/finetune.json|$PYTHON benchmarks/finetune_throughput.py --device cuda --img-size 224 --batch-size 128 --precision bf16 --rounds 6 --end-to-end --photos 1024 --epochs 3 --workers $WORKERS --out $WORK/finetune.json"
    "latency|60|$WORK/latency.json|$PYTHON benchmarks/cuda_latency.py --iterations 1000 --out $WORK/latency.json"
    "data|150|$WORK/data.json|$PYTHON benchmarks/data_pipeline.py --device cuda --workers $WORKERS --batch-size 128 --sizes 500x375 4000x3000 --images 1024 48 --reps 2 --out $WORK/data.json"
)

RECORDS="$WORK/records.tsv"
: > "$RECORDS"
for entry in "${STAGES[@]}"; do
    IFS='|' read -r name limit result command <<< "$entry"
    case ",$ONLY," in *",$name,"*) ;; *) continue ;; esac
    if [ "$DRY_RUN" = 1 ]; then
        echo "[$name] (limit ${limit}s) $command"
        printf '%s\t%s\t%s\t%s\t%s\n' "$name" "dry-run" "0" "$result" "$command" >> "$RECORDS"
        continue
    fi
    echo "[$name] $command" >&2
    started=$(date +%s.%N)
    timeout --kill-after=10 "$limit" bash -c "$command" > "$WORK/$name.log" 2>&1
    rc=$?
    seconds=$("$PYTHON" -c "import sys; print(round($(date +%s.%N) - $started, 1))")
    tail -n 5 "$WORK/$name.log" >&2
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$seconds" "$result" "$command" >> "$RECORDS"
done

"$PYTHON" - "$RECORDS" "$OUT_JSON" "$WORK" <<'PY'
"""Gather the stages' results into one JSON (the stage's own JSON, or the test counts)."""
import json, os, sys, tempfile, time
import xml.etree.ElementTree as ET

records, out, work = sys.argv[1:4]
stages = {}
for line in open(records, encoding="utf-8"):
    name, rc, seconds, result, command = line.rstrip("\n").split("\t")
    stage = {"command": command, "status": "dry-run" if rc == "dry-run" else ("ok" if rc == "0" else f"failed (exit {rc})")}
    if rc != "dry-run":
        stage["seconds"] = float(seconds)
        log = os.path.join(work, f"{name}.log")
        if os.path.exists(log):
            stage["log_tail"] = open(log, encoding="utf-8", errors="replace").read()[-4000:]
    if os.path.exists(result):
        if result.endswith(".xml"):
            suite = ET.parse(result).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
            counts["failed"] = [
                f"{case.get('classname')}::{case.get('name')}"
                for case in suite.iter("testcase")
                if case.find("failure") is not None or case.find("error") is not None
            ]
            stage["result"] = counts
        else:
            stage["result"] = json.load(open(result, encoding="utf-8"))
    stages[name] = stage
summary = {
    "suite": "gpu_suite",
    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "stages": stages,
    "all_ok": all(s["status"] == "ok" for s in stages.values()),
}
os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(out)), suffix=".tmp")
with os.fdopen(fd, "w", encoding="utf-8") as fh:
    json.dump(summary, fh, indent=2)
os.replace(tmp, out)
print(f"wrote {out}: " + ", ".join(f"{k} {v['status']}" for k, v in stages.items()))
PY
