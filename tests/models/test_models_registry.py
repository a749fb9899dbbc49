from __future__ import annotations

import numpy as np
import pytest

from edge_tl.errors import ConfigError
from edge_tl.models import Weights, WeightsSource, build_model, get_backbone, list_backbones
from edge_tl.models.registry import map_by_position

REQUIRED = {
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "resnet18",
    "resnet50",
    "efficientnet_b0",
    "regnet_y_400mf",
    "shufflenet_v2_x1_0",
    "efficientnet_lite0",
}


def test_registry_has_the_promised_backbones() -> None:
    assert REQUIRED <= {s.name for s in list_backbones()}


@pytest.mark.parametrize("name", sorted(REQUIRED - {"efficientnet_lite0"}))
def test_torchvision_preprocessing_matches_torchvision_metadata(name: str) -> None:
    torchvision = pytest.importorskip("torchvision")
    transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    prep = get_backbone(name).preprocessing
    assert prep.input_size == transforms.crop_size[0]
    assert prep.resize_size == transforms.resize_size[0]
    assert prep.interpolation == transforms.interpolation.value
    assert np.allclose(prep.mean, transforms.mean) and np.allclose(prep.std, transforms.std)


def test_lite0_contract_matches_timm() -> None:
    timm = pytest.importorskip("timm")
    cfg = timm.get_pretrained_cfg("tf_efficientnet_lite0").to_dict()
    prep = get_backbone("efficientnet_lite0").preprocessing
    assert (prep.mean, prep.std) == (tuple(cfg["mean"]), tuple(cfg["std"]))
    assert prep.crop_pct == cfg["crop_pct"] and prep.interpolation == cfg["interpolation"]


def test_unknown_backbone_suggests_close_names() -> None:
    with pytest.raises(ConfigError, match="Did you mean: mobilenet_v2"):
        get_backbone("mobilenet_v22")


def test_timm_names_resolve_and_unknown_timm_names_fail() -> None:
    pytest.importorskip("timm")
    import timm

    spec = get_backbone("timm:resnet10t")
    # The training-resolution contract of timm's own config (resnet10t: 176 px, 224 only at test time).
    cfg = timm.get_pretrained_cfg("resnet10t").to_dict()
    prep = spec.preprocessing
    assert spec.source == "timm" and spec.arch == "resnet10t" and prep.input_size == cfg["input_size"][-1] == 176
    assert (prep.mean, prep.std, prep.interpolation, prep.crop_pct) == (
        cfg["mean"],
        cfg["std"],
        cfg["interpolation"],
        cfg["crop_pct"],
    )
    with pytest.raises(ConfigError, match="timm has no model"):
        get_backbone("timm:resnet10tt")


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_every_backbone_builds_with_a_new_head(name: str) -> None:
    torch = pytest.importorskip("torch")
    model = build_model(name, 7, weights=Weights(WeightsSource.NONE)).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 7)


def test_weights_file_round_trip_and_bad_files(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    source = build_model("resnet18", 3, weights=Weights(WeightsSource.NONE))
    path = tmp_path / "w.pt"
    torch.save({"model": source.state_dict(), "epoch": 3}, path)
    # Same class count: every tensor, head included, comes back.
    loaded = build_model("resnet18", 3, weights=Weights.parse(str(path)))
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), loaded.state_dict().values()))
    # Another class count: the backbone is loaded and the head is fresh.
    other = build_model("resnet18", 5, weights=Weights.parse(str(path)))
    assert torch.equal(other.conv1.weight, source.conv1.weight) and other.fc.out_features == 5

    wrong = tmp_path / "wrong.pt"
    torch.save(build_model("mobilenet_v2", 3, weights=Weights(WeightsSource.NONE)).state_dict(), wrong)
    with pytest.raises(ConfigError, match="do not fit the backbone"):
        build_model("resnet18", 3, weights=Weights.parse(str(wrong)))

    pickled = tmp_path / "pickled.pt"
    torch.save(source, pickled)  # a whole module object: refused by weights_only loading
    with pytest.raises(ConfigError, match="weights_only=True"):
        build_model("resnet18", 3, weights=Weights.parse(str(pickled)))

    with pytest.raises(ConfigError, match="neither 'imagenet' nor an existing file"):
        Weights.parse(str(tmp_path / "absent.pt"))


def test_map_by_position_refuses_another_architecture() -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(ConfigError, match="not the same architecture"):
        map_by_position({"a": torch.zeros(2)}, {"b": torch.zeros(3)})


def test_offline_imagenet_weights_fail_with_the_way_out(monkeypatch) -> None:
    torchvision = pytest.importorskip("torchvision")

    def offline(*_args, **_kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(ConfigError, match="--weights PATH"):
        build_model("resnet18", 3)
