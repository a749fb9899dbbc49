"""Device target profiles: one TOML file per device, validated on load.

The shipped profiles live in the top-level ``targets/`` folder, installed as the
data package ``edge_tl.profiles``; ``--target`` takes a profile name or the path of
a TOML file written the same way. A target decides three things for the later
stages: the ONNX opset to export (:meth:`Target.export_opset`), the calibration
recipe (:meth:`Target.calibration_recipe_for`) and, through its TensorRT release,
the build flags (:mod:`edge_tl.compile`).

Every field is checked on load; an error names the file and the field.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any

from edge_tl import tomlfile
from edge_tl.calibration import OutputFormat, load_recipe, looks_like_path
from edge_tl.device_runtime import DeviceRuntime, get_runtime
from edge_tl.errors import ConfigError
from edge_tl.tomlfile import Table
from edge_tl.vocab import TARGET_PRECISIONS, Precision, accept

PROFILES_PACKAGE = "edge_tl.profiles"


class TargetKind(str, Enum):
    JETSON = "jetson"
    DGPU = "dgpu"
    CPU = "cpu"


class CalibrationRecipe(str, Enum):
    """A calibration recipe's name: a string, checked by the recipe loader, not a closed list.

    Any name is a value (``CalibrationRecipe("my-int8")`` is the same object each time): a profile
    may name any recipe :func:`edge_tl.calibration.find_recipe` finds, shipped or in a folder of
    ``$EDGE_TL_RECIPES``. The members are the shipped recipes that the TensorRT rules of
    :meth:`Target.calibration_recipe_for` pick by name.
    """

    TENSORRT_QDQ = "tensorrt-int8-qdq"  # symmetric S8S8 Q/DQ ONNX, every TensorRT from 8.5 to 11
    TENSORRT_CACHE = "tensorrt-int8-cache"  # FP32 ONNX + calibration cache, TensorRT < 11 only
    ONNXRUNTIME_CPU = "onnxruntime-cpu-int8"  # U8S8 Q/DQ for ONNX Runtime on a CPU

    @classmethod
    def _missing_(cls, value: object) -> CalibrationRecipe | None:
        if not isinstance(value, str) or not value or looks_like_path(value):
            return None
        member = str.__new__(cls, value)
        member._name_ = value
        member._value_ = value
        # Stored like a member's, so that the same name is the same object (``is`` compares).
        return cls._value2member_map_.setdefault(value, member)  # type: ignore[return-value]


@dataclass(frozen=True, order=True)
class TrtVersion:
    """A TensorRT release as ``major.minor.patch``.

    The patch matters: a calibration cache's header and an engine name the exact
    release that wrote them (``TRT-8502-...`` is 8.5.2), and TensorRT refuses both
    from another one.
    """

    major: int
    minor: int
    patch: int = 0

    @classmethod
    def parse(cls, text: str) -> "TrtVersion":
        """``"8.5.2"`` (or ``"8.5"``, patch 0; a fourth build field as in ``trt.__version__`` is ignored)."""
        parts = str(text).strip().split(".")
        if len(parts) < 2 or not all(p.isdigit() for p in parts[:3]):
            raise ConfigError(f"{text!r} is not a TensorRT version: write MAJOR.MINOR.PATCH, e.g. 10.3.0")
        return cls(int(parts[0]), int(parts[1]), int(parts[2]) if len(parts) > 2 else 0)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def short(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def library_version(self) -> int:
        """TensorRT's ``getInferLibVersion()`` (also the ``[TensorRT vN]`` banner of trtexec).

        major*1000 + minor*100 + patch up to 9.x (8.5.2 -> 8502), major*10000 + minor*100 + patch
        from 10.0 (10.3.0 -> 100300): ``kNV_TENSORRT_VERSION_IMPL`` in ``include/NvInferRuntimeBase.h``
        of NVIDIA/TensorRT ``release/8.6`` and ``release/10.3``.
        """
        scale = 1000 if self.major < 10 else 10000
        return self.major * scale + self.minor * 100 + self.patch

    @classmethod
    def from_library_version(cls, code: int) -> "TrtVersion":
        """The inverse of :attr:`library_version`: 8502 -> 8.5.2, 100300 -> 10.3.0."""
        if code >= 100000:
            return cls(code // 10000, code // 100 % 100, code % 100)
        return cls(code // 1000, code // 100 % 10, code % 100)

    @property
    def max_opset(self) -> int:
        """The highest ONNX opset this release's parser reads.

        onnx/onnx-tensorrt ``docs/operators.md``: "TensorRT 8.2 supports operators up to Opset 13"
        (branch 8.2-GA; 8.0-GA the same), "up to Opset 17" (8.4-GA, 8.5-GA, 8.6-GA), "opset 9 to
        opset 20" (10.0-GA through main, which 11.x parses as well).
        """
        if self.major < 8 or (self.major == 8 and self.minor < 4):
            return 13
        if self.major < 10:
            return 17
        return 20


@dataclass(frozen=True)
class TrtRelease:
    """One TensorRT release a device can run (with the JetPack that ships it, on a Jetson)."""

    version: TrtVersion
    cuda: str
    jetpack: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"version": str(self.version), "cuda": self.cuda, "jetpack": self.jetpack}

    def describe(self) -> str:
        where = f"JetPack {self.jetpack}, " if self.jetpack else ""
        return f"TensorRT {self.version} ({where}CUDA {self.cuda})"

    @property
    def max_opset(self) -> int:
        return self.version.max_opset


@dataclass(frozen=True)
class GpuSpec:
    arch: str
    compute_capability: tuple[int, int]
    dla_cores: int

    @property
    def sm(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    kind: TargetKind
    memory_gb: float
    default_runtime: DeviceRuntime  # what the device ships, builds and runs (edge_tl.device_runtime)
    max_opset: int
    calibration_recipe: CalibrationRecipe
    calibration_output: OutputFormat  # what the recipe writes (a cache or Q/DQ)
    fast_precisions: tuple[Precision, ...]
    power_notes: str
    source: str  # the file the profile was read from
    notes: str = ""
    workspace_mib: int | None = None
    gpu: GpuSpec | None = None
    releases: tuple[TrtRelease, ...] = ()
    default_tensorrt: TrtVersion | None = None
    cpu_arch: str | None = None
    opset_cap: int | None = None  # a device-specific cap below what its TensorRT parses (rare)

    # ---- capability checks

    def check_precision(self, precision: Precision | str) -> Precision:
        """``precision`` if this target runs it fast, else a :class:`ConfigError` naming what it supports."""
        precision = accept(
            Precision,
            precision,
            TARGET_PRECISIONS,
            message=lambda v, choices: f"precision {v!r} is not one of {choices}",
        )
        if precision not in self.fast_precisions:
            supported = ", ".join(p.value for p in self.fast_precisions)
            hw = f" ({self.gpu.arch}, sm_{self.gpu.sm.replace('.', '')})" if self.gpu else ""
            hint = " Build FP16 instead (--precision fp16)." if Precision.FP16 in self.fast_precisions else ""
            raise ConfigError(
                f"target {self.name!r}{hw} has no fast {precision.value.upper()}: it supports {supported}.{hint}"
            )
        return precision

    def check_dla(self, dla: bool) -> None:
        if dla and (self.gpu is None or self.gpu.dla_cores == 0):
            with_dla = ", ".join(t.name for t in list_targets() if t.gpu is not None and t.gpu.dla_cores > 0)
            raise ConfigError(
                f"--dla was asked but target {self.name!r} has no DLA cores (dla_cores = 0 in {self.source}). "
                f"Drop --dla; targets with DLA: {with_dla}"
            )

    def check_dla_release(self, release: TrtRelease) -> None:
        """Refuse DLA on a TensorRT release that has none, naming the one that has."""
        if release.version.major >= 11 and release.version < TrtVersion(11, 4, 1):
            with_dla = [
                str(r.version) for r in self.releases if r.version.major < 11 or r.version >= TrtVersion(11, 4, 1)
            ]
            raise ConfigError(
                f"TensorRT {release.version} has no DLA on Jetson (JetPack support, DLA included, arrives in 11.4.1 "
                f"with JetPack 7.2.2): use --tensorrt {with_dla[0] if with_dla else '11.4.1'} or drop --dla"
            )

    def release(self, version: str | TrtVersion | None = None) -> TrtRelease:
        """The TensorRT release to build for: ``version`` if given (must be listed), else the default."""
        if not self.releases or self.default_tensorrt is None:
            raise ConfigError(
                f"target {self.name!r} runs {self.default_runtime.value}, not TensorRT: there is no engine to build. "
                "Use its ONNX artifact with `edge-tl bench`/`verify` instead."
            )
        if version is None:
            wanted = self.default_tensorrt
        elif isinstance(version, TrtVersion):
            wanted = version
        else:
            wanted = TrtVersion.parse(version)
            if str(version).strip().count(".") == 1:
                # "10.3" names the one 10.3.x release the profile lists.
                matches = {
                    r.version
                    for r in self.releases
                    if (r.version.major, r.version.minor) == (wanted.major, wanted.minor)
                }
                if len(matches) == 1:
                    wanted = matches.pop()
        for release in self.releases:
            if release.version == wanted:
                return release
        listed = ", ".join(r.describe() for r in self.releases)
        raise ConfigError(f"target {self.name!r} does not list TensorRT {wanted}; it lists {listed}")

    def max_opset_for(self, tensorrt: str | TrtVersion | None = None) -> int:
        """The highest opset the target's TensorRT release (default: its default one) parses."""
        if not self.releases:
            return self.max_opset
        limit = self.release(tensorrt).max_opset
        return min(limit, self.opset_cap) if self.opset_cap is not None else limit

    # ---- decisions for the other stages

    def export_opset(self, requested: int | None = None, *, tensorrt: str | TrtVersion | None = None) -> int:
        """The ONNX opset to export for this target (its maximum unless a lower one is asked)."""
        limit = self.max_opset_for(tensorrt)
        if requested is None:
            return limit
        if requested > limit:
            raise ConfigError(
                f"opset {requested} is above what target {self.name!r} parses (max opset {limit}); "
                f"export with --opset {limit} or lower"
            )
        return requested

    def calibration_recipe_for(
        self, precision: Precision | str, *, dla: bool = False, tensorrt: str | TrtVersion | None = None
    ) -> CalibrationRecipe | None:
        """The recipe an INT8 build on this target needs (``None`` for float precisions).

        DLA rules, per release:

        * 8.x and 10.x: DLA INT8 is implicit quantization from a calibration cache (the TensorRT
          8.x developer guide, "Working with DLA": DLA does not support explicit quantization);
          edge-tl keeps 10.x on the same path (its Q/DQ-on-DLA support is not verified here);
        * 11.0 to 11.4.0 have no JetPack support, so no DLA; 11.4.1 (JetPack 7.2.2+) builds DLA
          strongly typed from the Q/DQ ONNX (TensorRT 11.4.1 "Strongly Typed Networks for DLA",
          docs.nvidia.com/deeplearning/tensorrt/11.4.1/inference-library/dla-strongly-typed-networks.html).
        """
        precision = self.check_precision(precision)
        if precision is not Precision.INT8:
            if dla and self.releases:
                self.check_dla(dla)
                self.check_dla_release(self.release(tensorrt))
            return None
        if not self.default_runtime.builds_engine:
            return self.calibration_recipe
        release = self.release(tensorrt)
        if dla:
            self.check_dla(dla)
            self.check_dla_release(release)
            if release.version.major >= 11:
                return CalibrationRecipe.TENSORRT_QDQ
            return CalibrationRecipe.TENSORRT_CACHE
        if self.calibration_output is OutputFormat.TENSORRT_CACHE and release.version.major >= 11:
            return CalibrationRecipe.TENSORRT_QDQ
        return self.calibration_recipe

    # ---- display

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "kind": self.kind.value,
            "memory_gb": self.memory_gb,
            "default_runtime": self.default_runtime.value,
            "max_opset": self.max_opset,
            "calibration_recipe": self.calibration_recipe.value,
            "fast_precisions": [p.value for p in self.fast_precisions],
            "power_notes": self.power_notes,
            "notes": self.notes,
            "source": self.source,
        }
        if self.gpu is not None:
            out["gpu"] = {"arch": self.gpu.arch, "compute_capability": self.gpu.sm, "dla_cores": self.gpu.dla_cores}
            out["workspace_mib"] = self.workspace_mib
            out["tensorrt"] = {
                "default": str(self.default_tensorrt),
                "releases": [r.to_dict() for r in self.releases],
            }
        if self.cpu_arch is not None:
            out["cpu"] = {"arch": self.cpu_arch}
        return out


