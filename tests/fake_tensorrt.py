"""A recording stand-in for the ``tensorrt`` module, in a TensorRT 10.13 and a TensorRT 11.4 flavour.

It lets rtk's TensorRT code (build, load, run, timing cache, error paths) execute on a CPU. It
tests rtk's logic against TensorRT's documented behaviour; it is not TensorRT and verifies
nothing about TensorRT itself. Every public name it exposes is checked against the real API
(``tests/data/tensorrt_api``: the 10.13 type stubs and the 11.4 bindings' names).

What it does honestly: the "plan" it builds holds the parsed ONNX bytes, and an execution
context reads its input from the address it was given, runs that ONNX on ONNX Runtime's CPU
provider and writes the logits to the output address, so outputs are real maths on the bound
memory. What it imitates from TensorRT's documentation:

- one logger per process: messages go to the first ``ILogger`` given to a Builder or Runtime;
- ``set_tensor_address`` returns False for an address not 256-byte aligned, and the previous
  address stays bound; ``set_input_shape`` returns False outside the profile;
- ``create_execution_context`` may return None (out of memory), ``build_serialized_network``
  and ``deserialize_cuda_engine`` return None on failure, ``add_optimization_profile`` -1;
- a plan or timing cache from another TensorRT version is refused;
- 11.x: no ``BuilderFlag.FP16``/``INT8``, no ``EXPLICIT_BATCH``; networks are strongly typed.

The module is built from parts: :class:`Flavour` (the version, its enums, the controls and the
process's logger), one class per TensorRT type below it, and :func:`make_tensorrt`, which binds
each type to its flavour under TensorRT's public name. A test tells it to fail through
``module._fake.fail`` and reads the calls from ``module._fake.calls``.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import importlib.machinery
import json
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

VERSIONS = {"10.13": "10.13.0.35", "11.4": "11.4.0.106"}
_MAGIC = b"FAKE-TRT-PLAN\n"
_CACHE_MAGIC = b"FAKE-TRT-TIMING\n"
_ALIGN = 256

_FLAGS_10 = (
    "FP16 BF16 INT8 DEBUG GPU_FALLBACK REFIT DISABLE_TIMING_CACHE TF32 SPARSE_WEIGHTS OBEY_PRECISION_CONSTRAINTS "
    "PREFER_PRECISION_CONSTRAINTS DIRECT_IO VERSION_COMPATIBLE FP8 STRIP_PLAN WEIGHT_STREAMING INT4 STRICT_NANS "
    "MONITOR_MEMORY FP4"
)
_FLAGS_11 = (
    "DEBUG GPU_FALLBACK DISABLE_TIMING_CACHE EDITABLE_TIMING_CACHE TF32 SPARSE_WEIGHTS SAFETY_SCOPE DIRECT_IO "
    "VERSION_COMPATIBLE ERROR_ON_TIMING_CACHE_MISS STRIP_PLAN WEIGHT_STREAMING STRICT_NANS MONITOR_MEMORY "
    "DISTRIBUTIVE_INDEPENDENCE"
)


@dataclass
class Controls:
    """What a test tells the fake, and what the fake saw.

    Attributes:
        fail: operations to fail: ``"parse"``, ``"profile"``, ``"build"``, ``"deserialize"``,
            ``"context"``, ``"shape"``, ``"address"``, ``"execute"``.
        io_dtype: the ``DataType`` member name the engine reports for its tensors.
        calls: ``(method, detail)`` for every API call rtk made.
    """

    version: str
    fail: set[str] = field(default_factory=set)
    io_dtype: str = "FLOAT"
    calls: list[tuple[str, Any]] = field(default_factory=list)
    logger: Any = None
    loggers_offered: int = 0

    def called(self, method: str) -> list[Any]:
        return [detail for name, detail in self.calls if name == method]

    def log_error(self, message: str, severity: Any) -> None:
        if self.logger is not None:
            self.logger.log(severity, message)


# --- the flavour: what differs between TensorRT 10 and 11 -----------------------------------------


class ILogger:
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    def __init__(self) -> None:
        pass

    def log(self, severity, msg) -> None:  # overridden by rtk's logger
        pass


class Flavour:
    """One fake module's version, enums and controls; every fake type reaches them as ``self._flavour``."""

    def __init__(self, flavour: str, module: types.ModuleType):
        self.version = VERSIONS[flavour]
        self.ten = self.version.startswith("10.")
        self.controls = Controls(self.version)
        self.module = module
        self.BuilderFlag = enum.IntEnum("BuilderFlag", _FLAGS_10 if self.ten else _FLAGS_11, start=0)
        self.NetworkDefinitionCreationFlag = enum.IntEnum(
            "NetworkDefinitionCreationFlag", "EXPLICIT_BATCH STRONGLY_TYPED" if self.ten else "STRONGLY_TYPED", start=0
        )
        self.MemoryPoolType = enum.IntEnum("MemoryPoolType", "WORKSPACE DLA_MANAGED_SRAM DLA_LOCAL_DRAM DLA_GLOBAL_DRAM", start=0)
        self.ProfilingVerbosity = enum.IntEnum("ProfilingVerbosity", "LAYER_NAMES_ONLY NONE DETAILED", start=0)
        self.LayerInformationFormat = enum.IntEnum("LayerInformationFormat", "ONELINE JSON", start=0)
        self.TensorIOMode = enum.IntEnum("TensorIOMode", "NONE INPUT OUTPUT", start=0)
        types_ = "FLOAT HALF INT8 INT32 BOOL UINT8 FP8 BF16 INT64" if self.ten else "FLOAT HALF INT32 BOOL UINT8 BF16 INT64"
        self.DataType = enum.IntEnum("DataType", types_, start=0)

    def enums(self) -> dict[str, type]:
        return {name: value for name, value in vars(self).items() if isinstance(value, type) and issubclass(value, enum.Enum)}

    def register(self, logger: Any) -> None:
        """TensorRT keeps the first logger it is given for the whole process."""
        self.controls.loggers_offered += 1
        if self.controls.logger is None:
            self.controls.logger = logger

    def error(self, message: str) -> None:
        self.controls.log_error(message, ILogger.Severity.ERROR)

    def call(self, method: str, detail: Any) -> None:
        self.controls.calls.append((method, detail))

    def failing(self, operation: str) -> bool:
        return operation in self.controls.fail


