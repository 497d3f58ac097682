"""Checkpoints: rtk round trip, foreign torchvision files with inferred specs, and bad files."""

import os
import pickle
import zipfile

import pytest
import torch
import torchvision.models as tvm

from toolkit.checkpoint import infer_spec, load_checkpoint, load_model, save_checkpoint
from toolkit.errors import RtkError
from toolkit.models import create_model
from toolkit.spec import ARCHS, ModelSpec, Preprocess

from conftest import TINY_PRE, TINY_SPEC, make_checkpoint


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "wide_resnet101_2"])
def test_torchvision_state_dict_loads_into_identical_model(tmp_path, arch):
    torch.manual_seed(0)
    reference = getattr(tvm, arch)(weights=None, num_classes=5).eval()
    path = tmp_path / f"{arch}.pth"
    torch.save(reference.state_dict(), path)

    model, ckpt = load_model(path)
    assert ckpt.source == "foreign"
    assert ckpt.spec == ModelSpec(arch=arch, num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec("resnet34", 7, head="mlp1024"),
        ModelSpec("resnext50_32x4d", 4, in_chans=1, stem="small"),
        ModelSpec("wide_resnet50_2", 2, stem="small", head="mlp1024"),
        ModelSpec("resnet18", 1000, in_chans=1),
    ],
)
def test_inference_recovers_head_stem_and_channels(spec):
    assert infer_spec(create_model(spec).state_dict()) == spec


@pytest.mark.parametrize("wrap", ["state_dict", "model", "model_state_dict", "module_prefix", "nested"])
def test_wrapped_and_prefixed_state_dicts_load(tmp_path, wrap):
    torch.manual_seed(1)
    ref = tvm.resnet18(num_classes=3).eval()
    sd = ref.state_dict()
    obj = {
        "state_dict": {"state_dict": sd, "epoch": 4},
        "model": {"model": sd, "optimizer": {"lr": 0.1}},
        "model_state_dict": {"model_state_dict": sd},
        "module_prefix": {f"module.{k}": v for k, v in sd.items()},
        "nested": {"model": {"state_dict": {f"module.{k}": v for k, v in sd.items()}}},
    }[wrap]
    torch.save(obj, tmp_path / "x.pth")
    model, ckpt = load_model(tmp_path / "x.pth")
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    assert ckpt.spec.arch == "resnet18" and ckpt.spec.num_classes == 3


def test_rtk_checkpoint_round_trip(tmp_path):
    path = make_checkpoint(tmp_path / "runs" / "a.pth", train={"epoch": 3, "metrics": {"val_acc": 0.91}})
    ckpt = load_checkpoint(path)
    assert ckpt.source == "rtk"
    assert ckpt.spec == TINY_SPEC and ckpt.preprocess == TINY_PRE
    assert ckpt.train["metrics"]["val_acc"] == 0.91
    # The file is plain tensors and containers: the strictest loader reads it.
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "rtk.checkpoint" and raw["spec"]["arch"] == "resnet18"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_save_is_atomic_when_interrupted(tmp_path, monkeypatch):
    path = make_checkpoint(tmp_path / "a.pth")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, create_model(TINY_SPEC), TINY_SPEC, TINY_PRE)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.pth"]


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_files(tmp_path):
    good = make_checkpoint(tmp_path / "good.pth")
    data = good.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pth").write_text("these are not the weights you are looking for\n")
    (tmp_path / "empty.pth").write_bytes(b"")
    torch.save({"conv1.weight": torch.zeros(8, 3, 5, 5), "layer1.0.conv1.weight": torch.zeros(1)}, tmp_path / "unknown.pth")
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "notresnet.pth")
    exploit = _Exploit()
    exploit.marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pth", "wb") as fh:
        pickle.dump({"state_dict": exploit}, fh)
    return tmp_path


@pytest.mark.parametrize(
    "name, message",
    [
        ("truncated.pth", "truncated or damaged"),
        ("text.pth", "not a PyTorch checkpoint"),
        ("empty.pth", "empty"),
        ("unknown.pth", "conv1 of shape"),
        ("notresnet.pth", "not a ResNet/ResNeXt state_dict"),
        ("evil.pth", "refusing to load"),
        ("missing.pth", "does not exist"),
    ],
)
def test_bad_checkpoints_fail_with_one_sentence(tmp_path, cli, name, message):
    _bad_files(tmp_path)
    with pytest.raises(RtkError, match=message):
        load_checkpoint(tmp_path / name)
    result = cli("inspect", tmp_path / name)
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "pwned").exists(), "the pickle's code ran"


def test_unknown_resnet_layout_names_what_was_found(tmp_path):
    sd = tvm.resnet18(num_classes=2).state_dict()
    sd = {k: v for k, v in sd.items() if not k.startswith("layer4.1.")}  # 2,2,2,1 blocks
    torch.save(sd, tmp_path / "odd.pth")
    with pytest.raises(RtkError, match=r"basic blocks \[2, 2, 2, 1\]"):
        load_checkpoint(tmp_path / "odd.pth")


def test_weights_that_do_not_fit_the_spec_fail_clearly(tmp_path):
    sd = tvm.resnet18(num_classes=2).state_dict()
    sd.pop("layer2.0.bn1.running_var")
    torch.save(sd, tmp_path / "holey.pth")
    with pytest.raises(RtkError, match="missing 1 tensor"):
        load_model(tmp_path / "holey.pth")
