"""`reelbatch submit` and `reelbatch serve`: the command line side of the Prefect deployments.

The Prefect UI has no file upload and refuses parameters over 512 KB, so a manifest file reaches a deployment by
location: `submit` copies it to a manifest store both sides can read and starts the run with that URI.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer

import reelbatch.cli.values as values  # noqa: PLR0402 - `from reelbatch.cli import` would import the package: a cycle
from reelbatch.cli.app import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, app
from reelbatch.cli.render import console, out

DEFAULT_DEPLOYMENT = "generate-dataset/generate-dataset"
DEFAULT_DB_SECRET = "reelbatch-database-url"
NIGHTLY_CRON = "0 2 * * *"
NIGHTLY_TIMEZONE = "Europe/Paris"
STORE_ENV = "REELBATCH_MANIFEST_STORE"


class SubmitError(Exception):
    """One sentence for the user; nothing was started."""


def _deployment_name(name: str) -> str:
    # The flow and its deployment share a name, so `--deployment generate-dataset` is enough.
    return name if "/" in name else f"{name}/{name}"


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        # Without an API URL Prefect would start a throwaway server of its own, where no deployment exists.
        raise SubmitError(
            "no Prefect server configured: start one (`prefect server start`) and point at it with "
            "`prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api` (or the PREFECT_API_URL variable)"
        )
    return url


def flow_run_link(flow_run_id: Any) -> str:
    """The run's page in the UI: PREFECT_UI_URL, or the API URL without its /api suffix."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    ui = PREFECT_UI_URL.value() or (PREFECT_API_URL.value() or "").removesuffix("/").removesuffix("/api")
    return f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}"


def read_deployment(name: str):
    """The deployment, or a SubmitError saying what to do when the server or the deployment is missing."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    api = _api_url()
    try:
        with get_client(sync_client=True) as client:
            return client.read_deployment_by_name(name)
    except ObjectNotFound:
        raise SubmitError(
            f"no deployment {name!r} on {api}: register it with `prefect --no-prompt deploy --all` from the "
            "reelbatch folder (or run `reelbatch serve`)"
        ) from None
    except Exception as exc:  # connection refused, DNS, TLS, timeouts: every one means the same to the user
        raise SubmitError(f"cannot reach the Prefect server at {api}: {exc.__class__.__name__}: {exc}") from None


def _working_directory(deployment) -> Path:
    """Where the deployment's runs start, so a relative `output` means the same folder here as on the worker."""
    for step in deployment.pull_steps or []:
        for name, args in step.items():
            if name.endswith("set_working_directory") and isinstance(args, dict) and args.get("directory"):
                return Path(args["directory"])
    return Path.cwd()


def deployment_config(deployment) -> dict[str, Any]:
    """The ``config`` a deployment starts its runs with (the values it sets; the rest are RunConfig's defaults)."""
    return dict((deployment.parameters or {}).get("config") or {})


def manifest_store(store: str | None, output: str | None, deployment) -> str:
    """--store, else $REELBATCH_MANIFEST_STORE, else `<output>/.reelbatch/manifests` (where pasted text goes)."""
    from reelbatch.defaults import DEFAULT_OUTPUT
    from reelbatch.infra.storage import is_local

    chosen = store or os.environ.get(STORE_ENV)
    if not chosen:
        output = output or deployment_config(deployment).get("output") or DEFAULT_OUTPUT
        chosen = f"{str(output).rstrip('/')}/.reelbatch/manifests"
    if is_local(chosen):
        local = Path(chosen.removeprefix("file://")).expanduser()
        return str(local if local.is_absolute() else (_working_directory(deployment) / local).resolve())
    return chosen.rstrip("/")


def copy_to_store(manifest: Path, store: str) -> str:
    """Copy ``manifest`` into ``store`` under a name derived from its content; returns the stored URI.

    The same file submitted twice lands at the same URI, so its second run finds the first run's videos and
    resumes; an edited file gets a new name and never overwrites what an earlier run read.
    """
    import fsspec

    digest = hashlib.sha256()
    with manifest.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    target = f"{store}/{digest.hexdigest()[:20]}-{manifest.name}"
    fs, path = fsspec.core.url_to_fs(target)
    if not fs.exists(path):
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        partial = f"{path.rsplit('/', 1)[0]}/.{path.rsplit('/', 1)[1]}.{uuid.uuid4().hex[:8]}.partial"
        fs.put_file(str(manifest), partial)
        fs.mv(partial, path)  # readers never see half a file
    return target if "://" in target else path


