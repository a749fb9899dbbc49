"""``deploy``: bundle a run, push it to a device over SSH, build and measure there, bring the truth back.

One device (:func:`deploy`):

1. probe the device (``deploy/<host>/probe.json``) and check it against the target;
2. choose the mode: *python* when TensorRT's Python package imports there, *trtexec*
   when only trtexec is there, else *python* with ONNX Runtime (``--mode`` overrides);
3. copy the bundle (resumable, verified, published atomically: :mod:`edge_tl.deploy.sync`);
4. python mode: a virtual environment on the device (``--system-site-packages``, so the
   system's TensorRT / ONNX Runtime / numpy are used) gets the edge-tl wheel built here,
   and :mod:`edge_tl.deploy.remote_agent` runs the evaluation pack and the benchmark;
   trtexec mode: the build plan builds the engine, trtexec times it, and trtexec runs
   the evaluation pack (``--loadInputs`` / ``--exportOutput``), scored here;
5. results land in ``deploy/<host>/`` (probe, build log, bench, accuracy) with the
   original model's accuracy on the same evaluation pack, and a manifest record.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from edge_tl.deploy.bundle import Bundle, bundle_artifact_name, bundle_dir, make_bundle
from edge_tl.deploy.evalpack import DEFAULT_IMAGES, EvalPack
from edge_tl.deploy.probe import DeviceProbe, check_probe, probe_device
from edge_tl.deploy.ssh import SshEndpoint, SshOptions, SshTransport, sh_script
from edge_tl.deploy.sync import SyncReport, check_remote_dir, sync_bundle
from edge_tl.bench.latency import named_latencies
from edge_tl.deploy.tegrastats import summarize as summarize_tegrastats
from edge_tl.errors import ConfigError, EdgeTLError, RemoteError, RunError
from edge_tl.runs import (
    Run,
    atomic_write_bytes,
    atomic_write_json,
    now_iso,
    sha256_file,
)
from edge_tl.targets import Precision, Target, load_target

log = logging.getLogger("edge_tl.deploy")

STAGE = "deploy"
ACCURACY_FILE = "accuracy.json"  # read by edge_tl.verify.read_deploy_results (format in docs/design.md)
WHEEL_DIR = "tools"
_MANIFEST_LOCK = threading.Lock()


class Mode(str, Enum):
    AUTO = "auto"
    PYTHON = "python"
    TRTEXEC = "trtexec"


@dataclass(frozen=True)
class DeployConfig:
    """What to deploy and how to measure it (shared by every device of a fleet unless overridden)."""

    target: str
    precision: str
    mode: Mode = Mode.AUTO
    remote_dir: str | None = None  # default: edge-tl/<run name>, relative to the login directory
    remote_python: str = "python3"
    ssh: SshOptions = SshOptions()
    eval_images: int = DEFAULT_IMAGES
    warmup: int = 20
    iterations: int = 200
    batch_size: int = 1
    threads: int | None = None
    tensorrt: str | None = None  # a TensorRT release the target lists (default: the target's default)
    wheel: Path | None = None  # python mode: an edge-tl wheel to install (default: built from this checkout)
    check_device: bool = True  # refuse a device that does not match the target profile
    lock_clocks: bool = False  # run `sudo -n jetson_clocks` before timing and restore afterwards
    tegrastats: bool = True  # sample power and temperature with tegrastats while measuring, where present
    timeout_s: float = 1800

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.warmup < 0 or self.batch_size < 1 or self.eval_images < 1:
            raise ConfigError(
                f"iterations, batch size and evaluation images must be >= 1 and warm-up >= 0; got {self.iterations}, "
                f"{self.batch_size}, {self.eval_images}, {self.warmup}"
            )
        if self.remote_dir is not None:
            check_remote_dir(self.remote_dir)


@dataclass(frozen=True)
class DeployResult:
    host: str
    label: str
    target: str
    precision: str
    status: str  # "ok" or "failed"
    reason: str = ""
    mode: str | None = None
    backend: str | None = None
    jetpack: str | None = None
    tensorrt: str | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    throughput_ips: float | None = None
    top1: float | None = None
    reference_top1: float | None = None
    local_top1: float | None = None
    top1_agreement: float | None = None
    result_dir: str | None = None
    sync: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def delta_top1_pts(self) -> float | None:
        if self.top1 is None or self.reference_top1 is None:
            return None
        return (self.top1 - self.reference_top1) * 100

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["delta_top1_pts"] = self.delta_top1_pts
        return out


# --------------------------------------------------------------------------- local preparation


def project_root() -> Path | None:
    """The source checkout edge-tl runs from, when it does (a wheel can be built from it)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "edge_tl").is_dir() else None


