"""torch -> ONNX: export, check, clean up, convert to FP16.

Exporter choice (torch 2.14): the TorchScript-based exporter (``dynamo=False``) is
the default here. The torch.export-based exporter ("dynamo") only emits opset 18 and
newer and down-converts with ONNX's version converter, which has no adapter for
``Pad`` from 18 to 17: a tf_efficientnet_lite0 asked for opset 17 comes back as opset
18, which TensorRT 8.5 (JetPack 5) cannot parse. The TorchScript exporter writes opset
17 directly; with the "SAME" padding made static (:mod:`.static_padding`) and
onnxslim's clean-up its graph is Conv/Clip/Add/GlobalAveragePool/Flatten/Gemm only.
``Exporter.DYNAMO`` stays selectable for opset >= 18.
"""

from __future__ import annotations

import os
import warnings
from enum import Enum
from pathlib import Path
from typing import Any

from edge_tl._lazy import lazy_import
from edge_tl.errors import ConfigError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 17
BATCH_DIM = "batch"


class Exporter(str, Enum):
    TORCHSCRIPT = "torchscript"
    DYNAMO = "dynamo"


def export_torch_to_onnx(
    model: Any,
    path: str | os.PathLike[str],
    *,
    input_size: int,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    batch_size: int = 1,
    exporter: Exporter = Exporter.TORCHSCRIPT,
    channels: int = 3,
    simplify_graph: bool = True,
) -> Any:
    """Export ``model`` (eval mode, CPU) to ``path``; returns the checked (and simplified) ``ModelProto``.

    With ``dynamic_batch`` the first dimension is named ``"batch"``; otherwise it is
    ``batch_size``.
    """
    torch = lazy_import("torch", purpose="ONNX export")
    onnx = lazy_import("onnx", purpose="ONNX export")
    if not 11 <= opset <= 23:
        raise ConfigError(f"--opset {opset} is outside 11..23; 17 suits TensorRT 8.5 (JetPack 5) and newer")
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    path = Path(path)
    example = torch.zeros(batch_size, channels, input_size, input_size)
    kwargs: dict[str, Any] = {
        "input_names": [INPUT_NAME],
        "output_names": [OUTPUT_NAME],
        "opset_version": opset,
    }
    if exporter is Exporter.TORCHSCRIPT:
        if dynamic_batch:
            kwargs["dynamic_axes"] = {INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}}
        with warnings.catch_warnings():
            # The deprecation notice of the TorchScript exporter is expected: the choice is explained above.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*Constant folding.*")
            # Constant folding (which folds BatchNorm into the convolution weights) is left to
            # onnxslim: torch's own folding rounds more, 1.4e-4 against 8e-5 max logit
            # difference on a fine-tuned lite0 whose logits reach 15.
            torch.onnx.export(
                model, (example,), str(path), dynamo=False, do_constant_folding=not simplify_graph, **kwargs
            )
    else:
        if dynamic_batch:
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim(BATCH_DIM, min=1)},)
        program = torch.onnx.export(model, (example,), dynamo=True, verbose=False, **kwargs)
        program.save(str(path))
    proto = onnx.load(str(path))
    got = {imp.version for imp in proto.opset_import if imp.domain in ("", "ai.onnx")}
    if got != {opset}:
        raise ConfigError(
            f"the {exporter.value} exporter produced opset {sorted(got)} instead of {opset}. "
            f"Use --exporter torchscript for opset <= 17, or ask for --opset {min(got) if got else 18}."
        )
    if simplify_graph:
        proto = simplify(proto)
    onnx.checker.check_model(proto, full_check=True)
    _save(proto, path)
    return proto


def simplify(proto: Any) -> Any:
    """Fold constants, remove dead nodes and fuse Pad into Conv with onnxslim."""
    onnxslim = lazy_import("onnxslim", purpose="ONNX graph clean-up")
    return onnxslim.slim(proto)


def convert_to_fp16(proto: Any, *, keep_io_types: bool = True) -> Any:
    """FP16 weights and compute; with ``keep_io_types`` the graph still takes and returns float32."""
    onnx = lazy_import("onnx", purpose="FP16 conversion")
    float16 = lazy_import("onnxruntime.transformers.float16", purpose="FP16 conversion")
    converted = float16.convert_float_to_float16(proto, keep_io_types=keep_io_types)
    # The converter appends the float32<->float16 Casts of the graph inputs at the end
    # of the node list; ONNX requires topological order (the checker and some
    # parsers reject it otherwise).
    _topological_sort(converted.graph)
    onnx.checker.check_model(converted, full_check=True)
    return converted


def _topological_sort(graph: Any) -> None:
    produced_by = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    order: list[int] = []
    state: dict[int, int] = {}  # 1 = visiting, 2 = done

    def visit(index: int) -> None:
        # Iterative depth-first search: graphs of deep networks exceed Python's recursion limit.
        stack = [(index, False)]
        while stack:
            i, expanded = stack.pop()
            if expanded:
                state[i] = 2
                order.append(i)
                continue
            if state.get(i):
                continue
            state[i] = 1
            stack.append((i, True))
            for name in graph.node[i].input:
                j = produced_by.get(name)
                if j is not None and not state.get(j):
                    stack.append((j, False))

    for i in range(len(graph.node)):
        visit(i)
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)


def save_model(proto: Any, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    _save(proto, path)
    return path


def _save(proto: Any, path: Path) -> None:
    onnx = lazy_import("onnx")
    onnx.save(proto, str(path))


def graph_op_types(proto: Any) -> dict[str, int]:
    """How often each operator occurs in the main graph."""
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def io_signature(proto: Any) -> dict[str, Any]:
    """Input/output names, shapes (``"batch"`` for a dynamic batch) and element types."""
    onnx = lazy_import("onnx")

    def describe(value: Any) -> dict[str, Any]:
        tensor = value.type.tensor_type
        dims = [d.dim_param if d.dim_param else int(d.dim_value) for d in tensor.shape.dim]
        return {"name": value.name, "shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name}

    return {"inputs": [describe(v) for v in proto.graph.input], "outputs": [describe(v) for v in proto.graph.output]}


def main_opset(proto: Any) -> int | None:
    """The opset of the default (``ai.onnx``) domain."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def convert_opset(proto: Any, opset: int, *, what: str) -> Any:
    """``proto`` converted down to ``opset`` by ONNX's version converter, checked; a one-line refusal
    naming the re-export when the converter cannot (it has no adapter for some operators: a
    ``ReduceMean`` written at opset 18 by torch's dynamo exporter fails down to 17)."""
    onnx = lazy_import("onnx", purpose="opset conversion")
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(proto, opset)
        onnx.checker.check_model(converted, full_check=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigError(
            f"{what} is opset {main_opset(proto)} and ONNX's version converter cannot bring it to {opset} "
            f"({type(exc).__name__}: {first[:160]}); re-export it from its source at opset {opset}, e.g. "
            f"torch.onnx.export(model, x, path, opset_version={opset}, dynamo=False)"
        ) from exc
    return converted
