"""The CLI skeleton: help, version, the error boundary, and ``rtk inspect`` on checkpoints."""

import json
import subprocess
import sys

from toolkit import __version__


def test_help_and_version(cli):
    result = cli("--help")
    assert result.exit_code == 0 and "inspect" in result.output
    result = cli("--version")
    assert result.exit_code == 0 and result.output.strip() == f"rtk {__version__}"


def test_console_script_help_runs_without_optional_packages():
    # A fresh interpreter: importing the CLI must not need tensorrt, a GPU, or onnxruntime-gpu.
    code = "import sys; sys.modules['tensorrt'] = None; from toolkit.cli.app import app; import engines, exporters, toolkit"
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "-m", "toolkit", "--help"], capture_output=True, text=True, check=True)
    assert "Usage" in out.stdout


def test_inspect_checkpoint_table(cli, tiny_checkpoint):
    result = cli("inspect", tiny_checkpoint)
    assert result.exit_code == 0, result.output
    for text in ("resnet18", "num_classes", "10", "parameters", "val_acc"):
        assert text in result.output


def test_inspect_checkpoint_json(cli, tiny_checkpoint):
    result = cli("inspect", tiny_checkpoint, "--json")
    assert result.exit_code == 0
    report = json.loads(result.output)
    assert report["arch"] == "resnet18-w16" and report["num_classes"] == 10
    assert report["parameters"] == 701_466  # resnet18 at width 16, small stem, 10 classes
    assert report["preprocess"]["input_size"] == [32, 32]
    assert report["train"]["metrics"]["val_acc"] == 0.5


def test_inspect_unknown_suffix_is_a_clear_error(cli, tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    result = cli("inspect", tmp_path / "notes.txt")
    assert result.exit_code == 1 and "not a model artefact" in result.stderr


def test_status_lines_print_paths_with_brackets_as_they_are(capsys):
    from toolkit.core.console import info, warn

    info("wrote runs/[exp 1]/best.pth")
    warn("pip install 'resnet-toolkit[trt]'")
    err = capsys.readouterr().err
    assert "runs/[exp 1]/best.pth" in err and "'resnet-toolkit[trt]'" in err


def test_usage_errors_are_one_line_with_their_own_exit_status(cli, tiny_checkpoint):
    from toolkit.cli.app import EXIT_USAGE

    cases = [
        (("--bogus",), "No such option: --bogus", "rtk --help"),
        (("inspect",), "Missing argument", "rtk inspect --help"),
        (("predict", "x", "--engine", "bogus"), "unknown engine 'bogus'", "rtk predict --help"),
        (("bench", tiny_checkpoint, "--io", "sideways"), "--io", "rtk bench --help"),
        (("export", tiny_checkpoint, "--opset", "seventeen"), "Invalid value for '--opset'", "rtk export --help"),
        (("nosuchcommand",), "No such command", "rtk --help"),
    ]
    for argv, message, hint in cases:
        result = cli(*argv)
        assert result.exit_code == EXIT_USAGE == 64, (argv, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0] and hint in lines[0], (argv, result.stderr)
        assert result.stdout == ""


def test_bare_rtk_prints_help_and_succeeds(cli):
    result = cli()
    assert result.exit_code == 0 and "Usage" in result.output and "error" not in result.stderr


def test_the_console_script_reports_usage_errors_the_same_way():
    proc = subprocess.run([sys.executable, "-m", "toolkit", "train", "--epochs", "many"], capture_output=True, text=True)
    assert proc.returncode == 64 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Invalid value for '--epochs'" in proc.stderr


def test_flags_show_no_value_type_in_help(cli):
    """`--recursive` takes no value: typer's `<bool>` beside it reads as if it did."""
    from toolkit.cli.app import COMMANDS

    for argv in [["--help"]] + [[name, "--help"] for name, _ in COMMANDS]:
        result = cli(*argv, env={"COLUMNS": "200"})
        assert result.exit_code == 0 and "<bool>" not in result.stdout, argv
    predict = cli("predict", "--help", env={"COLUMNS": "200"}).stdout
    assert "<path>" in predict  # the options that take a value still say what it is
