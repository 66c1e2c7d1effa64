"""The nightly-dataset flow: run every manifest dropped into an inbox that no earlier pass processed.

list the inbox -> release abandoned claims -> per manifest: claim -> generate-dataset (subflow) -> mark it
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from reelbatch.config import RunConfig
from reelbatch.flows.generate import generate_dataset
from reelbatch.infra.db import Database
from reelbatch.infra.prefect_config import database_url, deployment_config
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
    config: RunConfig = RunConfig(),
    settle_seconds: float = 120.0,
    reclaim_after_hours: float | None = 48.0,
) -> list[dict[str, Any]]:
    """Run every manifest under ``inbox`` not processed yet, then mark it processed in the database.

    Args:
        inbox: Folder or fsspec prefix (s3://bucket/incoming) where people drop CSV, JSONL or Parquet manifests.
            Files are never moved or changed; what ran is recorded in the database (table inbox_manifests).
        config: How each manifest's run runs (generate-dataset's `config`). One `output` for every manifest, so
            a manifest that comes back resumes instead of starting over; `db_secret` names the database's Secret
            block (never put credentials in `db_url`).
        settle_seconds: A file modified more recently than this may still be uploading; it waits a pass.
        reclaim_after_hours: A manifest claimed this long ago and still running belonged to a pass that died;
            it is run again. Empty: never.

    Image cells are read only from each manifest's own folder and REELBATCH_IMAGE_ROOTS (the worker's environment).
    """
    logger = get_run_logger()
    config = config.over(deployment_config())  # what the run leaves out: its deployment's
    if config.force:  # a manifest retried the next night resumes; it never remakes the videos it has
        logger.warning("config.force is ignored by the nightly pass: manifests that come back resume")
        config = config.model_copy(update={"force": False})
    # The subflow gets the config as given (a secret's name, not its value): run parameters are shown in the UI.
    url = database_url(config.db_url, config.db_secret)
    with Database(url) as db:  # the inbox steps' one Database, closed when the pass ends
        released = release_stale_claims_task(db, inbox, reclaim_after_hours)
        if released:
            logger.warning("released %d abandoned claims: %s", len(released), ", ".join(released))
        entries = list_manifests_task(inbox, [config.output], settle_seconds)
        results, skipped = [], 0
        for entry in entries:
            # One claim at a time, just before the run: a pass that dies leaves at most one manifest claimed, and two
            # passes at once share the inbox instead of one holding everything.
            if not claim_manifests_task(db, inbox, [entry]):
                skipped += 1
                continue
            name = entry.uri.rstrip("/").rsplit("/", 1)[-1]
            state = generate_dataset.with_options(flow_run_name=f"inbox-{name}")(
                manifest=entry.uri, config=config, return_state=True
            )
            run_id = None
            if state.is_completed():
                report = state.result()
                run_id = report.run_id
                status, error = outcome(report)
            else:
                status, error = "failed", f"{state.name}: {state.message or 'generate-dataset did not complete'}"
            finish_manifest_task(db, entry, status, run_id, error)
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
