"""Device modes: how a bundle is built, timed and evaluated on the device.

One seam: a mode is given a :class:`DeviceSession` (the connection, the published
bundle, the device's results folder and a local folder for what comes back) and
returns a :class:`Measurement`. Everything a mode brings back lands in
``session.incoming``; the caller moves it into the run only once the mode succeeded,
so a failed or interrupted measurement never replaces the previous result.

- *python*: the edge-tl wheel in a virtual environment on the device runs
  :mod:`edge_tl.deploy.remote_agent` (ONNX Runtime, or TensorRT's Python package);
- *trtexec*: the bundle's build plan builds the engine, trtexec times it and runs the
  evaluation pack (``--loadInputs`` / ``--exportOutput``); the logits are scored here.

Every long command runs as a device job (:mod:`edge_tl.deploy.jobs`): once, even when
the link drops, and stopped on the device when it runs past the time limit.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from edge_tl.deploy import record
from edge_tl.deploy.bundle import Bundle
from edge_tl.deploy.config import LOGITS, WHEEL_DIR, DeployConfig, Mode
from edge_tl.deploy.evalpack import EvalPack
from edge_tl.deploy.jobs import job_name, run_job
from edge_tl.deploy.probe import DeviceProbe
from edge_tl.deploy.record import DeviceValueError
from edge_tl.deploy.ssh import SshTransport, sh_script
from edge_tl.errors import ConfigError, RemoteError
from edge_tl.runs import atomic_write_bytes, atomic_write_json, now_iso, sha256_file
from edge_tl.targets import Target

# A results log brought back keeps this many bytes at each end; a JSON file can be at most DATA_CAP
# (trtexec's --exportTimes of a long timing run is the largest, a few MB).
LOG_KEEP = 4 << 20
DATA_CAP = 64 << 20


@dataclass(frozen=True)
class Measurement:
    """What a mode measured on the device. The logits are in ``incoming/logits.npy``."""

    artifact: str  # the run artifact measured (the ONNX, or the engine built from it)
    kind: str  # "onnx" or "engine"
    backend: str
    p50_ms: float
    p99_ms: float
    throughput_ips: float
    batch_size: int
    # The named latencies of edge_tl.bench.latency (latency-statistics dicts); None where the backend does not know one.
    gpu_compute: dict[str, Any] | None = None
    end_to_end: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Every number a device reports is checked here, before anything it brought back replaces a result.
        where = f"the {self.backend!r} measurement"
        record.headline(
            {"p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "throughput_ips": self.throughput_ips,
             "batch_size": self.batch_size},
            where=where,
        )  # fmt: skip
        for key in ("gpu_compute", "end_to_end"):
            record.optional_latency_stats(getattr(self, key), where=f"{where} {key}")


def device_layer_report(session: "DeviceSession") -> dict[str, Any] | None:
    """The per-layer report of the engine the device built, from the layer information and build log it
    brought back (``None`` for an ONNX Runtime measurement or a plan that writes no layer information)."""
    from edge_tl.trt.layers import summarize_build

    plan = session.bundle.build_plan
    info = session.incoming / "layers.json"
    if plan is None or not info.is_file():
        return None
    log = session.incoming / "build.log"
    batch = plan.get("batch") or {}
    return summarize_build(
        info.read_text(encoding="utf-8"),
        where=f"the device's {plan.get('layers')}",
        build_log=log.read_text(encoding="utf-8", errors="replace") if log.is_file() else "",
        precision=str(plan.get("precision") or session.bundle.precision.value),
        dla=plan.get("dla_core") is not None,
        recipe=plan.get("recipe"),
        kept_float=tuple(plan.get("kept_float") or ()),
        predicted_gpu_ops=plan.get("gpu_fallback_ops"),
        onnx_path=session.bundle.root / session.bundle.model["path"],
        batch=int(batch.get("opt", 1)),
        source=f"trtexec --exportLayerInfo on {session.probe.host}",
    )


@dataclass(frozen=True)
class DeviceSession:
    ssh: SshTransport
    remote_dir: str
    results: str  # the device's results folder of this deploy, relative to remote_dir
    stamp: str
    incoming: Path  # local folder for what is brought back
    failed: Path  # where ``incoming`` is kept when the measurement fails (error messages point there)
    probe: DeviceProbe
    config: DeployConfig
    bundle: Bundle
    target: Target
    wheel: Path | None

    def job(self, name: str, argv: list[str], *, what: str) -> Any:
        return run_job(
            self.ssh, self.remote_dir, job_name(self.stamp, name), argv, timeout=self.config.timeout_s, what=what
        )

    def fetch(self, names: list[str]) -> list[str]:
        """Bring back the files ``names`` of the results folder that exist (one tar stream) into ``incoming``.

        Only the expected names are taken from the archive and written under our own
        paths, so nothing the device sends can choose where a file lands here. Each file
        has a size cap (:meth:`cap`): a log past it keeps its head and tail (cut on the
        device), a data file past it is refused; the stream goes to disk, not to memory.
        """
        caps = {name: self.cap(name) for name in names}
        script = r"""
