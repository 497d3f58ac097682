"""Checkpoints: rtk round trip, foreign torchvision files with inferred specs, and bad files."""

import os
import pickle
import random
import re

import numpy as np
import pytest
import torch
import torchvision.models as tvm

from helpers import TINY_PRE, TINY_SPEC, make_checkpoint
from toolkit.core.checkpoint import infer_spec, load_checkpoint, load_model, save_checkpoint
from toolkit.core.errors import RtkError
from toolkit.core.models import create_model
from toolkit.core.spec import ARCHS, ModelSpec

# One architecture of each family by default (basic, bottleneck, ResNeXt, wide); the deeper
# ones (4 s each on two cores, mostly initialising 45-127 M parameters) run with -m slow.
# The wide ResNets' layout (128 channels per group) is recognised in test_inference_recovers_head_stem_and_channels.
FAMILIES = ("resnet18", "resnet50", "resnext50_32x4d")


@pytest.mark.parametrize("arch", [a if a in FAMILIES else pytest.param(a, marks=pytest.mark.slow) for a in ARCHS])
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
        ModelSpec("resnet18", 4, in_chans=1, stem="deep_tiered", downsample="avg", attention="se", head="dropout-fc"),
        ModelSpec("resnet34", 6, stem="deep", head="mlp256-dropout"),
        ModelSpec("resnet18", 3, stem="small", width=16),
        ModelSpec("resnext50_32x4d", 3, width=32, head="mlp64"),
        ModelSpec("wide_resnet50_2", 2, width=16, stem="deep", downsample="avg", attention="se"),
    ],
)
def test_inference_recovers_head_stem_and_channels(spec):
    assert infer_spec(create_model(spec).state_dict()) == spec


def test_a_narrow_network_is_torchvisions_with_fewer_channels_and_the_same_init_at_width_64():
    from torchvision.models.resnet import BasicBlock

    narrow = create_model(ModelSpec("resnet18", 5, width=16))
    assert [stage[0].conv1.out_channels for stage in (narrow.layer1, narrow.layer2, narrow.layer3, narrow.layer4)] == [16, 32, 64, 128]
    assert isinstance(narrow.layer1[0], BasicBlock) and narrow.fc.in_features == 128
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in tvm.resnet18(num_classes=5).parameters()) / 15
    # At width 64 the network is torchvision's, tensor for tensor, from the same seed.
    torch.manual_seed(3)
    ours = create_model(ModelSpec("resnext50_32x4d", 5)).state_dict()
    torch.manual_seed(3)
    theirs = tvm.resnext50_32x4d(num_classes=5).state_dict()
    assert ours.keys() == theirs.keys() and all(ours[k].shape == theirs[k].shape for k in ours)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if not k.startswith("conv1"))  # conv1 is re-initialised


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
    torch.save({1: torch.zeros(2)}, tmp_path / "intkeys.pth")
    # A stem and a first conv, but no conv2: a layout that names no ResNet.
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3)}, tmp_path / "partial.pth")
    torch.save({"format": "rtk.checkpoint", "version": 1, "spec": TINY_SPEC.to_dict()}, tmp_path / "noweights.pth")
    (tmp_path / "random.pth").write_bytes(random.Random(0).randbytes(4096))
    with open(tmp_path / "array.pth", "wb") as fh:
        np.save(fh, np.zeros((3, 3), dtype=np.float32))
    exploit = _Exploit()
    exploit.marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pth", "wb") as fh:
        pickle.dump({"state_dict": exploit}, fh)
    torch.save({"state_dict": exploit}, tmp_path / "evilzip.pth")  # torch's own zip format around it
    return tmp_path


@pytest.mark.parametrize(
    "name, message",
    [
        ("truncated.pth", "truncated or corrupt"),
        ("text.pth", "not a PyTorch checkpoint"),
        ("empty.pth", "empty"),
        ("unknown.pth", "conv1 of shape"),
        ("notresnet.pth", "not a ResNet/ResNeXt state_dict"),
        ("intkeys.pth", "tensors must be named by strings, but one is keyed 1 (int)"),
        ("partial.pth", "no layer1.0.conv2.weight"),
        ("noweights.pth", "rtk checkpoint without weights"),
        ("random.pth", "not a PyTorch checkpoint"),
        ("array.pth", "not a PyTorch checkpoint (it is a NumPy .npy array)"),
        ("evil.pth", "refusing to load"),
        ("evilzip.pth", "refusing to load"),
        ("missing.pth", "does not exist"),
    ],
)
def test_bad_checkpoints_fail_with_one_sentence(tmp_path, cli, name, message):
    _bad_files(tmp_path)
    with pytest.raises(RtkError, match=re.escape(message)):
        load_checkpoint(tmp_path / name)
    result = cli("inspect", tmp_path / name)
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "pwned").exists(), "the pickle's code ran"


def test_refusal_names_the_global_that_could_run_code(tmp_path):
    _bad_files(tmp_path)
    for name in ("evil.pth", "evilzip.pth"):
        with pytest.raises(RtkError, match=r"references (posix|nt)\.system"):
            load_checkpoint(tmp_path / name)


def test_plain_pickle_without_code_is_not_called_dangerous(tmp_path):
    with open(tmp_path / "plain.pth", "wb") as fh:
        pickle.dump({"weights": [1.0, 2.0]}, fh, protocol=4)
    with pytest.raises(RtkError, match="plain Python pickle, not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "plain.pth")


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


def _misfit(path):
    """A resnet18 state_dict whose layer2.0.conv1 is 5×5 instead of 3×3 (inference still says resnet18)."""
    sd = tvm.resnet18(num_classes=2).state_dict()
    sd["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    torch.save(sd, path)
    return path


def test_wrong_tensor_shape_names_the_tensor_and_both_shapes(tmp_path, cli):
    path = _misfit(tmp_path / "misfit.pth")
    message = "layer2.0.conv1.weight is (128, 64, 5, 5) in the checkpoint but resnet18 needs (128, 64, 3, 3)"
    ckpt = load_checkpoint(path)
    for build in (ckpt.build_model, ckpt.check_fit, lambda: load_model(path)):
        with pytest.raises(RtkError, match=re.escape(f"does not fit its architecture resnet18: {message}")):
            build()
    result = cli("inspect", path)  # inspect checks the weights too: what it describes, the others load
    assert result.exit_code == 1 and message in result.stderr
    assert "Traceback" not in result.output + result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_state_dict_without_num_batches_tracked_loads(tmp_path):
    # Files saved by PyTorch before 0.4.1 lack it; BatchNorm fills it in on loading.
    ref = tvm.resnet18(num_classes=3).eval()
    torch.save({k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}, tmp_path / "old.pth")
    model, _ = load_model(tmp_path / "old.pth")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_classic_imagenet_example_name_is_a_checkpoint(tmp_path, cli):
    torch.save(tvm.resnet18(num_classes=4).state_dict(), tmp_path / "model_best.pth.tar")
    result = cli("inspect", tmp_path / "model_best.pth.tar", "--json")
    assert result.exit_code == 0, result.output
    assert '"num_classes": 4' in result.output
