"""Checkpoints: the rtk format, and the foreign files users have, with their weights found and recognised.

An rtk checkpoint is a plain dict of builtins and tensors::

    {"format": "rtk.checkpoint", "version": 1, "spec": {...}, "preprocess": {...},
     "state_dict": {...}, "train": {...}}

so ``torch.load(..., weights_only=True)`` always reads it. Foreign checkpoints load too (files
are read by :mod:`toolkit.core.checkpoint_file`): a bare ``state_dict`` or ``.safetensors`` file, a
TorchScript or torch.export archive, a Hugging Face Hub folder (:mod:`toolkit.core.hub`); one wrapped
under any keys (``state_dict``, ``model``, Lightning's, timm's and mmengine's layouts) and under any
one prefix (``module.``, ``model.``, ``net.``, ``_orig_mod.``…), in torchvision's names or
transformers' or mmpretrain's (:mod:`toolkit.core.layouts`); with EMA weights beside the raw ones.
Their architecture is inferred from tensor shapes (:mod:`toolkit.core.architecture`), their
preprocessing and class names read from what records them (:mod:`toolkit.core.preprocess_sources`),
and what else they record (epoch, best metric, arch name, timm's arguments) is kept for ``rtk inspect``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from toolkit.core.architecture import ANCHOR_KEY, infer_spec, not_a_resnet
from toolkit.core.archives import CONTAINER_KEY
from toolkit.core.checkpoint_file import SAFETENSORS_METADATA, read_checkpoint_file, read_torch_file
from toolkit.core.errors import RtkError
from toolkit.core.hub import HubFolder, open_hub_folder
from toolkit.core.layouts import TRANSFORMERS, Layout, check_transformers_config, layout_refusal, to_torchvision_names
from toolkit.core.models import create_model
from toolkit.core.outputs import staged
from toolkit.core.preprocess_sources import recorded, resolve
from toolkit.core.spec import ModelSpec, Preprocess

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

FORMAT = "rtk.checkpoint"
VERSION = 1
#: The usual wrappers of a state_dict, named when a file holds no weights at all.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net", "weights")
#: The choices of :attr:`CheckpointOptions.weights`.
WEIGHTS = ("ema", "raw")

__all__ = [
    "Checkpoint", "CheckpointOptions", "FoundWeights", "chosen_weights", "find_weights",
    "foreign_record", "infer_spec", "load_checkpoint", "load_model", "read_torch_file", "save_checkpoint",
]


@dataclass(frozen=True)
class CheckpointOptions:
    """How to read a checkpoint; the same two choices on every command that reads one.

    Attributes:
        weights: ``"ema"`` takes a file's EMA weights when it holds them beside the raw ones (as
            timm does when it evaluates), otherwise its only weights; ``"raw"`` takes the trained
            weights themselves.
        trust_pickle: load a file that pickles Python objects (a whole ``torch.save(model)``) by
            running the code it names. Only for files from a trusted source.
    """

    weights: str = "ema"
    trust_pickle: bool = False

    def __post_init__(self) -> None:
        if self.weights not in WEIGHTS:
            raise RtkError(f"weights must be one of {', '.join(WEIGHTS)}, got {self.weights!r}")


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        spec: the network it holds (stored, or inferred from tensor shapes).
        preprocess: how inputs must be prepared (stored, or ImageNet's default).
        state_dict: weights with torchvision key names.
        train: training record (epoch, metrics, optimizer state…); for a foreign file, what it
            records of its training (epoch, best metric, arch name…, see :func:`foreign_record`).
        source: ``"rtk"`` or ``"foreign"`` (spec inferred).
        path: the file it came from, if any.
        weights: ``"ema"`` or ``"raw"``: which of the file's weights these are.
        weights_location: where in the file they were found.
        weights_available: the kinds of weights the file holds (``("ema", "raw")`` for timm with EMA).
        sources: where each preprocessing value and the class names came from (``rtk inspect``
            shows it), by :class:`~toolkit.core.spec.Preprocess` field name and ``class_names``.
    """

    spec: ModelSpec
    preprocess: Preprocess
    state_dict: dict[str, "torch.Tensor"]
    train: dict[str, Any] = field(default_factory=dict)
    source: str = "rtk"
    path: Path | None = None
    weights: str = "raw"
    weights_location: str = "the top level"
    weights_available: tuple[str, ...] = ("raw",)
    sources: dict[str, str] = field(default_factory=dict)

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
                f"{key} is {tuple(self.state_dict[key].shape)} in the checkpoint but {self.spec.name} needs "
                f"{tuple(expected[key].shape)}{more}"
            )
        if problems:
            raise RtkError(f"{self.path or 'the checkpoint'} does not fit its architecture {self.spec.name}: {'; '.join(problems)}")


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


