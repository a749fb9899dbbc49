#!/usr/bin/env bash
# Build the INT8 engine for jetson-agx-orin-64gb with TensorRT 8.6.2 (JetPack 6.0, CUDA 12.2).
# Written by edge-tl {version}; run it on the device: bash compile/jetson-agx-orin-64gb-int8/build_engine.sh
# Set TRTEXEC to use another trtexec binary.
set -euo pipefail
cd "$(dirname "$0")/../.."
TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"
if [ ! -x "$TRTEXEC" ]; then
  echo 'trtexec not found: install TensorRT (TensorRT 8.6.2 (JetPack 6.0, CUDA 12.2)) or set TRTEXEC=/path/to/trtexec' >&2
  exit 2
fi
# The ONNX (and cache) must be the ones this plan was made for.
echo '{onnx_sha256}  export/model.fp32.onnx' | sha256sum -c --quiet -
echo '{cache_sha256}  quantize/tensorrt-int8-cache/calibration.cache' | sha256sum -c --quiet -
mkdir -p compile/jetson-agx-orin-64gb-int8
# A calibration cache is read only by the exact TensorRT release named in its header.
device=$("$TRTEXEC" --help 2>&1 | sed -n 's/.*\[TensorRT v\([0-9]*\)\].*/\1/p' | head -n 1)
header=$(head -n 1 quantize/tensorrt-int8-cache/calibration.cache | sed -n 's/^TRT-\([0-9]*\)-.*/\1/p')
if [ "$header" != "$device" ]; then
  echo "the calibration cache quantize/tensorrt-int8-cache/calibration.cache is for TensorRT v$header but this trtexec is v$device; write the right one with: edge-tl quantize RUN --recipe tensorrt-int8-cache --target jetson-agx-orin-64gb --tensorrt X.Y.Z (X.Y.Z: this device's TensorRT)" >&2
  exit 4
fi
# The timing cache: in $EDGE_TL_TIMING_CACHE_DIR when set (deploy keeps it outside releases/), else in the run.
timing_cache="${EDGE_TL_TIMING_CACHE_DIR:-compile}"/timing-jetson-agx-orin-64gb-trt8.6.2.cache
"$TRTEXEC" --onnx=export/model.fp32.onnx --saveEngine=compile/jetson-agx-orin-64gb-int8/model.engine --minShapes=input:1x3x8x8 --optShapes=input:1x3x8x8 --maxShapes=input:1x3x8x8 --memPoolSize=workspace:4096 --int8 --fp16 --calib=quantize/tensorrt-int8-cache/calibration.cache --useDLACore=1 --allowGPUFallback "--timingCacheFile=$timing_cache" --exportTimes=compile/jetson-agx-orin-64gb-int8/build_times.json --profilingVerbosity=detailed --exportLayerInfo=compile/jetson-agx-orin-64gb-int8/layers.json 2>&1 | tee compile/jetson-agx-orin-64gb-int8/build.log
# An engine only runs on the TensorRT that built it: refuse a different one.
built=$(sed -n 's/.*\[TensorRT v\([0-9]*\)\].*/\1/p' compile/jetson-agx-orin-64gb-int8/build.log | head -n 1)
if [ "$built" != 8602 ]; then
  if [ "${built:-0}" -ge 100000 ]; then found="$((built / 10000)).$((built / 100 % 100)).$((built % 100))"; else found="$((${built:-0} / 1000)).$((${built:-0} / 100 % 10)).$((${built:-0} % 100))"; fi
  echo 'this plan is for TensorRT 8.6.2 but the builder here is TensorRT '"$found"': build with TensorRT 8.6.2, or re-plan for this one with: edge-tl compile RUN --target jetson-agx-orin-64gb --tensorrt '"$found"'' >&2
  rm -f compile/jetson-agx-orin-64gb-int8/model.engine; exit 3
fi
# Where the layers run: on DLA builds the builder logs one '[DlaLayer] {ForeignNode[first...last]}' line per
# DLA subgraph (one opaque node however many layers it holds) and one '[GpuLayer] ...' line per GPU layer.
dla_subgraphs=$(grep -c '\[DlaLayer\]' compile/jetson-agx-orin-64gb-int8/build.log || true)
gpu_layers=$(grep -c '\[GpuLayer\]' compile/jetson-agx-orin-64gb-int8/build.log || true)
gpu=$(sed -n 's/.*Selected Device: //p' compile/jetson-agx-orin-64gb-int8/build.log | head -n 1)
cc=$(sed -n 's/.*Compute Capability: //p' compile/jetson-agx-orin-64gb-int8/build.log | head -n 1)
trt=$(sed -n 's/.*TensorRT version: //p' compile/jetson-agx-orin-64gb-int8/build.log | head -n 1)
trt="${trt:-8.6.2}"
sha=$(sha256sum compile/jetson-agx-orin-64gb-int8/model.engine | cut -d ' ' -f 1)
fixed='{"batch": {"max": 1, "min": 1, "opt": 1}, "builder": "trtexec", "chw": [3, 8, 8], "dla_core": 1, "flags": ["--onnx=export/model.fp32.onnx", "--saveEngine=compile/jetson-agx-orin-64gb-int8/model.engine", "--minShapes=input:1x3x8x8", "--optShapes=input:1x3x8x8", "--maxShapes=input:1x3x8x8", "--memPoolSize=workspace:4096", "--int8", "--fp16", "--calib=quantize/tensorrt-int8-cache/calibration.cache", "--useDLACore=1", "--allowGPUFallback", "--timingCacheFile=compile/timing-jetson-agx-orin-64gb-trt8.6.2.cache", "--exportTimes=compile/jetson-agx-orin-64gb-int8/build_times.json", "--profilingVerbosity=detailed", "--exportLayerInfo=compile/jetson-agx-orin-64gb-int8/layers.json"], "format": "edge-tl-engine", "format_version": 1, "input_name": "input", "output_name": "logits", "precision": "int8", "source": {"artifact": "onnx-fp32", "path": "export/model.fp32.onnx", "sha256": "{onnx_sha256}"}, "target": "jetson-agx-orin-64gb"}'
# Sidecar: the fixed fields plus what only the device knows.
printf '{"tensorrt_version": "%s", "gpu_name": "%s", "compute_capability": "%s", "engine_sha256": "%s", "created": "%s", "layers": {"dla_subgraphs": %s, "gpu_layers": %s}, %s\n' "$trt" "$gpu" "$cc" "$sha" "$(date -u +%Y-%m-%dT%H:%M:%S+00:00)" "${dla_subgraphs:-0}" "${gpu_layers:-0}" "${fixed#\{}" > compile/jetson-agx-orin-64gb-int8/model.engine.json
echo "engine: compile/jetson-agx-orin-64gb-int8/model.engine (TensorRT $trt, $gpu, sm $cc)"
