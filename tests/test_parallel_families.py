"""Parallel truth for every adapter: data parallel, CFG parallel and (where the registry allows it) Ulysses give
the single-rank video, for every pipeline class and layout, images included.

One real torchrun launch of 2 gloo ranks runs every (model, plan) job one after another through the rank entry
(``python -m reelbatch.engine.rank job.json job.json ...``: one process group, imports paid once); the single-rank
references run through the same entry in this process. tiny-wan and tiny-hunyuan are covered by
test_parallel_jobs.py and test_sequence_parallel.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reelbatch.contract import EVENT_PREFIX, RANK_ENTRY, JobSpec, read_results
from reelbatch.engine.rank import run_job
from reelbatch.identity import expand_row
from reelbatch.infra.images import ImagePolicy, ImageStager
from reelbatch.infra.launcher import launch
from reelbatch.models.registry import FAMILIES
from reelbatch.models.tiny_facts import TINY_FAMILIES
from reelbatch.planning.buckets import bucket_key
from reelbatch.schemas import ManifestRow, ParallelPlan

pytestmark = pytest.mark.torchrun

MODELS = [name for name in TINY_FAMILIES if name not in ("tiny-wan", "tiny-hunyuan")]
PLANS = {"dp2": ParallelPlan(dp=2), "cfg2": ParallelPlan(cfg=2), "ulysses2": ParallelPlan(ulysses=2)}
# Two samples: dp=2 gives each rank one, CFG and Ulysses groups take both (padding is tested in test_parallel_jobs).
PROMPTS = ["a cat walks on a sunny street", "waves crash on a rocky shore"]


def plans_for(model: str) -> list[str]:
    return [name for name, plan in PLANS.items() if plan.ulysses == 1 or FAMILIES[model].native.ulysses]


def write_picture(path: Path, seed: int, size=(40, 24)) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").save(path)


def manifest_rows(model: str, stager: ImageStager, folder: Path) -> list[ManifestRow]:
    family = FAMILIES[model]
    height, width = TINY_FAMILIES[model]["test_size"]
    rows = []
    for i, prompt in enumerate(PROMPTS):
        images = {}
        if family.image_input != "none":
            write_picture(folder / f"first{i}.png", i)
            images = {"image": f"first{i}.png", "image_sha256": stager.stage(f"first{i}.png").sha256}
            if family.last_image != "none":
                write_picture(folder / f"last{i}.png", 100 + i, size=(24, 40))
                images |= {"last_image": f"last{i}.png", "last_image_sha256": stager.stage(f"last{i}.png").sha256}
        rows.append(
            ManifestRow(
                row=i + 2,
                prompt=prompt,
                negative_prompt="blurry",
                model=model,
                height=height,
                width=width,
                num_frames=5,
                num_inference_steps=4,
                guidance_scale=4.0,
                seed=300 + i,
                embedded_guidance_scale=family.defaults.embedded_guidance_scale,
                guidance_scale_2=2.0 if family.experts == 2 else None,
                **images,
            )
        )
    return rows


def job_spec(folder: Path, rows: list[ManifestRow], plan: ParallelPlan, model_path: Path, images: Path) -> JobSpec:
    samples = [s for r in rows for s in expand_row(r)]
    spec = JobSpec(
        job_id=folder.name,
        bucket=bucket_key(rows[0]),
        model_path=str(model_path),
        family=FAMILIES[rows[0].model].kind,
        plan=plan,
        samples=samples,
        padded_slots=-len(samples) % plan.dp,
        output_dir=str(folder / "staging"),
        results_path=str(folder / "results.jsonl"),
        keep_frames=True,
        images_dir=str(images),
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.json").write_text(spec.model_dump_json())
    return spec


def frames_of(spec: JobSpec) -> dict[str, np.ndarray]:
    out = Path(spec.output_dir)
    return {s.sample_id: np.load(out / Path(s.output_key).with_suffix(".frames.npy")) for s in spec.samples}


@pytest.fixture(scope="module")
def jobs(tiny_models, tmp_path_factory):
    """Every (model, plan) job run in one 2-rank launch, and every model's single-rank reference."""
    root = tmp_path_factory.mktemp("families")
    inputs = root / "inputs"
    inputs.mkdir()
    stager = ImageStager(ImagePolicy.for_manifest(str(inputs / "manifest.csv")), root / "images")
    references, parallel = {}, {}
    for model in MODELS:
        rows = manifest_rows(model, stager, inputs)
        references[model] = job_spec(root / model / "single", rows, ParallelPlan(), tiny_models[model], root / "images")
        for name in plans_for(model):
            parallel[model, name] = job_spec(
                root / model / name, rows, PLANS[name], tiny_models[model], root / "images"
            )
    for spec in references.values():
        assert run_job(spec) == 0
    files = [str(Path(spec.results_path).parent / "job.json") for spec in parallel.values()]
    result = launch(RANK_ENTRY, files, nproc_per_node=2, log_path=root / "ranks.log", timeout_s=900)
    assert result.returncode == 0, "\n".join(result.tail)
    return references, parallel, root / "ranks.log"


@pytest.mark.parametrize("model,plan", [(m, p) for m in MODELS for p in plans_for(m)])
def test_a_parallel_plan_gives_the_single_rank_videos(jobs, model, plan):
    references, parallel, _ = jobs
    spec, reference = parallel[model, plan], references[model]
    got, want = frames_of(spec), frames_of(reference)
    assert got.keys() == want.keys() and len(got) == len(PROMPTS)
    for sample_id in want:
        np.testing.assert_allclose(got[sample_id], want[sample_id], atol=1e-5)
    results = read_results(spec.results_path)
    assert sorted(r.sample_id for r in results) == sorted(want) and {r.status for r in results} == {"done"}
    if plan == "dp2":
        assert {r.rank for r in results} == {0, 1}  # both data-parallel ranks wrote their own samples
    else:
        assert {r.rank for r in results} == {0}  # a CFG pair or a sequence group writes once


def test_ulysses_really_splits_every_experts_sequence(jobs):
    """Each rank's first attention of each transformer saw half of the 8 video tokens, in every Ulysses job."""
    _, parallel, log = jobs
    splits = [
        json.loads(line.partition(EVENT_PREFIX)[2])
        for line in log.read_text().splitlines()
        if EVENT_PREFIX in line and '"event": "sequence_split"' in line
    ]
    expected = sum(2 * FAMILIES[model].experts for model, plan in parallel if plan == "ulysses2")
    assert len(splits) == expected and {s["local_tokens"] for s in splits} == {4}


def test_the_registry_allows_ulysses_exactly_where_the_engine_runs_it():
    # SkyReels-V2's transformer has no context-parallel plan; token_replace keeps the first frame's tokens apart.
    without = {m for m in MODELS if not FAMILIES[m].native.ulysses}
    assert without == {"tiny-skyreels-v2", "tiny-skyreels-v2-i2v", "tiny-hunyuan-i2v"}
