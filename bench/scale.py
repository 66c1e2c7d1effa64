"""Recording and time to first video: read, plan, record and the first launch of `reelbatch run` at scale.

    .venv/bin/python bench/scale.py                          # 10k and 100k rows, SQLite and PostgreSQL
    .venv/bin/python bench/scale.py --sizes 100k,1m          # 1M rows too (a few minutes)
    .venv/bin/python bench/scale.py --backends sqlite --no-launch     # the steps only
    .venv/bin/python bench/scale.py --sizes 100k --profile 30         # where recording's time goes

For each size, a CSV of tiny-model rows (some rows ask for several videos) is written, then, in this process:
read (``read_manifest``), find finished samples + plan (``find_done_samples`` + ``plan_run``: the sample ids are
hashed there), record (the run, its rejections and every job and sample row: ``start_run`` + ``record_jobs``,
batch by batch as the flow does), each printed with rows/s. Then time to first launch: a whole ``reelbatch run``
process (ephemeral Prefect server included) from its start until its first job's ranks are about to be launched,
against a 10-row manifest; the orchestrator stops itself there (the test hook ``REELBATCH_TEST_CRASH_AT=
before_launch``) and whatever it started is killed with its process group. Target: what N rows add over 10 rows
is at most 10 x a whole-process ``pandas.read_csv`` of the same file.

PostgreSQL: a database of its own on ``--postgres`` (created, then dropped). Figures on a shared machine vary from
run to run; ``--repeat`` takes the best.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet import write_mixed_manifest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGET_RATIO = 10.0
SIZES = {"10": 10, "1k": 1_000, "10k": 10_000, "100k": 100_000, "1m": 1_000_000}
POSTGRES_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
# (weight, model, height, width, frames, steps, guidance, embedded guidance, sequence_batch): built-in tiny models.
TINY_SHAPES = [
    (50, "tiny-wan", 32, 32, 5, 2, 5.0, None, False),
    (30, "tiny-wan", 64, 64, 9, 2, 5.0, None, False),
    (20, "tiny-hunyuan", 32, 32, 5, 2, 1.0, 6.0, False),
]


def timed(action: Callable[[], object]) -> tuple[float, object]:
    gc.collect()
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"reelbatch_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def database_url(backend: str, folder: Path, admin_url: str) -> Iterator[str]:
    if backend == "sqlite":
        path = folder / f"bench-{uuid.uuid4().hex[:8]}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
    else:
        with postgres_database(admin_url) as url:
            yield url


def steps(path: Path, url: str, output: str, profile: int, pack: bool) -> dict[str, float | int]:
    """read, find + plan, record: what the flow does before its executor, in this process, without Prefect."""
    from reelbatch.infra.db import Database
    from reelbatch.manifest import read_manifest
    from reelbatch.models.catalog import ModelCatalog
    from reelbatch.planning.packing_options import Packing
    from reelbatch.planning.planner import plan_run
    from reelbatch.schemas import RunDefaults
    from reelbatch.tasks.dispatch import record_jobs
    from reelbatch.tasks.feed import JobFeed
    from reelbatch.tasks.record import find_done_samples, start_run

    catalog = ModelCatalog.from_config()
    read_s, read = timed(lambda: read_manifest(path, RunDefaults(), catalog.names()))
    with Database(url) as db:
        db.ensure_schema(auto_upgrade=True)

        packing = Packing(enabled=pack).options(2)  # as the flow plans: packed unless --no-pack

        def find_and_plan():
            done = find_done_samples(db, output, read.rows, force=False)
            return plan_run(read.rows, read.rejections, read.total_rows, catalog, 2, skip=set(done), packing=packing)

        plan_s, plan = timed(find_and_plan)

        def record() -> int:
            run_id = start_run(db, read, plan, output, 2, {})
            feed = JobFeed()
            jobs = record_jobs(plan.jobs, run_id, output, db, catalog, feed)
            assert len(feed.take()) == jobs
            return jobs

        if profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.enable()
        record_s, jobs = timed(record)
        if profile:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(profile)
    return {"read_s": read_s, "plan_s": plan_s, "record_s": record_s, "jobs": jobs, "samples": plan.samples}


def whole_process_seconds(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int]:
    """Wall time of a process; its process group (the Prefect server it started) is killed once it exits."""
    # stderr to a file, not a pipe: the server the process started would hold a pipe open after it exits.
    with tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
        )
        try:
            process.wait(timeout=3600)
        finally:
            seconds = time.perf_counter() - started
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if process.returncode not in (0, -signal.SIGKILL):
            stderr.seek(0)
            raise RuntimeError(f"{command[:4]} exited {process.returncode}: {stderr.read().decode()[-2000:]}")
    return seconds, process.returncode


def time_to_first_launch(path: Path, url: str, folder: Path, pack: bool) -> float:
    env = {
        **os.environ,
        "REELBATCH_TEST_CRASH_AT": "before_launch",
        "PREFECT_HOME": str(folder / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    output = folder / f"out-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-m", "reelbatch.cli", "run", str(path), "--gpus", "2", "--out", str(output)]
    seconds, returncode = whole_process_seconds([*command, "--db", url, *([] if pack else ["--no-pack"])], env, folder)
    if returncode != -signal.SIGKILL:
        raise RuntimeError("the run ended without launching a job")
    return seconds


def pandas_seconds(path: Path, folder: Path) -> float:
    script = f"import pandas; pandas.read_csv({str(path)!r})"
    return whole_process_seconds([sys.executable, "-c", script], dict(os.environ), folder)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10k,100k", help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--backends", default="sqlite,postgresql", help="sqlite, postgresql or both")
    parser.add_argument("--postgres", default=POSTGRES_ADMIN, help="admin URL; a bench database is made there")
    parser.add_argument("--repeat", type=int, default=1, help="best of N for the time to first launch")
    parser.add_argument("--no-launch", action="store_true", help="skip the whole-process time to first launch")
    parser.add_argument("--launch-only", action="store_true", help="only the whole-process time to first launch")
    parser.add_argument("--no-pack", action="store_true", help="plan as `reelbatch run --no-pack` does")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile of recording: N functions")
    args = parser.parse_args(argv)
    sizes = [SIZES[size.strip().lower()] for size in args.sizes.split(",")]
    backends = [backend.strip() for backend in args.backends.split(",")]

    from reelbatch.models.catalog import ModelCatalog

    for model in {shape[1] for shape in TINY_SHAPES}:
        ModelCatalog.from_config().local_path(model)  # builds the tiny models once, before any clock starts

    failed = False
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        small = folder / "rows-10.csv"
        write_mixed_manifest(small, 10, seed=1, shapes=TINY_SHAPES)
        for rows in sizes:
            path = folder / f"rows-{rows}.csv"
            write_mixed_manifest(path, rows, seed=1, shapes=TINY_SHAPES)
            pandas_s = min(pandas_seconds(path, folder) for _ in range(max(1, args.repeat)))
            print(
                f"\n{rows:,} rows ({path.stat().st_size / 1e6:.1f} MB): whole-process pandas.read_csv {pandas_s:.2f} s"
            )
            for backend in backends:
                print(f"  {backend}:")
                if not args.launch_only:
                    with database_url(backend, folder, args.postgres) as url:
                        figures = steps(path, url, str(folder / "out-steps"), args.profile, not args.no_pack)
                    print(f"    {figures['jobs']:,} jobs, {figures['samples']:,} samples")
                    for step in ("read", "plan", "record"):
                        seconds = figures[f"{step}_s"]
                        print(f"    {step:<28}{seconds:8.2f} s {rows / seconds:>12,.0f} rows/s")
                if args.no_launch:
                    continue
                launches = []
                for size_path in (small, path):
                    best = float("inf")
                    for _ in range(max(1, args.repeat)):
                        with database_url(backend, folder, args.postgres) as url:
                            best = min(best, time_to_first_launch(size_path, url, folder, not args.no_pack))
                    launches.append(best)
                added = launches[1] - launches[0]
                ratio = added / pandas_s
                failed |= ratio > TARGET_RATIO
                print(
                    f"    time to first launch        {launches[1]:8.2f} s (10 rows: {launches[0]:.2f} s); "
                    f"added {added:.2f} s = {ratio:.1f}x pandas (target <= {TARGET_RATIO:g}x): "
                    f"{'met' if ratio <= TARGET_RATIO else 'MISSED'}"
                )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