def _parse_params(entries: list[str] | None) -> dict[str, Any]:
    params = {}
    for entry in entries or []:
        key, sep, value = entry.partition("=")
        if not sep or not key:
            raise SubmitError(f"--param {entry!r}: expected KEY=VALUE (VALUE as JSON, or plain text)")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


def submit_manifest(
    manifest: Path, deployment: str, store: str | None, output: str | None, extra: dict[str, Any]
) -> tuple[Any, str, str]:
    """Copy the manifest to the store and start the deployment on it: (flow run, stored URI, UI link)."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    if not manifest.is_file():
        raise SubmitError(f"{manifest}: no such file")
    name = _deployment_name(deployment)
    found = read_deployment(name)
    if "config" not in ((found.parameter_openapi_schema or {}).get("properties") or {}):
        raise SubmitError(
            f"deployment {name} was registered by an older reelbatch (its parameters are not under `config`): "
            "register it again with `prefect --no-prompt deploy --all` (or restart `reelbatch serve`)"
        )
    uri = copy_to_store(manifest.resolve(), manifest_store(store, output, found))
    from reelbatch.config import RunConfig

    # --param names a config field (gpus_per_node=8) or a flow parameter. A run's parameters replace the
    # deployment's whole, so config fields are merged into the deployment's config (else its db_secret is lost).
    fields = {key: value for key, value in extra.items() if key in RunConfig.model_fields}
    parameters = {key: value for key, value in extra.items() if key not in fields}
    parameters["manifest"] = uri
    given = parameters.pop("config", None) or {}
    if not isinstance(given, dict):
        raise SubmitError(f"--param config=...: a JSON object of config fields, not {type(given).__name__}")
    config = {**deployment_config(found), **given, **fields}
    if output:
        config["output"] = output
    if config:
        parameters["config"] = config
    # timeout=0: create the run and return; a worker (or `reelbatch serve`) executes it.
    flow_run = run_deployment(name=found.id, parameters=parameters, timeout=0, as_subflow=False)
    # Typed "flow run or coroutine": the coroutine comes only from async code, and the CLI is sync.
    assert isinstance(flow_run, FlowRun)
    return flow_run, uri, flow_run_link(flow_run.id)


def _wait(flow_run_id, poll_s: float = 5.0):
    import time

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state and run.state.is_final():
                return run
            time.sleep(poll_s)


def serve_deployments(
    output: str, db_secret: str, gpus_per_node: int, inbox: str | None, cron: str, timezone: str
) -> list:
    """The runner deployments `reelbatch serve` runs: generate-dataset, and nightly-dataset when an inbox is given."""
    from prefect.schedules import Cron

    from reelbatch.flows.generate import generate_dataset
    from reelbatch.flows.nightly import nightly_dataset
    from reelbatch.infra.storage import normalize_root

    common = {"config": {"output": normalize_root(output), "db_secret": db_secret, "gpus_per_node": gpus_per_node}}
    deployments = [generate_dataset.to_deployment(name="generate-dataset", parameters=common, tags=["reelbatch"])]
    if inbox:
        deployments.append(
            nightly_dataset.to_deployment(
                name="nightly-dataset",
                schedules=[Cron(cron, timezone=timezone)],
                concurrency_limit=1,
                parameters={**common, "inbox": normalize_root(inbox)},
                tags=["reelbatch", "nightly"],
            )
        )
    return deployments


def replace_pool_deployments(names: list[str]) -> list[str]:
    """Delete the work-pool deployments that served ones of the same name are about to replace.

    Serving updates a deployment in place but keeps its work pool, and a run of such a hybrid fails to load its
    flow ("Downloading flow code from storage at None"). Returns the names deleted.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deleted = []
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                existing = client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue
            if existing.work_pool_name:
                client.delete_deployment(existing.id)
                deleted.append(f"{name} (work pool {existing.work_pool_name})")
    return deleted


