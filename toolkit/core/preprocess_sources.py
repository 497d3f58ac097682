"""A foreign checkpoint's preprocessing and class names, from whatever records them, each value with its source.

What the libraries write beside their weights, in order of precedence:

- transformers' ``preprocessor_config.json`` (the image processor: ``size``, ``crop_pct``,
  ``do_center_crop``/``crop_size``, ``resample``, ``image_mean``/``image_std``, ``rescale_factor``)
  and ``config.json`` (``id2label``);
- timm's ``config.json`` (``pretrained_cfg``: ``input_size``, ``interpolation``, ``mean``, ``std``,
  ``crop_pct``, ``crop_mode``; ``label_names``), read as timm's own evaluation transform reads it;
- timm's ``train.py`` arguments saved in its checkpoints (``img_size``, ``crop_pct``, ``mean``…);
- mmengine's ``meta.dataset_meta.classes`` (and mmcv's ``meta.CLASSES``).

What none records is ImageNet's evaluation default, and :func:`resolve` says so per value.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from toolkit.core.errors import RtkError
from toolkit.core.hub import CONFIG_FILE, PREPROCESSOR_FILE, HubFolder
from toolkit.core.spec import INTERPOLATIONS, ModelSpec, Preprocess

#: The source of a value nothing in the file records.
DEFAULT_SOURCE = "ImageNet's default (not recorded)"
#: PIL's resampling filters by number, as transformers' image processors store them.
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# transformers' placeholder names for labels nobody named.
_PLACEHOLDER_LABEL = re.compile(r"LABEL_\d+")


@dataclass
class Recorded:
    """Values a file records about its input and classes, each with where it was found.

    Attributes:
        values: :class:`~toolkit.core.spec.Preprocess` field names (and ``class_names``) to values.
        sources: the same names to where each value came from (``config.json pretrained_cfg.input_size``).
        notes: values found but not used, and why.
    """

    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def set(self, name: str, value: Any, source: str) -> None:
        """Record ``value`` for ``name`` unless a source of higher precedence already did."""
        if name not in self.values:
            self.values[name] = value
            self.sources[name] = source


def recorded(obj: Any, record: Mapping[str, Any], hub: "HubFolder | None") -> Recorded:
    """Everything the file (and its Hub folder) records of preprocessing and class names.

    Args:
        obj: what the checkpoint file holds.
        record: :func:`toolkit.core.checkpoint.foreign_record` of it (timm's arguments).
        hub: the Hub folder it came from, if any.
    """
    found = Recorded()
    if hub is not None and hub.preprocessor is not None:
        _from_image_processor(hub.preprocessor, found)
    if hub is not None and hub.library == "transformers":
        _from_id2label(hub.config.get("id2label"), found)
    if hub is not None and hub.library == "timm":
        _from_pretrained_cfg(hub.config, found)
    _from_timm_args(record.get("args") or {}, found)
    _from_mmengine_meta(obj.get("meta") if isinstance(obj, Mapping) else None, found)
    return found


def resolve(found: Recorded, spec: ModelSpec) -> tuple[Preprocess, tuple[str, ...] | None, dict[str, str]]:
    """The preprocessing and class names to use, and the source of every value.

    Values that make no valid pipeline together fall back to ImageNet's default as a whole, with
    the reason among the sources.

    Returns:
        ``(preprocess, class_names or None, sources)``; ``sources`` names every Preprocess field
        and ``class_names``.
    """
    sources: dict[str, str] = {}
    changes = {k: v for k, v in found.values.items() if k != "class_names"}
    try:
        pre = dataclasses.replace(Preprocess.imagenet(), **changes)
    except RtkError as exc:
        found.notes.append(f"the recorded preprocessing is not valid ({exc}); ImageNet's default used")
        pre, changes = Preprocess.imagenet(), {}
    matched = pre.matching(spec)
    for name in (f.name for f in dataclasses.fields(Preprocess)):
        sources[name] = found.sources[name] if name in changes else DEFAULT_SOURCE
    sources["channels"] = f"the network's {spec.in_chans}-channel input"
    if matched is not pre:
        for name in ("mean", "std"):
            sources[name] += " (averaged over the channels)" if spec.in_chans == 1 else " (repeated for 3 channels)"
    names = _class_names(found, spec, sources)
    if found.notes:
        sources["notes"] = "; ".join(found.notes)
    return matched, names, sources


def _class_names(found: Recorded, spec: ModelSpec, sources: dict[str, str]) -> tuple[str, ...] | None:
    names = found.values.get("class_names")
    if names is None:
        sources["class_names"] = "none recorded (classes are numbered)"
        return None
    if len(names) != spec.num_classes:
        sources["class_names"] = f"none: {found.sources['class_names']} names {len(names)} classes, the head has {spec.num_classes}"
        return None
    unique, renamed = _unique(names)
    sources["class_names"] = found.sources["class_names"] + (f" ({renamed} repeated names numbered by class)" if renamed else "")
    return unique


def _unique(names: list[str]) -> tuple[tuple[str, ...], int]:
    """Names made unique: a name several classes share gets each class's index (ImageNet has two 'crane's)."""
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    unique = tuple(f"{name} ({i})" if counts[name] > 1 else name for i, name in enumerate(names))
    return unique, sum(1 for name in names if counts[name] > 1)


# --- transformers ------------------------------------------------------------------------------


def _from_image_processor(config: Mapping[str, Any], found: Recorded) -> None:
    """transformers' image processor, as its ``preprocess`` resizes, crops and normalises."""
    where = PREPROCESSOR_FILE
    size = config.get("size")
    size = {"shortest_edge": size} if isinstance(size, int) else size if isinstance(size, Mapping) else {}
    kind = str(config.get("image_processor_type") or config.get("feature_extractor_type") or "")
    if config.get("do_resize", True) and size:
        _processor_geometry(kind, size, config, found, where)
    resample = config.get("resample")
    if resample is not None:
        name = _PIL_RESAMPLE.get(resample)
        if name in INTERPOLATIONS:
            found.set("interpolation", name, f"{where} resample {resample} ({name})")
        else:
            found.notes.append(f"{where} resample {resample} ({name or 'unknown'}) is not one rtk resizes with")
    scale = config.get("rescale_factor", 1 / 255) if config.get("do_rescale", True) else 1.0
    factor = 1 / (255 * scale)  # a pixel p is fed as p * scale: mean and std in [0, 1] units scale by this
    if not config.get("do_normalize", True):
        found.set("mean", (0.0, 0.0, 0.0), f"{where} do_normalize false")
        found.set("std", (factor,) * 3, f"{where} do_normalize false, rescale_factor {scale:g}")
        return
    for key, name in (("image_mean", "mean"), ("image_std", "std")):
        value = config.get(key)
        if isinstance(value, (int, float)):
            value = [value] * 3
        if isinstance(value, list) and value:
            found.set(name, tuple(float(v) * factor for v in value), f"{where} {key}" + (f" (rescale_factor {scale:g})" if factor != 1 else ""))


def _processor_geometry(kind: str, size: Mapping[str, Any], config: Mapping[str, Any], found: Recorded, where: str) -> None:
    """Input size, resize and crop of a transformers image processor."""
    if "shortest_edge" in size and kind.startswith("ConvNext"):
        # ConvNextImageProcessor: below 384 px, the shorter side to shortest_edge / crop_pct, then a
        # centre crop; from 384 px on, a plain resize to a square.
        edge = int(size["shortest_edge"])
        crop_pct = float(config.get("crop_pct") or 224 / 256)
        found.set("input_size", (edge, edge), f"{where} size.shortest_edge")
        if edge < 384:
            found.set("resize", int(edge / crop_pct), f"{where} size.shortest_edge / crop_pct {crop_pct:g}")
            found.set("crop", True, f"{where} crop_pct {crop_pct:g}")
        else:
            found.set("resize", edge, f"{where} size.shortest_edge (≥ 384: resized, not cropped)")
            found.set("crop", False, f"{where} size.shortest_edge (≥ 384: resized, not cropped)")
        return
    crop = config.get("crop_size") if config.get("do_center_crop") else None
    crop = {"height": crop, "width": crop} if isinstance(crop, int) else crop
    if "height" in size and "width" in size and not crop:
        found.set("input_size", (int(size["height"]), int(size["width"])), f"{where} size")
        found.set("crop", False, f"{where} size (resized to it, not cropped)")
        return
    if "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        found.set("resize", edge, f"{where} size.shortest_edge")
        if isinstance(crop, Mapping) and "height" in crop:
            found.set("input_size", (int(crop["height"]), int(crop["width"])), f"{where} crop_size")
            found.set("crop", True, f"{where} do_center_crop")
        else:
            found.set("input_size", (edge, edge), f"{where} size.shortest_edge (no crop recorded: a centre square)")
            found.set("crop", True, f"{where} size.shortest_edge (no crop recorded: a centre square)")
        return
    found.notes.append(f"{where} size {dict(size)} is not a size rtk reads")


def _from_id2label(id2label: Any, found: Recorded) -> None:
    names = _indexed_names(id2label)
    if names and not all(_PLACEHOLDER_LABEL.fullmatch(n) for n in names):
        found.set("class_names", names, f"{CONFIG_FILE} id2label")


def _indexed_names(labels: Any) -> list[str] | None:
    """Names from a list, or from a dict keyed by class index (``{"0": "tench", …}``), when they cover 0..n-1."""
    if isinstance(labels, (list, tuple)):
        return [str(n) for n in labels] if labels else None
    if not isinstance(labels, Mapping) or not labels:
        return None
    try:
        by_index = {int(k): str(v) for k, v in labels.items()}
    except (TypeError, ValueError):
        return None
    return [by_index[i] for i in range(len(by_index))] if set(by_index) == set(range(len(by_index))) else None


# --- timm --------------------------------------------------------------------------------------


def _from_pretrained_cfg(config: Mapping[str, Any], found: Recorded) -> None:
    """timm's ``pretrained_cfg``, read as ``resolve_data_config`` + ``create_transform`` evaluate with it."""
    cfg = config.get("pretrained_cfg")
    where = f"{CONFIG_FILE} pretrained_cfg"
    if isinstance(cfg, Mapping):
        size = cfg.get("input_size")
        size = tuple(size[1:]) if isinstance(size, list) and len(size) == 3 else None
        _timm_values(cfg, size, "input_size", found, lambda key: f"{where}.{key}")
    for labels, source in ((config.get("label_names"), f"{CONFIG_FILE} label_names"), (cfg and cfg.get("label_names"), f"{where}.label_names")):
        names = _indexed_names(labels)
        if names:
            found.set("class_names", names, source)


def _from_timm_args(args: Mapping[str, Any], found: Recorded) -> None:
    """timm's ``train.py`` arguments, as its saver records them in every checkpoint."""
    input_size, img_size = args.get("input_size"), args.get("img_size")
    if isinstance(input_size, list) and len(input_size) == 3:
        size, size_key = tuple(input_size[1:]), "input_size"
    else:
        size, size_key = ((img_size, img_size) if isinstance(img_size, int) else None), "img_size"
    _timm_values(args, size, size_key, found, lambda key: f"timm's train.py arguments (args.{key})")


def _timm_values(cfg: Mapping[str, Any], size: tuple | None, size_key: str, found: Recorded, source) -> None:
    """Input size, resize and crop as timm's evaluation transform derives them (the shorter side to
    ``floor(size / crop_pct)``, crop_pct 0.875 when unset, then a centre crop), mean, std and interpolation.

    Args:
        source: the source text of a key of ``cfg``.
    """
    crop_pct = cfg.get("crop_pct")
    if size is not None or crop_pct is not None:
        # Without a size, timm evaluates at the model's default, ImageNet's 224 px, with this crop.
        height, width = (int(s) for s in size) if size is not None else Preprocess.imagenet().input_size
        if size is not None:
            found.set("input_size", (height, width), source(size_key))
        given = isinstance(crop_pct, (int, float)) and crop_pct > 0
        pct = float(crop_pct) if given else 0.875
        pct_source = f"{source('crop_pct')} {pct:g}" if given else f"timm's default crop_pct {pct:g} with {source(size_key)}"
        mode = cfg.get("crop_mode")
        if mode == "squash":
            # squash resizes to size / crop_pct ignoring the aspect ratio, then crops: with
            # crop_pct 1 that is a plain resize to the input size.
            found.set("crop", False, source("crop_mode") + " squash")
            if pct != 1.0:
                found.notes.append(f"crop_mode squash with crop_pct {pct:g}: resized straight to the input size, its border is not cut")
        else:
            if mode not in (None, "center"):
                found.notes.append(f"crop_mode {mode} read as center")
            found.set("resize", math.floor(max(height, width) / pct), pct_source)
            found.set("crop", True, pct_source)
    for name in ("mean", "std"):
        value = cfg.get(name)
        if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
            found.set(name, tuple(float(v) for v in value), source(name))
    interpolation = cfg.get("interpolation")
    if interpolation in INTERPOLATIONS:
        found.set("interpolation", interpolation, source("interpolation"))
    elif interpolation:
        found.notes.append(f"interpolation {interpolation!r} is not one rtk resizes with")


# --- mmengine ----------------------------------------------------------------------------------


def _from_mmengine_meta(meta: Any, found: Recorded) -> None:
    if not isinstance(meta, Mapping):
        return
    dataset = meta.get("dataset_meta")
    classes = dataset.get("classes") if isinstance(dataset, Mapping) else None
    source = "meta.dataset_meta.classes"
    if classes is None and meta.get("CLASSES") is not None:
        classes, source = meta.get("CLASSES"), "meta.CLASSES"
    names = _indexed_names(list(classes) if isinstance(classes, tuple) else classes)
    if names:
        found.set("class_names", names, source)
