"""``rtk build MODEL.onnx``: a TensorRT engine and its sidecar."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from toolkit.cli.onnx_spec import ClassNamesOption, InputSizeOption, MeanOption, StdOption, onnx_meta
from toolkit.cli.options import EnginePrecision, check_device, number_option, path_argument, path_option
from toolkit.core.artefacts import ENGINE_SUFFIXES
from toolkit.core.console import console
from toolkit.core.outputs import Output, check_outputs
from toolkit.core.trt.library import import_tensorrt
from toolkit.core.trt.sidecar import has_sidecar, read_sidecar, sidecar_path
from toolkit.core.validation import COUNT, OPTIMIZATION_LEVEL


class ProfilingVerbosity(str, Enum):
    layer_names_only = "layer-names-only"
    detailed = "detailed"
    none = "none"


PrecisionOption = Annotated[
    Optional[EnginePrecision],
    typer.Option(
        help="Engine precision. fp16 uses BuilderFlag.FP16 on TensorRT 10 and the fp16 ONNX on TensorRT 11; "
        "int8 builds the QDQ ONNX (BuilderFlag.INT8 on TensorRT 10, strongly typed on 11) and is the default for it."
    ),
]
VerbosityOption = Annotated[
    ProfilingVerbosity,
    typer.Option(help="Layer information kept in the engine; detailed shows tactics and formats in `rtk inspect`."),
]


def build(
    onnx: Annotated[Path, path_argument(help="An ONNX file: exported by `rtk export` (fp32, fp16, or int8 QDQ: MODEL.int8.onnx), or by another tool (its spec read from the graph and the options below).")],
    output: Annotated[
        Optional[Path],
        path_option("--output", "-o", help="Engine path. Default: MODEL.engine for fp16, MODEL.fp32.engine for fp32."),
    ] = None,
    precision: PrecisionOption = None,
    min_batch: Annotated[int, number_option(COUNT, "--min-batch", help="Smallest batch the engine accepts.")] = 1,
    opt_batch: Annotated[int, number_option(COUNT, "--opt-batch", help="Batch TensorRT tunes its kernels for.")] = 32,
    max_batch: Annotated[int, number_option(COUNT, "--max-batch", help="Largest batch the engine accepts.")] = 128,
    workspace: Annotated[Optional[str], typer.Option(help="Workspace memory limit, e.g. 4GiB or 512MiB. Default: TensorRT's, all GPU memory.")] = None,
    timing_cache: Annotated[Optional[Path], path_option("--timing-cache", help="Timing cache file: read before the build when it exists, updated after it.")] = None,
    tf32: Annotated[bool, typer.Option("--tf32/--no-tf32", help="Allow TF32 in fp32 layers; --no-tf32 for strict fp32 parity.")] = True,
    builder_optimization_level: Annotated[
        int, number_option(OPTIMIZATION_LEVEL, "--builder-optimization-level", help="Higher searches more kernels (slower build, possibly faster engine).")
    ] = 3,
    profiling_verbosity: VerbosityOption = ProfilingVerbosity.layer_names_only,
    device: Annotated[
        Optional[str], typer.Option(callback=check_device, help="GPU to build on, e.g. cuda:1 (default: the current CUDA device); the engine runs on that GPU family.")
    ] = None,
    input_size: InputSizeOption = None,
    class_names: ClassNamesOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
) -> None:
    """Build a TensorRT engine (MODEL.engine + MODEL.engine.json) from an ONNX file on this GPU."""
    from exporters.int8 import refuse_u8_for_tensorrt  # lazy: numpy
    from exporters.trt import BuildOptions, build_engine, onnx_weight_precision, parse_workspace  # lazy: numpy

    check_outputs(
        [
            Output(output, "--output", ENGINE_SUFFIXES, "a TensorRT engine", written_by_rtk=has_sidecar) if output else None,
            Output(sidecar_path(output), "--output") if output else None,
            Output(timing_cache, "--timing-cache") if timing_cache else None,
        ],
        [onnx],
    )
    if precision is None:  # a QDQ graph can only build int8; anything else defaults to fp16
        chosen = "int8" if onnx_weight_precision(onnx) == "int8" else "fp16"
    else:
        chosen = precision.value
    options = BuildOptions(
        precision=chosen, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
        workspace=parse_workspace(workspace) if workspace is not None else None, timing_cache=timing_cache, tf32=tf32,
        builder_optimization_level=builder_optimization_level, profiling_verbosity=profiling_verbosity.value,
    )
    refuse_u8_for_tensorrt(onnx)  # a file TensorRT can never build is said first, on any machine
    import_tensorrt("building a TensorRT engine")  # the likeliest refusal, before the graph is read
    meta = onnx_meta(onnx, input_size, class_names, mean, std)
    print_built(build_engine(onnx, output, options, device=device, meta=meta))


def print_built(path: Path) -> None:
    """One line on stdout about a freshly built engine, from its sidecar."""

    sidecar = read_sidecar(path)
    lo, opt, hi = sidecar.profile
    console.print(
        f"built [bold]{path}[/bold] ({path.stat().st_size / 2**20:.1f} MiB, {sidecar.precision}, batch {lo}/{opt}/{hi}, "
        f"{sidecar.build.get('route')}) in {sidecar.build.get('seconds')} s for TensorRT {sidecar.tensorrt_version} "
        f"on {sidecar.gpu_name}; sidecar {sidecar_path(path).name}",
        highlight=False,
    )