@app.command()
def submit(
    manifest: Annotated[Path, typer.Argument(help="Manifest file (CSV, JSONL or Parquet) on this machine.")],
    deployment: Annotated[
        str,
        typer.Option(
            "--deployment", "-d", help="Deployment to run: FLOW/DEPLOYMENT, or one name when both are the same."
        ),
    ] = "generate-dataset",
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help=(
                "Manifest store the workers can read: a shared folder or s3://bucket/prefix. "
                f"Env: {STORE_ENV}. Default: <output>/.reelbatch/manifests."
            ),
        ),
    ] = None,
    output: Annotated[str | None, typer.Option("--out", help="Output of this run (default: the deployment's).")] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            help=(
                "KEY=VALUE run setting (VALUE as JSON, else text): a field of the flow's config, e.g. "
                "gpus_per_node=8 or strict=true, merged into the deployment's. Repeatable."
            ),
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the run to finish; exit 0 when it completed, 1 otherwise.")
    ] = False,
) -> None:
    """Upload a manifest and start a deployment on it (the UI takes files only as pasted text, up to 512 KB).

    Needs a Prefect server (PREFECT_API_URL) with the deployment registered. Prints the run id and its page.
    """
    try:
        flow_run, uri, link = submit_manifest(manifest, deployment, store, output, _parse_params(param))
    except SubmitError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    console.print(f"manifest stored at {uri}", highlight=False, soft_wrap=True)
    out.print(f"flow run {flow_run.id} ({flow_run.name})", highlight=False)
    out.print(link, highlight=False, soft_wrap=True)
    if wait:
        final = _wait(flow_run.id)
        console.print(f"flow run {final.name}: {final.state.name}", highlight=False)
        raise typer.Exit(EXIT_OK if final.state.is_completed() else EXIT_PARTIAL)


@app.command()
def serve(
    output: Annotated[str, typer.Option("--out", help="Default output of the served runs.")] = "outputs/dataset",
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help=(
                "Database URL; saved into the Secret block --db-secret, so run parameters never show it. "
                "Env: REELBATCH_DB_URL."
            ),
        ),
    ] = None,
    db_secret: Annotated[
        str, typer.Option("--db-secret", help="Prefect Secret block holding the database URL.")
    ] = DEFAULT_DB_SECRET,
    gpus: Annotated[int | None, typer.Option("--gpus-per-node", "--gpus", min=1, help="Ranks per node.")] = None,
    inbox: Annotated[
        str | None, typer.Option("--inbox", help="Also serve nightly-dataset on this inbox (folder or s3:// prefix).")
    ] = None,
    cron: Annotated[str, typer.Option("--cron", help="Schedule of nightly-dataset.")] = NIGHTLY_CRON,
    timezone: Annotated[str, typer.Option("--timezone", help="Time zone of --cron (IANA name).")] = NIGHTLY_TIMEZONE,
) -> None:
    """Run the deployments from this process, on this machine, without a work pool or worker (Ctrl-C stops).

    Registers generate-dataset (and nightly-dataset with --inbox) on the Prefect server at PREFECT_API_URL
    and executes their runs here: trigger them from the UI, `prefect deployment run` or `reelbatch submit`.
    """
    # A long-lived server process: its flow runs' INFO lines are what the operator watches.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    values.prefect_environment()
    from prefect.client.schemas.schedules import CronSchedule

    try:
        _api_url()
        CronSchedule(cron=cron, timezone=timezone)  # a bad schedule is a usage error, before anything starts
    except SubmitError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    except ValueError as exc:
        console.print(f"[bold red]error:[/] --cron/--timezone: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    from prefect import serve as prefect_serve
    from prefect.blocks.system import Secret

    from reelbatch.infra.prefect_config import database_url

    url = db or os.environ.get("REELBATCH_DB_URL")
    if url:
        Secret(value=url).save(db_secret, overwrite=True)
    try:
        url = database_url("", db_secret)
    except ValueError as exc:
        console.print(f"[bold red]error:[/] {exc} (or pass --db URL)", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    from reelbatch.infra.db import Database

    with Database(url) as database:
        database.ensure_schema(auto_upgrade=True)
    deployments = serve_deployments(output, db_secret, values.gpus(gpus), inbox, cron, timezone)
    for name in replace_pool_deployments([f"{d.flow_name}/{d.name}" for d in deployments]):
        console.print(
            f"replacing {name} by the served deployment; `prefect deploy --all` brings it back",
            highlight=False,
            soft_wrap=True,
        )
    prefect_serve(*deployments)