def load_checkpoint(
    path: str | os.PathLike, spec_override: ModelSpec | None = None, options: CheckpointOptions | None = None
) -> Checkpoint:
    """Load an rtk or foreign checkpoint.

    Args:
        path: a torch file (``.pth``, ``.pt``, ``.ckpt``, ``.bin``, ``.pth.tar``), ``.safetensors``, a
            TorchScript or torch.export (``.pt2``) archive, or a Hugging Face Hub model folder.
        spec_override: use this spec instead of the stored or inferred one (class names, say).
        options: which weights to take (EMA or raw) and whether to trust a pickle.

    Returns:
        The checkpoint with its spec, preprocess and weights.

    Raises:
        RtkError: the file is missing, truncated, not a checkpoint, unsafe to unpickle, or of an
            architecture that cannot be recognised.
    """
    options = options or CheckpointOptions()
    path = Path(path)
    hub = open_hub_folder(path) if path.is_dir() else None
    obj = read_checkpoint_file(hub.weights if hub else path, options.trust_pickle)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        return _from_rtk(obj, path, spec_override, options)
    found = find_weights(obj, path, options.weights)
    if hub is not None and found.layout is TRANSFORMERS:
        check_transformers_config(hub.config, str(path))
    spec = spec_override or _inferred_spec(found, path, hub)
    record = foreign_record(obj, hub)
    pre, class_names, sources = resolve(recorded(obj, record, hub), spec)
    if spec_override is None and class_names is not None:
        spec = dataclasses.replace(spec, class_names=class_names)
    return Checkpoint(
        spec, pre, found.state_dict, record, "foreign", path, found.weights, found.location, found.available, sources,
    )


def _inferred_spec(found: "FoundWeights", path: Path, hub: HubFolder | None) -> ModelSpec:
    """The architecture of the weights found, or a refusal naming what they are."""
    try:
        return infer_spec(found.state_dict, path)
    except RtkError as exc:
        if found.layout is not None:
            raise layout_refusal(found.layout, found.state_dict, str(path), exc) from None
        named = (hub.config.get("architecture") or (hub.config.get("architectures") or [None])[0]) if hub else None
        also = f"; beside the ResNet at {found.location} the file holds {_shown(found.beside)}" if found.beside else ""
        said = f"; its {hub.path.name}/config.json names {named}" if named else ""
        raise RtkError(f"{exc}{also}{said}") from None


def _shown(names: Sequence[str]) -> str:
    return ", ".join(names[:3]) + (", …" if len(names) > 3 else "")


def _from_rtk(obj: Mapping[str, Any], path: Path, spec_override: ModelSpec | None, options: CheckpointOptions) -> Checkpoint:
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
    found = find_weights(obj, path, options.weights)
    sources = {name: "the checkpoint's preprocess" for name in pre.to_dict()} | {"class_names": "the checkpoint's spec"}
    return Checkpoint(
        spec, pre, found.state_dict, dict(obj.get("train") or {}), "rtk", path, found.weights, found.location, found.available, sources,
    )


# --- finding the network's weights in whatever the file holds ------------------------------------


