"""mmpretrain's ResNets and the networks rtk does not build.

mmpretrain and mmengine cannot be installed cheaply here (mmpretrain needs mmcv's compiled ops), so
their files are written in the layout their code documents: mmpretrain's ``ResNet``/``ResNetV1d``
backbones keep torchvision's names under ``backbone.`` (V1d's deep stem as ``stem.0/1/2`` conv+bn,
its stride-1 first shortcut without the pool, so with the conv at ``downsample.0``), the linear head
at ``head.fc``; ``publish_model.py`` keeps ``meta`` and ``state_dict``; mmengine's ``Runner``
adds ``message_hub`` (pickled ``HistoryBuffer`` objects) and, with ``EMAHook``, swaps the averaged
weights into ``state_dict``. The weights come from the library whose network it is — torchvision's
ResNet-50 for mmpretrain's ResNet-50, timm's resnet50d for ResNetV1d-50, the same network — and
rtk's reading is compared with that library's forward pass.
"""

from __future__ import annotations

import collections
import json
import re
import sys
import types

import numpy as np
import pytest
import torch
import torchvision.models as tvm

from foreign import export_and_check, forward, inputs, onnx_logits, settle_batchnorm
from toolkit.core.architecture import infer_spec
from toolkit.core.checkpoint import Checkpoint, CheckpointOptions, find_weights, load_checkpoint
from toolkit.core.errors import install_hint
from toolkit.core.spec import ModelSpec, Preprocess

timm = pytest.importorskip("timm", reason=f"timm builds the networks under test ({install_hint('dev')})")

CLASSES = ("apple", "pear", "plum")
_TIMM_STEM = {"conv1.0": "stem.0.conv", "conv1.1": "stem.0.bn", "conv1.3": "stem.1.conv", "conv1.4": "stem.1.bn", "conv1.6": "stem.2.conv", "bn1": "stem.2.bn"}