def build_wheel(dest: str | os.PathLike[str]) -> Path:
    """``pip wheel --no-deps`` of this checkout into ``dest``: the device installs it with no network."""
    root = project_root()
    if root is None:
        raise ConfigError(
            "edge-tl is not running from a source checkout, so no wheel can be built for the device; "
            "pass one with --wheel (pip download edge-tl --no-deps, or build it from the sources)"
        )
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    # No build isolation: the installed setuptools is used, so no index is needed here either.
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(dest), str(root)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    wheels = sorted(dest.glob("edge_tl-*.whl"), key=lambda p: p.stat().st_mtime)
    if proc.returncode != 0 or not wheels:
        raise RunError(f"building the edge-tl wheel failed (pip exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    return wheels[-1]


def prepare_bundle(run: Run, target: Target, precision: Precision, *, eval_images: int, tensorrt: str | None) -> Bundle:
    """The run's bundle for target+precision: reused when it is intact and made from the current model."""
    name = bundle_artifact_name(target, precision)
    if run.has_artifact(name):
        try:
            bundle = Bundle.load(bundle_dir(run, target, precision))
            model = bundle.model
            current = run.artifact(model["artifact"])
            plan = bundle.build_plan
            if (
                current.sha256 == model["sha256"]
                and bundle.manifest["eval"]["num_images"] == min(eval_images, bundle.manifest["eval"]["num_images"])
                and (plan is None or tensorrt is None or plan["tensorrt"] == tensorrt)
            ):
                return bundle
        except (EdgeTLError, KeyError, OSError):
            pass  # stale or damaged: make it again
    return make_bundle(run, target=target, precision=precision, eval_images=eval_images, tensorrt=tensorrt)


@dataclass(frozen=True)
class Reference:
    """Logits of the original model and of the bundle's ONNX (ONNX Runtime, here) on the evaluation pack."""

    original: Any | None  # np.ndarray
    local: Any | None


def _run_pack(runner: Any, pack: EvalPack) -> Any:
    import numpy as np

    with runner:
        return np.concatenate([runner.run(images) for images, _ in pack.batches()])


def compute_reference(run: Run, bundle: Bundle) -> Reference:
    """Run the original model and (where ONNX Runtime can) the shipped ONNX on the evaluation pack, here."""
    import numpy as np

    from edge_tl._lazy import is_available
    from edge_tl.runtime import open_runner
    from edge_tl.runtime.onnxruntime_runner import OnnxRuntimeRunner

    pack = EvalPack.load(bundle.root / bundle.manifest["eval"]["dir"])
    has_original = run.has_artifact("checkpoint-best")
    checkpoint = run.artifact("checkpoint-best").sha256 if has_original else ""
    images = pack.content_digest()
    # Cached per (images, model): a fleet, another target or a re-deploy does not run the models again.
    cache = run.path("deploy", ".reference")

    def cached(name: str, compute: Callable[[], Any]) -> Any:
        path = cache / f"{name}-{sha256_text(images + (checkpoint if name == 'original' else bundle.model['sha256']))[:20]}.npy"
        if path.is_file():
            return np.load(path, allow_pickle=False)
        value = compute()
        if value is not None:
            cache.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(value, dtype=np.float32), allow_pickle=False)
            atomic_write_bytes(path, buffer.getvalue())
        return value

    def original() -> Any:
        if is_available("torch") and has_original:
            return _run_pack(open_runner(run, artifact="checkpoint-best"), pack)
        log.warning("the original model cannot run here (needs torch and checkpoint-best): no accuracy delta")
        return None

    def local() -> Any:
        if not is_available("onnxruntime"):
            return None
        try:
            return _run_pack(OnnxRuntimeRunner(bundle.root / bundle.model["path"]), pack)
        except EdgeTLError as exc:  # e.g. an FP16 or Q/DQ graph this ONNX Runtime cannot load
            log.warning("the bundle's ONNX does not run in ONNX Runtime here (%s)", exc)
            return None

    return Reference(cached("original", original), cached("local-onnxruntime", local))


