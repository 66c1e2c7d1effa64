"""Sequence parallel (Ulysses) inside the ranks: real torchrun jobs on CPU (gloo) give the single-rank videos.

Shape 32x32x5: latent 2 x 2 x 2 after the (1, 2, 2) patch, i.e. 8 video tokens, which ulysses 2 divides; the tiny
models have 4 heads. Plans the engine cannot run here fail at rank start, before the process group.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reelbatch.contract import EVENT_PREFIX, RANK_ENTRY, JobSpec, read_results
from reelbatch.engine.checks import PlanNotRunnable, check_runnable, transformer_facts
from reelbatch.engine.parallel import _coordinates, _rank_of, mesh_layout
from reelbatch.engine.rank import run_job
from reelbatch.identity import expand_row
from reelbatch.infra.launcher import launch
from reelbatch.planning.buckets import bucket_key
from reelbatch.schemas import ManifestRow, ParallelPlan

PROMPTS = ["a cat walks on a sunny street", "waves crash on a rocky shore"]
FAMILY = {"tiny-wan": "wan", "tiny-hunyuan": "hunyuan"}


def rows(model: str, guidance: float = 5.0, height: int = 32, width: int = 32) -> list[ManifestRow]:
    return [
        ManifestRow(
            row=i + 2,
            prompt=p,
            negative_prompt="blurry, low quality" if i % 2 else "",
            model=model,
            height=height,
            width=width,
            num_frames=5,
            num_inference_steps=3,
            guidance_scale=guidance,
            seed=200 + i,
        )
        for i, p in enumerate(PROMPTS)
    ]


def make_spec(folder: Path, manifest_rows, plan: ParallelPlan, model_path: Path, **extra) -> JobSpec:
    samples = [s for r in manifest_rows for s in expand_row(r)]
    return JobSpec(
        job_id=folder.name,
        bucket=bucket_key(manifest_rows[0]),
        model_path=str(model_path),
        family=FAMILY[manifest_rows[0].model],
        plan=plan,
        samples=samples,
        padded_slots=-len(samples) % plan.dp,
        output_dir=str(folder / "staging"),
        results_path=str(folder / "results.jsonl"),
        keep_frames=True,
        **extra,
    )


def launch_job(spec: JobSpec, timeout_s: float = 300):
    folder = Path(spec.results_path).parent
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.json").write_text(spec.model_dump_json())
    return launch(
        RANK_ENTRY,
        [str(folder / "job.json")],
        nproc_per_node=spec.plan.world_size,
        log_path=folder / "ranks.log",
        timeout_s=timeout_s,
    )


def run_ok(spec: JobSpec, timeout_s: float = 300) -> JobSpec:
    result = launch_job(spec, timeout_s)
    assert result.returncode == 0, "\n".join(result.tail)
    return spec


def events(spec: JobSpec, name: str) -> list[dict]:
    """The rank events called ``name`` in the job's log."""
    found = []
    for line in (Path(spec.results_path).parent / "ranks.log").read_text().splitlines():
        _, sep, payload = line.partition(EVENT_PREFIX)
        if sep and f'"event": "{name}"' in payload:
            found.append(json.loads(payload))
    return found


def assert_sequence_split(spec: JobSpec, local_tokens: int) -> None:
    """Every rank's first context-parallel attention saw its share of the video tokens, not the whole sequence."""
    splits = events(spec, "sequence_split")
    assert sorted(e["rank"] for e in splits) == list(range(spec.plan.world_size)), splits
    assert {e["local_tokens"] for e in splits} == {local_tokens}, splits


def frames_of(spec: JobSpec) -> dict[str, np.ndarray]:
    out = Path(spec.output_dir)
    return {s.sample_id: np.load(out / Path(s.output_key).with_suffix(".frames.npy")) for s in spec.samples}


def assert_same_videos(parallel: JobSpec, reference: JobSpec) -> float:
    got, want = frames_of(parallel), frames_of(reference)
    assert got.keys() == want.keys()
    worst = 0.0
    for sample_id in want:
        np.testing.assert_allclose(got[sample_id], want[sample_id], atol=1e-5)
        worst = max(worst, float(np.abs(got[sample_id] - want[sample_id]).max()))
    results = read_results(parallel.results_path)
    assert len(results) == len(want) and {r.status for r in results} == {"done"}, [r.error for r in results]
    assert {r.rank for r in results} == {0}  # only the first rank of the sequence group (and CFG pair) writes
    assert len(list(Path(parallel.output_dir).rglob("*.mp4"))) == len(want)
    print(f"max abs diff vs 1 rank: {worst:.3g}")
    return worst


@pytest.fixture(scope="module")
def single_rank(tiny_models, tmp_path_factory):
    """Single-rank reference jobs, one per model, run once for the module."""
    cache: dict[str, JobSpec] = {}

    def get(model: str) -> JobSpec:
        if model not in cache:
            folder = tmp_path_factory.mktemp("reference") / model
            spec = make_spec(folder, rows(model), ParallelPlan(), tiny_models[model])
            assert run_job(spec) == 0  # the same rank code, in this process (no launch to pay for)
            cache[model] = spec
        return cache[model]

    return get


# --- real torchrun jobs ------------------------------------------------------------------------------------------


