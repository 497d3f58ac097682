"""Checkpoints: the rtk format, foreign torchvision-style files, and architecture inference.

An rtk checkpoint is a plain dict of builtins and tensors::

    {"format": "rtk.checkpoint", "version": 1, "spec": {...}, "preprocess": {...},
     "state_dict": {...}, "train": {...}}

so ``torch.load(..., weights_only=True)`` always reads it. Foreign checkpoints (a bare
``state_dict``, one wrapped under ``state_dict``/``model``/``model_state_dict``, keys prefixed
``module.``) load too: their architecture is inferred from tensor shapes.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from toolkit.errors import RtkError, first_sentence
from toolkit.files import USER_ERRNOS, not_regular, os_error, os_reason
from toolkit.models import ARCH_INFO, MLP_HIDDEN, create_model
from toolkit.spec import ModelSpec, Preprocess

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

FORMAT = "rtk.checkpoint"
VERSION = 1
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net", "weights")
PREFIXES = ("module.", "_orig_mod.", "model.")


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        spec: the network it holds (stored, or inferred from tensor shapes).
        preprocess: how inputs must be prepared (stored, or ImageNet's default).
        state_dict: weights with torchvision key names.
        train: training record (epoch, metrics, optimizer state…); empty for foreign files.
        source: ``"rtk"`` or ``"foreign"`` (spec inferred).
        path: the file it came from, if any.
    """

    spec: ModelSpec
    preprocess: Preprocess
    state_dict: dict[str, "torch.Tensor"]
    train: dict[str, Any] = field(default_factory=dict)
    source: str = "rtk"
    path: Path | None = None

    def build_model(self) -> "nn.Module":
        """The network with these weights loaded, in eval mode.

        Raises:
            RtkError: the weights hold NaN/Inf, or do not fit the spec's architecture (see :meth:`check_fit`).
        """
        self.check_finite()
        model = create_model(self.spec)
        self._check_against(model.state_dict())
        model.load_state_dict(self.state_dict)
        return model.eval()

    def check_finite(self) -> None:
        """Refuse weights that hold NaN or infinity: every output of such a network is meaningless.

        Raises:
            RtkError: naming the first tensor with a non-finite value.
        """
        import torch

        for key, tensor in self.state_dict.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise RtkError(
                    f"the weights in {self.path or 'the checkpoint'} hold NaN/Inf in {key} ({bad} of {tensor.numel()} values), "
                    "so every answer the model gave would be meaningless"
                )

    def check_fit(self) -> None:
        """Check that the weights fit the spec's architecture, without building the network.

        The architecture is created on the meta device, which gives every tensor's shape but
        allocates and initialises nothing, so this is cheap even for the largest models.

        Raises:
            RtkError: naming the first missing, unexpected or wrongly shaped tensor.
        """
        import torch

        with torch.device("meta"):
            model = create_model(self.spec)
        self._check_against(model.state_dict())

    def _check_against(self, expected: Mapping[str, "torch.Tensor"]) -> None:
        # BatchNorm fills in a missing num_batches_tracked itself (files saved before it
        # existed lack it), so only the other tensors must be present.
        missing = [k for k in expected if k not in self.state_dict and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in self.state_dict if k not in expected]
        problems = []
        if missing:
            problems.append(f"missing {len(missing)} tensor(s) such as {missing[0]}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected tensor(s) such as {unexpected[0]}")
        wrong = [k for k in expected if k in self.state_dict and tuple(self.state_dict[k].shape) != tuple(expected[k].shape)]
        if wrong:
            key = wrong[0]
            more = f" ({len(wrong) - 1} more tensor(s) differ)" if len(wrong) > 1 else ""
            problems.append(
                f"{key} is {tuple(self.state_dict[key].shape)} in the checkpoint but {self.spec.arch} needs "
                f"{tuple(expected[key].shape)}{more}"
            )
        if problems:
            raise RtkError(f"{self.path or 'the checkpoint'} does not fit its architecture {self.spec.arch}: {'; '.join(problems)}")


