"""Runtimes behind one contract: eager PyTorch, ONNX Runtime, OpenVINO, TensorRT.

Each runtime is an :class:`~engines.base.Engine` over an artefact that exists: a checkpoint on
eager PyTorch (:mod:`engines.eager`), an ``.onnx`` on ONNX Runtime (:mod:`engines.ort`) or
OpenVINO (:mod:`engines.openvino`), an ``.engine/.plan`` on TensorRT (:mod:`engines.trt`). Their
names form one vocabulary (:mod:`engines.names`), and what to open is one
:class:`~engines.request.EngineRequest`. Nothing here exports or builds; the one function that
opens any engine on any model, making what it runs on the way, is
:func:`toolkit.usecases.opening.open_engine`. Heavy optional packages are imported on first use.
"""
