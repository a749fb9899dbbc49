"""STAND-IN for NVIDIA's trtexec, for the deploy and compile tests on a machine without TensorRT.

It is installed as ``trtexec`` on a loopback test device's PATH. It is not TensorRT, but it
refuses what the TensorRT release it claims to be refuses:

* its release is the banner of the replayed log (``[TensorRT v8400]`` is 8.4); every flag must
  be in that release's option list (tests/compile/trtexec_options/, extracted from NVIDIA/TensorRT
  ``release/X.Y`` ``samples/common/sampleOptions.cpp``), and the values of the flags edge-tl uses
  must parse as trtexec parses them (a boolean flag with any value is that flag). Otherwise it prints
  trtexec's ``Unknown option`` error and ``&&&& FAILED`` and exits 1, as ``samples/trtexec/trtexec.cpp``
  does (reportFail);
* ``--help``: the banner only (trtexec prints it before parsing anything, then the help, exit 0);
* ``--onnx=X --saveEngine=Y``: "builds" by copying the ONNX to Y and prints the replayed log; with
  ``--timingCacheFile=F`` it loads F when it is there and saves it after the build, growing by one
  record per build, with trtexec's messages ("Loaded N bytes of timing cache from F", "Saved N bytes
  of timing cache to F": release/8.2 sampleUtils.h, release/8.4 and 8.6 common.h, release/10.3
  samples/utils/timingCache.cpp);
* ``--loadEngine=Y --loadInputs=name:file --exportOutput=out.json``: runs Y (the copied ONNX) with
  ONNX Runtime on the raw float32 input and writes ``--exportOutput`` in trtexec's format
  (``exportJSONOutput`` in ``samples/common/sampleReporting.cpp``: ``name``, ``dimensions`` as
  ``"2x10"``, ``values`` printed by an ``std::ostream`` at its default 6 significant digits);
* ``--exportLayerInfo=F`` (with ``--profilingVerbosity=detailed``) on a build: writes the engine's layer
  information JSON as IEngineInspector does (see ``layer_info`` below), and a DLA build logs its subgraphs;
* ``--loadEngine=Y`` otherwise (timing): replays a real trtexec log (REPLAY_LOG below,
  from tests/compile/fixtures/) so the parsing of real output is exercised; ``--exportTimes=F``
  writes one record per query in the release's ``exportJSONTrace`` format (see ``export_times``);
* CUDA graphs: 11.x turns them off under ``--useDLACore`` with a warning (release/11.0
  ``sampleOptions.cpp``); an engine whose launch cannot be captured (``STANDIN_TRTEXEC_UNCAPTURABLE=1``)
  gets the release's "ignored" warning (``sampleInference.cpp``), as a real one does.
"""

import json
import os
import re
import shutil
import sys

REPLAY_LOG = os.environ.get("STANDIN_TRTEXEC_LOG", "@REPLAY_LOG@")
OPTIONS_DIR = os.environ.get("STANDIN_TRTEXEC_OPTIONS", "@OPTIONS_DIR@")

_INTEGER = {"--warmUp", "--duration", "--iterations", "--avgRuns", "--useDLACore", "--workspace", "--streams"}
_POOLS = {"workspace", "dlaSRAM", "dlaLocalDRAM", "dlaGlobalDRAM", "tacticSharedMem"}  # MemoryPoolType names
_SHAPE = re.compile(r"^[^:]+:\d+(x\d+)*$")
_FILES_READ = {"--onnx", "--loadEngine", "--calib"}


def release_of(banner_code: int) -> tuple:
    """(major, minor) from trtexec's banner number (x1000 up to 9.x, x10000 from 10.0)."""
    if banner_code >= 100000:
        return banner_code // 10000, banner_code // 100 % 100
    return banner_code // 1000, banner_code // 100 % 10


def options_file(release: tuple, options_dir: str) -> str:
    """The option list of ``release``: its own, or the newest earlier one of the same major."""
    available = []
    for name in os.listdir(options_dir):
        match = re.fullmatch(r"trtexec-(\d+)\.(\d+)\.txt", name)
        if match:
            available.append((int(match.group(1)), int(match.group(2))))
    same_major = sorted(v for v in available if v[0] == release[0] and v <= release)
    if not same_major:
        raise SystemExit(f"stand-in trtexec: no option list for TensorRT {release[0]}.{release[1]} in {options_dir}")
    major, minor = same_major[-1]
    return os.path.join(options_dir, f"trtexec-{major}.{minor}.txt")


