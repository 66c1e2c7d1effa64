"""LoRA adapters per row, and few-step variants.

A tiny LoRA is made offline with peft for the tiny Wan model and saved with diffusers' ``save_lora_weights``.
reelbatch's frames with it equal the pipeline's own ``load_lora_weights`` + ``__call__``; intake refuses adapters
that cannot be used before any GPU time, with the rule and a fix; rows with different adapters or scales never
share a job; an adapter that still fails inside a rank fails the job's samples, not the rank.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reelbatch.contract import JobSpec, read_results
from reelbatch.engine.adapters import adapter_for
from reelbatch.engine.inputs import staged_path
from reelbatch.engine.loading import load_pipeline
from reelbatch.engine.lora import LoraLoadError, apply_lora
from reelbatch.engine.sampler import VideoSampler
from reelbatch.engine.video import read_mp4
from reelbatch.identity import expand_row
from reelbatch.manifest import ManifestLimits, parse_manifest_text, read_manifest
from reelbatch.manifest.loras import check_loras
from reelbatch.models.catalog import ModelCatalog
from reelbatch.models.registry import FAMILIES
from reelbatch.models.tiny import ensure_tiny_model
from reelbatch.planning import chooser
from reelbatch.planning.cost import DEFAULT_COST_MODEL
from reelbatch.planning.planner import plan_run
from reelbatch.schemas import BucketKey, ManifestRow, ParallelPlan, RunDefaults
from tests.cli_runner import reelbatch

CPU = torch.device("cpu")
PROMPT, NEGATIVE = "a cat walks on a sunny street", "blurry, low quality"
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def make_lora(model_folder: Path, path: Path, seed: int) -> Path:
    """A rank-4 LoRA of the tiny Wan transformer's attention projections, random (non-zero) A and B."""
    from diffusers import WanPipeline, WanTransformer3DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = WanTransformer3DModel.from_pretrained(
        model_folder, subfolder="transformer", torch_dtype=torch.float32, local_files_only=True
    )
    torch.manual_seed(seed)
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=list(TARGETS)))
    WanPipeline.save_lora_weights(
        path.parent, transformer_lora_layers=get_peft_model_state_dict(transformer), weight_name=path.name
    )
    return path


def save_tensors(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    from safetensors.torch import save_file

    save_file({key: torch.ones(shape) for key, shape in shapes.items()}, str(path))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_wan() -> Path:
    return ensure_tiny_model("tiny-wan")


@pytest.fixture(scope="module")
def loras(tmp_path_factory, tiny_wan) -> Path:
    """A manifest folder with two LoRAs of tiny-wan and adapters that cannot be used."""
    folder = tmp_path_factory.mktemp("manifest")
    (folder / "loras").mkdir()
    make_lora(tiny_wan, folder / "loras" / "style.safetensors", seed=0)
    make_lora(tiny_wan, folder / "loras" / "other.safetensors", seed=1)
    shutil.copy(folder / "loras" / "style.safetensors", folder / "loras" / "style-copy.safetensors")
    (folder / "loras" / "notes.safetensors").write_text("not a safetensors file")
    save_tensors(folder / "loras" / "full.safetensors", {"blocks.0.attn1.to_q.weight": (32, 32)})
    # HunyuanVideo's module names, and Wan's names with the factors of a wider model.
    save_tensors(
        folder / "loras" / "hunyuan.safetensors",
        {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": (4, 32),
         "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": (32, 4)},
    )  # fmt: skip
    save_tensors(
        folder / "loras" / "wide.safetensors",
        {"transformer.blocks.0.attn1.to_q.lora_A.weight": (4, 5120),
         "transformer.blocks.0.attn1.to_q.lora_B.weight": (5120, 4)},
    )  # fmt: skip
    return folder


def job_spec(tmp_path: Path, model_folder: Path, bucket: BucketKey, store: Path, samples=()) -> JobSpec:
    return JobSpec(
        job_id="job-lora",
        bucket=bucket,
        model_path=str(model_folder),
        family="wan",
        plan=ParallelPlan(),
        samples=list(samples),
        output_dir=str(tmp_path / "staging"),
        results_path=str(tmp_path / "results.jsonl"),
        images_dir=str(store),
    )


def stage(store: Path, path: Path) -> str:
    digest = sha256(path)
    target = staged_path(store, digest)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, target)
    return digest