# --------------------------------------------------------------------------- device steps

_VENV = r"""
cd -- "$1" || exit 1; py="$2"; wheel="$3"; sha="$4"
if [ ! -x venv/bin/python ]; then
  "$py" -m venv --system-site-packages --without-pip venv || { echo "cannot create a venv with $py: install python3-venv" >&2; exit 4; }
fi
if [ "$(cat venv/.edge-tl-wheel 2>/dev/null)" != "$sha" ]; then
  venv/bin/python -m pip install --quiet --no-deps --no-index --force-reinstall --disable-pip-version-check "$wheel" >&2 || exit 5
  echo "$sha" > venv/.edge-tl-wheel
fi
venv/bin/python -c 'import edge_tl, sys; print(edge_tl.__version__, edge_tl.__file__)'
"""

_NEW_RESULTS = r"""
cd -- "$1" && rm -rf -- results && mkdir -p -- "results/$2"
"""

# tegrastats runs in the background (--start) until --stop, logging every 500 ms.
_TEGRASTATS_START = r"""
cd -- "$1" && tegrastats --interval 500 --logfile "results/$2/tegrastats.log" --start
"""

_CLOCKS = r"""
cd -- "$1" || exit 1
case "$2" in
  lock) sudo -n jetson_clocks --store "results/$3/clocks.conf" && sudo -n jetson_clocks ;;
  restore) [ -f "results/$3/clocks.conf" ] && sudo -n jetson_clocks --restore "results/$3/clocks.conf" ;;
esac
"""


def _fetch_many(ssh: SshTransport, remote_dir: str, names: list[str], out: Path) -> list[str]:
    """Bring back the files ``names`` of ``remote_dir`` that exist, in one tar stream; returns those written.

    Only the expected names are taken from the archive and written under our own paths,
    so nothing the device sends can choose where a file lands here.
    """
    script = 'cd -- "$1" && shift && for f; do [ -f "$f" ] && printf "%s\\n" "$f"; done | tar -c -f - -T -'
    data = ssh.run(sh_script(script, remote_dir, *names), what="fetch of the results").stdout
    written = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar.getmembers():
            if member.name in names and member.isfile():
                fh = tar.extractfile(member)
                if fh is not None:
                    atomic_write_bytes(out / member.name, fh.read())
                    written.append(member.name)
    return written


def _fetch(ssh: SshTransport, remote_path: str, local: Path, *, required: bool = True) -> bool:
    result = ssh.run(["cat", "--", remote_path], check=False, what=f"fetch of {remote_path}")
    if result.returncode != 0:
        if required:
            raise RemoteError(f"{ssh.endpoint}: cannot read {remote_path} back ({result.stderr.strip()})")
        return False
    atomic_write_bytes(local, result.stdout)
    return True