def known_options(release: tuple, options_dir: str) -> set:
    with open(options_file(release, options_dir), encoding="utf-8") as fh:
        return {line.strip() for line in fh if line.strip() and not line.startswith("#")}


def refusal(argv: list, release: tuple, options_dir: str) -> str:
    """trtexec's error for ``argv`` on ``release`` ('' when it parses)."""
    known = known_options(release, options_dir)
    for arg in argv:
        # trtexec splits each argument at its first '=' (argsToArgumentsMap) and reads a boolean flag as
        # true whatever follows it (stringToValue<bool> returns true; release/8.2 to release/11.1
        # samples/common/sampleOptions.cpp): "--fp16=1", even "--fp16=0", is "--fp16".
        name, _, value = arg.partition("=")
        if name not in known:
            return f"Unknown option: {name} {value}"
        if name in _INTEGER and not re.fullmatch(r"-?\d+", value):
            return f"Invalid value for {name}: {value!r} is not an integer"
        if name == "--memPoolSize":
            for pool in value.split(","):
                pool_name, _, size = pool.partition(":")
                if pool_name not in _POOLS:
                    return f"Unknown memory pool: {pool_name}"
                if not re.fullmatch(r"\d+(\.\d+)?[KMG]?", size):
                    return f"Invalid size for memory pool {pool_name}: {size!r}"
        if name in ("--minShapes", "--optShapes", "--maxShapes", "--shapes") and not all(
            _SHAPE.match(s) for s in value.split(",")
        ):
            return f"Invalid shape for {name}: {value!r} (want name:NxCxHxW)"
        if name in _FILES_READ and not os.path.isfile(value):
            return f"Cannot open {name} file {value!r}"
    return ""


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def export_output(path: str, name: str, array) -> None:
    """``--exportOutput`` as trtexec writes it (release/10.3 samples/common/sampleReporting.cpp)."""
    dims = "x".join(str(d) for d in array.shape)
    values = ", ".join(_fmt(float(v)) for v in array.ravel())
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f'[\n  {{ "name" : "{name}"\n  , "dimensions" : "{dims}"\n  , "values" : [ {values} ]\n  }}\n]\n')


# ``Format/Datatype`` strings and layer keys of TensorRT's layer information JSON, as NVIDIA's published
# detailed exports show them (NVIDIA/TensorRT release/10.3 tools/experimental/trt-engine-explorer examples
# and tests/inputs, written by 8.x; kept in tests/compile/fixtures/layer_info/). 10.x adds per-layer
# "Origin", "StreamId" and "Metadata" (TREx release/10.3 trex/layer.py reads "Metadata").
_FORMATS = {
    "Int8": "Thirty-two wide channel vectorized row major Int8 format",
    "Half": "Row major linear FP16 format",
    "Float": "Row major linear FP32",
}
_COMPUTE = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def _node_name(node) -> str:
    # The ONNX parser names a layer after its node, or "node_of_<first output>" when the node has no name.
    return node.name or f"node_of_{node.output[0]}"


