"""The engine's own per-layer report: at which precision and on which device each layer runs.

Both builders read the same text: trtexec's ``--exportLayerInfo`` file is
``IEngineInspector::getEngineInformation(LayerInformationFormat::kJSON)`` (``samples/trtexec/trtexec.cpp``
release/8.2, ``samples/common/sampleReporting.cpp`` release/10.3), and the Python builder asks the
inspector for the same JSON. Its format, as published engines show it (NVIDIA/TensorRT
``tools/experimental/trt-engine-explorer`` test inputs and examples, kept in tests/compile/fixtures/):

* ``{"Layers": [...], "Bindings": [...]}``; at the default ``layer_names_only`` verbosity each layer is
  only its name (a string), which says nothing about precision: such a file is refused with the fix;
* at ``detailed`` verbosity a layer is an object with ``Name``, ``LayerType``, ``Inputs``/``Outputs``
  (each with ``Dimensions`` and ``Format/Datatype``, e.g. ``"Thirty-two wide channel vectorized row
  major Int8 format"``, ``"Row major linear FP32"``), ``ParameterType`` (``Convolution``, ...), and for
  weighted layers ``Weights: {"Type": "Int8"|"Half"|"Float", "Count": n}``, ``Kernel``, ``OutMaps``,
  ``Groups``;
* a DLA subgraph is one opaque layer named ``{ForeignNode[first...last]}`` over the ONNX nodes from
  ``first`` to ``last`` (the same name the build log prints after ``[DlaLayer]``).

The precision of a Conv/Gemm/MatMul layer is the type of its weights where the file gives it, else of
its first input, as TensorRT Engine Explorer reads it (``trex/layer.py``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from edge_tl.errors import RunError

#: Layer kinds whose precision decides an engine's speed: TensorRT imports ONNX Gemm as a 1x1 convolution.
COMPUTE_PARAMETER_TYPES = frozenset({"Convolution", "Deconvolution", "FullyConnected", "MatrixMultiply"})
COMPUTE_ONNX_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_FOREIGN = re.compile(r"^\{ForeignNode\[(?P<first>.*?)\.\.\.(?P<last>.*)\]\}$|^\{ForeignNode\[(?P<only>.*)\]\}$")
_FORMATTING = frozenset({"Reformat", "NoOp", "Shuffle"})

#: INT8 builds from a Q/DQ ONNX: at most this share of Conv/Gemm/MatMul MACs may run outside INT8.
QDQ_MAX_NON_INT8 = 0.05
#: INT8 builds from a calibration cache: TensorRT may pick FP16 per layer where it is faster; more than
#: half of the MACs outside INT8 is no longer an INT8 engine.
CACHE_MAX_NON_INT8 = 0.5


def precision_of(text: str) -> str:
    """``int8``/``fp16``/``fp32``/``bf16``/``fp8`` from a ``Format/Datatype`` string or a weights ``Type``."""
    words = set(re.split(r"[^A-Za-z0-9]+", text.lower()))
    for precision, names in (
        ("int8", {"int8"}),
        ("fp16", {"fp16", "half"}),
        ("bf16", {"bf16"}),
        ("fp8", {"fp8"}),
        ("fp32", {"fp32", "float"}),
    ):
        if words & names:
            return precision
    return "unknown"


@dataclass(frozen=True)
class EngineLayer:
    name: str
    layer_type: str
    parameter_type: str
    precision: str
    dla: bool
    compute: bool
    macs: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.parameter_type or self.layer_type,
            "precision": self.precision,
            "device": "DLA" if self.dla else "GPU",
            "macs": self.macs,
        }


def _conv_macs(layer: dict[str, Any]) -> int | None:
    try:
        out = layer["Outputs"][0]["Dimensions"]
        cin = layer["Inputs"][0]["Dimensions"][1]
        kernel = 1
        for k in layer.get("Kernel", [1]):
            kernel *= int(k)
        groups = int(layer.get("Groups", 1))
        count = 1
        for d in out:
            count *= int(d)
        if count <= 0 or int(cin) <= 0:
            return None  # dynamic dimensions (-1)
        return count * (int(cin) // groups) * kernel
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def parse_layer_info(text: str, *, where: str, dla_names: frozenset[str] = frozenset()) -> list[EngineLayer]:
    """The layers of an ``--exportLayerInfo`` / IEngineInspector JSON; ``dla_names``: DLA subgraphs by name."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunError(f"{where} is not TensorRT's layer information JSON ({exc})") from exc
    raw = data.get("Layers") if isinstance(data, dict) else None
    if not isinstance(raw, list):
        raise RunError(f'{where} has no "Layers" list: it is not TensorRT\'s layer information JSON')
    if raw and all(isinstance(layer, str) for layer in raw):
        raise RunError(
            f"{where} names the layers only (profiling verbosity layer_names_only): it carries no precisions. "
            "Rebuild with --profilingVerbosity=detailed (edge-tl's build plans do)"
        )
    layers = []
    for layer in raw:
        if not isinstance(layer, dict) or "Name" not in layer:
            raise RunError(f"{where}: a layer without a Name ({str(layer)[:80]!r})")
        name = str(layer["Name"])
        parameter_type = str(layer.get("ParameterType", ""))
        layer_type = str(layer.get("LayerType", ""))
        dla = name in dla_names
        weights = layer.get("Weights")
        if isinstance(weights, dict) and "Type" in weights:
            precision = precision_of(str(weights["Type"]))
        else:
            inputs = layer.get("Inputs") or []
            precision = precision_of(str(inputs[0].get("Format/Datatype", ""))) if inputs else "unknown"
        compute = parameter_type in COMPUTE_PARAMETER_TYPES
        macs = _conv_macs(layer) if parameter_type in ("Convolution", "Deconvolution") else None
        layers.append(EngineLayer(name, layer_type, parameter_type, precision, dla, compute, macs))
    return layers