def save_checkpoint(
    path: str | os.PathLike,
    model: "nn.Module",
    spec: ModelSpec,
    preprocess: Preprocess,
    train: Mapping[str, Any] | None = None,
) -> Path:
    """Write an rtk checkpoint atomically.

    The file is written to a temporary name in the same folder and renamed into place, so an
    interrupted save never leaves a half-written file under the final name.

    Args:
        path: destination ``.pth`` file; parent folders are created.
        model: the network (its ``state_dict`` is saved; DDP/compile wrappers are unwrapped).
        spec: the network's spec.
        preprocess: the input pipeline it was trained with.
        train: training record: epoch, metrics, optimizer/scheduler state (plain types only).

    Returns:
        The path written.
    """
    state = {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "spec": spec.to_dict(),
        "preprocess": preprocess.to_dict(),
        "state_dict": state,
        "train": dict(train or {}),
    }
    return atomic_torch_save(payload, path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the destination folder, then rename into place."""
    import torch

    from toolkit.files import staged

    with staged(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


def unwrap_model(model: "nn.Module") -> "nn.Module":
    """The bare network inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def read_torch_file(path: str | os.PathLike) -> Any:
    """``torch.load`` a file safely (``weights_only=True``), turning every failure into one sentence."""
    import torch

    path = Path(path)
    if not path.exists():
        raise RtkError(f"{path} does not exist")
    if path.is_dir():
        raise RtkError(f"{path} is a folder, not a checkpoint file")
    if not_regular(path):  # a named pipe would block torch.load, /dev/zero would never end
        raise RtkError(f"{path} is {not_regular(path)}, not a checkpoint file")
    if path.stat().st_size == 0:
        raise RtkError(f"{path} is empty (0 bytes), not a checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Detected pickle protocol N" on foreign pickles
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _unpickling_error(path, str(exc)) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno in USER_ERRNOS:  # no permission, an I/O error…
            raise os_error(exc, path, "read") from None
        # torch reports a cut-off zip as an OSError (EINVAL, from seeking past the end) or a
        # RuntimeError with advice after the first sentence; only that first sentence is quoted.
        text = f"reading it fails: {os_reason(exc)}" if type(exc) is OSError else _first_line(str(exc))
        if zipfile.is_zipfile(path) or _head(path) == b"PK\x03\x04" or "zip" in text.lower() or isinstance(exc, EOFError):
            raise RtkError(f"{path} is truncated or corrupt: it cannot be read as a checkpoint ({text})") from None
        raise RtkError(f"{path} is not a PyTorch checkpoint ({text})") from None
    except (IndexError, KeyError, TypeError, UnicodeDecodeError):
        # The weights-only unpickler trips over arbitrary bytes in these ways ("KeyError: 101"
        # for a text file): what the bytes are says more than the exception.
        what = "it holds text" if _is_text(_head(path, 512)) else "neither the zip archive nor the pickle torch.save writes"
        raise RtkError(f"{path} is not a PyTorch checkpoint ({what})") from None


def _head(path: Path, size: int = 4) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(size)


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in head


def _unpickling_error(path: Path, text: str) -> RtkError:
    """Tell a pickle that references code apart from a file that is no pickle at all.

    torch's weights-only reader fails on both alike ("Unsupported operand …" for random bytes,
    a ``.npy`` file, or any pickle of protocol 4 and up), so its message alone cannot decide:
    the refusal is kept for files that really do name a Python global outside torch's allowlist.
    """
    import torch

    named = _GLOBAL_IN_MESSAGE.search(text)
    if named:
        unsafe = [named.group(1)]
    elif zipfile.is_zipfile(path):
        find = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch 2.5 and later
        try:
            unsafe = find(path) if find else []
        except (ValueError, RuntimeError, KeyError, pickle.UnpicklingError, zipfile.BadZipFile):
            unsafe = []
    else:
        unsafe = _pickle_globals(path)
        if unsafe is None:
            head = _head(path, 512)
            what = "it is a NumPy .npy array" if head.startswith(b"\x93NUMPY") else "it holds text" if _is_text(head) else "neither the zip archive nor the pickle torch.save writes"
            return RtkError(f"{path} is not a PyTorch checkpoint ({what})")
        if not unsafe:
            return RtkError(f"{path} is a plain Python pickle, not a PyTorch checkpoint; save the weights with torch.save(model.state_dict(), …)")
    if not unsafe:
        reason = next((line.strip() for line in text.splitlines() if line.strip().startswith(("Unsupported", "Trying"))), _first_line(text))
        return RtkError(f"{path} is not a PyTorch checkpoint rtk can read ({first_sentence(reason)})")
    # Unfamiliar names first: they are the ones worth a look.
    names = sorted(dict.fromkeys(unsafe), key=lambda g: g.startswith(_TRUSTED_MODULES))
    shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
    return RtkError(
        f"refusing to load {path}: it holds pickled Python objects beyond plain tensors and containers "
        f"(it references {shown}), which could run code when loaded; only weights-only checkpoints are read"
    )


# torch names the global it refused, e.g. "Unsupported global: GLOBAL posix.system was not an
# allowed global…" or "Trying to load unsupported GLOBAL posix.system whose module posix is blocked".
_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)")
# Modules whose globals ordinary checkpoints name; a refusal lists the other ones first.
_TRUSTED_MODULES = ("torch.", "collections.", "builtins.", "_codecs.", "numpy.")
_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}