def layer_info(onnx_path: str, *, release: tuple, opts: dict) -> str:
    """The ``--exportLayerInfo`` JSON a real build of ``onnx_path`` would write, each layer's precision derived
    from the graph and the flags as TensorRT derives it:

    * a Conv/Gemm/MatMul whose weights come through a DequantizeLinear (Q/DQ) runs Int8;
    * strongly typed (``--stronglyTyped``; always on 11.x): every other layer runs in its graph type, so an
      FP16 graph runs Half and an FP32 graph Float; ``--fp16``/``--int8`` are ignored there
      (release/10.3 sampleOptions.cpp disables them under --stronglyTyped);
    * weakly typed: ``--int8`` with ``--calib`` (implicit INT8) runs every Conv/Gemm/MatMul Int8; other
      layers run Half under ``--fp16`` and Float without it.
    A DLA build (``--useDLACore``) is one opaque ``{ForeignNode[first...last]}`` subgraph.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(onnx_path)
    graph = model.graph
    strongly = "stronglyTyped" in opts or release[0] >= 11
    fp16 = "fp16" in opts and not strongly
    implicit_int8 = "int8" in opts and "calib" in opts and not strongly
    producers = {out: node for node in graph.node for out in node.output}
    inits = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    batch = 1
    if "optShapes" in opts:
        batch = int(opts["optShapes"].rpartition(":")[2].split("x")[0])

    def graph_type(tensor: str) -> str:
        array = inits.get(tensor)
        if array is not None:
            return "Half" if str(array.dtype) == "float16" else "Float"
        node = producers.get(tensor)
        if node is not None and node.op_type == "Cast":
            to = next(a.i for a in node.attribute if a.name == "to")
            return "Half" if to == onnx.TensorProto.FLOAT16 else "Float"
        if node is not None and node.op_type == "DequantizeLinear":
            return graph_type(node.input[1])  # DequantizeLinear's output has its scale's type
        return graph_type(node.input[0]) if node is not None and node.input else "Float"

    def float_type(tensor: str) -> str:
        if strongly:
            return graph_type(tensor)
        return "Half" if fp16 else "Float"

    layers = []
    for node in graph.node:
        if node.op_type in ("DequantizeLinear", "Constant", "Cast") or (
            node.op_type == "QuantizeLinear" and node.input[0] in inits
        ):
            continue  # folded into the consumer (weights) or a reformat of its neighbour
        name = _node_name(node)
        layer = {"Name": name, "LayerType": "Reformat" if node.op_type == "QuantizeLinear" else node.op_type}
        if node.op_type in _COMPUTE:
            weight = node.input[1]

            def dequantized(tensor: str) -> bool:
                return producers.get(tensor) is not None and producers[tensor].op_type == "DequantizeLinear"

            # Explicit INT8 needs both the activation and the weights to come through Q/DQ.
            qdq = dequantized(weight) and dequantized(node.input[0])
            source = producers[weight].input[0] if qdq else weight
            if qdq or implicit_int8:
                dtype = "Int8"
            else:
                dtype = graph_type(weight) if strongly else ("Half" if fp16 else "Float")
            array = inits.get(source)
            kernel = list(array.shape[2:]) if array is not None and array.ndim == 4 else [1, 1]
            layer.update(
                {
                    "LayerType": "CaskConvolution",
                    "ParameterType": "Convolution",
                    "Kernel": kernel,
                    "OutMaps": int(array.shape[0]) if array is not None else 0,
                    "Groups": next((a.i for a in node.attribute if a.name == "group"), 1),
                    "Weights": {"Type": dtype, "Count": int(array.size) if array is not None else 0},
                }
            )
            io_type = dtype
        elif node.op_type == "QuantizeLinear":
            layer.update({"ParameterType": "Reformat", "Origin": "QDQ"})
            io_type = "Int8"
        else:
            io_type = float_type(node.input[0])
        layer["Inputs"] = [{"Name": node.input[0], "Location": "Device", "Format/Datatype": _FORMATS[io_type]}]
        layer["Outputs"] = [{"Name": node.output[0], "Location": "Device", "Format/Datatype": _FORMATS[io_type]}]
        layers.append(layer)
    _add_dimensions(model, layers, batch)
    if "useDLACore" in opts:
        first, last = layers[0]["Name"], layers[-1]["Name"]
        layers = [
            {
                # No published detailed export of a DLA engine was found, so no LayerType is claimed here;
                # edge-tl tells DLA subgraphs by the build log's [DlaLayer] names.
                "Name": f"{{ForeignNode[{first}...{last}]}}",
                "Inputs": layers[0]["Inputs"],
                "Outputs": layers[-1]["Outputs"],
            }
        ]
    if release[0] >= 10:
        for layer in layers:
            layer.update({"Origin": layer.get("Origin", "ONNX"), "StreamId": 0, "Metadata": ""})
    for layer in layers:
        layer["TacticValue"] = "0x0000000000000000"
    bindings = [graph.input[0].name, graph.output[0].name]
    return json.dumps({"Layers": layers, "Bindings": bindings}, indent=1)


def _add_dimensions(model, layers: list, batch: int) -> None:
    """Each tensor's shape at the inference shape (trtexec exports the layer information from its contexts)."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model)
    dims = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims[vi.name] = [d.dim_value if d.HasField("dim_value") else batch for d in vi.type.tensor_type.shape.dim]
    for layer in layers:
        for tensor in layer["Inputs"] + layer["Outputs"]:
            tensor["Dimensions"] = dims.get(tensor["Name"], [])


