"""The command line as a user meets it: exit codes, clean errors, the plan --json contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_runner import console_script, reelbatch

HEADER = "id,prompt,model,height,width,num_frames,guidance_scale,sequence_batch\n"


def write(tmp_path: Path, text: str | bytes, name: str = "m.csv") -> str:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def test_plan_json_follows_the_documented_schema(tmp_path):
    manifest = write(
        tmp_path,
        HEADER
        + "a,a cat,tiny-wan,32,32,5,5,\n"
        + "b,a dog,tiny-wan,32,32,5,5,\n"
        + "c,a car,tiny-wan,32,32,5,5,true\n"
        + "d,bad frames,tiny-wan,32,32,6,5,\n"
        + "e,no cfg,tiny-hunyuan,32,32,5,1,\n",
    )
    done = reelbatch("plan", manifest, "--gpus", "2", "--json", "--jobs", "--no-pack", "--nodes", "1")
    assert done.returncode == 1, done.stderr  # a row was rejected
    assert done.stdout.count("\n") == 1  # one compact line
    doc = json.loads(done.stdout)
    assert set(doc) == {"rows", "accepted", "rejected", "buckets", "jobs", "summary", "fleet"}
    assert (doc["rows"], doc["accepted"]) == (5, 4)
    [rejected] = doc["rejected"]
    assert rejected["row"] == 5 and rejected["column"] == "num_frames" and rejected["rule"] == "frames_not_4k_plus_1"
    assert rejected["message"] and rejected["fix"]
    by_prompt_count = {(j["model"], j["plan"]["cfg"], j["samples"], j["padded_slots"]) for j in doc["jobs"]}
    # Tiny videos fit one rank, so data parallel wins for throughput; one sample on dp=2 is one padded slot.
    assert by_prompt_count == {("tiny-wan", 1, 2, 0), ("tiny-wan", 1, 1, 1), ("tiny-hunyuan", 1, 1, 1)}
    for job in doc["jobs"]:
        plan = job["plan"]
        assert plan["dp"] * plan["cfg"] * plan["ulysses"] * plan["ring"] == plan["world_size"] == 2
        assert isinstance(job["tokens"], int) and job["tokens"] > 0
    summary = doc["summary"]
    estimated = summary.pop("estimated_gpu_seconds")
    assert estimated > 0 and summary.pop("gpu_seconds_without_speedups") == estimated
    assert summary == {
        "jobs": 3, "samples": 4, "padded_slots": 2, "padding_ratio": round(2 / 6, 6), "saved_gpu_seconds": {}
    }  # fmt: skip
    fleet = doc["fleet"]
    assert (fleet["nodes"], fleet["gpus_per_node"], fleet["gpu"]) == (1, 2, "h100")
    assert (
        fleet["makespan_s"] > 0 and fleet["makespan_s"] >= fleet["lower_bound_s"] and 0 < fleet["gpu_utilization"] <= 1
    )


def test_plan_packs_by_default_and_estimates_the_fleet_when_asked(tmp_path):
    rows = "".join(f"p{i},prompt {i},tiny-wan,32,32,5,5,\n" for i in range(6)) + "h,other,tiny-hunyuan,32,32,5,1,\n"
    manifest = write(tmp_path, HEADER + rows)
    one = json.loads(reelbatch("plan", manifest, "--gpus", "2", "--json", "--jobs", "--gpu", "h100").stdout)
    # Packed: one sample's group per job (dp=1), so no slot is padded; longest first.
    assert all(j["plan"]["dp"] == 1 and j["padded_slots"] == 0 for j in one["jobs"])
    assert sum(j["samples"] for j in one["jobs"]) == 7
    walls = [j["estimated_seconds"] for j in one["jobs"]]
    assert walls == sorted(walls, reverse=True)
    four = json.loads(
        reelbatch("plan", manifest, "--gpus", "2", "--json", "--jobs", "--nodes", "4", "--gpu", "rtx4090").stdout
    )
    assert (four["fleet"]["nodes"], four["fleet"]["gpu"]) == (4, "rtx4090")
    assert four["fleet"]["makespan_s"] <= one["fleet"]["makespan_s"] * 4  # a slower GPU on more nodes
    text = reelbatch("plan", manifest, "--gpus", "2", "--nodes", "2")
    assert text.returncode == 0 and "On 2 x 2 H100" in text.stdout and "of wall time" in text.stdout
    bad = reelbatch("plan", manifest, "--padding", "zero")
    assert bad.returncode == 2 and "--padding pad|fill" in bad.stderr


def test_plan_exits_zero_when_every_row_is_accepted(tmp_path):
    done = reelbatch("plan", write(tmp_path, "prompt\na cat\n"), "--gpus", "2", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["accepted"] == 1


@pytest.mark.parametrize(
    "content,expected",
    [
        (b"prompt\ncaf\xe9 au lait\n", "UTF-8"),
        (b"title,height\nx,32\n", "prompt"),
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "manifest"),
    ],
)
def test_bad_files_give_one_clean_error_and_exit_2(tmp_path, content, expected):
    done = reelbatch("plan", write(tmp_path, content))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr + done.stdout
    assert expected.lower() in done.stderr.lower()


def test_missing_file_is_a_usage_error(tmp_path):
    done = reelbatch("plan", str(tmp_path / "nope.csv"))
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_help_teaches_the_commands():
    done = console_script("--help")  # the installed entry point, in a fresh process: every command registered
    assert done.returncode == 0
    for command in ("run", "plan", "runs", "db", "models"):
        assert command in done.stdout
    run_help = reelbatch("run", "--help").stdout
    assert "--gpus-per-node" in run_help and "--strict" in run_help and "--db" in run_help


def test_manifest_limits_are_configurable(tmp_path):
    manifest = write(tmp_path, "prompt\n" + "".join(f"prompt {i}\n" for i in range(3)))
    done = reelbatch("plan", manifest, "--limit", "max_rows=2")
    assert done.returncode == 2 and "more than 2 rows" in done.stderr and "Traceback" not in done.stderr
    long_prompt = write(tmp_path, "prompt\n" + "x" * 50 + "\n", name="long.csv")
    rejected = json.loads(reelbatch("plan", long_prompt, "--limit", "max_prompt_chars=10", "--json").stdout)
    assert rejected["rejected"][0]["rule"] == "prompt_too_long"


def test_simulate_reports_the_fleet_figures(tmp_path):
    manifest = write(
        tmp_path,
        "prompt,model,height,width,num_frames,num_inference_steps\n"
        + "".join(f"video {i},wan2.1-t2v-14b,480,832,81,50\n" for i in range(20))
        + "".join(f"clip {i},hunyuanvideo,544,960,97,30\n" for i in range(12)),
    )
    done = reelbatch("simulate", manifest, "--nodes", "2", "--gpus-per-node", "8", "--gpu", "h100", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    keys = {"makespan_s", "lower_bound_s", "ratio", "gpu_utilization", "padding_ratio", "gpu_hours"}
    assert keys <= set(doc) and keys <= set(doc["naive"])
    assert doc["makespan_s"] >= doc["lower_bound_s"] > 0 and doc["ratio"] >= 1.0
    assert 0 < doc["gpu_utilization"] <= 1.0


def test_storage_help_offers_only_the_kinds_the_cost_model_knows():
    from reelbatch.cli.options import STORAGE_HELP
    from reelbatch.planning.cost import STORAGE_KINDS

    assert STORAGE_HELP.endswith(f"{' or '.join(STORAGE_KINDS)}.")
    example = str(Path(__file__).resolve().parent.parent / "examples" / "prompts.csv")
    refused = reelbatch("plan", example, "--storage", "nfs")
    assert refused.returncode == 2 and "use one of local, s3" in refused.stderr


# --- plan at scale: a summary by bucket, jobs on request, the fleet estimate when asked ---

MIXED = (
    HEADER
    + "".join(f"w{i},wan {i},tiny-wan,32,32,5,5,\n" for i in range(5))
    + "".join(f"h{i},hunyuan {i},tiny-hunyuan,32,32,5,1,\n" for i in range(3))
    + "bad,bad frames,tiny-wan,32,32,6,5,\n"
)


def test_plan_prints_one_line_per_bucket_and_every_job_only_with_jobs(tmp_path):
    manifest = write(tmp_path, MIXED)
    doc = json.loads(
        reelbatch("plan", manifest, "--gpus", "2", "--json", "--jobs", "--max-samples-per-job", "2").stdout
    )
    assert len(doc["jobs"]) > len(doc["buckets"]) == 2  # several jobs per bucket
    summary = reelbatch("plan", manifest, "--gpus", "2", "--max-samples-per-job", "2")
    assert summary.returncode == 1  # the rejected row
    lines = summary.stdout.splitlines()
    for bucket in doc["buckets"]:
        [line] = [line for line in lines if f" {bucket['model']} " in line]
        assert f" {bucket['jobs']} " in line and f" {bucket['samples']} " in line and bucket["plan"] is not None
    assert not any(job["job_id"] in summary.stdout for job in doc["jobs"])
    assert "9 rows, 8 accepted, 1 rejected" in summary.stdout
    listed = reelbatch("plan", manifest, "--gpus", "2", "--max-samples-per-job", "2", "--jobs").stdout
    job_lines = [line for line in listed.splitlines() if line.startswith("job-")]
    assert [line.split()[0] for line in job_lines] == [job["job_id"] for job in doc["jobs"]]
    assert "9 rows, 8 accepted, 1 rejected" in listed  # the summary follows the listing


def test_plan_json_sums_the_jobs_by_bucket_and_lists_them_only_with_jobs(tmp_path):
    manifest = write(tmp_path, MIXED)
    done = reelbatch("plan", manifest, "--gpus", "2", "--json", "--max-samples-per-job", "2")
    assert done.stdout.count("\n") == 1  # compact: one line
    doc = json.loads(done.stdout)
    assert set(doc) == {"rows", "accepted", "rejected", "buckets", "summary"}  # no jobs, no fleet unless asked
    full = json.loads(
        reelbatch("plan", manifest, "--gpus", "2", "--json", "--jobs", "--max-samples-per-job", "2").stdout
    )
    assert full["buckets"] == doc["buckets"] and full["summary"] == doc["summary"]
    for bucket in doc["buckets"]:
        jobs = [
            j for j in full["jobs"] if (j["model"], j["guidance_scale"]) == (bucket["model"], bucket["guidance_scale"])
        ]
        assert bucket["jobs"] == len(jobs) and bucket["samples"] == sum(j["samples"] for j in jobs)
        assert bucket["padded_slots"] == sum(j["padded_slots"] for j in jobs)
        assert bucket["plan"] == jobs[0]["plan"] and bucket["longest_job_seconds"] == max(
            j["estimated_seconds"] for j in jobs
        )
    assert sum(b["jobs"] for b in doc["buckets"]) == doc["summary"]["jobs"] == len(full["jobs"])
    assert sum(b["samples"] for b in doc["buckets"]) == doc["summary"]["samples"]


@pytest.mark.parametrize("option", [("--nodes", "2"), ("--gpu", "a800"), ("--storage", "s3")])
def test_plan_estimates_the_fleet_only_when_asked(tmp_path, option):
    manifest = write(tmp_path, MIXED)
    plain = reelbatch("plan", manifest, "--gpus", "2")
    assert "of wall time" not in plain.stdout and "fleet" not in json.loads(
        reelbatch("plan", manifest, "--gpus", "2", "--json").stdout
    )
    asked = reelbatch("plan", manifest, "--gpus", "2", *option)
    assert "of wall time" in asked.stdout and "GPU utilisation" in asked.stdout
    fleet = json.loads(reelbatch("plan", manifest, "--gpus", "2", "--json", *option).stdout)["fleet"]
    assert fleet["makespan_s"] >= fleet["lower_bound_s"] and fleet["makespan_s"] > 0 and fleet["jobs"] > 0
    assert option[1] in (str(fleet["nodes"]), fleet["gpu"], fleet["storage"])


def test_plan_output_piped_is_not_cut_to_80_columns(tmp_path):
    manifest = write(tmp_path, MIXED)
    done = reelbatch("plan", manifest, "--gpus", "2")  # the runner's stdout is not a terminal
    assert "…" not in done.stdout
    header = next(line for line in done.stdout.splitlines() if "model" in line and "GPU-h" in line)
    assert len(header) > 80 and "longest job" in header
    # A footnote is one line, however long.
    assert any(line.startswith("[1] ") and len(line) > 80 for line in done.stdout.splitlines())


@pytest.mark.parametrize("example", ["prompts.csv", "image-to-video.csv"])
def test_plan_imports_neither_prefect_nor_torch(example):
    manifest = Path(__file__).resolve().parent.parent / "examples" / example
    code = (
        "import sys\n"
        "from reelbatch.cli import app\n"
        f"try:\n    app(args=['plan', {str(manifest)!r}, '--gpus', '2', '--json'], standalone_mode=False)\n"
        "except SystemExit:\n    pass\n"
        "heavy = ('prefect', 'torch', 'diffusers', 'transformers')\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] in heavy), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["accepted"] > 0
    assert done.stderr.strip().splitlines()[-1] == "[]"


# --- status: a summary from the database's sums, jobs on request ---


def _recorded_run(url: str) -> str:
    from reelbatch.contract import JobSpec, SampleResult
    from reelbatch.infra.db import Database, library_versions
    from reelbatch.schemas import BucketKey, ParallelPlan, RowRejection, Sample

    def job(job_id: str, run_id: str, model: str, rows: range) -> JobSpec:
        samples = [
            Sample(sample_id=f"{job_id}-{r}", row=r, prompt=f"prompt {r}", seed=r, output_key=f"{job_id}-{r}.mp4")
            for r in rows
        ]
        bucket = BucketKey(model=model, height=32, width=48, num_frames=5, num_inference_steps=4, guidance_scale=5.0)
        return JobSpec(
            job_id=job_id,
            run_id=run_id,
            bucket=bucket,
            model_path=f"/models/{model}",
            family="wan",
            plan=ParallelPlan(),
            samples=samples,
            padded_slots=0,
            tokens=96,
            output_dir=f"/tmp/out/{job_id}",
            results_path=f"/tmp/out/{job_id}/results.jsonl",
        )

    with Database(url) as database:
        database.upgrade()
        run_id = database.create_run(
            manifest_source="m.csv",
            manifest_sha256="ab" * 32,
            output_root="/data/videos",
            gpus_per_node=2,
            params={},
            library_versions=library_versions(),
            rows_total=30,
            rows_accepted=24,
            rows_rejected=26,
        )
        specs = [
            job("job-a1", run_id, "tiny-wan", range(2, 8)),
            job("job-a2", run_id, "tiny-wan", range(8, 14)),
            job("job-b1", run_id, "tiny-hunyuan", range(14, 20)),
            job("job-b2", run_id, "tiny-hunyuan", range(20, 26)),
        ]
        for spec in specs:
            database.add_job(run_id, spec)
        done = [SampleResult(sample_id=f"job-a1-{r}", status="done", seconds=1.0) for r in range(2, 8)]
        database.record_sample_results("job-a1", done, {s.sample_id: f"/v/{s.sample_id}.mp4" for s in done})
        database.finish_job("job-a1", status="done", returncode=0, seconds=10.0)
        database.finish_job("job-b1", status="failed", returncode=1, seconds=4.0, error="CUDA out of memory")
        rejections = [
            RowRejection(row=100 + r, column="num_frames", rule="frames_not_4k_plus_1", message="bad", fix="use 5")
            for r in range(24)
        ]
        database.add_rejections(run_id, rejections)
    return run_id


def test_status_sums_by_bucket_and_lists_jobs_only_with_jobs(tmp_path):
    url = f"sqlite:///{tmp_path / 'state.db'}"
    run_id = _recorded_run(url)
    done = reelbatch("status", run_id[:8], "--db", url)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "samples: 6 done, 6 failed, 24 rejected, 0 running, 12 pending" in text
    assert "jobs: 4 (1 done, 1 failed, 0 running, 2 pending)" in text
    wan = next(line for line in text.splitlines() if " tiny-wan " in line)
    hunyuan = next(line for line in text.splitlines() if " tiny-hunyuan " in line)
    # jobs, done, failed, running, pending, samples, samples done, samples failed, job seconds
    assert [cell.strip() for cell in wan.split("│")[6:15]] == ["2", "1", "0", "0", "1", "12", "6", "0", "10"]
    assert [cell.strip() for cell in hunyuan.split("│")[6:15]] == ["2", "0", "1", "0", "1", "12", "0", "6", "4"]
    assert "job-a1" not in text
    assert "The first 20 of 30 failed and rejected rows" in text  # 6 failed + 24 rejected
    listed = reelbatch("status", run_id, "--db", url, "--jobs").stdout
    assert [line.split()[:2] for line in listed.splitlines() if line.startswith("job-")] == [
        ["job-a1", "done"],
        ["job-a2", "pending"],
        ["job-b1", "failed"],
        ["job-b2", "pending"],
    ]
