"""Images with or without labels for calibration and checks: datasets, any folder of images, file lists."""

from __future__ import annotations

import pytest

from toolkit.core.data import write_digit_images
from toolkit.core.errors import RtkError
from toolkit.core.image_sets import calibration_pool, few_judged_warning, judged_set, match_classes, prepare_images
from toolkit.core.spec import ModelSpec, Preprocess

SPEC = ModelSpec(arch="resnet18", num_classes=10, class_names=tuple("0123456789"), in_chans=1, stem="small", width=16)
PRE = Preprocess(input_size=(8, 8), resize=8, crop=False, mean=(0.5,), std=(0.5,), channels="gray")


@pytest.fixture
def flat(tmp_path):
    """40 real digit images with no class folders: 20 at the top, 20 in a sub-folder, and a text file."""
    written = write_digit_images(tmp_path / "classes", "train", per_class=4)
    folder = tmp_path / "flat"
    (folder / "more").mkdir(parents=True)
    for i, path in enumerate(written):
        (folder if i % 2 else folder / "more").joinpath(f"img{i:02d}.png").write_bytes(path.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_a_flat_folder_is_searched_recursively_and_split_into_calibration_and_held_out(flat):
    pool, held = calibration_pool(flat, 8, samples=256)
    assert len(pool) + len(held) == 40 and len(held) == 8  # a fifth held out: the folder has fewer than 256
    assert not set(pool.paths) & set(held.paths)
    assert {p.parent.name for p in pool.paths + held.paths} == {"flat", "more"}
    assert pool.class_names is None and held.description == f"{flat} (folder, held out)"
    pool, held = calibration_pool(flat, 8, samples=10)
    assert (len(pool), len(held)) == (10, 30)  # the images calibration does not take judge
    assert calibration_pool(flat, 8, samples=10, seed=0)[1].paths == held.paths  # seeded


def test_a_file_list_names_images_relative_to_itself(flat, tmp_path):
    images = sorted(flat.rglob("*.png"))[:12]
    listing = tmp_path / "calib.txt"
    listing.write_text("# calibration images\n\n" + "\n".join(str(p.relative_to(tmp_path)) for p in images[:6]) + "\n"
                       + "\n".join(str(p) for p in images[6:]) + "\n")
    listed = judged_set(listing, 8)
    assert list(listed.paths) == [tmp_path / p.relative_to(tmp_path) for p in images[:6]] + images[6:]
    prepared = prepare_images(listed, SPEC, PRE)
    assert prepared.images.shape == (12, 1, 8, 8) and prepared.labels is None
    assert prepared.unlabelled_reason == "the images are not labelled"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "lists no images; give one image path per line"),
        ("a.png\nnotes.txt\n", "lists notes.txt, which is not an image by its suffix"),
        (b"\xff\xfe\x00binary", "is neither a folder nor a text file listing images"),
    ],
)
def test_a_bad_file_list_is_one_sentence(tmp_path, content, message):
    listing = tmp_path / "list.txt"
    listing.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(RtkError, match=message):
        calibration_pool(listing, 8, samples=4)


def test_too_few_or_no_images_are_refused(tmp_path, flat):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RtkError, match="no images in"):
        calibration_pool(empty, 8, samples=4)
    one = tmp_path / "one"
    one.mkdir()
    next(flat.glob("*.png")).rename(one / "a.png")
    with pytest.raises(RtkError, match="holds 1 image; calibrating and judging an int8 file needs at least two"):
        calibration_pool(one, 8, samples=4)


def test_a_dataset_calibrates_on_its_training_split_and_judges_on_its_test_split(tmp_path):
    pool, held = calibration_pool("digits", 8, samples=256)
    assert (pool.description, held.description) == ("digits (train)", "digits (test)") and len(held) == 360
    labelled = tmp_path / "labelled"
    write_digit_images(labelled, "test", per_class=3)
    pool, held = calibration_pool(labelled, 8, samples=256)
    assert pool.class_names == tuple("0123456789") and len(pool) + len(held) == 30
    prepared = prepare_images(held, SPEC, PRE)
    assert prepared.labels is not None and set(prepared.labels) <= set(range(10))


def test_labels_count_where_the_data_classes_are_the_models(tmp_path):
    three = tmp_path / "three"
    write_digit_images(three, "test", classes=(0, 1, 2), per_class=2)
    prepared = prepare_images(judged_set(three, 8), SPEC, PRE)
    assert prepared.labels.tolist() == [0, 0, 1, 1, 2, 2]  # three of the model's ten classes: matched by name
    reordered = ModelSpec(arch="resnet18", num_classes=3, class_names=("c", "a", "b"), in_chans=1, stem="small")
    assert match_classes(reordered, ("a", "b", "c")).mapping == (1, 2, 0)  # matched by name
    foreign = match_classes(reordered, ("x", "b", "z"))
    assert foreign.mapping == (-1, 2, -1) and not foreign.complete
    assert foreign.reason.startswith("the data has classes the model does not know: x, z")
    assert match_classes(reordered, None).reason == "the images are not labelled"


def test_a_model_without_class_names_is_matched_by_folder_order_and_says_so(tmp_path):
    nameless = ModelSpec(arch="resnet18", num_classes=3, in_chans=1, stem="small")
    match = match_classes(nameless, ("cat", "dog", "fox"))
    assert match.mapping == (0, 1, 2) and match.complete
    assert "no class names" in match.assumed and "(cat, dog, fox)" in match.assumed
    assert match_classes(nameless, ("cat", "dog")).mapping is None
    three = tmp_path / "three"
    write_digit_images(three, "test", classes=(0, 1, 2), per_class=1)
    prepared = prepare_images(judged_set(three, 8), ModelSpec(arch="resnet18", num_classes=3, in_chans=1, stem="small"), PRE)
    assert prepared.labels.tolist() == [0, 1, 2] and "sorted order" in prepared.assumed


def test_a_folder_of_class_folders_is_judged_whole_and_a_split_folder_on_its_test_split(tmp_path):
    classes = tmp_path / "classes"
    write_digit_images(classes, "test", per_class=4)
    judged = judged_set(classes, 8)
    assert len(judged) == 40 and judged.class_names == tuple("0123456789")  # all of it, not a tenth
    assert judged.description == f"{classes} (10 class folders)"
    split = tmp_path / "split"
    for name, per_class in (("train", 3), ("val", 2), ("test", 1)):
        write_digit_images(split / name, "test", per_class=per_class)
    assert len(judged_set(split, 8)) == 10 and judged_set(split, 8).description == f"{split} (test)"
    pool, held = calibration_pool(split, 8, samples=256)
    assert (len(pool), len(held)) == (30, 10)


def test_an_unreadable_image_is_skipped_and_calibration_images_are_left_out_of_a_check(flat):
    bad = flat / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    everything = judged_set(flat, 8)
    assert len(everything) == 41
    calibrated = [p for p in everything.paths if p != bad][:5]
    prepared = prepare_images(everything, SPEC, PRE, exclude=calibrated)
    assert len(prepared) == 41 - 1 - 5 and bad not in prepared.paths and not set(prepared.paths) & set(calibrated)


def test_few_judged_images_get_a_warning():
    assert few_judged_warning(120, "x") is None
    assert few_judged_warning(8, "the int8 files").startswith("only 8 images judged the int8 files: one image is 12.5 points")