def tiny_bucket(**lora) -> BucketKey:
    return BucketKey(
        model="tiny-wan", height=32, width=32, num_frames=5, num_inference_steps=4, guidance_scale=4.0, **lora
    )


def test_a_lora_changes_the_video_as_the_pipelines_own_loading_does(tmp_path, tiny_wan, loras):
    lora = loras / "loras" / "style.safetensors"
    store = tmp_path / "store"
    bucket = tiny_bucket(lora_sha256=stage(store, lora), lora_scale=0.5)
    pipe = load_pipeline(str(tiny_wan), CPU)
    apply_lora(pipe, job_spec(tmp_path, tiny_wan, bucket, store))
    got = VideoSampler(adapter_for(pipe, bucket, CPU))([PROMPT], [NEGATIVE], [11])[0]

    reference = load_pipeline(str(tiny_wan), CPU)
    reference.load_lora_weights(str(lora), adapter_name="style")
    reference.set_adapters(["style"], [0.5])
    want = reference(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        height=32,
        width=32,
        num_frames=5,
        num_inference_steps=4,
        guidance_scale=4.0,
        generator=torch.Generator().manual_seed(11),
        output_type="np",
    ).frames[0]
    plain_bucket = tiny_bucket()
    plain = VideoSampler(adapter_for(load_pipeline(str(tiny_wan), CPU), plain_bucket, CPU))([PROMPT], [NEGATIVE], [11])
    np.testing.assert_allclose(got, want, atol=1e-5)  # fused once vs. the adapter layers at scale 0.5
    assert np.abs(got - plain[0]).max() > 1e-3  # the adapter really changes the video


def test_an_adapter_whose_staged_file_changed_is_refused(tmp_path, tiny_wan, loras):
    store = tmp_path / "store"
    digest = stage(store, loras / "loras" / "style.safetensors")
    staged_path(store, digest).write_bytes(b"tampered")
    with pytest.raises(LoraLoadError, match="no longer matches its sha256"):
        apply_lora(object(), job_spec(tmp_path, tiny_wan, tiny_bucket(lora_sha256=digest, lora_scale=1.0), store))


