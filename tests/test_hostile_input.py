"""Hostile input, by mechanism: one rule per numeric option (a usage error, 64, on every command),
one output guard (inputs through symlinks, files rtk did not write), one mapping of operating-system
errors (exit 1, "cannot read/write X: reason", a real file-size limit included), one finite check
on every engine result, and a checksum test of zip checkpoints.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import PETS_PRE, PETS_SPEC, fails_cleanly, write_pets
from toolkit.core.spec import METADATA_KEY
from toolkit.core.validation import COUNT, POSITIVE, SEED, Number, UsageError

ROOT = Path(__file__).resolve().parents[1]
SPEC, PRE = PETS_SPEC, PETS_PRE


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A checkpoint and a labelled image folder, shared read-only."""
    return write_pets(tmp_path_factory.mktemp("hostile"))


def _edited_checkpoint(work, path, key, edit):
    obj = torch.load(work / "m.pth", weights_only=True)
    edit(obj["state_dict"][key])
    torch.save(obj, path)
    return path


def _rtk(*args, cwd=None, preexec=None, prefix=()):
    """``rtk`` in a fresh interpreter (what a shell runs), with this checkout's code."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [*prefix, sys.executable, "-m", "toolkit", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, preexec_fn=preexec, timeout=300)


# --- one rule per numeric option: a usage error (64) on every command ------------------------------


@pytest.mark.parametrize(
    "args, phrase",
    [
        (["predict", "{imgs}", "-m", "{m}", "-b", "99999999999999999999999"], "--batch-size must be at least 1 and at most 2147483647"),
        (["parity", "{m}", "-e", "eager", "--seed", "-1"], "--seed must be at least 0 and at most 4294967295, got -1"),
        (["parity", "{m}", "-e", "eager", "--min-top1", "-0.5"], "--min-top1 must be at least 0 and at most 1"),
        (["parity", "{m}", "-e", "eager", "--rtol", "inf"], "--rtol must be a finite number, got inf"),
        (["train", "--epochs", "99999999999999999999999"], "--epochs must be at least 1 and at most 2147483647"),
        (["train", "--val-split", "nan"], "--val-split must be a finite number, got nan"),
        (["eval", "{m}", "--max-samples", "0"], "--max-samples must be at least 1, got 0"),
        (["eval", "{m}", "--max-samples", "-1"], "--max-samples must be at least 1, got -1"),
        (["eval", "{m}", "--val-split", "1"], "--val-split must be at least 0 and below 1"),
        (["demo", "--bench-seconds", "nan"], "--bench-seconds must be a finite number, got nan"),
        (["doctor", "--check", "--bench-seconds", "nan"], "--bench-seconds must be a finite number, got nan"),
        (["bench", "{m}", "--warmup", "-1"], "--warmup must be at least 0, got -1.0"),
        (["bench", "{m}", "--out", "{tmp}", "--name", "../../escaped"], "--name '../../escaped' must be a name, not a path"),
        (["export", "{m}", "--opset", "99999999999999"], "--opset must be at least 1 and at most 2147483647"),
        (["triton", "{m}", "--repo", "{tmp}", "--max-queue-delay-us", "-1"], "--max-queue-delay-us must be at least 0"),
        (["build", "{m}", "--max-batch", "0"], "--max-batch must be at least 1, got 0"),
    ],
)
def test_a_number_outside_its_rule_is_a_usage_error_on_every_command(work, cli, tmp_path, args, phrase):
    argv = [a.format(m=work / "m.pth", imgs=work / "imgs", tmp=tmp_path / "out") for a in args]
    result = cli(*argv)
    fails_cleanly(result, phrase, f"(see `rtk {args[0]} --help`)", status=64)
    assert not (tmp_path / "out").exists() and not (tmp_path.parent.parent / "escaped.json").exists()


def test_the_options_objects_check_the_same_rule_with_the_same_sentence(work, cli):
    from toolkit.usecases.parity import ParityOptions
    from toolkit.usecases.predict import PredictOptions

    cli_line = cli("predict", work / "imgs", "-m", work / "m.pth", "--top-k", "0").stderr
    with pytest.raises(UsageError) as caught:
        PredictOptions(top_k=0)
    assert f"error: {caught.value} (see" in cli_line
    with pytest.raises(UsageError, match="^--seed must be at least 0 and at most 4294967295, got -1$"):
        ParityOptions(engines=("eager",), seed=-1)


def test_a_rule_refuses_what_parses_as_a_number_but_is_not_one():
    assert COUNT.check(None, "--x") is None and COUNT.check(5, "--x") == 5
    for rule, value, message in (
        (COUNT, True, "must be a whole number, got True"),
        (COUNT, 2.0, "must be a whole number"),
        (COUNT, 2**31, "must be at least 1 and at most 2147483647"),
        (POSITIVE, float("nan"), "must be a finite number, got nan"),
        (POSITIVE, float("-inf"), "must be a finite number, got -inf"),
        (POSITIVE, 0.0, "must be more than 0, got 0.0"),
        (SEED, 2**32, "must be at least 0 and at most 4294967295"),
        (Number(float, 0, 1, open_high=True, why="a reason"), 1.0, "must be at least 0 and below 1, got 1.0: a reason"),
    ):
        with pytest.raises(UsageError, match=message):
            rule.check(value, "--x")
    assert POSITIVE.check(3, "--x") == 3  # a whole number is a real number too


@pytest.mark.parametrize(
    "command, flag, shown",
    [("predict", "--top-k", "[≥ 1]"), ("train", "--lr", "[> 0]"), ("parity", "--seed", "[0 ≤ N ≤ 4294967295]"), ("train", "--val-split", "[0 ≤ x < 1]")],
)
def test_help_shows_each_numeric_rule(cli, command, flag, shown):
    text = " ".join(cli(command, "--help", env={"COLUMNS": "400"}).stdout.split())
    assert flag in text and shown in text


def test_no_command_lets_the_argument_parser_test_a_path():
    """typer tests a path's readability itself unless told not to, and calls a permission-denied
    file a usage error (64); rtk's readers say it, with exit status 1, like every other OS error."""
    from typer.models import ParameterInfo

    from toolkit.cli.app import COMMANDS

    checked = 0
    for name, command in COMMANDS:
        for param, hint in typing.get_type_hints(command, include_extras=True).items():
            base = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
            if Path in (typing.get_args(base) or (base,)):
                infos = [m for m in hint.__metadata__ if isinstance(m, ParameterInfo)]
                assert infos and not infos[0].readable and not infos[0].exists, f"rtk {name} {param}"
                checked += 1
    assert checked >= 25


