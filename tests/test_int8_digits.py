"""int8 on a model trained on the real digits: accuracy kept on every int8 engine, calibration on
unlabelled images, accuracy-aware mixed precision (--max-drop), and where precision is lost
(rtk parity --layers)."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest

from toolkit.core.errors import RtkError, install_hint

needs_openvino = pytest.mark.skipif(not importlib.util.find_spec("openvino"), reason=f"openvino is not installed ({install_hint('openvino')})")


def test_the_plain_export_keeps_accuracy_on_both_layouts(digits_int8):
    """What the export's own check measured on the held-out digits: within a point, and the decisions kept."""
    for kind in ("int8", "int8.u8"):
        m = digits_int8["checked"][kind]
        assert m.samples == 256 and m.accuracy is not None
        assert m.reference_accuracy - m.accuracy <= 0.01 and m.top1_agreement >= 0.99


def test_every_int8_engine_keeps_accuracy_within_a_point(digits_int8, cli, tmp_path):
    """ort-int8 and ov-int8 (the uint8 layout), and ONNX Runtime on the symmetric file, which its
    CUDA and TensorRT providers and TensorRT itself run, on all 360 test digits."""
    from engines.ort import OrtEngine
    from toolkit.core.checkpoint import load_checkpoint
    from toolkit.core.compare import compare
    from toolkit.core.image_sets import judged_set, prepare_images

    names = ["ort-int8"] + (["ov-int8"] if importlib.util.find_spec("openvino") else [])
    report = tmp_path / "parity.json"
    result = cli("parity", digits_int8["ckpt"], "-e", ",".join(["eager", *names]), "--data", "digits", "--json", report)
    assert result.exit_code == 0, result.output
    engines = {e["engine"]: e for e in json.loads(report.read_text())["engines"]}
    assert all(engines[name]["artefact"] == str(digits_int8["u8"]) for name in names)
    for name in names:
        data = engines[name]["data"]
        assert data["samples"] == 360 and data["accuracy_delta"] >= -0.01 and data["top1_agreement"] >= 0.99, name
    ckpt = load_checkpoint(digits_int8["ckpt"])
    images = prepare_images(judged_set("digits", 8), ckpt.spec, ckpt.preprocess)
    with OrtEngine(digits_int8["int8"]) as symmetric:
        m = compare(_eager_logits(ckpt, images.images), symmetric(images.images), "int8", labels=images.labels)
    assert m.accuracy - m.reference_accuracy >= -0.01 and m.top1_agreement >= 0.99


def _eager_logits(ckpt, images):
    from engines.eager import EagerEngine

    with EagerEngine(ckpt.build_model(), ckpt.spec, ckpt.preprocess) as eager:
        return eager(images)


def test_an_unlabelled_folder_calibrates_and_judges_without_labels(digits_model, cli, tmp_path):
    """400 real digits without class folders (at two depths): calibrated on 256, judged on the 144
    held out by top-1 agreement and cosine, and both counts printed."""
    from toolkit.core.data import write_digit_images

    written = write_digit_images(tmp_path / "classes", "train", per_class=40)
    flat = tmp_path / "photos"
    (flat / "2024").mkdir(parents=True)
    for i, path in enumerate(written):
        (flat if i % 3 else flat / "2024").joinpath(f"{i:03d}.png").write_bytes(path.read_bytes())
    ckpt = shutil.copy(digits_model, tmp_path / "m.pth")
    result = cli("export", ckpt, "--precision", "int8", "--calib", flat)
    assert result.exit_code == 0, result.output
    assert f"calibrated on 256 images of {flat} (folder)" in result.stderr
    assert "144 images, none of them calibrated on: by top-1 agreement and cosine, no accuracy (the images are not labelled)" in result.stderr
    assert "warning" not in result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("wrote")]
    assert "no accuracy measured" in result.stdout and "on 144 images" in result.stdout and "top-1 agreement" in result.stdout
    assert (tmp_path / "m.int8.onnx").exists() and (tmp_path / "m.int8.u8.onnx").exists() and lines