@dataclass(frozen=True)
class FoundWeights:
    """The network's weights as found in a loaded file.

    Attributes:
        state_dict: the tensors, their names relative to the network (prefix removed).
        weights: ``"ema"`` or ``"raw"``.
        location: where they sit, e.g. ``['state_dict_ema']`` or ``['state_dict'] under net.``.
        available: the kinds of weights the file holds, EMA first.
        beside: names of the tensors next to the network that belong to it no more (a head
            registered outside the backbone, say): they explain a missing head.
        layout: the library whose names the weights were renamed from (transformers', mmpretrain's),
            or ``None`` for torchvision's own.
    """

    state_dict: dict[str, "torch.Tensor"]
    weights: str
    location: str
    available: tuple[str, ...]
    beside: tuple[str, ...] = ()
    layout: Layout | None = None


@dataclass(frozen=True)
class _Candidate:
    """One place a ResNet state_dict was found: the wrapper keys down to its mapping and the prefix in it."""

    keys: tuple[str, ...]
    prefix: str
    tensors: Mapping[str, "torch.Tensor"]
    layout: Layout | None = None
    ema_swapped: bool = False

    @property
    def state_dict(self) -> dict[str, "torch.Tensor"]:
        n = len(self.prefix)
        return {k[n:]: v for k, v in self.tensors.items() if k.startswith(self.prefix)}

    @property
    def weights(self) -> str:
        ema = any(_EMA_NAME.search(part.lower()) for part in (*self.keys, self.prefix))
        return "ema" if ema != self.ema_swapped else "raw"

    @property
    def location(self) -> str:
        text = "".join(f"[{k!r}]" for k in self.keys) or "the top level"
        text = f"{text} under {self.prefix}" if self.prefix else text
        return f"{text}, in {self.layout.names}" if self.layout else text

    def same_tensors(self, other: "_Candidate") -> bool:
        import torch

        a, b = self.state_dict, other.state_dict
        return a.keys() == b.keys() and all(a[k] is b[k] or (a[k].shape == b[k].shape and torch.equal(a[k], b[k])) for k in a)


# EMA weights as timm, Lightning callbacks and the EMA libraries name them: state_dict_ema,
# model_ema, ema, ema_state_dict, ema_model, an ``ema.`` prefix…
_EMA_NAME = re.compile(r"(?:^|[._])ema(?:$|[._])")
#: How deep wrappers may nest: {"model": {"state_dict": {...}}} is two.
_MAX_DEPTH = 4


def chosen_weights(requested: str, available: Sequence[str]) -> str:
    """The weights ``requested`` takes from a file holding ``available``: EMA when asked for and present, else raw."""
    return "ema" if requested == "ema" and "ema" in available else "raw"


def find_weights(obj: Any, path: Path | None = None, weights: str = "ema") -> FoundWeights:
    """Find the ResNet in a loaded object, wherever it sits.

    Every mapping is searched (wrappers nest: ``{"model": {"state_dict": …}}``) for the one prefix
    under which a ResNet's tensors are named (``module.``, ``model.``, ``net.``, ``_orig_mod.``,
    ``module._orig_mod.``…). Weights under an EMA name (``state_dict_ema``, ``model_ema``, ``ema.``)
    are the EMA set; the others the raw set.

    Args:
        obj: what the file holds (a trusted pickle's modules count by their ``state_dict``).
        path: the file, for messages.
        weights: ``"ema"`` takes the EMA weights when present; ``"raw"`` the raw ones.

    Raises:
        RtkError: no ResNet in the file (naming what is there), several different ones of the
            kind asked for, or only EMA weights when raw ones were asked for.
    """
    where = f"{path}" if path else "the checkpoint"
    mapping = _as_mapping(obj)
    if mapping is None:
        raise RtkError(f"{where} holds a {type(obj).__name__}, not a state_dict of named tensors")
    candidates = _candidates(mapping, where)
    if _mmengine_swaps_ema(mapping):
        candidates = [dataclasses.replace(c, ema_swapped=c.keys[:1] in (("state_dict",), ("ema_state_dict",))) for c in candidates]
    if not candidates:
        raise _no_resnet(mapping, where)
    groups: dict[str, list[_Candidate]] = {"ema": [], "raw": []}
    for c in candidates:
        group = groups[c.weights]
        if not any(c.same_tensors(other) for other in group):
            group.append(c)
    available = tuple(kind for kind, group in groups.items() if group)
    kind = chosen_weights(weights, available)
    if not groups[kind]:
        raise RtkError(f"{where} holds only EMA weights ({groups['ema'][0].location}); use --weights ema")
    if len(groups[kind]) > 1:
        places = ", ".join(c.location for c in groups[kind])
        raise RtkError(
            f"{where} holds {len(groups[kind])} different ResNets ({places}), and rtk cannot tell which is the model; "
            "save the one you want on its own with torch.save(its state_dict(), …)"
        )
    found = groups[kind][0]
    beside = tuple(k for k, v in found.tensors.items() if not k.startswith(found.prefix) and v.ndim == 2)
    return FoundWeights(found.state_dict, kind, found.location, available, beside, found.layout)


