"""Running jobs on a Dask cluster: the task runner, the storage rules for remote workers, the worker's address.

A job task carries the Dask resource ``{"GPU": world_size}``, so the scheduler only places it on a worker with that
many GPUs free; inside the worker, ``infra.devices`` then lends the job a disjoint group of the worker's GPUs. See
docs/SCALE_OUT.md for starting workers.

This module is also a Dask preload (``dask_setup``) for the workers of ``--dask-local``; it stays light to import
(no Prefect, no Dask at module level) because ``infra.devices`` imports ``worker_host`` from it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

# Folders (separated by os.pathsep, like PATH) that every Dask worker sees at the same path with the same files:
# an NFS/Lustre/EFS mount, or any folder when all workers run on this machine. The user states this explicitly
# because nothing here can tell a shared mount from a local disk.
SHARED_PATHS_ENV = "REELBATCH_SHARED_PATHS"

# fsspec protocols whose data lives in one process or on one machine's disk.
_LOCAL_PROTOCOLS = {"file", "local", "memory"}


def task_runner_for(address: str | None, local_workers: int, gpus_per_worker: int) -> DaskTaskRunner | None:
    """The Dask task runner for the job tasks: an existing cluster at ``address``, a temporary local cluster of
    ``local_workers`` worker processes with ``gpus_per_worker`` GPUs each, or None for neither (jobs run on the
    flow's own threads).

    The local cluster starts when the flow first submits to it (so it sees the Prefect API that flow run uses) and
    stops when the flow's task runner exits. Each worker gets ``gpus_per_worker`` threads, so it can run that many
    1-rank jobs at once; Dask's ``GPU`` resource keeps the ranks of its running jobs within its GPUs.
    """
    if address and local_workers:
        raise ValueError("choose one Dask cluster: an address (--dask) or a local cluster (--dask-local), not both")
    if local_workers < 0:
        raise ValueError(f"a local Dask cluster needs at least one worker, not {local_workers}")
    if gpus_per_worker < 1:
        raise ValueError(f"a Dask worker needs at least one GPU (CPU rank slot), not {gpus_per_worker}")
    if not address and not local_workers:
        return None

    from prefect_dask import DaskTaskRunner

    if address:
        # Its workers' environment is theirs to set (docs/SCALE_OUT.md): a shared cluster must not be restarted.
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        # prefect-dask annotates cluster_class as a no-argument factory, yet calls it with cluster_kwargs.
        cluster_class=local_gpu_cluster,  # type: ignore[arg-type]
        cluster_kwargs={"n_workers": local_workers, "gpus_per_worker": gpus_per_worker},
    )


def local_gpu_cluster(n_workers: int, gpus_per_worker: int) -> LocalCluster:
    """A LocalCluster of ``n_workers`` processes on loopback, each with the resource ``GPU=gpus_per_worker`` and,
    on a CUDA machine, its own slice of the visible GPUs as ``CUDA_VISIBLE_DEVICES``.

    Called by the task runner inside the flow run, so ``worker_environment`` sees that run's Prefect API.
    """
    from distributed import LocalCluster

    slices = gpu_slices(n_workers, gpus_per_worker)
    environment = worker_environment()
    _quiet_dask()
    cluster = LocalCluster(
        n_workers=0,
        processes=True,
        threads_per_worker=gpus_per_worker,
        resources={"GPU": gpus_per_worker},
        host="127.0.0.1",
        # None would still bind 127.0.0.1:8787 and collide with a second run; port 0 picks a free one.
        dashboard_address="127.0.0.1:0",
        env=environment,
        preload=[__name__],
    )
    try:
        # One spec per worker instead of LocalCluster's shared one: each worker needs its own GPU slice.
        template = cluster.new_worker_spec()
        [(_, spec)] = template.items()
        for index, devices in enumerate(slices):
            options = {**spec["options"], "env": {**environment, **devices}}
            cluster.worker_spec[f"gpu-worker-{index}"] = {**spec, "options": options}
        cluster.scale(len(cluster.worker_spec))
        cluster.wait_for_workers(n_workers, timeout=120)
    except BaseException:
        cluster.close()
        raise
    return cluster


def gpu_slices(n_workers: int, gpus_per_worker: int) -> list[dict[str, str]]:
    """Per worker, the ``CUDA_VISIBLE_DEVICES`` it must see: disjoint slices of this process's visible GPUs, or
    nothing on a machine without CUDA (workers then count CPU rank slots)."""
    from reelbatch.gpus import visible_gpu_names

    names = visible_gpu_names()
    if not names:
        return [{} for _ in range(n_workers)]
    if n_workers * gpus_per_worker > len(names):
        raise ValueError(
            f"{n_workers} local Dask workers x {gpus_per_worker} GPUs need {n_workers * gpus_per_worker} GPUs but "
            f"this machine shows {len(names)}: pass --dask-local {max(1, len(names) // gpus_per_worker)} or fewer "
            f"GPUs per node"
        )
    return [
        {"CUDA_VISIBLE_DEVICES": ",".join(names[i * gpus_per_worker : (i + 1) * gpus_per_worker])}
        for i in range(n_workers)
    ]


def worker_environment() -> dict[str, str]:
    """What a local worker process needs so its task runs, logs and artifacts reach this flow's Prefect API:
    every Prefect setting this process has set explicitly, and the API URL it actually talks to.

    In ephemeral mode there is no configured URL; the flow talks to a temporary server this process started, and
    a worker without its URL would start a throwaway server of its own (its task runs and logs would be lost).
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    environment = get_current_settings().to_environment_variables(exclude_unset=True)
    client = get_client(sync_client=True)  # the run's client; in ephemeral mode, the running server's
    environment["PREFECT_API_URL"] = str(client.api_url).rstrip("/")
    return environment


def dask_setup(worker) -> None:
    """Runs in each local worker process at start.

    The worker's environment is applied after the spawned process has imported the parent's main module; when
    that module imports Prefect (the CLI does), Prefect has already read its settings without the API URL.
    """
    _quiet_dask()
    context = sys.modules.get("prefect.context")
    if context is not None:
        context.refresh_global_settings_context()


async def dask_teardown(worker) -> None:
    """Runs as a local worker closes: sends the task logs and events Prefect still holds before the process ends
    (the nanny kills a worker that does not exit within seconds)."""
    if "prefect.logging.handlers" in sys.modules:
        await asyncio.to_thread(_drain_prefect)


def _drain_prefect() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)
    EventsWorker.drain_all(timeout=5)


