"""ONNX export: every architecture family matches eager on ONNX Runtime, fp16 really is fp16,
the batch axis is dynamic, an independent evaluator agrees, and bad input fails cleanly."""

import json
import os

import numpy as np
import onnx
import pytest
import torch

from exporters.onnx import ExportOptions, export_onnx
from helpers import fails_cleanly, make_checkpoint, opened
from toolkit.core.artefacts import onnx_path_for
from toolkit.core.compare import compare
from toolkit.core.errors import RtkError
from toolkit.core.spec import METADATA_KEY, ArtefactMeta, ModelSpec, Preprocess

# The imagenet stem at 32 px keeps every architecture's activations tiny, so the cost is tracing.
ZOO_PRE = Preprocess(input_size=(32, 32), resize=32, crop=False)
# Basic blocks, and bottleneck blocks with grouped convolutions (ResNeXt): every layer type of the
# family. The rest are these graphs deeper or wider (15-30 s each to trace on two cores).
FAMILIES = ["resnet18", "resnext50_32x4d"]
BIG = ["resnet34", "resnet50", "resnet101", "resnet152", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]


def _ort_logits(path, x):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


def _eager_logits(ckpt_path, x):
    from toolkit.core.checkpoint import load_model

    model, _ = load_model(ckpt_path)
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, exported_models):
    """The tiny checkpoint exported at both precisions: (checkpoint, fp32 onnx, fp16 onnx).
    Its parity check is the subject of test_cli_export_reports_the_check."""
    files = exported_models(tmp_path_factory.mktemp("export"), precisions=("fp32", "fp16"), name="tiny.pth")
    return files["ckpt"], files["fp32"], files["fp16"]


# The default suite traces each family at width 16, the same graph with a sixteenth of the
# weights; -m slow traces every architecture at its published width.
ZOO = [pytest.param(a, 16, id=f"{a}-w16") for a in FAMILIES] + [
    pytest.param(a, 64, id=a, marks=pytest.mark.slow) for a in FAMILIES + BIG
]


@pytest.mark.parametrize("arch, width", ZOO)
def test_every_architecture_matches_eager_in_fp32_and_keeps_direction_in_fp16(tmp_path, arch, width):
    spec = ModelSpec(arch=arch, num_classes=7, width=width)
    ckpt = make_checkpoint(tmp_path / f"{arch}.pth", spec, ZOO_PRE)
    fp32, fp16 = export_onnx(ckpt, options=ExportOptions(precision="all", check=False))  # the test itself is the check
    x = np.random.default_rng(1).standard_normal((6, 3, 32, 32), dtype=np.float32)
    ref = _eager_logits(ckpt, x)
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.abs(_ort_logits(fp32, x) - ref).max() <= 1e-4 * scale
    assert compare(ref, _ort_logits(fp16, x), "fp16").min_cosine >= 0.999


def test_export_writes_a_checked_graph_with_the_contracted_interface(exported):
    ckpt, fp32, fp16 = exported
    assert fp32 == onnx_path_for(ckpt) and fp32.name == "tiny.onnx" and fp16.name == "tiny.fp16.onnx"
    model = onnx.load(str(fp32))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, inp.type.tensor_type.elem_type) == ("input", onnx.TensorProto.FLOAT)
    assert (out.name, out.type.tensor_type.elem_type) == ("logits", onnx.TensorProto.FLOAT)
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    meta = ArtefactMeta.from_json({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    from helpers import TINY_PRE, TINY_SPEC

    assert meta.spec == TINY_SPEC and meta.preprocess == TINY_PRE


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_dynamic_batch_axis_runs_any_batch_size(exported, batch):
    ckpt, fp32, _ = exported
    x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32), dtype=np.float32)
    out = _ort_logits(fp32, x)
    assert out.shape == (batch, 10)
    np.testing.assert_allclose(out, _eager_logits(ckpt, x), atol=1e-4, rtol=1e-4)


def test_fp16_onnx_holds_fp16_weights_and_compute_behind_fp32_io(exported):
    from exporters.fp16 import check_fp16_compute

    _, fp32, fp16 = exported
    half = onnx.load(str(fp16))
    check_fp16_compute(half)  # raises if any weight or Conv/Gemm input is not float16
    assert {t.data_type for t in half.graph.initializer} <= {onnx.TensorProto.FLOAT16, onnx.TensorProto.INT64}
    assert os.path.getsize(fp16) < 0.6 * os.path.getsize(fp32)
    with pytest.raises(RtkError, match="float32 weight"):
        check_fp16_compute(onnx.load(str(fp32)))