def write_manifest(folder: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    manifest = folder / "prompts.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "prompt", "lora", "lora_scale", "seed"])
        writer.writerows((*row, 1) for row in rows)
    return manifest


INTAKE_ROWS = [
    # id, prompt, lora, lora_scale
    ("style", "a red fox", "loras/style.safetensors", ""),
    ("half", "a red fox", "loras/style.safetensors", "0.5"),
    ("copy", "a grey wolf", "loras/style-copy.safetensors", "1"),  # the same file under another name
    ("other", "a red fox", "loras/other.safetensors", ""),
    ("plain", "a red fox", "", ""),
    ("missing", "a bear", "loras/none.safetensors", ""),
    ("notes", "a bear", "loras/notes.safetensors", ""),
    ("full", "a bear", "loras/full.safetensors", ""),
    ("hunyuan", "a bear", "loras/hunyuan.safetensors", ""),
    ("wide", "a bear", "loras/wide.safetensors", ""),
    ("scale-only", "a bear", "", "0.5"),
    ("outside", "a bear", "/etc/hostname", ""),
]
INTAKE_REJECTIONS = {
    "missing": ("lora", "lora_missing"),
    "notes": ("lora", "lora_not_safetensors"),
    "full": ("lora", "lora_no_adapter_weights"),
    "hunyuan": ("lora", "lora_model_mismatch"),
    "wide": ("lora", "lora_model_mismatch"),
    "scale-only": ("lora_scale", "lora_scale_without_lora"),
    "outside": ("lora", "lora_not_allowed"),
}


def test_intake_stages_usable_adapters_and_rejects_the_others_by_row(tmp_path, loras):
    manifest = write_manifest(loras, INTAKE_ROWS)
    catalog = ModelCatalog.from_config()
    read = read_manifest(str(manifest), RunDefaults(), catalog, ManifestLimits())
    checked = check_loras(read, catalog, tmp_path / "store")
    ids = {row.row: row.id for row in read.rows}
    rejected = {ids[r.row]: (r.column, r.rule) for r in checked.rejections}
    assert rejected == INTAKE_REJECTIONS
    messages = {ids[r.row]: (r.message, r.fix) for r in checked.rejections}
    assert "transformer_blocks.0.attn.to_q" in messages["hunyuan"][0] and "tiny-wan" in messages["hunyuan"][0]
    assert "32x32" in messages["wide"][0] and "5120" in messages["wide"][0]
    assert all(fix for _, fix in messages.values())
    assert "LoRA files may only come from the manifest's folder" in messages["outside"][0]
    assert "/etc" not in messages["outside"][0].split("may only come from")[-1]  # the allowed places, not others

    rows = {row.id: row for row in checked.rows}
    style, other = sha256(loras / "loras" / "style.safetensors"), sha256(loras / "loras" / "other.safetensors")
    assert {k: (r.lora_sha256, r.lora_scale) for k, r in rows.items()} == {
        "style": (style, 1.0),
        "half": (style, 0.5),
        "copy": (style, 1.0),
        "other": (other, 1.0),
        "plain": (None, None),
    }
    assert rows["copy"].lora == "loras/style-copy.safetensors"  # recorded as written
    staged = {p.name for p in (tmp_path / "store").rglob("*") if p.is_file()}
    assert {style, other} <= staged  # (adapters that do not fit tiny-wan may be staged: the store is by content)
    assert not {sha256(loras / "loras" / name) for name in ("notes.safetensors", "full.safetensors")} & staged
    assert all(not name.startswith(".") for name in staged)  # no temporary file left behind

    # One job per adapter and scale; the same file under two names is one adapter.
    plan = plan_run(checked.rows, checked.rejections, checked.total_rows, catalog, gpus=1, device="cpu")
    by_bucket: dict[tuple, set] = {}
    for job in plan.jobs:
        adapter = (job.bucket.lora_sha256, job.bucket.lora_scale)
        by_bucket.setdefault(adapter, set()).update(s.row_id for s in job.samples)
    assert by_bucket == {
        (style, 1.0): {"style", "copy"},
        (style, 0.5): {"half"},
        (other, 1.0): {"other"},
        (None, None): {"plain"},
    }
    ids_of = {s.row_id: s.sample_id for job in plan.jobs for s in job.samples}
    assert len({ids_of["style"], ids_of["half"], ids_of["other"], ids_of["plain"]}) == 4  # same prompt and seed


def test_a_lora_on_s3_is_fetched_into_the_local_store(tmp_path, loras, s3_bucket):
    import s3fs

    local = loras / "loras" / "style.safetensors"
    s3fs.S3FileSystem(skip_instance_cache=True).put(str(local), f"{s3_bucket}/loras/style.safetensors")
    text = (
        "id,prompt,lora\n"
        f"s3,a red fox,s3://{s3_bucket}/loras/style.safetensors\n"
        f"elsewhere,a red fox,s3://{s3_bucket}/private/style.safetensors\n"
    )
    catalog = ModelCatalog.from_config()
    read = parse_manifest_text(text, RunDefaults(), catalog, ManifestLimits())
    checked = check_loras(read, catalog, tmp_path / "store", roots=[f"s3://{s3_bucket}/loras/"])
    [row] = checked.rows
    assert (row.id, row.lora_sha256, row.lora_scale) == ("s3", sha256(local), 1.0)
    assert staged_path(tmp_path / "store", sha256(local)).read_bytes() == local.read_bytes()
    assert [(r.column, r.rule) for r in checked.rejections] == [("lora", "lora_not_allowed")]


def test_plan_checks_adapters_as_run_does(loras):
    manifest = write_manifest(loras, INTAKE_ROWS)
    done = reelbatch("plan", str(manifest), "--gpus", "1", "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    rules = {r["rule"] for r in report["rejected"]}
    assert rules == {rule for _, rule in INTAKE_REJECTIONS.values()}
    assert report["accepted"] == 5
    style, other = sha256(loras / "loras" / "style.safetensors"), sha256(loras / "loras" / "other.safetensors")
    adapters = sorted(((b["lora_sha256"] or ""), b["lora_scale"] or 0) for b in report["buckets"])
    assert adapters == sorted([("", 0), (style, 1.0), (style, 0.5), (other, 1.0)])


def test_an_adapter_that_fails_in_the_rank_fails_its_samples_not_the_rank(tmp_path, tiny_wan):
    """An adapter that passed intake (another key layout, so not checked there) but that diffusers cannot load."""
    from reelbatch.engine.rank import run_job

    bad = save_tensors(
        tmp_path / "bad.safetensors",
        {"transformer.blocks.0.attn1.to_q.lora_A.weight": (4, 7),
         "transformer.blocks.0.attn1.to_q.lora_B.weight": (32, 4)},
    )  # fmt: skip
    store = tmp_path / "store"
    digest = stage(store, bad)
    row = ManifestRow(
        row=2, prompt=PROMPT, model="tiny-wan", height=32, width=32, num_frames=5, num_inference_steps=4,
        guidance_scale=4.0, seed=3, num_videos=2, lora="bad.safetensors", lora_scale=1.0, lora_sha256=digest,
    )  # fmt: skip
    samples = expand_row(row)
    spec = job_spec(tmp_path, tiny_wan, tiny_bucket(lora_sha256=digest, lora_scale=1.0), store, samples)
    assert run_job(spec) == 0
    results = read_results(spec.results_path)
    assert [r.sample_id for r in results] == [s.sample_id for s in samples]
    assert {r.status for r in results} == {"failed"}
    assert all(r.error and r.error.startswith("lora: ") and "size mismatch" in r.error.lower() for r in results)


def test_samples_failed_by_their_adapter_fail_the_job_as_bad_input_never_retried():
    from types import SimpleNamespace

    from reelbatch.infra.failures import RetryPolicy
    from reelbatch.tasks.execute import _failure_of

    clean_exit = SimpleNamespace(failure=None)
    by_adapter = _failure_of(clean_exit, {"a": "lora: RuntimeError: size mismatch", "b": "lora: RuntimeError: x"})
    assert by_adapter.kind == "bad_input" and "LoRA adapter could not be applied" in by_adapter.message
    assert not RetryPolicy.from_dict(None).decide(by_adapter, 1).retry
    assert _failure_of(clean_exit, {"a": "lora: x", "b": "decode: boom"}).kind == "unknown"


def test_a_few_step_variant_plans_without_cfg_parallel_and_costs_its_steps():
    catalog = ModelCatalog.from_config()
    manifest = "model,prompt,height,width,num_frames\n" + "".join(
        f"{model},a cat,480,832,81\n" for model in ("wan2.1-t2v-14b", "wan2.1-t2v-14b-4step")
    )
    read = parse_manifest_text(manifest, RunDefaults(), catalog, ManifestLimits())
    base, distilled = read.rows
    assert (base.num_inference_steps, base.guidance_scale) == (50, 5.0)
    assert (distilled.num_inference_steps, distilled.guidance_scale) == (4, 1.0)
    buckets = {}
    for row in (base, distilled):
        buckets[row.model] = BucketKey(**{name: getattr(row, name) for name in BucketKey.model_fields})
    family, fast = FAMILIES["wan2.1-t2v-14b"], FAMILIES["wan2.1-t2v-14b-4step"]
    slow_choice = chooser.choose_plan(buckets[base.model], family, 2, device="cuda", objective="latency")
    fast_choice = chooser.choose_plan(buckets[distilled.model], fast, 2, device="cuda", objective="latency")
    assert slow_choice.plan is not None and slow_choice.plan.cfg == 2
    assert fast_choice.plan is not None and fast_choice.plan.cfg == 1
    assert "cfg_without_guidance" in {r.rule for r in fast_choice.refused if r.plan.cfg == 2}
    ratio = DEFAULT_COST_MODEL.single_gpu_seconds(buckets[distilled.model], fast) / (
        DEFAULT_COST_MODEL.single_gpu_seconds(buckets[base.model], family)
    )
    assert ratio == pytest.approx((4 * 1) / (50 * 2))  # 4 steps of one pass against 50 steps of two


@pytest.mark.slow
@pytest.mark.torchrun
@pytest.mark.usefixtures("prefect_api")
def test_a_lora_row_runs_end_to_end_through_the_cli(tmp_path, tiny_wan):
    folder = tmp_path / "manifests"
    (folder / "loras").mkdir(parents=True)
    lora = make_lora(tiny_wan, folder / "loras" / "style.safetensors", seed=0)
    # Original Wan keys (not diffusers' layout, so intake cannot check them) with factors of another width.
    save_tensors(
        folder / "loras" / "broken.safetensors",
        {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": (4, 7),
         "diffusion_model.blocks.0.self_attn.q.lora_up.weight": (32, 4)},
    )  # fmt: skip
    manifest = folder / "prompts.csv"
    manifest.write_text(
        "id,prompt,lora,lora_scale,seed\n"
        "plain,a cat walks on a sunny street,,,5\n"
        "styled,a cat walks on a sunny street,loras/style.safetensors,0.8,5\n"
        "broken,a cat walks on a sunny street,loras/broken.safetensors,,5\n"
    )
    db_file = tmp_path / "state.db"
    done = subprocess.run(
        # A CFG rank pair per job: the adapter is fused on both ranks, and both skip the broken one's job together.
        [sys.executable, "-m", "reelbatch.cli", "run", str(manifest), "--gpus", "2", "--plan", "dp=1,cfg=2",
         "--out", "dataset", "--db", f"sqlite:///{db_file}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]  # the broken adapter's video failed, the others were made
    assert "Traceback" not in output
    db = sqlite3.connect(db_file)
    db.row_factory = sqlite3.Row
    samples = {s["row_id"]: s for s in db.execute("select * from samples")}
    assert {k: s["status"] for k, s in samples.items()} == {"plain": "done", "styled": "done", "broken": "failed"}
    broken = samples["broken"]
    assert "[bad_input]" in broken["error"] and "lora: " in broken["error"] and "size mismatch" in broken["error"]
    [attempts] = db.execute("select count(*) from job_attempts where job_id = ?", (broken["job_id"],)).fetchone()
    assert attempts == 1  # the same adapter would fail again: not retried
    digest = sha256(lora)
    assert (samples["styled"]["lora"], samples["styled"]["lora_sha256"], samples["styled"]["lora_scale"]) == (
        "loras/style.safetensors",
        digest,
        0.8,
    )
    assert (samples["plain"]["lora"], samples["plain"]["lora_sha256"], samples["plain"]["lora_scale"]) == (None,) * 3
    jobs = {j["lora_sha256"]: j for j in db.execute("select * from jobs")}
    assert set(jobs) == {None, digest, broken["lora_sha256"]} and jobs[digest]["lora_scale"] == 0.8
    assert {j["cfg"] for j in jobs.values()} == {2}
    sidecar = json.loads(Path(samples["styled"]["output_path"]).with_suffix(".json").read_text())
    assert (sidecar["lora"], sidecar["lora_sha256"], sidecar["lora_scale"]) == ("loras/style.safetensors", digest, 0.8)
    metadata = {m["row_id"]: m for m in csv.DictReader((tmp_path / "dataset" / "metadata.csv").open())}
    assert metadata["styled"]["lora_sha256"] == digest and metadata["plain"]["lora"] == ""
    [run_id] = [r["id"] for r in db.execute("select id from runs")]
    status = reelbatch("status", run_id, "--db", f"sqlite:///{db_file}")
    assert f"tiny-wan + LoRA {digest[:8]} x0.8" in status.stdout, status.stdout  # a bucket per adapter and scale
    plain, styled = (read_mp4(samples[k]["output_path"]).astype(int) for k in ("plain", "styled"))
    assert np.abs(plain - styled).max() > 10  # same prompt and seed: the adapter made the difference
