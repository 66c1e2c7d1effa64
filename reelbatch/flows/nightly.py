"""The nightly-dataset flow: run every manifest dropped into an inbox that no earlier pass processed.

list the inbox -> release abandoned claims -> per manifest: claim -> generate-dataset (subflow) -> mark it
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from reelbatch.flows.generate import generate_dataset
from reelbatch.infra.prefect_config import database_url
from reelbatch.planning.packing import Packing
from reelbatch.schemas import RunDefaults
from reelbatch.settings import DEFAULT_DB_URL, DEFAULT_OUTPUT
from reelbatch.tasks.inbox import (
    claim_manifests_task,
    finish_manifest_task,
    list_manifests_task,
    outcome,
    release_stale_claims_task,
    summary_markdown,
)


class InboxFailures(RuntimeError):
    """Some manifests of the pass failed; the others ran. They are retried by the next pass."""


@flow(name="nightly-dataset", log_prints=True)
def nightly_dataset(
    inbox: str,
    output: str = DEFAULT_OUTPUT,
    db_secret: str | None = None,
    db_url: str = DEFAULT_DB_URL,
    gpus_per_node: int = 2,
    defaults: RunDefaults = RunDefaults(),
    strict: bool = False,
    packing: Packing = Packing(),
    model_paths: list[str] | None = None,
    job_timeout_s: float | None = None,
    retry_policy: dict | None = None,
    limits: dict | None = None,
    settle_seconds: float = 120.0,
    reclaim_after_hours: float | None = 48.0,
) -> list[dict[str, Any]]:
    """Run every manifest under ``inbox`` not processed yet, then mark it processed in the database.

    Args:
        inbox: Folder or fsspec prefix (s3://bucket/incoming) where people drop CSV, JSONL or Parquet manifests.
            Files are never moved or changed; what ran is recorded in the database (table inbox_manifests).
        output: Where videos go (local folder or s3://bucket/prefix); one output for every manifest, so a
            manifest that comes back resumes instead of starting over.
        db_secret: Name of a Prefect Secret block holding the database URL; wins over db_url.
        db_url: Database URL (SQLAlchemy) when no db_secret is given; never put credentials here.
        gpus_per_node: Ranks per node (GPUs; CPU processes on a machine without CUDA).
        defaults: Values for the manifests' empty cells, plan and backend overrides included.
        strict: Refuse a whole manifest when any of its rows is bad.
        packing: How samples are packed into jobs (job length, padding policy, job width).
        model_paths: NAME=DIR entries: model names usable in manifests, loaded from local diffusers folders.
        job_timeout_s: Wall-clock limit per job attempt, seconds (default: cost model estimate x 3, min 15 min).
        retry_policy: Retries per failure class, e.g. {"rank_crash": {"max_attempts": 5, "backoff_s": 10}}.
        limits: Manifest limits, e.g. {"max_rows": 100000}.
        settle_seconds: A file modified more recently than this may still be uploading; it waits a pass.
        reclaim_after_hours: A manifest claimed this long ago and still running belonged to a pass that died;
            it is run again. Empty: never.

    Image cells are read only from each manifest's own folder and REELBATCH_IMAGE_ROOTS (the worker's environment).
    """
    logger = get_run_logger()
    url = database_url(db_url, db_secret)
    # The subflow gets the secret's name, not its value: run parameters are shown in the UI and stored by the API.
    database = {"db_secret": db_secret} if db_secret else {"db_url": db_url}
    released = release_stale_claims_task(url, inbox, reclaim_after_hours)
    if released:
        logger.warning("released %d abandoned claims: %s", len(released), ", ".join(released))
    entries = list_manifests_task(inbox, [output], settle_seconds)
    results, skipped = [], 0
    for entry in entries:
        # One claim at a time, just before the run: a pass that dies leaves at most one manifest claimed, and two
        # passes at once share the inbox instead of one holding everything.
        if not claim_manifests_task(url, inbox, [entry]):
            skipped += 1
            continue
        name = entry.uri.rstrip("/").rsplit("/", 1)[-1]
        state = generate_dataset.with_options(flow_run_name=f"inbox-{name}")(
            manifest=entry.uri,
            output=output,
            gpus_per_node=gpus_per_node,
            defaults=defaults,
            strict=strict,
            packing=packing,
            model_paths=model_paths,
            job_timeout_s=job_timeout_s,
            retry_policy=retry_policy,
            limits=limits,
            return_state=True,
            **database,
        )
        run_id = None
        if state.is_completed():
            report = state.result()
            run_id = report.run_id
            status, error = outcome(report)
        else:
            status, error = "failed", f"{state.name}: {state.message or 'generate-dataset did not complete'}"
        finish_manifest_task(url, entry, status, run_id, error)
        results.append(
            {"uri": entry.uri, "fingerprint": entry.fingerprint, "status": status, "run_id": run_id, "error": error}
        )
        print(f"{entry.uri}: {status}" + (f" ({error})" if error else ""))
    create_markdown_artifact(
        summary_markdown(inbox, results, skipped), key="inbox-pass", description="Manifests this pass ran"
    )
    failed = [r for r in results if r["status"] == "failed"]
    if failed:
        raise InboxFailures(
            f"{len(failed)} of {len(results)} manifests failed (the next pass retries them): "
            + "; ".join(f"{r['uri']}: {r['error']}" for r in failed)
        )
    return results
