"""Collect a job attempt: read the ranks' results, check and publish the files, record done samples.

A sample is marked done only when its mp4 decodes and it and its sidecar are at their final location. Samples an
attempt did not finish stay pending for the next attempt; only the job's last attempt fails them (with its
error), so no sample is left running.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from reelbatch.contract import JobSpec, SampleResult, crash_point, read_results
from reelbatch.infra.db import Database
from reelbatch.infra.failures import verify_video
from reelbatch.infra.storage import OutputStore


@dataclass
class Collected:
    done: list[str] = field(default_factory=list)  # sample ids published and recorded done
    remaining: list[str] = field(default_factory=list)  # sample ids still to make, in job order
    problems: dict[str, str] = field(default_factory=dict)  # sample id -> why its output was not accepted


def publish_sample(spec: JobSpec, result: SampleResult, store: OutputStore) -> str | None:
    """Check the staged mp4 and publish it with its sidecar; the final location, or None if it is unusable."""
    staged_video = Path(spec.output_dir) / (result.file or "")
    if not result.file or not staged_video.is_file():
        return None
    if not verify_video(staged_video, frames=result.frames, height=result.height, width=result.width):
        return None
    store.publish(staged_video.with_suffix(".json"), str(Path(result.file).with_suffix(".json")))
    return store.publish(staged_video, result.file)  # the video last: its presence means complete


def collect_attempt(spec: JobSpec, db: Database, output_root: str) -> Collected:
    store = OutputStore(output_root)
    reported = {r.sample_id: r for r in read_results(spec.results_path)}
    collected, done_results, output_paths = Collected(), [], {}
    for sample in spec.samples:
        result = reported.get(sample.sample_id)
        if result is None:
            collected.remaining.append(sample.sample_id)
            continue
        final = publish_sample(spec, result, store) if result.status == "done" else None
        if final is None:
            collected.remaining.append(sample.sample_id)
            collected.problems[sample.sample_id] = result.error or "the mp4 is missing or does not decode"
            continue
        output_paths[sample.sample_id] = final
        done_results.append(result)
        collected.done.append(sample.sample_id)
        crash_point("collect")
    if done_results:
        db.record_sample_results(spec.job_id, done_results, output_paths)
    return collected