# --- one output guard: every input through symlinks, and files rtk did not write -----------------


def test_export_never_replaces_an_onnx_file_rtk_did_not_write(work, cli, tmp_path):
    ckpt = Path(shutil.copy(work / "m.pth", tmp_path / "m.pth"))
    foreign = {tmp_path / "m.onnx": b"someone's model", tmp_path / "m.fp16.onnx": b"someone's fp16 model"}
    (tmp_path / "mine.onnx").write_bytes(b"the user's own")
    for path, data in foreign.items():
        path.write_bytes(data)
    for args in ([], ["--precision", "all"], ["-o", tmp_path / "mine.onnx"]):
        fails_cleanly(cli("export", ckpt, "--no-check", *args), "exists and was not written by rtk, so it is not overwritten")
    (tmp_path / "m.onnx").unlink()
    fails_cleanly(cli("export", ckpt, "--no-check", "--precision", "all"), "refusing --output", "m.fp16.onnx: it exists")
    assert not (tmp_path / "m.onnx").exists()  # the fp16 refusal came first: nothing half done
    assert (tmp_path / "m.fp16.onnx").read_bytes() == foreign[tmp_path / "m.fp16.onnx"]
    assert (tmp_path / "mine.onnx").read_bytes() == b"the user's own"
    assert cli("export", ckpt, "--no-check").exit_code == 0  # then an rtk file is rtk's to refresh
    assert cli("export", ckpt, "--no-check").exit_code == 0


