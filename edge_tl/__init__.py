"""edge-tl: fine-tune compact image backbones and ship them to edge GPUs.

Importing the package is cheap: heavy libraries (torch, onnxruntime, TensorRT)
are imported only by the modules that need them, through :mod:`edge_tl._lazy`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
