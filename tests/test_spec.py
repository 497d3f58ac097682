import json

import pytest

from toolkit.core.errors import RtkError
from toolkit.core.spec import ArtefactMeta, HeadLayout, ModelSpec, Preprocess


def test_spec_round_trips_through_json():
    spec = ModelSpec("resnext50_32x4d", 3, ("cat", "dog", "fox"), head="mlp1024", in_chans=1, stem="small")
    pre = Preprocess(input_size=(64, 48), resize=72, mean=(0.5,), std=(0.2,), channels="gray", interpolation="bicubic")
    meta = ArtefactMeta(spec, pre)
    back = ArtefactMeta.from_json(json.dumps(json.loads(meta.to_json())))
    assert back == meta
    assert back.spec.class_names == ("cat", "dog", "fox")
    assert back.preprocess.input_size == (64, 48)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"arch": "vgg16", "num_classes": 3}, "unknown architecture"),
        ({"arch": "resnet18", "num_classes": 0}, "positive integer"),
        ({"arch": "resnet18", "num_classes": 2, "class_names": ("a",)}, "1 class names given for 2"),
        ({"arch": "resnet18", "num_classes": 2, "class_names": ("a", "a")}, "unique"),
        ({"arch": "resnet18", "num_classes": 2, "head": "mlp"}, "unknown head"),
        ({"arch": "resnet18", "num_classes": 2, "in_chans": 4}, "in_chans must be 1 or 3"),
        ({"arch": "resnet18", "num_classes": 2, "stem": "tiny"}, "unknown stem"),
        ({"arch": "resnet18", "num_classes": 2, "head": "mlp0"}, "unknown head"),
        ({"arch": "resnet18", "num_classes": 2, "downsample": "max"}, "unknown downsample"),
        ({"arch": "resnet18", "num_classes": 2, "attention": "eca"}, "unknown attention"),
        ({"arch": "resnet18", "num_classes": 2, "width": 24}, "width must be 16, 32, 48 or 64"),
        ({"arch": "resnet18", "num_classes": 2, "width": 0}, "width must be 16, 32, 48 or 64"),
        ({"arch": "resnet18", "num_classes": 2, "width": 32.0}, "width must be 16, 32, 48 or 64"),
    ],
)
def test_spec_validation_names_the_problem(kwargs, message):
    with pytest.raises(RtkError, match=message):
        ModelSpec(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_size": (0, 3)}, "input_size"),
        ({"input_size": (224, 224), "resize": 200}, "smaller than the crop"),
        ({"channels": "gray"}, "mean and std need 1"),
        ({"std": (0.1, 0.0, 0.1)}, "positive"),
        ({"interpolation": "area"}, "unknown interpolation"),
    ],
)
def test_preprocess_validation(kwargs, message):
    with pytest.raises(RtkError, match=message):
        Preprocess(**kwargs)


def test_from_dict_rejects_unknown_and_missing_fields():
    with pytest.raises(RtkError, match="unknown field"):
        ModelSpec.from_dict({"arch": "resnet18", "num_classes": 2, "colour": "red"})
    with pytest.raises(RtkError, match="incomplete"):
        ModelSpec.from_dict({"arch": "resnet18"})
    with pytest.raises(RtkError, match="not valid JSON"):
        ArtefactMeta.from_json("{nope")


def test_preprocess_matching_adapts_channels():
    spec = ModelSpec("resnet18", 2, in_chans=1)
    pre = Preprocess.imagenet(64).matching(spec)
    assert pre.channels == "gray" and len(pre.mean) == 1 and pre.input_size == (64, 64)


def test_variants_round_trip_and_plain_specs_keep_their_old_fields():
    spec = ModelSpec("resnext50_32x4d", 5, head="mlp512-dropout", stem="deep", downsample="avg", attention="se")
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.name == "seresnext50d_32x4d"
    narrow = ModelSpec("resnet18", 3, stem="small", width=16)
    assert ModelSpec.from_dict(json.loads(json.dumps(narrow.to_dict()))) == narrow and narrow.to_dict()["width"] == 16
    assert narrow.name == "resnet18-w16"
    # A plain ResNet's dict has only the fields rtk has always written, so older versions read it.
    assert set(ModelSpec("resnet50", 2).to_dict()) == {"arch", "num_classes", "class_names", "head", "in_chans", "stem"}


@pytest.mark.parametrize(
    "head, layout, keys",
    [
        ("fc", HeadLayout(), ("fc",)),
        ("dropout-fc", HeadLayout(dropout=True), ("fc.1",)),
        ("mlp1024", HeadLayout(1024), ("fc.0", "fc.2")),
        ("mlp256-dropout", HeadLayout(256, dropout=True), ("fc.0", "fc.3")),
    ],
)
def test_head_names_describe_their_layers(head, layout, keys):
    assert HeadLayout.parse(head) == layout and layout.name == head and layout.linear_keys == keys
