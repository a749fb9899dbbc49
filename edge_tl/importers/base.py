"""The one interface of an import source, and the options every source shares.

A source reads what the user brought (a weights file, a pretrained backbone, an ONNX
file), checks it completely, and hands back a :class:`SourceModel`: the class count
its head has, the preprocessing contract, the manifest sections it knows, and a
``write`` function that stores the reference model into the run. Nothing is written
before every check of the source, the labels and the data has passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from edge_tl.errors import ConfigError
from edge_tl.input_contract import DEFAULT_CONTRACT, InputContract
from edge_tl.models.preprocessing import Preprocessing

if TYPE_CHECKING:
    from edge_tl.data import Sample
    from edge_tl.runs import Artifact, Run

STAGE = "import"


@dataclass(frozen=True)
class PreprocessingOptions:
    """Explicit preprocessing given on the command line (``None``: not given)."""

    img_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    resize_size: int | None = None

    def given(self) -> dict[str, Any]:
        names = {"img_size": "input_size"}
        return {names.get(k, k): v for k, v in self.__dict__.items() if v is not None}

    def over(self, contract: Preprocessing) -> Preprocessing:
        """The backbone's contract with every explicitly given field replaced; a new size or crop
        drops the contract's own resize size unless ``resize_size`` is given too."""
        base = contract.to_dict()
        given = self.given()
        if {"input_size", "crop_pct"} & set(given):
            base.pop("resize_size")
        return Preprocessing.from_dict({**base, **given})


@dataclass(frozen=True)
class ImportRequest:
    """What the user asked ``edge-tl import`` for; ``kind`` names the registered source."""

    kind: str
    out: Path
    backbone: str | None = None
    weights: Path | None = None
    onnx: Path | None = None
    #: a TorchScript file or a torch.export .pt2 program
    program: Path | None = None
    labels: Path | None = None
    val_data: Path | None = None
    calib_data: Path | None = None
    preprocessing: PreprocessingOptions = PreprocessingOptions()
    #: which weights of a checkpoint to take (``state_dict``, ``state_dict_ema``, ``model``, ``model_ema``,
    #: ``state_dict:<attribute>`` for Lightning); None: what the file's own tool evaluates
    weights_key: str | None = None
    #: how class folders are numbered: "natural" (timm) or "sorted" (torchvision); None: the source's own
    class_order: str | None = None
    #: let a reference that scores near chance on --val-data through
    accept_low_accuracy: bool = False
    #: device profiles the model must build for (``--target``, repeatable): an ONNX source is checked against them
    targets: tuple[str, ...] = ()
    #: ``"0-1"`` or ``"0-255"``: the graph normalises its input itself and is fed pixels in that range
    input_range: str | None = None


@dataclass(frozen=True)
class SourceModel:
    """A checked model, ready to be written into a run."""

    kind: str
    num_classes: int
    preprocessing: Preprocessing
    #: class names the source itself knows (the ImageNet names of a kept ImageNet head)
    class_names: tuple[str, ...] | None
    #: the manifest's ``backbone`` section
    backbone: dict[str, Any]
    #: extra fields of the manifest's ``source`` section (file, sha256, keys used...)
    details: dict[str, Any]
    #: stores the reference model into the run and records it; returns its record
    write: Callable[["Run"], "Artifact"]
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: the reference's logits for preprocessed images (NCHW float32), to score it on --val-data
    predict: Callable[[Any], Any] | None = None
    #: the checkpoint key used, and the other candidates' logits functions, scored beside it
    weights_key: str | None = None
    alternatives: dict[str, Callable[[Any], Any]] = field(default_factory=dict)
    #: how the tool that made the model numbers class folders ("natural" / "sorted"), None: unknown
    class_order: str | None = None
    #: which tool that is, for the messages
    tool: str | None = None
    #: how the model's input is fed (``edge_tl.input_contract``); recorded in the manifest
    contract: InputContract = DEFAULT_CONTRACT
    #: checks that need the labelled ``--val-data`` images (called with them before anything is
    #: written): raises to refuse, returns notes
    check_with_data: Callable[[Sequence["Sample"], Preprocessing], Sequence[str]] | None = None


def require_file(path: Path | None, *, flag: str) -> Path:
    if path is None:
        raise ConfigError(f"{flag} is required for this source")
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{flag} {str(path)!r} is not a file")
    return path