def _pickle_globals(path: Path) -> list[str] | None:
    """The globals (``module.name``) the first pickle in a file names, or ``None`` if it is no complete pickle.

    The opcodes are only parsed (``pickletools.genops``), never executed. ``STACK_GLOBAL`` takes
    its two names from the strings pushed just before it, possibly through the memo.
    """
    import pickletools

    found: list[str] = []
    strings: list[str | None] = []  # strings pushed so far; the last two name a STACK_GLOBAL
    memo: dict[int, str | None] = {}
    previous = None
    try:
        with open(path, "rb") as fh:
            for op, arg, _ in pickletools.genops(fh):
                if op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL":
                    found.append(".".join(str(s) for s in strings[-2:]))
                elif op.name in _STRING_OPS:
                    strings.append(arg if isinstance(arg, str) else arg.decode("latin-1") if isinstance(arg, bytes) else None)
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    strings.append(memo.get(int(arg)))
                elif op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                    key = len(memo) if op.name == "MEMOIZE" else int(arg)
                    memo[key] = strings[-1] if previous in _STRING_OPS | {"GET", "BINGET", "LONG_BINGET"} and strings else None
                previous = op.name
                if op.name == "STOP":
                    return found
    except (ValueError, EOFError, pickle.UnpicklingError, UnicodeDecodeError):
        return None
    return None


def _first_line(text: str) -> str:
    return first_sentence(text) if text.strip() else "unreadable"


def load_checkpoint(path: str | os.PathLike, spec_override: ModelSpec | None = None) -> Checkpoint:
    """Load an rtk or foreign checkpoint.

    Args:
        path: ``.pth``/``.pt`` file.
        spec_override: use this spec instead of the stored or inferred one (class names, say).

    Returns:
        The checkpoint with its spec, preprocess and weights.

    Raises:
        RtkError: the file is missing, truncated, not a checkpoint, unsafe to unpickle, or of an
            architecture that cannot be recognised.
    """
    path = Path(path)
    obj = read_torch_file(path)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        return _from_rtk(obj, path, spec_override)
    state = extract_state_dict(obj, path)
    spec = spec_override or infer_spec(state, path)
    pre = Preprocess.imagenet().matching(spec)
    return Checkpoint(spec, pre, state, {}, "foreign", path)


def _from_rtk(obj: Mapping[str, Any], path: Path, spec_override: ModelSpec | None) -> Checkpoint:
    version = obj.get("version")
    if version != VERSION:
        raise RtkError(f"{path} is an rtk checkpoint of version {version}; this rtk reads version {VERSION}")
    if "state_dict" not in obj:
        raise RtkError(f"{path} is an rtk checkpoint without weights (it has no state_dict, only {', '.join(map(str, obj))})")
    try:
        spec = spec_override or ModelSpec.from_dict(obj.get("spec", {}))
        pre = Preprocess.from_dict(obj.get("preprocess", {}))
    except RtkError as exc:  # the message names the field, not the file
        raise RtkError(f"{path} is a damaged rtk checkpoint: {exc}") from None
    state = extract_state_dict(obj["state_dict"], path)
    return Checkpoint(spec, pre, state, dict(obj.get("train") or {}), "rtk", path)


