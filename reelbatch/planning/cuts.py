"""Cutting arithmetic: a bucket's samples -> jobs of whole replica rows, padding only the last.

``cut_jobs`` is the plain cut (jobs of at most ``max_samples_per_job`` samples, the plan's dp on every job);
``cut_bucket`` cuts ``count`` samples into balanced jobs of about ``per_replica`` rows each (``samples_per_replica``
turns a target wall time into rows). Pure arithmetic: the packer (``planning.packing``) and the fleet fit
(``planning.fleet.fit``) both cut with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from reelbatch.rows import SampleRefs
from reelbatch.schemas import Sample


def cut_jobs(samples: Sequence[Sample], dp: int, max_samples_per_job: int) -> list[tuple[Sequence[Sample], int]]:
    """Cut a bucket into chunks that are multiples of dp; only the last chunk may need padding."""
    return [(part, padded) for part, _, padded in _cuts(samples, dp, max_samples_per_job)]


def _cuts(samples: Sequence[Sample], dp: int, max_samples_per_job: int) -> list[tuple[Sequence[Sample], int, int]]:
    """``cut_jobs`` with each part's size: (part, samples, padded slots)."""
    chunk = max(dp, (max_samples_per_job // dp) * dp)
    count = len(samples)
    sizes = [(start, min(chunk, count - start)) for start in range(0, count, chunk)]
    if isinstance(samples, SampleRefs):  # thousands of parts of a big manifest: no per-part checks
        table, rows, videos = samples.table, samples.rows, samples.videos
        return [(SampleRefs(table, rows, videos, start, start + size), size, -size % dp) for start, size in sizes]
    return [(samples[start : start + size], size, -size % dp) for start, size in sizes]


@dataclass(frozen=True)
class Cut:
    """One job of a bucket: ``samples`` real samples and ``padded`` slots (samples + padded divide by dp)."""

    samples: int
    padded: int
    dp: int

    @property
    def slots(self) -> int:
        return self.samples + self.padded

    @property
    def rounds(self) -> int:
        return self.slots // self.dp


def samples_per_replica(sample_seconds: float, load_seconds: float, target_seconds: float) -> int:
    """Samples one replica runs so that load + samples * sample_seconds is nearest ``target_seconds`` (>= 1)."""
    if sample_seconds <= 0:
        return 1 << 30
    return max(1, round((target_seconds - load_seconds) / sample_seconds))


def cut_bucket(
    count: int, dp: int, per_replica: int, max_samples_per_job: int | None = None, tail: bool = False
) -> list[Cut]:
    """Cut ``count`` samples into jobs of whole replica rows of ``dp`` samples, balanced, padding only the last.

    A bucket needs ceil(count / dp) rows; each job takes about ``per_replica`` rows (fewer when
    ``max_samples_per_job`` caps it, never fewer than one); rows are spread evenly over the jobs, the short row
    (count % dp samples plus padding) goes to the last job. With ``tail`` the last job is split in halves
    (16 rows -> 8, 4, 2, 1, 1): a few more model loads per bucket buy short jobs that fill the fleet's last hour.
    """
    if count <= 0:
        return []
    if dp < 1 or per_replica < 1:
        raise ValueError("dp and per_replica must be at least 1")
    rows = -(-count // dp)
    per_job = per_replica
    if max_samples_per_job is not None:
        per_job = min(per_job, max(1, max_samples_per_job // dp))
    jobs = -(-rows // per_job)
    base, extra = divmod(rows, jobs)
    sizes = [base + (1 if index < extra else 0) for index in range(jobs)]
    if tail and sizes[-1] > 1:
        last = sizes.pop()
        while last:
            sizes.append((last + 1) // 2)
            last -= sizes[-1]
    cuts = []
    left = count
    for job_rows in sizes:
        take = min(left, job_rows * dp)
        cuts.append(Cut(take, job_rows * dp - take, dp))
        left -= take
    return cuts
