"""`reelbatch run` and `reelbatch resume`: the generate-dataset flow in this process, with its progress shown.

Progress: bars at a terminal, lines in a log (see cli.progress); --quiet and --log-format json for scripts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer

import reelbatch.cli.values as values  # noqa: PLR0402 - `from reelbatch.cli import` would import the package: a cycle
from reelbatch import defaults as default
from reelbatch.cli.app import app
from reelbatch.cli.options import (
    LOG_OUTPUT,
    PACKING,
    PLANNER,
    ROW_DEFAULTS,
    DbOpt,
    FpsOpt,
    GpusOpt,
    ManifestArg,
    MaxSamplesOpt,
    ModelPathOpt,
    ModelsFileOpt,
    RetryOpt,
    RunIdArg,
    StrictColumnsHelp,
    with_options,
)
from reelbatch.cli.progress import RunOutput
from reelbatch.cli.render import console
from reelbatch.cli.stop import stopping_cleanly
from reelbatch.defaults import DEFAULT_OUTPUT

if TYPE_CHECKING:
    from reelbatch.config import RunConfig


@app.command()
@with_options(row=ROW_DEFAULTS, planner=PLANNER, packing=PACKING, output=LOG_OUTPUT)
def run(
    manifest: ManifestArg,
    gpus: GpusOpt = None,
    out_dir: Annotated[
        str, typer.Option("--out", help="Output folder for the videos (created if missing).")
    ] = DEFAULT_OUTPUT,
    db: DbOpt = None,
    strict: Annotated[bool, typer.Option("--strict", help=StrictColumnsHelp)] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Regenerate videos an earlier run already made into --out.")
    ] = False,
    max_samples_per_job: MaxSamplesOpt = default.MAX_SAMPLES_PER_JOB,
    job_timeout: Annotated[
        float | None,
        typer.Option(
            min=1,
            help=(
                "Wall-clock limit per job attempt, seconds; its ranks are killed after it. Default: the cost model's "
                "estimate x 3, at least 15 min."
            ),
        ),
    ] = None,
    model_path: ModelPathOpt = None,
    models_file: ModelsFileOpt = None,
    *,
    row: dict,
    fps: FpsOpt = None,
    planner: dict,
    retry_policy: RetryOpt = None,
    packing: dict,
    output: dict,
    dask: Annotated[
        str | None,
        typer.Option(
            "--dask",
            metavar="ADDRESS",
            help=(
                "Run the jobs on this Dask cluster (tcp://host:8786). Workers need `--resources GPU=N`; --out must be "
                "shared storage (s3:// or a shared folder) and --db a server the workers reach. See docs/SCALE_OUT.md."
            ),
            rich_help_panel="Scale-out",
        ),
    ] = None,
    dask_local: Annotated[
        int,
        typer.Option(
            "--dask-local",
            metavar="N",
            min=0,
            help="Try Dask on this machine: a local cluster of N workers with --gpus-per-node GPUs each.",
            rich_help_panel="Scale-out",
        ),
    ] = 0,
) -> None:
    """Generate every video of the manifest and record runs, jobs and samples in the database.

    Each job runs as `torchrun` ranks (on CPU with gloo when there is no CUDA). Jobs run side by side on disjoint
    groups of this machine's GPUs (CPU rank slots without CUDA; --gpus-per-node of them), longest first, never
    more ranks at once than the machine has. Rejected rows are reported and recorded; the valid rows still run
    unless --strict.
    """
    values.prefect_environment()
    from reelbatch.infra.db import Database, SchemaOutOfDate
    from reelbatch.redact import redact_url

    run_defaults = values.run_defaults(**row, fps=fps)
    objective = values.objective(planner["objective"])
    db_url = values.db_url(db)
    if redact_url(out_dir) != out_dir:
        values.fail("--out must not carry credentials: use the AWS variables or a profile (nothing else is read)")
    values.catalog(model_path, models_file)  # configuration errors are usage errors: report them before starting
    if dask:
        from reelbatch.infra.dask_cluster import check_shared_storage

        try:
            check_shared_storage(out_dir, db_url, dask)
        except ValueError as exc:
            values.fail(str(exc))
    try:
        with Database(db_url) as database:
            database.ensure_schema(auto_upgrade=True)
    except SchemaOutOfDate as exc:
        values.fail(str(exc))
    if models_file:
        os.environ["REELBATCH_MODELS_FILE"] = models_file
    config = values.run_config(
        output=out_dir,
        db_url=db_url,
        gpus_per_node=values.gpus(gpus),
        defaults=run_defaults,
        strict=strict,
        force=force,
        model_paths=model_path or [],
        max_samples_per_job=max_samples_per_job,
        job_timeout_s=job_timeout,
        gpu_memory_gib=planner["gpu_memory_gib"] or default.GPU_MEMORY_GIB,
        objective=objective,
        compile=values.compile_mode(planner["compile"]),
        limits=values.limits(planner["limit"]),
        retry_policy=values.retry_policy(retry_policy),
        packing=values.packing(**packing),
        dask_address=dask,
        dask_local_workers=dask_local,
    )
    image_roots = [values.absolute(root) for root in planner["image_root"] or []]
    run_flow(values.absolute(manifest), config, image_roots, RunOutput(**output))


@app.command()
@with_options(output=LOG_OUTPUT)
def resume(run_id: RunIdArg, db: DbOpt = None, gpus: GpusOpt = None, *, output: dict) -> None:
    """Continue a run that stopped (interrupted, crash, kill, reboot): finished videos are kept, the rest runs again.

    Ranks the stopped orchestrator left behind are killed first. The manifest must still be readable where the
    run found it, unchanged.
    """
    values.prefect_environment()
    from reelbatch.config import RunConfig

    db_url = values.db_url(db)
    with values.open_database(db) as database:
        try:
            record = database.run_record(run_id)
        except KeyError:
            values.unknown_run(database, run_id)
    params = record["params"]
    if record["manifest_source"] == "<inline>" or "defaults" not in params:
        values.fail(f"run {record['id']} cannot be resumed: its manifest was not a file (start a new run instead)")
    from pydantic import ValidationError

    try:
        config = RunConfig.resumed(
            params, output=record["output_root"], db_url=db_url, gpus_per_node=gpus or record["gpus_per_node"]
        )
    except ValidationError as exc:
        values.fail(f"run {record['id']} cannot be resumed: its recorded settings are refused ({values.problems(exc)})")
    image_roots = params.get("image_roots", [])
    run_flow(record["manifest_source"], config, image_roots, RunOutput(**output), resume_run_id=record["id"])


def use_image_roots(roots: list[str]) -> None:
    """Where image cells may be read from, for this process's run (operator configuration, not a run parameter)."""
    from reelbatch.infra.images import IMAGE_ROOTS_ENV, ImagePolicy, configured_roots

    if any("," in root for root in roots):
        values.fail("--image-root: a path or URL with a comma cannot be a root")
    allowed = list(dict.fromkeys([*configured_roots(), *roots]))
    try:
        ImagePolicy.for_manifest(None, allowed)
    except ValueError as exc:
        values.fail(str(exc))
    os.environ[IMAGE_ROOTS_ENV] = ",".join(allowed)


def run_flow(
    manifest: str,
    config: RunConfig,
    image_roots: Sequence[str],
    output: RunOutput,
    resume_run_id: str | None = None,
) -> None:
    """generate_dataset(manifest, config) with its progress shown as `output` says; exits with the report's code."""
    from reelbatch.flows.generate import generate_dataset
    from reelbatch.manifest import ManifestError
    from reelbatch.progress import reporting_to

    use_image_roots(list(image_roots))
    with stopping_cleanly():  # SIGTERM/SIGINT: the run ends interrupted, the command exits 143/130
        try:
            with output.progress(console) as sink, reporting_to(sink):
                report = generate_dataset(manifest=manifest, config=config, resume_run_id=resume_run_id)
        except ManifestError as exc:
            values.fail(str(exc))
        except ValueError as exc:  # an --image-root that cannot be a root
            values.fail(str(exc))
    output.report(report, console)
    raise typer.Exit(report.exit_code)
