"""What is on the device: one SSH round trip, parsed here, checked against the target profile.

The probe script is plain POSIX ``sh`` plus an optional ``python3`` snippet, so it
runs on a bare JetPack install as well as on any Linux box. Everything it reports is
recorded in ``deploy/<host>/probe.json``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from edge_tl.deploy.ssh import SshTransport, sh_script
from edge_tl.errors import ConfigError
from edge_tl.targets import Target, TargetKind

# Python side of the probe: imports, versions and the CUDA device through the driver
# API (libcuda is part of every Jetson and desktop driver; no pycuda needed).
_PY = r"""
import json, platform, importlib, ctypes
out = {"python": platform.python_version(), "modules": {}}
for name in ("numpy", "tensorrt", "onnxruntime", "pip", "venv"):
    try:
        mod = importlib.import_module(name)
        out["modules"][name] = getattr(mod, "__version__", "yes")
    except Exception as exc:
        out["modules"][name] = None
try:
    import onnxruntime
    out["onnxruntime_providers"] = onnxruntime.get_available_providers()
except Exception:
    pass
try:
    import tensorrt
    out["dla_cores"] = tensorrt.Builder(tensorrt.Logger()).num_DLA_cores
except Exception:
    pass
try:
    cuda = ctypes.CDLL("libcuda.so.1")
    if cuda.cuInit(0) == 0:
        dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        name = ctypes.create_string_buffer(256)
        cuda.cuDeviceGet(ctypes.byref(dev), 0)
        cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)  # COMPUTE_CAPABILITY_MAJOR
        cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)  # COMPUTE_CAPABILITY_MINOR
        cuda.cuDeviceGetName(name, 256, dev)
        out["gpu"] = {"name": name.value.decode(errors="replace"), "compute_capability": f"{major.value}.{minor.value}"}
except OSError:
    pass
print(json.dumps(out))
"""

_PROBE = r"""
py="$1"; dir="$2"
echo "@@arch"; uname -m
echo "@@kernel"; uname -r
echo "@@tegra"; head -n 1 /etc/nv_tegra_release 2>/dev/null
echo "@@model"; tr -d '\0' < /proc/device-tree/model 2>/dev/null; echo
echo "@@jetpack"; dpkg-query -W -f='${Version}' nvidia-jetpack 2>/dev/null; echo
echo "@@nvinfer"
dpkg-query -W -f='${Package} ${Version}\n' libnvinfer8 libnvinfer10 libnvinfer-bin tensorrt 2>/dev/null
echo "@@trtexec"
for t in "$(command -v trtexec 2>/dev/null)" /usr/src/tensorrt/bin/trtexec; do
  [ -n "$t" ] && [ -x "$t" ] && echo "$t"
