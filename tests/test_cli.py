"""The command line as a user meets it: exit codes, clean errors, the plan --json contract."""

from __future__ import annotations

import json
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
    done = reelbatch("plan", manifest, "--gpus", "2", "--json", "--no-pack")
    assert done.returncode == 1, done.stderr  # a row was rejected
    doc = json.loads(done.stdout)
    assert set(doc) == {"rows", "accepted", "rejected", "jobs", "summary", "fleet"}
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
    assert summary.pop("estimated_gpu_seconds") > 0
    assert summary == {"jobs": 3, "samples": 4, "padded_slots": 2, "padding_ratio": round(2 / 6, 6)}
    fleet = doc["fleet"]
    assert (fleet["nodes"], fleet["gpus_per_node"], fleet["gpu"]) == (1, 2, "h100")
    assert (
        fleet["makespan_s"] > 0 and fleet["makespan_s"] >= fleet["lower_bound_s"] and 0 < fleet["gpu_utilization"] <= 1
    )


def test_plan_packs_by_default_and_estimates_the_fleet(tmp_path):
    rows = "".join(f"p{i},prompt {i},tiny-wan,32,32,5,5,\n" for i in range(6)) + "h,other,tiny-hunyuan,32,32,5,1,\n"
    manifest = write(tmp_path, HEADER + rows)
    one = json.loads(reelbatch("plan", manifest, "--gpus", "2", "--json").stdout)
    # Packed: one sample's group per job (dp=1), so no slot is padded; longest first.
    assert all(j["plan"]["dp"] == 1 and j["padded_slots"] == 0 for j in one["jobs"])
    assert sum(j["samples"] for j in one["jobs"]) == 7
    walls = [j["estimated_seconds"] for j in one["jobs"]]
    assert walls == sorted(walls, reverse=True)
    four = json.loads(reelbatch("plan", manifest, "--gpus", "2", "--json", "--nodes", "4", "--gpu", "rtx4090").stdout)
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
