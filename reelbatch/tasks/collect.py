"""Collect a finished job: read the ranks' results, publish the files, record every sample in the database.

A sample is marked done only when its mp4 and sidecar are at their final location. A sample the job never
reported (crash, timeout) is marked failed with the job's error, so no sample is left running.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from prefect import task
from pydantic import ValidationError

from reelbatch.infra.db import Database
from reelbatch.infra.storage import OutputStore
from reelbatch.schemas import JobSpec, SampleResult
from reelbatch.testing import crash_point


@dataclass
class JobCollection:
    job_id: str
    status: str  # done | failed
    done: int
    failed: int
    error: str | None


def read_results(path: str | Path) -> list[SampleResult]:
    """Every complete line of a results file; a line cut short by a crash is ignored."""
    results = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            results.append(SampleResult.model_validate(json.loads(line)))
        except (ValueError, ValidationError):
            continue
    return results


def publish_sample(spec: JobSpec, result: SampleResult, store: OutputStore) -> tuple[SampleResult, str | None]:
    staged_video = Path(spec.output_dir) / (result.file or "")
    staged_sidecar = staged_video.with_suffix(".json")
    if not result.file or not staged_video.is_file() or staged_video.stat().st_size == 0:
        missing = result.model_copy(update={"status": "failed", "error": "the rank reported done but wrote no mp4"})
        return missing, None
    store.publish(staged_sidecar, str(Path(result.file).with_suffix(".json")))
    return result, store.publish(staged_video, result.file)  # the video last: its presence means complete


def collect_job(
    spec: JobSpec, db_url: str, output_root: str, returncode: int, seconds: float, error: str | None
) -> JobCollection:
    store = OutputStore(output_root)
    reported = {r.sample_id: r for r in read_results(spec.results_path)}
    expected = {s.sample_id for s in spec.samples}
    results, output_paths = [], {}
    for sample_id, result in reported.items():
        if sample_id not in expected:
            continue
        if result.status == "done":
            result, final = publish_sample(spec, result, store)
            if final:
                output_paths[sample_id] = final
                crash_point("collect")
        results.append(result)

    done = sum(r.status == "done" for r in results)
    failed = len(spec.samples) - done
    if returncode != 0 and error is None:
        error = f"job exited with code {returncode}"
    status = "done" if returncode == 0 and failed == 0 else "failed"
    with Database(db_url) as db:
        db.record_sample_results(spec.job_id, results, output_paths)
        db.finish_job(spec.job_id, status=status, returncode=returncode, seconds=seconds, error=error)
    return JobCollection(spec.job_id, status, done, failed, error)


collect_job_task = task(name="collect-job-results")(collect_job)