cd -- "$1" && k=$2 && shift 2 && for f; do
  [ -f "$f" ] || continue
  case "$f" in *.log)
    n=$(wc -c < "$f" | tr -d ' ')
    if [ "$n" -gt $((2 * k)) ]; then
      { head -c "$k" -- "$f"; printf '\n[edge-tl: %d bytes of the device'"'"'s output were dropped here]\n' \
        $((n - 2 * k)); tail -c "$k" -- "$f"; } > "$f.cut" && mv -f -- "$f.cut" "$f"
    fi ;;
  esac
  printf "%s\n" "$f"
done | tar -c -f - -T -
"""
        written = []
        with tempfile.TemporaryFile(dir=self.incoming) as stream:
            self.ssh.run(
                sh_script(script, f"{self.remote_dir}/{self.results}", str(LOG_KEEP), *names),
                what="fetch of the results",
                limit=sum(caps.values()) + 512 * (len(names) + 4),  # tar's headers and end blocks
                sink=stream,
            )
            stream.seek(0)
            try:
                with tarfile.open(fileobj=stream, mode="r:") as tar:
                    for member in tar.getmembers():
                        if member.name not in names or not member.isfile():
                            continue
                        if member.size > caps[member.name]:
                            raise RemoteError(
                                f"{self.ssh.endpoint}: {member.name} from the device is {member.size} bytes, more "
                                f"than the {caps[member.name]} it can be; nothing was replaced"
                            )
                        fh = tar.extractfile(member)
                        if fh is not None:
                            _copy_in(fh, self.incoming / member.name)
                            written.append(member.name)
            except tarfile.TarError as exc:
                raise RemoteError(f"{self.ssh.endpoint}: the results sent back are not a tar stream ({exc})") from exc
        return written

    def cap(self, name: str) -> int:
        """The most bytes the results file ``name`` can hold."""
        if name == LOGITS:  # rows x classes, float64 at most, and the .npy header
            ev = self.bundle.manifest["eval"]
            return int(ev["num_images"]) * int(ev["classes"]) * 8 + (1 << 16)
        if name.endswith(".log"):
            return 2 * LOG_KEEP + 256
        return DATA_CAP


def _copy_in(fh: IO[bytes], dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.part")
    with open(tmp, "wb") as out:
        shutil.copyfileobj(fh, out)
    os.replace(tmp, dest)


class DeviceMode(Protocol):
    def measure(self, session: DeviceSession) -> Measurement: ...


def _read_json(path: Path, *, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RemoteError(f"{what} from the device is not valid JSON ({exc})") from exc


def parse_device_result(data: Any, *, where: str) -> dict[str, Any]:
    """A ``result.json`` of the device agent, every field deploy reads typed and every number checked
    (:mod:`edge_tl.deploy.record`); one :class:`~edge_tl.deploy.record.DeviceValueError` otherwise."""
    if not isinstance(data, dict):
        raise DeviceValueError(f"{where} from the device is not a JSON object")
    for key in ("artifact", "kind", "backend"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise DeviceValueError(
                f"{where} from the device has no {key!r}; the device's edge-tl may differ from this one"
            )
        record.text(data, key, where=where)
    record.headline(data.get("latency"), where=f"{where} latency")
    for key in ("gpu_compute", "end_to_end"):
        record.optional_latency_stats(data.get(key), where=f"{where} {key}")
    about = data.get("edge_tl")
    if about is not None and (not isinstance(about, dict) or not isinstance(about.get("module", ""), str)):
        raise DeviceValueError(f"{where} from the device has an 'edge_tl' field that is not {{'module': str}}")
    return data


# The engine builds' timing cache lives in the device folder, outside releases/ (a publish replaces
# those), keyed by target and TensorRT release in its file name (compile.plan.timing_cache_path), so
# the next build on this device reuses the tactics timed by the last one. Never through a symlink.
# The variable is build_engine.sh's (edge_tl.compile.plan.TIMING_CACHE_ENV).
_TIMING_CACHE = r"""
if [ -L timing-cache ]; then echo "timing-cache is a symbolic link: edge-tl does not follow it" >&2; exit 6; fi
mkdir -p timing-cache || exit 6
EDGE_TL_TIMING_CACHE_DIR="$(pwd -P)/timing-cache"; export EDGE_TL_TIMING_CACHE_DIR
"""


# --------------------------------------------------------------------------- python mode

# $1 dir, $2 python, $3 wheel, $4 wheel sha. A venv interpreter is used through a link to its
# site-packages (our venv's base is that venv's base interpreter, which cannot see them).
_VENV = r"""
cd -- "$1" || exit 1; py="$2"; wheel="$3"; sha="$4"
base=$("$py" -c 'import sys; print(sys.base_prefix)' 2>/dev/null) ||
  { echo "$py does not run on the device" >&2; exit 4; }
