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
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from toolkit.errors import RtkError
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
        """The network with these weights loaded, in eval mode."""
        model = create_model(self.spec)
        _load_weights(model, self.state_dict, self.path)
        return model.eval()


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
    if path.stat().st_size == 0:
        raise RtkError(f"{path} is empty (0 bytes), not a checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Detected pickle protocol N" on foreign pickles
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text or "Unsupported global" in text or "unsupported" in text.lower():
            raise RtkError(
                f"refusing to load {path}: it holds pickled Python objects beyond plain tensors and "
                "containers, which could run code when loaded; only weights-only checkpoints are read"
            ) from None
        raise RtkError(f"{path} is not a PyTorch checkpoint ({_first_line(text)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        text = _first_line(str(exc))
        if zipfile.is_zipfile(path) or "zip" in text.lower() or isinstance(exc, EOFError):
            raise RtkError(f"{path} is truncated or damaged and cannot be read as a checkpoint ({text})") from None
        raise RtkError(f"{path} is not a PyTorch checkpoint ({text})") from None
    except (IndexError, KeyError, TypeError, UnicodeDecodeError) as exc:
        # The weights-only unpickler trips over arbitrary bytes in these ways.
        raise RtkError(f"{path} is not a PyTorch checkpoint ({type(exc).__name__}: {_first_line(str(exc))})") from None


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "unreadable"
    return line[:200]


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
    spec = spec_override or ModelSpec.from_dict(obj.get("spec", {}))
    pre = Preprocess.from_dict(obj.get("preprocess", {}))
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
    conv1 = state.get("conv1.weight")
    if conv1 is None or conv1.ndim != 4 or "layer1.0.conv1.weight" not in state:
        sample = ", ".join(list(state)[:4])
        raise RtkError(f"{where} is not a ResNet/ResNeXt state_dict: no conv1/layer1 weights (keys start {sample})")
    k = conv1.shape[-1]
    if k not in (3, 7) or conv1.shape[0] != 64:
        raise RtkError(f"{where} has a conv1 of shape {tuple(conv1.shape)}; expected 64 filters of 7×7 or 3×3")
    stem = "imagenet" if k == 7 else "small"
    in_chans = int(conv1.shape[1])

    layers = tuple(_count_blocks(state, i) for i in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in state
    conv2 = state["layer1.0.conv2.weight"]
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


def _load_weights(model: "nn.Module", state: Mapping[str, "torch.Tensor"], path: Path | None) -> None:
    result = model.load_state_dict(state, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"missing {len(result.missing_keys)} tensor(s) such as {result.missing_keys[0]}")
    if result.unexpected_keys:
        problems.append(f"{len(result.unexpected_keys)} unexpected tensor(s) such as {result.unexpected_keys[0]}")
    if problems:
        raise RtkError(f"{path or 'the checkpoint'} does not fit its architecture: {'; '.join(problems)}")


def load_model(path: str | os.PathLike, spec_override: ModelSpec | None = None) -> tuple["nn.Module", Checkpoint]:
    """Load a checkpoint and build its network in eval mode.

    Returns:
        ``(model, checkpoint)``.
    """
    ckpt = load_checkpoint(path, spec_override)
    try:
        model = ckpt.build_model()
    except RuntimeError as exc:  # a shape mismatch between spec and weights
        raise RtkError(f"{path} does not fit its architecture {ckpt.spec.arch}: {_first_line(str(exc))}") from None
    return model, ckpt
