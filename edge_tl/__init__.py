"""edge-tl: fine-tune compact image backbones and ship them to edge GPUs.

Importing the package is cheap: heavy libraries (torch, onnxruntime, TensorRT)
are imported only by the modules that need them, through :mod:`edge_tl._lazy`.
Each stage's function and its config are names of this package, imported on
first use (``edge_tl.finetune``, ``edge_tl.export_run``...); every stage reads
and writes one run directory, as the ``edge-tl`` commands do.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, NamedTuple

__version__ = "0.1.0"


class _Entry(NamedTuple):
    module: str  # where users import it from today
    attribute: str
    example: str


#: The top-level API: name -> where it lives and a short example. The stages come in the
#: order of the flow; `edge-tl ship` runs them all from the command line and has no Python
#: function of its own (its request is the command's options).
_API: dict[str, _Entry] = {
    "list_backbones": _Entry("edge_tl.models", "list_backbones", "[b.name for b in list_backbones()]"),
    "FinetuneConfig": _Entry(
        "edge_tl.train",
        "FinetuneConfig",
        "FinetuneConfig(data='photos/', out='runs/r1', backbone='efficientnet_lite0', epochs=15)",
    ),
    "finetune": _Entry(
        "edge_tl.train",
        "finetune",
        "finetune(FinetuneConfig(data='digits', out='runs/r1')).best_val_top1",
    ),
    "evaluate_run": _Entry("edge_tl.train", "evaluate_run", "evaluate_run('runs/r1').result.top1"),
    "ImportRequest": _Entry(
        "edge_tl.importers",
        "ImportRequest",
        "ImportRequest(kind='pytorch', out=Path('runs/r2'), backbone='resnet18', weights=Path('best.pth'),"
        " labels=Path('labels.txt'), val_data=Path('val/'))",
    ),
    "PreprocessingOptions": _Entry(
        "edge_tl.importers",
        "PreprocessingOptions",
        "PreprocessingOptions(img_size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))",
    ),
    "import_model": _Entry(
        "edge_tl.importers",
        "import_model",
        "import_model(ImportRequest(kind='onnx', out=Path('runs/r3'), onnx=Path('model.onnx'),"
        " labels=Path('labels.txt'), val_data=Path('val/'), preprocessing=PreprocessingOptions(img_size=224)))",
    ),
    "ExportConfig": _Entry("edge_tl.export", "ExportConfig", "ExportConfig(opset=17, dynamic_batch=False)"),
    "export_run": _Entry(
        "edge_tl.export", "export_run", "[m.path for m in export_run('runs/r1', config=ExportConfig()).models]"
    ),
    "QuantizeConfig": _Entry(
        "edge_tl.quantize",
        "QuantizeConfig",
        "QuantizeConfig(target='jetson-orin-nano-8gb', recipe='tensorrt-int8-qdq', max_accuracy_drop=1.0)",
    ),
    "quantize_run": _Entry(
        "edge_tl.quantize",
        "quantize_run",
        "quantize_run('runs/r1', config=QuantizeConfig(max_accuracy_drop=1.0)).model_path",
    ),
    "CompileRequest": _Entry(
        "edge_tl.compile", "CompileRequest", "CompileRequest(precision='int8', workspace_mib=1024)"
    ),
    "compile_run": _Entry(
        "edge_tl.compile",
        "compile_run",
        "compile_run('runs/r1', target='jetson-orin-nano-8gb', request=CompileRequest(precision='int8'))",
    ),
    "make_bundle": _Entry(
        "edge_tl.deploy",
        "make_bundle",
        "make_bundle('runs/r1', target='jetson-orin-nano-8gb', precision='int8').root",
    ),
    "DeployConfig": _Entry(
        "edge_tl.deploy",
        "DeployConfig",
        "DeployConfig(target='jetson-orin-nano-8gb', precision='int8', iterations=500)",
    ),
    # `deploy` is the name of the subpackage edge_tl.deploy, so its function takes the stages' `_run` suffix here.
    "deploy_run": _Entry(
        "edge_tl.deploy",
        "deploy",
        "deploy_run('runs/r1', 'user@jetson', DeployConfig(target='jetson-orin-nano-8gb', precision='int8'))",
    ),
    "deploy_fleet": _Entry(
        "edge_tl.deploy",
        "deploy_fleet",
        "deploy_fleet('runs/r1', 'devices.toml', base={'target': 'jetson-orin-nano-8gb', 'precision': 'int8'})",
    ),
    "VerifyConfig": _Entry("edge_tl.verify", "VerifyConfig", "VerifyConfig(max_accuracy_drop=0.5, min_agreement=0.99)"),
    "verify_run": _Entry(
        "edge_tl.verify",
        "verify_run",
        "print(verify_run('runs/r1', config=VerifyConfig(max_accuracy_drop=0.5)).table())",
    ),
    "Budget": _Entry("edge_tl.bench", "Budget", "Budget(seconds=5.0, min_iterations=50)"),
    "BenchConfig": _Entry(
        "edge_tl.bench", "BenchConfig", "BenchConfig(batch_sizes=(1, 8), measure=Budget(seconds=5.0))"
    ),
    "bench_target": _Entry(
        "edge_tl.bench",
        "bench_target",
        "bench_target('runs/r1', artifact='onnx-fp16', config=BenchConfig(batch_sizes=(1, 8))).results",
    ),
    "write_report": _Entry("edge_tl.report", "write_report", "write_report('runs/r1').index"),
    "run_quickstart": _Entry("edge_tl.quickstart", "run_quickstart", "run_quickstart('edge-tl-quickstart').summary"),
    "Target": _Entry("edge_tl.targets", "Target", "target: Target = load_target('jetson-orin-nano-8gb')"),
    "load_target": _Entry("edge_tl.targets", "load_target", "load_target('jetson-orin-nano-8gb').fast_precisions"),
    "list_targets": _Entry("edge_tl.targets", "list_targets", "[t.name for t in list_targets()]"),
    "Run": _Entry("edge_tl.runs", "Run", "Run.open('runs/r1').artifact('onnx-fp32').path"),
    "Precision": _Entry(
        "edge_tl.vocab", "Precision", "QuantizeConfig(precision=Precision.FP16)  # the one precision vocabulary"
    ),
    "Device": _Entry("edge_tl.vocab", "Device", "FinetuneConfig(data='digits', out='runs/r1', device=Device.CPU)"),
    "EdgeTLError": _Entry(
        "edge_tl.errors",
        "EdgeTLError",
        "try:\n    export_run('runs/r1')\nexcept EdgeTLError as exc:  # every edge-tl error: one line, the fix\n"
        "    print(exc)",
    ),
    "ConfigError": _Entry(
        "edge_tl.errors",
        "ConfigError",
        "try:\n    load_target('jetson-orin-nano')\nexcept ConfigError as exc:  # bad options or files\n    print(exc)",
    ),
    "ToleranceError": _Entry(
        "edge_tl.errors",
        "ToleranceError",
        "try:\n    quantize_run('runs/r1', config=QuantizeConfig(max_accuracy_drop=0.5))\n"
        "except ToleranceError as exc:  # an accuracy budget or gate failed; the results are saved\n    print(exc)",
    ),
}

__all__ = ["__version__", *_API]

__doc__ = (
    (__doc__ or "")
    + "\nThe top-level names, with an example of each::\n\n"
    + "\n".join(
        f"    # {name}: {entry.module}.{entry.attribute}\n"
        + "".join(f"    {line}\n" for line in entry.example.splitlines())
        for name, entry in _API.items()
    )
)


def __getattr__(name: str) -> Any:
    entry = _API.get(name)
    if entry is None:
        raise AttributeError(_unknown(name), name=name)
    value = getattr(importlib.import_module(entry.module), entry.attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    # The API, the dunders and the subpackages already imported; not this module's own helpers.
    loaded = [name for name, value in globals().items() if isinstance(value, ModuleType) and name != "importlib"]
    return sorted({*__all__, *loaded, *(name for name in globals() if name.startswith("__"))})


def _unknown(name: str) -> str:
    import difflib

    lowered = {key.lower(): key for key in _API}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=4, cutoff=0.6)
    close += [key for key in lowered if key.startswith(name.lower()) and key not in close]
    message = f"module 'edge_tl' has no attribute {name!r}"
    if close:
        message += f"; did you mean {', '.join(lowered[key] for key in close[:4])}?"
    return message + " (edge_tl.__all__ lists the top-level names; subpackages load with `import edge_tl.<name>`)"