def _mmengine_swaps_ema(obj: Mapping) -> bool:
    """Whether this is an mmengine checkpoint whose EMAHook swapped the two sets before saving.

    mmengine's ``EMAHook`` saves the averaged weights under ``state_dict`` (so that the model loads
    them for deployment) and the trained ones under ``ema_state_dict``: the names say the opposite.
    """
    meta = obj.get("meta")
    return isinstance(meta, Mapping) and "mmengine_version" in meta and "ema_state_dict" in obj and "state_dict" in obj


def _as_mapping(obj: Any) -> Mapping | None:
    """A mapping as it is; a module (from a trusted pickle) as its state_dict; anything else ``None``."""
    if isinstance(obj, Mapping):
        return obj
    import torch.nn as nn

    return obj.state_dict() if isinstance(obj, nn.Module) else None


def _candidates(obj: Mapping, where: str, keys: tuple[str, ...] = ()) -> list[_Candidate]:
    import torch

    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    tensors, layout = to_torchvision_names(tensors, where)
    found = [
        _Candidate(keys, name[: -len(ANCHOR_KEY)], tensors, layout)
        for name in tensors
        if name == ANCHOR_KEY or name.endswith("." + ANCHOR_KEY)
    ]
    if len(keys) < _MAX_DEPTH:
        for key, value in obj.items():
            if not isinstance(value, torch.Tensor) and (inner := _as_mapping(value)) is not None:
                found += _candidates(inner, where, (*keys, str(key)))
    return found


