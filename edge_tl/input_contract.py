"""The input contract: what a model's image input takes, decided once and recorded in the manifest.

Every stage makes the same *canonical batch*: NCHW float32, from the run's
:class:`~edge_tl.models.Preprocessing` (resize, crop, scale, normalise). The contract says how
that batch reaches the model (:meth:`InputContract.to_model`): the element type (``float32``
or ``uint8``), the layout (``NCHW`` or ``NHWC``), whether the graph normalises the pixels itself,
and the range of the values it is fed. A model that normalises inside is fed pixels scaled to
``value_range`` (``[0, 1]`` floats, or ``[0, 255]`` for a uint8 input); the run's preprocessing
then has the mean and std that produce that range (:meth:`InputContract.pixel_normalisation`),
so the stages that only know the preprocessing make the right values, and a runner converts the
element type and layout at the last moment.

A run without a recorded contract (every fine-tuned run) has :data:`DEFAULT_CONTRACT`: float32
NCHW, normalised outside the graph. Serving and baked-preprocessing exports describe their inputs
with the same object.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from edge_tl.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from edge_tl.runs import Run

SECTION = "input_contract"
#: the manifest section's format (kept when fields are added)
VERSION = 1


class PixelType(str, Enum):
    FLOAT32 = "float32"
    UINT8 = "uint8"


class Layout(str, Enum):
    NCHW = "NCHW"
    NHWC = "NHWC"


@dataclass(frozen=True)
class InputContract:
    """How the canonical NCHW float32 batch becomes what the model's input takes.

    ``value_range``: the range of the values fed when the graph normalises inside (``(0, 1)``
    or ``(0, 255)``); ``None`` when they are normalised outside with the run's mean and std.
    """

    dtype: PixelType = PixelType.FLOAT32
    layout: Layout = Layout.NCHW
    normalised_inside: bool = False
    value_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "dtype", PixelType(self.dtype))
            object.__setattr__(self, "layout", Layout(self.layout))
        except ValueError as exc:
            raise ConfigError(
                f"input contract: {exc}; the element type is float32 or uint8, the layout NCHW or NHWC"
            ) from exc
        if self.value_range is not None:
            object.__setattr__(self, "value_range", (float(self.value_range[0]), float(self.value_range[1])))
        if self.normalised_inside != (self.value_range is not None):
            raise ConfigError(
                "input contract: a graph that normalises inside is fed a value range ((0, 1) or (0, 255)), "
                "and only such a graph is"
            )
        if self.dtype is PixelType.UINT8 and self.value_range != (0.0, 255.0):
            raise ConfigError(
                "input contract: a uint8 input takes pixels 0..255 and normalises them inside the graph "
                f"(value range (0, 255)), not {self.value_range}"
            )

    @property
    def is_default(self) -> bool:
        return self == DEFAULT_CONTRACT

    def pixel_normalisation(self) -> tuple[tuple[float, float, float], tuple[float, float, float]] | None:
        """The preprocessing mean and std that make the canonical batch span ``value_range``
        (pixels scaled to [0, 1] are divided by ``1 / high``); ``None`` when normalised outside."""
        if self.value_range is None:
            return None
        low, high = self.value_range
        if low != 0.0:
            raise ConfigError(f"input contract: a value range starts at 0, got {self.value_range}")
        return (0.0, 0.0, 0.0), (1.0 / high,) * 3

    def model_shape(self, batch: Any, height: int, width: int, channels: int = 3) -> list[Any]:
        """The model input's shape in its layout (``batch`` may be a name: a dynamic batch)."""
        if self.layout is Layout.NHWC:
            return [batch, height, width, channels]
        return [batch, channels, height, width]

    def to_model(self, batch: "np.ndarray") -> "np.ndarray":
        """The canonical batch (NCHW float32) as the model takes it."""
        import numpy as np

        return to_model_input(batch, layout=self.layout, dtype=np.dtype(self.dtype.value))

    def describe(self) -> str:
        inside = (
            f", normalised inside the graph (fed {self.value_range[0]:g}..{self.value_range[1]:g})"
            if self.value_range is not None
            else ", normalised outside with the run's mean/std"
        )
        return f"{self.dtype.value} {self.layout.value}{inside}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "dtype": self.dtype.value,
            "layout": self.layout.value,
            "normalised_inside": self.normalised_inside,
            "value_range": list(self.value_range) if self.value_range is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "InputContract":
        try:
            value_range = data.get("value_range")
            return cls(
                dtype=PixelType(data["dtype"]),
                layout=Layout(data["layout"]),
                normalised_inside=bool(data["normalised_inside"]),
                value_range=(float(value_range[0]), float(value_range[1])) if value_range is not None else None,
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ConfigError(f"the manifest's {SECTION} section is malformed ({exc!r}): {data!r}") from exc


DEFAULT_CONTRACT = InputContract()


def contract_of(run: "Run") -> InputContract:
    """The run's recorded contract, or the default one (a fine-tuned run's)."""
    section = run.get(SECTION)
    return DEFAULT_CONTRACT if section is None else InputContract.from_dict(section)


def layout_of(shape: list[Any]) -> Layout:
    """The layout of a 4-D image input's shape (``[N, 224, 224, 3]``): NHWC when its last axis,
    not its second, has the 3 channels."""
    return Layout.NHWC if shape[3] == 3 and shape[1] != 3 else Layout.NCHW


def to_model_input(batch: "np.ndarray", *, layout: Layout, dtype: Any) -> "np.ndarray":
    """A canonical NCHW float32 batch in ``layout`` and numpy ``dtype`` (float32, float16 or uint8)."""
    import numpy as np

    if layout is Layout.NHWC:
        batch = batch.transpose(0, 2, 3, 1)
    if np.dtype(dtype) == np.uint8:
        # The canonical values are whole pixels up to float rounding (about 1e-5 off): rint restores them.
        return np.ascontiguousarray(np.clip(np.rint(batch), 0, 255).astype(np.uint8))
    return np.ascontiguousarray(batch, dtype=dtype)
