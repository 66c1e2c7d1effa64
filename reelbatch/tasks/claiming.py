"""One video, one maker: a job's claims on its samples, and what it does about videos other runs make.

Before each launch a job settles its samples still to make: those some run already finished under the output root
are taken as they are (recorded as reused in this run), the rest are claimed (``infra.db.claims``), and those another
live run holds are waited for. The job makes only what it holds, renewing the lease while its ranks run, and releases
the claims once their results are collected, so a run waiting for them finds the videos done, or free to make.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from prefect import get_run_logger
from prefect.exceptions import MissingContextError

from reelbatch import progress
from reelbatch.contract import JobSpec
from reelbatch.defaults import CLAIM_LEASE_S, CLAIM_POLL_S, CLAIM_RENEWALS_PER_LEASE
from reelbatch.infra.dask_cluster import worker_host
from reelbatch.infra.db import Claim, Database, DoneOutput, ReusedSample


@dataclass
class Settled:
    """Where each sample of a job still to make stands, as one ``JobClaims.settle`` found it."""

    held: list[str] = field(default_factory=list)  # this job holds them: make them now (job order)
    reused: list[str] = field(default_factory=list)  # another run made them: now recorded as reused in this run
    done_here: list[str] = field(default_factory=list)  # this run made them already (a job Dask ran again)
    waiting: list[str] = field(default_factory=list)  # another live run holds them (or just let them go)
    holders: dict[str, Claim] = field(default_factory=dict)  # who holds the waiting ones, where known

    @property
    def finished(self) -> list[str]:
        return self.reused + self.done_here


def claim_host() -> str:
    """What a claim says about where its video is made: the machine, and the Dask worker on it if any."""
    worker = worker_host()
    return f"{socket.gethostname()} ({worker})" if worker else socket.gethostname()


def poll_interval(lease_s: float) -> float:
    """How often a job waiting for another run's videos looks again: often enough to notice an expired lease."""
    return min(CLAIM_POLL_S, lease_s / CLAIM_RENEWALS_PER_LEASE)


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:  # called outside a flow (tests, scripts)
        return logging.getLogger("reelbatch.claims")


class JobClaims:
    """The claims one job of a run holds on its samples under the output root ``output``."""

    def __init__(
        self, db: Database, output: str, spec: JobSpec, lease_s: float = CLAIM_LEASE_S, force: bool = False
    ) -> None:
        if lease_s <= 0:
            raise ValueError(f"the claim lease must be positive, not {lease_s!r} s")
        self.db, self.output, self.spec, self.lease_s = db, output, spec, lease_s
        # --force remakes what was there before the run; a video a concurrent run makes meanwhile is still reused.
        self._since = db.run_record(spec.run_id)["created_at"] if force else None
        self.host = claim_host()
        self._samples = {sample.sample_id: sample for sample in spec.samples}
        self._logger = _logger()

    def settle(self, pending: Sequence[str]) -> Settled:
        """Take what is made, claim what is free, and say what another run is making (``pending``: sample ids)."""
        settled = Settled()
        self._take_made(self.db.done_outputs(self.output, pending, since=self._since), settled)
        free = [sample_id for sample_id in pending if sample_id not in settled.finished]
        held = self.db.claim_samples(
            self.output, free, run_id=self.spec.run_id, job_id=self.spec.job_id, host=self.host, lease_s=self.lease_s
        )
        # The holder may have published a video and let its claim go between the first look and the claim.
        made_meanwhile = self.db.done_outputs(self.output, held, since=self._since)
        if made_meanwhile:
            self._take_made(made_meanwhile, settled)
            self.release(made_meanwhile)
        finished = set(settled.finished)
        settled.held = [sample_id for sample_id in free if sample_id in held and sample_id not in finished]
        settled.waiting = [sample_id for sample_id in free if sample_id not in held and sample_id not in finished]
        if settled.waiting:
            settled.holders = self.db.sample_claims(self.output, settled.waiting)
        return settled

    def _take_made(self, made: dict[str, DoneOutput], settled: Settled) -> None:
        reused = [
            ReusedSample(self._samples[sample_id], self.spec.bucket, where.output_path, where.run_id)
            for sample_id, where in made.items()
            if where.run_id != self.spec.run_id
        ]
        self.db.add_reused_samples(self.spec.run_id, reused)
        settled.reused += [item.sample.sample_id for item in reused]
        settled.done_here += [sample_id for sample_id, where in made.items() if where.run_id == self.spec.run_id]
        sink = progress.sink()  # bars and ETA count a video another run made as finished here too
        for item in reused:
            sink.sample_finished(self.spec.job_id, item.sample.sample_id, "reused")
        if reused:
            runs = ", ".join(sorted({item.from_run[:8] for item in reused}))
            self._logger.info("%s: %d video(s) made by run(s) %s reused", self.spec.job_id, len(reused), runs)

    def log_waiting(self, settled: Settled) -> None:
        makers = sorted({f"run {claim.run_id[:8]} on {claim.host}" for claim in settled.holders.values()})
        self._logger.info(
            "%s: waiting for %d video(s) another run is making (%s); made ones are reused, a claim whose lease "
            "runs out is taken over",
            self.spec.job_id,
            len(settled.waiting),
            "; ".join(makers) or "just released",
        )

    def release(self, sample_ids: Sequence[str] | dict[str, DoneOutput]) -> None:
        self.db.release_claims(self.output, list(sample_ids), self.spec.run_id)

    @contextmanager
    def heartbeat(self, held: int) -> Iterator[None]:
        """Renew this job's claims every third of the lease until the block ends, however it ends."""
        stop = threading.Event()

        def renew() -> None:
            expected = held
            while not stop.wait(self.lease_s / CLAIM_RENEWALS_PER_LEASE):
                try:
                    renewed = self.db.renew_claims(self.spec.run_id, self.spec.job_id, self.lease_s)
                except Exception as error:  # noqa: BLE001 - a missed renewal is retried; the lease covers two
                    self._logger.warning("%s: could not renew its claims: %s", self.spec.job_id, error)
                    continue
                if renewed < expected:
                    self._logger.warning(
                        "%s: %d of its %d claims were taken over after its lease ran out: another run may make "
                        "those videos too",
                        self.spec.job_id,
                        expected - renewed,
                        expected,
                    )
                    expected = renewed

        thread = threading.Thread(target=renew, name=f"claims-{self.spec.job_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
