"""Exports at scale: the dataset index (metadata.csv, samples.parquet, gallery pages) of a run of N done videos.

    .venv/bin/python bench/export_scale.py                     # 100,000 samples
    .venv/bin/python bench/export_scale.py --rows 100000 1000000
    .venv/bin/python bench/export_scale.py --rows 100000 --whole-read

Fills a fresh SQLite database with one run of N done sample rows (bulk-inserted with sqlite3, not through
reelbatch: only the export is measured), then runs ``tasks.export.write_dataset_index`` in a child process and
prints its seconds, its peak RSS (``ru_maxrss``) and that peak less the RSS after imports (what the export
itself added). The export streams, so the added memory should stay flat from 100k to 1M rows.

The videos do not exist, and the gallery does not look for them (``--previews``: each card tries its file, about
1 ms for a missing one): the figures are those of reading rows and writing files and pages. A real run's gallery
also decodes each done video's first frame, which this bench does not measure.
``--whole-read`` also measures, in another child, reading the run's rows as one list (``Database.samples``),
what the export held in memory before it streamed.
"""

from __future__ import annotations

import argparse
import json
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a red fox trots through fresh snow at dawn, cinematic lighting, shallow depth of field, film grain " * 2
TIMESTAMP = "2026-01-01 00:00:00.000000"  # SQLAlchemy's SQLite text form of a datetime
INSERT_BATCH = 50_000


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def fill(db_file: Path, rows: int, output_root: str) -> str:
    """A finished run with ``rows`` done samples; returns its id."""
    from reelbatch.infra.db import Database

    url = f"sqlite:///{db_file}"
    with Database(url) as db:
        db.upgrade()
        run_id = db.create_run(
            manifest_source="bench.csv",
            manifest_sha256="0" * 64,
            output_root=output_root,
            gpus_per_node=8,
            params={},
            library_versions={},
            rows_total=rows,
            rows_accepted=rows,
            rows_rejected=0,
        )
    columns = (
        "run_id, sample_id, row, row_id, video_index, prompt, negative_prompt, model, height, width, num_frames, "
        "num_inference_steps, guidance_scale, seed, status, output_path, seconds, frames, attempts, created_at, "
        "updated_at, started_at, finished_at"
    )

    def values(start: int, stop: int):
        for i in range(start, stop):
            yield (
                run_id, f"{i:064x}", i + 2, f"id{i}", 0, f"{PROMPT} #{i}", "blurry", "wan2.1-t2v-1.3b", 480, 832,
                81, 30, 5.0, 1000 + i, "done", f"{output_root}/{i % 256:02x}/{i:064x}.mp4", 41.5, 81, 1,
                TIMESTAMP, TIMESTAMP, TIMESTAMP, TIMESTAMP,
            )  # fmt: skip

    connection = sqlite3.connect(db_file)
    with connection:
        connection.execute("UPDATE runs SET status = 'done'")
        for start in range(0, rows, INSERT_BATCH):
            connection.executemany(
                f"INSERT INTO samples ({columns}) VALUES ({', '.join('?' * 23)})",
                values(start, min(start + INSERT_BATCH, rows)),
            )
    connection.close()
    return run_id


def child(mode: str, db_url: str, run_id: str, output_root: str) -> None:
    """Runs in its own process, so ru_maxrss is this measurement's alone; prints one JSON line."""
    import av  # noqa: F401 - imported by the export on first use: counted with the imports, not the export
    import PIL.Image  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import reelbatch.tasks.gallery as gallery
    from reelbatch.infra.db import Database
    from reelbatch.tasks.export import write_dataset_index

    if mode == "export":
        gallery._first_frame_png = lambda video_url: None  # no video exists: see the module's docstring

    with Database(db_url) as db:
        db.run_summary(run_id)  # connections and the mapper set up: counted with the imports
        baseline = rss_mb()
        started = time.perf_counter()
        if mode != "whole":
            locations = write_dataset_index(db, run_id, output_root)
            sizes = {name: Path(path).stat().st_size for name, path in locations.items()}
            pages = len(list(Path(locations["gallery"]).parent.iterdir()))
        else:
            rows = db.samples(run_id)
            sizes, pages = {"rows": len(rows)}, 0
        seconds = time.perf_counter() - started
    print(
        json.dumps({"seconds": seconds, "peak_mb": rss_mb(), "baseline_mb": baseline, "sizes": sizes, "pages": pages})
    )


def measure(mode: str, db_file: Path, run_id: str, output_root: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, f"sqlite:///{db_file}", run_id, output_root],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000], help="Run sizes, in done samples.")
    parser.add_argument("--whole-read", action="store_true", help="Also measure reading the rows as one list.")
    parser.add_argument("--previews", action="store_true", help="Let each gallery card look for its video.")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "DB", "RUN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    for rows in args.rows:
        with tempfile.TemporaryDirectory(prefix="reelbatch-export-") as folder:
            db_file, output_root = Path(folder) / "bench.db", f"{folder}/out"
            started = time.perf_counter()
            run_id = fill(db_file, rows, output_root)
            print(f"{rows:>9,} rows: database filled in {time.perf_counter() - started:.1f} s", flush=True)
            result = measure("previews" if args.previews else "export", db_file, run_id, output_root)
            sizes = ", ".join(f"{name} {size / 1e6:,.1f} MB" for name, size in result["sizes"].items())
            print(
                f"{rows:>9,} rows: dataset index in {result['seconds']:.1f} s "
                f"({rows / result['seconds']:,.0f} rows/s), "
                f"peak RSS {result['peak_mb']:,.0f} MB (+{result['peak_mb'] - result['baseline_mb']:,.0f} MB over "
                f"imports); {sizes} (page 1), {result['pages']:,} gallery pages",
                flush=True,
            )
            if args.whole_read:
                whole = measure("whole", db_file, run_id, output_root)
                print(
                    f"{rows:>9,} rows: the rows as one list (the export before streaming read this first) in "
                    f"{whole['seconds']:.1f} s, peak RSS {whole['peak_mb']:,.0f} MB "
                    f"(+{whole['peak_mb'] - whole['baseline_mb']:,.0f} MB over imports)",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
