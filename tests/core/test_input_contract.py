"""The input contract: what it accepts, how it feeds a model, and its manifest record."""

from __future__ import annotations

import numpy as np
import pytest

from edge_tl.errors import ConfigError
from edge_tl.input_contract import DEFAULT_CONTRACT, InputContract, Layout, PixelType, layout_of


def test_a_uint8_input_is_fed_whole_pixels_normalised_inside() -> None:
    with pytest.raises(ConfigError, match=r"a uint8 input takes pixels 0..255 .* not \(0.0, 1.0\)"):
        InputContract(PixelType.UINT8, Layout.NCHW, True, (0, 1))
    with pytest.raises(ConfigError, match="only such a graph is"):
        InputContract(PixelType.FLOAT32, Layout.NCHW, False, (0, 1))
    with pytest.raises(ConfigError, match="the element type is float32 or uint8"):
        InputContract("float16")  # type: ignore[arg-type]


def test_the_canonical_batch_becomes_the_models_input() -> None:
    contract = InputContract("uint8", "NHWC", True, (0, 255))  # type: ignore[arg-type]
    assert contract.pixel_normalisation() == ((0.0, 0.0, 0.0), (1 / 255,) * 3)
    assert contract.model_shape("batch", 32, 24) == ["batch", 32, 24, 3]
    # values as the preprocessing makes them (pixels up to float rounding), NCHW
    batch = np.array([[[[0.0, 254.99998]], [[128.00002, 300.0]], [[-1.0, 7.4]]]], dtype=np.float32)
    fed = contract.to_model(batch)
    assert fed.dtype == np.uint8 and fed.shape == (1, 1, 2, 3)
    assert fed.tolist() == [[[[0, 128, 0], [255, 255, 7]]]]
    assert DEFAULT_CONTRACT.to_model(batch).dtype == np.float32 and DEFAULT_CONTRACT.pixel_normalisation() is None
    assert layout_of(["n", 224, 224, 3]) is Layout.NHWC and layout_of(["n", 3, 224, 224]) is Layout.NCHW


def test_the_record_reads_back_and_a_malformed_one_is_named() -> None:
    contract = InputContract("float32", "NHWC", True, (0, 1))  # type: ignore[arg-type]
    assert InputContract.from_dict(contract.to_dict()) == contract
    assert contract.describe() == "float32 NHWC, normalised inside the graph (fed 0..1)"
    with pytest.raises(ConfigError, match="input_contract section is malformed"):
        InputContract.from_dict({"dtype": "uint8"})