def choose_mode(requested: Mode, probe: DeviceProbe, target: Target) -> Mode:
    if requested is not Mode.AUTO:
        if requested is Mode.TRTEXEC and not probe.trtexec:
            raise ConfigError(f"--mode trtexec needs trtexec on {probe.host}, which has none; use --mode python")
        if requested is Mode.TRTEXEC and not target.uses_tensorrt:
            raise ConfigError(f"target {target.name!r} runs ONNX Runtime: trtexec mode does not apply; use --mode python")
        return requested
    if target.uses_tensorrt and probe.tensorrt_python:
        return Mode.PYTHON
    if target.uses_tensorrt and probe.trtexec:
        return Mode.TRTEXEC
    return Mode.PYTHON


def _python_mode(ssh: SshTransport, *, remote_dir: str, results: str, wheel: Path, config: DeployConfig,
                 bundle: Bundle, out: Path) -> dict[str, Any]:  # fmt: skip
    wheel_remote = f"current/{WHEEL_DIR}/{wheel.name}"
    ssh.run(sh_script(_VENV, remote_dir, config.remote_python, wheel_remote, sha256_file(wheel)),
            what="virtual environment set-up", timeout=600)  # fmt: skip
    fixed = (bundle.model.get("input_shape") or ["batch"])[0]
    argv = [
        "venv/bin/python", "-m", "edge_tl.deploy.remote_agent", "--bundle", "current", "--out", results,
        "--warmup", str(config.warmup), "--iterations", str(config.iterations),
        "--batch-size", str(fixed if isinstance(fixed, int) else config.batch_size),
    ]  # fmt: skip
    if config.threads is not None:
        argv += ["--threads", str(config.threads)]
    run = ssh.run(sh_script('cd -- "$1" && shift && exec "$@"', remote_dir, *argv), check=False,
                  what="evaluation and benchmark on the device", timeout=config.timeout_s)  # fmt: skip
    got = _fetch_many(ssh, f"{remote_dir}/{results}", ["build.log", "result.json", "bench.json", "logits.npy"], out)
    if run.returncode != 0:
        raise RemoteError(f"{ssh.endpoint}: the device agent failed (exit {run.returncode}): {run.stderr.strip()[-1500:]}")
    missing = {"result.json", "bench.json", "logits.npy"} - set(got)
    if missing:
        raise RemoteError(f"{ssh.endpoint}: the device agent finished but wrote no {', '.join(sorted(missing))}")
    device = json.loads((out / "result.json").read_text(encoding="utf-8"))
    return {
        "artifact": device["artifact"],
        "kind": device["kind"],
        "backend": device["backend"],
        "latency": device["latency"],
        "gpu_compute": device.get("gpu_compute"),
        "end_to_end": device.get("end_to_end"),
        "device_accuracy": device["accuracy"],
        "edge_tl_module": device["edge_tl"]["module"],
    }