def test_few_held_out_images_or_other_classes_are_judged_without_labels_and_warned_about(digits_model, cli, tmp_path):
    """Real images in class folders the model does not know: judged by agreement, without accuracy,
    never refused for lack of labels; its 24 held-out images get the warning that they are too few.
    The same images in folders named after 3 of the model's 10 classes are judged by accuracy too."""
    from toolkit.core.data import write_digit_images

    named = tmp_path / "named"
    write_digit_images(named, "train", classes=(0, 1, 2), per_class=40)
    other = tmp_path / "other"
    shutil.copytree(named, other)
    for digit in "012":
        (other / digit).rename(other / f"c{digit}")
    ckpt = shutil.copy(digits_model, tmp_path / "m.pth")
    result = cli("export", ckpt, "--precision", "int8", "--calib", other)
    assert "no accuracy (the data has classes the model does not know: c0, c1, c2" in result.stderr
    assert "warning: only 24 images judged the int8 files: one image is 4.2 points of top-1 agreement" in result.stderr
    # On 24 images one changed decision is already below 99% agreement: the check may refuse, for that reason only.
    assert result.exit_code == 0 or "top-1 agreement" in result.stderr.splitlines()[-1]
    result = cli("export", ckpt, "--precision", "int8", "--calib", named)
    assert "24 images, none of them calibrated on: by accuracy and top-1 agreement" in result.stderr


def test_max_drop_keeps_the_fewest_layers_in_float_that_meet_it(digits_model, cli, tmp_path):
    """--max-drop 0.1 on the labelled test digits: no net image may be lost, which the int8 files
    calibrated on 4 images miss; the export ranks the layers, keeps some in float, meets the bound
    on both files and says which layers it kept."""
    from exporters.mixed_precision import trials_bound
    from toolkit.usecases.inspect import describe_onnx

    ckpt = shutil.copy(digits_model, tmp_path / "m.pth")
    result = cli("export", ckpt, "--precision", "int8", "--calib", "digits", "--calib-samples", "4", "--max-drop", "0.1")
    assert result.exit_code == 0, result.output
    record = describe_onnx(tmp_path / "m.int8.onnx")["export"]["calibration"]
    search = record["max_drop"]
    assert search["target"] == 0.1 and search["metric"] == "top-1 accuracy points" and search["images"] == 256
    assert search["kept_float"] and record["float_nodes"] == search["kept_float"]
    assert all(drop <= 0.1 for drop in search["drop"].values())
    layers = [s["layer"] for s in search["sensitivities"]]
    assert set(search["kept_float"]) <= set(layers) and len(layers) == 30  # 20 Conv, 8 Add, the pooling and the classifier
    sensitivities = [s["sensitivity"] for s in search["sensitivities"]]
    assert sensitivities == sorted(sensitivities, reverse=True)
    assert search["kept_float"] == layers[: len(search["kept_float"])]  # the most sensitive ones
    assert search["trials"] <= trials_bound(30) == 52  # bounded: ranking, then doubling and bisection
    assert describe_onnx(tmp_path / "m.int8.u8.onnx")["export"]["calibration"]["max_drop"] == search
    assert f"--max-drop 0.1: kept {len(search['kept_float'])} layers in float ({', '.join(search['kept_float'])})" in result.stderr
    # The check then measured the written files against the same bound, on the same images.
    lines = result.stdout.split("wrote ")[1:]
    assert len(lines) == 2 and all("accuracy" in line for line in lines)


def test_max_drop_that_cannot_be_met_fails_in_one_sentence(digits_int8, tmp_path):
    import onnx

    from exporters.int8 import CalibOptions, Int8Quantizer, calibration_images
    from exporters.mixed_precision import Judge, keep_within
    from exporters.onnx import ensure_onnx
    from toolkit.core.checkpoint import load_checkpoint
    from toolkit.core.image_sets import judged_set, prepare_images

    path = shutil.copy(digits_int8["ckpt"], tmp_path / "m.pth")
    ckpt = load_checkpoint(path)
    images = prepare_images(judged_set("digits", 8), ckpt.spec, ckpt.preprocess, limit=64)
    judge = Judge([images.images], _eager_logits(ckpt, images.images))  # unlabelled: disagreement in %
    options = CalibOptions("digits", samples=32)
    with Int8Quantizer(onnx.load(str(ensure_onnx(path))), calibration_images(ckpt, options), options, progress=False) as quantizer:
        with pytest.raises(RtkError) as caught:
            keep_within(quantizer, [], -1.0, judge)  # fewer than no decisions changed: out of reach
    message = str(caught.value)
    assert message.startswith("--max-drop -1 cannot be met: even with every layer but ") and "left in float the int8 files lose" in message
    assert ". " not in message and "\n" not in message


def test_max_drop_needs_the_check_and_int8(cli, digits_model, tmp_path):
    ckpt = shutil.copy(digits_model, tmp_path / "m.pth")
    result = cli("export", ckpt, "--precision", "int8", "--calib", "digits", "--max-drop", "0.5", "--no-check")
    assert result.exit_code == 64 and "--max-drop measures what int8 loses on held-out images, which --no-check skips" in result.stderr
    result = cli("export", ckpt, "--max-drop", "0.5")
    assert result.exit_code == 64 and "--max-drop bounds what the int8 export loses; add --precision int8 --calib DATA" in result.stderr
    result = cli("export", ckpt, "--precision", "int8", "--calib", "digits", "--max-drop", "-2")
    assert result.exit_code == 64 and "--max-drop must be at least 0 and at most 100, got -2.0: points of top-1 accuracy" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pth"]


