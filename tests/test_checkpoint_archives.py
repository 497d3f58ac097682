"""TorchScript archives and torch.export ``.pt2`` files, written by torch itself: their weights are read
without running anything in them, by every command alike, and the export matches torch's own run of
the archive."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
import torchvision.models as tvm

from foreign import export_and_check, forward, inputs, onnx_logits, settle_batchnorm
from toolkit.core.checkpoint import load_checkpoint, load_model
from toolkit.core.errors import RtkError
from toolkit.core.spec import ModelSpec

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated in favour of torch.export


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(5)
    return settle_batchnorm(tvm.resnet18(num_classes=3))


@pytest.fixture(scope="module")
def scripted(resnet18, tmp_path_factory):
    path = tmp_path_factory.mktemp("ts") / "resnet18.pt"
    torch.jit.save(torch.jit.script(resnet18), str(path))
    return path


def test_torchscript_archive_is_read_without_running_it_and_matches_torchscript(scripted, cli):
    report = json.loads(cli("inspect", scripted, "--json").output)
    assert report["arch"] == "resnet18" and report["container"] == "TorchScript archive"
    onnx_path = export_and_check(cli, scripted)
    x = inputs(224)
    np.testing.assert_allclose(onnx_logits(onnx_path, x), forward(torch.jit.load(str(scripted)), x), rtol=1e-4, atol=1e-5)


def test_traced_network_is_read_as_its_state_dict(resnet18, tmp_path):
    torch.jit.save(torch.jit.trace(resnet18, torch.randn(1, 3, 32, 32)), str(tmp_path / "traced.pt"))
    loaded, ckpt = load_model(tmp_path / "traced.pt")
    assert ckpt.spec == ModelSpec("resnet18", 3)
    x = inputs(32)
    np.testing.assert_allclose(forward(loaded, x), forward(resnet18, x), rtol=1e-5, atol=1e-6)  # what was traced


def test_torchscript_archive_naming_code_is_refused_and_nothing_runs(scripted, tmp_path):
    # The archive's data.pkl replaced by a pickle that would run a shell command when unpickled.
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(scripted) as source, zipfile.ZipFile(evil, "w") as target:
        for item in source.infolist():
            data = pickle.dumps(Payload(), protocol=2) if item.filename.endswith("/data.pkl") else source.read(item)
            target.writestr(item, data)
    with pytest.raises(RtkError, match=r"refusing to read .*evil\.pt, a TorchScript archive: it references (posix|nt)\.system"):
        load_checkpoint(evil)
    assert not (tmp_path / "ran").exists()


@pytest.fixture(scope="module")
def exported(resnet18, tmp_path_factory):
    path = tmp_path_factory.mktemp("pt2") / "resnet18.pt2"
    torch.export.save(torch.export.export(resnet18, (torch.randn(2, 3, 224, 224),)), str(path))
    return path


def test_torch_export_archive_gets_one_reader_in_every_command(exported, cli, resnet18):
    report = json.loads(cli("inspect", exported, "--json").output)
    assert report["arch"] == "resnet18" and report["container"] == "torch.export archive"
    onnx_path = export_and_check(cli, exported)
    x = inputs(224)
    reference = torch.export.load(str(exported)).module()  # exported in eval mode; it has no eval() of its own
    np.testing.assert_allclose(onnx_logits(onnx_path, x), forward(lambda t: reference(t), x), rtol=1e-4, atol=1e-5)


def test_torch_export_archive_of_the_older_layout(resnet18, tmp_path):
    # torch.export.save before the pt2 archive format (torch 2.1–2.5): a zip with the program as
    # JSON and the weights as a torch.save file, serialized_state_dict.pt.
    buffer = io.BytesIO()
    torch.save(resnet18.state_dict(), buffer)
    with zipfile.ZipFile(tmp_path / "old.pt2", "w") as archive:
        archive.writestr("serialized_exported_program.json", "{}")
        archive.writestr("serialized_state_dict.pt", buffer.getvalue())
        archive.writestr("version", "1")
    loaded, _ = load_model(tmp_path / "old.pt2")
    x = inputs(32)
    np.testing.assert_allclose(forward(loaded, x), forward(resnet18, x), rtol=1e-5, atol=1e-6)


def test_compiled_aotinductor_package_is_named(tmp_path):
    # aoti_compile_and_package's layout: compiled code under data/aotinductor/, no weights config.
    with zipfile.ZipFile(tmp_path / "compiled.pt2", "w") as archive:
        archive.writestr("compiled/archive_format", "pt2")
        archive.writestr("compiled/data/aotinductor/model/model.wrapper.so", b"\x7fELF")
    with pytest.raises(RtkError, match=r"is an AOTInductor package \(\.pt2 holding compiled code"):
        load_checkpoint(tmp_path / "compiled.pt2")


def test_damaged_archive_is_named_as_the_archive_it_is(exported, tmp_path):
    damaged = tmp_path / "damaged.pt2"
    with zipfile.ZipFile(exported) as source, zipfile.ZipFile(damaged, "w") as target:
        for item in source.infolist():
            if not item.filename.endswith("weight_0"):
                target.writestr(item, source.read(item))
    with pytest.raises(RtkError, match=r"is a damaged torch.export archive"):
        load_checkpoint(damaged)
