"""Weights from the archives torch writes for deployment, read without running anything in them.

- **TorchScript** (``torch.jit.save``; a zip holding ``code/``, ``constants.pkl``, ``data.pkl`` and
  ``data/N``): ``data.pkl`` is the module tree, pickled. It is read by a restricted unpickler: the
  module classes it names (``__torch__.…``) become inert attribute bags, tensors are rebuilt from
  the ``data/`` records as views of their raw bytes, and any other global is refused by name. The
  TorchScript code in ``code/`` is never compiled or run (``torch.jit.load`` would do both).
- **torch.export** (``.pt2``, ``torch.export.save``): ``data/weights/MODEL_weights_config.json``
  names each weight's record, dtype, sizes, strides and offset; a raw record is viewed as a tensor,
  and a pickled one (a tensor subclass) is read with ``torch.load(weights_only=True)``. The
  graph is not deserialised. (``torch.export.load`` unpickles such weights with
  ``weights_only=False``.) The older layout (``serialized_state_dict.pt``) is a ``torch.save``
  file inside the zip, read weights-only.
- **AOTInductor packages** (``.pt2`` holding compiled code) are refused by name.

Either reader returns the weights as one flat ``state_dict`` with :data:`CONTAINER_KEY` naming the
archive, as :func:`toolkit.core.checkpoint_file.read_checkpoint_file` returns a safetensors header.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from toolkit.core.errors import RtkError, first_line

#: The entry of a returned dict that names the archive the weights came from.
CONTAINER_KEY = "__container__"
TORCHSCRIPT = "TorchScript archive"
TORCH_EXPORT = "torch.export archive"
AOTINDUCTOR = "AOTInductor package"

# TorchScript storages by the class name data.pkl gives them.
_STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool",
}
# torch.export's ScalarType numbers (torch/_export/serde/schema.py).
_EXPORT_DTYPES = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float16", 7: "float32", 8: "float64", 12: "bool", 13: "bfloat16"}
_WEIGHTS_CONFIG = re.compile(r"(?:[^/]+/)?data/weights/(.+)_weights_config\.json")


def archive_kind(path: str | Path) -> str | None:
    """:data:`TORCHSCRIPT`, :data:`TORCH_EXPORT`, :data:`AOTINDUCTOR`, or ``None`` for any other file.

    Only the zip's table of contents is read.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    inner = {name.split("/", 1)[1] for name in names if "/" in name}
    if "constants.pkl" in inner and "data.pkl" in inner and any(n.startswith("code/") for n in inner):
        return TORCHSCRIPT
    if any(n.startswith("data/aotinductor/") for n in inner) and not any(_WEIGHTS_CONFIG.fullmatch(n) for n in names):
        return AOTINDUCTOR
    if any(n.startswith("models/") and n.endswith(".json") for n in inner) or "serialized_exported_program.json" in inner | set(names):
        return TORCH_EXPORT
    return None


def read_archive(path: Path, kind: str) -> dict[str, Any]:
    """The weights of a TorchScript or torch.export archive (see the module's description).

    Raises:
        RtkError: an AOTInductor package, an archive that names code or objects beyond tensors,
            or one whose records are missing or damaged.
    """
    if kind == AOTINDUCTOR:
        raise RtkError(
            f"{path} is an {AOTINDUCTOR} (.pt2 holding compiled code from torch._inductor.aoti_compile_and_package), "
            "whose weights rtk does not read; export the model's state_dict (torch.save(model.state_dict(), …)) "
            "or a torch.export archive (torch.export.save) instead"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            state = _script_weights(archive, path) if kind == TORCHSCRIPT else _export_weights(archive, path)
    except (zipfile.BadZipFile, KeyError, ValueError, EOFError, RuntimeError, OSError) as exc:
        raise RtkError(f"{path} is a damaged {kind}: {first_line(exc, 200)}") from None
    return {CONTAINER_KEY: kind, **state}


# --- TorchScript ----------------------------------------------------------------------------------


class ScriptObject:
    """A module or object of a TorchScript archive, as the attributes it was pickled with; no behaviour."""

    def __init__(self, qualified_name: str):
        self.qualified_name = qualified_name
        self.attributes: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.attributes = dict(state)


class _ScriptUnpickler(pickle.Unpickler):
    """Builds only inert :class:`ScriptObject` bags, containers and tensors viewed on the archive's records."""

    def __init__(self, archive: zipfile.ZipFile, root: str, path: Path):
        super().__init__(io.BytesIO(archive.read(f"{root}/data.pkl")))
        self.archive, self.root, self.path = archive, root, path

    def find_class(self, module: str, name: str) -> Any:
        import torch

        if module.startswith("__torch__"):
            return _script_class(f"{module}.{name}")
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return getattr(torch, _STORAGE_DTYPES[name])
        if module == "torch.jit._pickle" and name in _TYPED_LISTS:
            return _TYPED_LISTS[name]
        raise pickle.UnpicklingError(f"it references {module}.{name}, which is neither a module, a tensor nor a container")

    def persistent_load(self, pid: Any) -> Any:
        import torch

        kind, dtype, key, _location, numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"it holds a record of an unknown kind ({kind!r})")
        data = bytearray(self.archive.read(f"{self.root}/data/{key}"))
        flat = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
        if flat.numel() != numel:
            raise ValueError(f"record data/{key} holds {flat.numel()} values where {numel} are expected")
        return flat


