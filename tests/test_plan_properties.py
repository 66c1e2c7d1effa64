"""Property: a plan the validator accepts really runs on the tiny models (torchrun on CPU); a refused one names a
rule and a fix. Examples are drawn deterministically and kept few: each accepted one is a real launch."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reelbatch.contract import RANK_ENTRY, JobSpec, read_results
from reelbatch.engine.rank import run_job
from reelbatch.identity import expand_row
from reelbatch.infra.launcher import launch
from reelbatch.models.catalog import ModelCatalog
from reelbatch.planning import validate_plan
from reelbatch.planning.buckets import bucket_key
from reelbatch.schemas import ManifestRow, ParallelPlan
from tests.hypothesis_budget import scaled

pytestmark = [pytest.mark.torchrun, pytest.mark.hypothesis]  # hypothesis: make test-nightly draws more
CATALOG = ModelCatalog.from_config()
PLANS_OF_TWO = [  # every plan of two ranks; ring is refused on CPU
    ParallelPlan(dp=2),
    ParallelPlan(cfg=2),
    ParallelPlan(ulysses=2),
    ParallelPlan(ring=2),
]


@st.composite
def rows(draw):
    return ManifestRow(
        row=2,
        prompt="a cat walks",
        model=draw(st.sampled_from(["tiny-wan", "tiny-hunyuan"])),
        height=draw(st.sampled_from([16, 32, 48])),
        width=draw(st.sampled_from([16, 32, 48])),
        num_frames=draw(st.sampled_from([1, 5, 9])),
        num_inference_steps=1,
        guidance_scale=draw(st.sampled_from([1.0, 5.0])),
        sequence_batch=draw(st.booleans()),
        seed=3,
    )


def _accepted_plan(row: ManifestRow, data) -> tuple[ParallelPlan, object]:
    """Checks every plan of one and two ranks; returns one accepted plan to launch (multi-rank when there is one)."""
    bucket = bucket_key(row)
    family = CATALOG.family(row.model)
    accepted = []
    for plan in [ParallelPlan(), *PLANS_OF_TWO]:
        check = validate_plan(bucket, family, plan, world_size=plan.world_size, backend="native", device="cpu")
        if check.ok:
            accepted.append(plan)
        else:
            assert all(p.rule and p.message and p.fix for p in check.problems)
    multi_rank = [plan for plan in accepted if plan.world_size > 1]
    return data.draw(st.sampled_from(multi_rank or accepted)), family  # the launches go to multi-rank plans


@pytest.mark.slow
def test_accepted_plans_run_and_refused_plans_say_why(tiny_models, tmp_path_factory):
    """Six drawn rows, each with an accepted plan; every one of them really runs. The two-rank ones run in one
    launch (the rank entry takes several jobs of one world size), the single-rank ones in this process."""
    specs: list[JobSpec] = []

    @settings(max_examples=scaled(6, most=24), deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(row=rows(), data=st.data())
    def draw_jobs(row, data):
        plan, family = _accepted_plan(row, data)
        folder = Path(tmp_path_factory.mktemp("plan"))
        samples = expand_row(row.model_copy(update={"num_videos": 2}))
        spec = JobSpec(
            job_id=f"property-{len(specs)}",
            bucket=bucket_key(row),
            model_path=str(tiny_models[row.model]),
            family=family.kind,
            plan=plan,
            samples=samples,
            padded_slots=-len(samples) % plan.dp,
            output_dir=str(folder / "staging"),
            results_path=str(folder / "results.jsonl"),
        )
        (folder / "job.json").write_text(spec.model_dump_json())
        specs.append(spec)

    draw_jobs()
    pairs = [spec for spec in specs if spec.plan.world_size == 2]
    assert pairs, "the drawn rows should give some two-rank plans"
    folder = Path(tmp_path_factory.mktemp("launch"))
    result = launch(
        RANK_ENTRY,
        [str(Path(s.results_path).parent / "job.json") for s in pairs],
        nproc_per_node=2,
        log_path=folder / "ranks.log",
        timeout_s=300,
    )
    assert result.returncode == 0, f"{[str(s.plan) for s in pairs]}: " + "\n".join(result.tail[-15:])
    for spec in specs:
        if spec.plan.world_size == 1:
            assert run_job(spec) == 0
        assert sorted(r.status for r in read_results(spec.results_path)) == ["done", "done"], (spec.plan, spec.bucket)
