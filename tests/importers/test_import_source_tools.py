"""An imported model scores exactly what its own tool says it scores, on the same images.

Each file here is written by the real tool: timm's ``CheckpointSaver`` with ``ModelEmaV3``,
the checkpoint layout of torchvision's reference ``train.py`` (its EMA is
``torch.optim.swa_utils.AveragedModel``), a real Lightning ``Trainer.fit``. Each is then
evaluated by that tool's own evaluation (timm's ``create_transform`` + ``ImageDataset``,
torchvision's ``ImageClassification`` preset + ``ImageFolder``, Lightning's ``validate``)
and by ``edge-tl evaluate`` on the imported run: the number of correct images is the same
and the logits agree within 1e-4.

The class folders are ``class1`` ... ``class10``: timm numbers them in natural order
(``class2`` before ``class10``), torchvision's ``ImageFolder`` in plain sorted order.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_tl.errors import ConfigError

SIZE = 32
CROP_PCT = 0.875
TIMM_ARCH = "test_efficientnet"
LOGIT_ATOL = 1e-4


def edge(*args: object) -> str:
    from click.testing import CliRunner

    from edge_tl.cli.main import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def edge_fails(*args: object) -> str:
    from click.testing import CliRunner

    from edge_tl.cli.main import cli
    from edge_tl.errors import EdgeTLError

    result = CliRunner().invoke(cli, [str(a) for a in args])
    # `edge-tl` prints an EdgeTLError as one line and exits 1 (edge_tl.cli.main:main)
    assert isinstance(result.exception, EdgeTLError), result.output
    assert "\n" not in str(result.exception)
    return str(result.exception)


@dataclass(frozen=True)
class Folders:
    train: Path
    val: Path
    calib: Path


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Folders:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("class-folders")
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(images))
    for split, index in (("train", order[:1000]), ("val", order[1000:1200]), ("calib", order[1200:1264])):
        for i in index:
            folder = root / split / f"class{digits.target[i] + 1}" if split != "calib" else root / split
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], mode="L").save(folder / f"{i}.png")
    return Folders(root / "train", root / "val", root / "calib")


def _timm_transform(model):
    from timm.data import create_transform, resolve_data_config

    # what timm's validate.py builds for --img-size 32 --crop-pct 0.875
    return create_transform(**resolve_data_config({"input_size": (3, SIZE, SIZE), "crop_pct": CROP_PCT}, model=model))


def _train(model, loader, after_step=None, epochs: int = 3):
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            if after_step is not None:
                after_step(model)
    return optimizer


def _own_eval(model, dataset) -> tuple[int, dict[str, object]]:
    """Correct images and logits per image path, as the tool's own evaluation computes them."""
    import torch

    model.eval()
    correct, logits = 0, {}
    paths = [p for p, _ in dataset.samples] if hasattr(dataset, "samples") else None
    with torch.inference_mode():
        for i in range(len(dataset)):
            x, y = dataset[i]
            out = model(x[None])[0]
            correct += int(out.argmax() == y)
            path = paths[i] if paths is not None else dataset.filename(i, absolute=True)
            logits[str(Path(path).resolve())] = out.numpy()
    return correct, logits


def _edge_eval(run: Path) -> tuple[int, dict[str, object]]:
    """``edge-tl evaluate``'s count, and the run's reference logits per image path."""
    import numpy as np
    import torch

    from edge_tl.data import iter_batches, split_from_run
    from edge_tl.models import Preprocessing, load_run_model
    from edge_tl.runs import Run
    from edge_tl.train.evaluate import evaluate_run

    opened = Run.open(run)
    report = evaluate_run(opened)
    split = split_from_run(opened)
    model = load_run_model(opened)
    prep = Preprocessing.from_dict(opened.get("preprocessing"))
    out = []
    with torch.inference_mode():
        for x, _ in iter_batches(split.val, prep, 64):
            out.append(model(torch.from_numpy(x)).numpy())
    logits = np.concatenate(out)
    return round(report.result.top1 * report.result.count), {
        str(Path(s.path).resolve()): logits[i] for i, s in enumerate(split.val)
    }


def _same_logits(ours: dict, theirs: dict) -> float:
    import numpy as np

    assert set(ours) == set(theirs)
    return max(float(np.abs(ours[p] - theirs[p]).max()) for p in ours)


