"""What the database holds: `reelbatch runs`, `status`, `export` and `db upgrade`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, cast

import typer

import reelbatch.cli.values as values  # noqa: PLR0402 - `from reelbatch.cli import` would import the package: a cycle
from reelbatch.cli.app import app, db_app
from reelbatch.cli.options import DbOpt, RunIdArg
from reelbatch.cli.render import console, print_runs, print_status, print_status_jobs

if TYPE_CHECKING:
    from reelbatch.tasks.export import ExportFormat

EXPORT_FORMATS = ("parquet", "csv", "jsonl")  # tasks.export.ExportFormat (not imported: it loads Prefect)


@app.command()
def runs(
    db: DbOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="How many recent runs.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the runs as JSON.")] = False,
) -> None:
    """Recent runs, newest first, with sample counts and status."""
    with values.open_database(db) as database:
        recent = database.list_runs(limit)
        shown_url = database.url_for_display
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "id": r.id,
                        "created_at": r.created_at.isoformat(),
                        "status": r.status,
                        "counts": r.counts,
                        "jobs": r.jobs,
                        "manifest_source": r.manifest_source,
                        "output_root": r.output_root,
                    }
                    for r in recent
                ],
                indent=2,
            )
        )
        return
    print_runs(recent, shown_url)


@app.command()
def status(
    run_id: RunIdArg,
    db: DbOpt = None,
    list_jobs: Annotated[bool, typer.Option("--jobs", help="Also list every job, one line each.")] = False,
) -> None:
    """One run: sample and job counts by status, one line per bucket (jobs and samples by status), the first
    failed and rejected rows; --jobs lists every job. `reelbatch export RUN` has every row."""
    from reelbatch.infra.db.queries import status_report

    with values.open_database(db) as database:
        summary = values.run_summary(database, run_id)
        report = status_report(database, summary.id, first_problems=FIRST_PROBLEMS)
        jobs = database.jobs(summary.id) if list_jobs else None
    if jobs is not None:
        print_status_jobs(jobs)
    print_status(summary, report)


FIRST_PROBLEMS = 20  # failed and rejected rows `status` shows; `export` has them all


# The help is one line in `reelbatch --help`'s command list, too long for a docstring line.
@app.command(
    help=(
        "Every column of a run's samples table as a file. "
        "CSV cells a spreadsheet would run as formulas are neutralised."
    )
)
def export(
    run_id: RunIdArg,
    fmt: Annotated[str, typer.Option("--format", help="parquet, csv or jsonl.")] = "parquet",
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", help="Where to write (path or fsspec URL). Default: <run output>/export/<run>.<format>."
        ),
    ] = None,
    db: DbOpt = None,
) -> None:
    from itertools import chain

    from reelbatch.defaults import EXPORT_CHUNK_ROWS
    from reelbatch.tasks.export import write_samples

    if fmt not in EXPORT_FORMATS:
        values.fail(f"--format {fmt!r}: use parquet, csv or jsonl")
    with values.open_database(db) as database:
        summary = values.run_summary(database, run_id)
        target = output or f"{summary.output_root.rstrip('/')}/export/{summary.id}.{fmt}"
        # Streamed: rows are read and written a chunk at a time, so a run of any size exports in flat memory.
        samples = chain.from_iterable(database.sample_chunks(summary.id, EXPORT_CHUNK_ROWS))
        count = write_samples(samples, target, cast("ExportFormat", fmt))  # checked above
    console.print(f"{count} rows of run {summary.id} written to {target}")


@db_app.command("upgrade")
def db_upgrade(db: DbOpt = None) -> None:
    """Create or migrate the database schema to the version this reelbatch needs."""
    from reelbatch.infra.db import Database

    database = Database(values.db_url(db))
    database.upgrade()
    console.print(f"{database.url_for_display}: schema at revision {database.current_revision()}")
