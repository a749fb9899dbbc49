"""A torchvision ResNet-18 trained here on scikit-learn's digits at 32 px, and the image folders
an ``edge-tl import`` of it is given: labelled validation images and unlabelled calibration ones."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

SIZE = 32
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
PREP_FLAGS = ["--img-size", str(SIZE), "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD))]
CLASSES = [f"digit-{i}" for i in range(10)]


@dataclass(frozen=True)
class Trained:
    state: dict  # the trained weights
    val: Path  # labelled folder: <class name>/<image>.png
    calib: Path  # unlabelled folder of images
    labels: Path  # one class name per line
    probe: object  # a batch of preprocessed validation images (numpy, NCHW)
    classes: tuple[str, ...] = tuple(CLASSES)
    prep_flags: tuple[str, ...] = tuple(PREP_FLAGS)


def _model(num_classes: int = 10):
    import torchvision

    return torchvision.models.resnet18(weights=None, num_classes=num_classes)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    pytest.importorskip("onnxruntime")
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    from edge_tl.data import preprocess
    from edge_tl.models import Preprocessing

    root = tmp_path_factory.mktemp("digits-import")
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype(np.uint8)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(images))
    val_idx, calib_idx, train_idx = order[:120], order[120:184], order[184:]
    for i in val_idx:
        folder = root / "val" / CLASSES[digits.target[i]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i], mode="L").save(folder / f"{i}.png")
    (root / "calib").mkdir()
    for i in calib_idx:
        Image.fromarray(images[i], mode="L").save(root / "calib" / f"{i}.png")
    (root / "labels.txt").write_text("\n".join(CLASSES) + "\n")

    prep = Preprocessing(SIZE, MEAN, STD, "bilinear", 0.875)
    x = torch.from_numpy(
        np.stack([preprocess(Image.fromarray(images[i], mode="L").convert("RGB"), prep) for i in train_idx])
    )
    y = torch.from_numpy(digits.target[train_idx].astype(np.int64))
    # Training the whole network takes minutes on a busy CPU; a head trained on the randomly
    # initialised network's features reaches about 0.95 on digits in seconds, which is all the
    # import tests need: a model whose accuracy a broken stage would visibly change.
    torch.manual_seed(0)
    model = _model().eval()
    with torch.inference_mode():
        features = torch.nn.Sequential(*list(model.children())[:-1])(x).flatten(1)
    mu, sd = features.mean(0), features.std(0) + 1e-6
    head = torch.nn.Linear(features.shape[1], 10)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(head((features - mu) / sd), y).backward()
        optimizer.step()
    with torch.no_grad():  # the feature normalisation folded into the model's own fc
        model.fc.weight.copy_(head.weight / sd)
        model.fc.bias.copy_(head.bias - (head.weight * mu / sd).sum(1))
    probe = np.stack([preprocess(Image.fromarray(images[i], mode="L").convert("RGB"), prep) for i in val_idx[:16]])
    return Trained(
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        root / "val",
        root / "calib",
        root / "labels.txt",
        probe,
    )


@pytest.fixture(scope="session")
def resnet18_onnx(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained ResNet-18 exported to ONNX here (dynamic batch, its own input/output names)."""
    import torch

    model = _model()
    model.load_state_dict(trained.state)
    path = tmp_path_factory.mktemp("onnx") / "resnet18.onnx"
    torch.onnx.export(
        model.eval(),
        torch.zeros(1, 3, SIZE, SIZE),
        str(path),
        input_names=["pixels"],
        output_names=["scores"],
        dynamic_axes={"pixels": {0: "N"}, "scores": {0: "N"}},
        opset_version=17,
        dynamo=False,
    )
    return path