class _Bound:
    """A fake type bound to its flavour by :func:`make_tensorrt`."""

    _flavour: Flavour


# --- the network and its parser ----------------------------------------------------------------


class ParserError:
    def __init__(self, code: str, desc: str, node: str = "") -> None:
        self._code, self._desc, self._node = code, desc, node

    def code(self) -> str:
        return self._code

    def desc(self) -> str:
        return self._desc

    def node_name(self) -> str:
        return self._node


class ITensor:
    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        self.name = name
        self.shape = shape


class INetworkDefinition(_Bound):
    def __init__(self, flags: int) -> None:
        strongly = 1 << int(self._flavour.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        self._strongly_typed = (not self._flavour.ten) or bool(flags & strongly)
        self._inputs: list[ITensor] = []
        self._outputs: list[ITensor] = []
        self._onnx: bytes | None = None

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_input(self, index: int) -> ITensor:
        return self._inputs[index]

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]


class OnnxParser(_Bound):
    def __init__(self, network: INetworkDefinition, logger: Any) -> None:
        self._network = network
        self._errors: list[ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> ParserError:
        return self._errors[index]

    def parse_from_file(self, model: str) -> bool:
        import onnx

        self._flavour.call("parse_from_file", model)
        data = Path(model).read_bytes()
        if self._flavour.failing("parse"):
            self._errors = [
                ParserError("UNSUPPORTED_NODE", "no importer registered for op: FancyOp", "fancy_0"),
                ParserError("INVALID_GRAPH", "graph has a dangling output"),
            ]
            return False
        try:
            proto = onnx.load_from_string(data)
        except Exception as exc:  # noqa: BLE001 - TensorRT reports any bad file as a parser error
            self._errors = [ParserError("MODEL_DESERIALIZE_FAILED", f"failed to parse the ONNX model: {exc}")]
            return False
        initializers = {i.name for i in proto.graph.initializer}
        self._network._inputs = [ITensor(v.name, _dims(v)) for v in proto.graph.input if v.name not in initializers]
        self._network._outputs = [ITensor(v.name, _dims(v)) for v in proto.graph.output]
        self._network._onnx = data
        return True


def _dims(value) -> tuple[int, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)


# --- the builder -----------------------------------------------------------------------------


class IOptimizationProfile:
    def __init__(self) -> None:
        self._shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, input: str, min: tuple, opt: tuple, max: tuple) -> None:  # noqa: A002 - TensorRT's names
        self._shapes[input] = (tuple(min), tuple(opt), tuple(max))