# --------------------------------------------------------------------------- loading


def _compute_capability(fields: Table, key: str) -> tuple[int, int]:
    text = fields.get(key, (str, int, float))
    parts = text.split(".") if isinstance(text, str) else []
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise fields.fail(key, f"must be a quoted 'MAJOR.MINOR' string (e.g. \"8.7\"), got {text!r}")
    return int(parts[0]), int(parts[1])


_TOP_FIELDS = frozenset(
    {
        "name",
        "description",
        "kind",
        "memory_gb",
        "default_runtime",
        "max_opset",
        "calibration_recipe",
        "workspace_mib",
        "fast_precisions",
        "power_notes",
        "notes",
        "gpu",
        "tensorrt",
        "cpu",
    }
)
_GPU_FIELDS = frozenset({"arch", "compute_capability", "dla_cores"})
_TRT_FIELDS = frozenset({"default", "releases"})
_RELEASE_FIELDS = frozenset({"version", "cuda", "jetpack"})
_CPU_FIELDS = frozenset({"arch"})


def _recipe(top: Table) -> tuple[CalibrationRecipe, OutputFormat]:
    """The recipe a profile names, checked by the recipe loader, and what that recipe writes."""
    name = top.get("calibration_recipe", str)
    if not name or looks_like_path(name):
        raise top.fail(
            "calibration_recipe",
            f"is {name!r}; name a recipe (shipped, or NAME.toml in a folder of $EDGE_TL_RECIPES), not a path",
        )
    try:
        recipe = load_recipe(name)
    except ConfigError as exc:
        raise top.fail("calibration_recipe", f"names a recipe that does not load: {exc}") from None
    return CalibrationRecipe(name), recipe.output


