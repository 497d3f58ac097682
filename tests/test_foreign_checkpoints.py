"""The checkpoints users really have, written by the libraries that write them: timm's train.py
saver (argparse args, EMA weights, ResNet-D), safetensors (SE-ResNet), a real Lightning
``ModelCheckpoint`` (a ``net.`` prefix and the tutorials' Dropout head) and a whole pickled model.
Each is inspected, exported, parity-checked, and the export compared with the producing library's
own forward pass."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from PIL import Image

from exporters.onnx import ensure_onnx
from foreign import export_and_check as _export_and_check
from foreign import forward as _forward
from foreign import inputs as _inputs
from foreign import onnx_logits as _onnx_logits
from foreign import settle_batchnorm as _settle_batchnorm
from toolkit.core.checkpoint import CheckpointOptions, load_checkpoint, load_model
from toolkit.core.errors import RtkError, install_hint
from toolkit.core.spec import ModelSpec

timm = pytest.importorskip("timm", reason=f"timm writes the checkpoints under test ({install_hint('dev')})")
safetensors_torch = pytest.importorskip("safetensors.torch")

SIZE = 32  # the timm checkpoint's args say so; the others run at ImageNet's default 224


# --- the files, each written once by its own library ----------------------------------------------


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory):
    """timm's CheckpointSaver output for a resnet18d trained with --model-ema, and the two models."""
    from timm.utils import CheckpointSaver, ModelEmaV3

    out = tmp_path_factory.mktemp("timm")
    torch.manual_seed(0)
    model = _settle_batchnorm(timm.create_model("resnet18d", pretrained=False, num_classes=5))
    ema = ModelEmaV3(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ema.update(model)
    args = argparse.Namespace(
        model="resnet18d", num_classes=5, img_size=SIZE, input_size=None, crop_pct=1.0, mean=None, std=None,
        interpolation="bilinear", epochs=1, lr=0.1, model_ema=True, model_ema_decay=0.5,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    saver = CheckpointSaver(model, optimizer, args=args, model_ema=ema, checkpoint_dir=str(out), recovery_dir=str(out), decreasing=False)
    saver.save_checkpoint(epoch=0, metric=61.5)
    return out / "model_best.pth.tar", model.eval(), ema.module.eval()


@pytest.fixture(scope="module")
def lightning_run(tmp_path_factory):
    """A real Lightning ModelCheckpoint of a module that keeps its ResNet as ``self.net``, with the
    transfer-learning tutorials' head: Linear, ReLU, Dropout, Linear (keys fc.0 and fc.3)."""
    L = pytest.importorskip("lightning", reason=f"Lightning writes the checkpoint under test ({install_hint('dev')})")
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Classifier(L.LightningModule):
        def __init__(self, num_classes: int = 3, lr: float = 0.01):
            super().__init__()
            self.save_hyperparameters()
            self.net = tvm.resnet18()
            self.net.fc = torch.nn.Sequential(
                torch.nn.Linear(512, 64), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(64, num_classes)
            )

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    out = tmp_path_factory.mktemp("lightning")
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(8, 3, SIZE, SIZE), torch.randint(0, 3, (8,)))
    checkpoints = ModelCheckpoint(dirpath=out, monitor="train_loss", filename="best")
    trainer = L.Trainer(
        max_steps=2, callbacks=[checkpoints], logger=False, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu", num_sanity_val_steps=0,
    )
    module = Classifier()
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    return out / "best.ckpt", module.eval()


@pytest.fixture(scope="module")
def safetensors_file(tmp_path_factory):
    """timm's seresnet18 weights as Hugging Face and timm distribute them: a .safetensors file."""
    out = tmp_path_factory.mktemp("safetensors")
    torch.manual_seed(1)
    model = _settle_batchnorm(timm.create_model("seresnet18", pretrained=False, num_classes=4))
    path = out / "seresnet18.safetensors"
    safetensors_torch.save_file(model.state_dict(), str(path), metadata={"format": "pt", "arch": "seresnet18"})
    return path, model


# --- timm's train.py checkpoints -------------------------------------------------------------------


def test_timm_training_checkpoint_loads_weights_only_with_its_record(timm_run, cli):
    path, _, _ = timm_run
    result = cli("inspect", path, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["arch"] == "resnet18d" and report["num_classes"] == 5
    assert report["spec"]["stem"] == "deep" and report["spec"]["downsample"] == "avg"
    assert report["weights"].startswith("ema (['state_dict_ema']; raw also present")
    assert report["train"]["epoch"] == 0 and report["train"]["metric"] == 61.5 and report["train"]["arch"] == "resnet18d"
    assert report["train"]["args"]["model_ema"] is True
    # timm's arguments give the input pipeline: 32 px, crop 1.0, bilinear.
    assert report["preprocess"]["input_size"] == [SIZE, SIZE] and report["preprocess"]["resize"] == SIZE
    raw = json.loads(cli("inspect", path, "--json", "--weights", "raw").output)
    assert raw["weights"].startswith("raw (['state_dict']; ema also present")


def test_timm_checkpoint_exports_its_ema_weights_by_default_and_raw_on_request(timm_run, cli, monkeypatch):
    path, raw_model, ema_model = timm_run
    x = _inputs(SIZE)
    onnx_path = _export_and_check(cli, path)
    np.testing.assert_allclose(_onnx_logits(onnx_path, x), _forward(ema_model, x), rtol=1e-4, atol=1e-5)
    assert not np.allclose(_forward(ema_model, x), _forward(raw_model, x), atol=1e-3), "EMA and raw weights must differ"
    raw, _ = load_model(path, options=CheckpointOptions(weights="raw"))
    np.testing.assert_allclose(_forward(raw, x), _forward(raw_model, x), rtol=1e-5, atol=1e-6)

    # The ONNX records the weights it holds: asking for the other set re-exports, the same set does not.
    exports = []
    monkeypatch.setattr("exporters.onnx.export_onnx", lambda *a, **kw: exports.append(kw["options"]) or [onnx_path])
    assert ensure_onnx(path, "fp32") == onnx_path and not exports
    ensure_onnx(path, "fp32", CheckpointOptions(weights="raw"))
    assert [o.checkpoint_options.weights for o in exports] == ["raw"]


# --- safetensors ---------------------------------------------------------------------------------


def test_safetensors_file_is_read_by_every_command(safetensors_file, cli, tmp_path):
    path, model = safetensors_file
    report = json.loads(cli("inspect", path, "--json").output)
    assert report["arch"] == "seresnet18" and report["spec"]["attention"] == "se"
    assert report["train"]["metadata"] == {"format": "pt", "arch": "seresnet18"}
    assert report["weights"] == "raw (the top level)"

    onnx_path = _export_and_check(cli, path)
    x = _inputs(224)
    np.testing.assert_allclose(_onnx_logits(onnx_path, x), _forward(model, x), rtol=1e-4, atol=1e-5)

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(images / "a.png")
    result = cli("predict", images, "--model", path, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["classified"] == 1


def test_safetensors_weights_are_found_by_their_header_whatever_the_suffix(safetensors_file, tmp_path):
    path, _ = safetensors_file
    renamed = tmp_path / "pytorch_model.bin"
    renamed.write_bytes(path.read_bytes())
    assert load_checkpoint(renamed).spec.name == "seresnet18"


def test_damaged_safetensors_fails_in_one_sentence(safetensors_file, tmp_path, cli):
    path, _ = safetensors_file
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(path.read_bytes()[:-100])
    result = cli("inspect", broken)
    assert result.exit_code == 1
    assert "is not a readable safetensors file" in result.stderr and len(result.stderr.strip().splitlines()) == 1


# --- Lightning -----------------------------------------------------------------------------------


def test_lightning_checkpoint_with_a_net_prefix_and_the_tutorial_head(lightning_run, cli):
    path, module = lightning_run
    report = json.loads(cli("inspect", path, "--json").output)
    assert report["arch"] == "resnet18" and report["spec"]["head"] == "mlp64-dropout" and report["num_classes"] == 3
    assert report["weights"] == "raw (['state_dict'] under net.)"
    train = report["train"]
    assert train["epoch"] == 0 and train["global_step"] == 2 and "pytorch-lightning_version" in train
    assert set(train["best"]) == {"train_loss"} and isinstance(train["best"]["train_loss"], float)
    assert train["hyper_parameters"] == {"num_classes": 3, "lr": 0.01}

    onnx_path = _export_and_check(cli, path)
    x = _inputs(224)
    np.testing.assert_allclose(_onnx_logits(onnx_path, x), _forward(module, x), rtol=1e-4, atol=1e-5)


def test_onnx_inspect_counts_external_weight_files(lightning_run, cli, tmp_path):
    import onnx

    path, _ = lightning_run
    proto = onnx.load(str(ensure_onnx(path)))
    external = tmp_path / "big.onnx"
    onnx.save_model(proto, str(external), save_as_external_data=True, location="big.onnx.data", size_threshold=0)
    report = json.loads(cli("inspect", external, "--json").output)
    assert report["external_data"] == ["big.onnx.data"]
    assert report["size_bytes"] == external.stat().st_size + (tmp_path / "big.onnx.data").stat().st_size


def test_foreign_onnx_in_predict_runs_and_says_what_it_assumed(lightning_run, cli, tmp_path):
    import onnx

    path, _ = lightning_run
    proto = onnx.load(str(ensure_onnx(path)))
    del proto.metadata_props[:]
    onnx.save_model(proto, str(tmp_path / "foreign.onnx"))
    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    result = cli("predict", tmp_path / "a.png", "--model", tmp_path / "foreign.onnx", "--format", "json")
    assert result.exit_code == 0, result.output
    assert "carries no rtk metadata" in result.stderr and "ImageNet's evaluation transform" in result.stderr
    assert "cannot know its architecture" in result.stderr
    [row] = json.loads(result.stdout)["predictions"]
    assert row["top1"] == str(row["top1_index"])  # classes named by index: the graph has no names


# --- whole pickled models ------------------------------------------------------------------------


def test_whole_pickled_model_is_refused_with_advice_and_loads_when_trusted(tmp_path, cli):
    torch.manual_seed(2)
    model = _settle_batchnorm(tvm.resnet18(num_classes=6))
    path = tmp_path / "model.pt"
    torch.save(model, path)

    result = cli("inspect", path)
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "whole pickled model" in result.stderr and 'torch.save(model.state_dict(), "model.pth")' in result.stderr
    assert "--trust-pickle" in result.stderr

    result = cli("inspect", path, "--trust-pickle", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["arch"] == "resnet18"
    assert "running the code it pickles" in result.stderr
    loaded, _ = load_model(path, options=CheckpointOptions(trust_pickle=True))
    x = _inputs(SIZE)
    np.testing.assert_allclose(_forward(loaded, x), _forward(model, x), rtol=1e-5, atol=1e-6)


def test_trust_in_a_pickle_carries_over_to_the_sibling_export_only_for_the_same_file(tmp_path, monkeypatch):
    from exporters import onnx as onnx_exporter
    from toolkit.core.artefacts import sha256_file

    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"the trusted file")
    record = {"weights": "raw", "checkpoint_pickle_trusted": True, "checkpoint_sha256": sha256_file(checkpoint)}
    monkeypatch.setattr(onnx_exporter, "_export_record", lambda path: record)
    assert onnx_exporter.checkpoint_options_of(tmp_path / "model.onnx", checkpoint) == CheckpointOptions("raw", True)
    checkpoint.write_bytes(b"another file under the same name")
    assert onnx_exporter.checkpoint_options_of(tmp_path / "model.onnx", checkpoint) == CheckpointOptions("raw", False)


# --- where the weights sit -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(4)
    return _settle_batchnorm(tvm.resnet18(num_classes=3))



@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {f"backbone.{k}": v for k, v in sd.items()},
        lambda sd: {"state_dict": {f"model.net.{k}": v for k, v in sd.items()}, "epoch": 3},
        lambda sd: {f"module._orig_mod.{k}": v for k, v in sd.items()},
        lambda sd: {f"_orig_mod.module.{k}": v for k, v in sd.items()},
        lambda sd: {"checkpoint": {"model": {f"encoder.{k}": v for k, v in sd.items()}}},
    ],
    ids=["backbone", "lightning-nested", "ddp-compile", "compile-ddp", "deep-wrapper"],
)
def test_the_one_prefix_of_a_resnet_is_found_wherever_it_is(tmp_path, wrap, resnet18):
    reference = resnet18
    torch.save(wrap(reference.state_dict()), tmp_path / "x.pth")
    model, ckpt = load_model(tmp_path / "x.pth")
    x = _inputs(SIZE)
    np.testing.assert_array_equal(_forward(model, x), _forward(reference, x))
    assert ckpt.spec == ModelSpec("resnet18", 3)


def test_imagenet_example_checkpoint_shows_its_record(tmp_path, cli, resnet18):
    # PyTorch's examples/imagenet/main.py: save_checkpoint({...}, is_best) -> model_best.pth.tar
    state = {f"module.{k}": v for k, v in resnet18.state_dict().items()}
    torch.save(
        {"epoch": 90, "arch": "resnet18", "state_dict": state, "best_acc1": torch.tensor(69.76), "optimizer": {"state": {}, "param_groups": []}},
        tmp_path / "model_best.pth.tar",
    )
    report = json.loads(cli("inspect", tmp_path / "model_best.pth.tar", "--json").output)
    assert report["train"] == {"arch": "resnet18", "epoch": 90, "best_acc1": pytest.approx(69.76)}
    assert report["weights"] == "raw (['state_dict'] under module.)"


def test_two_different_resnets_are_named_not_guessed(tmp_path, resnet18):
    a = resnet18.state_dict()
    b = {k: v + 1 if v.is_floating_point() else v for k, v in a.items()}
    torch.save({**{f"teacher.{k}": v for k, v in a.items()}, **{f"student.{k}": v for k, v in b.items()}}, tmp_path / "kd.pth")
    with pytest.raises(RtkError, match=re.escape("holds 2 different ResNets (the top level under teacher., the top level under student.)")):
        load_checkpoint(tmp_path / "kd.pth")


def test_ema_prefix_inside_one_state_dict_and_raw_weights_on_request(tmp_path, resnet18):
    raw = resnet18.state_dict()
    ema = {k: v * 0.5 if v.is_floating_point() else v for k, v in raw.items()}
    torch.save({"state_dict": {**{f"model.{k}": v for k, v in raw.items()}, **{f"ema.module.{k}": v for k, v in ema.items()}}}, tmp_path / "l.ckpt")
    assert load_checkpoint(tmp_path / "l.ckpt").weights_location == "['state_dict'] under ema.module."
    assert load_checkpoint(tmp_path / "l.ckpt", options=CheckpointOptions(weights="raw")).weights_location == "['state_dict'] under model."
    torch.save({"model_ema": ema}, tmp_path / "only-ema.pth")
    with pytest.raises(RtkError, match="holds only EMA weights .* use --weights ema"):
        load_checkpoint(tmp_path / "only-ema.pth", options=CheckpointOptions(weights="raw"))


def test_a_head_kept_outside_the_backbone_is_named(tmp_path, resnet18):
    backbone = {f"backbone.{k}": v for k, v in resnet18.state_dict().items() if not k.startswith("fc.")}
    torch.save({**backbone, "classifier.weight": torch.zeros(4, 512), "classifier.bias": torch.zeros(4)}, tmp_path / "split.pth")
    with pytest.raises(RtkError, match=r"no classification head .* beside the ResNet at the top level under backbone\. the file holds classifier\.weight"):
        load_checkpoint(tmp_path / "split.pth")


def test_dropout_before_the_only_linear_is_a_head_too(tmp_path):
    model = tvm.resnet18(num_classes=3)
    model.fc = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(512, 3))
    _settle_batchnorm(model)
    torch.save(model.state_dict(), tmp_path / "m.pth")
    loaded, ckpt = load_model(tmp_path / "m.pth")
    assert ckpt.spec.head == "dropout-fc"
    x = _inputs(SIZE)
    np.testing.assert_allclose(_forward(loaded, x), _forward(model, x), rtol=1e-5, atol=1e-6)


