"""``rtk predict`` on messy real folders: every kind of image file, unreadable ones, nested and
labelled folders, every output format parsed back, and the exit-status rule."""

from __future__ import annotations

import csv
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import make_checkpoint, noise_image, opened, write_messy_folder
from toolkit.core.errors import RtkError
from toolkit.core.spec import ModelSpec, Preprocess

GOOD = (
    "photo.jpg", "UPPER.JPEG", "gray.png", "palette.png", "rgba.png", "deep16.png",
    "anim.gif", "cmyk.tiff", "pic.webp", "pic.bmp", "Shout.PNG",
)
NESTED = ("nested/inner.jpg",)
BAD = {
    "empty.jpg": "empty file",
    "notes.jpg": "not an image",
    "truncated.png": "truncated",
    "corrupt.png": "corrupt",
}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pth")


@pytest.fixture
def messy(tmp_path) -> Path:
    return write_messy_folder(tmp_path / "photos")


def run_json(cli, *args):
    result = cli("predict", *args, "--format", "json")
    return result, (json.loads(result.stdout) if result.stdout.strip() else None)


def by_name(rows):
    return {Path(r["path"]).name: r for r in rows}


def test_messy_folder_predicts_good_and_explains_bad(cli, model, messy):
    result, out = run_json(cli, messy, "--model", model, "--recursive")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    rows = by_name(out["predictions"])
    assert set(rows) == set(GOOD) | {"inner.jpg"} | set(BAD)
    for name in (*GOOD, "inner.jpg"):
        row = rows[name]
        assert row["error"] is None, (name, row["error"])
        assert row["top1"] in {f"c{i}" for i in range(10)} and len(row["top_k"]) == 5
        assert row["top_k"][0]["class"] == row["top1"] and 0 < row["top1_prob"] <= 1
        probs = [t["prob"] for t in row["top_k"]]
        assert probs == sorted(probs, reverse=True)
    for name, reason in BAD.items():
        assert rows[name]["top1"] is None and reason in rows[name]["error"]
        assert name in result.stderr and reason in result.stderr  # reported as they happen, on stderr
    assert out["classified"] == len(GOOD) + 1 and out["failed"] == len(BAD) and out["evaluation"] is None
    assert "images/s" in result.stderr
    assert "ignored 1 file that is not an image by its suffix: readme.txt" in result.stderr
    assert [Path(p).name for p in out["ignored"]] == ["readme.txt"]


def test_files_without_an_image_suffix_are_named_but_do_not_fail_the_run(cli, model, tmp_path):
    folder = tmp_path / "holiday"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(5)
    Image.fromarray(noise_image(rng, 32, 32)).save(folder / "a.jpg")
    Image.fromarray(noise_image(rng, 32, 32)).save(folder / "sub" / "b.png")
    (folder / "notes.txt").write_text("where we went\n")
    (folder / "b.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")  # a format Pillow cannot read
    for name in ("c.raw", "d.psd", "sub/e.doc"):
        (folder / name).write_bytes(b"x")
    (folder / ".DS_Store").write_bytes(b"\x00")  # the system's, not the user's: stays silent
    result, out = run_json(cli, folder, "--model", model, "--recursive")
    assert result.exit_code == 0, result.output
    assert out["classified"] == 2 and out["failed"] == 0
    [line] = [line for line in result.stderr.splitlines() if "ignored" in line]
    assert line == "ignored 5 files that are not images by their suffix: b.heic, c.raw, d.psd and 2 more"
    assert ".DS_Store" not in result.stderr and "skipped" not in result.stderr


def test_folder_of_only_unsupported_files_says_what_it_found(cli, model, tmp_path):
    (tmp_path / "IMG_1.heic").write_bytes(b"x")
    (tmp_path / "IMG_2.heic").write_bytes(b"x")
    result = cli("predict", tmp_path, "--model", model)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "no images in" in result.stderr
    assert "ignored 2 files that are not images by their suffix: IMG_1.heic, IMG_2.heic" in result.stderr


def test_without_recursive_nested_is_left_out(cli, model, messy):
    result, out = run_json(cli, messy, "--model", model)
    assert result.exit_code == 2
    assert "inner.jpg" not in by_name(out["predictions"]) and len(out["predictions"]) == len(GOOD) + len(BAD)


def test_clean_folder_exits_zero_and_single_file_works(cli, model, messy):
    for bad in BAD:
        (messy / bad).unlink()
    result, out = run_json(cli, messy, "--model", model)
    assert result.exit_code == 0, result.output
    assert out["failed"] == 0 and out["classified"] == len(GOOD)
    result, single = run_json(cli, messy / "photo.jpg", "--model", model, "--top-k", "3")
    assert result.exit_code == 0
    [row] = single["predictions"]
    assert len(row["top_k"]) == 3 and row == {**by_name(out["predictions"])["photo.jpg"], "top_k": row["top_k"]}