def dla_log_lines(info: str) -> list:
    """The builder's info lines that say where the layers run (one ``[DlaLayer]`` line per DLA subgraph)."""
    layers = json.loads(info)["Layers"]
    lines = ["[I] [TRT] ---------- Layers Running on DLA ----------"]
    lines += [f"[I] [TRT] [DlaLayer] {x['Name']}" for x in layers if x["Name"].startswith("{ForeignNode[")]
    lines.append("[I] [TRT] ---------- Layers Running on GPU ----------")
    lines += [f"[I] [TRT] [GpuLayer] {x['Name']}" for x in layers if not x["Name"].startswith("{ForeignNode[")]
    return lines


def _summary(replay: list, label: str) -> tuple:
    """(min, median, max) of one metric of the replayed log's performance summary."""
    for line in replay:
        match = re.search(rf"\] {label}: min = ([\d.e+-]+) ms, max = ([\d.e+-]+) ms, .*median = ([\d.e+-]+) ms", line)
        if match:
            return float(match.group(1)), float(match.group(3)), float(match.group(2))
    raise SystemExit(f"stand-in trtexec: the replayed log has no {label} summary to time with")


def export_times(path: str, release: tuple, replay: list, *, warmup_ms: float, iterations: int) -> None:
    """``--exportTimes`` as ``exportJSONTrace`` writes it in ``release`` (samples/common/sampleReporting.cpp).

    The queries: three cold warm-ups (ten times the slowest timed query) whose compute starts
    before ``warmup_ms``, then ``iterations`` timed ones cycling through the replayed log's GPU
    compute and latency (min, median, max), so that their median is the log's. Release/8.0 to 8.4
    write every query, warm-ups included (8.0/8.2 with an "endToEndMs" field); from release/8.5 the
    file starts after the warm-ups (``trace.begin() + nbWarmups``).
    """
    compute, latency = _summary(replay, "GPU Compute Time"), _summary(replay, "Latency")
    h2d, d2h = _summary(replay, "H2D Latency")[1], _summary(replay, "D2H Latency")[1]
    queries = [(h2d + warmup_ms * i / 4, 10 * compute[2], 10 * latency[2]) for i in range(3)] if warmup_ms > 0 else []
    warmups = len(queries)
    period = max(latency[2], 0.001)
    queries += [(warmup_ms + k * period, compute[k % 3], latency[k % 3]) for k in range(iterations)]
    if release >= (8, 5):
        queries = queries[warmups:]
    records = []
    for start, comp, lat in queries:
        fields = [
            ("startEnqMs", start - h2d),
            ("endEnqMs", start),
            ("startH2dMs", start - h2d),
            ("endH2dMs", start),
            ("startComputeMs", start),
            ("endComputeMs", start + comp),
            ("startD2hMs", start + comp),
            ("endD2hMs", start + comp + d2h),
            ("h2dMs", h2d),
            ("computeMs", comp),
            ("d2hMs", d2h),
            ("latencyMs", lat),
        ]
        if release < (8, 4):
            fields.append(("endToEndMs", lat))
        records.append("{ " + ", ".join(f'"{k}" : {_fmt(v)}' for k, v in fields) + " }")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("[\n" + "".join(("  " if i == 0 else ", ") + r + "\n" for i, r in enumerate(records)) + "]\n")


def cuda_graph_warnings(release: tuple, opts: dict) -> list:
    """What trtexec warns when it does not use the CUDA graph that was asked for (none when it does)."""
    asked = "useCudaGraph" in opts if release < (11, 0) else "noCudaGraph" not in opts
    if not asked:
        return []
    if release >= (11, 0) and "useDLACore" in opts:
        return [
            "[W] CUDA graphs and DLA offloading are not simultaneously supported. The CUDA graph option has been "
            "disabled (alternatively, you may run without the `--useDLACore` option)."
        ]
    if os.environ.get("STANDIN_TRTEXEC_UNCAPTURABLE") != "1":
        return []
    said = "[W] The built TensorRT engine contains operations that are not permitted under CUDA graph capture mode."
    if release >= (11, 0):
        return [said, "[W] CUDA graph capture failed. The inference will be launched without using CUDA graph."]
    return [
        said,
        "[W] The specified --useCudaGraph flag has been ignored. The inference will be launched without using "
        "CUDA graph launch.",
    ]


