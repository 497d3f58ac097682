"""``rtk triton MODEL --repo DIR``: write a Triton Inference Server model repository."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from toolkit.cli.options import (
    TritonPrecision,
    TrustPickleOption,
    Weights,
    WeightsOption,
    checkpoint_options,
    int_list,
    number_list_option,
    number_option,
    path_argument,
    path_option,
)
from toolkit.core.console import console, info
from toolkit.core.validation import COUNT, COUNT_OR_ZERO


class Platform(str, Enum):
    onnx = "onnx"
    tensorrt = "tensorrt"


def triton(
    model: Annotated[Path, path_argument(help="A checkpoint (.pth/.pt…, or a Hugging Face model folder), ONNX file (.onnx) or TensorRT plan (.engine/.plan with its .json sidecar).")],
    repo: Annotated[Path, path_option("--repo", help="The Triton model repository folder (created when missing).")],
    name: Annotated[Optional[str], typer.Option(help="Model name, i.e. its folder in the repository (default: the file's stem).")] = None,
    version: Annotated[Optional[int], number_option(COUNT, "--version", help="Version folder to write (default: one past the newest, 1 for a new model).")] = None,
    platform: Annotated[Optional[Platform], typer.Option(help="onnxruntime_onnx or tensorrt_plan (default: what MODEL is; checkpoints → onnx).")] = None,
    precision: Annotated[Optional[TritonPrecision], typer.Option(help="Precision of the ONNX exported or plan built from MODEL (default: fp32 for onnx, fp16 for tensorrt).")] = None,
    max_batch_size: Annotated[Optional[int], number_option(COUNT, "--max-batch-size", help="Largest batch Triton forms (default: a plan's profile max, else 32).")] = None,
    preferred_batch_sizes: Annotated[Optional[list[str]], number_list_option(COUNT, "--preferred-batch-sizes", help="Batch sizes the dynamic batcher aims for, e.g. 8,16 (repeatable).")] = None,
    max_queue_delay_us: Annotated[int, number_option(COUNT_OR_ZERO, "--max-queue-delay-us", help="How long (µs) a request may wait for others to join its batch.")] = 100,
    instances: Annotated[int, number_option(COUNT, "--instances", help="Model instances per GPU (or on the CPU with --cpu).")] = 1,
    gpus: Annotated[Optional[list[str]], number_list_option(COUNT_OR_ZERO, "--gpus", help="GPU indices for the instances, e.g. 0,1 (repeatable; default: every GPU).")] = None,
    cpu: Annotated[bool, typer.Option("--cpu", help="Run the instances on the CPU (ONNX only).")] = False,
    ort_trt: Annotated[bool, typer.Option("--ort-trt/--no-ort-trt", help="Let ONNX Runtime run the ONNX model through TensorRT in FP16.")] = False,
    ort_trt_workspace_mib: Annotated[int, number_option(COUNT, "--ort-trt-workspace-mib", help="TensorRT workspace for --ort-trt, in MiB.")] = 1024,
    ort_trt_cache: Annotated[Optional[str], typer.Option(metavar="SERVER_DIR", help="With --ort-trt: keep TensorRT engines and timing cache in this folder on the server (absolute path as the server sees it), so restarts skip the build.")] = None,
    triton_release: Annotated[str, typer.Option(metavar="YY.MM", help="Oldest Triton release the config must load on; before 24.04 --ort-trt leaves out the TensorRT profile and timing-cache parameters those servers refuse.")] = "24.04",
    force: Annotated[bool, typer.Option("--force", help="Replace the version folder if it exists.")] = False,
    weights: WeightsOption = Weights.ema,
    trust_pickle: TrustPickleOption = False,
) -> None:
    """Write MODEL into a Triton Inference Server model repository.

    Creates REPO/NAME/config.pbtxt (dynamic batching, instance groups, I/O from the artefact),
    REPO/NAME/VERSION/model.onnx or model.plan, labels.txt for Triton's classification
    extension, and rtk.json with the preprocessing a client must apply. Older versions stay.
    """
    from exporters.triton import TritonOptions, export_triton  # lazy: numpy

    options = TritonOptions(
        name=name,
        version=version,
        platform=platform.value if platform else None,
        precision=precision.value if precision else None,
        max_batch_size=max_batch_size,
        preferred_batch_sizes=int_list(preferred_batch_sizes, "--preferred-batch-sizes"),
        max_queue_delay_us=max_queue_delay_us,
        instances=instances,
        gpus=int_list(gpus, "--gpus", COUNT_OR_ZERO),
        cpu=cpu,
        ort_trt=ort_trt,
        ort_trt_workspace_bytes=ort_trt_workspace_mib * (1 << 20),
        ort_trt_cache=ort_trt_cache,
        triton_release=triton_release,
        force=force,
        checkpoint_options=checkpoint_options(weights, trust_pickle),
    )
    result = export_triton(model, repo, options)
    action = "replaced" if result.replaced else "wrote"
    info(f"{action} version {result.version} of {result.name} ({result.platform}, max batch {result.max_batch_size}) from {result.source}")
    for path in result.files:
        console.print(str(path), highlight=False, soft_wrap=True)
    if result.details:
        info(
            f"the plan runs only under TensorRT {result.details['tensorrt_version']} on GPUs of compute capability "
            f"{result.details['compute_capability']}: use the Triton release that ships that TensorRT"
        )
    info(f"versions now in {result.model_dir}: {', '.join(map(str, result.versions))}")
    info(f"serve with: tritonserver --model-repository {Path(repo).resolve()}")