def extract_state_dict(obj: Any, path: Path | None = None) -> dict[str, "torch.Tensor"]:
    """Find the weights in a loaded object: a bare state_dict or one wrapped under a known key.

    Prefixes added by DataParallel/DDP (``module.``), ``torch.compile`` (``_orig_mod.``) or a
    wrapper module (``model.``) are stripped.
    """
    import torch

    where = f"{path}" if path else "the checkpoint"
    if not isinstance(obj, Mapping):
        raise RtkError(f"{where} holds a {type(obj).__name__}, not a state_dict of named tensors")
    for _ in range(3):  # wrappers can nest: {"model": {"state_dict": ...}}
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(map(str, list(obj)[:6])) or "nothing"
        raise RtkError(f"{where} holds no weights: found keys {keys}, expected tensors or one of {', '.join(WRAPPER_KEYS)}")
    odd = next((k for k in tensors if not isinstance(k, str)), None)
    if odd is not None:
        raise RtkError(f"{where} is not a state_dict: its tensors must be named by strings, but one is keyed {odd!r} ({type(odd).__name__})")
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def infer_spec(state: Mapping[str, "torch.Tensor"], path: Path | None = None) -> ModelSpec:
    """Recognise a torchvision ResNet/ResNeXt from the shapes of its tensors.

    Blocks per stage give the depth, ``conv3`` marks bottleneck blocks, the first stage's
    3×3 conv gives groups and width per group (ResNeXt, wide), ``conv1`` gives stem and input
    channels, and the head's weights give its kind and the number of classes.

    Raises:
        RtkError: naming what was found when it matches no known architecture.
    """
    where = f"{path}" if path else "the checkpoint"
    sample = ", ".join(list(state)[:4])
    conv1 = state.get("conv1.weight")
    if conv1 is None or "layer1.0.conv1.weight" not in state:
        raise RtkError(f"{where} is not a ResNet/ResNeXt state_dict: no conv1/layer1 weights (keys start {sample})")
    if conv1.ndim != 4 or conv1.shape[-1] not in (3, 7) or conv1.shape[0] != 64:
        raise RtkError(f"{where} has a conv1 of shape {tuple(conv1.shape)}; expected 64 filters of 7×7 or 3×3")
    stem = "imagenet" if conv1.shape[-1] == 7 else "small"
    in_chans = int(conv1.shape[1])

    # Every ResNet block has a conv2; its shape is what tells groups and width apart below.
    conv2 = state.get("layer1.0.conv2.weight")
    if conv2 is None or conv2.ndim != 4:
        found = "no layer1.0.conv2.weight" if conv2 is None else f"a layer1.0.conv2.weight of shape {tuple(conv2.shape)}"
        raise RtkError(f"{where} holds an unknown ResNet layout: it has conv1 and layer1.0.conv1 but {found}")
    layers = tuple(_count_blocks(state, i) for i in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in state
    width, per_group = int(conv2.shape[0]), int(conv2.shape[1])
    groups = width // per_group if per_group else 0
    width_per_group = width // groups if bottleneck and groups else 64

    arch = next(
        (
            info.name
            for info in ARCH_INFO.values()
            if info.layers == layers
            and info.bottleneck == bottleneck
            and (not bottleneck or (info.groups == groups and info.width_per_group == width_per_group))
        ),
        None,
    )
    if arch is None:
        kind = "bottleneck" if bottleneck else "basic"
        raise RtkError(
            f"{where} holds an unknown ResNet layout: {kind} blocks {list(layers)}, groups {groups}, "
            f"width per group {width_per_group}; known: {', '.join(ARCH_INFO)}"
        )
    head, num_classes = _infer_head(state, ARCH_INFO[arch].feature_dim, where)
    return ModelSpec(arch=arch, num_classes=num_classes, head=head, in_chans=in_chans, stem=stem)


def _count_blocks(state: Mapping[str, Any], stage: int) -> int:
    prefix = f"layer{stage}."
    indices = {int(k.split(".")[1]) for k in state if k.startswith(prefix) and k.split(".")[1].isdigit()}
    return len(indices)


def _infer_head(state: Mapping[str, "torch.Tensor"], feature_dim: int, where: str) -> tuple[str, int]:
    fc = state.get("fc.weight")
    if fc is not None and fc.ndim == 2 and fc.shape[1] == feature_dim:
        return "fc", int(fc.shape[0])
    first, last = state.get("fc.0.weight"), state.get("fc.2.weight")
    if (
        first is not None
        and last is not None
        and tuple(first.shape) == (MLP_HIDDEN, feature_dim)
        and last.ndim == 2
        and last.shape[1] == MLP_HIDDEN
    ):
        return "mlp1024", int(last.shape[0])
    found = ", ".join(f"{k} {tuple(v.shape)}" for k, v in state.items() if k.startswith("fc")) or "none"
    raise RtkError(
        f"{where} has an unknown classification head (found {found}); expected fc ({feature_dim} inputs) "
        f"or fc.0/fc.2 ({feature_dim}→{MLP_HIDDEN}→classes)"
    )


def load_model(path: str | os.PathLike, spec_override: ModelSpec | None = None) -> tuple["nn.Module", Checkpoint]:
    """Load a checkpoint and build its network in eval mode.

    Returns:
        ``(model, checkpoint)``.

    Raises:
        RtkError: as :func:`load_checkpoint`, or the weights do not fit the architecture.
    """
    ckpt = load_checkpoint(path, spec_override)
    return ckpt.build_model(), ckpt
