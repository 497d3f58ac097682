"""``rtk predict --ray`` against ``rtk predict`` on this machine: images/s, and what Ray costs to start.

    python -m benchmarks.ray_predict MODEL FOLDER [-e ort] [--rounds 3] [--out benchmarks/results --name NAME]

One process opens the engine once and starts Ray once (a local instance, or ``--address``: the
start-up every ``--ray`` command pays), then runs, in each round, the local path
(:func:`toolkit.usecases.predict.predict`: decoding threads and the engine in this process) and the Ray
path (:func:`toolkit.usecases.ray_inference.predict_on_ray`) on the same folder. Each run is read as
``wall = fixed + images / steady``: the steady rate is the slope of its progress reports, the fixed
cost what that rate leaves unexplained (for Ray: replicas starting and opening their engines, the
pipeline's set-up; for both: the folder scan). Medians over rounds are printed, with the load
average before and after, since a shared machine moves every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks.environment import collect_environment
from engines.request import EngineRequest
from toolkit.core.errors import RtkError
from toolkit.core.outputs import write_atomic
from toolkit.core.ray_cluster import RayOptions, connect
from toolkit.usecases.opening import open_engine
from toolkit.usecases.predict import PredictOptions, predict
from toolkit.usecases.ray_inference import predict_on_ray


def run(model: str, folder: str, engine_name: str | None, rounds: int, address: str | None, replicas: int | None, batch_size: int | None) -> dict[str, Any]:
    """Time both paths on ``folder``; returns the figures as a JSON-ready dict."""

    options = PredictOptions(batch_size=batch_size)
    cluster_options = RayOptions(address=address, replicas=replicas)
    request = EngineRequest.of(model, engine_name)
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, float]]] = {"local": [], "ray": []}
    with open_engine(request) as engine:
        started = time.perf_counter()
        with connect(address) as cluster:
            startup = time.perf_counter() - started
            for r in range(rounds):
                runs["local"].append(_timed(lambda progress: predict(folder, engine, options, progress)))
                runs["ray"].append(_timed(lambda progress: predict_on_ray(folder, engine, request, options, cluster_options, progress)))
                print(f"round {r + 1}/{rounds}: local {runs['local'][-1]['wall_s']:.2f} s, ray {runs['ray'][-1]['wall_s']:.2f} s", file=sys.stderr)
            stopping = time.perf_counter()
        shutdown = time.perf_counter() - stopping
        engine_label, device = engine.name, engine.device
    result: dict[str, Any] = {
        "format": "rtk.ray_predict", "version": 1,
        "model": str(model), "folder": str(folder), "engine": engine_label, "device": device,
        "cluster": {"address": cluster.address, "cpus": cluster.cpus, "gpus": cluster.gpus, "replicas": replicas},
        "batch_size": batch_size, "rounds": rounds, "ray_startup_s": round(startup, 2), "ray_shutdown_s": round(shutdown, 2),
    }
    for path, samples in runs.items():
        result["images"] = int(samples[0]["images"])
        result[path] = {
            key: round(statistics.median(s[key] for s in samples), 3) for key in ("wall_s", "first_result_s", "fixed_s", "images_per_s", "steady_images_per_s")
        } | {"samples": samples}
    result["load_average"] = {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]}
    result["environment"] = collect_environment("cpu")
    return result


def _timed(fn: Callable[[Callable[[int, int], None]], Any]) -> dict[str, float]:
    """Wall time of ``fn(progress)`` and a straight line through its progress: ``wall = fixed + images / steady``.

    The steady rate is the least-squares slope of images done against time over every progress
    report (results come back a block at a time, several replicas' blocks close together, so a
    slope over all of them is steadier than the rate after the first); the fixed cost is the wall
    time that rate does not account for.
    """
    import numpy as np

    reports: list[tuple[float, int]] = []
    started = time.perf_counter()
    result = fn(lambda done, total: reports.append((time.perf_counter() - started, done)))
    wall = time.perf_counter() - started
    n = len(result.predictions)
    times, done = np.array([t for t, _ in reports]), np.array([d for _, d in reports], dtype=float)
    steady = float(np.polyfit(times, done, 1)[0]) if len(reports) >= 3 and np.ptp(times) > 0 else float("nan")
    return {
        "images": n,
        "wall_s": wall,
        "first_result_s": float(times[0]),
        "images_per_s": n / wall,
        "steady_images_per_s": steady,
        "fixed_s": wall - n / steady if steady > 0 else float("nan"),
        "reports": len(reports),
    }


def report(result: dict[str, Any]) -> str:
    """The figures as a few lines of text."""
    env, cluster = result["environment"], result["cluster"]
    replicas = cluster["replicas"] or "default"
    lines = [
        f"{result['images']} images, {result['engine']} on {result['device']}, {env['cpu']['model']} ({env['cpu']['cores']} cores); "
        f"Ray at {cluster['address']}: {cluster['cpus']:g} CPUs, {replicas} replicas; medians of {result['rounds']} rounds",
        f"{'':12}{'images/s':>10}{'steady':>10}{'fixed cost':>12}{'first result':>14}{'wall':>9}",
    ]
    for path in ("local", "ray"):
        r = result[path]
        lines.append(
            f"{path + ' path':12}{r['images_per_s']:10.1f}{r['steady_images_per_s']:10.1f}{r['fixed_s']:11.2f}s"
            f"{r['first_result_s']:13.2f}s{r['wall_s']:8.2f}s"
        )
    lines += [
        f"Ray start-up {result['ray_startup_s']:.2f} s and shutdown {result['ray_shutdown_s']:.2f} s, once per command",
        f"load average before {result['load_average']['before']}, after {result['load_average']['after']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ray_predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="checkpoint, ONNX file or engine")
    parser.add_argument("folder", help="a folder of images (searched recursively)")
    parser.add_argument("-e", "--engine", default=None, help="engine name (default: the artefact's own)")
    parser.add_argument("-b", "--batch-size", type=int, default=None, help="images per engine call (default: rtk predict's)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of local, Ray and Ray-on-one-image runs")
    parser.add_argument("--address", default=None, help="a Ray cluster (default: a new local instance)")
    parser.add_argument("--replicas", type=int, default=None, help="engine replicas (default: rtk's)")
    parser.add_argument("--out", type=Path, default=None, help="write NAME.json into this folder")
    parser.add_argument("--name", default="ray-predict", help="file name of the JSON result")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    try:
        result = run(args.model, args.folder, args.engine, args.rounds, args.address, args.replicas, args.batch_size)
    except RtkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report(result))
    if args.out is not None:
        path = write_atomic(args.out / f"{args.name}.json", json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