def mmpretrain_names(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A torchvision/timm ResNet's state_dict under mmpretrain's names (ResNet, ResNetV1c/V1d)."""
    deep = isinstance(getattr(model, "conv1", None), torch.nn.Sequential)
    renamed = {}
    for key, value in model.state_dict().items():
        if key.startswith("fc."):
            renamed[f"head.{key}"] = value
            continue
        module, _, leaf = key.rpartition(".")
        if deep and module in _TIMM_STEM:
            key = f"{_TIMM_STEM[module]}.{leaf}"
        shortcut = re.fullmatch(r"(layer\d+\.\d+)\.downsample\.(\d)\.(.+)", key)
        if shortcut and isinstance(model.get_submodule(shortcut.group(1)).downsample[0], torch.nn.Identity):
            # timm keeps an identity where mmpretrain has no pool (a stride-1 block): one index less there.
            key = f"{shortcut.group(1)}.downsample.{int(shortcut.group(2)) - 1}.{shortcut.group(3)}"
        renamed[f"backbone.{key}"] = value
    return renamed


def published(model: torch.nn.Module, **extra) -> dict:
    """What mmpretrain's tools/model_converters/publish_model.py leaves of a Runner checkpoint."""
    meta = {
        "epoch": 100, "iter": 125100, "seed": 0, "experiment_name": "resnet50_8xb32_in1k", "time": "20230101_000000",
        "mmengine_version": "0.10.4", "cfg": "model = dict(type='ImageClassifier', backbone=dict(type='ResNet', depth=50))",
        "dataset_meta": {"classes": CLASSES},
    }
    return {"meta": meta, "state_dict": collections.OrderedDict(mmpretrain_names(model)), **extra}


@pytest.fixture(scope="module")
def resnet18d():
    torch.manual_seed(7)
    return settle_batchnorm(timm.create_model("resnet18d", pretrained=False, num_classes=3))


def test_mmpretrain_resnetv1d_reads_as_timms_resnet_d(tmp_path, cli, resnet18d):
    path = tmp_path / "resnetv1d18_in1k.pth"
    torch.save(published(resnet18d), path)
    report = json.loads(cli("inspect", path, "--json").output)
    assert report["arch"] == "resnet18d" and report["spec"]["class_names"] == list(CLASSES)
    assert report["weights"] == "raw (['state_dict'], in mmpretrain's backbone./head.fc. names, read as torchvision's)"
    assert report["preprocess_sources"]["class_names"] == "meta.dataset_meta.classes"
    assert report["train"]["meta"]["epoch"] == 100 and report["train"]["meta"]["mmengine_version"] == "0.10.4"
    onnx_path = export_and_check(cli, path)
    x = inputs(224)
    np.testing.assert_allclose(onnx_logits(onnx_path, x), forward(resnet18d, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "make, spec",
    [
        (lambda: tvm.resnet18(num_classes=3), ModelSpec("resnet18", 3)),
        # Bottleneck V1d: the stride-1 first shortcut is where mmpretrain's indices differ from timm's.
        (lambda: timm.create_model("resnet50d", pretrained=False, num_classes=3), ModelSpec("resnet50", 3, stem="deep", downsample="avg")),
        pytest.param(lambda: tvm.resnet50(num_classes=3), ModelSpec("resnet50", 3), marks=pytest.mark.slow),
        pytest.param(
            lambda: timm.create_model("resnet50c", pretrained=False, num_classes=3), ModelSpec("resnet50", 3, stem="deep"),
            marks=pytest.mark.slow,
        ),
    ],
    ids=["ResNet-18", "ResNetV1d-50", "ResNet-50", "ResNetV1c-50"],
)
def test_mmpretrain_layouts_match_the_network_they_are(make, spec):
    # In memory: the file round trip is the V1d-18 test's; this one is about the names.
    torch.manual_seed(8)
    reference = settle_batchnorm(make())
    found = find_weights(published(reference))
    ckpt = Checkpoint(infer_spec(found.state_dict), Preprocess(), found.state_dict)
    assert ckpt.spec == spec
    x = inputs(32)
    np.testing.assert_allclose(forward(ckpt.build_model(), x), forward(reference, x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_mmpretrain_resnetv1d50_exports_as_timms_resnet50d(tmp_path, cli):
    torch.manual_seed(9)
    reference = settle_batchnorm(timm.create_model("resnet50d", pretrained=False, num_classes=3))
    torch.save(published(reference), tmp_path / "resnetv1d50.pth")
    onnx_path = export_and_check(cli, tmp_path / "resnetv1d50.pth")
    x = inputs(224)
    np.testing.assert_allclose(onnx_logits(onnx_path, x), forward(reference, x), rtol=1e-4, atol=1e-5)


@pytest.fixture
def history_buffer(monkeypatch):
    """mmengine's HistoryBuffer as a class of that name, so that a Runner checkpoint pickles it as mmengine does."""
    module = types.ModuleType("mmengine.logging.history_buffer")

    class HistoryBuffer:
        def __init__(self, values):
            self._log_history = values

    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = module.__name__, "HistoryBuffer"
    module.HistoryBuffer = HistoryBuffer
    for name in ("mmengine", "mmengine.logging", module.__name__):
        monkeypatch.setitem(sys.modules, name, sys.modules.get(name) or types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return HistoryBuffer


def test_mmengine_runner_checkpoint_stays_refused_without_trust(tmp_path, cli, resnet18d, history_buffer):
    message_hub = {"log_scalars": {"train/loss": history_buffer([0.5])}, "runtime_info": {"epoch": 100}, "resumed_keys": {}}
    torch.save(published(resnet18d, message_hub=message_hub, optimizer={"state": {}, "param_groups": []}), tmp_path / "epoch_100.pth")
    result = cli("inspect", tmp_path / "epoch_100.pth")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "mmengine.logging.history_buffer.HistoryBuffer" in result.stderr and "--trust-pickle" in result.stderr


def test_mmengine_ema_weights_are_the_ones_under_state_dict(tmp_path, resnet18d):
    # EMAHook saves the averaged weights under state_dict and the trained ones under ema_state_dict.
    averaged = published(resnet18d)
    trained = {f"module.{k}": v + 1 if v.is_floating_point() else v for k, v in averaged["state_dict"].items()}
    torch.save({**averaged, "ema_state_dict": {**trained, "steps": torch.tensor(100)}}, tmp_path / "ema.pth")
    ema = load_checkpoint(tmp_path / "ema.pth")
    assert ema.weights == "ema" and ema.weights_location.startswith("['state_dict']")
    x = inputs(32)
    np.testing.assert_allclose(forward(ema.build_model(), x), forward(resnet18d, x), rtol=1e-5, atol=1e-6)
    raw = load_checkpoint(tmp_path / "ema.pth", options=CheckpointOptions(weights="raw"))
    assert raw.weights == "raw" and raw.weights_location.startswith("['ema_state_dict'] under module.")


@pytest.mark.parametrize(
    "state, message",
    [
        (lambda: timm.create_model("resnetrs50", pretrained=False, num_classes=3).state_dict(), "is a ResNet-RS (timm's resnetrs*"),
        (
            lambda: {**mmpretrain_names(tvm.resnet18(num_classes=3)), "backbone.layer1.0.se_layer.conv1.conv.weight": torch.zeros(4, 64, 1, 1)},
            "is an mmpretrain SE-ResNet (se_layer.*), which rtk does not build",
        ),
    ],
    ids=["resnet-rs", "mmpretrain-seresnet"],
)
def test_networks_rtk_does_not_build_are_named(tmp_path, cli, state, message):
    torch.save(state(), tmp_path / "x.pth")
    for command in (("inspect",), ("export", "--exporter", "torchscript")):
        result = cli(command[0], tmp_path / "x.pth", *command[1:])
        assert result.exit_code == 1 and message in result.stderr, result.stderr
