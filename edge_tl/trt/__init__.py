"""TensorRT support that compile, runtime and bench share, below all three.

The engine sidecar (which TensorRT and GPU built an engine), the table of TensorRT Python names per
release (:class:`~edge_tl.trt.trt_api.TrtApi`), the CUDA this machine has (:func:`~edge_tl.trt.cuda.local_gpu`)
and where trtexec is installed (:func:`~edge_tl.trt.trtexec.find_trtexec`). Light to import: TensorRT and
CUDA are loaded only when a function here needs them.
"""
