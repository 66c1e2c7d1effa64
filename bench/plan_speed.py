"""Planning speed: validate + plan a 100,000-row manifest against pandas.read_csv of the same file.

    .venv/bin/python bench/plan_speed.py                  # 100,000 rows, best of 3
    .venv/bin/python bench/plan_speed.py --rows 20000 --repeat 1 --profile 25

Times ``reelbatch.manifest.read_manifest`` + ``reelbatch.planning.planner.plan_run`` (8 GPUs per node, CUDA
rules, no packing; ``--packed`` packs for 4 nodes (``planning.packing``)) against ``pandas.read_csv`` in one process,
each the best of ``--repeat`` runs, then measures the peak Python memory of validate + plan with tracemalloc (a
separate run: tracemalloc slows it down) and the process's peak RSS. Targets: ratio <= 3, peak <= 300 MB.

Planning leaves for later what only recording a run needs: every sample's seed and identity hash, the job ids
(which hash them) and the manifest's SHA-256. The line "+ sample ids, job ids, digest" times those too, i.e. what
``reelbatch run`` computes before its first job starts; it has no target. ``--line-reader`` reads the CSV with
the line-by-line reader instead of the columnar fast path (same results, the previous speed).
``--profile N`` prints the N most expensive functions (cProfile, cumulative) of one validate + plan.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet import write_mixed_manifest

TARGET_RATIO = 3.0
TARGET_PEAK_MB = 300.0


def validate_and_plan(path: Path, packed: bool, columnar: bool = True):
    from reelbatch.manifest import read_manifest
    from reelbatch.models.catalog import ModelCatalog
    from reelbatch.planning.packing_options import PackingOptions
    from reelbatch.planning.planner import plan_run
    from reelbatch.schemas import RunDefaults

    catalog = ModelCatalog.from_config()
    read = read_manifest(path, RunDefaults(), catalog.names(), columnar=columnar)
    packing = PackingOptions(nodes=4, gpus_per_node=8) if packed else None
    return read, plan_run(read.rows, read.rejections, read.total_rows, catalog, 8, device="cuda", packing=packing)


def best_of(repeat: int, action) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--packed", action="store_true", help="also pack the jobs for 4 x 8 GPUs")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print the N costliest functions")
    parser.add_argument("--line-reader", action="store_true", help="read the CSV line by line (no fast path)")
    args = parser.parse_args(argv)

    import pandas  # imported before timing, like reelbatch's modules below

    import reelbatch.manifest
    import reelbatch.planning.planner  # noqa: F401

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "manifest.csv"
        write_mixed_manifest(path, args.rows, seed=1)
        size_mb = path.stat().st_size / 1e6
        pandas_s = best_of(args.repeat, lambda: pandas.read_csv(path))
        result = {}

        columnar = not args.line_reader

        def ours():
            result["out"] = validate_and_plan(path, args.packed, columnar)

        def ours_and_ids():
            read, plan = validate_and_plan(path, args.packed, columnar)
            ids = {job.job_id for job in plan.jobs}  # hashes every sample of every job
            result["ids"] = (len(ids), sum(len(job.samples) for job in plan.jobs), read.sha256)

        ours_s = best_of(args.repeat, ours)
        read, plan = result.pop("out")
        accepted, jobs, reader = plan.accepted, len(plan.jobs), type(read.rows).__name__
        del read, plan
        with_ids_s = best_of(args.repeat, ours_and_ids)
        gc.collect()
        tracemalloc.start()
        validate_and_plan(path, args.packed, columnar)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        if args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.enable()
            validate_and_plan(path, args.packed, columnar)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.profile)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    ratio = ours_s / pandas_s
    peak_mb = peak / 1e6
    print(
        f"manifest: {args.rows:,} rows, {size_mb:.1f} MB CSV; {accepted:,} accepted, {jobs:,} jobs"
        f"{' (packed for 4 x 8 GPUs)' if args.packed else ''}; rows held as {reader}"
    )
    print(f"pandas.read_csv            {pandas_s:8.3f} s")
    print(
        f"read_manifest + plan_run   {ours_s:8.3f} s   ratio {ratio:.1f}x (target <= {TARGET_RATIO:g}x): "
        f"{'met' if ratio <= TARGET_RATIO else 'MISSED'}"
    )
    print(
        f"+ sample ids, job ids, digest {with_ids_s:5.3f} s   ratio {with_ids_s / pandas_s:.1f}x "
        f"(no target: what a run computes before its first job; {result['ids'][1]:,} samples hashed)"
    )
    print(
        f"peak Python memory of validate + plan (tracemalloc) {peak_mb:.0f} MB (target <= {TARGET_PEAK_MB:g} MB): "
        f"{'met' if peak_mb <= TARGET_PEAK_MB else 'MISSED'}; process peak RSS {rss_mb:.0f} MB (pandas, "
        "Prefect and every import included)"
    )
    return 0 if ratio <= TARGET_RATIO and peak_mb <= TARGET_PEAK_MB else 1


if __name__ == "__main__":
    sys.exit(main())