def parse_target(data: dict[str, Any], *, source: str) -> Target:
    """Validate a profile's parsed TOML; errors name ``source`` and the field."""
    top = Table(data, source=source, known=_TOP_FIELDS)
    name = top.get("name", str)
    if not name or name != name.strip() or " " in name:
        raise top.fail("name", f"must be a non-empty name without spaces, got {name!r}")
    kind = top.enum("kind", TargetKind)
    try:
        runtime = get_runtime(top.get("default_runtime", str))
    except ConfigError as exc:
        raise top.fail("default_runtime", f"is not usable: {exc}") from None
    memory = top.get("memory_gb", (int, float))
    if memory <= 0:
        raise top.fail("memory_gb", f"must be > 0, got {memory}")
    # A GPU target's opset follows its TensorRT release; the field only caps it further.
    max_opset = top.get("max_opset", int, tomlfile.REQUIRED if kind is TargetKind.CPU else None)
    if max_opset is not None and not 7 <= max_opset <= 30:
        raise top.fail("max_opset", f"must be an ONNX opset between 7 and 30, got {max_opset}")
    recipe, recipe_output = _recipe(top)
    raw_precisions = top.get("fast_precisions", list)
    precisions = []
    for i, value in enumerate(raw_precisions):
        if value not in {p.value for p in TARGET_PRECISIONS}:
            choices = ", ".join(p.value for p in TARGET_PRECISIONS)
            raise top.fail("fast_precisions", f"item {i} is {value!r}; choose from {choices}")
        precisions.append(Precision(value))
    if Precision.FP32 not in precisions:
        raise top.fail("fast_precisions", f"must include 'fp32' (every device runs FP32), got {raw_precisions}")
    power_notes = top.get("power_notes", str)
    description = top.get("description", str)
    notes = top.get("notes", str, "")

    workspace = gpu = default_trt = cpu_arch = None
    releases: list[TrtRelease] = []
    if kind is TargetKind.CPU:
        if runtime.builds_engine:
            raise top.fail(
                "default_runtime",
                f"of a cpu target must run the ONNX itself (e.g. 'onnxruntime'), got {runtime.name!r}",
            )
        if recipe_output is not OutputFormat.QDQ_ONNXRUNTIME:
            raise top.fail(
                "calibration_recipe",
                f"of a cpu target must name a recipe with output 'qdq-onnxruntime' (e.g. 'onnxruntime-cpu-int8'), "
                f"got {recipe.value!r} (output {recipe_output.value!r})",
            )
        cpu = top.table("cpu", _CPU_FIELDS)
        cpu_arch = cpu.get("arch", str)
    else:
        workspace = top.get("workspace_mib", int)
        if workspace < 16:
            raise top.fail("workspace_mib", f"must be at least 16 MiB, got {workspace}")
        g = top.table("gpu", _GPU_FIELDS)
        cc = _compute_capability(g, "compute_capability")
        dla = g.get("dla_cores", int)
        if dla < 0:
            raise g.fail("dla_cores", f"must be >= 0, got {dla}")
        gpu = GpuSpec(arch=g.get("arch", str), compute_capability=cc, dla_cores=dla)
        trt = top.table("tensorrt", _TRT_FIELDS)
        release_tables = trt.tables("releases", _RELEASE_FIELDS)
        if not release_tables:
            raise trt.fail("releases", "must list at least one TensorRT release")
        for rel in release_tables:
            text = rel.get("version", str)
            try:
                version = TrtVersion.parse(text)
            except ConfigError as exc:
                raise rel.fail("version", str(exc)) from None
            if text.count(".") != 2:
                # The patch release decides the cache header and whether an engine loads.
                raise rel.fail("version", f'must be the full release MAJOR.MINOR.PATCH (e.g. "8.5.2"), got {text!r}')
            jetpack = rel.get("jetpack", str, tomlfile.REQUIRED if kind is TargetKind.JETSON else None)
            releases.append(TrtRelease(version=version, cuda=rel.get("cuda", str), jetpack=jetpack))
        try:
            default_trt = TrtVersion.parse(trt.get("default", str))
        except ConfigError as exc:
            raise trt.fail("default", str(exc)) from None
        if default_trt not in {r.version for r in releases}:
            raise trt.fail(
                "default", f"is {str(default_trt)!r}, which is not among the releases listed (write MAJOR.MINOR.PATCH)"
            )
        if recipe_output is OutputFormat.QDQ_ONNXRUNTIME:
            raise top.fail(
                "calibration_recipe",
                f"of a GPU target must be a TensorRT recipe (output 'qdq-tensorrt' or 'tensorrt-cache', e.g. "
                f"tensorrt-int8-qdq or tensorrt-int8-cache), got {recipe.value!r}",
            )
        if recipe_output is OutputFormat.TENSORRT_CACHE and default_trt.major >= 11:
            raise top.fail(
                "calibration_recipe",
                f"is {recipe.value!r} (a calibration cache) but the default TensorRT {default_trt} has no "
                "calibrators; use 'tensorrt-int8-qdq'",
            )
    opset_cap = None
    if default_trt is not None:
        opset_cap = max_opset
        max_opset = min(default_trt.max_opset, max_opset) if max_opset is not None else default_trt.max_opset
    return Target(
        name=name,
        description=description,
        kind=kind,
        memory_gb=float(memory),
        default_runtime=runtime,
        max_opset=max_opset,
        opset_cap=opset_cap,
        calibration_recipe=recipe,
        calibration_output=recipe_output,
        fast_precisions=tuple(precisions),
        power_notes=power_notes,
        notes=notes,
        source=source,
        workspace_mib=workspace,
        gpu=gpu,
        releases=tuple(releases),
        default_tensorrt=default_trt,
        cpu_arch=cpu_arch,
    )