def _trtexec_mode(ssh: SshTransport, *, remote_dir: str, results: str, probe: DeviceProbe, config: DeployConfig,
                  bundle: Bundle, target: Target, out: Path) -> dict[str, Any]:  # fmt: skip
    import numpy as np

    from edge_tl.compile.trtexec_flags import bench_command
    from edge_tl.runtime.trtexec import parse_log, to_bench_results
    from edge_tl.targets import TrtVersion

    plan = bundle.build_plan
    if plan is None:
        raise ConfigError(f"target {target.name!r} runs ONNX Runtime: trtexec mode does not apply; use --mode python")
    trtexec = probe.trtexec or "trtexec"
    build = ssh.run(
        sh_script('cd -- "$1" && (cd current && TRTEXEC="$2" bash "$3") > "$4" 2>&1', remote_dir, trtexec,
                  plan["script"], f"{results}/build.log"),
        check=False, what="engine build", timeout=config.timeout_s,
    )  # fmt: skip
    _fetch(ssh, f"{remote_dir}/{results}/build.log", out / "build.log", required=False)
    if build.returncode != 0:
        tail = "\n".join((out / "build.log").read_text(errors="replace").splitlines()[-12:]) if (out / "build.log").exists() else ""
        raise RemoteError(f"{ssh.endpoint}: the engine build failed (exit {build.returncode}); log in {out / 'build.log'}:\n{tail}")

    model = bundle.model
    shape = model["input_shape"]
    chw = (int(shape[1]), int(shape[2]), int(shape[3]))
    dynamic = not isinstance(shape[0], int)
    engine = f"current/{plan['engine']}"
    version = TrtVersion.parse(plan["tensorrt"])
    times = f"{results}/times.json"
    argv = bench_command(engine, version, input_name=model["input_name"], chw=chw,
                         batch=config.batch_size if dynamic else None, export_times=times,
                         iterations=config.iterations, trtexec=trtexec)  # fmt: skip
    timed = ssh.run(sh_script('cd -- "$1" && shift && exec "$@" 2>&1', remote_dir, *argv), check=False,
                    what="trtexec timing", timeout=config.timeout_s)  # fmt: skip
    atomic_write_bytes(out / "trtexec_bench.log", timed.stdout)
    parsed = parse_log(timed.text)
    if timed.returncode != 0 or not parsed.passed:
        raise RemoteError(f"{ssh.endpoint}: trtexec timing failed (exit {timed.returncode}); log in {out / 'trtexec_bench.log'}")
    times_local = out / "trtexec_times.json"
    records = json.loads(times_local.read_text()) if _fetch(ssh, f"{remote_dir}/{times}", times_local, required=False) else None
    batch = config.batch_size if dynamic else int(shape[0])
    bench = to_bench_results(parsed, batch_size=batch, times=records)
    bench_json = {
        "target": f"{engine} on {probe.host}",
        "created": now_iso(),
        "runner": {"name": f"engine-{target.name}-{bundle.precision.value}", "backend": "trtexec", "device": "cuda",
                   "clock": "trtexec", "argv": argv},
        "results": [bench["gpu_compute"].to_dict()],
        "gpu_compute": bench["gpu_compute"].to_dict(),
        "end_to_end": bench["end_to_end"].to_dict(),
        "source": bench["source"],
        "trtexec": bench["trtexec"],
        "environment": {"probe": probe.to_dict()},
    }  # fmt: skip
    atomic_write_json(out / "bench.json", bench_json)

    pack = EvalPack.load(bundle.root / bundle.manifest["eval"]["dir"])
    logits = []
    for chunk in pack.chunks:
        exported = f"{results}/out-{chunk.file}.json"
        cmd = [trtexec, f"--loadEngine={engine}"]
        if dynamic:
            cmd.append(f"--shapes={model['input_name']}:{chunk.count}x{chw[0]}x{chw[1]}x{chw[2]}")
        cmd += [f"--loadInputs={model['input_name']}:current/{bundle.manifest['eval']['dir']}/{chunk.file}",
                f"--exportOutput={exported}", "--iterations=1", "--warmUp=0", "--duration=0", "--avgRuns=1"]  # fmt: skip
        ran = ssh.run(sh_script('cd -- "$1" && shift && exec "$@" 2>&1', remote_dir, *cmd), check=False,
                      what=f"trtexec on {chunk.file}", timeout=config.timeout_s)  # fmt: skip
        if ran.returncode != 0:
            raise RemoteError(f"{ssh.endpoint}: trtexec failed on {chunk.file}: {ran.text.strip()[-800:]}")
        data = ssh.run(["cat", "--", f"{remote_dir}/{exported}"], what=f"fetch of {exported}").stdout
        logits.append(_exported_logits(data, output=model.get("output_name"), count=chunk.count, where=exported))
    np.save(out / "logits.npy", np.concatenate(logits).astype(np.float32), allow_pickle=False)
    e2e = bench["end_to_end"]
    return {
        "artifact": f"engine-{target.name}-{bundle.precision.value}",
        "kind": "engine",
        "backend": "tensorrt (trtexec)",
        "latency": e2e.to_dict(),
        "gpu_compute": bench["gpu_compute"].to_dict(),
        "end_to_end": e2e.to_dict(),
    }


