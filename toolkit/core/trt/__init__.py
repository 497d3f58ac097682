"""What TensorRT's engine and builder share: the engine sidecar format and the TensorRT/CUDA plumbing.

Nothing here needs TensorRT to import; :mod:`toolkit.core.trt.library` imports it on first use.
"""
