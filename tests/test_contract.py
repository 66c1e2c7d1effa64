"""The orchestrator <-> rank contract: the job folder, the events and the reading of torchrun's output."""

from __future__ import annotations

from reelbatch.contract import (
    FailureReport,
    JobSpec,
    OutputLine,
    ResultsFile,
    SampleResult,
    folder_fields,
    format_event,
    new_attempt_folder,
    parse_event,
    rank_log_path,
    read_job_spec,
    read_results,
    spec_path,
    split_output,
    write_job_spec,
)
from reelbatch.schemas import BucketKey, ParallelPlan, Sample


def test_job_spec_and_results_round_trip_through_the_attempt_folder(tmp_path):
    folder = new_attempt_folder(tmp_path / "job")
    bucket = BucketKey(model="tiny-wan", height=32, width=32, num_frames=5, num_inference_steps=2, guidance_scale=1)
    sample = Sample(sample_id="s1", row=2, prompt="a cat", seed=1, output_key="s1.mp4")
    spec = JobSpec(job_id="j", bucket=bucket, model_path="/m", family="wan", plan=ParallelPlan(), samples=[sample],
                   **folder_fields(folder))  # fmt: skip
    assert write_job_spec(spec) == spec_path(spec) == folder / "job.json"
    assert rank_log_path(spec) == folder / "ranks.log"
    assert read_job_spec(spec_path(spec)) == spec
    results = ResultsFile(spec.results_path)
    results.append(SampleResult(sample_id="s1", status="done", file="s1.mp4"))
    results.close()
    with open(spec.results_path, "a") as cut:
        cut.write('{"sample_id": "s2", "sta')  # a crash mid-line loses that line only
    assert [r.sample_id for r in read_results(spec.results_path)] == ["s1"]
    assert read_results(folder / "missing.jsonl") == []


def test_events_round_trip_and_a_cut_event_is_no_known_kind():
    assert parse_event(format_event("sample", sample_id="s1", status="done")) == {
        "event": "sample", "sample_id": "s1", "status": "done"}  # fmt: skip
    assert parse_event('REELBATCH_EVENT {"event": "sam') == {}
    assert parse_event("step 3") is None


def test_output_lines_lose_both_prefixes_and_glued_lines_are_cut_apart():
    assert split_output("[rank1]:[rank1]: Traceback (most recent call last):\n") == [
        OutputLine(1, "Traceback (most recent call last):")]  # fmt: skip
    glued = "[rank0]:Loading 0/5 [00:00<?, ?it/s][rank1]:" + format_event("loaded")
    assert split_output(glued) == [OutputLine(0, "Loading 0/5 [00:00<?, ?it/s]"), OutputLine(1, format_event("loaded"))]
    assert split_output("W0101 torchrun warning") == [OutputLine(None, "W0101 torchrun warning")]


def test_failure_report_names_the_root_cause_the_exits_and_the_sigtermed_ranks():
    lines = ["Sending process 100 closing signal SIGTERM", "Failures:", "[1]:", "  rank      : 0 (local_rank: 0)",
             "  exitcode  : -15 (pid: 100)", "Root Cause (first observed failure):", "[0]:",
             "  rank      : 1 (local_rank: 1)", "  exitcode  : 1 (pid: 101)", "=" * 60,
             "[rank0]:  rank      : 7"]  # fmt: skip
    report = FailureReport()
    consumed = [report.read(line) for raw in lines for line in split_output(raw)]
    assert consumed == [True] * 10 + [False]  # a rank's own line is never part of the report
    assert (report.root_cause, report.exits, report.sigtermed_pids) == (1, {0: (-15, 100), 1: (1, 101)}, {100})