# --------------------------------------------------------------------------- timm


@dataclass(frozen=True)
class TimmRun:
    checkpoint: Path
    model: object
    ema: object
    correct: int  # timm's own evaluation of the plain weights
    ema_correct: int
    logits: dict


@pytest.fixture(scope="module")
def timm_checkpoint(folders: Folders, tmp_path_factory: pytest.TempPathFactory) -> TimmRun:
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    from timm.data import ImageDataset
    from timm.utils import CheckpointSaver, ModelEmaV3

    torch.manual_seed(0)
    model = timm.create_model(TIMM_ARCH, num_classes=10)
    transform = _timm_transform(model)
    train = ImageDataset(str(folders.train), transform=transform)
    assert train.reader.class_to_idx["class2"] == 1 and train.reader.class_to_idx["class10"] == 9
    ema = ModelEmaV3(model, decay=0.998)  # slow: after a few steps the EMA copy is far behind
    optimizer = _train(model, torch.utils.data.DataLoader(train, batch_size=64, shuffle=True), ema.update)
    out = tmp_path_factory.mktemp("timm-train")
    args = argparse.Namespace(model=TIMM_ARCH, img_size=SIZE, crop_pct=CROP_PCT, model_ema=True, lr=3e-3)
    saver = CheckpointSaver(
        model, optimizer, args=args, model_ema=ema.module, checkpoint_dir=str(out), recovery_dir=str(out), max_history=1
    )
    saver.save_checkpoint(epoch=2, metric=0.9)
    val = ImageDataset(str(folders.val), transform=transform)
    correct, logits = _own_eval(model, val)
    ema_correct, _ = _own_eval(ema.module, val)
    assert correct >= 150 and ema_correct < 60  # a trained model, and an EMA copy that is not it
    return TimmRun(out / "model_best.pth.tar", model, ema.module, correct, ema_correct, logits)


def _import_timm(timm_run: TimmRun, folders: Folders, run: Path, *extra: object) -> str:
    return edge(
        "import",
        "--out",
        run,
        "--backbone",
        f"timm:{TIMM_ARCH}",
        "--weights",
        timm_run.checkpoint,
        "--val-data",
        folders.val,
        "--calib-data",
        folders.calib,
        "--img-size",
        SIZE,
        "--crop-pct",
        CROP_PCT,
        *extra,
    )


def test_timm_checkpoint_scores_what_timm_scores(timm_checkpoint: TimmRun, folders: Folders, tmp_path: Path) -> None:
    from edge_tl.runs import Run

    run = tmp_path / "run"
    out = _import_timm(timm_checkpoint, folders, run)
    # the key is said, with the other one and how to take it; both are scored
    assert "weights: 'state_dict' (timm's validate.py scores state_dict unless given --use-ema)" in out
    assert "the EMA weights: --weights-key state_dict_ema" in out
    assert (
        f"checkpoint keys on --val-data: state_dict {timm_checkpoint.correct}/200 "
        f"({timm_checkpoint.correct / 2:.1f}%) (used); state_dict_ema {timm_checkpoint.ema_correct}/200" in out
    )
    manifest = Run.open(run).manifest
    assert manifest["classes"][:3] == ["class1", "class2", "class3"] and manifest["classes"][-1] == "class10"
    assert manifest["preprocessing"]["resize_size"] == 36  # floor(32 / 0.875); round would give 37
    assert manifest["source"]["weights_key"] == "state_dict" and manifest["source"]["tool"] == "timm"

    correct, logits = _edge_eval(run)
    assert correct == timm_checkpoint.correct
    assert _same_logits(logits, timm_checkpoint.logits) < LOGIT_ATOL


def test_timm_ema_weights_are_taken_when_asked(timm_checkpoint: TimmRun, folders: Folders, tmp_path: Path) -> None:
    import torch

    from edge_tl.models import load_run_model
    from edge_tl.runs import Run

    run = tmp_path / "run"
    _import_timm(timm_checkpoint, folders, run, "--weights-key", "state_dict_ema", "--accept-low-accuracy")
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        ema = timm_checkpoint.ema.eval()(x)
        assert torch.allclose(load_run_model(Run.open(run))(x), ema, atol=1e-6)
        assert not torch.allclose(timm_checkpoint.model.eval()(x), ema, atol=1e-2)


