"""Helpers for the tests of foreign checkpoints: settled networks, their logits, and the export round trip."""

from __future__ import annotations

import numpy as np
import torch

from toolkit.core.artefacts import onnx_path_for


def settle_batchnorm(model: torch.nn.Module, size: int = 32) -> torch.nn.Module:
    """A few training-mode passes, so BatchNorm statistics (and eval logits) are not trivial."""
    with torch.no_grad():
        model.train()
        for _ in range(2):
            model(torch.randn(4, 3, size, size))
    return model.eval()


def forward(model, x: np.ndarray) -> np.ndarray:
    """Logits of a network (or any callable taking a tensor) for ``x``, as numpy."""
    if isinstance(model, torch.nn.Module):
        model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    return (out.logits if hasattr(out, "logits") else out).numpy()


def onnx_logits(path, x: np.ndarray) -> np.ndarray:
    """Logits of an ONNX file on ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def inputs(size: int, n: int = 2) -> np.ndarray:
    """A fixed batch of ``n`` random images of ``size`` px."""
    return np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(np.float32)


def export_and_check(cli, path, *extra):
    """``rtk export`` (the quick TorchScript exporter) then ``rtk parity -e ort``, which must reuse that file."""
    result = cli("export", path, "--exporter", "torchscript", "--opset", "17", "--no-check", *extra)
    assert result.exit_code == 0, result.output
    onnx_path = onnx_path_for(path)
    stamp = onnx_path.stat().st_mtime_ns
    result = cli("parity", path, "-e", "ort", "-b", "2", *extra)
    assert result.exit_code == 0, result.output
    assert "all 1 engine(s) match the reference" in result.output
    assert onnx_path.stat().st_mtime_ns == stamp, "parity re-exported a fresh ONNX file"
    return onnx_path
