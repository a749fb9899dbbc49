"""ONNX graph facts the quantizers share: names, activations, weighted layers, residual Adds."""

from __future__ import annotations

import fnmatch
import heapq
from collections.abc import Iterable
from typing import Any

from edge_tl._lazy import lazy_import

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")


def ensure_node_names(model: Any) -> Any:
    """Give every unnamed node a unique name (``<OpType>_<index>``), in place.

    Float-layer lists, sensitivity rankings and recipe patterns all refer to node
    names, so they must exist and be stable between calibration and writing.
    """
    taken = {n.name for n in model.graph.node if n.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return model


def initializer_names(model: Any) -> set[str]:
    return {init.name for init in model.graph.initializer}


def float_activations(model: Any) -> list[str]:
    """The graph inputs and node outputs that are float32 activations, in graph order.

    Outputs of ``Constant`` nodes and of shape arithmetic (int64 tensors) are left out.
    """
    onnx = lazy_import("onnx", purpose="quantization")
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
    }
    inits = initializer_names(model)
    names = [v.name for v in model.graph.input if v.name not in inits]
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        names.extend(out for out in node.output if out)
    float_type = onnx.TensorProto.FLOAT
    return [n for n in names if types.get(n, float_type) == float_type]


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def weighted_nodes(model: Any, op_types: Iterable[str] = WEIGHTED_OPS) -> list[Any]:
    """Conv/Gemm/MatMul nodes (those in ``op_types``) in graph order."""
    wanted = set(op_types)
    return [n for n in model.graph.node if n.op_type in wanted]


def residual_skip_inputs(model: Any) -> dict[str, str]:
    """Add node name -> the tensor on its skip connection.

    An Add of two activations joins a residual branch and a skip connection; the
    skip input is the one produced earlier in the graph (the branch is computed
    from it). Adds with a constant operand (bias-like) are not residual joins.
    """
    inits = initializer_names(model)
    order = {v.name: -1 for v in model.graph.input}
    for index, node in enumerate(model.graph.node):
        for out in node.output:
            order[out] = index
    out: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        a, b = node.input
        if a in inits or b in inits or a not in order or b not in order:
            continue
        out[node.name] = a if order[a] <= order[b] else b
    return out


def topological_sort(model: Any) -> Any:
    """Reorder nodes so every input is produced before it is read (ONNX requires it), in place.

    onnxruntime.quantization appends the Q/DQ of graph inputs after their consumers.
    Kahn's algorithm, stable: among ready nodes the original order is kept.
    """
    nodes = list(model.graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    waiting = [0] * len(nodes)
    readers: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        deps = {producer[name] for name in node.input if name in producer and producer[name] != i}
        waiting[i] = len(deps)
        for d in deps:
            readers.setdefault(d, []).append(i)
    ready = [i for i, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in readers.get(i, []):
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        raise ValueError("the graph has a cycle; it cannot be sorted")
    del model.graph.node[:]
    model.graph.node.extend(nodes[i] for i in order)
    return model