class ITimingCache:
    def __init__(self, entries: int, version: str) -> None:
        self._entries, self._version = entries, version

    def serialize(self) -> bytes:
        return _CACHE_MAGIC + json.dumps({"version": self._version, "entries": self._entries}).encode()


class IBuilderConfig(_Bound):
    def __init__(self) -> None:
        self._flags: set[Any] = {self._flavour.BuilderFlag.TF32}  # TF32 is on by default
        self._profiles: list[IOptimizationProfile] = []
        self._pools: dict[Any, int] = {}
        self._cache: ITimingCache | None = None
        self.builder_optimization_level = 3
        self.profiling_verbosity = self._flavour.ProfilingVerbosity.LAYER_NAMES_ONLY
        self.progress_monitor = None

    def set_flag(self, flag) -> None:
        self._flavour.call("set_flag", flag.name)
        self._flags.add(flag)

    def clear_flag(self, flag) -> None:
        self._flavour.call("clear_flag", flag.name)
        self._flags.discard(flag)

    def get_flag(self, flag) -> bool:
        return flag in self._flags

    def set_memory_pool_limit(self, pool, pool_size: int) -> None:
        self._flavour.call("set_memory_pool_limit", (pool.name, pool_size))
        self._pools[pool] = pool_size

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self._flavour.call("add_optimization_profile", dict(profile._shapes))
        valid = all(all(a <= b <= c for a, b, c in zip(*shapes)) for shapes in profile._shapes.values())
        if self._flavour.failing("profile") or not profile._shapes or not valid:
            self._flavour.error("IOptimizationProfile: min <= opt <= max must hold for every dimension")
            return -1
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache | None:
        data = bytes(serialized_timing_cache)
        if not data:
            return ITimingCache(0, self._flavour.version)
        if not data.startswith(_CACHE_MAGIC):
            self._flavour.error("timing cache blob is corrupted")
            return None
        stored = json.loads(data[len(_CACHE_MAGIC) :])
        return ITimingCache(int(stored["entries"]), stored["version"])

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self._flavour.call("set_timing_cache", cache._entries)
        if cache._version != self._flavour.version and not ignore_mismatch:
            self._flavour.error(f"timing cache was created by TensorRT {cache._version}")
            return False
        self._cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self._cache


class Builder(_Bound):
    def __init__(self, logger: Any) -> None:
        self._flavour.register(logger)

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        self._flavour.call("create_network", flags)
        return self._flavour.module.INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return self._flavour.module.IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> bytes | None:
        flavour = self._flavour
        fp16 = flavour.ten and flavour.BuilderFlag.FP16 in config._flags  # the attribute does not exist on 11
        flavour.call("build_serialized_network", {"fp16_flag": fp16, "strongly_typed": network._strongly_typed})
        refusal = _build_refusal(flavour, network, config, fp16)
        if refusal is not None:
            flavour.error(refusal)
            return None
        if config._cache is not None:
            config._cache._entries += 1  # the kernels timed in this build
        tensor = network._inputs[0]
        profile = config._profiles[0]._shapes[tensor.name] if config._profiles else (tensor.shape,) * 3
        header = {
            "version": flavour.version,
            "input": tensor.name,
            "input_shape": list(tensor.shape),
            "output": network._outputs[0].name,
            "output_shape": list(network._outputs[0].shape),
            "profile": [list(s) for s in profile],
            "fp16_flag": fp16,
            "verbosity": config.profiling_verbosity.name,
        }
        head = json.dumps(header).encode()
        return _MAGIC + len(head).to_bytes(4, "little") + head + network._onnx