def load_target_file(path: str | os.PathLike[str]) -> Target:
    path = Path(path)
    source = str(path)
    target = parse_target(tomlfile.read(path, what="target profile"), source=source)
    if target.name != path.stem:
        raise ConfigError(
            f"{source}: field 'name' is {target.name!r} but the file is named {path.name!r}; make them match"
        )
    return target


def _shipped_files() -> dict[str, Any]:
    root = resources.files(PROFILES_PACKAGE)
    return {entry.name[: -len(".toml")]: entry for entry in root.iterdir() if entry.name.endswith(".toml")}


def target_names() -> list[str]:
    """Names of the shipped profiles, sorted."""
    return sorted(_shipped_files())


def load_target(name_or_path: str | os.PathLike[str] | Target) -> Target:
    """A shipped profile by name, or a profile TOML by path."""
    if isinstance(name_or_path, Target):
        return name_or_path
    text = str(name_or_path)
    if text.endswith(".toml") or os.sep in text or Path(text).is_file():
        return load_target_file(text)
    files = _shipped_files()
    if text not in files:
        close = difflib.get_close_matches(text, list(files), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown target {text!r}.{hint} Known: {', '.join(sorted(files))}; or pass the path of a profile TOML "
            "(see `edge-tl targets show jetson-orin-nano-8gb` for the fields)."
        )
    with resources.as_file(files[text]) as path:
        return load_target_file(path)