def test_strict_fails_before_writing(cli, model, messy, tmp_path):
    target = tmp_path / "out.json"
    result = cli("predict", messy, "--model", model, "--strict", "-o", target)
    assert result.exit_code == 1
    assert "--strict" in result.stderr and "Traceback" not in result.output
    assert not target.exists()


@pytest.mark.parametrize(
    "setup,args,message",
    [
        ("empty", [], "no images in"),
        ("empty_subs", [], "no images in"),
        ("all_bad", [], "none of the 2 file(s) could be read"),
        ("missing", [], "does not exist"),
        ("flat", ["--top-k", "0"], "--top-k must be at least 1"),
        ("flat", ["--batch-size", "0"], "--batch-size must be at least 1"),
        ("flat", ["--workers", "-1"], "--workers must be at least 0"),
        ("flat", ["-b", "99999999999999999999999"], "--batch-size must be at least 1 and at most 2147483647"),
        ("flat", ["-o", "."], "is a folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_one(cli, model, tmp_path, setup, args, message):
    folder = tmp_path / "in"
    if setup != "missing":
        folder.mkdir()
    if setup == "empty_subs":
        (folder / "sub" / "deeper").mkdir(parents=True)
        (folder / "sub" / "notes.txt").write_text("no image anywhere")
    if setup == "all_bad":
        (folder / "a.jpg").write_bytes(b"")
        (folder / "b.png").write_text("text")
    if setup == "flat":
        Image.new("RGB", (8, 8)).save(folder / "a.png")
    result = cli("predict", folder, "--model", model, *args)
    # A number outside its option's rule is a usage error (64), refused before the model is read.
    assert result.exit_code == (64 if "must be at" in message else 1), result.output
    assert message in result.stderr and "Traceback" not in result.output


def test_bad_model_is_one_line(cli, messy, tmp_path):
    result = cli("predict", messy, "--model", tmp_path / "nope.pth")
    assert result.exit_code == 1 and "does not exist" in result.stderr and "Traceback" not in result.output


def test_csv_and_jsonl_parse_back_and_match_json(cli, model, messy, tmp_path):
    _, ref = run_json(cli, messy, "--model", model, "-k", "2")
    expected = by_name(ref["predictions"])
    out_csv = tmp_path / "out" / "preds.csv"  # format from the suffix; parent created
    result = cli("predict", messy, "--model", model, "-k", "2", "-o", out_csv)
    assert result.exit_code == 2 and result.stdout == ""
    with open(out_csv, newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["path", "label", "top1", "top1_index", "top1_prob", "top_k", "error"]
        rows = list(reader)
    assert len(rows) == len(expected)
    for row in rows:
        want = expected[Path(row["path"]).name]
        assert row["top1"] == (want["top1"] or "") and row["error"] == (want["error"] or "")
        assert json.loads(row["top_k"]) == want["top_k"]
        if want["top1"] is not None:
            assert int(row["top1_index"]) == want["top1_index"] and float(row["top1_prob"]) == want["top1_prob"]
    assert [p.name for p in out_csv.parent.iterdir()] == ["preds.csv"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out_csv.stat().st_mode) == 0o666 & ~umask  # readable like any file, not mkstemp's 0600
    result = cli("predict", messy, "--model", model, "-k", "2", "--format", "jsonl")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert by_name(lines) == expected


def test_output_to_a_pipe_is_written_not_replaced(cli, model, messy, tmp_path):
    """-o /dev/stdout or a named pipe must be written through, never renamed over."""
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    result = cli("predict", messy, "--model", model, "-f", "jsonl", "-o", fifo)
    reader.join(timeout=60)
    assert result.exit_code == 2
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert len(received[0].splitlines()) == len(GOOD) + len(BAD)


def test_table_output_lists_predictions_and_errors(cli, model, messy):
    result = cli("predict", messy, "--model", model)
    assert result.exit_code == 2
    for name in GOOD + tuple(BAD):
        assert name in result.stdout
    assert "empty file (0 bytes)" in result.stdout


def test_batching_and_parallel_decoding_do_not_change_results(model, messy):
    from toolkit.usecases.predict import PredictOptions, predict

    with opened(model) as engine:
        serial = predict(messy, engine, PredictOptions(batch_size=3, workers=0, recursive=True))
        parallel = predict(messy, engine, PredictOptions(batch_size=5, workers=3, recursive=True))
    assert [p.path for p in serial.predictions] == [p.path for p in parallel.predictions]
    for a, b in zip(serial.predictions, parallel.predictions):
        assert a.error == b.error and [i for i, _ in a.top_k] == [i for i, _ in b.top_k]
        np.testing.assert_allclose([p for _, p in a.top_k], [p for _, p in b.top_k], atol=1e-5)


def test_exif_orientation_changes_the_prediction_input(model, tmp_path):
    """A tagged sideways photo is classified exactly like the upright one, not like its raw pixels."""
    from toolkit.usecases.predict import PredictOptions, predict

    arr = np.random.default_rng(3).integers(0, 256, (30, 60, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 8  # turn 90° counter-clockwise to view
    Image.fromarray(arr).save(tmp_path / "a_tagged.png", exif=exif)
    Image.fromarray(np.rot90(arr)).save(tmp_path / "b_upright.png")
    Image.fromarray(arr).save(tmp_path / "c_raw.png")
    with opened(model) as engine:
        tagged, upright, raw = predict(tmp_path, engine, PredictOptions(top_k=10, workers=0)).predictions
    assert tagged.top_k == upright.top_k
    assert max(abs(p - q) for (_, p), (_, q) in zip(sorted(tagged.top_k), sorted(raw.top_k))) > 1e-4


def test_labelled_folder_reports_accuracy_and_confusion(cli, model, tmp_path):
    rng = np.random.default_rng(11)
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(12):
        Image.fromarray(noise_image(rng, 32, 32)).save(flat / f"img{i:02d}.png")
    _, out = run_json(cli, flat, "--model", model)
    predicted = {Path(r["path"]).name: r["top1"] for r in out["predictions"]}
    # Put 8 images in the folder of the class the model predicts and 4 in another one: the
    # expected accuracy is known exactly.
    labelled = tmp_path / "labelled"
    truth = {}
    for i, (name, top1) in enumerate(sorted(predicted.items())):
        label = top1 if i < 8 else f"c{(int(top1[1:]) + 1) % 10}"
        truth[name] = label
        (labelled / label).mkdir(parents=True, exist_ok=True)
        (flat / name).rename(labelled / label / name)
    (labelled / "unsorted").mkdir()
    Image.fromarray(noise_image(rng, 32, 32)).save(labelled / "unsorted" / "x.png")  # not a class: classified, not scored
    png = tmp_path / "confusion.png"
    result, out = run_json(cli, labelled, "--model", model, "--confusion-png", png)
    assert result.exit_code == 0, result.output
    assert {Path(r["path"]).name: r["label"] for r in out["predictions"]} == {**truth, "x.png": "unsorted"}
    assert "1 image in class folders not scored: the data has classes the model does not know: unsorted" in result.stderr
    ev = out["evaluation"]
    assert ev["correct"] == 8 and ev["total"] == 12 and ev["accuracy"] == pytest.approx(8 / 12)
    confusion = np.array(ev["confusion_matrix"])
    for name, label in truth.items():
        confusion[int(label[1:]), int(predicted[name][1:])] -= 1
    assert not confusion.any()
    assert png.stat().st_size > 0 and "accuracy 66.67%" in result.stderr
    table = cli("predict", labelled, "--model", model)
    assert "actual \\ predicted" in table.stdout and "accuracy 66.67%" in table.stdout


def test_gray_model_reads_colour_files(cli, tmp_path, messy):
    spec = ModelSpec(arch="resnet18", num_classes=3, stem="small", in_chans=1, width=16)
    pre = Preprocess(input_size=(28, 28), resize=32, crop=True, mean=(0.5,), std=(0.25,), channels="gray")
    gray_model = make_checkpoint(tmp_path / "gray.pth", spec, pre)
    result, out = run_json(cli, messy, "--model", gray_model, "-k", "9")
    assert result.exit_code == 2
    good = [r for r in out["predictions"] if r["error"] is None]
    assert len(good) == len(GOOD) and all(r["top1"] in {"0", "1", "2"} and len(r["top_k"]) == 3 for r in good)


def test_model_from_env_config_or_working_directory(cli, model, messy, tmp_path, monkeypatch):
    from toolkit.usecases.predict import resolve_model

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(RtkError, match="no model given"):
        resolve_model(None, messy)
    (messy / "rtk.toml").write_text(f'[predict]\nmodel = "{model.as_posix()}"\n')
    assert resolve_model(None, messy) == model
    (messy / "rtk.toml").unlink()
    (work / "only.pth").write_bytes(model.read_bytes())
    assert resolve_model(None, messy) == Path("only.pth")
    result, out = run_json(cli, messy)
    assert result.exit_code == 2 and out["classified"] == len(GOOD)
    (work / "only.onnx").write_bytes(b"")
    with pytest.raises(RtkError, match="holds 2"):
        resolve_model(None, messy)
    monkeypatch.setenv("RTK_MODEL", str(model))
    assert resolve_model(None, messy) == model
    (messy / "rtk.toml").write_text("model = [1]\n")
    monkeypatch.delenv("RTK_MODEL")
    result = cli("predict", messy)
    assert result.exit_code == 1 and "model must be a path in quotes" in result.stderr and "not the array [1]" in result.stderr


def test_same_top1_through_checkpoint_onnx_and_fp16_onnx(cli, messy, tmp_path, exported_models):
    # A checkpoint with the exports prepare() would write beside it (exporting on demand is
    # prepare's own test): on an ONNX Runtime engine it runs on them.
    ckpt = exported_models(tmp_path, precisions=("fp32", "fp16"))["ckpt"]
    runs = {}
    for key, engine, args in (
        ("eager", "eager", ["--model", ckpt]),
        ("checkpoint→ort", "ort", ["--model", ckpt, "--engine", "ort"]),
        ("checkpoint→ort-fp16", "ort-fp16", ["--model", ckpt, "--engine", "ort-fp16"]),
        ("onnx→ort", "ort", ["--model", tmp_path / "m.onnx"]),
    ):
        result, out = run_json(cli, messy, *args, "-k", "10")
        assert result.exit_code == 2, result.output
        assert out["engine"] == engine
        runs[key] = by_name(out["predictions"])
    assert (tmp_path / "m.onnx").exists() and (tmp_path / "m.fp16.onnx").exists()
    by_index = lambda row: [t["prob"] for t in sorted(row["top_k"], key=lambda t: t["index"])]  # noqa: E731
    reference = runs.pop("eager")
    for key, run in runs.items():
        assert set(run) == set(reference), key
        fp16 = key.endswith("fp16")
        for file, ref in reference.items():
            row = run[file]
            assert row["error"] == ref["error"], (key, file)
            if ref["error"] is not None:
                continue
            np.testing.assert_allclose(by_index(row), by_index(ref), atol=1e-3 if fp16 else 1e-5, err_msg=f"{key} {file}")
            probs = [t["prob"] for t in ref["top_k"]]
            # fp16 must agree wherever its rounding cannot flip the order (parity's fp16 rule).
            if not fp16 or probs[0] - probs[1] > 2e-3:
                assert row["top1"] == ref["top1"], (key, file)


def test_static_batch_onnx_gets_padded_batches(cli, model, messy, tmp_path):
    """A model exported for batches of exactly 4 classifies 11 images (4+4+3, the last padded)."""
    from exporters.onnx import ExportOptions, export_onnx

    quick = ExportOptions(static_batch=4, check=False, exporter="torchscript", opset=17)  # predict's batching is the subject
    [static] = export_onnx(model, tmp_path / "static4.onnx", options=quick)
    _, ref = run_json(cli, messy, "--model", model)
    result, out = run_json(cli, messy, "--model", static, "--workers", "0")
    assert result.exit_code == 2, result.output
    assert out["classified"] == len(GOOD)
    assert [r["top1"] for r in out["predictions"]] == [r["top1"] for r in ref["predictions"]]
    result = cli("predict", messy, "--model", static, "--batch-size", "8")
    assert result.exit_code == 1 and "larger than the ort engine accepts (at most 4)" in result.stderr


def test_class_folders_are_read_whatever_their_names_and_a_nameless_model_says_what_it_assumes(cli, tmp_path):
    """The layout rtk eval, parity and export --data read as labelled data is read so by predict too."""
    rng = np.random.default_rng(3)
    photos = tmp_path / "photos"
    for name in ("daisy", "rose", "tulip"):
        (photos / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(noise_image(rng, 32, 32)).save(photos / name / f"{i}.jpg")
    named, out = run_json(cli, photos, "--model", make_checkpoint(tmp_path / "named.pth"))  # classes c0…c9
    assert named.exit_code == 0, named.output
    assert out["classified"] == 6 and {r["label"] for r in out["predictions"]} == {"daisy", "rose", "tulip"}
    assert out["evaluation"] is None and "the model does not know: daisy, rose, tulip" in out["notes"][0]
    nameless_spec = ModelSpec(arch="resnet18", num_classes=3, stem="small", width=16)
    nameless = make_checkpoint(tmp_path / "nameless.pth", nameless_spec, Preprocess(input_size=(32, 32), resize=32, crop=False))
    result, out = run_json(cli, photos, "--model", nameless)
    assert result.exit_code == 0, result.output
    assert out["evaluation"]["total"] == 6
    assert "no class names" in result.stderr and "(daisy, rose, tulip)" in result.stderr
    assert any("sorted order" in note for note in out["notes"])
