"""``deploy``: bundle a run, push it to a device over SSH, build and measure there, bring the truth back.

One device (:func:`deploy_host`):

1. probe the device (``deploy/<name>/probe.json``) and check it against the target;
2. take the device folder (``edge-tl/<run name>/<name>`` by default: one per device name)
   for this deploy alone: an flock on the device and one on ``deploy/<name>/`` here;
3. choose the mode the target's device runtime picks for the probed device (TensorRT:
   *python* when its Python package imports there, *trtexec* when only trtexec is there,
   else *python* with ONNX Runtime; ``--mode`` overrides among the modes that apply);
4. copy the bundle (resumable, verified, published atomically: :mod:`edge_tl.deploy.sync`);
5. measure through the mode (:mod:`edge_tl.deploy.modes`); what comes back is checked
   before it replaces anything in ``deploy/<name>/``;
6. score the logits here against the original model on the same evaluation pack, into
   one :class:`DeployResult`, from which ``accuracy.json``, the manifest record, the
   fleet table and the JSON output are all derived.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_tl.bench.latency import named_latencies
from edge_tl.deploy.bundle import Bundle, bundle_artifact_name, bundle_dir, make_bundle
from edge_tl.deploy.config import LOGITS, WHEEL_DIR, DeployConfig, Mode
from edge_tl.deploy.device_lock import hold_device_folder
from edge_tl.deploy.evalpack import EvalPack
from edge_tl.deploy.modes import MODES, DeviceSession, Measurement
from edge_tl.deploy.probe import DeviceProbe, check_probe, probe_device
from edge_tl.deploy.reference import Reference, compute_reference, sha256_text
from edge_tl.deploy.ssh import SshEndpoint, SshTransport, sh_script
from edge_tl.deploy.sync import NO_FOREIGN_LINKS, SyncReport, check_remote_dir, check_remote_status, sync_bundle
from edge_tl.deploy.tegrastats import summarize as summarize_tegrastats
from edge_tl.deploy.wheel import build_wheel, project_root, staging_view
from edge_tl.errors import ConfigError, EdgeTLError, RemoteError, RunError
from edge_tl.runs import Run, atomic_write_json, file_lock, now_iso, sha256_file
from edge_tl.targets import Precision, Target, load_target

__all__ = [
    "ACCURACY_FILE",
    "DeployConfig",
    "DeployResult",
    "Mode",
    "Reference",
    "build_wheel",
    "check_device_name",
    "choose_mode",
    "compute_reference",
    "default_remote_dir",
    "deploy",
    "deploy_host",
    "prepare_bundle",
    "project_root",
]

log = logging.getLogger("edge_tl.deploy")

STAGE = "deploy"
ACCURACY_FILE = "accuracy.json"  # read by edge_tl.verify.read_deploy_results (format in docs/design.md)
# Files a measurement brings back; each replaces the previous one only once the whole deploy succeeded.
FAILED_DIR = "failed"  # what the last failed measurement brought back (logs), apart from the good results
RESULT_FILES = (
    "build.log",
    "result.json",
    "bench.json",
    LOGITS,
    "trtexec_bench.log",
    "trtexec_times.json",
    "tegrastats.log",
    "tegrastats.json",
    "layers.json",
)
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


def check_device_name(name: str, *, where: str = "--name") -> str:
    """A device name labels ``deploy/<name>/`` here and its folder on the device: one plain path component."""
    if not _NAME.match(name) or name in (".", ".."):
        raise ConfigError(
            f"{where} {name!r} is not a device name: use letters, digits, '-', '_' and '.' (not first), so that "
            "deploy/<name>/ stays inside the run"
        )
    return name


def default_remote_dir(run_name: str, label: str) -> str:
    """The device folder of one device name: two names (two targets, or one host listed twice) never share one."""
    return f"edge-tl/{run_name}/{label}"


@dataclass(frozen=True)
class DeployResult:
    """One device's deploy, produced once.

    Its table row, JSON, ``accuracy.json`` entry and manifest record all derive from it.
    """

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
    artifact: str | None = None
    kind: str | None = None
    batch_size: int | None = None
    num_images: int | None = None
    top5: float | None = None
    mean_kl: float | None = None
    max_abs_diff: float | None = None
    local_agreement: float | None = None
    size_bytes: int | None = None
    bundle_digest: str | None = None
    power_mean_mw: float | None = None
    hottest_c: float | None = None
    clocks_locked: bool | None = None
    layer_report: dict[str, Any] | None = None  # the device-built engine's own per-layer summary
    # Against the original on the same images: images it got right that the device got wrong, and the
    # reverse; per class, the five rows of edge_tl.significance.PairedCounter.per_class.
    lost: int | None = None
    gained: int | None = None
    class_counts: list[list[int]] | None = None
    # The named latencies (edge_tl.bench.latency): the same fields bench and verify write.
    gpu_compute: dict[str, Any] | None = None
    end_to_end: dict[str, Any] | None = None
    energy_mj_per_image: float | None = None
    remote_dir: str | None = None
    device: str | None = None  # the probe's one-line summary
    measured: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def delta_top1_pts(self) -> float | None:
        if self.top1 is None or self.reference_top1 is None:
            return None
        return (self.top1 - self.reference_top1) * 100

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["warnings"] = list(self.warnings)
        out["delta_top1_pts"] = self.delta_top1_pts
        return out

    def accuracy_entry(self) -> dict[str, Any]:
        """This result as one entry of ``deploy/<name>/accuracy.json`` (format in docs/design.md)."""
        return {
            "artifact": self.artifact,
            "kind": self.kind,
            "precision": self.precision,
            "backend": self.backend,
            "mode": self.mode,
            "host": self.label,
            "target": self.target,
            "num_images": self.num_images,
            "top1": self.top1,
            "top5": self.top5,
            "reference_top1": self.reference_top1,
            "local_onnxruntime_top1": self.local_top1,
            "top1_agreement": self.top1_agreement,
            "mean_kl": self.mean_kl,
            "max_abs_diff": self.max_abs_diff,
            "local_onnxruntime_agreement": self.local_agreement,
            "latency_ms": {"p50": self.p50_ms, "p99": self.p99_ms, "batch_size": self.batch_size},
            "throughput_ips": self.throughput_ips,
            "size_bytes": self.size_bytes,
            "bundle_digest": self.bundle_digest,
            "power_mean_mw": self.power_mean_mw,
            "hottest_c": self.hottest_c,
            "clocks_locked": self.clocks_locked,
            "gpu_compute": self.gpu_compute,
            "end_to_end": self.end_to_end,
            "energy_mj_per_image": self.energy_mj_per_image,
            "jetpack": self.jetpack,
            "tensorrt": self.tensorrt,
            "measured": self.measured,
            "layer_report": self.layer_report,
            "lost": self.lost,
            "gained": self.gained,
            "class_counts": self.class_counts,
        }

    def manifest_details(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "mode": self.mode,
            "backend": self.backend,
            "remote_dir": self.remote_dir,
            "bundle_digest": self.bundle_digest,
            "device": self.device,
            "sync": self.sync.get("summary"),
        }

    def manifest_metrics(self) -> dict[str, Any]:
        return {
            "top1": self.top1,
            "reference_top1": self.reference_top1,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "throughput_ips": self.throughput_ips,
        }


# --------------------------------------------------------------------------- local preparation


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
                # Made for the same request: a pack smaller than asked is reused only when the
                # validation set itself had no more images.
                and bundle.manifest["eval"].get("requested", bundle.manifest["eval"]["num_images"]) == eval_images
                and (plan is None or tensorrt is None or plan["tensorrt"] == tensorrt)
            ):
                return bundle
        except (EdgeTLError, KeyError, OSError):
            pass  # stale or damaged: make it again
    return make_bundle(run, target=target, precision=precision, eval_images=eval_images, tensorrt=tensorrt)


# --------------------------------------------------------------------------- device steps

# Old results and finished jobs go; a job still running keeps the folder busy (device_lock).
# No foreign link in them (sync.NO_FOREIGN_LINKS), and a job folder is removed as itself (no
# trailing slash, which would make rm follow a link).
_NEW_RESULTS = (
    NO_FOREIGN_LINKS
    + r"""