def test_fp16_conversion_halves_constants_and_inner_casts_and_keeps_float32_io():
    from onnx import TensorProto, helper, numpy_helper

    from exporters.fp16 import check_fp16_compute, to_fp16

    weight = np.arange(8, dtype=np.float32).reshape(4, 2) / 8
    nodes = [
        helper.make_node("Constant", [], ["scale"], value=numpy_helper.from_array(np.array(0.5, np.float32))),
        helper.make_node("Mul", ["input", "scale"], ["scaled"]),
        helper.make_node("Cast", ["scaled"], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["as_float", "w"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])], [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    half = to_fp16(model)
    onnx.checker.check_model(half, full_check=True)
    check_fp16_compute(half)
    assert [n.op_type for n in half.graph.node] == ["Cast", "Constant", "Mul", "Cast", "MatMul", "Cast"]
    assert model.graph.initializer[0].data_type == TensorProto.FLOAT  # the fp32 graph is left as it was
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((3, 4), dtype=np.float32)
    (out,) = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (x * 0.5) @ weight, atol=1e-2)


def test_onnx_reference_evaluator_agrees_with_eager_and_ort(tmp_path):
    from onnx.reference import ReferenceEvaluator

    ckpt = make_checkpoint(tmp_path / "r18.pth", ModelSpec(arch="resnet18", num_classes=5, width=16), ZOO_PRE)
    (path,) = export_onnx(ckpt, options=ExportOptions(check=False))  # the independent evaluator is the check
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32), dtype=np.float32)
    reference = ReferenceEvaluator(str(path)).run(None, {"input": x})[0]
    eager, ort = _eager_logits(ckpt, x), _ort_logits(path, x)
    np.testing.assert_allclose(reference, eager, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(reference, ort, atol=1e-4, rtol=1e-4)


def test_foreign_torchvision_state_dict_exports(tmp_path, cli):
    import torchvision

    path = tmp_path / "resnet18.pth"
    torch.save({"module." + k: v for k, v in torchvision.models.resnet18(weights=None).state_dict().items()}, path)
    result = cli("export", path, "--exporter", "torchscript", "--opset", "17", "--no-check")
    assert result.exit_code == 0, result.output
    meta = ArtefactMeta.from_json({p.key: p.value for p in onnx.load(str(tmp_path / "resnet18.onnx")).metadata_props}[METADATA_KEY])
    assert (meta.spec.arch, meta.spec.num_classes, meta.preprocess.input_size) == ("resnet18", 1000, (224, 224))


def test_pth_tar_checkpoint_exports_next_to_itself(tmp_path, cli, monkeypatch):
    # PyTorch's ImageNet example saves model_best.pth.tar: the ONNX is model_best.onnx, and predict
    # finds the checkpoint as the only model in the working folder.
    from PIL import Image

    ckpt = make_checkpoint(tmp_path / "model_best.pth.tar", ModelSpec(arch="resnet18", num_classes=3, width=16), ZOO_PRE)
    result = cli("export", ckpt, "--no-check", "--exporter", "torchscript", "--opset", "17")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_best.onnx", "model_best.pth.tar"]
    (tmp_path / "model_best.onnx").unlink()
    Image.new("RGB", (40, 30), "red").save(tmp_path / "red.png")
    monkeypatch.chdir(tmp_path)
    result = cli("predict", "red.png", "-f", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["classified"] == 1


@pytest.mark.slow
def test_foreign_resnet101_state_dict_exports(tmp_path, cli):
    import torchvision

    path = tmp_path / "resnet101.pth"
    torch.save(torchvision.models.resnet101(weights=None).state_dict(), path)
    result = cli("export", path, "--precision", "all")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "resnet101.onnx").exists() and (tmp_path / "resnet101.fp16.onnx").exists()


def test_static_batch_pins_the_batch_axis(tmp_path):

    ckpt = make_checkpoint(tmp_path / "s.pth", ModelSpec(arch="resnet18", num_classes=4, width=16), ZOO_PRE)
    (path,) = export_onnx(ckpt, options=ExportOptions(static_batch=4))
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    with opened(path) as engine:
        assert engine(np.zeros((4, 3, 32, 32), np.float32)).shape == (4, 4)
        with pytest.raises(RtkError, match="batch size 3"):
            engine(np.zeros((3, 3, 32, 32), np.float32))


def test_torchscript_exporter_reaches_opset_17_and_dynamo_refuses_it(tmp_path):
    ckpt = make_checkpoint(tmp_path / "t.pth", ModelSpec(arch="resnet18", num_classes=4, width=16), ZOO_PRE)
    with pytest.raises(RtkError, match="opset 17"):
        export_onnx(ckpt, options=ExportOptions(opset=17))
    (path,) = export_onnx(ckpt, options=ExportOptions(opset=17, exporter="torchscript"))
    assert onnx.load(str(path)).opset_import[0].version == 17


def test_nan_weights_leave_no_file(tmp_path):
    # NaN weights would make every logit non-finite: they are refused before anything is exported.
    from toolkit.core.checkpoint import load_checkpoint, save_checkpoint
    from toolkit.core.models import create_model

    good = load_checkpoint(make_checkpoint(tmp_path / "good.pth", ModelSpec(arch="resnet18", num_classes=4, width=16), ZOO_PRE))
    model = create_model(good.spec)
    state = dict(good.state_dict)
    state["fc.weight"] = torch.full_like(state["fc.weight"], float("nan"))
    model.load_state_dict(state)
    bad = save_checkpoint(tmp_path / "bad.pth", model, good.spec, good.preprocess)
    with pytest.raises(RtkError, match=r"hold NaN/Inf in fc\.weight"):
        export_onnx(bad, options=ExportOptions(precision="all"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pth", "good.pth"]


def test_precision_all_writes_neither_file_when_only_fp16_fails(tmp_path):
    # A bias far beyond float16's range (65504) is exact enough in fp32 and infinite in fp16.
    from toolkit.core.checkpoint import load_checkpoint, save_checkpoint
    from toolkit.core.models import create_model

    good = load_checkpoint(make_checkpoint(tmp_path / "good.pth", ModelSpec(arch="resnet18", num_classes=4, width=16), ZOO_PRE))
    model = create_model(good.spec)
    state = dict(good.state_dict)
    state["fc.bias"] = state["fc.bias"] + 1e5
    model.load_state_dict(state)
    huge = save_checkpoint(tmp_path / "huge.pth", model, good.spec, good.preprocess)
    quick = dict(exporter="torchscript", opset=17)  # the staging is the subject, not the exporter
    assert export_onnx(huge, tmp_path / "alone.onnx", options=ExportOptions(**quick))  # the fp32 file alone passes
    with pytest.raises(RtkError, match=r"huge.fp16.onnx was not written"):
        export_onnx(huge, options=ExportOptions(precision="all", **quick))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alone.onnx", "good.pth", "huge.pth"]


def test_inspect_describes_onnx(exported, cli):
    _, _, fp16 = exported
    result = cli("inspect", fp16, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kind"] == "onnx" and report["precision"] == "fp16" and report["opset"]["ai.onnx"] >= 17
    assert report["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 3, 32, 32]}]
    assert report["outputs"][0]["shape"] == ["batch", 10] and report["arch"] == "resnet18-w16"


def test_cli_export_reports_the_check(tiny_checkpoint, cli, tmp_path):
    out = tmp_path / "out" / "model.onnx"
    result = cli("export", tiny_checkpoint, "-o", out)
    assert result.exit_code == 0, result.output
    assert out.exists() and "max abs" in result.stdout and "cosine" in result.stdout


# --- bad input ----------------------------------------------------------------------------




def test_export_of_a_non_checkpoint_fails_cleanly(tmp_path, cli):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights\n")
    fails_cleanly(cli("export", path), "not a PyTorch checkpoint")
    assert list(tmp_path.iterdir()) == [path]


def test_export_of_a_missing_file_fails_cleanly(tmp_path, cli):
    fails_cleanly(cli("export", tmp_path / "nope.pth"), "does not exist")


def test_export_to_an_unwritable_path_fails_cleanly(tiny_checkpoint, tmp_path, cli):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    fails_cleanly(cli("export", tiny_checkpoint, "-o", blocker / "sub" / "m.onnx"), "cannot write")


def test_export_rejects_bad_options(tiny_checkpoint, cli):
    fails_cleanly(cli("export", tiny_checkpoint, "--opset", "9"), "opsets", status=64)
    fails_cleanly(cli("export", tiny_checkpoint, "--static-batch", "0"), "--static-batch", status=64)