def test_timm_checkpoint_in_the_wrong_class_order_is_refused(
    timm_checkpoint: TimmRun, folders: Folders, tmp_path: Path
) -> None:
    out = edge_fails(
        "import",
        "--out",
        tmp_path / "run",
        "--backbone",
        f"timm:{TIMM_ARCH}",
        "--weights",
        timm_checkpoint.checkpoint,
        "--val-data",
        folders.val,
        "--img-size",
        SIZE,
        "--crop-pct",
        CROP_PCT,
        "--class-order",
        "sorted",
    )
    assert f"near chance (10.0%), while the natural order scores {timm_checkpoint.correct}/200" in out
    assert "give --class-order natural" in out
    assert not (tmp_path / "run").exists()


def test_a_plain_state_dict_with_two_class_orders_is_refused_with_both_scores(
    timm_checkpoint: TimmRun, folders: Folders, tmp_path: Path
) -> None:
    import torch

    weights = tmp_path / "plain.pt"
    torch.save(timm_checkpoint.model.state_dict(), weights)
    common = ["--backbone", f"timm:{TIMM_ARCH}", "--weights", weights, "--val-data", folders.val]
    common += ["--img-size", SIZE, "--crop-pct", CROP_PCT]
    out = edge_fails("import", "--out", tmp_path / "run", *common)
    assert "the source does not say which tool made it; give --class-order natural|sorted or --labels FILE" in out
    assert f"natural {timm_checkpoint.correct}/200" in out and "sorted " in out
    edge("import", "--out", tmp_path / "run", *common, "--class-order", "natural")
    correct, logits = _edge_eval(tmp_path / "run")
    assert correct == timm_checkpoint.correct and _same_logits(logits, timm_checkpoint.logits) < LOGIT_ATOL


