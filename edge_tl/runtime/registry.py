"""Which backend runs which model, and :func:`open_runner`, the one way to get a runner.

A model is identified by its *kind* (the manifest's artifact kinds: ``checkpoint``,
``onnx``, ``engine``), never by its name, so that a new artifact (an INT8 ONNX, an
engine for another target) is run without changes anywhere else. Backends are
registered with the kinds they accept; openers are given as ``"module:function"``
strings and imported only when used, so this module stays light.

Adding a backend (e.g. TensorRT) is one :func:`register_backend` call with an opener
``open_x(source: ModelSource, options: RunnerOptions) -> Runner``.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edge_tl._lazy import import_attribute
from edge_tl.artifacts import reference_artifact
from edge_tl.errors import ConfigError, RunError
from edge_tl.runs import Artifact, Run
from edge_tl.runtime.base import InputSpec, Runner, RunnerOptions

# File suffix -> artifact kind, for model files given outside a run.
_SUFFIX_KINDS = {".onnx": "onnx", ".engine": "engine", ".plan": "engine", ".trt": "engine"}


@dataclass(frozen=True)
class ModelSource:
    """A model to run: a file of some kind, optionally with the run it belongs to."""

    kind: str
    name: str
    path: Path
    run: Run | None = None
    artifact: Artifact | None = None


@dataclass(frozen=True)
class Backend:
    name: str
    kinds: tuple[str, ...]
    opener: str  # "module:function"
    default_for: tuple[str, ...] = ()
    description: str = ""

    def load_opener(self) -> Callable[[ModelSource, RunnerOptions], Runner]:
        return import_attribute(self.opener)


_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    if backend.name in _BACKENDS:
        raise ConfigError(f"backend {backend.name!r} is already registered")
    for kind in backend.default_for:
        owner = default_backend_name(kind, missing_ok=True)
        if owner is not None:
            raise ConfigError(f"kind {kind!r} already has the default backend {owner!r}")
    _BACKENDS[backend.name] = backend
    return backend


def list_backends() -> list[Backend]:
    return list(_BACKENDS.values())


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS:
        close = difflib.get_close_matches(name, list(_BACKENDS), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown backend {name!r}.{hint} Known: {', '.join(_BACKENDS)}")
    return _BACKENDS[name]


def default_backend_name(kind: str, *, missing_ok: bool = False) -> str | None:
    for backend in _BACKENDS.values():
        if kind in backend.default_for:
            return backend.name
    if missing_ok:
        return None
    known = "; ".join(f"{b.name}: {'/'.join(b.kinds)}" for b in _BACKENDS.values())
    raise ConfigError(f"no backend runs models of kind {kind!r} (registered backends and their kinds: {known})")


register_backend(
    Backend(
        "torch",
        kinds=("checkpoint",),
        opener="edge_tl.runtime.registry:open_torch",
        default_for=("checkpoint",),
        description="PyTorch eager (CPU/CUDA; CUDA: fp16, channels-last, CUDA graph)",
    )
)
register_backend(
    Backend(
        "onnxruntime",
        kinds=("onnx",),
        opener="edge_tl.runtime.registry:open_onnxruntime",
        default_for=("onnx",),
        description="ONNX Runtime (TensorRT, CUDA or CPU provider, whichever is installed)",
    )
)
register_backend(
    Backend(
        "tensorrt",
        kinds=("engine",),
        opener="edge_tl.runtime.tensorrt_runner:open_tensorrt",
        default_for=("engine",),
        description="TensorRT engine (checks its sidecar against this TensorRT and GPU; CUDA via torch or libcudart)",
    )
)


# --------------------------------------------------------------------------- resolving


def resolve_source(target: str | os.PathLike[str] | Run, *, artifact: str | None = None) -> ModelSource:
    """A run directory (+ artifact name, default the run's reference model) or a model file."""
    if isinstance(target, Run) or Run.exists(target):
        run = target if isinstance(target, Run) else Run.open(target)
        record = run.artifact(artifact or reference_artifact(run))
        return ModelSource(
            kind=record.kind, name=record.name, path=run.artifact_path(record.name), run=run, artifact=record
        )
    path = Path(target)
    if artifact is not None:
        raise ConfigError(f"--artifact {artifact!r} needs a run directory, but {str(path)!r} is not one")
    if not path.exists():
        raise RunError(f"{str(path)!r} is neither a run directory nor a model file")
    kind = _SUFFIX_KINDS.get(path.suffix.lower())
    if kind is None or not path.is_file():
        raise ConfigError(
            f"cannot tell what {str(path)!r} is: give a run directory or a model file ending in "
            f"{', '.join(sorted(_SUFFIX_KINDS))}"
        )
    return ModelSource(kind=kind, name=path.name, path=path)


def open_runner(
    target: str | os.PathLike[str] | Run | ModelSource,
    *,
    artifact: str | None = None,
    backend: str | None = None,
    options: RunnerOptions = RunnerOptions(),
) -> Runner:
    """A (not yet entered) runner for ``target``; the backend defaults by the model's kind."""
    source = target if isinstance(target, ModelSource) else resolve_source(target, artifact=artifact)
    chosen = get_backend(backend if backend is not None else str(default_backend_name(source.kind)))
    if source.kind not in chosen.kinds:
        raise ConfigError(
            f"backend {chosen.name!r} cannot run {source.name!r} (kind {source.kind!r}); "
            f"it runs {', '.join(chosen.kinds)}. "
            f"Use --backend {default_backend_name(source.kind, missing_ok=True) or '<none registered>'}"
        )
    return chosen.load_opener()(source, options)


# --------------------------------------------------------------------------- built-in openers


def open_torch(source: ModelSource, options: RunnerOptions) -> Runner:
    from edge_tl.models import Preprocessing, load_run_model
    from edge_tl.runtime.torch_runner import TorchRunner

    if source.run is None:
        raise ConfigError(
            f"{str(source.path)!r}: a checkpoint is run from its run directory (it needs the backbone and classes "
            "recorded there); pass the run directory"
        )
    model = load_run_model(source.run, checkpoint=source.name)
    size = Preprocessing.from_dict(source.run.require("preprocessing")).input_size
    return TorchRunner(model, input_spec=InputSpec(3, size, size), name=source.name, options=options)


def open_onnxruntime(source: ModelSource, options: RunnerOptions) -> Runner:
    from edge_tl.runtime.onnxruntime_runner import OnnxRuntimeRunner

    return OnnxRuntimeRunner(source.path, name=source.name, options=options)
