"""Where a ``--ray`` run goes: a new local Ray instance, or an existing cluster, and what it has.

:func:`connect` is the one place rtk calls ``ray.init``. Without an address (and without
``RAY_ADDRESS``) it starts a private instance on this machine and stops it at the end; with one it
joins that cluster and only disconnects. A Ray connection the caller already holds (a notebook or
a test that called ``ray.init``) is used as it is and left open.
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from toolkit.core.errors import RtkError, first_line, require
from toolkit.core.validation import COUNT

if TYPE_CHECKING:
    from types import ModuleType

#: The environment variable Ray itself reads for the cluster address.
ADDRESS_ENV = "RAY_ADDRESS"
#: Seconds to wait for a cluster's head to accept a connection: Ray alone retries for minutes.
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RayOptions:
    """How a run uses Ray.

    Attributes:
        address: the cluster: ``host:port`` of its head (what ``ray start --head`` prints) or
            ``auto`` (the cluster started on this machine). ``None``: ``$RAY_ADDRESS``, else a new
            local instance on this machine, stopped at the end. Not ``ray://`` (Ray Client): Ray
            Data does not run through it.
        replicas: engine replicas, each a Ray actor holding one engine; ``None``: one per GPU of
            the cluster for a GPU engine, else one per CPU (as the cluster counts them when the
            run starts: nodes an autoscaler would add later are not counted).
    """

    address: str | None = None
    replicas: int | None = None

    def __post_init__(self) -> None:
        COUNT.check(self.replicas, "--replicas")


@dataclass(frozen=True)
class Cluster:
    """The Ray cluster a run is connected to.

    Attributes:
        address: what was connected to (``local`` for an instance started here).
        cpus, gpus: the cluster's total CPUs and GPUs, as Ray counts them.
    """

    address: str
    cpus: float
    gpus: float

    def replicas(self, asked: int | None, gpu: bool) -> int:
        """How many engine replicas to start: ``asked``, else the default for this cluster.

        Raises:
            RtkError: a GPU engine on a cluster without GPUs, or more replicas than it can hold.
        """
        have, unit = (self.gpus, "GPU") if gpu else (self.cpus, "CPU")
        if gpu and have < 1:
            raise RtkError(f"this engine runs on a GPU and the Ray cluster at {self.address} has none; pick a CPU engine or add GPU workers")
        n = asked or max(1, int(have))
        if n > have:
            raise RtkError(f"--replicas {n} needs {n} {unit}s (one each) and the Ray cluster at {self.address} has {have:g}")
        return n


def ray_module(purpose: str = "--ray") -> "ModuleType":
    """``ray`` with Ray Data, or one sentence with the install command."""
    require("ray.data", purpose)
    return require("ray", purpose)


@contextmanager
def connect(address: str | None = None) -> Iterator[Cluster]:
    """Connect to Ray for the length of a run.

    Args:
        address: see :attr:`RayOptions.address`.

    Yields:
        The cluster: its address and resources.

    Raises:
        RtkError: Ray is not installed, the address is a Ray Client one, or no cluster answers at
            it or lets rtk join.
    """
    ray = ray_module()
    target = address or os.environ.get(ADDRESS_ENV) or "local"
    if target.startswith("ray://"):
        raise RtkError(
            f"{target} is a Ray Client address, and Ray Data does not run through Ray Client; run rtk on a node of the "
            "cluster with --ray-address HEAD_IP:6379 (or submit it there with ray job submit)"
        )
    if ray.is_initialized():  # the caller's own connection: use it, and leave it open
        yield _describe(ray, ray.get_runtime_context().gcs_address)
        return
    if target not in ("local", "auto"):
        _check_reachable(target)
    try:
        ray.init(
            address=target, include_dashboard=False if target == "local" else None,
            logging_level=logging.ERROR, log_to_driver=False,
        )  # fmt: skip
    except ConnectionError as exc:
        if target == "auto":  # no cluster started on this machine
            raise RtkError(f"no Ray cluster runs on this machine ({first_line(exc, 160)}); start one with: ray start --head") from None
        # Something listens but Ray refused us; Ray 2.60's `ray start` asks drivers for a token.
        raise RtkError(
            f"cannot join the Ray cluster at {target} ({first_line(exc, 160)}); if it uses token authentication, set "
            f"RAY_AUTH_MODE=token and give its token in ~/.ray/auth_token or RAY_AUTH_TOKEN"
        ) from None
    try:
        yield _describe(ray, target)
    finally:
        ray.shutdown()  # stops an instance started here; only disconnects from a cluster


def _describe(ray, address: str) -> Cluster:
    resources = ray.cluster_resources()
    return Cluster(address, float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0)))


def _check_reachable(address: str) -> None:
    """Refuse, within seconds, an address where nothing listens (``ray.init`` would retry for minutes)."""
    host, _, port = address.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise RtkError(f"{address!r} is not a Ray address; give host:port of the cluster's head (ray start --head prints it), or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or type(exc).__name__).lower()
        raise RtkError(f"no Ray cluster answers at {address} ({reason}); start one with ray start --head, or check the address") from None


@contextmanager
def quiet_console(logger: str = "ray.data") -> Iterator[None]:
    """Keep a Ray logger's lines off the terminal while rtk runs (its session log file still gets them).

    Ray Data prints a line when a dataset starts and finishes, and a full stack trace when a task
    fails; rtk shows its own progress and summary, and turns a failure into one sentence.
    """
    handlers = [h for h in logging.getLogger(logger).handlers if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    levels = [h.level for h in handlers]
    for h in handlers:
        h.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for h, level in zip(handlers, levels):
            h.setLevel(level)
