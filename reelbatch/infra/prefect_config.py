"""What reelbatch keeps in Prefect itself: the database URL as a Secret block, and a GPU concurrency limit per host.

The database URL carries a password in production, so deployments name a Secret block (``db_secret``) instead of
passing the URL as a parameter that the UI and the API would show in plain text.

Two runs on one machine (two deployments, or a run from the CLI beside a scheduled one) each see all of the
machine's GPUs. A global concurrency limit ``reelbatch-gpus-<host>`` with one slot per device makes each job
hold as many slots as it has ranks while it runs, so together they never oversubscribe the machine.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
from collections.abc import Iterator

import httpx

from reelbatch.gpus import machine_gpus
from reelbatch.infra.devices import DeviceGroup

log = logging.getLogger(__name__)

_ensured: dict[str, int] = {}
_ensured_lock = threading.Lock()

GPU_LEASE_S = 60.0  # renewed while a job runs; how long the slots of a killed orchestrator stay taken


def database_url(db_url: str, db_secret: str | None) -> str:
    """``db_url``, or the value of the Secret block named ``db_secret`` when one is named."""
    if not db_secret:
        return db_url
    from prefect.blocks.system import Secret

    try:
        secret = Secret.load(db_secret)
        # load is typed "block or coroutine": it returns the coroutine only when called from async code.
        assert isinstance(secret, Secret)
        value = secret.get()
    except ValueError as exc:
        raise ValueError(
            f"no Prefect Secret block named {db_secret!r}: create it in the UI (Blocks > Secret) or with "
            f"`Secret(value=URL).save({db_secret!r})`, then run again"
        ) from exc
    if not isinstance(value, str) or "://" not in value:
        raise ValueError(f"the Secret block {db_secret!r} does not hold a database URL (like postgresql+psycopg://…)")
    return value


def deployment_config() -> dict:
    """The ``config`` the deployment of this flow run was registered with: {} for a run that is not a deployment's
    (a CLI run, a subflow), read from the run's own context without asking the API."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    deployment_id = context.flow_run.deployment_id if context and context.flow_run else None
    if deployment_id is None:
        return {}
    with get_client(sync_client=True) as client:
        parameters = client.read_deployment(deployment_id).parameters or {}
    return dict(parameters.get("config") or {})


def gpu_limit_name(host: str) -> str:
    # Limit names are shown in the UI and used in URLs: keep them to letters, digits and dashes.
    return "reelbatch-gpus-" + re.sub(r"[^a-z0-9]+", "-", host.lower()).strip("-")


def ensure_gpu_limit(host: str, devices: int) -> str | None:
    """Create (or widen) this host's GPU limit; None when no Prefect API answers (then jobs run unlimited)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = gpu_limit_name(host)
    with _ensured_lock:  # the jobs of one run start together; one of them creates the limit
        if _ensured.get(name, 0) >= devices:
            return name
        try:
            with get_client(sync_client=True) as client:
                try:
                    client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=devices))
                except ObjectAlreadyExists:  # another run on this host made it
                    existing = client.read_global_concurrency_limit_by_name(name)
                    if existing.limit < devices:
                        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=devices))
        except (ObjectNotFound, httpx.HTTPError, OSError, RuntimeError, ValueError) as exc:
            # The limit is a safety net across runs; one run alone is already kept within the machine.
            log.warning("could not set up the GPU concurrency limit %s (%r); jobs run without it", name, exc)
            return None
        _ensured[name] = devices
    return name


@contextlib.contextmanager
def holding_gpus(group: DeviceGroup, width: int) -> Iterator[None]:
    """Hold ``width`` of the host's GPU slots for the ``with`` block, waiting while other runs hold them.

    Which GPUs a job gets is decided by the device pool and its machine-wide locks (``infra.devices``); the limit
    makes the sharing visible and adjustable in the Prefect UI (Concurrency), sized to every GPU of the machine.
    Only for CUDA devices (CPU rank slots are a per-run budget) and only against a Prefect server
    (PREFECT_API_URL set): its lease service frees the slots of a run that died within GPU_LEASE_S. A temporary
    (ephemeral) API lives and dies with one process, so there is nothing to share.
    """
    from prefect.settings import PREFECT_API_URL

    host = socket.gethostname()
    devices = max(group.machine_devices, machine_gpus())
    name = ensure_gpu_limit(host, devices) if group.cuda and PREFECT_API_URL.value() else None
    if name is None:
        yield
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(name, occupy=width, lease_duration=GPU_LEASE_S):
        yield
