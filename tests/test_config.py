"""RunConfig: the one configuration the CLI builds, the flows take, the database keeps and `resume` reloads."""

import pytest
from pydantic import ValidationError

from reelbatch import defaults
from reelbatch.config import RESUMABLE_FIELDS, RunConfig
from reelbatch.planning.packing_options import Packing
from reelbatch.schemas import RunDefaults


def test_defaults_come_from_the_defaults_module():
    config = RunConfig()
    assert (config.output, config.db_url) == (defaults.DEFAULT_OUTPUT, defaults.DEFAULT_DB_URL)
    assert config.max_samples_per_job == defaults.MAX_SAMPLES_PER_JOB
    assert config.gpu_memory_gib == defaults.GPU_MEMORY_GIB and config.objective == defaults.OBJECTIVE
    assert config.packing == Packing() and config.defaults == RunDefaults()


def test_every_field_is_described_for_the_run_form():
    undescribed = [name for name, field in RunConfig.model_fields.items() if not field.description]
    assert undescribed == []


def test_a_misspelt_or_invalid_setting_is_refused():
    with pytest.raises(ValidationError, match="gpu_per_node"):
        RunConfig(gpu_per_node=8)
    with pytest.raises(ValidationError, match="objective"):
        RunConfig(objective="fastest")
    with pytest.raises(ValidationError, match="gpus_per_node"):
        RunConfig(gpus_per_node=0)


def test_resume_rebuilds_the_run_it_recorded():
    config = RunConfig(
        output="s3://bucket/videos",
        db_url="postgresql+psycopg://db/x",
        gpus_per_node=8,
        defaults=RunDefaults(model="tiny-hunyuan", num_frames=9, guidance_scale=3.0),
        packing=Packing(job_minutes=12, padding="fill"),
        strict=True,
        force=True,
        model_paths=["mine=/models/mine"],
        max_samples_per_job=7,
        job_timeout_s=600,
        gpu_memory_gib=40,
        objective="latency",
        retry_policy={"rank_crash": {"max_attempts": 5}},
        limits={"max_rows": 10},
        dask_address="tcp://scheduler:8786",
    )
    stored = config.resumable()
    assert set(stored) == set(RESUMABLE_FIELDS)  # where it wrote and to which database are kept apart
    again = RunConfig.resumed(stored, output=config.output, db_url=config.db_url, gpus_per_node=8)
    kept = set(RESUMABLE_FIELDS) | {"output", "db_url", "gpus_per_node"}
    assert again.model_dump(include=kept) == config.model_dump(include=kept)
    # Not part of a resume: regenerating everything again, or the cluster it happened to run on.
    assert (again.force, again.dask_address) == (False, None)


def test_runs_recorded_by_older_versions_resume_as_they_ran():
    old = {"defaults": RunDefaults().model_dump(mode="json"), "strict": False, "image_roots": ["/frames"]}
    config = RunConfig.resumed(old, output="out", db_url="sqlite:///x.db", gpus_per_node=2)
    assert config.packing.enabled is False  # packing did not exist yet: those runs were cut unpacked
    assert config.max_samples_per_job == defaults.MAX_SAMPLES_PER_JOB


def test_the_flows_take_it_as_a_typed_described_parameter():
    from prefect.utilities.callables import parameter_schema

    from reelbatch.flows.generate import generate_dataset
    from reelbatch.flows.nightly import nightly_dataset

    for flow in (generate_dataset, nightly_dataset):
        schema = parameter_schema(flow).model_dump()
        assert schema["properties"]["config"]["$ref"] == "#/definitions/RunConfig"
        assert schema["properties"]["config"]["description"]
        fields = schema["definitions"]["RunConfig"]["properties"]
        assert set(fields) == set(RunConfig.model_fields)
        assert all(field.get("description") for field in fields.values())


def test_a_run_keeps_what_it_leaves_out_from_its_deployment():
    """Prefect replaces a deployment's parameter whole when a run gives its own: the fields the run does not give
    come from the deployment's config (its database above all), the ones it gives win."""
    deployment = {"output": "s3://bucket/videos", "db_secret": "reelbatch-database-url", "gpus_per_node": 8}
    run = RunConfig.model_validate({"gpus_per_node": 2, "strict": True})
    merged = run.over(deployment)
    assert (merged.db_secret, merged.output) == ("reelbatch-database-url", "s3://bucket/videos")
    assert (merged.gpus_per_node, merged.strict) == (2, True)
    assert RunConfig(output="here").over({}) == RunConfig(output="here")


def test_values_the_flat_parameters_took_still_mean_the_same():
    assert RunConfig.model_validate({"model_paths": None}).model_paths == []
    assert RunConfig.model_validate({"job_timeout_s": 0}).job_timeout_s is None  # 0 was "the estimate", as empty
    with pytest.raises(ValidationError, match="job_timeout_s"):
        RunConfig(job_timeout_s=-5)
    old = {"defaults": RunDefaults().model_dump(mode="json"), "job_timeout_s": 0, "model_paths": None}
    assert RunConfig.resumed(old, output="out", db_url="sqlite:///x.db", gpus_per_node=2).job_timeout_s is None
