"""``--ray``: ``rtk predict`` and ``rtk eval`` on a local Ray instance of two CPUs give exactly what a
run in one process gives (the digits model, ort and eager engines, folders with unreadable images),
and bad input on the way is one line.

One Ray instance serves the module: starting it takes seconds. The commands, run in this process,
use the connection they find instead of starting their own.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import opened, write_messy_folder
from toolkit.core.data import write_digit_images
from toolkit.core.errors import RtkError, install_hint
from toolkit.usecases.train import TrainOptions, train

pytestmark = pytest.mark.ray

# The digits model as `rtk train --data digits` makes it, at test size (a narrow network, a few batches).
DIGITS = TrainOptions(data="digits", input_size=8, max_samples=64, epochs=1, batch_size=32, width=16, device="cpu", progress=False)
RUN_FIELDS = ("seconds", "images_per_s")  # wall time: the only fields a Ray run may change


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory) -> Path:
    return train(replace(DIGITS, out=tmp_path_factory.mktemp("digits-run"))).best


def _truncated_jpeg(path: Path) -> None:
    """A JPEG cut in half: Pillow opens and verifies it, decoding it fails."""
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8), "L").save(path, quality=95)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Digits of the test split in ``<digit>/`` folders (so the run is scored), with a truncated JPEG
    and a text file named .png among them, and under ``loose/`` every kind of image file ``rtk
    predict`` reads and every kind it must skip."""
    root = tmp_path_factory.mktemp("photos")
    write_digit_images(root, split="test", per_class=6)
    _truncated_jpeg(root / "3" / "truncated.jpg")
    (root / "5" / "notes.png").write_text("not pixels\n")
    write_messy_folder(root / "loose")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """An image dataset ``train|test/<digit>/`` from the digits, with the same two unreadable files in
    ``test``: the scan drops the text file; the truncated JPEG passes it and fails when decoded."""
    root = tmp_path_factory.mktemp("data")
    write_digit_images(root / "train", split="train", per_class=2)
    write_digit_images(root / "test", split="test", per_class=6)
    _truncated_jpeg(root / "test" / "3" / "truncated.jpg")
    (root / "test" / "5" / "notes.png").write_text("not pixels\n")
    return root


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray", reason=f"Ray is not installed ({install_hint('ray')})")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


# --- without a Ray instance (these come first: the instance is started by the tests below) -------