def _build_refusal(flavour: Flavour, network: INetworkDefinition, config: IBuilderConfig, fp16: bool) -> str | None:
    """What TensorRT logs when it refuses to build this network with this config, or ``None``."""
    if flavour.failing("build"):
        return "Error Code 2: Internal Error (no kernel fits the workspace limit)"
    if fp16 and network._strongly_typed:
        return "BuilderFlag::kFP16 is not allowed for a strongly typed network"
    if any(-1 in t.shape for t in network._inputs) and not config._profiles:
        return "Network has dynamic or shape inputs, but no optimization profile has been defined"
    return None


# --- the engine, its context and the runtime ----------------------------------------------------------


class ExecutionContextAllocationStrategy(enum.IntEnum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


class EngineInspector:
    def __init__(self, engine: "ICudaEngine") -> None:
        self._engine = engine

    def get_engine_information(self, format) -> str:  # noqa: A002 - TensorRT's name
        if self._engine._header["verbosity"] == "DETAILED":
            layers = [{"Name": "conv1", "LayerType": "CaskConvolution", "TacticName": "sm90_xmma", "Outputs": [{"Format/Datatype": "Row major linear FP32"}]}]
        else:
            layers = ["conv1", "fc"]
        return json.dumps({"Layers": layers})


class ICudaEngine(_Bound):
    def __init__(self, header: dict, onnx_bytes: bytes) -> None:
        self._header = header
        self._onnx = onnx_bytes
        self._session = None

    @property
    def num_io_tensors(self) -> int:
        return 2

    @property
    def num_optimization_profiles(self) -> int:
        return 1

    @property
    def device_memory_size_v2(self) -> int:
        largest = self._header["profile"][2]
        return int(np.prod(largest)) * 4 * 4  # a few activations of the largest batch

    def get_tensor_name(self, index: int) -> str:
        return (self._header["input"], self._header["output"])[index]

    def get_tensor_mode(self, name: str):
        modes = self._flavour.TensorIOMode
        return modes.INPUT if name == self._header["input"] else modes.OUTPUT

    def get_tensor_dtype(self, name: str):
        return self._flavour.DataType[self._flavour.controls.io_dtype]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._header["input_shape" if name == self._header["input"] else "output_shape"])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        return [tuple(s) for s in self._header["profile"]]

    def create_execution_context(self, strategy=ExecutionContextAllocationStrategy.STATIC):
        self._flavour.call("create_execution_context", None)
        if self._flavour.failing("context"):
            self._flavour.error("Requested amount of GPU memory could not be allocated (out of memory)")
            return None
        return self._flavour.module.IExecutionContext(self)

    def create_engine_inspector(self) -> EngineInspector:
        return EngineInspector(self)

    def _session_for(self):
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            self._session = ort.InferenceSession(self._onnx, options, providers=["CPUExecutionProvider"])
        return self._session


class IExecutionContext(_Bound):
    def __init__(self, engine: ICudaEngine) -> None:
        self._engine = engine
        self._shape: tuple[int, ...] | None = None
        self._addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        self._flavour.call("set_input_shape", tuple(shape))
        lo, _, hi = self._engine._header["profile"]
        inside = len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi))
        if self._flavour.failing("shape") or not inside:
            self._flavour.error(f"IExecutionContext::setInputShape: shape {tuple(shape)} is outside the profile")
            return False
        self._shape = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name == self._engine._header["input"]:
            return self._shape
        return (self._shape[0], *self._engine._header["output_shape"][1:])

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self._flavour.call("set_tensor_address", (name, memory))
        if memory % _ALIGN or self._flavour.failing("address"):
            self._flavour.error(f"IExecutionContext::setTensorAddress: address of {name} is not 256-byte aligned")
            return False  # and the previous address stays bound
        self._addresses[name] = memory
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._addresses.get(name, 0)

    def execute_async_v3(self, stream_handle: int) -> bool:
        self._flavour.call("execute_async_v3", stream_handle)
        if self._flavour.failing("execute"):
            self._flavour.error("an illegal memory access was encountered")
            return False
        header = self._engine._header
        x = _read(self._addresses[header["input"]], self._shape, np.float32)
        out = self._engine._session_for().run(None, {header["input"]: x})[0]
        _write(self._addresses[header["output"]], np.ascontiguousarray(out, dtype=np.float32))
        return True


