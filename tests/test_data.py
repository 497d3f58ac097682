"""Data sources: the fixed digits split, image folders (both layouts), built-ins offline, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.core.data import DIGITS_INPUT_SIZE, digits_split_indices, resolve_data, write_digit_images
from toolkit.core.errors import RtkError


def test_digits_split_is_fixed_disjoint_and_complete():
    first, again = digits_split_indices(), digits_split_indices()
    sizes = {k: len(v) for k, v in first.items()}
    assert sizes == {"train": 1257, "val": 180, "test": 360}
    assert all(np.array_equal(first[k], again[k]) for k in first)
    everything = np.concatenate(list(first.values()))
    assert len(np.unique(everything)) == 1797
    # The seed of a training run must not move images between splits (the test set stays put).
    assert {k: len(s) for k, s in resolve_data("digits", seed=7).splits.items()} == sizes


def test_digits_defaults_are_gray_small_and_not_flipped():
    source = resolve_data("digits")
    assert source.class_names == tuple("0123456789")
    assert source.preprocess.channels == "gray" and source.preprocess.input_size == (DIGITS_INPUT_SIZE,) * 2
    assert source.flip is False  # a mirrored 3 is not a 3
    x, y = source.dataset("val")[0]
    assert tuple(x.shape) == (1, DIGITS_INPUT_SIZE, DIGITS_INPUT_SIZE) and str(x.dtype) == "torch.float32"
    assert 0 <= y < 10


def test_digit_png_through_predict_pipeline_equals_training_input(tmp_path):
    # What `rtk predict` does with a user's PNG of a digit: load the file, apply the checkpoint's
    # Preprocess. It must give exactly the tensor the model was trained and evaluated on.
    from toolkit.core.images import load_image
    from toolkit.core.transforms import image_to_array

    paths = write_digit_images(tmp_path, split="test", per_class=1)
    source = resolve_data("digits")
    test = source.dataset("test")
    index = {int(i): n for n, i in enumerate(digits_split_indices()["test"])}
    for path in paths:
        position = index[int(path.stem.split("-")[1])]
        from_file = image_to_array(load_image(path), source.preprocess)
        x, label = test[position]
        assert label == int(path.parent.name)
        np.testing.assert_array_equal(from_file, x.numpy())


def test_augmentation_only_on_the_training_split():
    import torch

    source = resolve_data("digits", input_size=8)
    val = source.dataset("val")
    assert torch.equal(val[3][0], val[3][0])
    train = source.dataset("train", augment=True)
    torch.manual_seed(0)
    shifted = [train[3][0] for _ in range(8)]
    assert any(not torch.equal(shifted[0], s) for s in shifted[1:])


def _digit_folder(root, classes=("0", "1", "2"), per_class=6):
    """A real image folder: 8×8 digit PNGs under root/<digit>/ for the given classes."""
    write_digit_images(root, split="test", per_class=per_class, classes=classes)
    return root


def test_flat_folder_is_split_reproducibly_by_seed(tmp_path):
    root = _digit_folder(tmp_path / "flat")
    a = resolve_data(root, input_size=16, val_split=0.25, seed=1)
    b = resolve_data(root, input_size=16, val_split=0.25, seed=1)
    c = resolve_data(root, input_size=16, val_split=0.25, seed=2)
    assert a.class_names == ("0", "1", "2") and set(a.splits) == {"train", "val"}
    assert len(a.splits["val"]) == 6 and len(a.splits["train"]) == 12  # ceil(6 × 0.25) = 2 per class
    names = lambda s: sorted(s.splits["val"].names(i) for i in range(len(s.splits["val"])))  # noqa: E731
    assert names(a) == names(b) and names(a) != names(c)
    assert a.preprocess.channels == "rgb" and a.preprocess.input_size == (16, 16)
    x, _ = a.dataset("train")[0]
    assert tuple(x.shape) == (3, 16, 16)


def test_train_val_test_layout(tmp_path):
    for split in ("train", "val", "test"):
        _digit_folder(tmp_path / "ds" / split, per_class=2)
    source = resolve_data(tmp_path / "ds", input_size=16)
    assert {k: len(s) for k, s in source.splits.items()} == {"train": 6, "val": 6, "test": 6}


def test_val_folder_with_other_classes_is_rejected(tmp_path):
    _digit_folder(tmp_path / "ds" / "train", per_class=2)
    _digit_folder(tmp_path / "ds" / "val", classes=("0", "1"), per_class=2)
    with pytest.raises(RtkError, match="missing 2"):
        resolve_data(tmp_path / "ds")


def test_corrupt_and_empty_files_are_skipped_with_a_warning(tmp_path, capsys):
    root = _digit_folder(tmp_path / "flat", per_class=4)
    (root / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (root / "2" / "empty.jpg").write_bytes(b"")
    (root / "2" / "notes.txt").write_text("not an image suffix, ignored silently")
    source = resolve_data(root, input_size=16, val_split=0.25)
    assert len(source.splits["train"]) + len(source.splits["val"]) == 12
    err = capsys.readouterr().err
    assert "broken.png" in err and "empty.jpg" in err and "notes.txt" not in err


def test_file_that_fails_to_decode_later_is_replaced_not_fatal(tmp_path, capsys):
    root = _digit_folder(tmp_path / "flat", per_class=3)
    victim = sorted((root / "0").iterdir())[0]
    source = resolve_data(root, input_size=16, val_split=0.0001)
    victim.write_bytes(victim.read_bytes()[:40])  # truncated after the scan
    train = source.dataset("train")
    items = [train[i] for i in range(len(train))]
    assert len(items) == len(train)
    assert victim.name in capsys.readouterr().err


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root.mkdir(), "no images in"),
        (lambda root: (root / "cat").mkdir(parents=True), "no images in"),
        (lambda root: _digit_folder(root, per_class=1) and (root / "cat").mkdir(), "class folder .*cat holds no images"),
        (lambda root: _digit_folder(root, per_class=1) and next((root / "0").iterdir()).rename(root / "a.png"), "holds images but no class folders"),
    ],
    ids=["empty-folder", "only-an-empty-class", "class-without-images", "images-at-the-top"],
)
def test_bad_folders_are_clear_errors(tmp_path, make, message):
    root = tmp_path / "ds"
    make(root)
    with pytest.raises(RtkError, match=message):
        resolve_data(root)


def test_missing_builtin_offline_names_the_place_and_download(tmp_path):
    with pytest.raises(RtkError) as info:
        resolve_data("mnist", data_root=tmp_path / "nowhere")
    text = str(info.value)
    assert str(tmp_path / "nowhere") in text and "--download" in text and "MNIST/raw" in text


def _closed_port_url() -> str:
    """A URL on localhost where nothing listens: connecting fails at once, as offline."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_download_that_fails_says_so_and_where_the_files_go(tmp_path, monkeypatch, name):
    # Real torchvision downloads, pointed at a closed port so no test ever needs (or uses) the
    # network. MNIST tries a list of mirrors and wraps the errors; CIFAR-10 lets urllib's through.
    import torchvision.datasets as tvd

    if name == "mnist":
        monkeypatch.setattr(tvd.MNIST, "mirrors", [_closed_port_url()])
    else:
        monkeypatch.setattr(tvd.CIFAR10, "url", _closed_port_url() + "cifar-10-python.tar.gz")
    with pytest.raises(RtkError) as info:
        resolve_data(name, data_root=tmp_path, download=True)
    text = str(info.value)
    assert text.startswith(f"{name} could not be downloaded (no network?")
    assert "refused" in text.lower()  # the network's own reason is kept
    assert f"copy the files to {tmp_path}/" in text and "--data-root" in text
    assert "\n" not in text