def _exported_logits(data: bytes, *, output: str | None, count: int, where: str) -> Any:
    """Logits from a ``trtexec --exportOutput`` JSON: ``[{"name", "dimensions": "NxC", "values": [...]}]``."""
    import numpy as np

    try:
        tensors = json.loads(data)
        chosen = next((t for t in tensors if t.get("name") == output), tensors[0] if len(tensors) == 1 else None)
        if chosen is None:
            raise KeyError(output)
        values = np.asarray(chosen["values"], dtype=np.float32)
    except (json.JSONDecodeError, KeyError, TypeError, IndexError, ValueError) as exc:
        raise RemoteError(f"{where} is not trtexec --exportOutput JSON with output {output!r} ({exc})") from exc
    if values.size % count:
        raise RemoteError(f"{where}: {values.size} values cannot be {count} rows of logits")
    return values.reshape(count, -1)


def _score(out: Path, pack: EvalPack, reference: Reference) -> dict[str, Any]:
    import numpy as np

    from edge_tl.verify.metrics import AccuracyAccumulator, AgreementAccumulator

    logits = np.load(out / "logits.npy", allow_pickle=False)
    labels = np.asarray(pack.labels, dtype=np.int64)
    if logits.shape[0] != labels.shape[0]:
        raise RemoteError(f"the device returned {logits.shape[0]} rows of logits for {labels.shape[0]} images")
    acc = AccuracyAccumulator()
    acc.update(logits, labels)
    scores: dict[str, Any] = {"accuracy": acc.result().to_dict()}
    for key, ref in (("original", reference.original), ("local", reference.local)):
        if ref is None:
            continue
        ref_acc = AccuracyAccumulator()
        ref_acc.update(ref, labels)
        agree = AgreementAccumulator()
        agree.update(ref, logits)
        scores[key] = {"accuracy": ref_acc.result().to_dict(), "agreement": agree.result().to_dict()}
    return scores


