"""The on-device plan follows the TensorRT release the probe finds (an engine runs only on the release that built it).

The refusal paths, without a device; tests/deploy/test_deploy_e2e.py replans a real deploy (trtexec mode).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from edge_tl.deploy.api import _plan_for_device
from edge_tl.deploy.config import DeployConfig
from edge_tl.errors import ConfigError
from edge_tl.targets import load_target

XAVIER = load_target("jetson-agx-xavier")  # lists 8.5.2 (default) and 8.2.1


def _plan(probe_trt: str | None, *, tensorrt: str | None = None, replan: bool = True):
    bundle = SimpleNamespace(build_plan={"tensorrt": "8.5.2"})
    said: list[str] = []
    config = DeployConfig(target="jetson-agx-xavier", precision="fp16", tensorrt=tensorrt)
    out = _plan_for_device(None, config, XAVIER, bundle, "reference", SimpleNamespace(tensorrt=probe_trt),
                           label="xavier-1", replan=replan, say=said.append)  # fmt: skip
    return out, bundle, said


def test_the_same_release_or_one_the_profile_lacks_keeps_the_bundle() -> None:
    for found in ("8.5.2", "8.5.2.2", "10.3.0", None):  # 10.3.0: not listed, the device check names it
        (bundle, reference), given, said = _plan(found)
        assert bundle is given and reference == "reference" and said == []


def test_a_release_asked_for_is_kept_and_a_fleet_refuses_a_device_on_another_release() -> None:
    (bundle, _), given, said = _plan("8.2.1", tensorrt="8.5.2")
    assert bundle is given and said == []  # the user chose: build_engine.sh then refuses the other trtexec
    with pytest.raises(ConfigError) as err:
        _plan("8.2.1", replan=False)
    assert str(err.value) == (
        "xavier-1 has TensorRT 8.2.1 but this fleet's bundle is planned for TensorRT 8.5.2 (the profile's default): "
        'give xavier-1 its own entry with tensorrt = "8.2.1"'
    )