def _script_class(qualified_name: str) -> Callable[..., ScriptObject]:
    class Named(ScriptObject):
        def __new__(cls, *args: Any) -> "Named":
            obj = object.__new__(cls)
            ScriptObject.__init__(obj, qualified_name)
            return obj

        def __init__(self, *args: Any) -> None:  # pickle's NEWOBJ calls __new__ only
            pass

    return Named


def _rebuild_tensor(flat, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    # A view of the record's values, as torch's own _rebuild_tensor_v2 makes one of its storage.
    return flat.as_strided(tuple(size), tuple(stride), offset)


# TorchScript wraps typed lists in these; the values themselves are plain.
_TYPED_LISTS: dict[str, Callable[..., Any]] = {
    "build_intlist": list, "build_doublelist": list, "build_boollist": list, "build_tensorlist": list,
    "build_complexlist": list, "restore_type_tag": lambda value, _tag=None: value,
}


def _script_weights(archive: zipfile.ZipFile, path: Path) -> dict[str, Any]:
    import torch

    root = next(name[: -len("/data.pkl")] for name in archive.namelist() if name.endswith("/data.pkl") and name.count("/") == 1)
    _check_byteorder(archive, root)
    try:
        module = _ScriptUnpickler(archive, root, path).load()
    except pickle.UnpicklingError as exc:
        raise RtkError(f"refusing to read {path}, a {TORCHSCRIPT}: {exc}; save the model's state_dict instead") from None
    if not isinstance(module, ScriptObject):
        raise RtkError(f"{path} is a {TORCHSCRIPT} that holds a {type(module).__name__}, not a module")
    state: dict[str, Any] = {}

    def collect(obj: ScriptObject, prefix: str) -> None:
        for name, value in obj.attributes.items():
            if isinstance(value, torch.Tensor):
                state[prefix + name] = value
            elif isinstance(value, ScriptObject):
                collect(value, f"{prefix}{name}.")

    collect(module, "")
    return state


def _check_byteorder(archive: zipfile.ZipFile, root: str) -> None:
    names = set(archive.namelist())
    for name in (f"{root}/byteorder", f"{root}/.data/byteorder"):
        if name in names and archive.read(name).strip() not in (b"", b"little"):
            raise ValueError(f"its tensors are stored {archive.read(name).decode(errors='replace')}-endian")


# --- torch.export -----------------------------------------------------------------------------------


def _export_weights(archive: zipfile.ZipFile, path: Path) -> dict[str, Any]:
    names = archive.namelist()
    configs = {m.group(1): name for name in names if (m := _WEIGHTS_CONFIG.fullmatch(name))}
    if not configs:
        legacy = next((n for n in names if n.split("/")[-1] == "serialized_state_dict.pt"), None)
        if legacy is None:
            raise RtkError(f"{path} is a {TORCH_EXPORT} without weights (no data/weights/*_weights_config.json)")
        return _torch_load_bytes(archive.read(legacy), path, legacy)
    if len(configs) > 1:
        raise RtkError(f"{path} is a {TORCH_EXPORT} of {len(configs)} models ({', '.join(sorted(configs))}); rtk reads an archive of one")
    config_name = next(iter(configs.values()))
    folder = config_name.rsplit("/", 1)[0]
    entries = json.loads(archive.read(config_name))["config"]
    return {fqn: _export_tensor(archive, folder, fqn, entry, path) for fqn, entry in entries.items()}


def _export_tensor(archive: zipfile.ZipFile, folder: str, fqn: str, entry: dict[str, Any], path: Path) -> Any:
    import torch

    data = archive.read(f"{folder}/{entry['path_name']}")
    if entry.get("use_pickle"):
        return _torch_load_bytes(data, path, fqn)
    meta = entry["tensor_meta"]
    dtype_name = _EXPORT_DTYPES.get(meta["dtype"])
    if dtype_name is None:
        raise RtkError(f"{path} is a {TORCH_EXPORT} whose weight {fqn} has a dtype rtk does not read (ScalarType {meta['dtype']})")
    dtype = getattr(torch, dtype_name)
    size, stride = (tuple(_as_int(d) for d in meta[key]) for key in ("sizes", "strides"))
    if not data:
        return torch.zeros(size, dtype=dtype)
    flat = torch.frombuffer(bytearray(data), dtype=dtype)
    return flat.as_strided(size, stride, _as_int(meta.get("storage_offset", {"as_int": 0})))


def _as_int(value: dict[str, Any]) -> int:
    if "as_int" not in value:
        raise ValueError(f"a symbolic size {value} where a number is expected")
    return int(value["as_int"])


def _torch_load_bytes(data: bytes, path: Path, what: str) -> Any:
    import torch

    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise RtkError(f"refusing to read {what} in {path}, a {TORCH_EXPORT}: it pickles objects beyond tensors ({first_line(exc, 160)})") from None
