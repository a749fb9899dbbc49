"""An ONNX classifier as the source: the ONNX FP32 model itself becomes the reference.

Its input name, shape and batch are read from the graph; the file is checked with
``onnx.checker`` and run with ONNX Runtime on real images before anything is written.
It is recorded as ``onnx-fp32`` with the same details export writes, so quantize and
compile read it like an exported model, and no PyTorch is needed again.

The image input may be float32 or uint8, NCHW or NHWC: the run's input contract
(:mod:`edge_tl.input_contract`) records which, and every stage feeds it so. A graph that
normalises its input itself is imported with ``--input-range`` (a uint8 input implies
0-255) instead of ``--mean/--std``; one whose first nodes normalise, or that scores far
better fed plain pixels on ``--val-data``, is refused when given ``--mean/--std``, since
they would normalise twice. With ``--target``, an opset above what a target's TensorRT
parses is converted down by ONNX's version converter (and must give the same logits), or
the import is refused naming the opset to re-export at. Refused also: several inputs, an
input that is not a 3-channel image, and a missing preprocessing contract (nothing in an
ONNX file says how its images were resized).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from edge_tl._lazy import lazy_import
from edge_tl.artifacts import ONNX_FP32, ArtifactKind
from edge_tl.errors import ConfigError, EdgeTLError
from edge_tl.export.onnx_export import convert_opset, graph_op_types, main_opset
from edge_tl.importers.base import STAGE, ImportRequest, SourceModel, require_file
from edge_tl.input_contract import InputContract, Layout, PixelType, layout_of
from edge_tl.models.preprocessing import Preprocessing
from edge_tl.runs import Artifact, Run, atomic_write_bytes, sha256_file, tool_versions

FILE_PATH = ("export", "model.fp32.onnx")
BATCH_DIM = "batch"
#: preprocessing fields an ONNX import must be given (the rest have the usual defaults)
REQUIRED = (("input_size", "--img-size"), ("mean", "--mean"), ("std", "--std"))
#: ``--input-range``: the values a graph that normalises inside is fed
INPUT_RANGES = {"0-1": (0.0, 1.0), "0-255": (0.0, 255.0)}
#: ops that pass an image on unchanged in value before a graph's own normalisation
PASS_THROUGH = ("Cast", "Transpose", "Identity")
NORMALISING_OPS = ("Sub", "Div", "Mul", "Add")
#: a feeding that scores this many top-1 points over the given one exposes a wrong normalisation
NORMALISATION_MARGIN = 20.0
#: labelled images the normalisation check scores (the first ones of --val-data, in class turns)
NORMALISATION_IMAGES = 256
PARITY_ATOL = 1e-4


def open_onnx(request: ImportRequest) -> SourceModel:
    onnx = lazy_import("onnx", purpose="importing an ONNX model")
    path = require_file(request.onnx, flag="--onnx")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigError(f"--onnx {str(path)!r} is not a valid ONNX model ({type(exc).__name__}: {first})") from exc
    given = request.preprocessing.given()
    name, shape, dtype, layout = _single_image_input(model, path, given.get("input_size"))
    contract, prep = _contract(request, path, dtype, layout, given)
    plain_pixels = prep.mean == (0.0, 0.0, 0.0) and prep.std == (1.0, 1.0, 1.0)  # the same as --input-range 0-1
    if not contract.normalised_inside and not plain_pixels:
        inside = inside_normalisation(model, name)
        if inside is not None:
            raise ConfigError(
                f"--onnx {str(path)!r} normalises its input itself ({inside}), so --mean/--std would normalise "
                f"twice: give --input-range {_range_of(model, name)} instead of "
                "--mean/--std"
            )
    if len(model.graph.output) < 1:
        raise ConfigError(f"--onnx {str(path)!r} has no output")
    output = model.graph.output[0]
    images = _check_images(request, prep)
    logits = _run(model, contract, images)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ConfigError(
            f"--onnx {str(path)!r}: output {output.name!r} has shape {list(logits.shape[1:])} per image; "
            "edge-tl imports classifiers whose first output is logits (batch, classes)"
        )
    notes = []
    source_opset = opset = main_opset(model)
    converted_from: dict[str, Any] | None = None
    limit, limiting = _opset_limit(request.targets)
    if limit is not None and isinstance(opset, int) and opset > limit:
        model, diff = _converted(model, limit, path, contract, images, logits, limiting)
        opset = limit
        converted_from = {"opset": source_opset, "sha256": sha256_file(path), "max_abs_diff": diff}
        notes.append(
            f"--onnx is opset {source_opset}, above the {limit} {limiting} parses: converted to opset {limit} "
            f"with ONNX's version converter (max |logit difference| {diff:.2g} on {len(images)} image(s))"
        )
    num_classes = int(logits.shape[1])
    dynamic = not isinstance(shape[0], int)
    details = {
        "onnx": str(path.resolve()),
        "onnx_sha256": sha256_file(path),
        "input_name": name,
        "output_name": output.name,
        "opset": source_opset,
    }
    record_details = {
        "input_name": name,
        "output_name": output.name,
        "input_shape": contract.model_shape(BATCH_DIM if dynamic else shape[0], prep.input_size, prep.input_size),
        "input_dtype": contract.dtype.value,
        "output_dtype": "float32",
        "opset": opset,
        "dynamic_batch": dynamic,
        "source": "import",
        "imported_from": details["onnx"],
        "num_classes": num_classes,
        "preprocessing": prep.to_dict(),
        "input_contract": contract.to_dict(),
        "ops": graph_op_types(model),
        "tool_versions": tool_versions("onnx", "onnxruntime"),
    }
    if converted_from is not None:
        record_details["converted_from"] = converted_from
    data = model.SerializeToString()
    return SourceModel(
        kind=request.kind,
        num_classes=num_classes,
        preprocessing=prep,
        class_names=None,
        backbone={"name": path.stem, "source": "onnx", "arch": None, "weights": details["onnx"]},
        details=details,
        write=lambda run: _write(run, data, record_details),
        notes=tuple(notes),
        contract=contract,
        check_with_data=lambda samples, p: _check_normalisation(data, contract, samples, p),
        # Scored on labelled --val-data like every import: the class-order check and the sanity line.
        predict=lambda images: _run(data, contract, images),
    )


def _contract(
    request: ImportRequest, path: Path, dtype: PixelType, layout: Layout, given: dict[str, Any]
) -> tuple[InputContract, Preprocessing]:
    """How the graph is fed, and the preprocessing that makes it: normalised outside with the given
    --mean/--std, or (a uint8 input, or --input-range) pixels in a range the graph normalises itself."""
    where = f"--onnx {str(path)!r}"
    if request.input_range is not None and request.input_range not in INPUT_RANGES:
        raise ConfigError(f"--input-range {request.input_range!r} is not one of {', '.join(INPUT_RANGES)}")
    value_range = INPUT_RANGES.get(request.input_range or "")
    if dtype is PixelType.UINT8:
        if value_range not in (None, INPUT_RANGES["0-255"]):
            raise ConfigError(f"{where} takes uint8 pixels, 0..255: drop --input-range {request.input_range}")
        value_range = INPUT_RANGES["0-255"]
    if value_range is not None and ("mean" in given or "std" in given):
        why = "a uint8 input takes raw pixels" if dtype is PixelType.UINT8 else "with --input-range"
        raise ConfigError(
            f"{where}: {why} and the graph normalises them itself; drop --mean/--std (they would normalise twice)"
        )
    required = REQUIRED if value_range is None else REQUIRED[:1]
    missing = [flag for key, flag in required if key not in given]
    if missing:
        raise ConfigError(
            f"an ONNX source needs its preprocessing, which the file cannot tell: give {' '.join(missing)} "
            "(and --interpolation / --crop-pct if not bilinear / 0.875), as the model was trained with"
            + ("" if value_range is not None else "; or --input-range 0-1|0-255 if the graph normalises inside")
        )
    contract = InputContract(dtype, layout, value_range is not None, value_range)
    scaling = contract.pixel_normalisation()
    fields = {"interpolation": "bilinear", "crop_pct": 0.875, **given}
    if scaling is not None:
        fields.update(mean=scaling[0], std=scaling[1])
    return contract, Preprocessing.from_dict(fields)


def _single_image_input(model: Any, path: Path, size: int | None) -> tuple[str, list[Any], PixelType, Layout]:
    onnx = lazy_import("onnx")
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    where = f"--onnx {str(path)!r}"
    if len(inputs) != 1:
        raise ConfigError(
            f"{where} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); edge-tl imports "
            "classifiers with one image input: export the model with a single image input"
        )
    value = inputs[0]
    tensor = value.type.tensor_type
    dims: list[Any] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
    types = {onnx.TensorProto.FLOAT: PixelType.FLOAT32, onnx.TensorProto.UINT8: PixelType.UINT8}
    dtype_name = onnx.TensorProto.DataType.Name(tensor.elem_type) if tensor.elem_type else "unknown"
    if len(dims) != 4 or 3 not in (dims[1], dims[3]):
        raise ConfigError(
            f"{where}: input {value.name!r} is {dtype_name} of shape {dims}, not an image; edge-tl imports a "
            "3-channel image input, NCHW (batch, 3, height, width) or NHWC (batch, height, width, 3)"
        )
    if tensor.elem_type not in types:
        raise ConfigError(
            f"{where}: the image input {value.name!r} is {dtype_name}; edge-tl feeds float32 or uint8 images: "
            "export the model with one of those input types"
        )
    layout = layout_of(dims)
    height, width = (dims[1], dims[2]) if layout is Layout.NHWC else (dims[2], dims[3])
    for axis, dim in (("height", height), ("width", width)):
        if isinstance(dim, int) and size is not None and dim != size:
            raise ConfigError(
                f"{where}: the graph's input {axis} is {dim} but --img-size is {size}; give --img-size {dim}"
            )
    return value.name, dims, types[tensor.elem_type], layout


def _constant_values(model: Any, name: str) -> Any:
    """The values of a constant tensor (an initializer or a Constant node's output), else None."""
    from onnx import numpy_helper

    for tensor in model.graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attribute in node.attribute:
                if attribute.name == "value":
                    return numpy_helper.to_array(attribute.t)
    return None


def _first_arithmetic(model: Any, input_name: str) -> tuple[Any, Any] | None:
    """The first Sub/Div/Mul/Add the image reaches (through Cast/Transpose) with a constant of one value
    per channel as its other operand: ``(node, values)``."""
    tensor = input_name
    for _ in range(4):
        users = [n for n in model.graph.node if tensor in n.input]
        if len(users) != 1:
            return None
        node = users[0]
        if node.op_type in PASS_THROUGH:
            tensor = node.output[0]
            continue
        if node.op_type not in NORMALISING_OPS:
            return None
        other = next((i for i in node.input if i != tensor), None)
        values = _constant_values(model, other) if other else None
        if values is None or values.size not in (1, 3):
            return None
        return node, values
    return None


def inside_normalisation(model: Any, input_name: str) -> str | None:
    """How the graph normalises its image before anything else (``"Sub [0.485 0.456 0.406]"``), or None."""
    found = _first_arithmetic(model, input_name)
    if found is None:
        return None
    node, values = found
    return f"{node.op_type} {[round(float(v), 4) for v in values.ravel()]} right after the input"


def _range_of(model: Any, input_name: str) -> str:
    """The ``--input-range`` the graph's first normalising op expects: 0-255 when its constants are in
    pixel units (a mean or std above 1.5, a multiplication by less than 0.1, as 1/255), else 0-1."""
    found = _first_arithmetic(model, input_name)
    if found is None:
        return "0-1"
    node, values = found
    size = float(abs(values).max())
    pixel_units = size < 0.1 if node.op_type == "Mul" else size > 1.5
    return "0-255" if pixel_units else "0-1"


def _opset_limit(targets: tuple[str, ...]) -> tuple[int | None, str]:
    """The highest opset every named target's (default) TensorRT release parses, and who sets it."""
    if not targets:
        return None, ""
    from edge_tl.targets import load_target

    limits = []
    for name in targets:
        target = load_target(name)
        release = f" (TensorRT {target.release().version})" if target.releases else ""
        limits.append((target.max_opset_for(), f"{target.name}{release}"))
    limit, who = min(limits)
    return limit, who


def _converted(
    model: Any,
    opset: int,
    path: Path,
    contract: InputContract,
    images: Any,
    logits: Any,
    limiting: str,
) -> tuple[Any, float]:
    """The model at ``opset`` when ONNX's converter makes it and it computes the same logits."""
    import numpy as np

    converted = convert_opset(model, opset, what=f"--onnx {str(path)!r} (for {limiting})")
    diff = float(np.abs(_run(converted, contract, images) - logits).max())
    if not diff <= PARITY_ATOL:
        raise ConfigError(
            f"--onnx {str(path)!r} converted to opset {opset} (for {limiting}) computes other logits (max |diff| "
            f"{diff:.3g} > {PARITY_ATOL:g}); re-export it from its source at opset {opset}"
        )
    return converted, diff


def _check_images(request: ImportRequest, prep: Preprocessing) -> Any:
    """The canonical batch the checks run on: a few real images (the given ones, else one photograph)."""
    import numpy as np

    from edge_tl.data import preprocess

    return np.stack([preprocess(image, prep) for image in _real_images(request)])


def _run(model: Any, contract: InputContract, images: Any) -> Any:
    """Logits of ``images`` (canonical, any count) by ONNX Runtime, fed as ``contract`` says."""
    import numpy as np

    from edge_tl.runtime.base import RunnerOptions
    from edge_tl.runtime.onnxruntime_runner import GraphOptimization, OnnxRuntimeRunner
    from edge_tl.vocab import Device

    runner = OnnxRuntimeRunner(
        model.SerializeToString() if not isinstance(model, bytes) else model,
        name="--onnx",
        options=RunnerOptions(device=Device.CPU),
        optimization=GraphOptimization.BASIC,
    )
    try:
        with runner:
            out = np.asarray(runner.run(images))
    except EdgeTLError as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigError(
            f"ONNX Runtime cannot run the --onnx model on {contract.describe()} images ({first})"
        ) from exc
    if not np.isfinite(out).all():
        raise ConfigError("the --onnx model gives non-finite outputs on a real image; check the model and --mean/--std")
    return out


def _check_normalisation(data: bytes, contract: InputContract, samples: Any, prep: Preprocessing) -> list[str]:
    """A normalisation inside the graph that the first nodes do not show (folded into the first
    convolution) still shows in the scores: top-1 on labelled images fed as given, and as pixels
    in [0, 1] and [0, 255] the graph would normalise itself. A feeding that beats the given one by
    :data:`NORMALISATION_MARGIN` points refuses the import, naming the flag that fits."""
    from edge_tl.data import iter_batches
    from edge_tl.quantize.calibrate import balanced_subset

    chosen = balanced_subset(list(samples), NORMALISATION_IMAGES)
    feeds = {"as given": (contract, prep)}
    if not contract.normalised_inside:
        for flag, value_range in INPUT_RANGES.items():
            inside = InputContract(contract.dtype, contract.layout, True, value_range)
            mean, std = inside.pixel_normalisation() or (prep.mean, prep.std)
            feeds[f"--input-range {flag}"] = (inside, replace(prep, mean=mean, std=std))
    scores = {}
    for label, (feed, feed_prep) in feeds.items():
        correct = 0
        for images, labels in iter_batches(chosen, feed_prep, 64):
            correct += int((_run(data, feed, images).argmax(1) == labels).sum())
        scores[label] = 100.0 * correct / len(chosen)
    best = max(scores, key=lambda k: scores[k])
    given = scores["as given"]
    if best != "as given" and scores[best] - given >= NORMALISATION_MARGIN:
        raise ConfigError(
            f"the --onnx model scores {given:.1f}% top-1 on {len(chosen)} --val-data images with --mean/--std as "
            f"given but {scores[best]:.1f}% fed as pixels the graph normalises itself: its normalisation is inside; "
            f"import it with {best} instead of --mean/--std"
        )
    return [f"top-1 on {len(chosen)} --val-data images as imported: {given:.1f}%"]


def _real_images(request: ImportRequest, count: int = 4) -> list[Any]:
    """Up to ``count`` images of the given folders, else one photograph shipped with scikit-learn."""
    from edge_tl.data import is_image_file, open_image

    found = []
    for folder in (request.val_data, request.calib_data):
        if folder is None or not Path(folder).is_dir():
            continue
        for file in sorted(Path(folder).rglob("*")):
            if file.is_file() and is_image_file(file.name) and not file.name.startswith("."):
                found.append(open_image(file))
                if len(found) == count:
                    return found
    if found:
        return found
    Image = lazy_import("PIL.Image")
    datasets = lazy_import("sklearn.datasets", purpose="a photograph to check the ONNX model on (or give --val-data)")
    return [Image.fromarray(datasets.load_sample_image("china.jpg"))]


def _write(run: Run, data: bytes, details: dict[str, Any]) -> Artifact:
    path = atomic_write_bytes(run.path(*FILE_PATH), data)
    return run.add_artifact(
        ONNX_FP32, kind=ArtifactKind.ONNX.value, path=path, stage=STAGE, precision="fp32", details=details
    )