def _record(run: Run, result_path: Path, entry: dict[str, Any], *, label: str, details: dict[str, Any],
            metrics: dict[str, Any]) -> None:  # fmt: skip
    """Merge ``entry`` into ``deploy/<label>/accuracy.json`` and record the artifact (thread-safe)."""
    with _MANIFEST_LOCK:
        existing: dict[str, Any] = {"host": label, "results": []}
        if result_path.is_file():
            try:
                existing = json.loads(result_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                pass
        kept = [r for r in existing.get("results", []) if r.get("artifact") != entry["artifact"]]
        atomic_write_json(result_path, {"host": label, "results": [*kept, entry]})
        run.reload()
        run.add_artifact(f"deploy-{label}", kind="deploy-result", path=result_path, stage=STAGE,
                         precision=entry["precision"], details=details, metrics=metrics)  # fmt: skip


def deploy_host(
    run: Run,
    host: str | SshEndpoint,
    config: DeployConfig,
    *,
    bundle: Bundle,
    reference: Reference,
    wheel: Path | None,
    name: str | None = None,
    say: Callable[[str], None] = lambda _msg: None,
) -> DeployResult:
    """Deploy a prepared bundle to one device and record the results (raises on failure)."""
    endpoint = host if isinstance(host, SshEndpoint) else SshEndpoint.parse(host)
    label = name or endpoint.label
    target = load_target(config.target)
    out = run.path("deploy", label)
    out.mkdir(parents=True, exist_ok=True)
    remote_dir = check_remote_dir(config.remote_dir or f"edge-tl/{run.root.resolve().name}")
    with SshTransport(endpoint, config.ssh) as ssh:
        probe = probe_device(ssh, python=config.remote_python, remote_dir=remote_dir)
        atomic_write_json(out / "probe.json", {"probed": now_iso(), **probe.to_dict()})
        say(probe.summary())
        mode = choose_mode(config.mode, probe, target)
        need_mb = sum(size for _, size in bundle.files.values()) * 3 // (1 << 20) + 200  # bundle + engine + venv
        problems = check_probe(probe, target, need_mb=need_mb, python=mode is Mode.PYTHON)
        if problems and config.check_device:
            raise RemoteError(
                f"{label} does not match target {target.name!r}:\n  - " + "\n  - ".join(problems)
                + "\n(recorded in " + str(out / "probe.json") + "; pass --no-device-check to deploy anyway)"
            )
        files = dict(bundle.files)
        digest = bundle.digest
        if mode is Mode.PYTHON:
            if wheel is None:
                raise ConfigError("python mode needs the edge-tl wheel; build one with build_wheel() or pass --wheel")
            files[f"{WHEEL_DIR}/{wheel.name}"] = (sha256_file(wheel), wheel.stat().st_size)
            digest = sha256_text(digest + files[f"{WHEEL_DIR}/{wheel.name}"][0])
        root = _staging_view(bundle.root, wheel if mode is Mode.PYTHON else None)
        try:
            report: SyncReport = sync_bundle(ssh, root, files, digest=digest[:32], remote_dir=remote_dir)
        finally:
            if root != bundle.root:
                shutil.rmtree(root, ignore_errors=True)
        say(report.summary())
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        results = f"results/{stamp}"
        ssh.run(sh_script(_NEW_RESULTS, remote_dir, stamp), what="results directory")
        locked = config.lock_clocks and probe.has_tool("jetson_clocks")
        if locked:
            ssh.run(sh_script(_CLOCKS, remote_dir, "lock", stamp), what="jetson_clocks", check=True)
        sampling = config.tegrastats and probe.has_tool("tegrastats")
        if sampling:
            started = ssh.run(sh_script(_TEGRASTATS_START, remote_dir, stamp), check=False, what="tegrastats start")
            if started.returncode != 0:
                log.warning("%s: tegrastats did not start (%s); no power/temperature record", label, started.stderr.strip())
                sampling = False
        try:
            if mode is Mode.PYTHON:
                measured = _python_mode(ssh, remote_dir=remote_dir, results=results, wheel=wheel,  # type: ignore[arg-type]
                                        config=config, bundle=bundle, out=out)  # fmt: skip
            else:
                measured = _trtexec_mode(ssh, remote_dir=remote_dir, results=results, probe=probe, config=config,
                                         bundle=bundle, target=target, out=out)  # fmt: skip
        finally:
            if sampling:
                ssh.run(["tegrastats", "--stop"], check=False, what="tegrastats stop")
            if locked:
                ssh.run(sh_script(_CLOCKS, remote_dir, "restore", stamp), what="jetson_clocks restore", check=False)
        power = None
        if sampling and _fetch_many(ssh, f"{remote_dir}/{results}", ["tegrastats.log"], out):
            power = summarize_tegrastats((out / "tegrastats.log").read_text(encoding="utf-8", errors="replace"))
            atomic_write_json(out / "tegrastats.json", power)

    pack = EvalPack.load(bundle.root / bundle.manifest["eval"]["dir"])
    scores = _score(out, pack, reference)
    accuracy = scores["accuracy"]
    latency = measured["latency"]
    original, local = scores.get("original"), scores.get("local")
    entry = {
        "artifact": measured["artifact"],
        "kind": measured["kind"],
        "precision": bundle.precision.value,
        "backend": measured["backend"],
        "mode": mode.value,
        "host": label,
        "target": target.name,
        "num_images": accuracy["num_images"],
        "top1": accuracy["top1"],
        "top5": accuracy["top5"],
        "reference_top1": original["accuracy"]["top1"] if original else None,
        "local_onnxruntime_top1": local["accuracy"]["top1"] if local else None,
        "top1_agreement": original["agreement"]["top1_agreement"] if original else None,
        "mean_kl": original["agreement"]["mean_kl"] if original else None,
        "max_abs_diff": original["agreement"]["max_abs_diff"] if original else None,
        "local_onnxruntime_agreement": local["agreement"]["top1_agreement"] if local else None,
        "latency_ms": {"p50": latency["p50_ms"], "p99": latency["p99_ms"], "batch_size": latency["batch_size"]},
        "throughput_ips": latency["throughput_ips"],
        "size_bytes": bundle.files[bundle.model["path"]][1],
        "bundle_digest": bundle.digest,
        "power_mean_mw": power["total_power_mean_mw"] if power else None,
        "hottest_c": power["hottest_c"] if power else None,
        **named_latencies(measured, power["total_power_mean_mw"] if power else None),
        "jetpack": probe.jetpack,
        "tensorrt": probe.tensorrt,
        "measured": now_iso(),
    }
    result_path = out / ACCURACY_FILE
    details = {"target": target.name, "mode": mode.value, "backend": measured["backend"], "remote_dir": remote_dir,
               "bundle_digest": bundle.digest, "device": probe.summary(), "sync": report.summary()}  # fmt: skip
    metrics = {"top1": entry["top1"], "reference_top1": entry["reference_top1"], "p50_ms": latency["p50_ms"],
               "p99_ms": latency["p99_ms"], "throughput_ips": latency["throughput_ips"]}  # fmt: skip
    _record(run, result_path, entry, label=label, details=details, metrics=metrics)
    return DeployResult(
        host=str(endpoint), label=label, target=target.name, precision=bundle.precision.value, status="ok",
        mode=mode.value, backend=measured["backend"], jetpack=probe.jetpack, tensorrt=probe.tensorrt,
        p50_ms=latency["p50_ms"], p99_ms=latency["p99_ms"], throughput_ips=latency["throughput_ips"],
        top1=entry["top1"], reference_top1=entry["reference_top1"], local_top1=entry["local_onnxruntime_top1"],
        top1_agreement=entry["top1_agreement"], result_dir=run.relpath(out), sync=report.to_dict(),
    )  # fmt: skip


def sha256_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def _staging_view(bundle_root: Path, wheel: Path | None) -> Path:
    """The bundle directory, or (with a wheel) a temporary tree of links to it plus the wheel."""
    if wheel is None:
        return bundle_root
    view = Path(tempfile.mkdtemp(prefix="etl-bundle-"))
    for path in bundle_root.rglob("*"):
        if path.is_file():
            dest = view / path.relative_to(bundle_root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, dest)
            except OSError:  # another file system: copy
                shutil.copyfile(path, dest)
    (view / WHEEL_DIR).mkdir()
    shutil.copyfile(wheel, view / WHEEL_DIR / wheel.name)
    return view


def deploy(
    run: Run | str | os.PathLike[str],
    host: str,
    config: DeployConfig,
    *,
    name: str | None = None,
    say: Callable[[str], None] = lambda _msg: None,
) -> DeployResult:
    """Bundle ``run`` for ``config.target``/``config.precision`` and deploy it to ``host`` (raises on failure)."""
    run = run if isinstance(run, Run) else Run.open(run)
    target = load_target(config.target)
    precision = target.check_precision(config.precision)
    bundle = prepare_bundle(run, target, precision, eval_images=config.eval_images, tensorrt=config.tensorrt)
    say(f"bundle {bundle.root} ({len(bundle.files)} files, digest {bundle.digest[:12]})")
    reference = compute_reference(run, bundle)
    with tempfile.TemporaryDirectory(prefix="etl-wheel-") as tmp:
        wheel = config.wheel if config.wheel is not None else (build_wheel(tmp) if config.mode is not Mode.TRTEXEC else None)
        return deploy_host(run, host, config, bundle=bundle, reference=reference, wheel=wheel, name=name, say=say)

