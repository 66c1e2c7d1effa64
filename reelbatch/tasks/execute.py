"""Run one job to its end: launch, collect, and on failure retry as the failure's class says.

Each attempt runs only the samples still missing, in a fresh folder, and is recorded in ``job_attempts`` with its
plan and outcome. An out-of-memory failure retries with a lower-memory plan: ``sequence_batch`` on (the two
guidance passes one after another), which turns CFG parallel off (its ranks become data parallel), one sample
per forward. The job row ends with the plan that last ran.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reelbatch import progress
from reelbatch.contract import (
    LORA_ERROR_PREFIX,
    JobSpec,
    attempt_folder,
    folder_fields,
    new_attempt_folder,
    rank_log_path,
    spec_path,
    write_job_spec,
)
from reelbatch.defaults import CLAIM_LEASE_S
from reelbatch.engine.inputs import staged_path
from reelbatch.gpus import visible_gpus
from reelbatch.infra import shutdown
from reelbatch.infra.db import Database
from reelbatch.infra.devices import DeviceGroup, local_pool
from reelbatch.infra.failures import Failure, RetryDecision, RetryPolicy
from reelbatch.infra.launcher import LaunchStopped
from reelbatch.infra.prefect_config import holding_gpus
from reelbatch.models.catalog import ModelCatalog, UnknownModel, family_from_folder
from reelbatch.planning import validate_plan
from reelbatch.schemas import ParallelPlan
from reelbatch.tasks.claiming import JobClaims, poll_interval
from reelbatch.tasks.collect import collect_attempt
from reelbatch.tasks.dispatch import JobOutcome, run_job
from reelbatch.tasks.step import step


@dataclass
class JobResult:
    job_id: str
    status: str  # done | failed
    attempts: int
    done: int  # videos this job made
    failed: int
    failure_kind: str | None = None
    reused: int = 0  # videos another run made (before this job, or while it waited for them)

    @property
    def over(self) -> int:
        """Videos that need nothing more from this job: made, reused or failed."""
        return self.done + self.reused + self.failed


def lower_memory_variant(spec: JobSpec) -> JobSpec | None:
    """The same job with less memory per rank, or None when it already runs the leanest way reelbatch knows.

    First step: guidance passes one after another (so no CFG parallel: its ranks become data parallel), one
    sample per forward, VAE decode in tiles. Next step: the data-parallel ranks become Ulysses ranks, so each
    holds a slice of the sequence, if the family's rules allow that degree.
    """
    b = spec.bucket
    if not (b.sequence_batch and spec.plan.cfg == 1 and spec.micro_batch == 1 and spec.vae_tiling):
        plan = ParallelPlan(dp=spec.plan.dp * spec.plan.cfg, cfg=1, ulysses=spec.plan.ulysses, ring=spec.plan.ring)
        lean = b.model_copy(update={"sequence_batch": True})
        return spec.model_copy(update={"bucket": lean, "plan": plan, "micro_batch": 1, "vae_tiling": True})
    if spec.plan.dp == 1:
        return None
    plan = ParallelPlan(dp=1, cfg=1, ulysses=spec.plan.ulysses * spec.plan.dp, ring=spec.plan.ring)
    family = family_from_folder(b.model, Path(spec.model_path))
    device = "cuda" if visible_gpus() else "cpu"
    if not validate_plan(b, family, plan, world_size=plan.world_size, backend=spec.backend, device=device).ok:
        return None
    return spec.model_copy(update={"plan": plan})


def narrowed(spec: JobSpec, sample_ids: Sequence[str]) -> JobSpec:
    """The job narrowed to these samples, in a fresh folder (a stuck rank may still write the old one)."""
    keep = set(sample_ids)
    samples = [s for s in spec.samples if s.sample_id in keep]
    folder = new_attempt_folder(attempt_folder(spec).parent)
    spec = spec.model_copy(
        update={"samples": samples, "padded_slots": -len(samples) % spec.plan.dp, **folder_fields(folder)}
    )
    write_job_spec(spec)
    return spec


def next_attempt(spec: JobSpec, remaining: list[str], lower_memory: bool) -> JobSpec | None:
    """The job narrowed to its remaining samples, with a lower-memory plan if asked (None: there is none)."""
    if lower_memory:
        leaner = lower_memory_variant(spec)
        if leaner is None:
            return None
        spec = leaner
    return narrowed(spec, remaining)


def _failure_of(outcome: JobOutcome, problems: dict[str, str]) -> Failure:
    if outcome.failure is not None:
        return outcome.failure
    # The ranks exited cleanly but some output is unusable (a corrupt or missing mp4).
    detail = "; ".join(sorted(set(problems.values()))) or "some samples were not reported"
    if problems and all(problem.startswith(LORA_ERROR_PREFIX) for problem in problems.values()):
        # The job's LoRA adapter could not be applied: another attempt would fail the same way.
        return Failure(kind="bad_input", rank=None, message=f"the LoRA adapter could not be applied: {detail}", tail=[])
    return Failure(kind="unknown", rank=None, message=f"the job ended without usable output: {detail}", tail=[])


def ensure_job_files(spec: JobSpec) -> None:
    """On a Dask worker of another machine the job's folder and model may not exist yet: make them.

    The spec is the ranks' only input, so it is written where they will read it; a built-in tiny model is built
    from code; a model folder given by --model-path must already be there (shared storage or the same image).
    """
    if not spec_path(spec).exists():
        write_job_spec(spec)
    staged = {digest for s in spec.samples for digest in (s.image_sha256, s.last_image_sha256)}
    missing = sorted(
        digest
        for digest in {*staged, spec.bucket.lora_sha256}  # the LoRA adapter is staged next to the images
        if digest and not staged_path(spec.images_dir, digest).exists()
    )
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} input file(s) of job {spec.job_id} are not staged on {socket.gethostname()} "
            f"(e.g. {staged_path(spec.images_dir, missing[0])}): give every worker the orchestrator's work folder "
            "on shared storage (REELBATCH_WORK_DIR)"
        )
    if not Path(spec.model_path).exists():
        try:
            found = ModelCatalog.from_config().local_path(spec.bucket.model)
        except UnknownModel as exc:
            raise FileNotFoundError(
                f"model folder {spec.model_path} for {spec.bucket.model!r} is missing on {socket.gethostname()}: "
                "put models on storage every worker mounts at the same path"
            ) from exc
        if Path(found) != Path(spec.model_path):
            raise FileNotFoundError(
                f"model folder {spec.model_path} is missing on {socket.gethostname()} (it is at {found} here): "
                "give every worker the same model cache (XDG_CACHE_HOME), or models on a shared mount via --model-path"
            )


def _devices_for_attempt(
    devices: DeviceGroup | None, ranks_per_node: int | None, width: int, priority: float
) -> contextlib.AbstractContextManager[DeviceGroup]:
    if devices is not None:
        return contextlib.nullcontext(devices)
    # On a Dask worker with fewer GPUs than the run's --gpus-per-node, the worker's own GPUs are the pool.
    ranks = min(ranks_per_node or width, visible_gpus() or ranks_per_node or width)
    return local_pool(ranks).group(width, priority)


def execute_job(
    spec: JobSpec,
    db: Database,
    output: str,
    timeout_s: float | None,
    policy: RetryPolicy,
    ranks_per_node: int | None = None,
    priority: float = 0.0,
    devices: DeviceGroup | None = None,
    claim_lease_s: float = CLAIM_LEASE_S,
    force: bool = False,
) -> JobResult:
    """``timeout_s``: the wall-clock limit per attempt; None takes the planner's estimate with a margin.

    ``devices``: the GPUs (CPU rank slots) the flow's scheduler gave this job, for all its attempts. Without them
    (a task on a Dask worker) each attempt waits for a group of free devices of this machine as wide as the job
    (``infra.devices``; ``ranks_per_node`` is what the run was planned for, ``priority`` orders waiting jobs,
    lower first), and gives it back before a retry's back-off.

    One video, one maker (``tasks.claiming``): each attempt makes only the samples this job claimed, with a lease
    of ``claim_lease_s`` renewed while its ranks run. Samples another run made are recorded as reused; those
    another run is making are waited for, then reused, or made here once their claim is let go or its lease ran out.
    """
    timeout_s = timeout_s or spec.timeout_s
    ensure_job_files(spec)
    # A task Dask re-runs (its worker was lost) continues the count instead of colliding with recorded attempts.
    attempt = 1 + max((a["attempt"] for a in db.attempts(spec.job_id)), default=0)
    claims = JobClaims(db, output, spec, claim_lease_s, force=force)
    pending = [sample.sample_id for sample in spec.samples]  # neither made nor reused yet, in job order
    job, launched, replanned = spec, 0, False  # job: every sample, with the plan the next attempt runs
    generated = reused = clean_launches = 0
    outcome: JobOutcome | None = None
    failure: Failure | None = None
    while True:
        settled = claims.settle(pending)
        reused += len(settled.reused)
        generated += len(settled.done_here)
        finished = set(settled.finished)
        pending = [sample_id for sample_id in pending if sample_id not in finished]
        if not pending:
            break
        if not settled.held:
            claims.log_waiting(settled)
            if shutdown.stopping.wait(poll_interval(claim_lease_s)):
                raise LaunchStopped("stopping while waiting for videos another run is making")
            continue
        # The prepared folder serves a first attempt that makes the whole job; any other gets a fresh one.
        held_all = launched == 0 and settled.held == [s.sample_id for s in job.samples]
        run = job if held_all else narrowed(job, settled.held)
        if replanned:  # the job row records the plan that runs now
            db.add_job(run.run_id, run, backend=run.backend, log_path=str(rank_log_path(run)))
            replanned = False
        try:
            with claims.heartbeat(len(settled.held)):
                try:
                    with (
                        _devices_for_attempt(devices, ranks_per_node, run.plan.world_size, priority) as group,
                        holding_gpus(group, run.plan.world_size),  # other runs on this machine, seen in the Prefect UI
                    ):
                        outcome = run_job(run, db, timeout_s, attempt, group)
                except LaunchStopped:
                    collect_attempt(run, db, output)  # the videos the stopped ranks finished are kept, not remade
                    raise
                collected = collect_attempt(run, db, output)
        finally:
            claims.release(settled.held)  # made ones are in the database now; the rest are free for any run
        launched += 1
        generated += len(collected.done)
        made = set(collected.done)
        pending = [sample_id for sample_id in pending if sample_id not in made]
        failure = None if not collected.remaining else _failure_of(outcome, collected.problems)
        # The policy counts failed launches: one that made its videos while others waited on another run is not one.
        decision = policy.decide(failure, attempt - clean_launches) if failure else None
        db.record_attempt(run, attempt, **_attempt_fields(outcome, group, run, failure, decision))
        attempt += 1  # also after a success: a video another run let go unmade is made by a later attempt
        if failure is None:
            clean_launches += 1
            continue  # samples another run was making may be left: wait for them
        assert decision is not None  # decided for every failure
        leaner = lower_memory_variant(job) if decision.retry and decision.lower_memory else job
        if not decision.retry or leaner is None:
            break  # given up: what is not made yet fails with this job (a later run reuses what others made)
        if shutdown.stopping.wait(decision.delay_s):
            raise LaunchStopped(f"stopping during the back-off before attempt {attempt} of job {spec.job_id}")
        replanned = leaner.plan != job.plan or leaner.bucket != job.bucket
        job, failure = leaner, None
    status = "failed" if failure else "done"
    error = None
    if failure:
        error = f"[{failure.kind}] after {attempt - 1} attempt(s): {failure.message}\n" + "\n".join(failure.tail[-8:])
    if launched == 0:  # every video was made by another run: no ranks told the progress sink this job is over
        progress.sink().job_finished(spec.job_id, status)
    db.finish_job(
        spec.job_id,
        status=status,
        returncode=outcome.returncode if outcome else None,
        seconds=outcome.seconds if outcome else 0.0,
        error=error,
    )
    return JobResult(
        spec.job_id, status, launched, generated, len(pending), failure.kind if failure else None, reused=reused
    )


def _attempt_fields(
    outcome: JobOutcome, group: DeviceGroup, run: JobSpec, failure: Failure | None, decision: RetryDecision | None
) -> dict[str, Any]:
    fields: dict[str, Any] = dict(
        launch_id=outcome.launch_id,
        returncode=outcome.returncode,
        timed_out=outcome.timed_out,
        seconds=outcome.seconds,
        host=group.host,
        devices=group.describe(),
        world_size=run.plan.world_size,
        started_at=outcome.started_at,
    )
    if failure:
        fields.update(
            failure_kind=failure.kind,
            failed_rank=failure.rank,
            message=failure.message,
            tail="\n".join(failure.tail),
            retry_delay_s=decision.delay_s if decision and decision.retry else None,
        )
    return fields


execute_job_task = step("run-job", execute_job)