done
echo "@@dla"; ls /dev 2>/dev/null | grep -c -E '^nvhost-nvdla[0-9]+$'
echo "@@nvpmodel"; nvpmodel -q 2>/dev/null
echo "@@tools"; for t in jetson_clocks tegrastats nvidia-smi; do command -v "$t" 2>/dev/null; done
echo "@@nvsmi"; nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader 2>/dev/null | head -n 1
echo "@@mem"; grep -E '^(MemTotal|MemAvailable):' /proc/meminfo
echo "@@disk"; mkdir -p -- "$dir" 2>/dev/null; df -Pk -- "$dir" 2>/dev/null | tail -n 1
echo "@@python"; command -v "$py" >/dev/null 2>&1 && "$py" -c "$3" 2>/dev/null
echo "@@end"
"""


@dataclass(frozen=True)
class DeviceProbe:
    host: str
    arch: str
    kernel: str
    l4t: str | None  # first line of /etc/nv_tegra_release
    model: str | None
    jetpack: str | None
    tensorrt: str | None  # from the packages, e.g. "8.5.2.2"
    trtexec: str | None
    python: str | None
    modules: dict[str, str | None] = field(default_factory=dict)
    onnxruntime_providers: list[str] = field(default_factory=list)
    gpu_name: str | None = None
    compute_capability: str | None = None
    dla_cores: int = 0
    power_mode: str | None = None
    tools: list[str] = field(default_factory=list)
    mem_total_mb: int | None = None
    mem_available_mb: int | None = None
    disk_free_mb: int | None = None

    @property
    def is_jetson(self) -> bool:
        return self.l4t is not None

    @property
    def tensorrt_python(self) -> bool:
        return bool(self.modules.get("tensorrt"))

    def has_tool(self, name: str) -> bool:
        return any(t.rsplit("/", 1)[-1] == name for t in self.tools)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["is_jetson"] = self.is_jetson
        return out

    def summary(self) -> str:
        if self.is_jetson:
            where = f"Jetson {self.model or ''} (L4T {self.l4t}, JetPack {self.jetpack or '?'})".replace("  ", " ")
        else:
            where = f"{self.arch} Linux, no Jetson"
        trt = (
            f"TensorRT {self.tensorrt}"
            if self.tensorrt
            else ("TensorRT (python)" if self.tensorrt_python else "no TensorRT")
        )
        gpu = f"{self.gpu_name} sm {self.compute_capability}" if self.gpu_name else "no CUDA GPU visible"
        return (
            f"{self.host}: {where}; {trt}; trtexec {self.trtexec or 'absent'}; python {self.python or 'absent'}; {gpu}"
        )


def _sections(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("@@"):
            current = line[2:].strip()
            out[current] = []
        elif current is not None and line.strip():
            out[current].append(line.strip())
    return out


def parse_probe(text: str, *, host: str) -> DeviceProbe:
    s = _sections(text)

    def first(key: str) -> str | None:
        return (s.get(key) or [None])[0]

    py: dict[str, Any] = {}
    if s.get("python"):
        try:
            py = json.loads(s["python"][-1])
        except json.JSONDecodeError:
            py = {}
    tensorrt = None
    for line in s.get("nvinfer", []):
        match = re.match(r"\S+\s+(\d+\.\d+[\d.]*)", line)
        if match:
            tensorrt = match.group(1)
            break
    if (
        tensorrt is None
        and isinstance(py.get("modules", {}).get("tensorrt"), str)
        and py["modules"]["tensorrt"] != "yes"
    ):
        tensorrt = py["modules"]["tensorrt"]
    mem = {m.group(1): int(m.group(2)) // 1024 for line in s.get("mem", []) if (m := re.match(r"(\w+):\s+(\d+)", line))}
    disk = None
    if s.get("disk"):
        cols = s["disk"][-1].split()
        disk = int(cols[3]) // 1024 if len(cols) >= 4 and cols[3].isdigit() else None
    gpu = py.get("gpu") or {}
    nvsmi = first("nvsmi")
    if not gpu and nvsmi:
        name, _, cc = nvsmi.rpartition(",")
        gpu = {"name": name.strip(), "compute_capability": cc.strip()}
    dla = py.get("dla_cores")
    if dla is None:
        dla = int(first("dla") or 0) if (first("dla") or "0").isdigit() else 0
    return DeviceProbe(
        host=host,
        arch=first("arch") or "unknown",
        kernel=first("kernel") or "",
        l4t=first("tegra"),
        model=first("model"),
        jetpack=first("jetpack"),
        tensorrt=tensorrt,
        trtexec=first("trtexec"),
        python=py.get("python"),
        modules=dict(py.get("modules") or {}),
        onnxruntime_providers=list(py.get("onnxruntime_providers") or []),
        gpu_name=gpu.get("name"),
        compute_capability=gpu.get("compute_capability"),
        dla_cores=int(dla),
        power_mode=" ".join(s.get("nvpmodel", [])) or None,
        tools=list(s.get("tools", [])),
        mem_total_mb=mem.get("MemTotal"),
        mem_available_mb=mem.get("MemAvailable"),
        disk_free_mb=disk,
    )


def probe_device(ssh: SshTransport, *, python: str = "python3", remote_dir: str = ".") -> DeviceProbe:
    text = ssh.run(sh_script(_PROBE, python, remote_dir, _PY), what="device probe", timeout=120).text
    if "@@end" not in text:
        raise ConfigError(f"{ssh.endpoint}: the device probe did not complete; output was: {text[-500:]!r}")
    return parse_probe(text, host=str(ssh.endpoint))


_ARCH = {"jetson": ("aarch64",), "dgpu": ("x86_64", "aarch64")}


def check_probe(
    probe: DeviceProbe, target: Target, *, need_mb: int, dla: bool = False, python: bool = False
) -> list[str]:
    """Every way the device does not fit ``target``; an empty list means it fits."""
    problems = []
    if target.kind is TargetKind.JETSON and not probe.is_jetson:
        problems.append(
            f"target {target.name!r} is a Jetson but {probe.host} has no /etc/nv_tegra_release ({probe.arch}); "
            "pick the profile of this device (`edge-tl targets list`)"
        )
    if target.kind is TargetKind.CPU and target.cpu_arch and probe.arch != target.cpu_arch:
        problems.append(f"target {target.name!r} is for {target.cpu_arch} CPUs but {probe.host} is {probe.arch}")
    problems += target.default_runtime.check_probe(probe, target)
    if dla and probe.dla_cores == 0:
        problems.append(f"DLA was asked but {probe.host} reports no DLA cores; drop --dla")
    if python:
        if probe.python is None:
            problems.append(f"python mode needs python3 on {probe.host}; install it or use --mode trtexec")
        elif tuple(int(p) for p in probe.python.split(".")[:2]) < (3, 10):
            problems.append(
                f"python mode runs edge-tl, which needs Python >= 3.10, but {probe.host} has {probe.python} "
                "(JetPack 5 ships 3.8): use --mode trtexec, or --remote-python with a newer interpreter"
            )
        else:
            missing = [m for m in ("numpy", "pip", "venv") if not probe.modules.get(m)]
            if not probe.modules.get("onnxruntime") and not probe.tensorrt_python:
                missing.append("onnxruntime (or tensorrt)")
            if missing:
                problems.append(
                    f"python mode needs {', '.join(missing)} importable by the device's python3 on {probe.host} "
                    "(apt install python3-numpy python3-pip python3-venv; pip install onnxruntime), "
                    "or use --mode trtexec"
                )
    if probe.disk_free_mb is not None and probe.disk_free_mb < need_mb:
        problems.append(
            f"{probe.host} has {probe.disk_free_mb} MB free in the deploy directory; {need_mb} MB are needed"
        )
    return problems