# --- ResNet-D and SE-ResNet: built in the zoo, identical to timm's -------------------------------


@pytest.mark.parametrize(
    "name, spec",
    [
        ("resnet18d", dict(arch="resnet18", stem="deep", downsample="avg")),
        ("seresnet18", dict(arch="resnet18", attention="se")),
        pytest.param("resnet34d", dict(arch="resnet34", stem="deep", downsample="avg"), marks=pytest.mark.slow),
        pytest.param("resnet50d", dict(arch="resnet50", stem="deep", downsample="avg"), marks=pytest.mark.slow),
        pytest.param("resnet50c", dict(arch="resnet50", stem="deep"), marks=pytest.mark.slow),
        pytest.param("seresnet50", dict(arch="resnet50", attention="se"), marks=pytest.mark.slow),
        pytest.param("seresnext50_32x4d", dict(arch="resnext50_32x4d", attention="se"), marks=pytest.mark.slow),
    ],
)
def test_timm_resnet_variants_are_recognised_and_match_timm(tmp_path, name, spec):
    torch.manual_seed(3)
    reference = _settle_batchnorm(timm.create_model(name, pretrained=False, num_classes=7))
    torch.save(reference.state_dict(), tmp_path / f"{name}.pth")
    model, ckpt = load_model(tmp_path / f"{name}.pth")
    assert ckpt.spec == ModelSpec(num_classes=7, **spec) and ckpt.spec.name == name
    x = _inputs(SIZE)
    np.testing.assert_array_equal(_forward(model, x), _forward(reference, x))


