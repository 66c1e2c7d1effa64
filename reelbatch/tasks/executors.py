"""Where a run's jobs run: one interface, one implementation per backend (this machine's devices, a Dask cluster).

The flow hands its jobs to ``executor.run`` as a ``JobFeed`` that the recorder fills while the executor runs (a job
arrives only once it is recorded) and gets their results back in the order they arrived; it does not know which
backend runs them. Each job runs as the ``run-job`` task (``tasks.execute.execute_job``) wherever the executor
places it.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prefect.futures import PrefectFuture, as_completed

from reelbatch import progress
from reelbatch.contract import JobSpec
from reelbatch.defaults import CLAIM_LEASE_S
from reelbatch.infra.dask_cluster import task_runner_for
from reelbatch.infra.db import Database
from reelbatch.infra.devices import DeviceGroup, DevicePool, local_pool
from reelbatch.infra.failures import RetryPolicy
from reelbatch.tasks.execute import JobResult, execute_job_task
from reelbatch.tasks.feed import Job, JobFeed

if TYPE_CHECKING:
    from prefect_dask import DaskTaskRunner


@dataclass(frozen=True)
class JobSettings:
    """What every job of a run is run with, whichever executor runs it."""

    db: Database  # the flow's; on a Dask worker each job's copy is that process's shared one (Database.shared)
    output: str
    timeout_s: float | None  # per attempt; None: the planner's estimate with a margin
    policy: RetryPolicy
    ranks_per_node: int  # what the run was planned for
    claim_lease_s: float = CLAIM_LEASE_S  # lease on each video a job is making (``tasks.claiming``)
    force: bool = False  # --force: videos made before the run started are made again, not reused

    def job_parameters(self, spec: JobSpec, priority: int) -> dict[str, Any]:
        """The ``run-job`` task's parameters for one job (``tasks.execute.execute_job``), wherever it runs."""
        return dict(
            spec=spec, db=self.db, output=self.output, timeout_s=self.timeout_s, policy=self.policy,
            ranks_per_node=self.ranks_per_node, priority=priority, claim_lease_s=self.claim_lease_s,
            force=self.force,
        )  # fmt: skip


class JobExecutor(ABC):
    """Runs (priority, spec) jobs, lower priority numbers first, each once it is in the feed; returns their results
    in the order they came (a plain sequence: jobs all recorded already)."""

    @abstractmethod
    def run(
        self,
        jobs: JobFeed | Sequence[Job],
        settings: JobSettings,
        on_job_done: Callable[[int], None] | None = None,
    ) -> list[JobResult]:
        """``on_job_done`` gets the number of videos over (done or failed) so far, where the executor reports it."""


class LocalExecutor(JobExecutor):
    """This machine's devices (GPUs, or CPU rank slots without CUDA): jobs side by side on disjoint device groups,
    each started on one of the flow's threads once its group is free."""

    def __init__(self, pool: DevicePool | None = None) -> None:
        self.pool = pool  # None: this process's pool, taken when the jobs start (``infra.devices.local_pool``)

    def run(
        self,
        jobs: JobFeed | Sequence[Job],
        settings: JobSettings,
        on_job_done: Callable[[int], None] | None = None,
    ) -> list[JobResult]:
        # Progress comes from the jobs' own events on this machine, so on_job_done is not needed here.
        def start(spec: JobSpec, priority: int, devices: DeviceGroup) -> PrefectFuture[JobResult]:
            return execute_job_task.submit(**settings.job_parameters(spec, priority), devices=devices)

        return execute_jobs(jobs, self.pool or local_pool(settings.ranks_per_node), start)


class DaskExecutor(JobExecutor):
    """A Dask cluster (an address, or a temporary local cluster): each job asks for its width of the workers'
    ``GPU`` resource and takes its own device group on the worker that runs it."""

    def __init__(self, runner: DaskTaskRunner) -> None:
        self.runner = runner

    def run(
        self,
        jobs: JobFeed | Sequence[Job],
        settings: JobSettings,
        on_job_done: Callable[[int], None] | None = None,
    ) -> list[JobResult]:
        def submit(spec: JobSpec, priority: int) -> PrefectFuture[JobResult]:
            return self.runner.submit(execute_job_task, parameters=settings.job_parameters(spec, priority))

        return execute_jobs_on_dask(jobs, self.runner, submit, on_job_done=on_job_done)


def executor_for(dask_address: str | None, dask_local_workers: int, gpus_per_node: int) -> JobExecutor:
    """The executor a run's options ask for: a Dask cluster when one is given, else this machine's devices."""
    runner = task_runner_for(dask_address, dask_local_workers, gpus_per_node)
    return LocalExecutor() if runner is None else DaskExecutor(runner)


DEVICE_POLL_S = 2.0
# While the recorder is still writing jobs, how often a scheduler with free devices looks for newly recorded ones.
FEED_POLL_S = 0.1


