"""Shared fixtures: tiny real checkpoints, a CLI runner, RNG isolation, and GPU/TensorRT markers."""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest
import torch

from helpers import TINY_PRE, TINY_SPEC, make_checkpoint, tensorrt_skip_reason
from toolkit.core.spec import ModelSpec, Preprocess

torch.set_num_threads(2)


def _has_cuda() -> bool:
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    cuda_reason = None if _has_cuda() else "no CUDA GPU on this machine"
    wanted = any("tensorrt" in item.keywords for item in items)
    trt_reason = tensorrt_skip_reason() if wanted else None
    for item in items:
        if cuda_reason and "cuda" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=cuda_reason))
        if trt_reason and "tensorrt" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=trt_reason))


@pytest.fixture(params=["10.13", "11.4"])
def fake_trt(request, monkeypatch):
    """The recording fake ``tensorrt`` (:mod:`fake_tensorrt`) of TensorRT 10.13 or 11.4, with CPU
    memory playing the GPU's. It tests rtk's TensorRT logic; it verifies nothing about TensorRT."""
    from fake_tensorrt import CpuDevice, make_tensorrt
    from toolkit.core.trt import library as trt_library

    trt = make_tensorrt(request.param)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    devices = []

    def open_device(device=None):
        devices.append(CpuDevice(device))
        return devices[-1]

    monkeypatch.setattr(trt_library, "open_device", open_device)
    trt._fake.devices = devices
    return trt


@pytest.fixture(autouse=True)
def _isolate_rng():
    """Each test starts from the same seeds and leaves global RNG state as it found it."""
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    yield
    torch.set_rng_state(torch_state)
    np.random.set_state(np_state)
    random.setstate(py_state)


class ExportedModels:
    """Real checkpoints and their ONNX exports, each made once per session and copied on request.

    Tracing a ResNet-18 takes seconds, so the tests whose subject is not the export itself share
    these files. A copy sits next to its checkpoint under the names ``prepare()`` looks for, and
    is fresh for it: the checkpoint's bytes, and so the sha256 the ONNX records, are the same.
    """

    def __init__(self, root):
        self.root = root
        self.sources = {}

    def __call__(self, folder, spec: ModelSpec = TINY_SPEC, pre: Preprocess = TINY_PRE, precisions=("fp32",), name: str = "m.pth"):
        """Copy the checkpoint of ``spec``/``pre`` (seed 0) as ``folder/name``, with its ONNX file
        of each precision beside it. Returns ``{"ckpt": path, "fp32": path, "fp16": path, …}``."""
        import shutil
        from pathlib import Path

        from exporters.onnx import ExportOptions, export_onnx
        from toolkit.core.artefacts import onnx_path_for

        source = self.sources.get((spec, pre))
        if source is None:
            source = self.sources[(spec, pre)] = make_checkpoint(self.root / f"model{len(self.sources)}" / "m.pth", spec, pre)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        copies = {"ckpt": Path(shutil.copy2(source, folder / name))}
        for precision in precisions:
            exported = onnx_path_for(source, precision)
            if not exported.exists():
                export_onnx(source, options=ExportOptions(precision=precision, check=False))
            copies[precision] = Path(shutil.copy2(exported, onnx_path_for(copies["ckpt"], precision)))
        return copies


@pytest.fixture(scope="session")
def exported_models(tmp_path_factory):
    """:class:`ExportedModels` for the session."""
    return ExportedModels(tmp_path_factory.mktemp("exported"))


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory):
    """A half-width resnet18 trained for 3 epochs on the digits at their own 8×8 size (94% test
    accuracy, in a few seconds): real decisions on real images for parity and int8 to judge.
    Shared by the session: a test that writes files beside it copies it first."""
    from toolkit.usecases.train import TrainOptions, train

    out = tmp_path_factory.mktemp("digits")
    result = train(TrainOptions(data="digits", arch="resnet18", width=32, epochs=3, input_size=8, out=out, progress=False, device="cpu"))
    assert result.test_acc > 0.9
    return result.best


@pytest.fixture(scope="session")
def digits_int8(digits_model, tmp_path_factory):
    """The digits model in a folder of its own with both int8 files of a plain
    ``rtk export --precision int8 --calib digits`` (checked), and what the check measured on each.
    Shared read-only: a test that writes beside it copies what it needs."""
    import shutil

    from exporters.int8 import CalibOptions
    from exporters.onnx import ExportOptions, export_onnx

    folder = tmp_path_factory.mktemp("digits-int8")
    ckpt = shutil.copy(digits_model, folder / "m.pth")
    checked = {}
    options = ExportOptions(precision="int8", calib=CalibOptions("digits"), progress=False)
    int8, u8 = export_onnx(ckpt, options=options, on_checked=lambda path, kind, metrics: checked.setdefault(kind, metrics))
    return {"ckpt": ckpt, "int8": int8, "u8": u8, "checked": checked}


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A narrow resnet18 (width 16, small stem, 10 classes, 32×32 RGB) rtk checkpoint on disk."""
    return make_checkpoint(tmp_path / "tiny.pth")


@pytest.fixture
def cli():
    """Invoke ``rtk`` in-process; returns a function ``cli(*args) -> click Result``."""
    from typer.testing import CliRunner

    from toolkit.cli.app import app

    runner = CliRunner()

    def invoke(*args, **kwargs):
        argv = [str(a) for a in args]
        result = runner.invoke(app, argv, **kwargs)
        # The runner swallows exceptions; one that escaped the CLI's error boundary would print a
        # traceback for a user, so it fails the test with its own traceback.
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"`rtk {' '.join(argv)}` raised {type(result.exception).__name__}") from result.exception
        return result

    return invoke