def main(argv):
    with open(REPLAY_LOG, encoding="utf-8") as fh:
        replay = [line for line in fh.read().splitlines() if not line.startswith("#")]
    code = int(re.search(r"\[TensorRT v(\d+)\]", "\n".join(replay)).group(1))
    banner = f"[TensorRT v{code}]"
    command = f"trtexec {' '.join(argv)}"
    print(f"&&&& RUNNING TensorRT.trtexec {banner} # {command}")
    if argv == ["--help"] or argv == ["-h"]:
        return 0
    problem = refusal(argv, release_of(code), OPTIONS_DIR)
    if problem:
        print(f"[E] {problem}")
        print(f"&&&& FAILED TensorRT.trtexec {banner} # {command}")
        return 1
    opts = {}
    for arg in argv:
        key, _, value = arg.partition("=")
        opts[key.lstrip("-")] = value
    if "onnx" in opts:
        cache = opts.get("timingCacheFile")
        previous = b""
        if cache:
            try:
                with open(cache, "rb") as fh:
                    previous = fh.read()
                print(f"[I] Loaded {len(previous)} bytes of timing cache from {cache}")
            except OSError:
                print(
                    f"[W] Could not read timing cache from: {cache}. A new timing cache will be generated and written."
                )
        os.makedirs(os.path.dirname(opts["saveEngine"]) or ".", exist_ok=True)
        shutil.copyfile(opts["onnx"], opts["saveEngine"])
        print("\n".join(line for line in replay if "&&&&" not in line))
        if "exportLayerInfo" in opts:
            info = layer_info(opts["onnx"], release=release_of(code), opts=opts)
            if opts.get("profilingVerbosity") != "detailed":
                # layer_names_only (the default): the names alone (sampleOptions.cpp, every release).
                info = json.dumps({"Layers": [x["Name"] for x in json.loads(info)["Layers"]]})
            with open(opts["exportLayerInfo"], "w", encoding="utf-8") as fh:
                fh.write(info)
            if "useDLACore" in opts:
                print("\n".join(dla_log_lines(info)))
        if cache:
            blob = previous + f"tactics timed for {os.path.basename(opts['onnx'])}\n".encode()
            with open(cache, "wb") as fh:
                fh.write(blob)
            print(f"[I] Saved {len(blob)} bytes of timing cache to {cache}")
    elif "loadInputs" in opts:
        import numpy as np
        import onnxruntime as ort

        session = ort.InferenceSession(opts["loadEngine"], providers=["CPUExecutionProvider"])
        inp = session.get_inputs()[0]
        name, _, path = opts["loadInputs"].partition(":")
        if name != inp.name:
            print(f'[E] Cannot find input tensor with name "{name}" in the engine bindings!')
            print(f"&&&& FAILED TensorRT.trtexec {banner} # {command}")
            return 1
        data = np.fromfile(path, dtype="<f4")
        chw = [int(d) for d in inp.shape[1:]]
        if "shapes" in opts:
            batch = int(opts["shapes"].rpartition(":")[2].split("x")[0])
        else:
            batch = int(inp.shape[0])
        out = session.run(None, {inp.name: data.reshape(batch, *chw)})[0]
        export_output(opts["exportOutput"], session.get_outputs()[0].name, out)
    else:
        release = release_of(code)
        for warning in cuda_graph_warnings(release, opts):
            print(warning)
        if "exportTimes" in opts:
            warmup = float(opts.get("warmUp", 200))  # trtexec's default (defaultWarmUp, sampleOptions.h)
            iterations = int(opts.get("iterations", 10))  # defaultIterations
            export_times(opts["exportTimes"], release, replay, warmup_ms=warmup, iterations=iterations)
        print("\n".join(line for line in replay if "&&&&" not in line))
    print(f"&&&& PASSED TensorRT.trtexec {banner} # {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
