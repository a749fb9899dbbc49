"""A recipe output format of one's own, as a user adds one: this file and a recipe naming it.

``toy-activation-qdq`` puts one per-tensor INT8 QuantizeLinear/DequantizeLinear pair on the output of
every node of the recipe's ``placement.op_types`` (activations only; weights stay float), with the
calibrated range of that output. quantize measures, budgets, times and records the model it builds
like any shipped Q/DQ format. The recipe is ``toy-activation-qdq.toml`` beside this file;
test_quantize_writers.py runs it on a trained run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edge_tl.quantize.writers import ModelWriter


class ActivationQdq(ModelWriter):
    name = "toy-activation-qdq"

    def _nodes(self, model: Any, recipe: Any) -> list[Any]:
        outputs = {o.name for o in model.graph.output}
        return [n for n in model.graph.node if n.op_type in recipe.placement.op_types and n.output[0] not in outputs]

    def tensors(self, model: Any, recipe: Any) -> list[str]:
        return [n.output[0] for n in self._nodes(model, recipe)]

    def layers(self, model: Any, recipe: Any) -> list[str]:
        return [n.name for n in self._nodes(model, recipe)]

    def build(self, model: Any, ranges: dict[str, Any], recipe: Any, float_layers: Sequence[str]) -> Any:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        floats = set(float_layers)
        pairs: dict[str, list[Any]] = {}
        for node in self._nodes(out, recipe):
            if node.name in floats:
                continue
            tensor = node.output[0]
            scale, zero, q, dq = (f"{tensor}_toy_{part}" for part in ("scale", "zero", "q", "dq"))
            out.graph.initializer.extend(
                [
                    numpy_helper.from_array(np.array(max(ranges[tensor].amax, 1e-8) / 127, np.float32), scale),
                    numpy_helper.from_array(np.array(0, np.int8), zero),
                ]
            )
            for consumer in out.graph.node:
                for i, name in enumerate(consumer.input):
                    if name == tensor:
                        consumer.input[i] = dq
            pairs[node.name] = [
                helper.make_node("QuantizeLinear", [tensor, scale, zero], [q], name=f"{node.name}_toy_q"),
                helper.make_node("DequantizeLinear", [q, scale, zero], [dq], name=f"{node.name}_toy_dq"),
            ]
        # each pair right after its producer: the graph stays in topological order
        nodes = [m for n in out.graph.node for m in (n, *pairs.get(n.name, ()))]
        del out.graph.node[:]
        out.graph.node.extend(nodes)
        onnx.checker.check_model(out)
        return out


WRITER = ActivationQdq()