def execute_jobs(
    jobs: JobFeed | Sequence[Job],
    pool: DevicePool,
    start: Callable[[JobSpec, int, DeviceGroup], PrefectFuture[JobResult]],
) -> list[JobResult]:
    """Run ``jobs`` (priority, spec) side by side on ``pool``'s devices; their results, in the order they came.

    Whenever devices are free, the first waiting job (lowest priority number) that fits starts on a group of its
    own through ``start`` (which submits the job's task), so narrow jobs back-fill while a wide one waits for room.
    A job waits until it is in the feed (recorded); the feed's later jobs join the waiting ones as they arrive.
    A job's devices come back when its task ends. A task that raised (not a failed job: that is a result) re-raises
    here once every other job has ended; so does an error of the recorder.
    """
    feed = jobs if isinstance(jobs, JobFeed) else JobFeed.of(jobs)
    arrived: list[Job] = []
    waiting: list[tuple[int, Job]] = []  # (arrival position, job), lowest priority first
    running: dict[PrefectFuture[JobResult], DeviceGroup] = {}
    started: dict[int, PrefectFuture[JobResult]] = {}  # arrival position -> its task
    try:
        while True:
            new = feed.take(timeout=0 if waiting or running else DEVICE_POLL_S)
            if new:
                waiting.extend(enumerate(new, len(arrived)))
                arrived.extend(new)
                waiting.sort(key=lambda item: item[1][0])
            for item in list(waiting):
                position, (priority, spec) = item
                group = pool.try_take(spec.plan.world_size)
                if group is None:
                    continue
                try:
                    future = start(spec, priority, group)
                except BaseException:
                    pool.give_back(group)
                    raise
                waiting.remove(item)
                started[position] = future
                running[future] = group
            if not running:
                if not waiting and feed.exhausted:
                    break
                if waiting:  # every free device is held by another run on this machine: look again soon
                    time.sleep(DEVICE_POLL_S)
                continue  # else the feed's next jobs were awaited in take()
            try:
                poll = DEVICE_POLL_S if feed.exhausted else FEED_POLL_S
                finished = next(as_completed(list(running), timeout=poll))
            except TimeoutError:
                continue  # devices another run held may be free now, or more jobs recorded
            pool.give_back(running.pop(finished))
    except BaseException:
        # The pool outlives this run (a nightly pass runs several): let the started jobs end, then free their devices.
        # On a stop signal (a BaseException) no job starts any more and the running ones end their ranks.
        for future, group in running.items():
            future.wait()
            pool.give_back(group)
        raise
    return [started[position].result() for position in range(len(arrived))]


def execute_jobs_on_dask(
    jobs: JobFeed | Sequence[Job],
    runner: DaskTaskRunner,
    submit: Callable[[JobSpec, int], PrefectFuture[JobResult]],
    on_job_done: Callable[[int], None] | None = None,
) -> list[JobResult]:
    """Run ``jobs`` on a Dask cluster through ``runner``; their results, in the order they came.

    Each job is submitted once it is in the feed (recorded). It asks Dask for ``{"GPU": world_size}`` of a worker's
    resources, so Dask starts it only on a worker with that many GPUs free; on the worker it waits for its own
    device group (``execute_job`` without devices). Dask runs higher priorities first, hence the sign.
    ``on_job_done`` gets the number of videos finished so far.
    """
    import dask

    feed = jobs if isinstance(jobs, JobFeed) else JobFeed.of(jobs)
    with runner:
        workers = runner.client.scheduler_info().get("workers", {}).values()
        most = max((w.get("resources", {}).get("GPU", 0) for w in workers), default=0)
        futures: list[PrefectFuture[JobResult]] = []
        while not feed.exhausted:
            batch = feed.take(timeout=DEVICE_POLL_S)
            widest = max((spec.plan.world_size for _, spec in batch), default=0)
            if widest > most:
                raise ValueError(
                    f"a job needs {widest} GPUs but no Dask worker offers more than {most} "
                    "(start workers with `--resources GPU=N`, or plan with --gpus-per-node "
                    f"{int(most) if most else 'N'})"
                )
            for priority, spec in batch:
                with dask.annotate(resources={"GPU": spec.plan.world_size}, priority=-priority):
                    futures.append(submit(spec, priority))
        specs = {id(future): spec for future, (_, spec) in zip(futures, feed.all(), strict=True)}
        finished = 0
        for future in as_completed(futures):
            if future.state.is_completed():
                result = future.result()
                report_job_over(specs[id(future)], result)
                finished += result.over  # the bar counts videos that are over, as locally
                if on_job_done is not None:
                    on_job_done(finished)
        return [future.result() for future in futures]


def report_job_over(spec: JobSpec, result: JobResult) -> None:
    """Tell this process's progress sink about a job that ran elsewhere (a Dask worker, whose rank events stay
    there): its videos by outcome, then its end. Which ids failed is not known here, only how many."""
    sink = progress.sink()
    outcomes = ["done"] * result.done + ["reused"] * result.reused
    outcomes += ["failed"] * (len(spec.samples) - len(outcomes))
    for sample, status in zip(spec.samples, outcomes, strict=True):
        sink.sample_finished(spec.job_id, sample.sample_id, status)
    sink.job_finished(spec.job_id, result.status)