def dla_subgraph_names(build_log: str) -> frozenset[str]:
    """The ``{ForeignNode[...]}`` names a DLA build's log lists after ``[DlaLayer]`` (one line per subgraph)."""
    return frozenset(m.group(1).strip() for m in re.finditer(r"\[DlaLayer\]\s*(\{ForeignNode\[.*\]\})", build_log))


def onnx_compute_nodes(model: Any, *, batch: int = 1) -> list[tuple[str, str, int | None]]:
    """Every node of an ONNX model in graph order as (name, op_type, MACs or None), MACs for Conv/Gemm/MatMul
    from the shapes ONNX's shape inference gives (``onnx.shape_inference``), a symbolic batch taken as ``batch``."""
    import onnx
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
        if dims and dims[0] <= 0:
            dims[0] = batch
        shapes[vi.name] = dims
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)

    def known(dims: list[int] | None) -> bool:
        return bool(dims) and all(d > 0 for d in dims)  # type: ignore[union-attr]

    nodes = []
    for node in inferred.graph.node:
        # The ONNX parser names a layer after its node, or "node_of_<first output>" for an unnamed node.
        name = node.name or f"node_of_{node.output[0]}"
        macs = None
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1:
            out, weight = shapes.get(node.output[0]), shapes.get(node.input[1])
            if known(out) and known(weight):
                per_out = 1
                for d in weight[1:]:  # type: ignore[index]
                    per_out *= d
                total = 1
                for d in out:  # type: ignore[union-attr]
                    total *= d
                macs = total * per_out
        elif node.op_type in ("Gemm", "MatMul"):
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            if known(a) and known(out):
                trans_a = any(att.name == "transA" and onnx.helper.get_attribute_value(att) for att in node.attribute)
                k = a[-2] if trans_a else a[-1]  # type: ignore[index]
                total = 1
                for d in out:  # type: ignore[union-attr]
                    total *= d
                macs = total * k
        nodes.append((name, node.op_type, macs))
    return nodes


def _expand_foreign(
    name: str, nodes: list[tuple[str, str, int | None]], precision: str
) -> list[tuple[str, int | None]] | None:
    """The Conv/Gemm/MatMul nodes of a ``{ForeignNode[first...last]}`` as (precision, MACs); None if unnamed."""
    match = _FOREIGN.match(name)
    if match is None:
        return None
    first = match.group("first") if match.group("only") is None else match.group("only")
    last = match.group("last") if match.group("only") is None else match.group("only")
    index = {n: i for i, (n, _, _) in enumerate(nodes)}
    if first not in index or last not in index:
        return None
    return [(precision, macs) for n, op, macs in nodes[index[first] : index[last] + 1] if op in COMPUTE_ONNX_OPS]