def _quiet_dask() -> None:
    # Dask logs every worker start and connection at INFO, which Prefect's console handler would print between
    # the run's own lines; its warnings and errors still show.
    logger = logging.getLogger("distributed")
    if logger.getEffectiveLevel() < logging.WARNING:
        logger.setLevel(logging.WARNING)


def worker_host() -> str | None:
    """The address of the Dask worker this code runs in (``tcp://10.0.0.5:40123``), or None outside Dask."""
    distributed = sys.modules.get("distributed")
    if distributed is None:  # nothing imported Dask, so this is no worker
        return None
    try:
        return distributed.get_worker().address
    except ValueError:
        return None


def check_shared_storage(output: str, db_url: str, address: str | None) -> None:
    """Refuse, before anything runs, an output or a database that workers of the cluster at ``address`` (another
    machine, as far as reelbatch can tell) could not reach. Without ``address`` every worker is on this machine.

    A local folder or SQLite file is accepted when it lies under a folder listed in ``REELBATCH_SHARED_PATHS``.
    """
    if not address:
        return
    problems = [problem for problem in (_output_problem(output), _database_problem(db_url, address)) if problem]
    if problems:
        raise ValueError(
            f"the Dask cluster at {address} may run jobs on other machines, which cannot reach "
            + "; and ".join(problems)
        )


def _output_problem(output: str) -> str | None:
    from fsspec.utils import get_protocol

    protocol = get_protocol(output)
    if protocol == "memory":
        return (
            f"the output {output!r}, which lives in this process's memory. Fix: --out s3://bucket/prefix (or "
            "another object store URL)"
        )
    if protocol not in _LOCAL_PROTOCOLS or _is_shared(output.removeprefix("file://")):
        return None
    return (
        f"the local output folder {output!r}: each worker would write its videos to its own disk. Fix: --out "
        f"s3://bucket/prefix, or an --out on a file system mounted at the same path on every worker, declared with "
        f"{SHARED_PATHS_ENV}=/that/mount"
    )


def _database_problem(db_url: str, address: str) -> str | None:
    from sqlalchemy.engine import make_url

    from reelbatch.redact import redact_url

    url = make_url(db_url)
    shown = redact_url(db_url)
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:" or url.database.startswith("file::memory:"):
            return f"the in-memory SQLite database {shown!r}. Fix: --db postgresql+psycopg://user@db-host/reelbatch"
        if _is_shared(url.database):
            return None
        return (
            f"the SQLite file {shown!r} on this machine. Fix: --db postgresql+psycopg://user@db-host/reelbatch (a "
            f"server every worker reaches), or a SQLite file on a folder every worker mounts, declared with "
            f"{SHARED_PATHS_ENV} (only safe when all workers share one machine: SQLite locking is unreliable on "
            f"network file systems)"
        )
    if _is_loopback(url.host) and not _is_loopback(_host_of(address)):
        where = f"host {url.host!r}" if url.host else "a local socket"
        return (
            f"the database {shown!r} at {where}: on a worker, that is the worker's own machine. Fix: the "
            f"database server's network name in --db (e.g. postgresql+psycopg://user@db-host/reelbatch)"
        )
    return None


def _is_shared(path: str) -> bool:
    target = Path(path).expanduser().resolve()
    for entry in os.environ.get(SHARED_PATHS_ENV, "").split(os.pathsep):
        if entry.strip() and target.is_relative_to(Path(entry.strip()).expanduser().resolve()):
            return True
    return False


def _host_of(address: str) -> str:
    rest = address.split("://", 1)[-1]
    if rest.startswith("["):  # [::1]:8786
        return rest[1:].split("]", 1)[0]
    return rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest


def _is_loopback(host: str | None) -> bool:
    """No host (a Unix socket), localhost or a loopback address: this machine, whoever resolves it."""
    if not host or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