def test_without_ray_installed_is_one_sentence_with_the_install_command(cli, digits_model, photos, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without the package imports
    monkeypatch.setitem(sys.modules, "ray.data", None)
    result = cli("predict", photos, "-m", digits_model, "--ray")
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert install_hint("ray") in line


@pytest.mark.parametrize("how", ["option", "environment"])
def test_an_address_where_no_cluster_answers_is_refused_in_seconds(cli, digits_model, photos, tmp_path, monkeypatch, how):
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray connection is open in this process, and a run uses it whatever the address")
    args = ["--ray-address", "127.0.0.1:9"] if how == "option" else ["--ray"]
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")  # the discard port: nothing listens
    out = tmp_path / "out.csv"
    result = cli("predict", photos, "-m", digits_model, "-o", out, *args)
    assert result.exit_code == 1
    assert "no Ray cluster answers at 127.0.0.1:9" in result.stderr and "ray start --head" in result.stderr
    assert not out.exists() and not ray.is_initialized()


def test_a_ray_client_address_is_refused_with_what_to_do_instead(cli, digits_model, photos):
    # Ray Data fails deep inside through Ray Client (ray://), so rtk says so before starting anything.
    result = cli("predict", photos, "-m", digits_model, "--ray-address", "ray://head:10001")
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert "Ray Data does not run through Ray Client" in line and "--ray-address HEAD_IP:6379" in line


def test_an_object_store_url_is_refused_with_how_to_mount_it(cli, digits_model):
    result = cli("predict", "s3://bucket/photos", "-m", digits_model, "--ray")
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert "is not a folder" in line and "mount the bucket" in line


@pytest.mark.parametrize(
    "args, flag",
    [(["--replicas", "2"], "--replicas"), (["--ray", "--workers", "2"], "--workers")],
    ids=["replicas-without-ray", "workers-with-ray"],
)
def test_options_that_do_not_apply_are_usage_errors(cli, digits_model, photos, args, flag):
    result = cli("predict", photos, "-m", digits_model, *args)
    assert result.exit_code == 64 and flag in result.stderr


def test_replicas_are_counted_against_the_clusters_cpus_and_gpus():
    from toolkit.core.ray_cluster import Cluster

    cluster = Cluster("local", cpus=8.0, gpus=0.0)
    assert cluster.replicas(None, gpu=False) == 8 and cluster.replicas(3, gpu=False) == 3
    with pytest.raises(RtkError, match="runs on a GPU and the Ray cluster at local has none"):
        cluster.replicas(None, gpu=True)
    with pytest.raises(RtkError, match="needs 9 CPUs"):
        cluster.replicas(9, gpu=False)
    assert Cluster("head:6379", cpus=64.0, gpus=4.0).replicas(None, gpu=True) == 4


# --- on a local Ray instance of two CPUs ---------------------------------------------------------


# Replicas: the default (one per CPU: two) in one run, one in the others, which start faster on two cores.
@pytest.mark.parametrize(
    "engine, fmt, replicas", [("ort", "csv", []), ("eager", "json", ["--replicas", "1"])], ids=["ort-csv", "eager-json"]
)
def test_predict_on_ray_writes_what_a_local_run_writes(cli, digits_model, photos, tmp_path, ray_instance, engine, fmt, replicas):
    outputs = {}
    for where, extra in (("local", []), ("ray", ["--ray", *replicas])):
        out = tmp_path / f"{where}.{fmt}"
        result = cli("predict", photos, "-m", digits_model, "-e", engine, "-r", "-o", out, *extra)
        assert result.exit_code == 2, result.output  # some files skipped, the rest written
        assert "skipped" in result.stderr and "notes.png" in result.stderr and "truncated.jpg" in result.stderr
        outputs[where] = out.read_text()
    if fmt == "csv":
        assert outputs["ray"] == outputs["local"]
        assert outputs["local"].count("\n") > 70  # header, 60 digits, the loose files
        return
    local, ray = (json.loads(outputs[w]) for w in ("local", "ray"))
    assert {k: v for k, v in ray.items() if k not in RUN_FIELDS} == {k: v for k, v in local.items() if k not in RUN_FIELDS}
    assert local["failed"] >= 6 and local["evaluation"]["total"] == 60  # the digits in class folders are scored
    assert local["engine"] == "eager" and ray_instance.is_initialized()  # the run left the caller's connection open


@pytest.mark.parametrize("engine, source", [("ort", "folder"), ("eager", "digits")])
def test_eval_on_ray_reports_what_a_local_run_reports(cli, digits_model, data, tmp_path, ray_instance, engine, source):
    where = data if source == "folder" else "digits"
    reports = {}
    for run, extra in (("local", []), ("ray", ["--ray", "--replicas", "1"])):
        png = tmp_path / f"{run}.png"
        result = cli("eval", digits_model, "--data", where, "-e", engine, "--json", "--confusion", png, *extra)
        assert result.exit_code == 0, result.output
        reports[run] = json.loads(result.stdout)
        assert png.read_bytes()[:4] == b"\x89PNG"
        if source == "folder":  # the scan drops the text file; the truncated JPEG fails when decoded
            assert "notes.png" in result.stderr and "truncated.jpg" in result.stderr
    local, ray = ({k: v for k, v in r.items() if k not in ("seconds", "confusion_png")} for r in reports.values())
    assert ray == local
    assert local["total"] == (61 if source == "folder" else 360)


def test_strict_on_ray_stops_at_an_unreadable_file_and_writes_nothing(cli, digits_model, photos, tmp_path, ray_instance):
    out = tmp_path / "out.csv"
    result = cli("predict", photos, "-m", digits_model, "-e", "ort", "--strict", "--ray", "-o", out)
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert "--strict stops at the first unreadable file" in line
    assert not out.exists() and not list(tmp_path.iterdir())


def test_a_replica_that_cannot_open_its_engine_is_one_sentence(digits_model, photos, ray_instance):
    # As on a worker node where the model is not at the driver's path.
    import dataclasses

    from engines.request import EngineRequest
    from toolkit.usecases.ray_inference import predict_on_ray

    request = EngineRequest.of(digits_model, "eager")
    elsewhere = dataclasses.replace(request, path=digits_model.with_name("elsewhere.pth"))
    with opened(digits_model, "eager") as engine, pytest.raises(RtkError) as caught:
        predict_on_ray(photos, engine, elsewhere)
    assert str(caught.value) == f"on the Ray cluster: {digits_model.with_name('elsewhere.pth')} does not exist"