def list_targets() -> list[Target]:
    return [load_target(name) for name in target_names()]


def format_target(target: Target) -> str:
    """Human-readable description for `edge-tl targets show`."""
    lines = [f"{target.name}: {target.description}", f"  profile: {target.source}", f"  kind: {target.kind.value}"]
    if target.gpu is not None:
        lines.append(f"  gpu: {target.gpu.arch}, compute capability {target.gpu.sm}, DLA cores {target.gpu.dla_cores}")
    if target.cpu_arch is not None:
        lines.append(f"  cpu: {target.cpu_arch}")
    lines += [
        f"  memory: {target.memory_gb:g} GB",
        f"  fast precisions: {', '.join(p.value for p in target.fast_precisions)}",
        f"  runtime: {target.default_runtime.value}",
        f"  export opset: {target.max_opset}",
        f"  calibration recipe: {target.calibration_recipe.value}",
    ]
    if target.releases:
        lines.append(f"  workspace: {target.workspace_mib} MiB")
        lines.append(f"  TensorRT (default {target.default_tensorrt}):")
        lines += [
            f"    - {r.describe()}, ONNX opset <= {min(r.max_opset, target.opset_cap or 99)}" for r in target.releases
        ]
    lines.append(f"  power: {target.power_notes}")
    if target.notes:
        lines.append(f"  notes: {target.notes}")
    return "\n".join(lines)