def test_unknown_dataset_name():
    with pytest.raises(RtkError, match="unknown dataset 'imagenet-42'"):
        resolve_data("imagenet-42")


def test_max_samples_cuts_every_split():
    source = resolve_data("digits", max_samples=20)
    assert {k: len(s) for k, s in source.splits.items()} == {"train": 20, "val": 20, "test": 20}


def test_a_folder_of_class_folders_is_judged_whole_and_split_only_for_training(tmp_path):
    root = _digit_folder(tmp_path / "flat", per_class=6)
    source = resolve_data(root, input_size=16, val_split=0.25)
    assert source.judged_split == "all" and len(source.split("all")) == 18  # every image, not the 10% held out
    assert len(source.splits["train"]) + len(source.splits["val"]) == 18
    assert set(source.splits) == {"train", "val"}  # training sees train and val only
    one_each = _digit_folder(tmp_path / "tiny", per_class=1)
    tiny = resolve_data(one_each, input_size=16)
    assert len(tiny.split("all")) == 3  # too small to hold any out: judged whole all the same
    with pytest.raises(RtkError, match="leaves no images for validation"):
        tiny.dataset("val")


def test_a_split_folder_is_judged_on_its_test_split(tmp_path):
    for split in ("train", "val", "test"):
        _digit_folder(tmp_path / "ds" / split, per_class=2)
    source = resolve_data(tmp_path / "ds", input_size=16)
    assert source.judged_split == "test" and len(source.split("test")) == 6
