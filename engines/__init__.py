"""Runtimes behind one contract: eager PyTorch, ONNX Runtime, TensorRT."""