def test_the_network_the_checkpoint_names_is_the_one_built(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    from timm.utils import CheckpointSaver

    # timm's efficientnet_lite0 (PyTorch padding) has the keys and shapes of tf_efficientnet_lite0,
    # which edge-tl's efficientnet_lite0 builds
    model = timm.create_model("efficientnet_lite0", num_classes=3)
    args = argparse.Namespace(model="efficientnet_lite0")
    saver = CheckpointSaver(
        model, torch.optim.SGD(model.parameters(), lr=0.1), args=args, checkpoint_dir=str(tmp_path),
        recovery_dir=str(tmp_path),
    )  # fmt: skip
    saver.save_checkpoint(epoch=0, metric=0.5)
    checkpoint = tmp_path / "model_best.pth.tar"
    out = edge_fails("import", "--out", tmp_path / "a", "--backbone", "efficientnet_lite0", "--weights", checkpoint)
    assert (
        "the checkpoint names its network timm's 'efficientnet_lite0' (timm train.py's args.model) but --backbone "
        "efficientnet_lite0 builds timm's 'tf_efficientnet_lite0'" in out
    )
    assert "give --backbone timm:efficientnet_lite0" in out
    edge("import", "--out", tmp_path / "b", "--backbone", "timm:efficientnet_lite0", "--weights", checkpoint)

    # a bare state dict names nothing: the two networks cannot be told apart
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    out = edge_fails(
        "import", "--out", tmp_path / "c", "--backbone", "efficientnet_lite0", "--weights", tmp_path / "plain.pt"
    )
    assert "give --backbone timm:tf_efficientnet_lite0 or --backbone timm:efficientnet_lite0" in out


def test_an_unknown_name_timm_knows_suggests_timm_prefix(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    from edge_tl.models import get_backbone

    with pytest.raises(ConfigError, match="give --backbone timm:mobilenetv3_small_050$"):
        get_backbone("mobilenetv3_small_050")


# --------------------------------------------------------------------------- torchvision


def _averaged(model, decay: float):
    """The EMA of torchvision's references/classification/utils.py: ``ExponentialMovingAverage`` is a
    ``torch.optim.swa_utils.AveragedModel`` with an EMA average, so its state holds ``n_averaged`` and the
    network under ``module.`` (https://github.com/pytorch/vision, references/classification/utils.py)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


@pytest.fixture(scope="module")
def torchvision_checkpoint(folders: Folders, tmp_path_factory: pytest.TempPathFactory):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from torchvision.datasets import ImageFolder
    from torchvision.transforms._presets import ImageClassification

    # the preset the weights' transforms() and the reference scripts' eval preset are made of
    transform = ImageClassification(crop_size=SIZE, resize_size=36)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    train = ImageFolder(str(folders.train), transform=transform)
    ema = _averaged(model, 0.99)
    optimizer = _train(
        model, torch.utils.data.DataLoader(train, batch_size=64, shuffle=True), ema.update_parameters, epochs=2
    )
    args = argparse.Namespace(
        model="resnet18", val_crop_size=SIZE, val_resize_size=36, interpolation="bilinear", model_ema=True
    )
    path = tmp_path_factory.mktemp("tv-train") / "checkpoint.pth"
    # references/classification/train.py's checkpoint dict
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": {"last_epoch": 3},
            "epoch": 2,
            "args": args,
            "model_ema": ema.state_dict(),
        },
        path,
    )
    val = ImageFolder(str(folders.val), transform=transform)
    return path, _own_eval(model, val), _own_eval(ema.module, val), ema


def test_torchvision_reference_checkpoint_scores_what_torchvision_scores(
    torchvision_checkpoint, folders: Folders, tmp_path: Path
) -> None:
    from edge_tl.runs import Run

    path, (correct, logits), (ema_correct, ema_logits), _ = torchvision_checkpoint
    run = tmp_path / "run"
    out = edge("import", "--out", run, "--backbone", "resnet18", "--weights", path, "--val-data", folders.val,
               "--accept-low-accuracy")  # fmt: skip
    assert "weights: 'model' (torchvision's reference train.py evaluates model" in out
    assert "the EMA weights: --weights-key model_ema" in out
    manifest = Run.open(run).manifest
    assert manifest["preprocessing"]["resize_size"] == 36 and manifest["preprocessing"]["input_size"] == SIZE
    assert manifest["classes"][:3] == ["class1", "class10", "class2"]  # ImageFolder's plain sort
    ours, our_logits = _edge_eval(run)
    assert ours == correct and _same_logits(our_logits, logits) < LOGIT_ATOL

    run = tmp_path / "ema"
    edge("import", "--out", run, "--backbone", "resnet18", "--weights", path, "--val-data", folders.val,
         "--weights-key", "model_ema", "--accept-low-accuracy")  # fmt: skip
    assert Run.open(run).get("source")["stripped_prefixes"] == ["n_averaged", "module."]
    ours, our_logits = _edge_eval(run)
    assert ours == ema_correct and _same_logits(our_logits, ema_logits) < LOGIT_ATOL


def test_a_model_ema_saved_alone_imports(torchvision_checkpoint, tmp_path: Path) -> None:
    import torch

    from edge_tl.models import load_run_model
    from edge_tl.runs import Run

    *_, ema = torchvision_checkpoint
    torch.save(ema.state_dict(), tmp_path / "ema.pth")
    edge("import", "--out", tmp_path / "run", "--backbone", "resnet18", "--weights", tmp_path / "ema.pth",
         "--img-size", SIZE)  # fmt: skip
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        assert torch.allclose(load_run_model(Run.open(tmp_path / "run"))(x), ema.module.eval()(x), atol=1e-6)


# --------------------------------------------------------------------------- Lightning


def test_lightning_checkpoint_with_a_loss_buffer_scores_what_validate_scores(folders: Folders, tmp_path: Path) -> None:
    L = pytest.importorskip("lightning")
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    from torchvision.datasets import ImageFolder

    class Classifier(L.LightningModule):
        def __init__(self, backbone: str) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.model = timm.create_model(backbone, num_classes=10)
            # class-weighted loss: its weight is a buffer in the module's state_dict, not the network's
            self.loss_fn = torch.nn.CrossEntropyLoss(weight=torch.linspace(0.5, 1.5, 10))
            self.correct = 0

        def forward(self, x):
            return self.model(x)

        def training_step(self, batch, _):
            x, y = batch
            return self.loss_fn(self(x), y)

        def validation_step(self, batch, _):
            x, y = batch
            self.correct += int((self(x).argmax(1) == y).sum())

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=3e-3)

    torch.manual_seed(0)
    module = Classifier(TIMM_ARCH)
    transform = _timm_transform(module.model)
    loader = torch.utils.data.DataLoader(ImageFolder(str(folders.train), transform=transform), batch_size=64,
                                         shuffle=True)  # fmt: skip
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path))  # fmt: skip
    trainer.fit(module, loader)
    checkpoint = tmp_path / "final.ckpt"
    trainer.save_checkpoint(checkpoint)
    val = ImageFolder(str(folders.val), transform=transform)
    module.correct = 0
    trainer.validate(module, torch.utils.data.DataLoader(val, batch_size=64), verbose=False)
    assert module.correct >= 150
    _, logits = _own_eval(module.model, val)

    run = tmp_path / "run"
    out = edge("import", "--out", run, "--backbone", f"timm:{TIMM_ARCH}", "--weights", checkpoint, "--val-data",
               folders.val, "--img-size", SIZE, "--crop-pct", CROP_PCT)  # fmt: skip
    assert "weights: 'state_dict:model'" in out
    assert "ignored 1 Lightning key(s) outside the network" in out and "loss_fn.weight" in out
    correct, our_logits = _edge_eval(run)
    assert correct == module.correct and _same_logits(our_logits, logits) < LOGIT_ATOL

    # an EMA copy of the network beside it (as an EMA callback keeps one) could be the model too: not ignored
    saved = torch.load(checkpoint, weights_only=True)
    saved["state_dict"].update({f"ema_model.{k}": v + 1.0 for k, v in module.model.state_dict().items()})
    torch.save(saved, tmp_path / "with-ema.ckpt")
    common = ["--backbone", f"timm:{TIMM_ARCH}", "--weights", tmp_path / "with-ema.ckpt", "--img-size", SIZE]
    out = edge_fails("import", "--out", tmp_path / "ema", *common)
    assert "holds several weights (state_dict:model, state_dict:ema_model)" in out
    edge("import", "--out", tmp_path / "ema", *common, "--weights-key", "state_dict:ema_model")

    # the hyper-parameters name the network: another one is refused
    out = edge_fails("import", "--out", tmp_path / "other", "--backbone", "timm:test_resnet", "--weights", checkpoint)
    assert "the checkpoint names its network timm's 'test_efficientnet' (Lightning's hyper_parameters" in out


# --------------------------------------------------------------------------- the sanity line


def test_a_reference_near_chance_stops_the_import_with_what_was_checked(folders: Folders, tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")

    torch.manual_seed(0)
    torch.save(timm.create_model(TIMM_ARCH, num_classes=10).state_dict(), tmp_path / "untrained.pt")
    common = ["--backbone", f"timm:{TIMM_ARCH}", "--weights", tmp_path / "untrained.pt", "--val-data", folders.val]
    common += ["--img-size", SIZE, "--class-order", "natural"]
    out = edge_fails("import", "--out", tmp_path / "run", *common)
    # test_efficientnet's own crop_pct 0.95: floor(32 / 0.95) = 33
    assert "within 2 points of chance (10.0%); checked: class order natural" in out
    assert "checkpoint key (plain state dict) (the only one); mean [0.485, 0.456, 0.406]" in out
    assert "resize 33 px for a 32 px crop (--resize-size). Fix the cause, or pass --accept-low-accuracy" in out
    assert not (tmp_path / "run").exists()
    edge("import", "--out", tmp_path / "run", *common, "--accept-low-accuracy")


def test_natural_order_is_timms_image_dataset_order(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    from timm.data import ImageDataset

    from edge_tl.importers.scoring import ordered

    names = ["class10", "Class2", "class1", "b7", "B10", "a", "img_003", "img_20"]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.png").write_bytes(b"")
    mapping = ImageDataset(str(tmp_path)).reader.class_to_idx
    assert ordered(names, "natural") == sorted(mapping, key=mapping.get)
    assert ordered(names, "natural")[:4] == ["a", "b7", "B10", "class1"]
    assert ordered(names, "sorted")[:3] == ["B10", "Class2", "a"]