def _resnet18d_state():
    return timm.create_model("resnet18d", pretrained=False, num_classes=2).state_dict()


@pytest.mark.parametrize(
    "state, message",
    [
        (lambda: timm.create_model("legacy_seresnet18", pretrained=False).state_dict(), "legacy SENet/SE-ResNet"),
        (lambda: {**tvm.resnet18().state_dict(), "layer1.0.se.conv.weight": torch.zeros(1, 1, 3)}, "block attention ECA (timm's ecaresnet*)"),
        (
            lambda: {**_resnet18d_state(), "conv1.0.weight": torch.zeros(64, 3, 3, 3), "conv1.6.weight": torch.zeros(128, 64, 3, 3)},
            "deep stem of (64, 32, 128) filters",
        ),
        (lambda: timm.create_model("resnet26t", pretrained=False).state_dict(), "unknown ResNet layout: bottleneck blocks [2, 2, 2, 2]"),
        (lambda: {"patch_embed.proj.weight": torch.zeros(8, 3, 16, 16), "blocks.0.attn.qkv.weight": torch.zeros(24, 8)}, "a Vision Transformer"),
        (lambda: tvm.mobilenet_v3_small().state_dict(), "a VGG/DenseNet/MobileNet/EfficientNet-style network"),
    ],
    ids=["legacy-senet", "eca", "wide-deep-stem", "resnet26t", "vit", "mobilenet"],
)
def test_variants_rtk_does_not_build_are_named(tmp_path, cli, state, message):
    torch.save(state(), tmp_path / "x.pth")
    result = cli("inspect", tmp_path / "x.pth")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr
