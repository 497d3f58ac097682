"""Artefact producers: PyTorch → ONNX (fp32, fp16), ONNX → TensorRT engine, Triton repository."""
