"""Saved programs as sources: a TorchScript file (``torch.jit.load``) or a ``torch.export`` program
(``.pt2``, ``torch.export.load``).

Both carry their network and weights but not how their images were preprocessed, so, like an
ONNX source, they need ``--img-size``, ``--mean`` and ``--std``. The program is exported to ONNX
here and imported through the ONNX source, so the run's reference is that ONNX FP32 model
(every later stage reads it as it reads an ONNX import); before anything is written its logits
are checked against the program's own on real images (``PARITY_ATOL``), and the program itself
is what ``--val-data`` scores.

Neither loader unpickles Python objects: a TorchScript archive holds TorchScript code and
tensors, a ``.pt2`` archive JSON and tensors. A whole pickled ``nn.Module`` (``torch.save(model)``)
is refused with the one line that turns it into a state dict.
"""

from __future__ import annotations

import tempfile
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from edge_tl._lazy import lazy_import
from edge_tl.errors import ConfigError
from edge_tl.importers.base import ImportRequest, SourceModel, require_file
from edge_tl.runs import sha256_file

TORCHSCRIPT = "torchscript"
EXPORTED = "exported-program"
#: largest |logit| difference allowed between the program and the ONNX model made from it
PARITY_ATOL = 1e-4
PARITY_IMAGES = 8
OPSET = 17
FLAGS = {TORCHSCRIPT: "--torchscript", EXPORTED: "--exported-program"}


def archive_kind(path: Path) -> str | None:
    """``torchscript``, ``exported-program``, or None (anything else: a torch.save file, not a zip)."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(n.endswith("/archive_format") or n == "archive_format" for n in names):
        return EXPORTED
    if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
        return TORCHSCRIPT
    return None


def refuse_program(path: Path, kind: str | None, *, flag: str) -> None:
    """A program given where a state dict was expected: name the flag that imports it."""
    if kind is not None:
        what = "a TorchScript file" if kind == TORCHSCRIPT else "a torch.export program"
        raise ConfigError(
            f"{flag} {str(path)!r} is {what}, not a state dict: import it with {FLAGS[kind]} FILE "
            "--img-size N --mean R,G,B --std R,G,B (no --backbone)"
        )


def open_torchscript(request: ImportRequest) -> SourceModel:
    return _open(request, TORCHSCRIPT)


def open_exported(request: ImportRequest) -> SourceModel:
    return _open(request, EXPORTED)


def _open(request: ImportRequest, kind: str) -> SourceModel:
    torch = lazy_import("torch", purpose="importing a saved PyTorch program")
    from edge_tl.importers.onnx import open_onnx
    from edge_tl.importers.scoring import torch_predict

    flag = FLAGS[kind]
    path = require_file(request.program, flag=flag)
    found = archive_kind(path)
    if found != kind:
        seen = {None: "not a saved program (a torch.save file?)", TORCHSCRIPT: "a TorchScript file"}.get(
            found, "a torch.export program"
        )
        fix = f"import it with {FLAGS[found]}" if found else "give a state dict with --backbone NAME --weights FILE"
        raise ConfigError(f"{flag} {str(path)!r} is {seen}; {fix}")
    try:
        if kind == TORCHSCRIPT:
            module = torch.jit.load(str(path), map_location="cpu").eval()
        else:
            program = torch.export.load(str(path))
            module = program.module()
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigError(f"{flag} {str(path)!r} cannot be loaded ({type(exc).__name__}: {first})") from exc
    size = request.preprocessing.img_size
    if size is None:
        raise ConfigError(
            f"{flag} needs its preprocessing, which the file cannot tell: give --img-size --mean --std "
            "(and --interpolation / --crop-pct / --resize-size where not bilinear / 0.875)"
        )
    with tempfile.TemporaryDirectory(prefix="edge-tl-import-") as tmp:
        onnx_path = Path(tmp) / f"{path.stem}.onnx"
        example = torch.zeros(2, 3, size, size)
        try:
            if kind == TORCHSCRIPT:
                torch.onnx.export(
                    module,
                    (example,),
                    str(onnx_path),
                    input_names=["input"],
                    output_names=["logits"],
                    dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                    opset_version=OPSET,
                    dynamo=False,
                )
            else:
                torch.onnx.export(program, (), str(onnx_path), dynamo=True)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise ConfigError(
                f"{flag} {str(path)!r} cannot be exported to ONNX ({type(exc).__name__}: {first}); export it "
                "to ONNX with its own tool and import it with --onnx"
            ) from exc
        imported = open_onnx(replace(request, onnx=onnx_path))
        predict = torch_predict(module)
        _check_parity(onnx_path, imported, predict, request, flag=flag)
        data = onnx_path.read_bytes()
    details = {
        **imported.details,
        "onnx": None,
        "onnx_sha256": None,
        "program": str(path.resolve()),
        "program_sha256": sha256_file(path),
        "program_kind": kind,
    }
    write_onnx = imported.write
    return replace(
        imported,
        kind=request.kind,
        backbone={"name": path.stem, "source": kind, "arch": None, "weights": str(path.resolve())},
        details=details,
        write=lambda run: write_onnx(run),
        predict=predict,
        notes=(*imported.notes, f"the {kind} program is exported to ONNX ({len(data)} bytes): that is the reference"),
        tool=kind,
    )


def _check_parity(onnx_path: Path, imported: SourceModel, predict: Any, request: ImportRequest, *, flag: str) -> None:
    np = lazy_import("numpy")
    ort = lazy_import("onnxruntime", purpose="checking the ONNX model made from the program")
    from edge_tl.importers.scoring import val_inputs

    x = val_inputs(_some_images(request), imported.preprocessing)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    got = np.asarray(session.run(None, {name: x})[0])
    want = predict(x)
    worst = float(np.abs(got - want).max())
    if worst > PARITY_ATOL:
        raise ConfigError(
            f"{flag}: the ONNX model made from the program differs from it by up to {worst:.2g} in a logit "
            f"(allowed {PARITY_ATOL:g}); export it to ONNX with its own tool and import it with --onnx"
        )


def _some_images(request: ImportRequest) -> list[str]:
    from edge_tl.data import is_image_file

    found: list[str] = []
    for folder in (request.val_data, request.calib_data):
        if folder is not None and Path(folder).is_dir():
            found += [str(f) for f in sorted(Path(folder).rglob("*")) if f.is_file() and is_image_file(f.name)]
    if found:
        return found[:PARITY_IMAGES]
    raise ConfigError(
        "a saved program is checked against its ONNX export on real images: give --val-data or --calib-data"
    )