if [ "$(cat venv/.edge-tl-python 2>/dev/null)" != "$py" ]; then rm -rf venv; fi
if [ ! -x venv/bin/python ]; then
  "$py" -m venv --system-site-packages --without-pip venv ||
    { echo "cannot create a venv with $py: install python3-venv" >&2; exit 4; }
  printf '%s\n' "$py" > venv/.edge-tl-python
fi
user_site=$("$py" -c 'import site, sys
print("\n".join(site.getsitepackages()) if sys.prefix != sys.base_prefix else "")')
own_site=$(venv/bin/python -c 'import site; print(site.getsitepackages()[0])')
if [ -n "$user_site" ]; then
  printf '%s\n' "$user_site" > "$own_site/edge-tl-user-venv.pth"
else
  rm -f "$own_site/edge-tl-user-venv.pth"
fi
if [ "$(cat venv/.edge-tl-wheel 2>/dev/null)" != "$sha" ]; then
  venv/bin/python -m pip install --quiet --no-deps --no-index --force-reinstall --disable-pip-version-check \
    "$wheel" >&2 || exit 5
  echo "$sha" > venv/.edge-tl-wheel
fi
venv/bin/python -c 'import edge_tl, sys; print(edge_tl.__version__, edge_tl.__file__)'
"""


class PythonMode:
    def measure(self, session: DeviceSession) -> Measurement:
        import numpy as np

        ssh, config, bundle = session.ssh, session.config, session.bundle
        if session.wheel is None:
            raise ConfigError("python mode needs the edge-tl wheel; build one with build_wheel() or pass --wheel")
        wheel_remote = f"current/{WHEEL_DIR}/{session.wheel.name}"
        ssh.run(
            sh_script(_VENV, session.remote_dir, config.remote_python, wheel_remote, sha256_file(session.wheel)),
            what="virtual environment set-up",
            timeout=600,
        )
        fixed = (bundle.model.get("input_shape") or ["batch"])[0]
        argv = [
            "venv/bin/python",
            "-m",
            "edge_tl.deploy.remote_agent",
            "--bundle",
            "current",
            "--out",
            session.results,
            "--warmup",
            str(config.warmup),
            "--iterations",
            str(config.iterations),
            "--batch-size",
            str(fixed if isinstance(fixed, int) else config.batch_size),
        ]
        if config.threads is not None:
            argv += ["--threads", str(config.threads)]
        if bundle.build_plan is not None:  # the agent builds an engine with the plan: give it the device's cache
            argv = sh_script(_TIMING_CACHE + 'exec "$@"', *argv)
        ran = session.job("agent", argv, what="evaluation and benchmark on the device")
        got = session.fetch(["build.log", "result.json", "bench.json", LOGITS, "layers.json"])
        if ran.returncode != 0:
            lines = [ln for ln in ran.stderr.strip().splitlines() if ln.strip()]
            raise RemoteError(
                f"{ssh.endpoint}: the device agent failed (exit {ran.returncode}): " + " | ".join(lines[-6:])
            )
        missing = {"result.json", "bench.json", LOGITS} - set(got)
        if missing:
            raise RemoteError(f"{ssh.endpoint}: the device agent finished but wrote no {', '.join(sorted(missing))}")
        device = parse_device_result(
            _read_json(session.incoming / "result.json", what="result.json"), where="result.json"
        )
        classes = int(bundle.manifest["eval"]["classes"])
        try:
            logits = np.load(session.incoming / LOGITS, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise RemoteError(f"{ssh.endpoint}: {LOGITS} from the device is not a numpy array ({exc})") from exc
        record.check_logits(
            logits, classes=classes, rows=int(bundle.manifest["eval"]["num_images"]), where=str(ssh.endpoint)
        )
        latency = device["latency"]
        return Measurement(
            artifact=device["artifact"],
            kind=device["kind"],
            backend=device["backend"],
            p50_ms=float(latency["p50_ms"]),
            p99_ms=float(latency["p99_ms"]),
            throughput_ips=float(latency["throughput_ips"]),
            batch_size=int(latency["batch_size"]),
            gpu_compute=device.get("gpu_compute"),
            end_to_end=device.get("end_to_end"),
            details={
                "edge_tl_module": (device.get("edge_tl") or {}).get("module"),
                "layer_report": device_layer_report(session),
            },
        )


# --------------------------------------------------------------------------- trtexec mode


class TrtexecMode:
    def measure(self, session: DeviceSession) -> Measurement:
        import numpy as np

        from edge_tl.bench.trtexec import parse_log, timing_truth, to_bench_results, warmup_ms
        from edge_tl.compile.trtexec_flags import bench_command, timing_flags
        from edge_tl.targets import TrtVersion

        ssh, config, bundle, target, results = (
            session.ssh,
            session.config,
            session.bundle,
            session.target,
            session.results,
        )
        incoming = session.incoming
        plan = bundle.build_plan
        if plan is None:
            raise ConfigError(
                f"target {target.name!r} runs {target.default_runtime.label}: trtexec mode does not apply; "
                "use --mode python"
            )
        trtexec = session.probe.trtexec or "trtexec"
        log_here = session.failed / "build.log"
        try:
            build = session.job(
                "build",
                sh_script(
                    # The engine's layer information goes into the results beside the log (when the plan writes it).
                    _TIMING_CACHE + '(cd current && TRTEXEC="$1" bash "$2") > "$3" 2>&1; rc=$?; '
                    'if [ -n "$4" ] && [ -f "current/$4" ]; then cp -- "current/$4" "$5"; fi; exit "$rc"',
                    trtexec,
                    plan["script"],
                    f"{results}/build.log",
                    plan.get("layers") or "",
                    f"{results}/layers.json",
                ),
                what="engine build",
            )
        except RemoteError as exc:
            # A build stopped at the time limit: its log so far says how far it got. A fetch that
            # fails too (the link is down) must not hide why the build ended.
            try:
                kept = session.fetch(["build.log"])
            except RemoteError:
                kept = []
            if kept:
                raise RemoteError(f"{exc} The build's log so far is in {log_here}") from exc
            raise
        session.fetch(["build.log", "layers.json"])
        if build.returncode != 0:
            log_path = incoming / "build.log"
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-12:]) if log_path.exists() else ""
            raise RemoteError(
                f"{ssh.endpoint}: the engine build failed (exit {build.returncode}); log in {log_here}:\n{tail}"
            )

        model = bundle.model
        shape = model["input_shape"]
        chw = (int(shape[1]), int(shape[2]), int(shape[3]))
        dynamic = not isinstance(shape[0], int)
        engine = f"current/{plan['engine']}"
        version = TrtVersion.parse(plan["tensorrt"])
        times = f"{results}/times.json"
        argv = bench_command(
            engine,
            version,
            input_name=model["input_name"],
            chw=chw,
            batch=config.batch_size if dynamic else None,
            export_times=times,
            iterations=config.iterations,
            dla_core=plan.get("dla_core"),
            trtexec=trtexec,
        )
        timed = session.job("timing", sh_script('exec "$@" 2>&1', *argv), what="trtexec timing")
        atomic_write_bytes(incoming / "trtexec_bench.log", timed.stdout)
        parsed = parse_log(timed.text)
        if timed.returncode != 0 or not parsed.passed:
            raise RemoteError(
                f"{ssh.endpoint}: trtexec timing failed (exit {timed.returncode}); "
                f"log in {session.failed / 'trtexec_bench.log'}"
            )
        records = None
        if session.fetch(["times.json"]):
            records = _read_json(incoming / "times.json", what="trtexec's --exportTimes file")
            (incoming / "times.json").rename(incoming / "trtexec_times.json")
        batch = config.batch_size if dynamic else int(shape[0])
        # Before 8.5 the --exportTimes file holds the warm-up queries too: the command's --warmUp drops them.
        bench = to_bench_results(parsed, batch_size=batch, times=records, warmup_ms=warmup_ms(argv))
        atomic_write_json(
            incoming / "bench.json",
            {
                "target": f"{engine} on {session.probe.host}",
                "created": now_iso(),
                "runner": {
                    "name": f"engine-{target.name}-{bundle.precision.value}",
                    "backend": "trtexec",
                    "device": "cuda",
                    "clock": "trtexec",
                    "argv": argv,
                    "timing": timing_truth(
                        timing_flags(version, cuda_graph=True, dla=plan.get("dla_core") is not None)[1],
                        [bench["trtexec"]],
                    ),
                },
                "results": [bench["gpu_compute"].to_dict()],
                "gpu_compute": bench["gpu_compute"].to_dict(),
                "end_to_end": bench["end_to_end"].to_dict(),
                "source": bench["source"],
                "trtexec": bench["trtexec"],
                "environment": {"probe": session.probe.to_dict()},
            },
        )

        pack = EvalPack.load(bundle.root / bundle.manifest["eval"]["dir"])
        classes = int(bundle.manifest["eval"]["classes"])
        logits = []
        for chunk in pack.chunks:
            exported = f"{results}/out-{chunk.file}.json"
            cmd = [trtexec, f"--loadEngine={engine}"]
            if dynamic:
                cmd.append(f"--shapes={model['input_name']}:{chunk.count}x{chw[0]}x{chw[1]}x{chw[2]}")
            cmd += [
                f"--loadInputs={model['input_name']}:current/{bundle.manifest['eval']['dir']}/{chunk.file}",
                f"--exportOutput={exported}",
                "--iterations=1",
                "--warmUp=0",
                "--duration=0",
                "--avgRuns=1",
            ]
            ran = session.job(f"eval-{chunk.file}", sh_script('exec "$@" 2>&1', *cmd), what=f"trtexec on {chunk.file}")
            if ran.returncode != 0:
                raise RemoteError(f"{ssh.endpoint}: trtexec failed on {chunk.file}: {ran.text.strip()[-800:]}")
            data = ssh.run(
                ["cat", "--", f"{session.remote_dir}/{exported}"],
                what=f"fetch of {exported}",
                limit=chunk.count * classes * 64 + (1 << 20),  # a float as JSON text, and the names around
            ).stdout
            logits.append(
                exported_logits(
                    data, output=model.get("output_name"), count=chunk.count, classes=classes, where=exported
                )
            )
        np.save(incoming / LOGITS, np.concatenate(logits).astype(np.float32), allow_pickle=False)
        e2e = bench["end_to_end"]
        layer_report = device_layer_report(session)
        return Measurement(
            artifact=f"engine-{target.name}-{bundle.precision.value}",
            kind="engine",
            backend="tensorrt (trtexec)",
            p50_ms=e2e.p50_ms,
            p99_ms=e2e.p99_ms,
            throughput_ips=e2e.throughput_ips,
            batch_size=e2e.batch_size,
            gpu_compute=bench["gpu_compute"].to_dict(),
            end_to_end=e2e.to_dict(),
            details={"layer_report": layer_report},
        )


def exported_logits(data: bytes, *, output: str | None, count: int, classes: int, where: str) -> Any:
    """Logits from a ``trtexec --exportOutput`` JSON: ``[{"name", "dimensions": "NxC", "values": [...]}]``."""
    import numpy as np

    try:
        tensors = json.loads(data)
        chosen = next((t for t in tensors if t.get("name") == output), tensors[0] if len(tensors) == 1 else None)
        if chosen is None:
            raise KeyError(output)
        with np.errstate(over="ignore"):  # a value past float32 becomes inf, refused below
            values = np.asarray(chosen["values"], dtype=np.float32)
    except (
        json.JSONDecodeError,
        UnicodeDecodeError,
        KeyError,
        TypeError,
        IndexError,
        ValueError,
        AttributeError,
    ) as exc:
        raise RemoteError(f"{where} is not trtexec --exportOutput JSON with output {output!r} ({exc})") from exc
    if values.size != count * classes:
        raise RemoteError(f"{where}: {values.size} values are not {count} rows of {classes} class logits")
    return record.check_logits(values.reshape(count, classes), classes=classes, rows=count, where=where)


MODES: dict[Mode, Callable[[], DeviceMode]] = {Mode.PYTHON: PythonMode, Mode.TRTEXEC: TrtexecMode}