def test_an_output_linking_to_an_input_image_is_refused(work, cli, tmp_path):
    image = work / "imgs" / "cat" / "one.png"
    before = image.read_bytes()
    for name, flag in (("out.jsonl", "-o"), ("cm.png", "--confusion-png"), ("out.csv", "-o")):
        link = tmp_path / name
        link.symlink_to(image)
        fails_cleanly(cli("predict", work / "imgs", "-m", work / "m.pth", flag, link), f"links to {image}", "which is being read")
        assert link.is_symlink() and image.read_bytes() == before


def test_build_never_replaces_an_engine_rtk_did_not_build(work, cli, exported_models, tmp_path):
    onnx_path = exported_models(tmp_path)["fp32"]
    engine = tmp_path / "theirs.engine"
    engine.write_bytes(b"built by trtexec")
    fails_cleanly(cli("build", onnx_path, "-o", engine), "theirs.engine: it exists and was not written by rtk")
    assert engine.read_bytes() == b"built by trtexec"


# --- operating-system errors: exit 1, "cannot read/write X: reason" --------------------------------


def _unprivileged():
    """How to run a process that obeys file permissions: as root, one without the capabilities that bypass them."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: no way to make a permission refusal")
    caps = "-dac_override,-dac_read_search"
    return ("setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}")


def test_a_file_or_folder_without_read_permission_is_an_os_error_not_a_usage_error(work, tmp_path):
    prefix = _unprivileged()
    secret = Path(shutil.copy(work / "m.pth", tmp_path / "secret.pth"))
    locked = tmp_path / "locked"
    shutil.copytree(work / "imgs", locked)
    onnx = tmp_path / "locked.onnx"
    onnx.write_bytes(b"x")
    for path in (secret, locked, onnx):
        path.chmod(0)
    try:
        for args, what in (
            (["inspect", secret], secret), (["export", secret, "--no-check"], secret),
            (["predict", locked, "-m", work / "m.pth"], locked), (["predict", work / "imgs", "-m", onnx], onnx),
        ):
            result = _rtk(*args, prefix=prefix)
            assert result.returncode == 1, (args, result.stderr)
            assert result.stderr.strip().splitlines()[-1] == f"error: cannot read {what}: permission denied", result.stderr
    finally:
        for path in (secret, locked, onnx):
            path.chmod(0o755)


@pytest.mark.parametrize("args", [["eval", "{loop}"], ["inspect", "{loop}"], ["export", "{loop}"], ["predict", "{imgs}", "-m", "{loop}"], ["predict", "{loop}", "-m", "{m}"]])
def test_a_symlink_loop_is_one_sentence(work, cli, tmp_path, args):
    loop = tmp_path / "loop.pth"
    loop.symlink_to(tmp_path / "loop2.pth")
    (tmp_path / "loop2.pth").symlink_to(loop)
    result = cli(*(a.format(loop=loop, imgs=work / "imgs", m=work / "m.pth") for a in args))
    fails_cleanly(result, f"cannot read {loop}: too many levels of symbolic links")


def _limited(limit: int):
    """A child's file-size limit; SIGXFSZ ignored (as Python does), so a write past it fails with EFBIG."""
    import resource
    import signal

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize(
    "args, written",
    [
        (["train", "--data", "digits", "--epochs", "1", "--max-samples", "16", "--input-size", "8", "--width", "16", "--no-progress", "--out", "{tmp}/run"], "{tmp}/run/best.pth"),
        (["export", "{m}", "--no-check", "-o", "{tmp}/m.onnx"], "{tmp}/m.onnx"),
        (["predict", "{imgs}", "-m", "{m}", "--workers", "0", "-o", "{tmp}/out.json"], "{tmp}/out.json"),
    ],
    ids=["train-torch-save", "export", "predict"],
)
def test_a_file_size_limit_is_one_sentence_and_leaves_nothing(work, tmp_path, args, written):
    # A real RLIMIT_FSIZE: torch.save's zip writer swallows the EFBIG and fails with "unexpected pos".
    argv = [a.format(m=work / "m.pth", imgs=work / "imgs", tmp=tmp_path) for a in args]
    result = _rtk(*argv, preexec=_limited(300), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: cannot write {written.format(tmp=tmp_path)}: file too large", result.stderr
    assert "Traceback" not in result.stderr
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == [], leftovers


# --- no NaN ever printed as a result --------------------------------------------------------------


@pytest.fixture(scope="module")
def nan_onnx(exported_models, tmp_path_factory):
    """The tiny model's ONNX with one NaN in a convolution's weights: ONNX Runtime computes NaN logits."""
    import onnx
    from onnx import numpy_helper

    folder = tmp_path_factory.mktemp("nan-onnx")
    files = exported_models(folder)
    model = onnx.load(str(files["fp32"]))
    init = next(t for t in model.graph.initializer if len(t.dims) == 4)
    weights = numpy_helper.to_array(init).copy()
    weights.flat[0] = np.nan
    init.CopyFrom(numpy_helper.from_array(weights, init.name))
    onnx.save(model, str(folder / "nan.onnx"))
    return files["ckpt"], folder / "nan.onnx"


def test_predict_never_writes_nan_probabilities(nan_onnx, cli, tmp_path):
    _, path = nan_onnx
    Image.new("RGB", (32, 32), (10, 200, 30)).save(tmp_path / "a.png")
    for fmt in ("json", "csv", "table"):
        out = tmp_path / f"out.{'txt' if fmt == 'table' else fmt}"
        result = cli("predict", tmp_path / "a.png", "-m", path, "-f", fmt, "-o", out)
        fails_cleanly(result, "the ort engine computed NaN logits for 1 of 1 input(s)", f"(first: {tmp_path / 'a.png'})")
        assert not out.exists() and "NaN" not in result.stdout


def test_eval_refuses_nan_logits_in_one_sentence(nan_onnx, cli, tmp_path):
    _, path = nan_onnx
    folder = tmp_path / "data"
    for i in range(10):
        (folder / f"c{i}").mkdir(parents=True)
        for j in range(2):
            Image.new("RGB", (32, 32), (i * 20, j * 50, 0)).save(folder / f"c{i}" / f"x{j}.png")
    fails_cleanly(cli("eval", path, "--data", folder, "--val-split", "0.5", "--json"), "the ort engine computed NaN logits")


def test_parity_reports_an_engine_that_computes_nan_as_failed_in_valid_json(nan_onnx, cli, tmp_path):
    ckpt, path = nan_onnx
    out = tmp_path / "parity.json"
    result = cli("parity", ckpt, "-e", "eager,ort", "--onnx", path, "--json", out)
    assert result.exit_code == 1 and "parity failed: ort" in result.stderr
    assert "not finite" in result.stdout and not re.search(r"\b(nan|inf)\b", result.stdout)  # Python's spelling of a NaN
    report = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    eager, ort = report["engines"]
    assert eager["passed"] and not ort["passed"]
    assert ort["random"]["max_abs"] is None and any("NaN or infinite" in f for f in ort["random"]["failures"])


def test_a_negative_batchnorm_variance_is_refused_by_every_command_that_runs_it(work, cli, tmp_path):
    bad = _edited_checkpoint(work, tmp_path / "negvar.pth", "bn1.running_var", lambda t: t.__setitem__(0, -1.0))
    for args in (["predict", work / "imgs", "-m", bad], ["export", bad], ["parity", bad, "-e", "eager"], ["eval", bad, "--data", "digits"]):
        fails_cleanly(cli(*args), "hold a negative variance in bn1.running_var (1 of 16 values)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["negvar.pth"]


@pytest.mark.parametrize("key, edit, phrase", [
    ("layer1.0.conv1.weight", lambda t: t.view(-1).__setitem__(0, float("nan")), "hold NaN/Inf in layer1.0.conv1.weight"),
    ("bn1.running_var", lambda t: t.__setitem__(0, -1.0), "hold a negative variance in bn1.running_var"),
])  # fmt: skip
def test_training_refuses_broken_pretrained_weights_before_it_starts(work, cli, tmp_path, key, edit, phrase):
    bad = _edited_checkpoint(work, tmp_path / "bad.pth", key, edit)
    result = cli("train", "--pretrained", bad, "--data", work / "imgs", "--epochs", "1", "--out", tmp_path / "run", "--no-progress")
    fails_cleanly(result, phrase)
    assert "lower --lr" not in result.stderr and not (tmp_path / "run").exists()


def test_an_onnx_whose_graph_and_metadata_disagree_on_the_classes_is_one_sentence(exported_models, cli, tmp_path):
    import onnx

    files = exported_models(tmp_path)
    model = onnx.load(str(files["fp32"]))
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "classes"  # nothing to check before running
    prop = next(p for p in model.metadata_props if p.key == METADATA_KEY)
    record = json.loads(prop.value)
    record["spec"] = {**record["spec"], "num_classes": 4, "class_names": ["a", "b", "c", "d"]}
    prop.value = json.dumps(record)
    onnx.save(model, str(tmp_path / "wide.onnx"))
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    fails_cleanly(cli("predict", tmp_path / "a.png", "-m", tmp_path / "wide.onnx"), "returned logits of shape (1, 10)", "spec has 4 classes")


def test_json_text_never_writes_nan():
    from toolkit.core.outputs import json_text

    text = json_text({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}, "e": 2.5})
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": {"d": None}, "e": 2.5}


# --- checkpoints: checksums, config files, names ---------------------------------------------------


def test_a_checkpoint_whose_bytes_no_longer_match_its_checksum_is_refused(work, cli, tmp_path):
    import zipfile

    data = bytearray((work / "m.pth").read_bytes())
    with zipfile.ZipFile(work / "m.pth") as archive:
        record = max(archive.infolist(), key=lambda i: i.file_size)  # the largest tensor
    local = record.header_offset  # the local header's own name and extra lengths (torch pads the extra field)
    start = local + 30 + int.from_bytes(data[local + 26 : local + 28], "little") + int.from_bytes(data[local + 28 : local + 30], "little")
    data[start + 100] ^= 0x01  # one bit of one weight
    bad = tmp_path / "flipped.pth"
    bad.write_bytes(bytes(data))
    for args in (["inspect", bad], ["predict", work / "imgs", "-m", bad], ["export", bad]):
        fails_cleanly(cli(*args), f"{bad} is corrupt: the bytes of {record.filename} no longer match the checksum (CRC-32)")


@pytest.mark.parametrize(
    "config, phrase",
    [
        ('predict = "m.pth"\n', 'predict must be a table ([predict] with model = "path"), not a string'),
        ("model = 3\n", "model must be a path in quotes (model = \"path/to/model.pth\"), not the integer 3"),
        ('[predict]\nmodel = ""\n', "predict.model must be a path in quotes"),
        ("model = [\n", "is not valid TOML"),
    ],
)
def test_a_config_file_of_the_wrong_shape_names_the_key(work, cli, tmp_path, config, phrase):
    shutil.copytree(work / "imgs", tmp_path / "imgs")
    (tmp_path / "imgs" / "rtk.toml").write_text(config)
    fails_cleanly(cli("predict", tmp_path / "imgs"), phrase)


def test_a_checkpoint_name_that_is_not_utf8_exports_and_is_checked(work, cli, tmp_path):
    name = os.fsdecode(b"caf\xe9.pth")  # Latin-1 bytes: not UTF-8, so ONNX Runtime cannot take the path as text
    ckpt = Path(shutil.copy(work / "m.pth", tmp_path / name))
    result = cli("export", ckpt)
    assert result.exit_code == 0, result.stderr
    assert "top-1 agreement 100.0%" in result.stdout and (tmp_path / os.fsdecode(b"caf\xe9.onnx")).is_file()


def test_first_line_keeps_whole_sentences_when_the_line_goes_on_below():
    from toolkit.core.errors import first_line

    text = "__init__(): incompatible constructor arguments. The following argument types are supported:\n    1. (a: str)"
    assert first_line(text) == "__init__(): incompatible constructor arguments."
