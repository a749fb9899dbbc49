"""STAND-IN for NVIDIA's trtexec, for the deploy tests on a machine without TensorRT.

It is installed as ``trtexec`` on a loopback test device's PATH. It is not TensorRT:

* ``--onnx=X --saveEngine=Y``: "builds" by copying the ONNX to Y and prints trtexec's
  RUNNING/PASSED framing lines with the banner version of the replayed log;
* ``--loadEngine=Y --loadInputs=name:file --exportOutput=out.json``: runs Y (the copied
  ONNX) with ONNX Runtime on the raw float32 input and writes trtexec's exportOutput JSON;
* ``--loadEngine=Y`` otherwise (timing): replays a real trtexec log (REPLAY_LOG below,
  from tests/compile/fixtures/) so the parsing of real output is exercised.
"""

import json
import os
import re
import shutil
import sys

REPLAY_LOG = os.environ.get("STANDIN_TRTEXEC_LOG", "@REPLAY_LOG@")


def main(argv):
    opts = {}
    for arg in argv:
        key, _, value = arg.partition("=")
        opts[key.lstrip("-")] = value
    with open(REPLAY_LOG, encoding="utf-8") as fh:
        replay = [line for line in fh.read().splitlines() if not line.startswith("#")]
    banner = re.search(r"\[TensorRT v\d+\]", "\n".join(replay)).group(0)
    print(f"&&&& RUNNING TensorRT.trtexec {banner} # trtexec {' '.join(argv)}")
    if "onnx" in opts:
        os.makedirs(os.path.dirname(opts["saveEngine"]) or ".", exist_ok=True)
        shutil.copyfile(opts["onnx"], opts["saveEngine"])
    elif "loadInputs" in opts:
        import numpy as np
        import onnxruntime as ort

        session = ort.InferenceSession(opts["loadEngine"], providers=["CPUExecutionProvider"])
        inp = session.get_inputs()[0]
        name, _, path = opts["loadInputs"].partition(":")
        assert name == inp.name, f"input {name!r} is not the model's {inp.name!r}"
        data = np.fromfile(path, dtype="<f4")
        chw = [int(d) for d in inp.shape[1:]]
        if "shapes" in opts:
            batch = int(opts["shapes"].rpartition(":")[2].split("x")[0])
        else:
            batch = int(inp.shape[0])
        out = session.run(None, {inp.name: data.reshape(batch, *chw)})[0]
        tensors = [{"name": session.get_outputs()[0].name, "dimensions": "x".join(map(str, out.shape)),
                    "values": [float(v) for v in out.ravel()]}]
        with open(opts["exportOutput"], "w", encoding="utf-8") as fh:
            json.dump(tensors, fh)
    else:
        print("\n".join(line for line in replay if "&&&&" not in line))
    print(f"&&&& PASSED TensorRT.trtexec {banner} # trtexec {' '.join(argv)}")


if __name__ == "__main__":
    main(sys.argv[1:])