def summarize(
    layers: list[EngineLayer],
    *,
    precision: str,
    dla: bool,
    recipe: str | None,
    onnx_nodes: list[tuple[str, str, int | None]] | None = None,
    kept_float: tuple[str, ...] = (),
    predicted_gpu_ops: dict[str, int] | None = None,
    source: str,
) -> dict[str, Any]:
    """The summary kept in the sidecar and the manifest, with the findings that compile/deploy/verify flag."""
    nodes = onnx_nodes or []
    counts: dict[str, int] = {}
    macs: dict[str, int] = {}
    macs_known = True
    kept_counts = [0, 0]  # layers, MACs
    build_precision = "int8" if precision == "int8" else "fp16"
    unresolved = []
    for layer in layers:
        if layer.dla:
            expanded = _expand_foreign(layer.name, nodes, build_precision)
            if expanded is None:
                unresolved.append(layer.name)
                continue
            entries = expanded
        elif layer.compute:
            entries = [(layer.precision, layer.macs)]
            if layer.precision != "int8" and _kept(layer.name, list(kept_float)):
                # A layer quantize kept in float on purpose (its accuracy budget) may run outside INT8.
                kept_counts[0] += 1
                kept_counts[1] += layer.macs or 0
        else:
            continue
        for prec, mac in entries:
            counts[prec] = counts.get(prec, 0) + 1
            if mac is None:
                macs_known = False
            else:
                macs[prec] = macs.get(prec, 0) + mac
    total_layers = sum(counts.values())
    total_macs = sum(macs.values()) if macs_known else 0
    kept = [k for k in kept_float if k]
    fp32_layers = [
        layer.name
        for layer in layers
        if layer.precision == "fp32"
        and not layer.dla
        and layer.layer_type not in _FORMATTING
        and layer.parameter_type not in _FORMATTING
    ]
    gpu_fallbacks = (
        [
            layer.name
            for layer in layers
            if not layer.dla and layer.layer_type not in _FORMATTING and layer.parameter_type not in _FORMATTING
        ]
        if dla
        else []
    )

    basis, totals = ("macs", macs) if macs_known and total_macs else ("layers", counts)
    total = total_macs if basis == "macs" else total_layers
    kept_amount = kept_counts[1] if basis == "macs" else kept_counts[0]
    non_int8 = None
    if precision == "int8" and total:
        non_int8 = (total - totals.get("int8", 0) - kept_amount) / total
    fp32_share = (totals.get("fp32", 0) / total) if total and precision in ("int8", "fp16") else None
    findings = []
    if fp32_share is not None and fp32_share > QDQ_MAX_NON_INT8:
        # The plan asked for FP16 at least; FP32 Conv/Gemm/MatMul work means the builder did not do what it said
        # (e.g. a strongly typed build of an FP32 graph), kept-float layers included: they are meant to run FP16.
        findings.append(
            f"{fp32_share * 100:.1f}% of the Conv/Gemm/MatMul {basis} run FP32 in a {precision.upper()} engine "
            f"(limit {QDQ_MAX_NON_INT8 * 100:g}%)"
        )
    if precision == "int8" and non_int8 is not None:
        limit = CACHE_MAX_NON_INT8 if recipe == "tensorrt-int8-cache" else QDQ_MAX_NON_INT8
        if non_int8 > limit:
            findings.append(
                f"{non_int8 * 100:.1f}% of the Conv/Gemm/MatMul {basis} run outside INT8 "
                f"(limit {limit * 100:g}% for {recipe or 'this recipe'}): "
                + ", ".join(f"{k} {v}" for k, v in sorted(totals.items()))
            )
    if dla and gpu_fallbacks and not predicted_gpu_ops:
        findings.append(
            f"{len(gpu_fallbacks)} layer(s) fell back to the GPU that the plan did not predict: "
            + ", ".join(gpu_fallbacks[:5])
            + (" ..." if len(gpu_fallbacks) > 5 else "")
        )
    return {
        "source": source,
        "layers": len(layers),
        "compute_layers": dict(sorted(counts.items())),
        "compute_macs": dict(sorted(macs.items())) if macs_known and macs else None,
        "non_int8_share": None if non_int8 is None else round(non_int8, 6),
        "fp32_share": None if fp32_share is None else round(fp32_share, 6),
        "share_basis": basis,
        "dla_subgraphs": sum(1 for layer in layers if layer.dla),
        "dla_unresolved": unresolved,
        "gpu_fallbacks": gpu_fallbacks,
        "fp32_layers": fp32_layers if precision == "int8" else [],
        "kept_float": kept,
        "findings": findings,
    }


def _kept(layer_name: str, kept: list[str]) -> bool:
    # A fused TensorRT layer is named after its ONNX nodes joined with " + ".
    parts = {p.strip() for p in layer_name.split("+")}
    return any(k in parts for k in kept)


def summarize_build(
    text: str,
    *,
    where: str,
    build_log: str,
    precision: str,
    dla: bool,
    recipe: str | None,
    kept_float: tuple[str, ...],
    predicted_gpu_ops: dict[str, int] | None,
    onnx_path: Any,
    batch: int,
    source: str,
) -> dict[str, Any]:
    """:func:`summarize` of one build from its layer information text and build log (both builders, on the
    workstation or the device); the ONNX is read only for a DLA build, whose subgraphs name ONNX node ranges."""
    layers = parse_layer_info(text, where=where, dla_names=dla_subgraph_names(build_log) if dla else frozenset())
    nodes = None
    if dla:
        import onnx

        nodes = onnx_compute_nodes(onnx.load(str(onnx_path)), batch=batch)
    return summarize(
        layers,
        precision=precision,
        dla=dla,
        recipe=recipe,
        onnx_nodes=nodes,
        kept_float=kept_float,
        predicted_gpu_ops=predicted_gpu_ops,
        source=source,
    )
