"""A ResNet-50 at 224 px that makes real decisions on real images, made on a CPU in minutes, offline.

The int8 benchmarks need the speed of a standard ResNet-50 (which does not depend on its
weights) and top-1 agreement on real images (which needs decisions with margins, which random
weights do not give). So: torchvision's ResNet-50 (ImageNet stem, 3 channels, 224 px, ImageNet
preprocessing) with random convolution weights, its BatchNorm statistics measured on real images
(scikit-learn's digits, upsampled as ``rtk`` prepares them), and a 10-class head trained on the
features of the 1,257 training digits. Its accuracy on the 360 test digits is printed and kept in
the checkpoint's training record.

    python -m benchmarks.resnet50_digits resnet50.pth
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from toolkit.core.checkpoint import save_checkpoint
from toolkit.core.data import resolve_data
from toolkit.core.models import create_model
from toolkit.core.spec import ModelSpec, Preprocess
from toolkit.core.transforms import image_to_array

#: Images whose BatchNorm statistics the random backbone takes.
BN_IMAGES = 256
BATCH = 32


def _prepared(split, preprocess, indices):
    return np.stack([image_to_array(split.image(int(i)), preprocess) for i in indices]).astype(np.float32)


def _features(model, split, preprocess):
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(split), BATCH):
            batch = _prepared(split, preprocess, range(start, min(start + BATCH, len(split))))
            out.append(model(torch.from_numpy(batch)))
    return torch.cat(out)


def make(path: Path, seed: int = 0) -> float:
    """Write the checkpoint; returns its test accuracy on the digits."""
    import torch

    torch.manual_seed(seed)
    source = resolve_data("digits", input_size=224)
    spec = ModelSpec(arch="resnet50", num_classes=10, class_names=source.class_names, in_chans=3, stem="imagenet")
    pre = Preprocess.imagenet(224)
    model = create_model(spec)
    train, test = source.splits["train"], source.splits["test"]
    for module in model.modules():  # cumulative statistics over every calibration batch
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    picked = np.random.default_rng(seed).choice(len(train), BN_IMAGES, replace=False)
    model.train()
    with torch.inference_mode():
        for start in range(0, BN_IMAGES, BATCH):
            model(torch.from_numpy(_prepared(train, pre, picked[start : start + BATCH])))
    model.eval()
    head, model.fc = model.fc, torch.nn.Identity()
    x_train, x_test = _features(model, train, pre), _features(model, test, pre)
    y_train, y_test = torch.from_numpy(train.labels), torch.from_numpy(test.labels)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    for _ in range(500):  # full-batch logistic regression on the 2048 features
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x_train), y_train)
        loss.backward()
        optimizer.step()
    model.fc = head
    with torch.inference_mode():
        accuracy = float((head(x_test).argmax(1) == y_test).float().mean())
    save_checkpoint(path, model, spec, pre, {"data": "digits", "metrics": {"test_acc": accuracy}, "recipe": "random backbone, head trained"})
    return accuracy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.resnet50_digits", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="where to write the rtk checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    accuracy = make(args.checkpoint, args.seed)
    print(f"wrote {args.checkpoint}: resnet50, 224 px, test accuracy {accuracy:.2%} on the 360 test digits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
