"""The ``--ray`` options ``rtk predict`` and ``rtk eval`` share, so they mean the same in both."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from toolkit.cli.options import number_option
from toolkit.core.ray_cluster import RayOptions
from toolkit.core.validation import COUNT, UsageError

RayOption = Annotated[
    bool,
    typer.Option(
        "--ray",
        help="Run on Ray (rtk's ray extra; without it, the error names the command that adds it): images are decoded in Ray "
        "tasks and classified by a pool of engine replicas "
        "(Ray actors, one engine each), with the same results as without. The cluster: --ray-address, else "
        "$RAY_ADDRESS, else a new local instance on this machine.",
    ),
]
RayAddressOption = Annotated[
    Optional[str],
    typer.Option(
        "--ray-address",
        help="The Ray cluster to run on (implies --ray): host:port of its head (ray start --head prints it), or auto "
        "for the cluster started on this machine. The model and images must be at the same path on every node.",
        show_default=False,
    ),
]
ReplicasOption = Annotated[
    Optional[int],
    number_option(
        COUNT,
        "--replicas",
        help="With --ray: engine replicas, each a Ray actor holding one engine and one CPU, or one GPU for a GPU "
        "engine. Default: one per GPU of the cluster for a GPU engine, else one per CPU.",
        show_default=False,
    ),
]


def ray_options(ray: bool, address: Optional[str], replicas: Optional[int], workers: Optional[int] = None) -> "RayOptions | None":
    """The :class:`~toolkit.core.ray_cluster.RayOptions` of the flags, or ``None`` for a run in this process.

    Args:
        ray, address, replicas: ``--ray``, ``--ray-address``, ``--replicas``.
        workers: ``rtk predict --workers`` (decoding threads of a run in this process).

    Raises:
        UsageError: ``--replicas`` without ``--ray``, or ``--workers`` with it.
    """
    if not (ray or address):
        if replicas is not None:
            raise UsageError("--replicas applies to --ray runs only; add --ray")
        return None
    if workers is not None:
        raise UsageError(
            "--workers sets the decoding threads of a run in this process; with --ray, Ray runs the decoding on the cluster's CPUs"
        )

    return RayOptions(address=address, replicas=replicas)