cd -- "$1" && no_foreign_links || exit $?
rm -rf -- results && mkdir -p -- "results/$2" || exit 1
for j in jobs/*/; do j=${j%/}; [ -d "$j" ] && [ ! -L "$j" ] && [ -f "$j/rc" ] && rm -rf -- "$j"; done
exit 0
"""
)

# tegrastats runs in the background (--start) until --stop, logging every 500 ms.
_TEGRASTATS_START = r"""
cd -- "$1" && tegrastats --interval 500 --logfile "results/$2/tegrastats.log" --start
"""

# The clock settings are saved beside results/, never inside: a restore that failed (a
# dropped link) leaves them for the next deploy, which keeps the first saved settings
# instead of saving the locked clocks over them.
CLOCKS_FILE = "clocks.conf"
_CLOCKS = r"""
cd -- "$1" || exit 1
case "$2" in
  lock) { [ -f "$3" ] || sudo -n jetson_clocks --store "$3"; } && sudo -n jetson_clocks ;;
  restore) sudo -n jetson_clocks --restore "$3" && rm -f -- "$3" ;;
esac
"""


def choose_mode(requested: Mode, probe: DeviceProbe, target: Target) -> Mode:
    runtime = target.default_runtime
    if requested is not Mode.AUTO:
        if requested is Mode.TRTEXEC and not probe.trtexec:
            raise ConfigError(f"--mode trtexec needs trtexec on {probe.host}, which has none; use --mode python")
        if requested.value not in runtime.modes:
            raise ConfigError(
                f"target {target.name!r} runs {runtime.label}: {requested.value} mode does not apply; "
                f"use --mode {runtime.modes[0]}"
            )
        return requested
    return Mode(runtime.auto_mode(probe))


def _score(out: Path, pack: EvalPack, reference: Reference) -> dict[str, Any]:
    import numpy as np

    from edge_tl.verify.metrics import AccuracyAccumulator, AgreementAccumulator

    logits = np.load(out / LOGITS, allow_pickle=False)
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
    if reference.original is not None:
        # The paired counts against the original, overall and per class: verify's exact McNemar and
        # --max-class-drop judge the device's row from them, as they judge a local artifact's.
        from edge_tl.significance import PairedCounter

        paired = PairedCounter()
        paired.update(reference.original, logits, labels)
        scores["paired"] = {"lost": paired.lost, "gained": paired.gained, "class_counts": paired.per_class.tolist()}
    return scores


# The settle journal: what one successful measurement replaces in deploy/<name>/, written before
# the first file moves, removed after the last. A deploy killed in between leaves it, and the
# next deploy of that name (under the same lock) finishes it before anything else, so the folder
# never stays half old, half new.
JOURNAL = ".settle.json"
_INCOMING_PREFIX = ".incoming-"


def _accuracy_file(out: Path, result: DeployResult) -> dict[str, Any]:
    """``accuracy.json`` with ``result`` merged in (other artifacts' entries kept)."""
    import json

    existing: Any = {}
    if (out / ACCURACY_FILE).is_file():
        try:
            existing = json.loads((out / ACCURACY_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            existing = {}
    entries = existing.get("results") if isinstance(existing, dict) else None
    entry = result.accuracy_entry()
    kept = [r for r in entries or [] if isinstance(r, dict) and r.get("artifact") != entry["artifact"]]
    return {"host": result.label, "results": [*kept, entry]}


def _settle(run: Run, incoming: Path, out: Path, result: DeployResult) -> None:
    """Replace what ``deploy/<name>/`` holds with what a successful measurement brought back, as one
    journaled step: the files, ``accuracy.json`` (last) and the manifest record."""
    atomic_write_json(incoming / ACCURACY_FILE, _accuracy_file(out, result))
    journal = {
        "incoming": incoming.name,
        "replace": [n for n in (*RESULT_FILES, ACCURACY_FILE) if (incoming / n).is_file()],
        "drop": [n for n in RESULT_FILES if not (incoming / n).is_file()],
        "record": {
            "name": f"deploy-{result.label}",
            "precision": result.precision,
            "details": result.manifest_details(),
            "metrics": result.manifest_metrics(),
        },
    }
    atomic_write_json(out / JOURNAL, journal)
    _apply_journal(run, out, journal)


def _apply_journal(run: Run, out: Path, journal: Any) -> None:
    """Carry out a settle journal; safe to repeat (a file already moved is not looked for again)."""
    names = {*RESULT_FILES, ACCURACY_FILE}
    ok = isinstance(journal, dict)
    record = journal.get("record") if ok else None
    source = journal.get("incoming") if ok else None
    listed = [*journal.get("replace", ()), *journal.get("drop", ())] if ok else []
    if (
        not isinstance(source, str)
        or not source.startswith(_INCOMING_PREFIX)
        or "/" in source
        or not all(isinstance(n, str) and n in names for n in listed)
        or not isinstance(record, dict)
        or record.get("name") != f"deploy-{out.name}"
    ):
        # Not what edge-tl writes: nothing it names is touched (a path from a record stays in its folder).
        log.warning("%s is not a settle journal edge-tl wrote; it is left alone and ignored", out / JOURNAL)
        return
    incoming = out / source
    for name in journal["replace"]:
        if (incoming / name).is_file():
            os.replace(incoming / name, out / name)
    for name in journal["drop"]:
        (out / name).unlink(missing_ok=True)
    if (out / ACCURACY_FILE).is_file():
        run.add_artifact(
            record["name"],
            kind="deploy-result",
            path=out / ACCURACY_FILE,
            stage=STAGE,
            precision=record.get("precision"),
            details=record.get("details") if isinstance(record.get("details"), dict) else {},
            metrics=record.get("metrics") if isinstance(record.get("metrics"), dict) else {},
        )
    (out / JOURNAL).unlink()
    shutil.rmtree(incoming, ignore_errors=True)


def finish_interrupted(run: Run, out: Path) -> bool:
    """Finish the settle a killed deploy of ``out`` left (see JOURNAL) and drop what killed ones
    brought back before it; True when there was a settle to finish. Call under the folder's lock."""
    import json

    finished = False
    if (out / JOURNAL).is_file():
        try:
            journal = json.loads((out / JOURNAL).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            journal = None  # a journal is written atomically: an unreadable one is not edge-tl's
        if journal is None:
            log.warning("%s is not readable JSON; it is left alone and ignored", out / JOURNAL)
        else:
            _apply_journal(run, out, journal)
            finished = not (out / JOURNAL).exists()
    for stale in out.glob(_INCOMING_PREFIX + "*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    return finished


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
    replan_for_device: bool = True,
) -> DeployResult:
    """Deploy a prepared bundle to one device and record the results (raises on failure).

    The engine is planned for the TensorRT release the probe finds on the device, when the target
    lists it and no release was asked for (``replan_for_device``; a fleet, which shares one bundle
    among its devices, refuses a device whose release differs instead).
    """
    endpoint = host if isinstance(host, SshEndpoint) else SshEndpoint.parse(host)
    label = check_device_name(name or endpoint.label)
    target = load_target(config.target)
    out = run.path("deploy", label)
    out.mkdir(parents=True, exist_ok=True)
    remote_dir = check_remote_dir(config.remote_dir or default_remote_dir(run.root.resolve().name, label))
    with file_lock(run.path("deploy", f".{label}.lock"), blocking=False) as free:
        if not free:
            raise RunError(
                f"another deploy of this run is writing {out} now; wait for it to end, or give this one another --name"
            )
        if finish_interrupted(run, out):
            say(f"finished replacing the results of an interrupted deploy in {out}")
        with SshTransport(endpoint, config.ssh) as ssh:
            probe = probe_device(ssh, python=config.remote_python, remote_dir=remote_dir)
            atomic_write_json(out / "probe.json", {"probed": now_iso(), **probe.to_dict()})
            say(probe.summary())
            with hold_device_folder(ssh, remote_dir):
                result = _measure_on_device(
                    run,
                    ssh,
                    endpoint,
                    label,
                    out,
                    remote_dir,
                    probe,
                    config,
                    target,
                    bundle=bundle,
                    reference=reference,
                    wheel=wheel,
                    replan_for_device=replan_for_device,
                    say=say,
                )
    return result


def _plan_for_device(
    run: Run,
    config: DeployConfig,
    target: Target,
    bundle: Bundle,
    reference: Reference,
    probe: DeviceProbe,
    *,
    label: str,
    replan: bool,
    say: Callable[[str], None],
) -> tuple[Bundle, Reference]:
    """The bundle whose build plan names the device's own TensorRT release (an engine runs only there)."""
    from edge_tl.targets import TrtVersion

    plan = bundle.build_plan
    if plan is None or not probe.tensorrt or config.tensorrt is not None:
        return bundle, reference  # nothing built on the device, nothing found, or the user chose the release
    found, planned = TrtVersion.parse(probe.tensorrt), TrtVersion.parse(plan["tensorrt"])
    if found == planned or found not in [r.version for r in target.releases]:
        return bundle, reference  # the same, or one the profile lacks (the device check names that)
    if not replan:
        raise ConfigError(
            f"{label} has TensorRT {found} but this fleet's bundle is planned for TensorRT {planned} (the profile's "
            f'default): give {label} its own entry with tensorrt = "{found}"'
        )
    say(f"{label} has TensorRT {found}, not the profile's default {planned}: the engine is planned for {found}")
    bundle = prepare_bundle(run, target, bundle.precision, eval_images=config.eval_images, tensorrt=str(found))
    return bundle, compute_reference(run, bundle)


def _measure_on_device(
    run: Run,
    ssh: SshTransport,
    endpoint: SshEndpoint,
    label: str,
    out: Path,
    remote_dir: str,
    probe: DeviceProbe,
    config: DeployConfig,
    target: Target,
    *,
    bundle: Bundle,
    reference: Reference,
    wheel: Path | None,
    replan_for_device: bool,
    say: Callable[[str], None],
) -> DeployResult:
    mode = choose_mode(config.mode, probe, target)
    need_mb = sum(size for _, size in bundle.files.values()) * 3 // (1 << 20) + 200  # bundle + engine + venv
    problems = check_probe(probe, target, need_mb=need_mb, python=mode is Mode.PYTHON)
    if problems and config.check_device:
        raise RemoteError(
            f"{label} does not match target {target.name!r}:\n  - "
            + "\n  - ".join(problems)
            + "\n(recorded in "
            + str(out / "probe.json")
            + "; pass --no-device-check to deploy anyway)"
        )
    if mode is Mode.PYTHON and wheel is None:
        raise ConfigError("python mode needs the edge-tl wheel; build one with build_wheel() or pass --wheel")
    bundle, reference = _plan_for_device(
        run, config, target, bundle, reference, probe, label=label, replan=replan_for_device, say=say
    )
    files = dict(bundle.files)
    digest = bundle.digest
    if mode is Mode.PYTHON and wheel is not None:
        files[f"{WHEEL_DIR}/{wheel.name}"] = (sha256_file(wheel), wheel.stat().st_size)
        digest = sha256_text(digest + files[f"{WHEEL_DIR}/{wheel.name}"][0])
    root = staging_view(bundle.root, wheel if mode is Mode.PYTHON else None)
    try:
        report: SyncReport = sync_bundle(ssh, root, files, digest=digest[:32], remote_dir=remote_dir)
    finally:
        if root != bundle.root:
            shutil.rmtree(root, ignore_errors=True)
    say(report.summary())
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"
    results = f"results/{stamp}"
    made = ssh.run(sh_script(_NEW_RESULTS, remote_dir, stamp), check=False, what="results directory")
    check_remote_status(ssh, remote_dir, made, what="making the results directory")
    warnings: list[str] = []
    incoming = Path(tempfile.mkdtemp(prefix=_INCOMING_PREFIX, dir=out))
    try:
        session = DeviceSession(
            ssh=ssh,
            remote_dir=remote_dir,
            results=results,
            stamp=stamp,
            incoming=incoming,
            failed=out / FAILED_DIR,
            probe=probe,
            config=config,
            bundle=bundle,
            target=target,
            wheel=wheel,
        )
        locked = config.lock_clocks and probe.has_tool("jetson_clocks")
        if locked:
            ssh.run(sh_script(_CLOCKS, remote_dir, "lock", CLOCKS_FILE), what="jetson_clocks", check=True)
        sampling = config.tegrastats and probe.has_tool("tegrastats")
        if sampling:
            started = ssh.run(sh_script(_TEGRASTATS_START, remote_dir, stamp), check=False, what="tegrastats start")
            if started.returncode != 0:
                warnings.append(f"tegrastats did not start ({started.stderr.strip()}): no power/temperature record")
                sampling = False
        try:
            measured: Measurement = MODES[mode]().measure(session)
        except BaseException:
            # The deploy fails, and what it leaves on the device (a sampler, locked clocks) is said with it.
            for warning in _end_sampling(ssh, remote_dir, sampling=sampling, locked=locked):
                log.warning("%s: %s", label, warning)
            raise
        warnings += _end_sampling(ssh, remote_dir, sampling=sampling, locked=locked)
        power = None
        if sampling and session.fetch(["tegrastats.log"]):
            power = summarize_tegrastats((incoming / "tegrastats.log").read_text(encoding="utf-8", errors="replace"))
            atomic_write_json(incoming / "tegrastats.json", power)
        pack = EvalPack.load(bundle.root / bundle.manifest["eval"]["dir"])
        scores = _score(incoming, pack, reference)
        result = _result(run, endpoint, label, out, remote_dir, probe, target, bundle, mode, report, measured,
                         scores, power, locked, warnings)  # fmt: skip
    except BaseException:
        # Kept apart for diagnosis (the errors name these files); the good results stay as they were.
        shutil.rmtree(out / FAILED_DIR, ignore_errors=True)
        os.replace(incoming, out / FAILED_DIR)
        raise
    layer_report = measured.details.get("layer_report")
    for finding in (layer_report or {}).get("findings", ()):
        say(f"WARNING: {measured.artifact}: {finding}")
    for warning in warnings:
        log.warning("%s: %s", label, warning)
    _settle(run, incoming, out, result)
    return result


def _result(
    run: Run,
    endpoint: SshEndpoint,
    label: str,
    out: Path,
    remote_dir: str,
    probe: DeviceProbe,
    target: Target,
    bundle: Bundle,
    mode: Mode,
    report: SyncReport,
    measured: Measurement,
    scores: dict[str, Any],
    power: dict[str, Any] | None,
    locked: bool,
    warnings: list[str],
) -> DeployResult:
    accuracy, original, local = scores["accuracy"], scores.get("original"), scores.get("local")
    paired = scores.get("paired")
    latencies = named_latencies(
        {"gpu_compute": measured.gpu_compute, "end_to_end": measured.end_to_end},
        power["total_power_mean_mw"] if power else None,
    )
    return DeployResult(
        host=str(endpoint),
        label=label,
        target=target.name,
        precision=bundle.precision.value,
        status="ok",
        mode=mode.value,
        backend=measured.backend,
        jetpack=probe.jetpack,
        tensorrt=probe.tensorrt,
        p50_ms=measured.p50_ms,
        p99_ms=measured.p99_ms,
        throughput_ips=measured.throughput_ips,
        top1=accuracy["top1"],
        reference_top1=original["accuracy"]["top1"] if original else None,
        local_top1=local["accuracy"]["top1"] if local else None,
        top1_agreement=original["agreement"]["top1_agreement"] if original else None,
        result_dir=run.relpath(out),
        sync={**report.to_dict(), "summary": report.summary()},
        artifact=measured.artifact,
        kind=measured.kind,
        batch_size=measured.batch_size,
        num_images=accuracy["num_images"],
        top5=accuracy["top5"],
        mean_kl=original["agreement"]["mean_kl"] if original else None,
        max_abs_diff=original["agreement"]["max_abs_diff"] if original else None,
        local_agreement=local["agreement"]["top1_agreement"] if local else None,
        size_bytes=bundle.files[bundle.model["path"]][1],
        bundle_digest=bundle.digest,
        power_mean_mw=power["total_power_mean_mw"] if power else None,
        hottest_c=power["hottest_c"] if power else None,
        clocks_locked=locked,
        gpu_compute=latencies["gpu_compute"],
        end_to_end=latencies["end_to_end"],
        layer_report=measured.details.get("layer_report"),
        lost=paired["lost"] if paired else None,
        gained=paired["gained"] if paired else None,
        class_counts=paired["class_counts"] if paired else None,
        energy_mj_per_image=latencies["energy_mj_per_image"],
        remote_dir=remote_dir,
        device=probe.summary(),
        measured=now_iso(),
        warnings=tuple(warnings),
    )


def _end_sampling(ssh: SshTransport, remote_dir: str, *, sampling: bool, locked: bool) -> list[str]:
    """Stop tegrastats and restore the clocks; what could not be done is said, never dropped."""
    warnings = []
    if sampling:
        try:
            stopped = ssh.run(["tegrastats", "--stop"], check=False, what="tegrastats stop")
            said = " ".join(f"{stopped.stderr} {stopped.text}".split())  # tegrastats may say it on either stream
            failed = f"exit {stopped.returncode}: {said}" if stopped.returncode != 0 else ""
        except RemoteError as exc:
            failed = str(exc)
        if failed:
            warnings.append(
                f"tegrastats may still run on the device ({failed}); stop it there with `tegrastats --stop`"
            )
    if locked:
        try:
            ssh.run(sh_script(_CLOCKS, remote_dir, "restore", CLOCKS_FILE), what="jetson_clocks restore")
        except RemoteError as exc:
            warnings.append(
                f"the device's clocks were NOT restored ({exc}); the saved settings stay in "
                f"{remote_dir}/{CLOCKS_FILE}: run `sudo jetson_clocks --restore {remote_dir}/{CLOCKS_FILE}` there "
                "(the next --lock-clocks deploy keeps them)"
            )
    return warnings


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
    if name is not None:
        check_device_name(name)
    target = load_target(config.target)
    precision = target.check_precision(config.precision)
    bundle = prepare_bundle(run, target, precision, eval_images=config.eval_images, tensorrt=config.tensorrt)
    say(f"bundle {bundle.root} ({len(bundle.files)} files, digest {bundle.digest[:12]})")
    reference = compute_reference(run, bundle)
    with tempfile.TemporaryDirectory(prefix="etl-wheel-") as tmp:
        wheel = (
            config.wheel
            if config.wheel is not None
            else (build_wheel(tmp) if config.mode is not Mode.TRTEXEC else None)
        )
        return deploy_host(run, host, config, bundle=bundle, reference=reference, wheel=wheel, name=name, say=say)