class Runtime(_Bound):
    def __init__(self, logger: Any) -> None:
        self._flavour.register(logger)

    def deserialize_cuda_engine(self, serialized_engine) -> ICudaEngine | None:
        flavour = self._flavour
        data = bytes(serialized_engine)
        flavour.call("deserialize_cuda_engine", len(data))
        if flavour.failing("deserialize") or not data.startswith(_MAGIC):
            flavour.error("Error Code 1: Serialization (magic tag does not match)")
            return None
        size = int.from_bytes(data[len(_MAGIC) : len(_MAGIC) + 4], "little")
        start = len(_MAGIC) + 4
        header = json.loads(data[start : start + size])
        if header["version"] != flavour.version:
            flavour.error(
                "The engine plan file is not compatible with this version of TensorRT, "
                f"expecting library version {flavour.version} got {header['version']}"
            )
            return None
        return flavour.module.ICudaEngine(header, data[start + size :])


#: The types a fake module exposes under TensorRT's names; those needing the flavour are bound to it.
_TYPES = (
    ILogger, ParserError, ITensor, INetworkDefinition, OnnxParser, IOptimizationProfile, ITimingCache, IBuilderConfig,
    Builder, ExecutionContextAllocationStrategy, EngineInspector, ICudaEngine, IExecutionContext, Runtime,
)


def make_tensorrt(flavour: str) -> types.ModuleType:
    """A fresh fake ``tensorrt`` module of ``flavour`` (``"10.13"`` or ``"11.4"``)."""
    trt = types.ModuleType("tensorrt")
    bound = Flavour(flavour, trt)
    trt.__version__ = bound.version
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt._fake = bound.controls
    for cls in _TYPES:
        setattr(trt, cls.__name__, type(cls.__name__, (cls,), {"_flavour": bound}) if issubclass(cls, _Bound) else cls)
    for name, enumeration in bound.enums().items():
        setattr(trt, name, enumeration)
    return trt


def _read(address: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    """The array of ``shape`` at ``address`` (a copy: the bound memory is the caller's)."""
    count = int(np.prod(shape))
    buffer = (ctypes.c_byte * (count * np.dtype(dtype).itemsize)).from_address(address)
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape).copy()


def _write(address: int, values: np.ndarray) -> None:
    ctypes.memmove(address, values.ctypes.data, values.nbytes)


class CpuDevice:
    """Stands in for :class:`toolkit.core.trt.library.CudaDevice` on a CPU: torch CPU tensors play device
    memory, aligned as the CUDA caching allocator aligns blocks; streams are synchronous."""

    class _Stream:
        cuda_stream = 0

        def synchronize(self) -> None:
            pass

    def __init__(self, device: str | None = None):
        import torch

        text = str(device) if device and str(device).startswith("cuda") else "cuda"
        self.index = int(text.split(":")[1]) if ":" in text else 0
        self.torch_device = torch.device("cpu")
        self.activations: list[int] = []

    def __str__(self) -> str:
        return f"cuda:{self.index}"

    def name(self) -> str:
        return "NVIDIA H100 80GB HBM3"

    def capability(self) -> str:
        return "9.0"

    def activate(self):
        self.activations.append(self.index)
        return contextlib.nullcontext()

    def new_stream(self):
        return self._Stream()

    def current_stream(self):
        return self._Stream()

    def use_stream(self, stream):
        return contextlib.nullcontext()

    @staticmethod
    def stream_handle(stream) -> int:
        return stream.cuda_stream

    @staticmethod
    def wait(stream, other) -> None:
        pass

    @staticmethod
    def keep_until_done(tensor, stream) -> None:
        pass

    def empty(self, shape: tuple[int, ...], dtype):
        import torch

        itemsize = torch.empty((), dtype=dtype).element_size()
        count = int(np.prod(shape)) if shape else 1
        raw = torch.empty(count * itemsize + _ALIGN, dtype=torch.uint8)
        offset = (-raw.data_ptr()) % _ALIGN
        return raw[offset : offset + count * itemsize].view(dtype).view(shape)

    def synchronize(self) -> None:
        pass
