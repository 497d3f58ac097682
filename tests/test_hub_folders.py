"""Hugging Face Hub model folders, written by timm's ``save_for_hf`` and transformers' ``save_pretrained``:
accepted wherever a checkpoint is, exported, compared with the producing library's forward pass, and
their preprocessing (config.json, preprocessor_config.json) carried into every artefact and
compared with the library's own image pipeline on a real image."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from foreign import export_and_check, forward, inputs, onnx_logits, settle_batchnorm
from toolkit.core.artefacts import artefact_kind
from toolkit.core.checkpoint import load_checkpoint, load_model
from toolkit.core.errors import RtkError, install_hint
from toolkit.core.spec import ModelSpec
from toolkit.core.transforms import image_to_array

timm = pytest.importorskip("timm", reason=f"timm writes the folders under test ({install_hint('dev')})")
transformers = pytest.importorskip("transformers", reason=f"transformers writes the folders under test ({install_hint('dev')})")

#: What the issue's user saw beside timm's weights: 256 px, bicubic, mean/std 0.5, no crop border.
TIMM_DATA = {"input_size": (3, 64, 64), "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "crop_pct": 1.0}


def _photo(height: int = 300, width: int = 400) -> Image.Image:
    """A real RGB image with structure (gradients) and noise, as a photo has."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 255 / (height + width)], -1)
    return Image.fromarray(np.clip(pixels + rng.normal(0, 20, pixels.shape), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def timm_folder(tmp_path_factory):
    """timm's save_for_hf: model.safetensors + pytorch_model.bin + config.json with pretrained_cfg and label names."""
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model = settle_batchnorm(timm.create_model("resnet18d", pretrained=False, num_classes=3))
    folder = tmp_path_factory.mktemp("timm") / "resnet18d.rtk_test"
    save_for_hf(model, str(folder), model_config={"label_names": ["cat", "dog", "bird"]}, data_config=TIMM_DATA, safe_serialization="both")
    return folder, model


def _transformers_resnet(folder, layer_type="basic", hidden=(16, 32, 64, 128), depths=(2, 2, 2, 2), embedding=16, **config):
    """transformers' ResNetForImageClassification with random weights, saved with save_pretrained."""
    torch.manual_seed(1)
    labels = {0: "tench", 1: "crane", 2: "crane"}  # ImageNet has two classes named crane
    cfg = transformers.ResNetConfig(
        embedding_size=embedding, hidden_sizes=list(hidden), depths=list(depths), layer_type=layer_type,
        num_labels=3, id2label=labels, label2id={}, **config,
    )
    model = transformers.ResNetForImageClassification(cfg).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as training leaves them
        model.train()
        model(torch.randn(4, 3, 32, 32))
    model.eval().save_pretrained(str(folder))
    return model


@pytest.fixture(scope="module")
def transformers_folder(tmp_path_factory):
    """save_pretrained of a narrow microsoft/resnet-18 layout, with a ConvNeXt image processor (as microsoft/resnet-* ships)."""
    folder = tmp_path_factory.mktemp("transformers") / "resnet-18"
    model = _transformers_resnet(folder)
    transformers.ConvNextImageProcessorPil(
        size={"shortest_edge": 64}, crop_pct=0.875, resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(str(folder))
    return folder, model


# --- timm ------------------------------------------------------------------------------------------


def test_timm_hub_folder_is_a_checkpoint_everywhere_with_its_preprocessing(timm_folder, cli, tmp_path):
    folder, model = timm_folder
    assert artefact_kind(folder) == "checkpoint"
    report = json.loads(cli("inspect", folder, "--json").output)
    assert report["arch"] == "resnet18d" and report["spec"]["class_names"] == ["cat", "dog", "bird"]
    assert report["container"] == "Hugging Face Hub folder (timm: model.safetensors, config.json)"
    pre, sources = report["preprocess"], report["preprocess_sources"]
    assert pre["input_size"] == [64, 64] and pre["resize"] == 64 and pre["crop"] is True
    assert pre["interpolation"] == "bicubic" and pre["mean"] == [0.5] * 3 and pre["std"] == [0.5] * 3
    assert sources["input_size"] == "config.json pretrained_cfg.input_size"
    assert sources["resize"] == "config.json pretrained_cfg.crop_pct 1"
    assert sources["interpolation"] == "config.json pretrained_cfg.interpolation"
    assert sources["class_names"] == "config.json label_names"

    onnx_path = export_and_check(cli, folder)
    assert onnx_path == folder.with_name("resnet18d.rtk_test.onnx"), "the ONNX goes beside the folder, named after it"
    x = inputs(64)
    np.testing.assert_allclose(onnx_logits(onnx_path, x), forward(model, x), rtol=1e-4, atol=1e-5)
    # The preprocessing and labels travel with the ONNX file, and say where they came from.
    onnx_report = json.loads(cli("inspect", onnx_path, "--json").output)
    assert onnx_report["preprocess"] == pre and onnx_report["spec"]["class_names"] == ["cat", "dog", "bird"]
    assert onnx_report["export"]["preprocess_sources"]["mean"] == "config.json pretrained_cfg.mean"

    Image.new("RGB", (80, 60), (200, 30, 30)).save(tmp_path / "a.png")
    result = cli("predict", tmp_path / "a.png", "--model", folder, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["predictions"][0]["top1"] in ("cat", "dog", "bird")


def test_timm_preprocessing_is_timms_own_eval_transform(timm_folder, tmp_path):
    from timm.data import create_transform, resolve_data_config
    from timm.models import save_for_hf

    folder, model = timm_folder
    photo = _photo()
    for data_config in (TIMM_DATA, {"input_size": (3, 96, 96), "crop_pct": 0.9, "interpolation": "bilinear"}):
        target = tmp_path / f"m{data_config['input_size'][1]}"
        save_for_hf(model, str(target), data_config=data_config, safe_serialization=True)
        pretrained_cfg = json.loads((target / "config.json").read_text())["pretrained_cfg"]
        theirs = create_transform(**resolve_data_config(pretrained_cfg=pretrained_cfg), is_training=False)(photo).numpy()
        ours = image_to_array(photo, load_checkpoint(target).preprocess)
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_a_timm_folder_of_a_network_rtk_does_not_build_says_what_its_config_names(tmp_path):
    from timm.models import save_for_hf

    save_for_hf(timm.create_model("resnet26t", pretrained=False, num_classes=2), str(tmp_path / "r26"), safe_serialization=True)
    with pytest.raises(RtkError, match=r"unknown ResNet layout: bottleneck blocks \[2, 2, 2, 2\].*; its r26/config.json names resnet26t"):
        load_checkpoint(tmp_path / "r26")


def test_timm_folder_with_pickled_weights_only_reads_them_weights_only(timm_folder, tmp_path):
    folder, model = timm_folder
    bin_only = tmp_path / "bin-only"
    bin_only.mkdir()
    shutil.copy(folder / "config.json", bin_only)
    shutil.copy(folder / "pytorch_model.bin", bin_only)
    loaded, ckpt = load_model(bin_only)
    assert ckpt.train["container"] == "Hugging Face Hub folder (timm: pytorch_model.bin, config.json)"
    x = inputs(32)
    np.testing.assert_allclose(forward(loaded, x), forward(model, x), rtol=1e-5, atol=1e-6)


def test_a_changed_file_in_the_folder_changes_its_digest(timm_folder, tmp_path):
    # The digest is what an exported ONNX records of its checkpoint: a new one re-exports it.
    from toolkit.core.artefacts import sha256_file

    folder = tmp_path / "copy"
    shutil.copytree(timm_folder[0], folder)
    before = sha256_file(folder)
    assert sha256_file(folder) == before
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"]["interpolation"] = "bilinear"
    (folder / "config.json").write_text(json.dumps(config))
    after = sha256_file(folder)
    assert after != before
    (folder / "preprocessor_config.json").write_text("{}")
    assert sha256_file(folder) != after


# --- transformers ---------------------------------------------------------------------------------


def test_transformers_resnet_is_read_and_matches_transformers(transformers_folder, cli):
    folder, model = transformers_folder
    report = json.loads(cli("inspect", folder, "--json").output)
    assert report["arch"] == "resnet18-w16" and report["num_classes"] == 3
    assert report["weights"] == "raw (the top level, in transformers' ResNet names, read as torchvision's)"
    assert report["spec"]["class_names"] == ["tench", "crane (1)", "crane (2)"]
    assert report["preprocess_sources"]["class_names"] == "config.json id2label (2 repeated names numbered by class)"
    assert report["train"]["hub_config"]["architectures"] == ["ResNetForImageClassification"]

    onnx_path = export_and_check(cli, folder)
    x = inputs(64)
    np.testing.assert_allclose(onnx_logits(onnx_path, x), forward(model, x), rtol=1e-4, atol=1e-5)


def test_transformers_preprocessing_is_the_image_processors_own(transformers_folder):
    folder, _ = transformers_folder
    ckpt = load_checkpoint(folder)
    pre = ckpt.preprocess
    assert (pre.input_size, pre.resize, pre.crop, pre.interpolation) == ((64, 64), 73, True, "bicubic")
    assert ckpt.sources["resize"] == "preprocessor_config.json size.shortest_edge / crop_pct 0.875"
    assert ckpt.sources["interpolation"] == "preprocessor_config.json resample 3 (bicubic)"
    processor = transformers.ConvNextImageProcessorPil.from_pretrained(str(folder))
    photo = _photo()
    theirs = processor(photo, return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(image_to_array(photo, pre), theirs, atol=1e-5)


@pytest.mark.parametrize(
    "processor, settings",
    [
        ("ViTImageProcessorPil", dict(size={"height": 48, "width": 40}, resample=2)),
        ("BitImageProcessorPil", dict(size={"shortest_edge": 72}, crop_size={"height": 64, "width": 64}, do_center_crop=True, resample=3)),
        ("ConvNextImageProcessorPil", dict(size={"shortest_edge": 384}, resample=3)),
        ("ViTImageProcessorPil", dict(size={"height": 40, "width": 40}, do_normalize=False)),
        ("ViTImageProcessorPil", dict(size={"height": 40, "width": 40}, rescale_factor=1 / 127.5, image_mean=[1, 1, 1], image_std=[1, 1, 1])),
    ],
    ids=["resize-to-size", "shortest-edge-then-crop", "convnext-from-384-warps", "no-normalize", "rescale-to-minus-1-1"],
)
def test_other_image_processors_prepare_the_same_pixels(transformers_folder, tmp_path, processor, settings):
    folder = tmp_path / "m"
    folder.mkdir()
    for name in ("model.safetensors", "config.json"):
        shutil.copy(transformers_folder[0] / name, folder)
    image_processor = getattr(transformers, processor)(**settings)
    image_processor.save_pretrained(str(folder))
    photo = _photo()
    theirs = image_processor(photo, return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(image_to_array(photo, load_checkpoint(folder).preprocess), theirs, atol=1e-5)


@pytest.mark.parametrize(
    "config, spec",
    [
        (dict(layer_type="bottleneck", hidden=(64, 128, 256, 512), depths=(3, 4, 6, 3)), ModelSpec("resnet50", 3, width=16)),
        pytest.param(dict(layer_type="basic", hidden=(64, 128, 256, 512), depths=(3, 4, 6, 3), embedding=64), ModelSpec("resnet34", 3), marks=pytest.mark.slow),
    ],
    ids=["resnet-50-w16", "resnet-34"],
)
def test_transformers_layouts_match_transformers(tmp_path, config, spec):
    model = _transformers_resnet(tmp_path / "m", **config)
    (tmp_path / "m" / "config.json").unlink()  # the weights alone say what the network is
    loaded, ckpt = load_model(tmp_path / "m")
    assert ckpt.spec == spec
    x = inputs(32)
    np.testing.assert_allclose(forward(loaded, x), forward(model, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "config, message",
    [
        (
            dict(hidden=(10, 20, 30, 40), depths=(1, 1, 2, 1), embedding=10),
            "is a Hugging Face transformers ResNet that rtk does not build: layer_type basic, "
            "depths [1, 1, 2, 1], hidden_sizes [10, 20, 30, 40], embedding_size 10, which no published ResNet has",
        ),
        (
            dict(layer_type="bottleneck", hidden=(64, 128, 256, 512), depths=(3, 4, 6, 3), downsample_in_bottleneck=True),
            "is a Hugging Face transformers ResNet with downsample_in_bottleneck",
        ),
    ],
    ids=["tiny-random", "stride-in-1x1"],
)
def test_transformers_resnets_rtk_does_not_build_are_named(tmp_path, cli, config, message):
    _transformers_resnet(tmp_path / "m", **config)
    for command in (("inspect",), ("export", "--exporter", "torchscript"), ("parity", "-e", "ort")):
        result = cli(command[0], tmp_path / "m", *command[1:])
        assert result.exit_code == 1 and message in result.stderr, (command, result.stderr)


def test_a_transformers_backbone_without_its_head_is_named(tmp_path):
    config = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[2, 2, 2, 2], layer_type="basic")
    transformers.ResNetModel(config).save_pretrained(str(tmp_path / "backbone"))
    with pytest.raises(RtkError, match=r"is a Hugging Face transformers ResNet without its classification head \(no classifier.1 weights"):
        load_checkpoint(tmp_path / "backbone")


# --- folders that are not models -----------------------------------------------------------------


def test_a_folder_without_weights_gets_one_sentence_from_every_command(tmp_path, cli):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "config.json").write_text("{}")
    expected = f"{tmp_path / 'notes'} is a folder, not a model: a Hugging Face Hub model folder holds model.safetensors"
    for command in (("inspect",), ("export",), ("parity", "-e", "ort"), ("eval", "--data", "digits"), ("bench", "-e", "eager")):
        result = cli(command[0], tmp_path / "notes", *command[1:])
        assert result.exit_code == 1, (command, result.output)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and expected in errors[0], (command, result.stderr)
    with pytest.raises(RtkError, match="is a folder, not a model"):
        load_checkpoint(tmp_path / "notes")


def test_a_sharded_or_damaged_folder_is_named(tmp_path, timm_folder):
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    with pytest.raises(RtkError, match=r"weights are split into shards \(model.safetensors.index.json\)"):
        load_checkpoint(sharded)
    broken = tmp_path / "broken"
    shutil.copytree(timm_folder[0], broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(RtkError, match=r"config.json is not valid JSON"):
        load_checkpoint(broken)


def test_train_fine_tunes_from_a_hub_folder(transformers_folder, cli, tmp_path):
    folder, _ = transformers_folder
    result = cli(
        "train", "--data", "digits", "--pretrained", folder, "--epochs", "1", "--max-samples", "32",
        "--batch-size", "16", "--out", tmp_path / "run",
    )
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "run" / "best.pth").spec.name == "resnet18-w16"