@pytest.mark.torchrun
def test_ulysses_2_wan_gives_the_single_rank_videos(tmp_path, tiny_models, single_rank):
    spec = run_ok(make_spec(tmp_path / "u2", rows("tiny-wan"), ParallelPlan(ulysses=2), tiny_models["tiny-wan"]))
    assert_same_videos(spec, single_rank("tiny-wan"))
    assert_sequence_split(spec, local_tokens=8 // 2)
    groups = {e["rank"]: e["group"] for e in events(spec, "sequence_parallel")}
    assert groups == {0: [0, 1], 1: [0, 1]}


@pytest.mark.torchrun
def test_ulysses_2_hunyuan_gives_the_single_rank_videos(tmp_path, tiny_models, single_rank):
    # Micro-batch 2: both prompts (text of different lengths, so different key masks) go through one forward.
    spec = make_spec(
        tmp_path / "u2", rows("tiny-hunyuan"), ParallelPlan(ulysses=2), tiny_models["tiny-hunyuan"], micro_batch=2
    )
    assert_same_videos(run_ok(spec), single_rank("tiny-hunyuan"))
    assert_sequence_split(spec, local_tokens=8 // 2)


@pytest.mark.slow
@pytest.mark.torchrun
def test_cfg_2_times_ulysses_2_on_4_ranks_gives_the_single_rank_videos(tmp_path, tiny_models, single_rank):
    spec = make_spec(tmp_path / "cfg2u2", rows("tiny-wan"), ParallelPlan(cfg=2, ulysses=2), tiny_models["tiny-wan"])
    assert_same_videos(run_ok(spec, timeout_s=600), single_rank("tiny-wan"))
    assert_sequence_split(spec, local_tokens=8 // 2)
    # Each CFG branch's pair of ranks is its own ulysses group.
    groups = {e["rank"]: e["group"] for e in events(spec, "sequence_parallel")}
    assert groups == {0: [0, 1], 1: [0, 1], 2: [2, 3], 3: [2, 3]}


@pytest.mark.torchrun
def test_ring_on_cpu_fails_at_rank_start_with_a_clear_message(tmp_path, tiny_models):
    spec = make_spec(tmp_path / "ring2", rows("tiny-wan"), ParallelPlan(ring=2), tiny_models["tiny-wan"])
    result = launch_job(spec, timeout_s=120)
    assert result.returncode != 0 and not result.timed_out
    log = (tmp_path / "ring2" / "ranks.log").read_text()
    assert "ring attention (ring=2) needs CUDA" in log
    assert '"event": "loading"' not in log  # refused before the process group and the weights
    assert not read_results(spec.results_path)


# --- rank-start checks, in process -----------------------------------------------------------------------------


ULYSSES_2 = ParallelPlan(ulysses=2)


def spec_for(tmp_path, tiny_models, model="tiny-wan", plan=ULYSSES_2, backend="native", **row) -> JobSpec:
    return make_spec(tmp_path / "job", rows(model, **row), plan, tiny_models[model], backend=backend)


@pytest.mark.parametrize("model", ["tiny-wan", "tiny-hunyuan"])
def test_token_count_comes_from_the_model_configs(tmp_path, tiny_models, model):
    facts = transformer_facts(spec_for(tmp_path, tiny_models, model, height=32, width=48))
    assert (facts.heads, facts.tokens) == (4, 2 * 2 * 3)


@pytest.mark.parametrize(
    "model, plan, row, message",
    [
        ("tiny-wan", ParallelPlan(ulysses=3), {"height": 48, "width": 48}, "must divide the model's 4 attention heads"),
        ("tiny-wan", ParallelPlan(ulysses=4), {"height": 48, "width": 48}, "gives 18 video tokens"),
        ("tiny-hunyuan", ParallelPlan(ring=2), {}, "needs CUDA"),
        ("tiny-wan", ParallelPlan(cfg=2), {"guidance": 1.0}, "cfg=2 needs classifier-free guidance"),
    ],
)
def test_plans_the_engine_cannot_run_are_refused(tmp_path, tiny_models, model, plan, row, message):
    with pytest.raises(PlanNotRunnable, match=message):
        check_runnable(spec_for(tmp_path, tiny_models, model, plan, **row), "cpu")


def test_hunyuan_ring_is_refused_even_on_cuda(tmp_path, tiny_models):
    with pytest.raises(PlanNotRunnable, match="supports ulysses only"):
        check_runnable(spec_for(tmp_path, tiny_models, "tiny-hunyuan", ParallelPlan(ring=2)), "cuda")


def test_runnable_plans_pass(tmp_path, tiny_models):
    for model in ("tiny-wan", "tiny-hunyuan"):
        for plan in (ParallelPlan(ulysses=2), ParallelPlan(ulysses=4), ParallelPlan(cfg=2, ulysses=2, dp=2)):
            check_runnable(spec_for(tmp_path, tiny_models, model, plan), "cpu")
    check_runnable(spec_for(tmp_path, tiny_models, "tiny-wan", ParallelPlan(ulysses=2, ring=2)), "cuda")


def test_xdit_on_cpu_is_refused_without_importing_xfuser(tmp_path, tiny_models):
    spec = spec_for(tmp_path, tiny_models, backend="xdit")
    with pytest.raises(RuntimeError, match="backend xdit needs CUDA: xfuser cannot be imported without a GPU"):
        check_runnable(spec, "cpu")
    assert "xfuser" not in sys.modules


def test_mesh_layout_is_the_documented_rank_order():
    plan = ParallelPlan(dp=2, cfg=2, ulysses=2, ring=3)
    layout = mesh_layout(plan)  # (dp, cfg, ring, ulysses)
    assert layout.shape == (2, 2, 3, 2)
    for d in range(2):
        for c in range(2):
            for u in range(2):
                for r in range(3):
                    rank = ((d * 2 + c) * 2 + u) * 3 + r
                    assert layout[d, c, r, u] == rank == _rank_of(d, c, u * 3 + r, plan)
                    assert _coordinates(rank, plan) == (d, c, u * 3 + r)
    assert torch.equal(layout.flatten().sort().values, torch.arange(plan.world_size, dtype=layout.dtype))