# --- rtk parity --layers -------------------------------------------------------------------------


def _copied(digits_int8, folder):
    """The shared digits checkpoint and its two int8 files, copied into ``folder`` for a test to write beside."""
    folder.mkdir()
    for key in ("ckpt", "int8", "u8"):
        shutil.copy(digits_int8[key], folder / digits_int8[key].name)
    return folder


def test_layers_writes_a_table_and_a_plot_per_engine(digits_int8, cli, tmp_path):
    import onnx

    folder = _copied(digits_int8, tmp_path / "copy")
    out = tmp_path / "layers"
    result = cli("parity", folder / "m.pth", "-e", "ort-fp16,ort-int8", "--data", "digits", "--layers", out)
    assert result.exit_code == 0, result.output
    assert "ort-int8: " in result.stdout and "tensors compared on digits (test), 32 images" in result.stdout
    for engine in ("ort-fp16", "ort-int8"):
        table = json.loads((out / f"{engine}.layers.json").read_text())
        assert (out / f"{engine}.layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        rows = table["layers"]
        assert table["engine"] == engine and table["compared"] == len(rows) > 20
        fp32_order = [o for n in onnx.load(str(folder / "m.onnx")).graph.node for o in n.output]
        assert [r["tensor"] for r in rows] == [t for t in fp32_order if t in {r["tensor"] for r in rows}]  # graph order
        assert [r["index"] for r in rows] == list(range(len(rows)))
        assert all(0.9 < r["mean_cosine"] <= 1.0 + 1e-9 for r in rows)
    fp16 = json.loads((out / "ort-fp16.layers.json").read_text())
    assert fp16["first_beyond_tolerance"] is None and fp16["tolerance"]["min_cosine"] == 0.999
    int8 = json.loads((out / "ort-int8.layers.json").read_text())
    assert int8["artefact"].endswith("m.int8.u8.onnx") and max(r["rel_error"] for r in int8["layers"]) > max(r["rel_error"] for r in fp16["layers"])


def test_layers_names_a_perturbed_layer_first(digits_int8, cli, tmp_path):
    """One convolution's int8 weights negated in the uint8 file: its output is the first tensor below tolerance."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(digits_int8["u8"]))
    producers = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    target = convs[len(convs) // 2]
    weight_dq = producers[target.input[1]]
    weights = {t.name: t for t in model.graph.initializer}
    quantized = weights[weight_dq.input[0]]
    quantized.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(quantized), quantized.name))
    perturbed = tmp_path / "perturbed.onnx"
    onnx.save(model, str(perturbed))
    ckpt = shutil.copy(digits_int8["ckpt"], tmp_path / "m.pth")
    out = tmp_path / "layers"
    result = cli("parity", ckpt, "-e", "ort-int8", "--onnx-int8", perturbed, "--data", "digits", "--layers", out)
    assert result.exit_code == 1  # the logits are wrong too: parity fails, and the report says where it began
    table = json.loads((out / "ort-int8.layers.json").read_text())
    first = next(r for r in table["layers"] if r["tensor"] == table["first_beyond_tolerance"])
    assert first["candidate_node"] == target.name and first["candidate_op"] == "Conv"
    assert all(r["passed"] for r in table["layers"][: first["index"]])
    assert f"Conv {target.name} in perturbed.onnx" in result.stdout


@needs_openvino
def test_layers_on_openvino_int8(digits_int8, cli, tmp_path):
    folder = _copied(digits_int8, tmp_path / "copy")
    out = tmp_path / "layers"
    result = cli("parity", folder / "m.pth", "-e", "ov-int8", "--data", "digits", "--layers", out)
    assert result.exit_code == 0, result.output
    table = json.loads((out / "ov-int8.layers.json").read_text())
    assert table["artefact"].endswith("m.int8.u8.onnx") and table["compared"] >= 1
    assert table["first_beyond_tolerance"] is None and all(r["min_cosine"] > 0.98 for r in table["layers"])


def test_layers_needs_real_images_and_a_folder(digits_int8, cli, tmp_path):
    (tmp_path / "file").write_text("x")
    result = cli("parity", digits_int8["ckpt"], "-e", "ort-int8", "--data", "digits", "--layers", tmp_path / "file" / "sub")
    assert result.exit_code == 1 and "is a file" in result.stderr
    result = cli("parity", digits_int8["ckpt"], "-e", "ort", "--layers", tmp_path / "out")
    assert result.exit_code == 64 and "--layers compares every tensor on real images; add --data DATA" in result.stderr