def _no_resnet(obj: Mapping, where: str) -> RtkError:
    """The sentence for a file with no ResNet in it, naming what it does hold."""
    import torch

    def tensor_maps(m: Mapping, depth: int = 0):
        yield m
        if depth < _MAX_DEPTH:
            for v in m.values():
                if isinstance(v, Mapping):
                    yield from tensor_maps(v, depth + 1)

    largest = max(tensor_maps(obj), key=lambda m: sum(isinstance(v, torch.Tensor) for v in m.values()))
    tensors = {k: v for k, v in largest.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(map(str, list(obj)[:6])) or "nothing"
        return RtkError(f"{where} holds no weights: found keys {keys}, expected tensors or one of {', '.join(WRAPPER_KEYS)}")
    odd = next((k for k in tensors if not isinstance(k, str)), None)
    if odd is not None:
        return RtkError(f"{where} is not a state_dict: its tensors must be named by strings, but one is keyed {odd!r} ({type(odd).__name__})")
    return not_a_resnet(tensors, where)


# --- what else a foreign file says about itself -------------------------------------------------

#: Top-level entries worth showing: timm's saver and PyTorch's ImageNet example (epoch, arch,
#: best_acc1, metric), Lightning (epoch, global_step, its version), and the like.
_RECORD_KEYS = (
    "arch", "epoch", "global_step", "step", "best_acc1", "best_acc5", "best_acc", "best_metric", "best_epoch",
    "metric", "acc", "accuracy", "val_acc", "pytorch-lightning_version",
)
#: What a Hub folder's config.json says the model is (timm's, then transformers' keys).
_HUB_CONFIG_KEYS = ("architecture", "num_classes", "architectures", "model_type", "layer_type", "depths", "hidden_sizes")
#: mmengine's (and mmcv's) ``meta`` entries worth showing; its ``cfg`` is the whole config file.
_META_KEYS = ("epoch", "iter", "seed", "experiment_name", "time", "mmengine_version", "mmcv_version", "mmpretrain_version")
#: Entries of timm's train.py arguments that describe the model and its input.
_ARG_KEYS = (
    "model", "num_classes", "img_size", "input_size", "crop_pct", "mean", "std", "interpolation",
    "dataset", "epochs", "batch_size", "lr", "opt", "model_ema", "model_ema_decay",
)


def foreign_record(obj: Any, hub: HubFolder | None = None) -> dict[str, Any]:
    """What a foreign file records beside its weights, as plain JSON values.

    What holds the weights (a Hub folder, a TorchScript or torch.export archive), the epoch,
    architecture name and best metric (timm, PyTorch's ImageNet example, Lightning's
    ``ModelCheckpoint``, mmengine's ``meta``), timm's train.py arguments, Lightning's
    hyper-parameters, a safetensors header's metadata and what a Hub folder's ``config.json``
    names. Entries that are not plain values are left out.
    """
    if not isinstance(obj, Mapping):
        return {}
    record: dict[str, Any] = {}
    container = hub.describe() if hub is not None else obj.get(CONTAINER_KEY)
    if container:
        record["container"] = container
    record.update({k: _plain(obj[k]) for k in _RECORD_KEYS if _plain(obj.get(k)) is not None})
    if hub is not None:
        config = {k: _plain(hub.config.get(k)) for k in _HUB_CONFIG_KEYS if _plain(hub.config.get(k)) is not None}
        if config:
            record["hub_config"] = config
    meta = obj.get("meta")  # mmengine's and mmcv's runners
    if isinstance(meta, Mapping):
        plain = {k: _plain(meta[k]) for k in _META_KEYS if _plain(meta.get(k)) is not None}
        if plain:
            record["meta"] = plain
    saver = obj.get("saver")  # timm's CheckpointSaver bookkeeping
    if isinstance(saver, Mapping):
        for key in ("best_metric", "best_epoch"):
            if _plain(saver.get(key)) is not None:
                record.setdefault(key, _plain(saver[key]))
    args = obj.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else args
    if isinstance(args, Mapping):
        record["args"] = {k: _plain(args[k]) for k in _ARG_KEYS if _plain(args.get(k)) is not None}
    callbacks = obj.get("callbacks")
    if isinstance(callbacks, Mapping):  # Lightning: ModelCheckpoint{...} -> {"monitor": …, "best_model_score": …}
        for name, state in callbacks.items():
            if str(name).startswith("ModelCheckpoint") and isinstance(state, Mapping) and state.get("monitor"):
                record["best"] = {str(state["monitor"]): _plain(state.get("best_model_score"))}
    for key, limit in (("hyper_parameters", 16), (SAFETENSORS_METADATA, 16)):
        entries = obj.get(key)
        if isinstance(entries, Mapping):
            plain = {str(k): _plain(v) for k, v in list(entries.items())[:limit] if _plain(v) is not None}
            if plain:
                record["metadata" if key == SAFETENSORS_METADATA else key] = plain
    return record


def _plain(value: Any) -> Any:
    """A JSON-ready scalar, short list, or ``None`` for anything else (one-element tensors become numbers)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else None
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)) and len(value) <= 8 and all(isinstance(v, (bool, int, float, str)) for v in value):
        return list(value)
    return None


def load_model(
    path: str | os.PathLike, spec_override: ModelSpec | None = None, options: CheckpointOptions | None = None
) -> tuple["nn.Module", Checkpoint]:
    """Load a checkpoint (see :func:`load_checkpoint`) and build its network in eval mode.

    Returns:
        ``(model, checkpoint)``.

    Raises:
        RtkError: as :func:`load_checkpoint`, or the weights do not fit the architecture.
    """
    ckpt = load_checkpoint(path, spec_override, options)
    return ckpt.build_model(), ckpt
